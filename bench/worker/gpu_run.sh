#!/usr/bin/env bash
# The GPU half of bench/worker/RESULTS.md: run from the project root on the GPU machine, after the
# onnxruntime-gpu wheel (../shared/GPU.md), the worker's missing wheels (.whl: orjson, pydantic,
# httptools) and the portable MiniLM weights (bench/worker/portable_minilm.py, split in parts under
# /tmp/gpup) were carried there: five calls, each carrying one .ort/ part and one 9.2 MB part of
# the weights (`split -b 9200000 -d`, under .gpw/a..e), the last also .gpu/e (config and
# tokenizer) and .whl, then this script. Every step runs even when an earlier one fails, each under a time
# limit; figures go to stdout and to $OUT/results.tgz (JSON per step).
#   DEVICE=cuda DUR=5 CLIENT=raw bash bench/worker/gpu_run.sh
# CLIENT=raw is loadgen.py's lean load generator, CLIENT=aiohttp the one of the first (aiohttp
# worker) figures. OLD_WORKER=DIR (a copy of an earlier backends/ folder) adds points for that
# worker; MPS=1 adds the multi-worker points with NVIDIA's MPS daemon started (and stopped) here.
# LBD_WORKER_CUDA_SYNC (auto|spin|yield|block) and TOKENIZERS_PARALLELISM pass through to workers.
set -u
OUT=${OUT:-/tmp/out}; DEVICE=${DEVICE:-cuda}; DUR=${DUR:-5}; CLIENTS=${CLIENTS:-6}; CLIENT=${CLIENT:-raw}
export PYTHONPATH=/tmp/site:$PWD:$PWD/backends:${PYTHONPATH:-} PYTHONUNBUFFERED=1
M=${MINILM_DIR:-/tmp/minilm}; R=/tmp/results
py=${PYTHON:-python3}
mkdir -p "$M" "$OUT" "$R"
[ -f "$M/weights-f16.safetensors" ] || cat /tmp/gpup/part0* > "$M/weights-f16.safetensors"
cp -n .gpu/e/*.json "$M/" 2>/dev/null || true
step() { echo; echo "=== $*"; timeout 150 "$@" 2>&1 | grep -v -E '^\s*$'; }
step $py bench/worker/portable_minilm.py build "$M"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
nproc; $py -c "import tokenizers, onnxruntime; print('tokenizers', tokenizers.__version__, 'onnxruntime', onnxruntime.__version__)"
step $py bench/worker/check_device.py --device auto --onnx "$M/model.onnx" --tokenizer "$M/tokenizer.json"
B="$py bench/worker/bench_worker.py --device $DEVICE --tokenizer $M/tokenizer.json --threads 1 --duration $DUR --warmup 1"
B="$B --onnx $M/model.onnx"
step $B --ceiling-only --ceiling 1,8,32,64,128,256 --out "$R/ceiling-fp32.json"
# one worker, one sentence a request: batching on vs off
step $B --client $CLIENT --concurrency 1,8,64,256 --modes on,off --clients 4 --out "$R/http-1w.json"
# several workers sharing the GPU: one sentence a request, then 32
step $B --client $CLIENT --workers 8 --concurrency 512,1024,2048 --modes on --clients "$CLIENTS" \
  --max-batch-size 128 --out "$R/http-8w-1s.json"
step env TOKENIZERS_PARALLELISM=false $B --client $CLIENT --workers 8 --concurrency 1024,1536,2048 --modes on \
  --clients "$CLIENTS" --max-batch-size 128 --out "$R/http-8w-1s-tp0.json"
step $B --client aiohttp --workers 8 --concurrency 1024 --modes on --clients "$CLIENTS" \
  --max-batch-size 128 --out "$R/http-8w-1s-aiohttp.json"
step $B --client $CLIENT --workers 4 --concurrency 1024 --modes on --clients "$CLIENTS" \
  --max-batch-size 256 --out "$R/http-4w-1s.json"
step $B --client $CLIENT --workers 4 --sentences 32 --concurrency 32,64,128 --modes on \
  --clients 4 --max-batch-size 128 --out "$R/http-4w-32s.json"
step $B --client $CLIENT --workers 8 --sentences 32 --concurrency 64,128 --modes on \
  --clients 4 --max-batch-size 256 --out "$R/http-8w-32s.json"
step env TOKENIZERS_PARALLELISM=false $B --client $CLIENT --workers 8 --sentences 32 --concurrency 128,192 \
  --modes on --clients 4 --max-batch-size 256 --out "$R/http-8w-32s-tp0.json"
if [ "${MPS:-0}" = 1 ] && command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
  mkdir -p /tmp/mps /tmp/mpslog && nvidia-cuda-mps-control -d && echo "MPS daemon started"
  step env TOKENIZERS_PARALLELISM=false $B --client $CLIENT --workers 8 --concurrency 2048 --modes on \
    --clients "$CLIENTS" --max-batch-size 128 --out "$R/mps-8w-1s.json"
  step env TOKENIZERS_PARALLELISM=false $B --client $CLIENT --workers 8 --sentences 32 --concurrency 128 \
    --modes on --clients 4 --max-batch-size 256 --out "$R/mps-8w-32s.json"
  echo quit | nvidia-cuda-mps-control
fi
if [ -n "${OLD_WORKER:-}" ]; then
  OLDPATH=/tmp/site:$OLD_WORKER:$PWD
  step env PYTHONPATH=$OLDPATH $B --client $CLIENT --concurrency 256 --modes on,off \
    --clients 4 --out "$R/old-http-1w.json"
  step env PYTHONPATH=$OLDPATH $B --client $CLIENT --workers 8 --concurrency 1024 --modes on \
    --clients "$CLIENTS" --max-batch-size 128 --out "$R/old-http-8w-1s.json"
fi
tar -czf "$OUT/results.tgz" -C "$R" .
