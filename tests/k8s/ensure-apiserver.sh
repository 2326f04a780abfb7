#!/usr/bin/env bash
# Makes sure a real kube-apiserver (v1.20.2) and etcd are on this machine for
# tests/cluster.rs, building the apiserver from Debian's `kubernetes` source
# package when the cached binary is missing.
#
#   bash tests/k8s/ensure-apiserver.sh
#
# Idempotent: when /var/cache/berth-test/kube-apiserver-v1.20.2 exists and
# runs, it only checks the Debian packages and exits 0 within seconds.
# Otherwise it installs what it needs from Debian (needs root), downloads the
# source with `apt-get source kubernetes` (deb-src entries derived from the
# machine's own deb entries, kept in a private apt dir), replaces the vendored
# github.com/modern-go/reflect2 1.0.1 with Debian's 1.0.2 (1.0.1 makes the
# server die with SIGSEGV a couple of minutes after start under Go >= 1.18),
# and runs `make WHAT=cmd/kube-apiserver` with Go 1.19, offline. Cold build:
# 5-10 minutes on 2 cores. The build happens in a temporary dir and the
# binary is moved into place only on success; a lock keeps two runs from
# building at once. Prints progress on stderr only; stdout stays empty.
set -euo pipefail

K8S_VERSION=v1.20.2
CACHE_DIR=${BERTH_TEST_CACHE:-/var/cache/berth-test}
BIN="$CACHE_DIR/kube-apiserver-$K8S_VERSION"
GO_ROOT=/usr/lib/go-1.19

log() { echo "ensure-apiserver: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Everything below writes to stderr only.
exec 1>&2

binary_ok() { [[ -x "$BIN" ]] && "$BIN" --version 2>/dev/null | grep -q "$K8S_VERSION"; }

# ---------------------------------------------------------------- packages
# package -> a file it must provide
declare -A needs=(
    [etcd-server]=/usr/bin/etcd
    [openssl]=/usr/bin/openssl
    [util-linux]=/usr/bin/flock
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

if binary_ok; then
    install_missing
    exit 0
fi

# ---------------------------------------------------------------- build
build_needs
install_missing

mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/.build.lock"
if ! flock -n 9; then
    log "another run is building kube-apiserver; waiting for its lock"
    flock 9
fi
# The other run may have finished the job while we waited.
if binary_ok; then
    log "kube-apiserver $K8S_VERSION is cached at $BIN"
    exit 0
fi

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
    rm -f "$BIN.tmp.$$"
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

log "building kube-apiserver $K8S_VERSION with $("$GO_ROOT/bin/go" version | cut -d' ' -f3) (5-10 min on 2 cores; log: $BUILD_LOG)"
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
        make WHAT=cmd/kube-apiserver
}
mkdir -p "$WORK/home"
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
    die "make WHAT=cmd/kube-apiserver failed"
fi

OUT="$SRC/_output/bin/kube-apiserver"
[[ -x "$OUT" ]] || OUT=$(find "$SRC/_output" -type f -name kube-apiserver -perm -u+x | head -n1)
[[ -n "$OUT" && -x "$OUT" ]] || die "build finished but no kube-apiserver binary under $SRC/_output"
"$OUT" --version 2>&1 | grep -q "$K8S_VERSION" || die "built binary reports $("$OUT" --version 2>&1)"

install -m 0755 "$OUT" "$BIN.tmp.$$"
mv -f "$BIN.tmp.$$" "$BIN"
log "built kube-apiserver $K8S_VERSION in $(($(date +%s) - start)) s: $BIN"
