"""Logs from real traffic: access entries through a real proxy, admin actions through the
admin API; no credential a client or operator sent shows up in either."""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path

import orjson

from lbd.config import load_config_text
from lbd.log import AccessLog, JsonFormatter
from lbd.proxy.server import ProxyServer
from lbd.runtime import Runtime
from tests.support.procs import free_port

SECRETS = ("Bearer-abc123", "session=cafe42", "key-77", "qs-secret-9", "admin-t0k3n")

CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
pools:
  web:
    backends: [{{url: "http://127.0.0.1:{a}", name: alpha}}]
"""


async def _request(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


def test_access_log_has_the_fields_and_none_of_the_credentials(upstreams):
    stream = io.BytesIO()

    async def scenario() -> None:
        port = free_port()
        runtime = Runtime.build(load_config_text(CONFIG.format(port=port, a=upstreams["a"])))
        server = ProxyServer(runtime, asyncio.get_running_loop(), access_log=AccessLog(stream=stream))
        await server.start()
        try:
            answer = await _request(port, (
                b"GET /echo?api_key=qs-secret-9&x=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer-abc123\r\n"
                b"Cookie: session=cafe42\r\nX-Api-Key: key-77\r\nX-Request-Id: rid-1\r\nConnection: close\r\n\r\n"))
            assert answer.startswith(b"HTTP/1.1 200")
            await _request(port, b"GET /status/503 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        finally:
            await server.shutdown(1.0)

    asyncio.run(scenario())
    raw = stream.getvalue()
    assert not [s for s in SECRETS if s.encode() in raw]
    first, second = (orjson.loads(line) for line in raw.splitlines())
    assert (first["request_id"], first["path"], first["status"], first["pool"], first["backend"]) == (
        "rid-1", "/echo", 200, "web", "alpha")
    assert first["attempts"] >= 1 and first["cache"] is None and first["duration_ms"] > 0
    assert (second["status"], second["backend"]) == (503, "alpha")


def test_admin_actions_are_logged_without_the_token(harness, tmp_path: Path):
    token_file = tmp_path / "admin.token"
    token_file.write_text("admin-t0k3n")
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)

    async def scenario() -> None:
        async with harness(token_file=token_file, headers={"Authorization": "Bearer admin-t0k3n"}) as h:
            await h.post_json("/admin/backends/web/alpha/drain")
            await h.post_json("/admin/reload")
            await h.get_json("/admin/config")

    try:
        asyncio.run(scenario())
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    lines = [orjson.loads(line) for line in captured.getvalue().splitlines()]
    drained = [line for line in lines if line["msg"] == "backend drained"]
    assert drained and drained[0]["pool"] == "web" and drained[0]["backend"] == "alpha"
    assert any(line["msg"] == "reload requested" and line["ok"] is True for line in lines)
    assert "admin-t0k3n" not in captured.getvalue()
