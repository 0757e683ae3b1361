"""The router over real runtime objects built from config."""

from __future__ import annotations

from lbd.config import load_config_text
from lbd.proxy.router import model_name
from lbd.runtime import Runtime

CONFIG = """
pools:
  embed:
    match: {models: [minilm]}
    backends: [{url: "http://127.0.0.1:9001"}]
  embed_eu:
    match: {models: [minilm-eu], host: eu.example}
    backends: [{url: "http://127.0.0.1:9002"}]
  api:
    match: {path_prefix: /v1/}
    backends: [{url: "http://127.0.0.1:9003"}]
default_pool: api
"""


class Request:
    """The two things the router reads of a request."""

    def __init__(self, path: str, host: str = "", headers: dict[str, str] | None = None) -> None:
        self.path, self.host, self._headers = path, host, headers or {}

    def header(self, name: str) -> str | None:
        return self._headers.get(name)


def route(runtime: Runtime, path: str, host: str = "") -> str | None:
    pool = runtime.router.route(Request(path, host))  # type: ignore[arg-type]
    return pool.name if pool else None


def test_model_name_parsing():
    assert model_name("/v2/models/minilm/infer") == "minilm"
    assert model_name("/v2/models/minilm/versions/2/infer") == "minilm"
    assert model_name("/v2/models/minilm") == "minilm"
    assert model_name("/v2/models/") is None
    assert model_name("/v2/health/ready") is None


def test_model_routes_and_other_conditions_must_hold_too():
    runtime = Runtime.build(load_config_text(CONFIG))
    assert route(runtime, "/v2/models/minilm/infer") == "embed"
    assert route(runtime, "/v2/models/minilm-eu/infer", host="eu.example") == "embed_eu"
    assert route(runtime, "/v2/models/minilm-eu/infer", host="us.example") == "api"  # host rule fails: default
    assert route(runtime, "/v1/embeddings") == "api"


def test_no_default_means_no_route():
    runtime = Runtime.build(load_config_text(CONFIG.replace("default_pool: api", "")))
    assert route(runtime, "/other") is None


def test_reload_keeps_unchanged_backends_and_their_connections():
    first = Runtime.build(load_config_text(CONFIG))
    changed = CONFIG.replace("http://127.0.0.1:9003", "http://127.0.0.1:9004")
    second = Runtime.build(load_config_text(changed), previous=first)
    assert second.pools["embed"].backends[0] is first.pools["embed"].backends[0]
    assert second.pools["api"].backends[0] is not first.pools["api"].backends[0]
    assert [b.port for b in first.retired(second)] == [9003]
