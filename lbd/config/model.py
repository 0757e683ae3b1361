"""The typed configuration: one frozen tree, defaults filled first, then checked.

Every model forbids unknown keys. Cross-references (default pool, worker names, model
names claimed twice) are checked on the whole tree in :class:`Config`. Errors are turned
into path-named messages with YAML lines by :mod:`lbd.config.loader`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from lbd.balancing import registry
from lbd.balancing.base import BalancerOptions
from lbd.config.cache import CacheConfig, PoolCacheConfig
from lbd.config.jobs import JobsConfig, PoolJobsConfig
from lbd.config.policies import CascadeConfig, FallbackConfig, ShadowConfig, policy_errors
from lbd.config.resilience import BreakerConfig, HealthConfig, LimitsConfig, OutlierConfig, RetryConfig, TiersConfig
from lbd.config.security import AuthConfig, RateLimitConfig
from lbd.config.tls import ListenerTLSConfig, UpstreamTLSConfig
from lbd.units import Duration, Size
from lbd_worker.config import WorkerConfig

__all__ = [
    "Config", "ListenerConfig", "AdminConfig", "LogConfig", "PoolConfig", "MatchConfig",
    "BalancerConfig", "BackendConfig", "TimeoutsConfig", "UpstreamConfig", "ClientLimitsConfig",
    "NestedErrors", "parse_address",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NestedErrors(ValueError):
    """Raised by a validator that validated a sub-document itself (a balancer's options), so
    the loader can report each inner error under its own path."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(e["msg"] for e in errors))
        self.errors = errors


def parse_address(text: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """``host:port``, ``:port``, ``[::1]:port`` or a bare port, to ``(host, port)``."""
    text = str(text).strip()
    if text.isdigit():
        host, port = default_host, text
    elif text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"not an address: {text!r}; use [v6]:port")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"not an address: {text!r}; use host:port")
        host = host or default_host
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"port must be 1..65535 in {text!r}")
    return host, int(port)


def _address(value: str) -> str:
    parse_address(value)
    return value


class ListenerConfig(Strict):
    """A client-facing listener. Defaults: ``0.0.0.0:8080``, backlog 1024."""

    address: str = "0.0.0.0:8080"
    backlog: int = Field(1024, ge=1)
    tls: ListenerTLSConfig | None = None

    _check_address = field_validator("address")(classmethod(lambda cls, v: _address(v)))


class AdminConfig(Strict):
    """The admin API listener (metrics, status, reload). Defaults: ``127.0.0.1:9901``, no token."""

    address: str = "127.0.0.1:9901"
    token_file: str | None = None
    enabled: bool = True

    _check_address = field_validator("address")(classmethod(lambda cls, v: _address(v)))

    @model_validator(mode="after")
    def _token_off_loopback(self) -> AdminConfig:
        host = parse_address(self.address, default_host="127.0.0.1")[0]
        if self.enabled and self.token_file is None and not _is_loopback(host):
            raise ValueError(f"address {self.address!r} is reachable from other hosts: set token_file "
                             "(a bearer token is required off loopback) or bind to 127.0.0.1")
        return self


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LogConfig(Strict):
    """Logging. Defaults: level ``info``, access log on, JSON lines to stderr."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    access: bool = True


class WatchConfig(Strict):
    """Reloading on a change of the config file. Defaults: on, polled every 1s."""

    enabled: bool = True
    interval: Duration = Field(1.0, gt=0)


class ClientLimitsConfig(Strict):
    """Limits on the client side of the proxy, against slow and hostile clients.

    Defaults: keep-alive idle 75s; a request head must arrive within 30s (408); a request
    body may pause at most 60s (408); request body 1GiB (413; 0 = unlimited); request
    target 8KiB (414); header section 64KiB and 100 fields (431); 10,000 connections in
    all and 0 (no cap) per client address.
    """

    keepalive_timeout: Duration = 75.0
    header_timeout: Duration = 30.0
    body_timeout: Duration = 60.0
    max_body_size: Size = 1024**3
    max_url_size: Size = 8 * 1024
    max_header_size: Size = 64 * 1024
    max_headers: int = Field(100, ge=1)
    max_connections: int = Field(10_000, ge=1)
    max_connections_per_ip: int = Field(0, ge=0)


class MatchConfig(Strict):
    """Which requests a pool takes. All given conditions must hold.

    ``models`` routes KServe v2 paths ``/v2/models/{name}[/versions/{v}]/...`` by name (a
    dictionary lookup, checked before the other rules). ``host`` is exact or ``*.suffix``.
    """

    models: list[str] = []
    path_prefix: str | None = None
    host: str | None = None
    headers: dict[str, str] = {}

    @field_validator("models", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("path_prefix")
    @classmethod
    def _slash(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"must start with '/': {value!r}")
        return value

    @field_validator("headers")
    @classmethod
    def _lower(cls, value: dict[str, str]) -> dict[str, str]:
        return {k.lower(): v for k, v in value.items()}

    @property
    def is_empty(self) -> bool:
        return not (self.models or self.path_prefix or self.host or self.headers)


class BalancerConfig(BaseModel):
    """``algorithm`` (default ``round_robin``) plus that algorithm's own keys."""

    model_config = ConfigDict(frozen=True, extra="allow")

    algorithm: str = "round_robin"
    _options: BalancerOptions = PrivateAttr()

    @field_validator("algorithm")
    @classmethod
    def _known(cls, value: str) -> str:
        try:
            registry.get(value)
        except LookupError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _validate_options(self) -> BalancerConfig:
        options_model = registry.get(self.algorithm).Options
        try:
            self._options = options_model.model_validate(self.model_extra or {})
        except ValidationError as exc:
            raise NestedErrors(exc.errors(include_url=False)) from None
        return self

    @property
    def options(self) -> BalancerOptions:
        return self._options


class BackendConfig(Strict):
    """One backend: ``url`` (``http://host:port``) or ``worker`` (a name under ``workers:``).

    Defaults: weight 1; name: ``host:port`` or the worker's name; tier 0 (the first to take
    traffic; a higher tier takes what a degraded lower one cannot, see ``TiersConfig``).
    """

    url: str | None = None
    worker: str | None = None
    weight: float = Field(1.0, gt=0, le=1_000_000)
    name: str | None = None
    tier: int = Field(0, ge=0, le=1000)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        match = re.fullmatch(r"https?://(\[[0-9a-fA-F:.]+\]|[^/:\s]+)(?::(\d+))?/?", value)
        if match is None:
            raise ValueError(f"not a backend URL: {value!r}; use http://host:port or https://host:port")
        if match.group(2) and not 0 < int(match.group(2)) < 65536:
            raise ValueError(f"port must be 1..65535 in {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_target(self) -> BackendConfig:
        if (self.url is None) == (self.worker is None):
            raise ValueError("give exactly one of 'url' or 'worker'")
        return self

    @property
    def host_port(self) -> tuple[str, int] | None:
        if self.url is None:
            return None
        rest = self.url.partition("://")[2]
        if rest.startswith("["):
            host, _, port = rest[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = rest.partition(":")
        return host, int(port or (443 if self.tls else 80))

    @property
    def tls(self) -> bool:
        return self.url is not None and self.url.startswith("https://")

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.worker:
            return self.worker
        host, port = self.host_port  # type: ignore[misc]
        return f"{host}:{port}"


class TimeoutsConfig(Strict):
    """Upstream timeouts.

    Defaults: ``connect`` 2s (TCP connect); ``per_try`` 30s (request sent to response head);
    ``total`` 60s (the whole exchange until the response head, across tries; 0 = none);
    ``idle`` 5m (a streaming body may be silent this long before it is cut).
    """

    connect: Duration = 2.0
    per_try: Duration = 30.0
    total: Duration = 60.0
    idle: Duration = 300.0


class UpstreamConfig(Strict):
    """Pooled keep-alive connections to each backend.

    Defaults: up to 64 idle connections kept per backend, closed after 60s idle.
    """

    max_idle: int = Field(64, ge=0)
    idle_timeout: Duration = 60.0
    tls: UpstreamTLSConfig | None = None


class PoolConfig(Strict):
    """A set of interchangeable backends and how requests are spread over them."""

    match: MatchConfig = MatchConfig()
    balancer: BalancerConfig = BalancerConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    health: HealthConfig = HealthConfig()
    outlier: OutlierConfig = OutlierConfig()
    breaker: BreakerConfig = BreakerConfig()
    retry: RetryConfig = RetryConfig()
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig | None = None
    rate_limit: RateLimitConfig | None = None
    cache: PoolCacheConfig | None = None
    """What this pool's answers are cached as; none (the default) caches nothing."""
    tiers: TiersConfig = TiersConfig()
    fallback: FallbackConfig | None = None
    """The pools that answer when this one cannot; none by default."""
    cascade: CascadeConfig | None = None
    """Ask a cheap model first and a larger one when its answer is not good enough."""
    shadow: ShadowConfig | None = None
    """Copy a share of the requests to another pool and compare its answers."""
    jobs: PoolJobsConfig = PoolJobsConfig()
    """How this pool runs asynchronous jobs (on, 4 at once per instance, by default)."""
    backends: list[BackendConfig] = Field(min_length=1)

    @property
    def speaks_kserve(self) -> bool:
        """Routed by model name or served by lbd's own workers: KServe health probes apply."""
        return bool(self.match.models) or any(b.worker is not None for b in self.backends)

    @property
    def health_checked(self) -> bool:
        """Active checks need something to probe: a KServe pool, or a configured ``path``.
        A plain-HTTP pool without a path relies on passive outlier detection alone."""
        return self.health.enabled and (self.health.path is not None or self.speaks_kserve)

    @model_validator(mode="after")
    def _unique_names(self) -> PoolConfig:
        seen: set[str] = set()
        for backend in self.backends:
            if backend.display_name in seen:
                raise ValueError(f"backend {backend.display_name!r} is listed twice; give one a 'name'")
            seen.add(backend.display_name)
        return self


class FleetConfig(Strict):
    """How the local workers (``workers:``) run together. ``mps``: ``auto`` (default) starts
    an NVIDIA MPS daemon of lbd's own when two or more workers share a CUDA device and
    ``nvidia-cuda-mps-control`` is installed, so their kernels run side by side instead of
    taking turns; ``on`` also refuses to start without it; ``off`` never starts one."""

    mps: Literal["auto", "on", "off"] = "auto"


def _bare_off(schema: dict[str, Any]) -> None:
    """YAML 1.1 reads a bare ``off`` as false: the schema accepts what the model accepts."""
    schema.pop("type", None)
    schema["enum"] = ["auto", "off", False]


class Config(Strict):
    """The whole daemon configuration (see ``conf/lbd.example.yaml`` for every key)."""

    listen: list[ListenerConfig] = Field(default_factory=lambda: [ListenerConfig()], min_length=1)
    admin: AdminConfig = AdminConfig()
    log: LogConfig = LogConfig()
    watch: WatchConfig = WatchConfig()
    client: ClientLimitsConfig = ClientLimitsConfig()
    pools: dict[str, PoolConfig] = Field(min_length=1)
    default_pool: str | None = None
    workers: dict[str, WorkerConfig] = {}
    fleet: FleetConfig = FleetConfig()
    cache: CacheConfig = CacheConfig()
    jobs: JobsConfig = JobsConfig()
    lane: Literal["auto", "off"] = Field("auto", json_schema_extra=lambda schema: _bare_off(schema))
    """``auto``: plain requests of eligible pools take the compiled lane (``lbd.proxy.lane``)
    where it is built; ``off``: every request takes the Python data plane. The environment's
    ``LBD_LANE`` overrides it."""

    @field_validator("lane", mode="before")
    @classmethod
    def _lane_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML 1.1 reads a bare off as false

    @field_validator("pools", "workers")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"bad name {name!r}: use letters, digits, '_', '-', '.'")
        return value

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
        errors: list[dict[str, Any]] = []

        def error(loc: tuple[str | int, ...], msg: str) -> None:
            errors.append({"loc": loc, "msg": msg, "type": "value_error"})

        if self.default_pool is not None and self.default_pool not in self.pools:
            error(("default_pool",), f"no pool named {self.default_pool!r}; pools: {', '.join(self.pools)}")
        claimed: dict[str, str] = {}
        for pool_name, pool in self.pools.items():
            for index, backend in enumerate(pool.backends):
                if backend.worker is not None and backend.worker not in self.workers:
                    known = ", ".join(self.workers) or "none declared"
                    error(("pools", pool_name, "backends", index, "worker"),
                          f"no worker named {backend.worker!r} under 'workers:' ({known})")
            for index, model in enumerate(pool.match.models):
                if model in claimed:
                    error(("pools", pool_name, "match", "models", index),
                          f"model {model!r} is already routed to pool {claimed[model]!r}")
                claimed[model] = pool_name
            semantic = pool.cache.semantic if pool.cache is not None else None
            if semantic is not None and semantic.enabled and not isinstance(semantic.embedder, str):
                if semantic.embedder.pool not in self.pools:
                    error(("pools", pool_name, "cache", "semantic", "embedder", "pool"),
                          f"no pool named {semantic.embedder.pool!r}; pools: {', '.join(self.pools)}")
            for loc, message in policy_errors(pool_name, pool, self.pools):
                error(loc, message)
        addresses = [parse_address(listener.address) for listener in self.listen]
        for index, address in enumerate(addresses):
            if address in addresses[:index]:
                error(("listen", index, "address"), "the same address is given twice")
        if errors:
            raise NestedErrors(errors)
        return self

    @property
    def effective_default_pool(self) -> str | None:
        """The named default, else the only pool, else ``None`` (unmatched requests get 404)."""
        if self.default_pool is not None:
            return self.default_pool
        if len(self.pools) == 1:
            return next(iter(self.pools))
        return None
