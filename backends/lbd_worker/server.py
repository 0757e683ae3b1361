"""The KServe v2 REST endpoints on aiohttp.

``/v2/health/live`` answers as soon as the socket is open; ``/v2/health/ready`` only once every
model is loaded and warmed up, and no longer once draining began. Every response carries the
worker's load: :data:`QUEUE_DEPTH_HEADER` (requests waiting in batch queues) and
:data:`INFLIGHT_HEADER` (inference requests received and not yet answered, queued included).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from lbd.clock import MONOTONIC, Clock
from lbd_worker import __version__
from lbd_worker.batching import DynamicBatcher
from lbd_worker.config import WorkerConfig
from lbd_worker.metrics import CONTENT_TYPE, WorkerMetrics
from lbd_worker.models import Model, load_model
from lbd_worker.protocol import (
    HEADER_LENGTH, BadRequest, ExecutionFailed, InferenceError, NotFound, Unavailable, decode_request, encode_response,
)
from lbd_worker.runner import resolve_device

__all__ = ["QUEUE_DEPTH_HEADER", "INFLIGHT_HEADER", "WorkerServer"]

QUEUE_DEPTH_HEADER = "x-lbd-queue-depth"
INFLIGHT_HEADER = "x-lbd-inflight"
_EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]
_log = logging.getLogger("lbd_worker.server")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(document: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(document), status=status, content_type="application/json",
                        headers=headers)


def _error(error: InferenceError) -> web.Response:
    headers = {"Retry-After": "1"} if error.status == 503 else None
    return _json({"error": error.message}, error.status, headers)


class WorkerServer:
    """One worker: its models, their batchers, and the aiohttp application."""

    def __init__(self, config: WorkerConfig, *, clock: Clock = MONOTONIC) -> None:
        self.config = config
        self.models: dict[str, Model] = {}
        self.batchers: dict[str, DynamicBatcher] = {}
        self.inflight = 0
        self.draining = False
        self.loaded = asyncio.Event()
        self._clock = clock
        self._prepare_pool = ThreadPoolExecutor(2, thread_name_prefix="prepare")
        self.metrics = WorkerMetrics(pending=lambda name: self.batchers[name].depth, inflight=lambda: self.inflight)

    @property
    def ready(self) -> bool:
        return self.loaded.is_set() and not self.draining

    @property
    def queue_depth(self) -> int:
        return sum(batcher.depth for batcher in self.batchers.values())

    async def load(self) -> None:
        """Resolves the device, loads, starts and warms up every model, then reports ready."""
        loop = asyncio.get_running_loop()
        device = await loop.run_in_executor(None, resolve_device, self.config.device)
        for name, model_config in self.config.models.items():
            model = await loop.run_in_executor(None, load_model, name, model_config, self.config, device)
            batcher = DynamicBatcher(model, self.metrics, clock=self._clock)
            if self.config.warmup:
                await batcher.run_warmup()
            self.metrics.stats(model.name, model.version)
            batcher.start()
            model.ready = True
            self.models[name], self.batchers[name] = model, batcher
            _log.info("model %s version %s ready (%s)", name, model.version, _describe(model))
        self.loaded.set()

    async def drain(self) -> None:
        """Stops readiness and new inferences, then lets the requests already admitted finish:
        queued ones go without waiting for their batch to fill."""
        self.draining = True
        deadline = self._clock.now() + self.config.drain_timeout
        for batcher in self.batchers.values():
            batcher.hurry()
        while self.inflight and self._clock.now() < deadline:  # some may still be in prepare()
            await asyncio.sleep(0.005)
        remaining = max(0.0, deadline - self._clock.now())
        results = await asyncio.gather(*(b.drain(remaining) for b in self.batchers.values()))
        if self.inflight or not all(results):
            _log.warning("drain timeout (%.1fs) passed with requests unfinished", self.config.drain_timeout)
        for batcher in self.batchers.values():
            await batcher.close()
        self._prepare_pool.shutdown(wait=False)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_request_size, middlewares=[self._errors])
        app.on_response_prepare.append(self._load_headers)
        get, post = web.get, web.post
        app.add_routes([
            get("/v2/health/live", self._live), get("/v2/health/ready", self._ready),
            get("/v2", self._server_metadata), get("/metrics", self._metrics),
            post("/v2/repository/index", self._repository_index),
            get("/v2/models/{model}", self._model_metadata),
            get("/v2/models/{model}/versions/{version}", self._model_metadata),
            get("/v2/models/{model}/ready", self._model_ready),
            get("/v2/models/{model}/versions/{version}/ready", self._model_ready),
            get("/v2/models/{model}/config", self._model_config),
            get("/v2/models/{model}/versions/{version}/config", self._model_config),
            post("/v2/models/{model}/infer", self._infer),
            post("/v2/models/{model}/versions/{version}/infer", self._infer),
        ])
        return app

    async def _load_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers[QUEUE_DEPTH_HEADER] = str(self.queue_depth)
        response.headers[INFLIGHT_HEADER] = str(self.inflight)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every error as ``{"error": ...}`` JSON, aiohttp's own (404, 405, 413) included."""
        try:
            return await handler(request)
        except InferenceError as error:
            return _error(error)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            return _json({"error": error.reason if error.text is None else error.text.strip()}, error.status)

    def _model(self, request: web.Request) -> Model:
        name, version = request.match_info["model"], request.match_info.get("version")
        model = self.models.get(name)
        if model is None:
            if name in self.config.models:
                raise Unavailable(f"model '{name}' is still loading")
            raise NotFound(f"unknown model '{name}'; this worker serves {sorted(self.config.models)}")
        if version not in (None, "", model.version):
            raise NotFound(f"model '{name}' has no version '{version}'; it has version {model.version}")
        return model

    async def _live(self, request: web.Request) -> web.Response:
        return _json({"live": True})

    async def _ready(self, request: web.Request) -> web.Response:
        return _json({"ready": self.ready}, 200 if self.ready else 503)

    async def _server_metadata(self, request: web.Request) -> web.Response:
        return _json({"name": "lbd-worker", "version": __version__, "extensions": _EXTENSIONS})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _repository_index(self, request: web.Request) -> web.Response:
        return _json([{"name": name, "version": str(config.version),
                       "state": "READY" if name in self.models and not self.draining else "UNAVAILABLE"}
                      for name, config in self.config.models.items()])

    async def _model_metadata(self, request: web.Request) -> web.Response:
        return _json(self._model(request).metadata())

    async def _model_ready(self, request: web.Request) -> web.Response:
        model = self._model(request)
        ready = model.ready and not self.draining
        return _json({"name": model.name, "ready": ready}, 200 if ready else 503)

    async def _model_config(self, request: web.Request) -> web.Response:
        return _json(_triton_config(self._model(request)))

    async def _infer(self, request: web.Request) -> web.Response:
        model = self._model(request)
        if self.draining:
            raise Unavailable("the worker is shutting down")
        started = self._clock.now()
        self.inflight += 1
        stats = self.metrics.stats(model.name, model.version)
        try:
            response = await self._run_inference(request, model)
        except InferenceError as error:
            stats.failures[_failure_reason(error)] += 1
            raise
        except asyncio.CancelledError:
            stats.failures["CANCELED"] += 1
            raise
        finally:
            self.inflight -= 1
        stats.request_success += 1
        stats.request_duration_us += (self._clock.now() - started) * 1e6
        return response

    async def _run_inference(self, request: web.Request, model: Model) -> web.Response:
        inference = decode_request(await request.read(), _header_length(request))
        if model.prepare_is_heavy(inference):
            loop = asyncio.get_running_loop()
            work = await loop.run_in_executor(self._prepare_pool, model.prepare, inference)
        else:
            work = model.prepare(inference)
        self.metrics.request_rows.labels(model.name, model.version).observe(work.rows)
        priority, timeout = _scheduling(inference.parameters)
        result = await self.batchers[model.name].submit(work, priority=priority, timeout=timeout)
        names = [output.name for output in inference.outputs] or [spec.name for spec in model.outputs]
        encoded = encode_response(model.name, model.version, inference,
                                  [(name, result.outputs[name]) for name in names])
        headers = {HEADER_LENGTH: str(encoded.header_length)} if encoded.header_length is not None else None
        return web.Response(body=encoded.body, headers=headers, content_type=encoded.content_type)


def _failure_reason(error: InferenceError) -> str:
    """Triton's ``reason`` label for a failed request."""
    if isinstance(error, Unavailable):
        return "REJECTED"
    return "BACKEND" if isinstance(error, ExecutionFailed) else "OTHER"


def _header_length(request: web.Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise BadRequest(f"{HEADER_LENGTH} must be a byte count, not {value!r}")
    return int(value)


def _scheduling(parameters: dict) -> tuple[int, float | None]:
    """``priority`` (1 = high) and ``timeout`` (microseconds, as Triton) from request parameters."""
    priority, timeout = parameters.get("priority", 0), parameters.get("timeout")
    if not isinstance(priority, int) or isinstance(priority, bool) or priority < 0:
        raise BadRequest(f"parameter 'priority' must be a non-negative integer, not {priority!r}")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0):
        raise BadRequest(f"parameter 'timeout' must be microseconds as a non-negative integer, not {timeout!r}")
    return priority, None if not timeout else timeout / 1e6


def _describe(model: Model) -> str:
    providers = model.session.get_providers()[0]
    batching = model.config.dynamic_batching and model.batching
    return f"{providers}, max_batch_size {model.max_batch_size}, dynamic batching {'on' if batching else 'off'}"


def _triton_config(model: Model) -> dict[str, Any]:
    """The model's settings in the shape of Triton's model configuration JSON."""
    config = model.config

    def dims(spec):
        return list(spec.shape[1:] if model.batching else spec.shape)

    document: dict[str, Any] = {
        "name": model.name, "platform": model.platform,
        "max_batch_size": model.max_batch_size if model.batching else 0,
        "input": [{"name": s.name, "data_type": f"TYPE_{s.datatype.replace('BYTES', 'STRING')}", "dims": dims(s)}
                  for s in model.inputs],
        "output": [{"name": s.name, "data_type": f"TYPE_{s.datatype.replace('BYTES', 'STRING')}", "dims": dims(s)}
                   for s in model.outputs],
        "instance_group": [{"count": config.instances}],
    }
    if config.dynamic_batching and model.batching:
        document["dynamic_batching"] = {
            "preferred_batch_size": list(config.preferred_batch_sizes),
            "max_queue_delay_microseconds": round(config.max_queue_delay * 1e6),
            "priority_levels": 2, "default_priority_level": 2,
            "default_queue_policy": {
                "max_queue_size": config.max_queue_size,
                "default_timeout_microseconds": round((config.default_queue_timeout or 0) * 1e6),
                "allow_timeout_override": config.allow_timeout_override,
            },
        }
    return document
