#!/usr/bin/env bash
# The sanitizer lane (CI runs it after ./test.sh): the C++ tests built with AddressSanitizer
# and UBSan in build-asan/ (undefined behaviour aborts the test) and run with leak checking
# on. Suppressions, each with its reason, live in scripts/sanitize/. The build is clang's
# with libFuzzer's coverage instrumentation too (GLASSBOX_FUZZ), so the fuzz targets come
# from the same objects (scripts/fuzz/run.sh) and CI keeps them building.
# Needs what ./setup.sh --no-demo sets up (models, fixtures); installs clang itself.
# Usage: scripts/sanitize_check.sh [ctest arguments, e.g. -R codec]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fuzz/install_clang.sh

echo "== sanitizer lane: building build-asan/ (clang, ASan + UBSan)"
export CCACHE_BASEDIR="$PWD"
if [ ! -f build-asan/build.ninja ]; then
  CXX=clang++ cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DGLASSBOX_SANITIZE=ON -DGLASSBOX_FUZZ=ON -DGLASSBOX_BUILD_BENCH=OFF \
    -DCMAKE_CXX_COMPILER_LAUNCHER=ccache > /dev/null
fi
cmake --build build-asan -j2

supp="$PWD/scripts/sanitize"
export ASAN_OPTIONS="detect_leaks=1:check_initialization_order=1"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$supp/ubsan.supp"

echo "== sanitizer lane: C++ tests under ASan + UBSan"
ctest --test-dir build-asan --output-on-failure -j2 \
  -L '^(protocol|broker|engine|intervention|worker)$' "$@"
