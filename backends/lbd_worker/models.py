"""The model repository: each configured model as a :class:`Model` the batcher can drive.

Two kinds:

- :class:`TensorModel`: any ONNX file; inputs and outputs (names, datatypes, shapes) come
  from the graph. Requests of several rows along the first (batch) axis are concatenated into
  one execution and split again.
- :class:`TextEmbeddingModel`: a sentence embedder. Clients send strings (``BYTES`` input
  ``text``); the worker tokenizes them (Hugging Face ``tokenizers``), pads each batch to its
  longest sentence with an attention mask, runs the encoder and returns its mean-pooled,
  L2-normalized ``sentence_embedding`` as ``embedding``. Requests are bucketed by token count
  so one long sentence does not slow a batch of short ones.

``prepare`` runs on the event loop (validation) for tensor models; a text model validates there
(``texts``) and tokenizes on a thread (``tokenize``), many requests in one call. ``execute``
runs on an executor thread and must not touch the loop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from lbd_worker.config import BUILTIN_MODELS, ModelConfig, WorkerConfig
from lbd_worker.protocol import BadRequest, InferRequest, InputTensor
from lbd_worker.protocol.datatypes import DATATYPE_BY_ONNX, NUMPY_BY_DATATYPE
from lbd_worker.runner import Device, create_session

__all__ = ["TensorSpec", "Work", "ComputeTimes", "Model", "TensorModel", "TextEmbeddingModel", "load_model"]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]
    """``-1`` for a dynamic axis; the first axis is the batch axis of a batching model."""

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Work:
    """One validated request, ready to join a batch."""

    rows: int
    payload: Any
    bucket: int = 0
    """Requests join a batch only with others of the same bucket (token-length class for text)."""


@dataclass(frozen=True)
class ComputeTimes:
    """Seconds spent on one execution: gathering inputs, ``session.run``, splitting outputs."""

    input: float
    infer: float
    output: float


@dataclass
class Model:
    """What the server and the batcher need of a model. Subclasses implement the three hooks."""

    name: str
    version: str
    config: ModelConfig
    session: ort.InferenceSession
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    batching: bool = True
    platform: str = "onnxruntime_onnx"
    ready: bool = field(default=False, compare=False)

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "versions": [self.version], "platform": self.platform,
                "inputs": [spec.metadata() for spec in self.inputs],
                "outputs": [spec.metadata() for spec in self.outputs]}

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size if self.batching else 1

    def check_outputs(self, request: InferRequest) -> None:
        known = {spec.name for spec in self.outputs}
        for output in request.outputs:
            if output.name not in known:
                raise BadRequest(f"model '{self.name}' has no output '{output.name}'; it has {sorted(known)}")

    tokenizes = False
    """Whether requests need :meth:`TextEmbeddingModel.tokenize` off the event loop, after
    :meth:`TextEmbeddingModel.texts` validated them on it; otherwise :meth:`prepare` does all."""

    def prepare(self, request: InferRequest) -> Work:
        """Validates ``request`` against the model (raising :class:`BadRequest`) and readies it."""
        raise NotImplementedError

    def execute(self, works: Sequence[Work]) -> tuple[list[dict[str, np.ndarray]], ComputeTimes]:
        """Runs ``works`` as one batch; one output dict per work, in order."""
        raise NotImplementedError

    def warmup_works(self) -> list[list[Work]]:
        """Batches to run once before the model reports ready."""
        raise NotImplementedError


def _spec(node: ort.NodeArg, batching: bool) -> TensorSpec:
    datatype = DATATYPE_BY_ONNX.get(node.type)
    if datatype is None:
        raise ValueError(f"tensor '{node.name}' has type {node.type}, which KServe cannot carry")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
    return TensorSpec(node.name, datatype, (-1, *shape[1:]) if batching and shape else shape)


def _has_dynamic_batch_axis(nodes: Sequence[ort.NodeArg]) -> bool:
    return all(node.shape and not isinstance(node.shape[0], int) for node in nodes)


def _split_rows(outputs: dict[str, np.ndarray], works: Sequence[Work]) -> list[dict[str, np.ndarray]]:
    bounds = np.cumsum([0] + [work.rows for work in works])
    return [{name: array[start:end] for name, array in outputs.items()}
            for start, end in zip(bounds[:-1], bounds[1:])]


class TensorModel(Model):
    """Any ONNX model: tensors in, tensors out."""

    @classmethod
    def create(cls, name: str, config: ModelConfig, session: ort.InferenceSession) -> TensorModel:
        batching = _has_dynamic_batch_axis(session.get_inputs() + session.get_outputs())
        return cls(name, str(config.version), config, session,
                   tuple(_spec(node, batching) for node in session.get_inputs()),
                   tuple(_spec(node, batching) for node in session.get_outputs()), batching)

    def prepare(self, request: InferRequest) -> Work:
        self.check_outputs(request)
        by_name = {tensor.name: tensor for tensor in request.inputs}
        _check_input_names(self.name, by_name, self.inputs)
        rows = {self._check_tensor(spec, by_name[spec.name]) for spec in self.inputs}
        if len(rows) > 1:
            raise BadRequest(f"inputs disagree on the batch size: {sorted(rows)}")
        return Work(rows.pop() if self.batching else 1, {n: t.array for n, t in by_name.items()})

    def _check_tensor(self, spec: TensorSpec, tensor: InputTensor) -> int:
        if tensor.datatype != spec.datatype:
            raise BadRequest(f"input '{spec.name}': datatype {tensor.datatype}, expected {spec.datatype}")
        if len(tensor.shape) != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, tensor.shape)):
            raise BadRequest(f"input '{spec.name}': shape {list(tensor.shape)} does not match {list(spec.shape)}")
        if not self.batching:
            return 1
        return _check_rows(tensor.shape[0], self.config.max_batch_size, spec.name)

    def execute(self, works: Sequence[Work]) -> tuple[list[dict[str, np.ndarray]], ComputeTimes]:
        started = time.perf_counter()
        feeds = {spec.name: _concatenate([work.payload[spec.name] for work in works]) for spec in self.inputs}
        gathered = time.perf_counter()
        names = [spec.name for spec in self.outputs]
        outputs = dict(zip(names, self.session.run(names, feeds)))
        ran = time.perf_counter()
        split = _split_rows(outputs, works) if self.batching else [outputs]
        return split, ComputeTimes(gathered - started, ran - gathered, time.perf_counter() - ran)

    def warmup_works(self) -> list[list[Work]]:
        sizes = sorted({1, self.max_batch_size})
        return [[Work(size, {spec.name: _zeros(spec, size) for spec in self.inputs})] for size in sizes]


def _check_input_names(model: str, given: dict[str, InputTensor], expected: Sequence[TensorSpec]) -> None:
    wanted = {spec.name for spec in expected}
    unknown, missing = sorted(set(given) - wanted), sorted(wanted - set(given))
    if unknown:
        raise BadRequest(f"model '{model}' has no input {unknown[0]!r}; its inputs are {sorted(wanted)}")
    if missing:
        raise BadRequest(f"model '{model}' needs input {missing[0]!r}")


def _check_rows(rows: int, max_batch_size: int, name: str) -> int:
    if rows < 1:
        raise BadRequest(f"input '{name}': the batch axis is 0; send at least one row")
    if rows > max_batch_size:
        raise BadRequest(f"input '{name}': batch size {rows} exceeds the model's max_batch_size {max_batch_size}")
    return rows


def _concatenate(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _zeros(spec: TensorSpec, rows: int) -> np.ndarray:
    shape = [rows] + [d if d > 0 else 1 for d in spec.shape[1:]]
    return np.zeros(shape, dtype=NUMPY_BY_DATATYPE[spec.datatype])


class TextEmbeddingModel(Model):
    """Strings in (``text``, BYTES, ``[n]`` or ``[n, 1]``), normalized embeddings out."""

    tokenizer: Tokenizer

    @classmethod
    def create(cls, name: str, config: ModelConfig, session: ort.InferenceSession,
               tokenizer_path: Path) -> TextEmbeddingModel:
        names = {node.name for node in session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= names:
            raise ValueError(f"{name}: a text model needs inputs input_ids and attention_mask, has {sorted(names)}")
        dims = {node.name: node.shape for node in session.get_outputs()}
        if "sentence_embedding" not in dims:
            raise ValueError(f"{name}: a text model needs a sentence_embedding output")
        model = cls(name, str(config.version), config, session,
                    (TensorSpec("text", "BYTES", (-1,)),),
                    (TensorSpec("embedding", "FP32", (-1, int(dims["sentence_embedding"][-1]))),))
        model.tokenizer = _load_tokenizer(tokenizer_path, config.max_sequence_length)
        model._encode = getattr(model.tokenizer, "encode_batch_fast", model.tokenizer.encode_batch)
        model._feeds_type_ids = "token_type_ids" in names
        return model

    tokenizes = True

    def prepare(self, request: InferRequest) -> Work:
        return self.tokenize([self.texts(request)])[0]

    def texts(self, request: InferRequest) -> list[str]:
        """The request's sentences, validated (on the event loop: cheap, no tokenizing)."""
        self.check_outputs(request)
        tensor = _single_text_input(self.name, request.inputs)
        _check_rows(tensor.shape[0], self.config.max_batch_size, "text")
        try:
            return [element if isinstance(element, str) else element.decode()
                    for element in tensor.array.reshape(-1)]
        except UnicodeDecodeError:
            raise BadRequest("input 'text': every element must be UTF-8 text") from None

    def tokenize(self, requests: Sequence[list[str]]) -> list[Work]:
        """One :class:`Work` per request, every sentence of them tokenized in one call, which
        releases the GIL and spreads over the cores: run it on a thread, for whatever requests
        arrived meanwhile (``encode_batch_fast`` skips the character offsets, unused here)."""
        flat = [text for texts in requests for text in texts]
        ids = [np.asarray(encoding.ids, dtype=np.int64) for encoding in self._encode(flat)]
        works, start = [], 0
        for texts in requests:
            rows = ids[start:start + len(texts)]
            start += len(texts)
            works.append(Work(len(rows), rows, self._bucket(max(len(row) for row in rows))))
        return works

    def _bucket(self, tokens: int) -> int:
        for bound in self.config.length_buckets:
            if tokens <= bound:
                return bound
        return self.config.max_sequence_length

    def execute(self, works: Sequence[Work]) -> tuple[list[dict[str, np.ndarray]], ComputeTimes]:
        started = time.perf_counter()
        rows = [row for work in works for row in work.payload]
        feeds = self._pad(rows)
        gathered = time.perf_counter()
        (embeddings,) = self.session.run(["sentence_embedding"], feeds)
        ran = time.perf_counter()
        split = _split_rows({"embedding": embeddings.astype(np.float32, copy=False)}, works)
        return split, ComputeTimes(gathered - started, ran - gathered, time.perf_counter() - ran)

    def _pad(self, rows: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Right-padded ``input_ids`` and the matching ``attention_mask`` (vectorized: this runs
        on the execution thread, holding the GIL, once per batch)."""
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        attention_mask = (np.arange(lengths.max()) < lengths[:, None]).astype(np.int64)
        input_ids = np.zeros_like(attention_mask)
        input_ids[attention_mask.astype(bool)] = np.concatenate(rows)
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._feeds_type_ids:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        return feeds

    def warmup_works(self) -> list[list[Work]]:
        short = np.asarray(self.tokenizer.encode("warm up").ids, dtype=np.int64)
        sizes = sorted({1, self.max_batch_size})
        return [[Work(size, [short] * size, self._bucket(len(short)))] for size in sizes]


def _load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()  # batches are padded by the worker, to their own longest sentence
    tokenizer.enable_truncation(max_length)
    return tokenizer


def _single_text_input(model: str, inputs: Sequence[InputTensor]) -> InputTensor:
    _check_input_names(model, {tensor.name: tensor for tensor in inputs}, [TensorSpec("text", "BYTES", (-1,))])
    tensor = inputs[0]
    if tensor.datatype != "BYTES":
        raise BadRequest(f"input 'text': datatype {tensor.datatype}, expected BYTES")
    if not (len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1)):
        raise BadRequest(f"input 'text': shape {list(tensor.shape)} does not match [-1] (or [-1, 1])")
    return tensor


def load_model(name: str, config: ModelConfig, worker: WorkerConfig, device: Device) -> Model:
    """Builds (built-ins, when missing), loads and describes model ``name``; no warm-up yet."""
    from lbd_worker.build import default_model_dir, ensure_builtin

    source = config.resolved_source(name)
    model_dir = Path(worker.model_dir) if worker.model_dir else default_model_dir()
    fp16 = config.fp16 and device.is_cuda  # the CPU provider lacks float16 kernels for most ops
    if source in BUILTIN_MODELS:
        built = ensure_builtin(source, fp16=fp16, model_dir=model_dir)
        path, tokenizer = built.onnx_path, built.tokenizer_path
    else:
        path, tokenizer = Path(source), Path(config.tokenizer) if config.tokenizer else None
    session = create_session(path, device, worker, tensorrt=config.tensorrt, fp16=fp16,
                             cache_dir=model_dir / "trt")
    if tokenizer is not None:
        return TextEmbeddingModel.create(name, config, session, tokenizer)
    return TensorModel.create(name, config, session)
