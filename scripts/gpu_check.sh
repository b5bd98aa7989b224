#!/usr/bin/env bash
# The checks only a GPU node can run, one command away: builds the LibTorch 2.x lane
# (./setup.sh --torch pip: PyPI's CUDA-enabled torch wheel, build-torch2/), runs the `gpu`
# ctest label there (fidelity on CUDA in float32 and bfloat16, generation, a graph with
# writes and gradients), the engine benchmark and the batching benchmark on CUDA. Fails,
# saying so, when there is no CUDA device.
# Usage: scripts/gpu_check.sh [device]   (default: cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
device="${1:-cuda}"
./setup.sh --no-demo --torch pip
if ! .venv-torch/bin/python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device (torch.cuda.is_available() is False on this machine)" >&2
  exit 1
fi
.venv-torch/bin/python -c 'import torch; print("CUDA devices:", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])'
echo "== gpu tests (build-torch2, label gpu)"
ctest --test-dir build-torch2 --output-on-failure -L gpu
echo "== engine benchmark on $device"
build-torch2/bin/engine_bench --device "$device" --model models/SmolLM2-135M-Instruct.Q4_1.gguf
build-torch2/bin/engine_bench --device "$device" --dtype bfloat16 --model models/SmolLM2-135M-Instruct.Q4_1.gguf
echo "== cross-user batching on $device (issue 14's throughput, batched against one at a time)"
build-torch2/bin/batching_bench --device "$device" --rounds 2
