#!/usr/bin/env bash
# Put what bench/gpu.py needs on a GPU machine without network into .whl/ (git-ignored; the
# run carries it): the diffusers wheel (the machine has torch, transformers 5.x, accelerate,
# peft, safetensors and huggingface_hub 1.x, but no diffusers), a huggingface_hub wheel that
# this diffusers accepts (>= 1.32) and transformers 5.x still does (< 2), and CLIP's BPE
# vocabulary for the real tokenizer (open-clip is not installed there), and the reference
# implementation (photomakerv 0.1.0, unpacked in .oracle/ by scripts/test.sh) for the A/B run.
# Fast mode, AOT and the new memory modes need nothing more (peft and torch are there).
# Run it here, once.
set -euo pipefail
cd "$(dirname "$0")/.."
DIFFUSERS_VERSION="${DIFFUSERS_VERSION:-$(python3 -c 'import importlib.metadata as m; print(m.version("diffusers"))')}"
HUB_VERSION="${HUB_VERSION:-1.33.0}"
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "diffusers==${DIFFUSERS_VERSION}" "huggingface_hub==${HUB_VERSION}"
BPE="$(python3 -c 'import sys; sys.path.insert(0, "."); from bench.common import bpe_vocabulary_path as p; print(p())')"
if [ "$BPE" != "$PWD/.whl/bpe_simple_vocab_16e6.txt.gz" ]; then cp "$BPE" .whl/; fi
if [ -f .oracle/photomaker/pipeline.py ]; then
    rm -rf .whl/oracle && mkdir -p .whl/oracle && cp -rL .oracle/photomaker .whl/oracle/
    rm -rf .whl/oracle/photomaker/__pycache__
else
    echo "no .oracle/photomaker: the A/B run will time ours only (scripts/test.sh unpacks it)" >&2
fi
ls -l .whl
du -sh .whl
