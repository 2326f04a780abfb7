#!/usr/bin/env bash
# Makes sure real Kubernetes v1.20.2 parts are on this machine for the tests:
# etcd and kube-apiserver for tests/cluster.rs, and for the one-node cluster of
# tests/node/ also kubelet, kube-controller-manager, kube-scheduler,
# kube-proxy and the pause binary (the sandbox image's only file). The
# Kubernetes binaries are built from Debian's `kubernetes` source package when
# a cached one is missing.
#
#   bash tests/k8s/ensure-kubernetes.sh
#
# Idempotent: when every binary exists in /var/cache/berth-test (or
# $BERTH_TEST_CACHE) and reports v1.20.2, it only checks the Debian packages
# and exits 0 within seconds. Otherwise it installs what it needs from Debian
# (needs root), downloads the source with `apt-get source kubernetes` (deb-src
# entries derived from the machine's own deb entries, kept in a private apt
# dir), replaces the vendored github.com/modern-go/reflect2 1.0.1 with
# Debian's 1.0.2 (1.0.1 makes the server die with SIGSEGV a couple of minutes
# after start under Go >= 1.18), runs `make WHAT="cmd/..."` for the missing
# binaries with Go 1.19, offline, and builds build/pause/linux/pause.c with
# `gcc -static`. Cold build of everything: about 9 minutes on 2 cores. The build
# happens in a temporary dir and each binary is moved into place only when it
# runs; a lock keeps two runs from building at once. Prints progress on stderr
# only; stdout stays empty.
set -euo pipefail

K8S_VERSION=v1.20.2
CACHE_DIR=${BERTH_TEST_CACHE:-/var/cache/berth-test}
# The Kubernetes commands, each cached as $CACHE_DIR/NAME-$K8S_VERSION.
COMMANDS=(kube-apiserver kubelet kube-controller-manager kube-scheduler kube-proxy)
PAUSE_BIN="$CACHE_DIR/pause-$K8S_VERSION"
GO_ROOT=/usr/lib/go-1.19

log() { echo "ensure-kubernetes: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Everything below writes to stderr only.
exec 1>&2

binary_ok() { [[ -x "$1" ]] && "$1" --version 2>/dev/null | grep -q "$K8S_VERSION"; }
# pause.c prints "pause.c VERSION" for -v.
pause_ok() { [[ -x "$PAUSE_BIN" ]] && "$PAUSE_BIN" -v 2>&1 | grep -q "$K8S_VERSION"; }
missing_commands() {
    local name
    for name in "${COMMANDS[@]}"; do
        binary_ok "$CACHE_DIR/$name-$K8S_VERSION" || echo "$name"
    done
}
all_ok() { [[ -z "$(missing_commands)" ]] && pause_ok; }

# ---------------------------------------------------------------- packages
# package -> a file it must provide
declare -A needs=(
    [etcd-server]=/usr/bin/etcd
    [openssl]=/usr/bin/openssl
    [util-linux]=/usr/bin/flock
    # the one-node cluster (tests/node/)
    [containerd]=/usr/bin/containerd
    [containernetworking-plugins]=/usr/lib/cni/bridge
    [iptables]=/usr/sbin/iptables
    [iproute2]=/usr/bin/ip
    [conntrack]=/usr/sbin/conntrack
    [nftables]=/usr/sbin/nft
    [procps]=/usr/bin/kill
    [ca-certificates]=/etc/ssl/certs/ca-certificates.crt
    [mount]=/usr/bin/mount
)
build_needs() {
    needs+=(
        [golang-1.19-go]=$GO_ROOT/bin/go
        [rsync]=/usr/bin/rsync
        [dpkg-dev]=/usr/bin/dpkg-source
        [golang-github-modern-go-reflect2-dev]=/usr/share/gocode/src/github.com/modern-go/reflect2/reflect2.go
        [make]=/usr/bin/make
        [xz-utils]=/usr/bin/xz
        [patch]=/usr/bin/patch
        [findutils]=/usr/bin/find
        [gcc]=/usr/bin/gcc
        [libc6-dev]=/usr/lib/x86_64-linux-gnu/libc.a
    )
}
if ! command -v kubectl >/dev/null 2>&1; then
    needs+=([kubernetes-client]=/usr/bin/kubectl)
fi

apt_updated=
install_missing() {
    local missing=() pkg status
    for pkg in "${!needs[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        if [[ "$status" != "install ok installed" || ! -e "${needs[$pkg]}" ]]; then
            missing+=("$pkg")
        fi
    done
    ((${#missing[@]})) || return 0
    [[ $(id -u) -eq 0 ]] || die "need root to apt-get install ${missing[*]}"
    log "installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    local out
    out=$(mktemp)
    if [[ -z "$apt_updated" ]]; then
        apt-get update -q >"$out" 2>&1 || { cat "$out" >&2; rm -f "$out"; die "apt-get update failed"; }
        apt_updated=1
    fi
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$out" 2>&1; then
        tail -n 30 "$out" >&2
        rm -f "$out"
        die "apt-get install ${missing[*]} failed"
    fi
    rm -f "$out"
    for pkg in "${missing[@]}"; do
        [[ -e "${needs[$pkg]}" ]] || die "$pkg installed but ${needs[$pkg]} is still missing"
    done
}

if all_ok; then
    install_missing
    exit 0
fi

# ---------------------------------------------------------------- build
build_needs
install_missing

mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/.build.lock"
if ! flock -n 9; then
    log "another run is building Kubernetes; waiting for its lock"
    flock 9
fi
# The other run may have finished the job while we waited.
if all_ok; then
    log "Kubernetes $K8S_VERSION is cached in $CACHE_DIR"
    exit 0
fi
mapfile -t WANT < <(missing_commands)

# Holding the lock, any build dir left is from a run that was killed.
for stale in "$CACHE_DIR"/build.*; do
    [[ -d "$stale" ]] || continue
    log "removing stale $stale"
    chmod -R u+w "$stale" 2>/dev/null || true
    rm -rf "$stale"
done

start=$(date +%s)
WORK=$(mktemp -d "$CACHE_DIR/build.XXXXXX")
build_pid=
cleanup() {
    if [[ -n "$build_pid" ]] && kill -0 "$build_pid" 2>/dev/null; then
        kill -- -"$build_pid" 2>/dev/null || kill "$build_pid" 2>/dev/null || true
        wait "$build_pid" 2>/dev/null || true
    fi
    # Go's module/build caches are written read-only; make them removable.
    chmod -R u+w "$WORK" 2>/dev/null || true
    rm -rf "$WORK"
    rm -f "$CACHE_DIR"/*.tmp.$$
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
BUILD_LOG="$WORK/build.log"

# A private apt configuration holding deb-src twins of the machine's deb
# entries, so the system's sources and package lists are left untouched.
APT="$WORK/apt"
mkdir -p "$APT/parts" "$APT/lists/partial" "$APT/archives/partial"
: >"$APT/sources.list"
for f in /etc/apt/sources.list.d/*.sources; do
    [[ -e "$f" ]] || continue
    sed -e 's/^Types:[[:space:]]*deb[[:space:]]*$/Types: deb-src/' "$f" >"$APT/parts/$(basename "$f")"
done
if [[ -f /etc/apt/sources.list ]]; then
    sed -n -e 's/^[[:space:]]*deb[[:space:]]/deb-src /p' /etc/apt/sources.list >>"$APT/sources.list"
fi
for f in /etc/apt/sources.list.d/*.list; do
    [[ -e "$f" ]] || continue
    sed -n -e 's/^[[:space:]]*deb[[:space:]]/deb-src /p' "$f" >>"$APT/parts/$(basename "$f")"
done
apt_opts=(
    -o "Dir::Etc::SourceList=$APT/sources.list"
    -o "Dir::Etc::SourceParts=$APT/parts"
    -o "Dir::State::Lists=$APT/lists"
    -o "Dir::Cache::Archives=$APT/archives"
    -o "APT::Sandbox::User=root"
    -o "Acquire::Retries=3"
)
log "fetching the source index (deb-src)"
# Unreachable third-party sources only warn; the Debian ones are what we need.
apt-get "${apt_opts[@]}" update -q >>"$BUILD_LOG" 2>&1 || true
mkdir -p "$WORK/src"
log "apt-get source kubernetes"
if ! (cd "$WORK/src" && apt-get "${apt_opts[@]}" source -q kubernetes) >>"$BUILD_LOG" 2>&1; then
    tail -n 30 "$BUILD_LOG" >&2
    die "apt-get source kubernetes failed"
fi
SRC=$(find "$WORK/src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
[[ -n "$SRC" && -f "$SRC/Makefile" ]] || die "no kubernetes source tree under $WORK/src"
grep -q 'gitVersion.*v1\.20\.' "$SRC/staging/src/k8s.io/component-base/version/base.go" 2>/dev/null ||
    grep -q '1\.20\.2' "$SRC/debian/changelog" || die "unexpected kubernetes source version in $SRC"
log "source: $(basename "$SRC")"

# reflect2 1.0.1 (vendored) reads Go runtime internals that changed in Go
# 1.18; Debian's 1.0.2 is the fixed release.
R2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2
R2_DST="$SRC/vendor/github.com/modern-go/reflect2"
[[ -d "$R2_DST" ]] || die "$R2_DST missing from the source tree"
rm -rf "$R2_DST"
mkdir -p "$R2_DST"
# Copy real files (Debian's dir may hold symlinks), no tests.
cp -rL "$R2_SRC/." "$R2_DST/"
find "$R2_DST" -name '*_test.go' -delete
[[ -f "$R2_DST/go_above_118.go" ]] || die "reflect2 from $R2_SRC is not >= 1.0.2 (no go_above_118.go)"

what=()
for name in "${WANT[@]}"; do what+=("cmd/$name"); done
build() {
    cd "$SRC"
    env -u GOFLAGS -u GOPATH -u GOROOT -u GO111MODULE -u GOBIN \
        PATH="$GO_ROOT/bin:$PATH" \
        HOME="$WORK/home" \
        GOPROXY=off \
        GOSUMDB=off \
        GONOSUMDB='*' \
        GOTOOLCHAIN=local \
        GOTELEMETRY=off \
        CGO_ENABLED=0 \
        KUBE_GIT_VERSION="$K8S_VERSION" \
        KUBE_GIT_TREE_STATE=archive \
        KUBE_GIT_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56 \
        KUBE_VERBOSE=1 \
        make WHAT="${what[*]}"
}
mkdir -p "$WORK/home"
if ((${#WANT[@]})); then
    log "building ${WANT[*]} $K8S_VERSION with $("$GO_ROOT/bin/go" version | cut -d' ' -f3) (about 9 min for all of them on 2 cores; log: $BUILD_LOG)"
    # In its own process group (set -m) so cleanup can stop make and every compiler under it.
    set -m
    (build >>"$BUILD_LOG" 2>&1) &
    build_pid=$!
    set +m
    # Progress every minute so CI shows the script is alive.
    while kill -0 "$build_pid" 2>/dev/null; do
        for _ in $(seq 60); do
            kill -0 "$build_pid" 2>/dev/null || break
            sleep 1
        done
        if kill -0 "$build_pid" 2>/dev/null; then
            log "  ... still building ($(($(date +%s) - start)) s): $(grep -v '^[[:space:]]*$' "$BUILD_LOG" | tail -n1 | cut -c1-120)"
        fi
    done
    if ! wait "$build_pid"; then
        tail -n 60 "$BUILD_LOG" >&2
        die "make WHAT=\"${what[*]}\" failed"
    fi
    for name in "${WANT[@]}"; do
        OUT="$SRC/_output/bin/$name"
        [[ -x "$OUT" ]] || OUT=$(find "$SRC/_output" -type f -name "$name" -perm -u+x | head -n1)
        [[ -n "$OUT" && -x "$OUT" ]] || die "build finished but no $name binary under $SRC/_output"
        binary_ok "$OUT" || die "built $name reports $("$OUT" --version 2>&1)"
        install -m 0755 "$OUT" "$CACHE_DIR/$name-$K8S_VERSION.tmp.$$"
        mv -f "$CACHE_DIR/$name-$K8S_VERSION.tmp.$$" "$CACHE_DIR/$name-$K8S_VERSION"
        log "built $name $K8S_VERSION: $CACHE_DIR/$name-$K8S_VERSION"
    done
fi

# The pause binary: a static C program, the only file of the node's sandbox image (tests/node/images.rs packs it).
if ! pause_ok; then
    PAUSE_SRC="$SRC/build/pause/linux/pause.c"
    [[ -f "$PAUSE_SRC" ]] || die "$PAUSE_SRC missing from the source tree"
    gcc -Os -Wall -Werror -static -DVERSION="$K8S_VERSION" -o "$PAUSE_BIN.tmp.$$" "$PAUSE_SRC" >>"$BUILD_LOG" 2>&1 ||
        { tail -n 30 "$BUILD_LOG" >&2; die "gcc -static $PAUSE_SRC failed"; }
    mv -f "$PAUSE_BIN.tmp.$$" "$PAUSE_BIN"
    pause_ok || die "built pause does not report $K8S_VERSION for -v"
    log "built pause: $PAUSE_BIN"
fi
log "Kubernetes $K8S_VERSION parts ready in $CACHE_DIR after $(($(date +%s) - start)) s"
