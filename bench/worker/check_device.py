#!/usr/bin/env python3
"""Starts one lbd-worker on a device and checks its MiniLM vectors against the reference
fixture (cosine >= 1 - 1e-3), through HTTP; prints the worker's provider log line.

    python bench/worker/check_device.py --device auto --onnx DIR/model.onnx --tokenizer DIR/tokenizer.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = json.loads((ROOT / "tests/unit/worker/data/minilm_reference.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto")
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--tokenizer", required=True)
    args = parser.parse_args()
    config = {"listen": "127.0.0.1:0", "device": args.device,
              "models": {"minilm": {"source": args.onnx, "tokenizer": args.tokenizer}}}
    with tempfile.TemporaryFile() as log:
        worker = subprocess.Popen([sys.executable, "-m", "lbd_worker", "--config-json", json.dumps(config)],
                                  stdout=subprocess.PIPE, stderr=log)
        port = None
        for raw in worker.stdout:
            if raw.startswith(b"lbd-worker ready on"):
                port = int(raw.decode().rsplit(":", 1)[1])
                break
        try:
            if port is None:
                log.seek(0)
                print(log.read().decode()[-3000:])
                return 1
            body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [8],
                                           "data": REFERENCE["sentences"]}]}).encode()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/minilm/infer", body, timeout=60) as r:
                output = json.loads(r.read())["outputs"][0]
            vectors = np.array(output["data"], dtype=np.float32).reshape(output["shape"])
            reference = np.array(REFERENCE["embeddings"])
            cosines = (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
            print(f"{Path(args.onnx).name} on {args.device}: min cosine to reference {cosines.min():.6f} "
                  f"({'PASS' if cosines.min() >= 1 - 1e-3 else 'FAIL'})")
        finally:
            worker.terminate()
            worker.wait(30)
        log.seek(0)
        for line in log.read().decode().splitlines():
            if "execution provider" in line or "ready (" in line:
                print("  worker:", line.split(": ", 1)[-1])
        return 0 if cosines.min() >= 1 - 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
