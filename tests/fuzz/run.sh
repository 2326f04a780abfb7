#!/usr/bin/env bash
# Runs berth's fuzz targets for a bounded time: `tests/fuzz/run.sh [TARGET...]` (default: all four), each for
# FUZZ_SECONDS (default 60). New inputs go to tests/fuzz/corpus/<target> (not committed), starting from
# tests/fuzz/seeds/<target>; a crash stops the run and its input is in tests/fuzz/artifacts/<target>.
# cargo-fuzz needs nightly features: the stable toolchain provides them with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
seconds=${FUZZ_SECONDS:-60}
targets=("$@")
((${#targets[@]})) || targets=(ranges names image manifest)
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
    mkdir -p "tests/fuzz/corpus/$target"
    echo "tests/fuzz/run.sh: $target for ${seconds}s"
    cargo fuzz run --fuzz-dir tests/fuzz "$target" "tests/fuzz/corpus/$target" "tests/fuzz/seeds/$target" \
        -- -max_total_time="$seconds"
done
