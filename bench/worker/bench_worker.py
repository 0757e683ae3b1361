#!/usr/bin/env python3
"""Benchmarks lbd-worker over HTTP: requests/s, sequences/s, p50/p99 latency at several
concurrencies, with dynamic batching on and off; and the in-process ceiling of ONNX Runtime.

    python bench/worker/bench_worker.py                       # CPU, 1 sentence/request
    python bench/worker/bench_worker.py --device cuda --workers 4 --clients 4 --sentences 32
    python bench/worker/bench_worker.py --ceiling-only --device cuda

Every request is a KServe v2 JSON request with binary outputs (what tritonclient sends),
pre-encoded, so the load generator spends little CPU per request; with ``--clients K`` the load
comes from K processes (concurrency split between them). Several ``--workers`` share the device,
and requests are spread over them round-robin. The model is the built-in ``minilm``, or with
``--synthetic`` a MiniLM-shaped encoder with seeded random weights (same speed; for machines
without the weights package), built by ``bench/worker/synthetic_minilm.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORDS = ("the model serves sentence embeddings for a fleet of workers behind one balancer while "
         "requests arrive in bursts and batches form in the queue").split()


def sentence(index: int, tokens: int) -> str:
    """A deterministic sentence of about ``tokens`` word pieces (bench sequence length)."""
    return " ".join(WORDS[(index + i) % len(WORDS)] for i in range(tokens - 2))


def request_body(index: int, sentences: int, tokens: int, body: str = "mixed") -> tuple[bytes, dict]:
    texts = [sentence(index + k, tokens) for k in range(sentences)]
    return encode_body("text", "BYTES", [sentences], texts, body)


def encode_body(name: str, datatype: str, shape: list[int], data: list, body: str) -> tuple[bytes, dict]:
    """A KServe v2 request and its headers. ``mixed``: JSON input, binary outputs (the default
    here); ``binary``: binary input and outputs (tritonclient's default); ``json``: JSON both ways."""
    tensor = {"name": name, "datatype": datatype, "shape": shape}
    if body != "binary":
        document = {"inputs": [tensor | {"data": data}]}
        if body == "mixed":
            document["parameters"] = {"binary_data_output": True}
        return json.dumps(document).encode(), {}
    if datatype == "BYTES":
        blob = b"".join(len(t.encode()).to_bytes(4, "little") + t.encode() for t in data)
    else:
        blob = np.asarray(data, dtype=np.float32).tobytes()
    tensor["parameters"] = {"binary_data_size": len(blob)}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return header + blob, {"Inference-Header-Content-Length": str(len(header)),
                           "Content-Type": "application/octet-stream"}


# --- workers -------------------------------------------------------------------------------

def classifier_body(index: int, body: str = "mixed") -> tuple[bytes, dict]:
    """One row of the built-in classifier: measures the worker's own per-request cost."""
    features = [((index * 7 + k) % 13) / 13.0 for k in range(8)]
    return encode_body("features", "FP32", [1, 8], features, body)


def start_workers(count: int, models: dict, device: str, threads: int, log_dir: Path) -> list[tuple]:
    workers = []
    for index in range(count):
        config = {"listen": "127.0.0.1:0", "device": device, "intra_op_threads": threads, "models": models}
        log = open(log_dir / f"worker{index}.log", "wb")
        process = subprocess.Popen([sys.executable, "-m", "lbd_worker", "--config-json", json.dumps(config)],
                                   stdout=subprocess.PIPE, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        workers.append((process, log))
    ports = []
    for process, log in workers:
        for raw in process.stdout:
            line = raw.decode().strip()
            if line.startswith("lbd-worker ready on"):
                ports.append(int(line.rsplit(":", 1)[1]))
                break
        else:
            raise RuntimeError(f"a worker exited; see {log.name}")
    return [(process, log, port) for (process, log), port in zip(workers, ports)]


def stop_workers(workers: list[tuple]) -> None:
    for process, _, _ in workers:
        process.terminate()
    for process, log, _ in workers:
        process.wait(30)
        log.close()


def scrape(ports: list[int], series: str, model: str) -> float:
    import urllib.request

    total = 0.0
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(series + "{") and f'model="{model}"' in line:
                    total += float(line.split()[-1])
    return total


# --- load generator ------------------------------------------------------------------------

async def _load(ports: list[int], concurrency: int, duration: float, bodies: list[tuple[bytes, dict]], warmup: float,
                model: str):
    import aiohttp

    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    urls = [f"http://127.0.0.1:{port}/v2/models/{model}/infer" for port in ports]
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + duration

        async def one(slot: int) -> None:
            nonlocal errors
            count = slot
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                data, headers = bodies[count % len(bodies)]
                async with session.post(urls[count % len(urls)], data=data, headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
                done = time.perf_counter()
                if measure_from <= done < stop_at:  # completions inside the window count
                    if ok:
                        latencies.append(done - sent)
                    else:
                        errors += 1
                count += concurrency

        await asyncio.gather(*(one(slot) for slot in range(concurrency)))
    return latencies, errors


def _client_process(args: tuple) -> tuple[list[float], int]:
    *job, client = args
    if client == "raw":
        sys.path.insert(0, str(HERE))
        from loadgen import run_load
        load = run_load(*job)
    else:
        load = _load(*job)
    try:
        import uvloop
        return uvloop.run(load)
    except ImportError:
        return asyncio.run(load)


def cpu_seconds(pids: list[int], loop_only: bool = False) -> float:
    """User + system CPU time the worker processes used so far: all their threads, or with
    ``loop_only`` their main thread alone (the event loop: HTTP, codec, batching)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        path = f"/proc/{pid}/task/{pid}/stat" if loop_only else f"/proc/{pid}/stat"
        try:
            fields = Path(path).read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def run_point(ports, concurrency, clients, duration, bodies, warmup, model, pids=(), client="aiohttp") -> dict:
    clients = max(1, min(clients, concurrency))
    shares = [concurrency // clients + (1 if i < concurrency % clients else 0) for i in range(clients)]
    executions_before = scrape(ports, "nv_inference_exec_count", model)
    inferences_before = scrape(ports, "nv_inference_count", model)
    requests_before = scrape(ports, "nv_inference_request_success", model)
    cpu_before, loop_before = cpu_seconds(list(pids)), cpu_seconds(list(pids), loop_only=True)
    jobs = [(ports, share, duration, bodies, warmup, model, client) for share in shares]
    if clients == 1:
        results = [_client_process(jobs[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(clients) as pool:
            results = pool.map(_client_process, jobs)
    latencies = np.array([value for result in results for value in result[0]])
    executions = scrape(ports, "nv_inference_exec_count", model) - executions_before
    inferences = scrape(ports, "nv_inference_count", model) - inferences_before
    served = scrape(ports, "nv_inference_request_success", model) - requests_before
    cpu = cpu_seconds(list(pids)) - cpu_before
    loop_cpu = cpu_seconds(list(pids), loop_only=True) - loop_before
    return {"concurrency": concurrency, "requests": int(latencies.size), "errors": sum(r[1] for r in results),
            "rps": latencies.size / duration,
            "p50_ms": float(np.percentile(latencies, 50) * 1e3) if latencies.size else None,
            "p99_ms": float(np.percentile(latencies, 99) * 1e3) if latencies.size else None,
            "mean_batch": inferences / executions if executions else None,
            # the workers' CPU (all their threads: HTTP, codec, tokenizer, ONNX Runtime) per request
            "worker_cpu_us": cpu / served * 1e6 if served and cpu == cpu else None,
            "loop_cpu_us": loop_cpu / served * 1e6 if served and loop_cpu == loop_cpu else None}


# --- in-process ceiling --------------------------------------------------------------------

def ceiling(model_path: Path, device: str, tokens: int, batch_sizes: list[int], seconds: float) -> list[dict]:
    import onnxruntime as ort

    if device.startswith("cuda") and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels, as the worker does
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda")
                 else ["CPUExecutionProvider"])
    session = ort.InferenceSession(str(model_path), providers=providers)
    rows = []
    for batch in batch_sizes:
        ids = np.random.default_rng(0).integers(1000, 5000, (batch, tokens)).astype(np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        for _ in range(3):
            session.run(["sentence_embedding"], feeds)
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            session.run(["sentence_embedding"], feeds)
            runs += 1
        elapsed = time.perf_counter() - start
        rows.append({"batch": batch, "seq_per_s": batch * runs / elapsed, "ms_per_batch": elapsed / runs * 1e3})
    return rows


# --- main ----------------------------------------------------------------------------------

def model_files(synthetic: bool, model_dir: Path, layers: int | None = None) -> tuple[dict, Path]:
    """The worker's ``models.minilm`` source settings and the ONNX path (for the ceiling)."""
    if synthetic or layers is not None:
        sys.path.insert(0, str(HERE))
        from synthetic_minilm import CONFIG, build_synthetic

        layers = CONFIG["num_hidden_layers"] if layers is None else layers
        onnx_path, tokenizer = build_synthetic(model_dir / f"synthetic-minilm-{layers}l", layers=layers)
        return {"source": str(onnx_path), "tokenizer": str(tokenizer)}, onnx_path
    from lbd_worker.build import ensure_builtin

    return {}, ensure_builtin("minilm", model_dir=model_dir).onnx_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--clients", type=int, default=1, help="load-generating processes")
    parser.add_argument("--client", choices=("aiohttp", "raw"), default="aiohttp",
                        help="aiohttp's client, or loadgen.py's lean one (several times less CPU per request)")
    parser.add_argument("--threads", type=int, default=0, help="intra_op_threads per worker (0: ORT's choice)")
    parser.add_argument("--concurrency", default="1,8,64,256")
    parser.add_argument("--modes", default="on,off", help="dynamic batching on and/or off")
    parser.add_argument("--sentences", type=int, default=1, help="sentences per request")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per sentence, [CLS]/[SEP] included")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-queue-delay", default="0ms")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--null-model", action="store_true",
                        help="a MiniLM-shaped text model of embeddings and pooling only (no layers): the "
                             "worker's own cost per text request, without the encoder's compute")
    parser.add_argument("--onnx", type=Path, help="serve this ONNX text model (with --tokenizer) instead")
    parser.add_argument("--tokenizer", type=Path)
    parser.add_argument("--fp16", action="store_true", help="built-in minilm: its float16 variant")
    parser.add_argument("--classifier", action="store_true",
                        help="serve the tiny classifier instead: the worker's per-request overhead alone")
    parser.add_argument("--body", choices=("mixed", "binary", "json"), default="mixed",
                        help="mixed: JSON inputs, binary outputs; binary: tritonclient's default; json: JSON only")
    parser.add_argument("--ceiling", default="", help="batch sizes for the in-process ceiling, e.g. 1,32,128")
    parser.add_argument("--ceiling-only", action="store_true")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/out/worker.json"))
    args = parser.parse_args()

    model_dir = args.model_dir or Path(os.environ.get("LBD_MODEL_DIR", Path.home() / ".cache/lbd/models"))
    if args.classifier:
        source, onnx_path = {}, None
    elif args.onnx:
        source, onnx_path = {"source": str(args.onnx), "tokenizer": str(args.tokenizer)}, args.onnx
    else:
        source, onnx_path = model_files(args.synthetic, model_dir, 0 if args.null_model else None)
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": _machine(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "args": {k: str(v) for k, v in vars(args).items()},
              "ceiling": [], "http": []}
    if args.ceiling or args.ceiling_only:
        sizes = [int(s) for s in (args.ceiling or "1,8,32,64,128").split(",")]
        report["ceiling"] = ceiling(onnx_path, args.device, args.tokens, sizes, seconds=3.0)
        for row in report["ceiling"]:
            print(f"ceiling batch {row['batch']:4d}: {row['seq_per_s']:9.0f} seq/s ({row['ms_per_batch']:.2f} ms)",
                  flush=True)
    if not args.ceiling_only:
        name = "classifier" if args.classifier else "minilm"
        bodies = [classifier_body(i, args.body) if args.classifier
                  else request_body(i, args.sentences, args.tokens, args.body) for i in range(64)]
        for mode in args.modes.split(","):
            model = source | {"max_batch_size": args.max_batch_size, "dynamic_batching": mode == "on",
                              "max_queue_delay": args.max_queue_delay, "instances": args.instances,
                              "max_queue_size": 100_000, "length_buckets": [args.tokens]}
            if not args.onnx and args.fp16:
                model["fp16"] = True
            if args.classifier:
                model = {k: v for k, v in model.items() if k not in ("source", "tokenizer", "length_buckets")}
            with tempfile.TemporaryDirectory() as logs:
                workers = start_workers(args.workers, {name: model}, args.device, args.threads, Path(logs))
                try:
                    for concurrency in (int(c) for c in args.concurrency.split(",")):
                        row = {"batching": mode} | run_point([w[2] for w in workers], concurrency, args.clients,
                                                             args.duration, bodies, args.warmup, name,
                                                             [w[0].pid for w in workers], args.client)
                        row["seq_per_s"] = row["rps"] * args.sentences
                        report["http"].append(row)
                        print(_format(row), flush=True)
                finally:
                    stop_workers(workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


def _format(row: dict) -> str:
    def number(value, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    return (f"batching {row['batching']:3s} c={row['concurrency']:4d}: {row['rps']:8.1f} req/s "
            f"{row['seq_per_s']:9.1f} seq/s  p50 {number(row['p50_ms']):>8} ms  p99 {number(row['p99_ms']):>8} ms  "
            f"mean batch {number(row['mean_batch'], 1)}  cpu/req {number(row.get('worker_cpu_us'), 0)} us "
            f"(loop {number(row.get('loop_cpu_us'), 0)})  "
            f"errors {row['errors']}")


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


if __name__ == "__main__":
    main()
