#!/usr/bin/env bash
# Every GPU figure of the benchmarks in one command, for a lent GPU machine without network
# (the device tool's `run`, carrying .whl/ from bench/prepare_gpu.sh). Results go to $OUT
# (default /tmp/photomaker-gpu), each file rewritten as soon as it has something new, so a run
# cut short by its time limit still returns what it measured:
#
#   log.txt                          everything printed
#   results-fp8-full.md/.json        float8 storage's error on one full-size UNet call
#   results-gpu.md/.json, gpu.png    bench/gpu.py's plan (extra arguments go to it)
#
# Usage there:  bash bench/gpu_run.sh [gpu.py arguments]
# Back here:    copy the files into bench/ and commit them; the results-gpu.json of two
#               commands of one lease join with python bench/gpu.py --merge A.json B.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/photomaker-gpu}"
mkdir -p "$OUT"
LOG="$OUT/log.txt"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; } \
    2>&1 | tee "$LOG"
if [ "${FP8:-1}" = 1 ]; then  # FP8=0: skip (a second command of the same lease)
    timeout "${FP8_TIMEOUT_S:-90}" python3 bench/fp8.py --size full --out-dir "$OUT" 2>&1 | tee -a "$LOG"
fi
python3 bench/gpu.py --out-dir "$OUT" "$@" 2>&1 | tee -a "$LOG"
python3 bench/plot.py "$OUT/results-gpu.json" --out "$OUT/gpu.png" 2>&1 | tail -n 3 | tee -a "$LOG"
ls -l "$OUT"
