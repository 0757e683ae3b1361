"""Requests lbd sends itself (lbd.proxy.internal): the same pipeline as a client's, no socket."""

from __future__ import annotations

import asyncio
import json

import pytest
import uvloop

from lbd.config import load_config_text
from lbd.proxy.internal import Internal, dispatch
from lbd.proxy.server import ProxyServer
from lbd.runtime import Runtime
from tests.support.procs import free_port, upstream_requests

CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
log: {{access: false}}
pools:
  web:
    match: {{path_prefix: /echo}}
    backends: [{{url: "http://127.0.0.1:{upstream}"}}]
  other:
    match: {{path_prefix: /other}}
    auth: {{keys: [{{tenant: acme, sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}}]}}
    backends: [{{url: "http://127.0.0.1:{upstream}"}}]
"""


def run(upstream_port: int, scenario) -> None:
    async def main() -> None:
        runtime = Runtime.build(load_config_text(CONFIG.format(port=free_port(), upstream=upstream_port)))
        server = ProxyServer(runtime, asyncio.get_running_loop())
        try:
            await scenario(server)
        finally:
            await server.shutdown(0.5)

    uvloop.run(main())


def test_dispatch_routes_forwards_and_reads_the_whole_answer(upstreams):
    port = upstreams["a"]

    async def scenario(server: ProxyServer) -> None:
        body = b'{"x": 1}' * 1000
        response = await dispatch(server, "POST", "/echo/a?q=1", [("content-type", "application/json"),
                                                                    ("x-trace", "t1")], body)
        assert response.status == 200
        assert response.header("x-lbd-backend") == f"127.0.0.1:{port}"
        echoed = json.loads(response.body)
        assert echoed["path"] == "/echo/a" and echoed["query"] == "q=1"
        assert echoed["body_length"] == len(body)
        sent = {k.lower(): v for k, v in echoed["headers"]}
        assert sent["x-trace"] == "t1" and sent["x-forwarded-for"] == "127.0.0.1"
        await asyncio.sleep(0.01)  # connection_lost runs on the next loop iteration, as for a socket
        assert not server.connections  # the internal connection was released

    run(port, scenario)


def test_a_pinned_pool_skips_the_router_and_a_known_tenant_skips_the_key(upstreams):
    port = upstreams["a"]

    async def scenario(server: ProxyServer) -> None:
        before = upstream_requests(port)
        refused = await dispatch(server, "GET", "/other", [], internal=Internal())
        assert refused.status == 401  # a plain internal request is authenticated like any
        # /echo/x would route to "web"; the pin sends it to "other", whose key it need not show
        routed = await dispatch(server, "GET", "/echo/x", [], internal=Internal(pool="other", tenant="acme",
                                                                              client_ip="10.1.2.3"))
        assert routed.status == 200
        sent = {k.lower(): v for k, v in json.loads(routed.body)["headers"]}
        assert upstream_requests(port) == before + 1
        assert sent["x-forwarded-for"] == "10.1.2.3"
        missing = await dispatch(server, "GET", "/x", [], internal=Internal(pool="nope"))
        assert missing.status == 404 and json.loads(missing.body)["code"] == "no_route"

    run(port, scenario)


def test_lbd_errors_come_back_as_answers_and_cancelling_cancels_upstream(upstreams):
    port = upstreams["a"]

    async def scenario(server: ProxyServer) -> None:
        for backend in server.runtime.pools["web"].backends:
            backend.drained = True
        drained = await dispatch(server, "GET", "/echo", [])
        assert drained.status == 503 and json.loads(drained.body)["code"] == "no_backend"
        for backend in server.runtime.pools["web"].backends:
            backend.drained = False
        task = asyncio.ensure_future(dispatch(server, "GET", "/slow?delay=5", [], internal=Internal(pool="web")))
        await asyncio.sleep(0.3)
        assert server.runtime.pools["web"].backends[0].inflight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
        assert server.runtime.pools["web"].backends[0].inflight == 0
        assert not server.connections

    run(port, scenario)


def test_the_client_connection_caps_do_not_apply_to_internal_requests(upstreams):
    async def scenario(server: ProxyServer) -> None:
        server.limits = server.limits.model_copy(update={"max_connections": 1, "max_connections_per_ip": 1})
        server.per_ip["127.0.0.1"] = 1  # as if a real client from that address held its one connection
        answers = await asyncio.gather(*(dispatch(server, "GET", "/echo", []) for _ in range(3)))
        assert [answer.status for answer in answers] == [200, 200, 200]
        await asyncio.sleep(0.01)
        assert server.per_ip == {"127.0.0.1": 1} and not server.connections  # the client's count untouched

    run(upstreams["a"], scenario)
