"""Routing by KServe model name, path prefix, host and header, with a default pool."""

from __future__ import annotations

import http.client
import json

import pytest

ROUTES = """
listen: [{{address: "127.0.0.1:{port}"}}]
log: {{access: false}}
pools:
  embed:
    match: {{models: [minilm, e5]}}
    backends: [{{url: "http://127.0.0.1:{a}"}}]
  api:
    match: {{path_prefix: /echo/api}}
    backends: [{{url: "http://127.0.0.1:{b}"}}]
  tenant:
    match: {{headers: {{x-tenant: blue}}}}
    backends: [{{url: "http://127.0.0.1:{b}", name: tenant-b}}]
  vhost:
    match: {{host: "*.models.example"}}
    backends: [{{url: "http://127.0.0.1:{a}", name: vhost-a}}]
{default}
"""


def get(port: int, path: str, headers: dict | None = None) -> tuple[int, str | None, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("POST", path, body=b"{}", headers=headers or {})
    response = conn.getresponse()
    body = json.loads(response.read())
    return response.status, response.getheader("x-lbd-backend"), body


@pytest.fixture
def routed(lbd, upstreams):
    _, port = lbd(ROUTES, default="default_pool: api", **upstreams)
    return port, upstreams


def test_kserve_model_name_routes_with_and_without_version(routed):
    port, up = routed
    for path in ("/v2/models/minilm/infer", "/v2/models/e5/versions/3/infer", "/v2/models/minilm"):
        status, backend, _ = get(port, path)
        assert (status, backend) == (200, f"127.0.0.1:{up['a']}"), path


def test_unknown_model_falls_to_default_pool(routed):
    port, up = routed
    assert get(port, "/v2/models/other/infer")[1] == f"127.0.0.1:{up['b']}"


def test_path_prefix_header_and_host_rules(routed):
    port, up = routed
    assert get(port, "/echo/api/x")[1] == f"127.0.0.1:{up['b']}"
    assert get(port, "/echo/elsewhere", {"X-Tenant": "blue"})[1] == "tenant-b"
    assert get(port, "/echo/elsewhere", {"Host": "gpu1.models.example:8080"})[1] == "vhost-a"
    assert get(port, "/echo/elsewhere", {"Host": "models.example"})[1] == f"127.0.0.1:{up['b']}"  # default


def test_no_route_without_default_is_404_json(lbd, upstreams):
    _, port = lbd(ROUTES, default="", **upstreams)
    status, backend, body = get(port, "/nowhere")
    assert status == 404 and backend is None
    assert body["code"] == "no_route" and "/nowhere" in body["error"] and body["request_id"]
