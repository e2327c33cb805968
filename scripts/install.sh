#!/usr/bin/env bash
# Install the app and its test tools on a CPU machine.
# torch first, pinned to the CPU wheel; the constraint keeps any later step from swapping it.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
pip install -q "$TORCH_SPEC"
constraints=$(mktemp)
echo "$TORCH_SPEC" > "$constraints"
pip install -q -c "$constraints" -r requirements.txt "$@"
# The CLIP BPE vocabulary for --tiny and the tests is read from this wheel's files.
# --no-deps: it would pull torchvision, which does not import beside the CPU torch wheel.
pip install -q --no-deps "open-clip-torch>=2.20"
