#!/usr/bin/env bash
# berth's test entry point (the README's test command).
#
# Installs, when missing, the real registry clients that tests/clients.rs
# drives (skopeo, podman, buildah, containerd's ctr, docker.io's dockerd) plus
# busybox-static for the test images, docker-registry + apache2-utils (htpasswd) as an upstream
# for tests/proxy.rs, prometheus (the server and promtool; its systemd service is not used, tests/metrics.rs
# runs its own) for tests/metrics.rs, makes sure real Kubernetes parts are there
# (tests/k8s/ensure-kubernetes.sh: etcd and kube-apiserver for tests/cluster.rs,
# and a kubelet, controller-manager, scheduler, kube-proxy and pause binary for
# the one-node cluster of tests/node/), then runs the whole test suite. Works
# from any cwd; needs root (apt-get, and the node's bridge, iptables and
# mounts) on a Debian 12 machine.
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# package -> a file it must provide
declare -A needs=(
    [skopeo]=/usr/bin/skopeo
    [podman]=/usr/bin/podman
    [buildah]=/usr/bin/buildah
    [containerd]=/usr/bin/ctr
    [busybox-static]=/bin/busybox
    [docker-registry]=/usr/bin/docker-registry
    [apache2-utils]=/usr/bin/htpasswd
    [prometheus]=/usr/bin/prometheus
)
missing=()
for pkg in "${!needs[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "install ok installed" || ! -x "${needs[$pkg]}" ]]; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    echo "run.sh: installing missing packages: ${missing[*]}"
    if [[ $(id -u) -ne 0 ]]; then
        echo "run.sh: need root to apt-get install ${missing[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
fi
# docker.io (dockerd and its client) for tests/docker.rs, without its recommendations (git, apparmor, ...): the
# tests start their own dockerd without networking and never use a system one.
if [[ ! -x /usr/sbin/dockerd ]]; then
    echo "run.sh: installing docker.io"
    if [[ $(id -u) -ne 0 ]]; then
        echo "run.sh: need root to apt-get install docker.io" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends docker.io
fi
for bin in skopeo podman buildah containerd ctr dockerd unshare setpriv gzip tar sha256sum; do
    command -v "$bin" >/dev/null || { echo "run.sh: $bin still missing" >&2; exit 1; }
done

# Kubernetes v1.20.2 (built from Debian's source package and cached in
# /var/cache/berth-test or $BERTH_TEST_CACHE; about 9 min the first time) plus
# etcd, containerd, the CNI plugins and kubectl. Seconds when already cached.
bash tests/k8s/ensure-kubernetes.sh

# kubernetes-validate (PyPI; it ships the Kubernetes schemas, so it validates
# offline) for tests/manifests.rs.
if ! command -v kubernetes-validate >/dev/null; then
    echo "run.sh: installing kubernetes-validate"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore kubernetes-validate==1.37.0
    # Under pyenv the new console script needs a shim.
    if command -v pyenv >/dev/null; then pyenv rehash; fi
    hash -r
    command -v kubernetes-validate >/dev/null || { echo "run.sh: kubernetes-validate still missing" >&2; exit 1; }
fi

# 2 cores: two tests at a time (each starts its own berth and clients); the
# one-node cluster runs alone (tests/nextest.toml). The cluster test builds
# berth's release binary for its image (cargo; a no-op when it is fresh).
if cargo nextest --version >/dev/null 2>&1; then
    exec cargo nextest run --config-file tests/nextest.toml --no-fail-fast --test-threads 2 "$@"
elif (($#)); then
    # Without nextest, and with your own arguments: as you give them.
    exec cargo test --no-fail-fast "$@"
else
    # Without nextest: everything but the one-node cluster two at a time, then the cluster alone.
    status=0
    cargo test --no-fail-fast -- --test-threads 2 --skip node:: || status=$?
    cargo test --no-fail-fast --test tests -- --test-threads 1 node:: || status=$?
    exit "$status"
fi
