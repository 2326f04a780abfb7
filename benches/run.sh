#!/usr/bin/env bash
# berth's benchmark, side by side with CNCF distribution (Debian's docker-registry) and nginx (static files with
# sendfile, the loopback limit), in one run on this machine. Writes benches/results.md (and results.json).
#
#   benches/run.sh                 # the full run (about 12 to 20 minutes on 2 cores, longer while the machine is busy)
#   BENCH_QUICK=1 benches/run.sh   # a smoke run with small sizes (about 3 minutes)
#   BENCH_ONLY=berth,nginx ...     # a subset of berth, berth-tls, berth-auth, berth-noevents, distribution, nginx
#
# Installs docker-registry, nginx-light, wrk, curl and apache2-utils (htpasswd -B, for berth-auth's user) from Debian when missing (without starting their services),
# builds berth in release mode, then runs benches/harness.py. Everything it starts is killed when it ends, fails or
# is interrupted, and the whole run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]} from Debian" >&2
    # Keep the packages' services from starting: the benchmark starts its own instances on free ports.
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
    fi
    apt_status=0
    { apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } ||
        apt_status=$?
    if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
    [ "$apt_status" -eq 0 ] || { echo "installing ${need[*]} failed" >&2; exit "$apt_status"; }
fi
export PATH="$PATH:/usr/sbin"

echo "building berth (release)" >&2
cargo build --release --quiet --bin berth

# Data directories on tmpfs: the registries' software is measured, not this machine's disk (fsync of 1 GiB to the
# virtual disk here runs at about 260 MB/s, which would bound every push).
parent=/dev/shm
[ -d "$parent" ] && [ "$(df --output=avail -k "$parent" | tail -1)" -gt $((8 * 1024 * 1024)) ] || parent="${TMPDIR:-/tmp}"
run_dir="$(mktemp -d "$parent/berth-bench.XXXXXX")"
harness=""

cleanup() {
    status=$?
    trap - EXIT INT TERM HUP
    if [ -n "$harness" ] && kill -0 "$harness" 2>/dev/null; then
        kill -TERM "$harness" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$harness" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$harness" 2>/dev/null || true
    fi
    # Every server the harness started leads its own process group; its id is in $run_dir/pids.
    if [ -f "$run_dir/pids" ]; then
        while read -r pid; do kill -KILL -- "-$pid" 2>/dev/null || true; done < "$run_dir/pids"
    fi
    if [ "$status" -ne 0 ] && [ -d "$run_dir/logs" ]; then
        mkdir -p benches/last-logs && cp -r "$run_dir/logs/." benches/last-logs/ 2>/dev/null || true
        echo "benchmark failed ($status); server logs copied to benches/last-logs/" >&2
    fi
    rm -rf "$run_dir"
    exit "$status"
}
trap cleanup EXIT INT TERM HUP

# The binary just built, wherever cargo put it (CARGO_TARGET_DIR is honoured).
export BERTH_BIN="${BERTH_BIN:-${CARGO_TARGET_DIR:-target}/release/berth}"
BENCH_RUN_DIR="$run_dir" timeout --signal=TERM --kill-after=30 60m python3 benches/harness.py &
harness=$!
wait "$harness"
