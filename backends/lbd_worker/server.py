"""The KServe v2 REST endpoints, served by :mod:`lbd_worker.fasthttp`.

``/v2/health/live`` answers as soon as the socket is open; ``/v2/health/ready`` only once every
model is loaded and warmed up, and no longer once draining began. Every response carries the
worker's load: :data:`QUEUE_DEPTH_HEADER` (requests waiting in batch queues) and
:data:`INFLIGHT_HEADER` (inference requests received and not yet answered, queued included).
Errors are ``{"error": ...}`` with the status of :mod:`lbd_worker.protocol.errors`.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

import orjson

from lbd.clock import MONOTONIC, Clock
from lbd_worker import __version__
from lbd_worker.batching import DynamicBatcher
from lbd_worker.config import WorkerConfig
from lbd_worker.fasthttp import Exchange, HttpServer, Limits
from lbd_worker.inference import InferCall, Tokenizing, error_headers, header_length, scheduling
from lbd_worker.metrics import CONTENT_TYPE, WorkerMetrics
from lbd_worker.models import Model, load_model
from lbd_worker.protocol import InferenceError, NotFound, Unavailable, decode_request
from lbd_worker.runner import resolve_device

__all__ = ["QUEUE_DEPTH_HEADER", "INFLIGHT_HEADER", "WorkerServer"]

QUEUE_DEPTH_HEADER = "x-lbd-queue-depth"
INFLIGHT_HEADER = "x-lbd-inflight"
_LOAD_HEADERS = f"{QUEUE_DEPTH_HEADER}: %d\r\n{INFLIGHT_HEADER}: %d\r\n".encode()
_EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]
_MODELS = "/v2/models/"
_log = logging.getLogger("lbd_worker.server")


class _MethodNotAllowed(InferenceError):
    status = 405

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.allow = allow


class WorkerServer:
    """One worker: its models, their batchers, and the HTTP handler that serves them."""

    def __init__(self, config: WorkerConfig, *, clock: Clock = MONOTONIC) -> None:
        self.config = config
        self.models: dict[str, Model] = {}
        self.batchers: dict[str, DynamicBatcher] = {}
        self.tokenizing: dict[str, Tokenizing] = {}
        self.inflight = 0
        self.draining = False
        self.loaded = asyncio.Event()
        self.clock = clock
        self._prepare_pool = ThreadPoolExecutor(2, thread_name_prefix="tokenize")
        self.metrics = WorkerMetrics(pending=lambda name: self.batchers[name].depth, inflight=lambda: self.inflight)
        self.request_rows: dict[str, Any] = {}
        self._routes = {"/v2/health/live": ("GET", self._live), "/v2/health/ready": ("GET", self._ready),
                        "/v2": ("GET", self._server_metadata), "/metrics": ("GET", self._metrics),
                        "/v2/repository/index": ("POST", self._repository_index)}
        self._model_routes = {"": ("GET", self._model_metadata), "ready": ("GET", self._model_ready),
                              "config": ("GET", self._model_config), "infer": ("POST", self._infer)}

    @property
    def ready(self) -> bool:
        return self.loaded.is_set() and not self.draining

    @property
    def queue_depth(self) -> int:
        return sum(batcher.depth for batcher in self.batchers.values())

    def http_server(self) -> HttpServer:
        return HttpServer(self, Limits(max_body_size=self.config.max_request_size))

    async def load(self) -> None:
        """Resolves the device, loads, starts and warms up every model, then reports ready."""
        loop = asyncio.get_running_loop()
        device = await loop.run_in_executor(None, resolve_device, self.config.device)
        for name, model_config in self.config.models.items():
            model = await loop.run_in_executor(None, load_model, name, model_config, self.config, device)
            batcher = DynamicBatcher(model, self.metrics, clock=self.clock)
            if self.config.warmup:
                await batcher.run_warmup()
            self.metrics.stats(model.name, model.version)
            self.request_rows[name] = self.metrics.request_rows.labels(model.name, model.version)
            if model.tokenizes:
                self.tokenizing[name] = Tokenizing(model, self._prepare_pool)  # type: ignore[arg-type]
            batcher.start()
            model.ready = True
            self.models[name], self.batchers[name] = model, batcher
            _log.info("model %s version %s ready (%s)", name, model.version, _describe(model))
        self.loaded.set()

    async def drain(self) -> None:
        """Stops readiness and new inferences, then lets the requests already admitted finish:
        queued ones go without waiting for their batch to fill."""
        self.draining = True
        deadline = self.clock.now() + self.config.drain_timeout
        for batcher in self.batchers.values():
            batcher.hurry()
        while self.inflight and self.clock.now() < deadline:  # some may still be tokenizing
            await asyncio.sleep(0.005)
        remaining = max(0.0, deadline - self.clock.now())
        results = await asyncio.gather(*(b.drain(remaining) for b in self.batchers.values()))
        if self.inflight or not all(results):
            _log.warning("drain timeout (%.1fs) passed with requests unfinished", self.config.drain_timeout)
        for batcher in self.batchers.values():
            await batcher.close()
        self._prepare_pool.shutdown(wait=False)

    # -- HTTP ------------------------------------------------------------------------------
    def common_headers(self) -> bytes:
        return _LOAD_HEADERS % (self.queue_depth, self.inflight)

    def handle(self, exchange: Exchange) -> None:
        request = exchange.request
        path = request.path
        try:
            if path.startswith(_MODELS):
                parts = path[len(_MODELS):].split("/")
                if "%" in path:
                    parts = [unquote(part) for part in parts]
                name, version, action = _model_path(parts, path)
                method, handler = self._model_routes[action]
                _check_method(request.method, method, path)
                handler(exchange, name, version)
            else:
                route = self._routes.get(path)
                if route is None:
                    raise NotFound(f"no route for {path!r}; see /v2 and /v2/models/{{model}}")
                _check_method(request.method, route[0], path)
                route[1](exchange)
        except InferenceError as error:
            headers = error_headers(error)
            if isinstance(error, _MethodNotAllowed):
                headers = b"Allow: %s\r\n" % error.allow.encode()
            exchange.respond_error(error.status, error.message, headers)

    def _model(self, name: str, version: str | None) -> Model:
        model = self.models.get(name)
        if model is None:
            if name in self.config.models:
                raise Unavailable(f"model '{name}' is still loading")
            raise NotFound(f"unknown model '{name}'; this worker serves {sorted(self.config.models)}")
        if version not in (None, "", model.version):
            raise NotFound(f"model '{name}' has no version '{version}'; it has version {model.version}")
        return model

    def _live(self, exchange: Exchange) -> None:
        exchange.respond(200, b'{"live":true}')

    def _ready(self, exchange: Exchange) -> None:
        ready = self.ready
        exchange.respond(200 if ready else 503, b'{"ready":true}' if ready else b'{"ready":false}')

    def _server_metadata(self, exchange: Exchange) -> None:
        _json(exchange, {"name": "lbd-worker", "version": __version__, "extensions": _EXTENSIONS})

    def _metrics(self, exchange: Exchange) -> None:
        exchange.respond(200, self.metrics.render(), CONTENT_TYPE.encode())

    def _repository_index(self, exchange: Exchange) -> None:
        _json(exchange, [{"name": name, "version": str(config.version),
                          "state": "READY" if name in self.models and not self.draining else "UNAVAILABLE"}
                         for name, config in self.config.models.items()])

    def _model_metadata(self, exchange: Exchange, name: str, version: str | None) -> None:
        _json(exchange, self._model(name, version).metadata())

    def _model_ready(self, exchange: Exchange, name: str, version: str | None) -> None:
        model = self._model(name, version)
        ready = model.ready and not self.draining
        _json(exchange, {"name": model.name, "ready": ready}, 200 if ready else 503)

    def _model_config(self, exchange: Exchange, name: str, version: str | None) -> None:
        _json(exchange, _triton_config(self._model(name, version)))

    def _infer(self, exchange: Exchange, name: str, version: str | None) -> None:
        model = self._model(name, version)
        if self.draining:
            raise Unavailable("the worker is shutting down")
        call = InferCall(self, exchange, model, self.metrics.stats(model.name, model.version))
        try:
            request = exchange.request
            inference = call.inference = decode_request(request.body, header_length(request.headers))
            call.priority, call.timeout = scheduling(inference.parameters)
            if model.tokenizes:
                self.tokenizing[model.name].add(call, model.texts(inference))  # type: ignore[attr-defined]
            else:
                call.submit(model.prepare(inference))
        except InferenceError as error:
            call.set_exception(error)


def _json(exchange: Exchange, document: Any, status: int = 200) -> None:
    exchange.respond(status, orjson.dumps(document))


def _model_path(parts: list[str], path: str) -> tuple[str, str | None, str]:
    """``(model, version, action)`` of ``/v2/models/{m}[/versions/{v}][/ready|config|infer]``."""
    name, rest, version = parts[0], parts[1:], None
    if len(rest) >= 2 and rest[0] == "versions":
        version, rest = rest[1], rest[2:]
    if not name or version == "" or len(rest) > 1 or (rest and rest[0] not in ("ready", "config", "infer")):
        raise NotFound(f"no route for {path!r}")
    return name, version, rest[0] if rest else ""


def _check_method(method: str, allowed: str, path: str) -> None:
    if method == allowed or (method == "HEAD" and allowed == "GET"):
        return
    raise _MethodNotAllowed(f"method {method} is not allowed on {path}; use {allowed}", allowed)


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
