"""An ONNX BERT encoder with mean pooling, built from a BertModel's weights with numpy alone.

The graph (opset 17) takes ``input_ids``, ``attention_mask`` and ``token_type_ids`` (int64,
``[batch, sequence]``, both axes dynamic) and yields ``last_hidden_state``
(``[batch, sequence, hidden]``) and ``sentence_embedding`` (``[batch, hidden]``: the mean of
the unmasked token states, L2-normalized, exactly as sentence-transformers' Pooling + Normalize
modules compute it). Pooling runs in float32 even in the float16 variant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["BertShape", "build_bert"]

_OPSET = 17
_MASK_BIAS = -10000.0  # representable in float16; exp() of it is 0 either way


@dataclass(frozen=True)
class BertShape:
    hidden: int
    heads: int
    layers: int
    layer_norm_eps: float

    @classmethod
    def from_config(cls, config: dict) -> BertShape:
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"only gelu BERT models are supported, not {config['hidden_act']}")
        return cls(config["hidden_size"], config["num_attention_heads"],
                   config["num_hidden_layers"], config.get("layer_norm_eps", 1e-12))


class _Graph:
    """Accumulates nodes and initializers; each op returns its output's name."""

    def __init__(self, float_type: np.dtype) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.float_type = float_type
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: np.ndarray | float | list, hint: str = "const", dtype=None) -> str:
        array = np.asarray(value, dtype=dtype if dtype is not None else self.float_type)
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, *inputs: str, hint: str | None = None, **attributes) -> str:
        output = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attributes))
        return output

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray, hint: str) -> str:
        """``x @ weight.T + bias`` for a torch Linear's ``[out, in]`` weight."""
        product = self.op("MatMul", x, self.const(np.ascontiguousarray(weight.T), hint + "_w"))
        return self.op("Add", product, self.const(bias, hint + "_b"), hint=hint)

    def layer_norm(self, x: str, weights: dict, prefix: str, eps: float) -> str:
        return self.op("LayerNormalization", x, self.const(weights[prefix + ".weight"]),
                       self.const(weights[prefix + ".bias"]), axis=-1, epsilon=eps)


def _embeddings(g: _Graph, w: dict, shape: BertShape) -> str:
    words = g.op("Gather", g.const(w["embeddings.word_embeddings.weight"], "word_embeddings"), "input_ids")
    types = g.op("Gather", g.const(w["embeddings.token_type_embeddings.weight"], "type_embeddings"),
                 "token_type_ids")
    sequence = g.op("Slice", g.op("Shape", "input_ids"), g.const([1], dtype=np.int64),
                    g.const([2], dtype=np.int64))
    positions = g.op("Slice", g.const(w["embeddings.position_embeddings.weight"], "position_embeddings"),
                     g.const([0], dtype=np.int64), sequence, g.const([0], dtype=np.int64))
    summed = g.op("Add", g.op("Add", words, types), positions)
    return g.layer_norm(summed, w, "embeddings.LayerNorm", shape.layer_norm_eps)


def _attention_bias(g: _Graph, mask: str) -> str:
    """The additive attention bias ``[B, 1, 1, S]`` from the float mask ``[B, S]``."""
    inverted = g.op("Sub", g.const(1.0, dtype=np.float32), mask)
    bias = g.op("Mul", inverted, g.const(_MASK_BIAS, dtype=np.float32))
    bias = g.op("Unsqueeze", bias, g.const([1, 2], dtype=np.int64), hint="mask_bias")
    if g.float_type != np.float32:
        bias = g.op("Cast", bias, to=TensorProto.FLOAT16)
    return bias


def _attention(g: _Graph, x: str, bias: str, w: dict, prefix: str, shape: BertShape) -> str:
    head_size = shape.hidden // shape.heads
    split_shape = g.const([0, 0, shape.heads, head_size], dtype=np.int64)

    def heads(name: str, perm: list[int]) -> str:
        projected = g.linear(x, w[f"{prefix}.self.{name}.weight"], w[f"{prefix}.self.{name}.bias"], name)
        return g.op("Transpose", g.op("Reshape", projected, split_shape), perm=perm)

    query, key, value = heads("query", [0, 2, 1, 3]), heads("key", [0, 2, 3, 1]), heads("value", [0, 2, 1, 3])
    scores = g.op("Div", g.op("MatMul", query, key), g.const(math.sqrt(head_size)))
    probabilities = g.op("Softmax", g.op("Add", scores, bias), axis=-1)
    context = g.op("Transpose", g.op("MatMul", probabilities, value), perm=[0, 2, 1, 3])
    context = g.op("Reshape", context, g.const([0, 0, shape.hidden], dtype=np.int64))
    output = g.linear(context, w[f"{prefix}.output.dense.weight"], w[f"{prefix}.output.dense.bias"], "attn_out")
    return g.layer_norm(g.op("Add", output, x), w, f"{prefix}.output.LayerNorm", shape.layer_norm_eps)


def _fused_attention(g: _Graph, x: str, mask_index: str, w: dict, prefix: str, shape: BertShape) -> str:
    """ONNX Runtime's contrib ``Attention`` (one QKV MatMul, flash/memory-efficient kernels on
    CUDA, fused softmax on CPU) in place of the plain-op subgraph above."""
    names = ("query", "key", "value")
    qkv_weight = np.concatenate([w[f"{prefix}.self.{n}.weight"].T for n in names], axis=1)
    qkv_bias = np.concatenate([w[f"{prefix}.self.{n}.bias"] for n in names])
    context = g.name("attention")
    g.nodes.append(helper.make_node(
        "Attention", [x, g.const(np.ascontiguousarray(qkv_weight), "qkv_w"), g.const(qkv_bias, "qkv_b"), mask_index],
        [context], domain="com.microsoft", num_heads=shape.heads))
    output = g.linear(context, w[f"{prefix}.output.dense.weight"], w[f"{prefix}.output.dense.bias"], "attn_out")
    return g.layer_norm(g.op("Add", output, x), w, f"{prefix}.output.LayerNorm", shape.layer_norm_eps)


def _gelu(g: _Graph, x: str) -> str:
    """The exact (erf) GELU that BERT uses; ONNX Runtime fuses this pattern."""
    erf = g.op("Erf", g.op("Div", x, g.const(math.sqrt(2.0))))
    return g.op("Mul", g.op("Mul", x, g.op("Add", erf, g.const(1.0))), g.const(0.5))


def _feed_forward(g: _Graph, x: str, w: dict, prefix: str, shape: BertShape) -> str:
    hidden = _gelu(g, g.linear(x, w[f"{prefix}.intermediate.dense.weight"],
                               w[f"{prefix}.intermediate.dense.bias"], "ffn_in"))
    output = g.linear(hidden, w[f"{prefix}.output.dense.weight"], w[f"{prefix}.output.dense.bias"], "ffn_out")
    return g.layer_norm(g.op("Add", output, x), w, f"{prefix}.output.LayerNorm", shape.layer_norm_eps)


def _mean_pool_normalize(g: _Graph, states: str, mask: str) -> str:
    """sentence-transformers' mean pooling (clamped count) then ``F.normalize`` (eps 1e-12)."""
    if g.float_type != np.float32:
        states = g.op("Cast", states, to=TensorProto.FLOAT)
    axis = g.const([1], dtype=np.int64)
    mask3 = g.op("Unsqueeze", mask, g.const([2], dtype=np.int64))
    summed = g.op("ReduceSum", g.op("Mul", states, mask3), axis, keepdims=0)
    count = g.op("Max", g.op("ReduceSum", mask3, axis, keepdims=0), g.const(1e-9, dtype=np.float32))
    mean = g.op("Div", summed, count)
    norm = g.op("Sqrt", g.op("ReduceSum", g.op("Mul", mean, mean), axis, keepdims=1))
    norm = g.op("Max", norm, g.const(1e-12, dtype=np.float32))
    return g.op("Div", mean, norm)


def build_bert(weights: dict[str, np.ndarray], config: dict, *, fp16: bool = False,
               fused: bool = True) -> onnx.ModelProto:
    """The encoder as an ONNX model; ``weights`` are a HF BertModel's (a ``bert.`` prefix is
    dropped). ``fused`` (default) uses ONNX Runtime's contrib ``Attention`` op; ``fused=False``
    builds standard ONNX ops only, for any runtime."""
    shape = BertShape.from_config(config)
    float_type = np.dtype(np.float16 if fp16 else np.float32)
    w = {name.removeprefix("bert."): np.asarray(value, dtype=float_type) if value.dtype.kind == "f" else value
         for name, value in weights.items()}
    g = _Graph(float_type)
    x = _embeddings(g, w, shape)
    mask = g.op("Cast", "attention_mask", to=TensorProto.FLOAT, hint="mask")
    if fused:
        mask_input = g.op("Cast", "attention_mask", to=TensorProto.INT32, hint="mask_index")
    else:
        mask_input = _attention_bias(g, mask)
    attention = _fused_attention if fused else _attention
    for layer in range(shape.layers):
        x = attention(g, x, mask_input, w, f"encoder.layer.{layer}.attention", shape)
        x = _feed_forward(g, x, w, f"encoder.layer.{layer}", shape)
    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    g.nodes.append(helper.make_node("Identity", [_mean_pool_normalize(g, x, mask)], ["sentence_embedding"]))
    return _model(g, shape, TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT, fused)


def _model(g: _Graph, shape: BertShape, state_type: int, fused: bool) -> onnx.ModelProto:
    ids = ["batch", "sequence"]
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ids)
              for name in ("input_ids", "attention_mask", "token_type_ids")]
    outputs = [helper.make_tensor_value_info("last_hidden_state", state_type, [*ids, shape.hidden]),
               helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", shape.hidden])]
    graph = helper.make_graph(g.nodes, "bert_mean_pooling", inputs, outputs, g.initializers)
    opsets = [helper.make_opsetid("", _OPSET)] + ([helper.make_opsetid("com.microsoft", 1)] if fused else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="lbd_worker.build")
    model.ir_version = 8  # readable by every ONNX Runtime since 1.10
    if not fused:
        onnx.checker.check_model(model)  # the checker does not know contrib ops
    return model
