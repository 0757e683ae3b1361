"""A small numeric demo model: a fixed-seed two-layer MLP classifier over 8 float features.

Inputs ``features`` FP32 ``[batch, 8]``; outputs ``probabilities`` FP32 ``[batch, 3]`` (softmax)
and ``label`` INT64 ``[batch]`` (argmax). The weights come from ``numpy.random.default_rng(SEED)``,
so every build is byte-identical and tests can recompute the expected output with numpy
(:func:`reference_forward`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["FEATURES", "CLASSES", "SEED", "build_classifier", "classifier_weights", "reference_forward"]

FEATURES, HIDDEN, CLASSES, SEED = 8, 16, 3, 20240601


def classifier_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    return {
        "w1": rng.normal(0.0, 0.5, (FEATURES, HIDDEN)).astype(np.float32),
        "b1": rng.normal(0.0, 0.1, HIDDEN).astype(np.float32),
        "w2": rng.normal(0.0, 0.5, (HIDDEN, CLASSES)).astype(np.float32),
        "b2": rng.normal(0.0, 0.1, CLASSES).astype(np.float32),
    }


def reference_forward(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the ONNX graph computes, in numpy: ``(probabilities, label)``."""
    w = classifier_weights()
    hidden = np.maximum(features @ w["w1"] + w["b1"], 0.0)
    logits = hidden @ w["w2"] + w["b2"]
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = exp / exp.sum(axis=1, keepdims=True)
    return probabilities.astype(np.float32), probabilities.argmax(axis=1).astype(np.int64)


def build_classifier() -> onnx.ModelProto:
    weights = [numpy_helper.from_array(value, name) for name, value in classifier_weights().items()]
    nodes = [
        helper.make_node("MatMul", ["features", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "mlp_classifier",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", CLASSES]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])],
        weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="lbd_worker.build")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
