"""The worker's typed configuration: one frozen tree, unknown keys are errors.

The same :class:`WorkerConfig` is embedded in lbd's own config (``workers: {name: ...}``), so
``lbd check`` validates worker settings too, and lbd starts a worker by handing it the model
as JSON (``lbd-worker --config-json '...'``). A standalone worker reads a YAML file with the
same keys (``lbd-worker --config worker.yaml``).

The smallest valid config is ``{listen: "127.0.0.1:9001", models: {minilm: {}}}``: a model's
``source`` defaults to its name, which must then be a built-in model (``minilm``,
``classifier``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lbd.units import Duration, Size

__all__ = [
    "BUILTIN_MODELS", "ConfigError", "ModelConfig", "WorkerConfig",
    "load_worker_config", "parse_listen", "parse_device",
]

BUILTIN_MODELS = ("minilm", "classifier")
"""Models the worker builds from installed packages on first start (see ``lbd_worker.build``)."""

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ConfigError(ValueError):
    """A config that failed validation; the message names each bad field by its path."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelConfig(_Frozen):
    """One model the worker serves, with its execution and batching settings.

    Defaults: ``source`` = the model's name (a built-in), ``version: 1``,
    ``max_batch_size: 64``, ``dynamic_batching: true``, ``preferred_batch_sizes: []``,
    ``max_queue_delay: 0`` (Triton's default: batches form from what queued up while the
    instances were busy), ``max_queue_size: 1024``, ``default_queue_timeout: null``
    (none), ``allow_timeout_override: true``, ``instances: 1``,
    ``length_buckets: [16, 32, 64, 128]`` (text models), ``max_sequence_length: 256``,
    ``fp16: false``, ``tensorrt: false``.
    """

    source: str | None = None
    """A built-in name (``minilm``, ``classifier``) or the path of an ``.onnx`` file."""
    tokenizer: str | None = None
    """For an ``.onnx`` text model: the path of its ``tokenizer.json`` (makes it a text model)."""
    version: Annotated[int, Field(ge=1)] = 1
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 64
    """Most rows (sentences, feature vectors) in one execution; a request with more is refused."""
    dynamic_batching: bool = True
    """``false``: each request runs alone, as soon as an instance is free."""
    preferred_batch_sizes: tuple[Annotated[int, Field(ge=1)], ...] = ()
    max_queue_delay: Duration = 0.0
    """How long the oldest queued request may wait for a batch to fill while an instance is free.
    0 adds no latency at low load; under load, batches still fill while the instances are busy."""
    max_queue_size: Annotated[int, Field(ge=1)] = 1024
    """Requests waiting at most; one more is answered 503 at once."""
    default_queue_timeout: Duration | None = None
    """A request still queued after this long is answered 503; ``null``: no limit."""
    allow_timeout_override: bool = True
    """Whether a request's ``timeout`` parameter (microseconds, as in Triton) replaces the default."""
    instances: Annotated[int, Field(ge=1, le=16)] = 1
    """Batches that may execute at the same time (Triton's instance count)."""
    length_buckets: tuple[Annotated[int, Field(ge=1)], ...] = (16, 32, 64, 128)
    """Text models: token-count bounds; a batch holds sentences of one bucket only."""
    max_sequence_length: Annotated[int, Field(ge=8, le=512)] = 256
    fp16: bool = False
    """Serve the half-precision variant of a built-in model (faster on GPUs)."""
    tensorrt: bool = False
    """Try the TensorRT provider first on CUDA devices."""

    @field_validator("preferred_batch_sizes", "length_buckets")
    @classmethod
    def _sorted_unique(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(sorted(set(sizes)))

    @model_validator(mode="after")
    def _check_sizes(self) -> ModelConfig:
        too_big = [size for size in self.preferred_batch_sizes if size > self.max_batch_size]
        if too_big:
            raise ValueError(f"preferred_batch_sizes {too_big} exceed max_batch_size {self.max_batch_size}")
        if self.tokenizer is not None and self.source in BUILTIN_MODELS:
            raise ValueError("tokenizer is only for an .onnx source; built-in models bring their own")
        return self

    def resolved_source(self, name: str) -> str:
        """The built-in name or ONNX path this model loads (its own name when unset)."""
        return self.source if self.source is not None else name


class WorkerConfig(_Frozen):
    """One ``lbd-worker`` process: where it listens, its device, and its models.

    Defaults: ``listen: 127.0.0.1:9001``, ``device: auto`` (CUDA when there, else CPU),
    ``intra_op_threads: 0`` and ``inter_op_threads: 0`` (ONNX Runtime's choice),
    ``model_dir: null`` (``$LBD_MODEL_DIR`` or ``~/.cache/lbd/models``), ``warmup: true``,
    ``drain_timeout: 30s``, ``max_request_size: 64MiB``, ``log_level: info``.
    """

    listen: str = "127.0.0.1:9001"
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    intra_op_threads: Annotated[int, Field(ge=0, le=256)] = 0
    inter_op_threads: Annotated[int, Field(ge=0, le=256)] = 0
    model_dir: str | None = None
    """Where built-in models are built and cached."""
    warmup: bool = True
    """Run each model once (every batch shape class) before reporting ready."""
    drain_timeout: Duration = 30.0
    """On SIGTERM: how long queued and running requests may take before the worker exits."""
    max_request_size: Size = 64 * 1024 * 1024
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    models: dict[str, ModelConfig] = Field(min_length=1)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, listen: str) -> str:
        parse_listen(listen)
        return listen

    @field_validator("device")
    @classmethod
    def _check_device(cls, device: str) -> str:
        parse_device(device)
        return device

    @field_validator("models")
    @classmethod
    def _check_models(cls, models: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        for name, model in models.items():
            if not _NAME.match(name):
                raise ValueError(f"{name!r}: a model name is letters, digits, '_', '.', '-'")
            source = model.resolved_source(name)
            if source not in BUILTIN_MODELS and not source.endswith(".onnx"):
                raise ValueError(
                    f"{name}.source: {source!r} is neither a built-in model "
                    f"({', '.join(BUILTIN_MODELS)}) nor an .onnx path")
        return models

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]

    def to_json(self) -> str:
        """The JSON that ``lbd-worker --config-json`` reads back into an equal config."""
        return self.model_dump_json(exclude_defaults=True)


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9001"`` or ``"[::1]:9001"`` as ``(host, port)``; port 0 picks a free one."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{listen!r} is not host:port (e.g. 127.0.0.1:9001)")
    return host.strip("[]"), int(port)


def parse_device(device: str) -> tuple[str, int]:
    """``auto`` → ``("auto", 0)``, ``cuda:1`` → ``("cuda", 1)``; errors list what is accepted."""
    if not _DEVICE.match(device):
        raise ValueError(f"{device!r} is not one of auto, cpu, cuda, cuda:N")
    kind, _, index = device.partition(":")
    return kind, int(index or 0)


def load_worker_config(path: str | Path | None = None, *, text: str | None = None) -> WorkerConfig:
    """A :class:`WorkerConfig` from a YAML file, or from JSON/YAML ``text``.

    Raises :class:`ConfigError` whose message names every bad field by path.
    """
    if text is None:
        if path is None:
            raise ConfigError("no config: give a file or text")
        text = Path(path).read_text()
    where = str(path) if path is not None else "config"
    try:
        data: Any = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise ConfigError(f"{where}: not valid YAML/JSON: {error}") from None
    return validate_worker_config(data, where=where)


def validate_worker_config(data: Any, *, where: str = "config") -> WorkerConfig:
    try:
        return WorkerConfig.model_validate(data if data is not None else {})
    except ValidationError as error:
        raise ConfigError(f"{where}: " + format_errors(error)) from None


def format_errors(error: ValidationError) -> str:
    """One line per problem, each starting with the field's dotted path."""
    lines = []
    for problem in error.errors():
        path = ".".join(str(part) for part in problem["loc"]) or "(top)"
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}")
    return "; ".join(lines)
