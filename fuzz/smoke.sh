#!/usr/bin/env bash
# Run every fuzz target once over its committed corpus (fuzz/corpus/<target>/), generating no
# new inputs. Needs cargo-fuzz (`cargo install cargo-fuzz`); its nightly flags work on the stable
# toolchain with RUSTC_BOOTSTRAP=1. Arguments go to `cargo fuzz run` (e.g. `-s none` to build
# without AddressSanitizer). Exit status: non-zero if any input fails its target.
#
# Not part of .ci/run: from a clean fuzz/target it first builds the whole dependency tree with
# sanitizer coverage in release mode, which takes far longer than CI should pay (measured in
# docs/benchmarks.md, "Fuzzing"). CI runs the same checks over the same corpora with plain
# `cargo test` instead (tests/it/corpus.rs calls hookshim::fuzzing, as the targets do).
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
targets=(signature_headers status_mapping hints operation_ids config)
for t in "${targets[@]}"; do
    echo "== $t"
    cargo fuzz run "$@" "$t" "corpus/$t" -- -runs=0
done
echo "smoke: ${#targets[@]} targets ran over their corpora"
