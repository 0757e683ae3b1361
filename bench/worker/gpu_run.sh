#!/usr/bin/env bash
# The GPU half of bench/worker/RESULTS.md: run from the project root on the GPU machine, after the
# onnxruntime-gpu wheel (../shared/GPU.md) and the portable MiniLM weights (bench/worker/
# portable_minilm.py, split in parts under /tmp/gpup) were carried there. Every step runs even
# when an earlier one fails; figures go to stdout and $OUT.
#   DEVICE=cuda DUR=5 bash bench/worker/gpu_run.sh
set -u
OUT=${OUT:-/tmp/out}; DEVICE=${DEVICE:-cuda}; DUR=${DUR:-5}; CLIENTS=${CLIENTS:-6}
export PYTHONPATH=/tmp/site:$PWD:$PWD/backends:${PYTHONPATH:-} PYTHONUNBUFFERED=1
M=${MINILM_DIR:-/tmp/minilm}
py=${PYTHON:-python3}
mkdir -p "$M" "$OUT"
[ -f "$M/weights-f16.safetensors" ] || cat /tmp/gpup/part0* > "$M/weights-f16.safetensors"
cp -n .gpu/e/*.json "$M/" 2>/dev/null || true
step() { echo; echo "=== $*"; "$@" 2>&1 | grep -v -E '^\s*$'; }
step $py bench/worker/portable_minilm.py build "$M"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step $py bench/worker/check_device.py --device auto --onnx "$M/model.onnx" --tokenizer "$M/tokenizer.json"
step $py bench/worker/check_device.py --device "$DEVICE" --onnx "$M/model-fp16.onnx" --tokenizer "$M/tokenizer.json"
B="$py bench/worker/bench_worker.py --device $DEVICE --tokenizer $M/tokenizer.json --threads 1 --duration $DUR"
step $B --onnx "$M/model.onnx" --ceiling-only --ceiling 1,8,32,64,128,256 --out "$OUT/ceiling-fp32.json"
step $B --onnx "$M/model-fp16.onnx" --ceiling-only --ceiling 1,32,128,256 --out "$OUT/ceiling-fp16.json"
step $B --onnx "$M/model.onnx" --concurrency 1,8,64,256 --modes on,off --clients "$CLIENTS" --out "$OUT/http-1w.json"
step env LBD_WORKER_SWITCH_INTERVAL=0.005 $B --onnx "$M/model.onnx" --concurrency 64,256 --modes on --clients "$CLIENTS" \
  --out "$OUT/http-1w-switch5ms.json"
step $B --onnx "$M/model.onnx" --workers 8 --concurrency 512,1024 --modes on --clients "$CLIENTS" \
  --max-batch-size 128 --out "$OUT/http-8w-1s.json"
step $B --onnx "$M/model.onnx" --workers 4 --sentences 32 --concurrency 32,64,128 --modes on --clients 4 \
  --max-batch-size 128 --out "$OUT/http-4w-32s.json"
step $B --onnx "$M/model.onnx" --workers 8 --sentences 32 --concurrency 64,128 --modes on --clients 4 \
  --max-batch-size 256 --out "$OUT/http-8w-32s.json"
