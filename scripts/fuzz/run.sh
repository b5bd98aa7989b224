#!/usr/bin/env bash
# Fuzzes the protocol decoders or graph validation with libFuzzer (clang; the whole fuzz
# build under ASan + UBSan, undefined behaviour fatal) for RUNS inputs, then minimizes the
# committed corpus together with what the run found (-merge=1 into an empty directory).
# Runs at nice 19 in one process, so it can share a machine. A crash stops the run and
# leaves its input in the work directory it prints; fix it, and keep the input as a
# regression (the corpus replays in the test suite).
# Usage: scripts/fuzz/run.sh decode|validate [RUNS, default 10000000]
set -euo pipefail
cd "$(dirname "$0")/../.."
case "${1:-}" in
  decode) fuzzer=protocol_decode_fuzzer; dir=protocol/fuzz; dict=decode.dict ;;
  validate) fuzzer=intervention_validate_fuzzer; dir=intervention/fuzz; dict=validate.dict ;;
  *) echo "usage: $0 decode|validate [RUNS]" >&2; exit 2 ;;
esac
runs="${2:-10000000}"

scripts/fuzz/install_clang.sh

# The sanitizer lane's build directory (scripts/sanitize_check.sh), same configuration.
echo "== building $fuzzer (build-asan/)"
export CCACHE_BASEDIR="$PWD"
if [ ! -f build-asan/build.ninja ]; then
  CXX=clang++ cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DGLASSBOX_SANITIZE=ON -DGLASSBOX_FUZZ=ON -DGLASSBOX_BUILD_BENCH=OFF \
    -DCMAKE_CXX_COMPILER_LAUNCHER=ccache > /dev/null
fi
cmake --build build-asan -j2 --target "$fuzzer"

work="$(mktemp -d -t "glassbox-fuzz-$1-XXXXXX")"
mkdir "$work/new" "$work/merged"
export GLASSBOX_FUZZ_MODEL="$PWD/tests/fixtures/tiny_llama"  # the validate fuzzer's model
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
echo "== fuzzing: $runs inputs (log: $work/fuzz-0.log)"
(cd "$work" && nice -n 19 "$OLDPWD/build-asan/bin/$fuzzer" -jobs=1 -runs="$runs" -timeout=25 \
  -print_final_stats=1 -artifact_prefix="$work/" -dict="$OLDPWD/$dir/$dict" "$work/new" "$OLDPWD/$dir/corpus")
grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "$work/fuzz-0.log"

echo "== minimizing $dir/corpus with the new finds"
nice -n 19 "build-asan/bin/$fuzzer" -merge=1 "$work/merged" "$dir/corpus" "$work/new" 2> "$work/merge.log"
rm -f "$dir"/corpus/*
cp "$work"/merged/* "$dir/corpus/"
echo "$dir/corpus: $(ls "$dir/corpus" | wc -l) inputs"
