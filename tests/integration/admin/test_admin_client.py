"""``lbd.admin.client.reload`` (what ``lbd reload`` calls) against a real admin listener."""

from __future__ import annotations

import asyncio
from pathlib import Path

from lbd.admin.client import reload
from tests.support.procs import free_port


def test_reload_client_reports_changes_errors_and_refusals(harness, tmp_path: Path):
    token_file = tmp_path / "admin.token"
    token_file.write_text("cli-token")

    async def scenario() -> None:
        async with harness(token_file=token_file) as h:
            address = f"127.0.0.1:{h.admin.bound[0][1]}"
            call = lambda token: asyncio.to_thread(reload, address, token)  # noqa: E731 - urllib blocks
            good = h.config_path.read_text()
            h.config_path.write_text(good.replace("open_for: 30s", "open_for: 5s"))
            assert await call("cli-token") == (True, "reloaded: pool web: settings: breaker")
            assert await call("cli-token") == (True, "reloaded: no changes")
            h.config_path.write_text(good.replace("interval: 200ms", "interval: soon"))
            ok, message = await call("cli-token")
            assert not ok and message.startswith("reload refused; nothing changed:\n  ")
            assert "pools.web.health.interval" in message
            ok, message = await call("wrong")
            assert not ok and "refused the token" in message

    asyncio.run(scenario())
    ok, message = reload(f"127.0.0.1:{free_port()}", None, timeout=5)
    assert not ok and message.startswith("cannot reach the admin API at http://127.0.0.1:")
