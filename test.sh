#!/usr/bin/env bash
# Runs every Glassbox test. Sets up whatever is missing first (./setup.sh --no-demo), so it
# works on a fresh clone. Extra arguments go to ctest, e.g. ./test.sh -L engine. The `gpu`
# label (checks that need a CUDA device) is left out: scripts/gpu_check.sh runs it.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh --no-demo
echo "== tests"
ctest --test-dir build --output-on-failure -j2 -LE gpu "$@"
