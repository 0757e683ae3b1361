"""The compiled lane's setting: ``lane:`` and ``LBD_LANE``, pool eligibility, and lbd without
the extension (the Python data plane, one log line)."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from lbd.config import load_config_text
from lbd.proxy import lane
from lbd.proxy.pool import lane_eligible
from lbd.proxy.server import ProxyServer
from lbd.runtime import Runtime
from tests.support.procs import free_port

CONFIG = """
listen: [{address: "127.0.0.1:PORT"}]
lane: %s
pools:
  plain:
    backends: [{url: "http://127.0.0.1:9"}]
  limited:
    match: {path_prefix: /limited}
    rate_limit: {rate: 10}
    backends: [{url: "http://127.0.0.1:9"}]
  affine:
    match: {path_prefix: /affine}
    balancer: {algorithm: prefix_affinity}
    backends: [{url: "http://127.0.0.1:9"}]
  secure:
    match: {path_prefix: /secure}
    backends: [{url: "https://127.0.0.1:9"}]
default_pool: plain
"""


def config(setting: str):
    return load_config_text((CONFIG % setting).replace("PORT", str(free_port())))


def test_the_environment_overrides_the_file(monkeypatch):
    monkeypatch.delenv("LBD_LANE", raising=False)
    assert lane.wanted("auto") and not lane.wanted("off")
    monkeypatch.setenv("LBD_LANE", "off")
    assert not lane.wanted("auto")
    monkeypatch.setenv("LBD_LANE", "auto")
    assert lane.wanted("off")


def test_a_bare_off_in_yaml_is_off_and_the_default_is_auto():
    assert config("off").lane == "off"
    assert config("auto").lane == "auto"
    assert load_config_text((CONFIG % "off").replace("lane: off\n", "").replace("PORT", "8080")).lane == "auto"


def test_only_pools_without_per_request_features_are_eligible():
    runtime = Runtime.build(config("auto"))
    assert {name: pool.lane_ok for name, pool in runtime.pools.items()} == {
        "plain": True, "limited": False, "affine": False, "secure": False}
    assert all(lane_eligible(pool) == pool.lane_ok for pool in runtime.pools.values())


def test_without_the_extension_lbd_serves_with_python_and_says_so(monkeypatch, caplog):
    monkeypatch.delenv("LBD_LANE", raising=False)
    import lbd.proxy

    monkeypatch.setitem(sys.modules, "lbd.proxy._lane", None)  # import raises ImportError
    monkeypatch.delattr(lbd.proxy, "_lane", raising=False)  # (once imported, the package has it)

    async def main() -> ProxyServer:
        server = ProxyServer(Runtime.build(config("auto")), asyncio.get_running_loop())
        await server.start()
        await server.shutdown(0.1)
        return server

    with caplog.at_level(logging.INFO, logger="lbd.proxy"):
        server = asyncio.run(main())
    assert server.lane is None and not server.lane_on
    assert [r.getMessage() for r in caplog.records if "lane" in r.getMessage()] == [
        "compiled lane not available: every request takes the Python data plane"]


@pytest.mark.usefixtures("compiled_lane")
def test_with_the_extension_new_connections_get_the_lane(monkeypatch):
    monkeypatch.delenv("LBD_LANE", raising=False)

    async def main() -> tuple[bool, str]:
        server = ProxyServer(Runtime.build(config("auto")), asyncio.get_running_loop())
        await server.start()
        protocol = type(server._plain_protocol()).__name__
        await server.shutdown(0.1)
        return server.lane_on, protocol

    assert asyncio.run(main()) == (True, "LaneClient")
