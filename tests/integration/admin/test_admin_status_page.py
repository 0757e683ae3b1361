"""The status page in headless Chromium: it loads, polls the admin API with the token from
the URL fragment, and shows pools, backends, states, breakers and the cache hit ratio."""

from __future__ import annotations

import asyncio
from html.parser import HTMLParser
from pathlib import Path

from tests.integration.admin.conftest import Harness


class _Cells(HTMLParser):
    """Rows of the backend tables (``tr[data-backend]``) under their pool (``section[data-pool]``),
    and the text of elements by id."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[tuple[str, str], list[str]] = {}
        self.by_id: dict[str, str] = {}
        self._pool = self._row = self._id = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "section" and "data-pool" in attributes:
            self._pool = attributes["data-pool"]
        elif tag == "tr" and "data-backend" in attributes:
            self._row = (self._pool, attributes["data-backend"])
            self.rows[self._row] = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        if "id" in attributes:
            self._id = attributes["id"]
            self.by_id[self._id] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._row is not None:
            self.rows[self._row].append("".join(self._cell))
            self._cell = None
        elif tag == "tr":
            self._row = None
        if tag in ("b", "span", "div", "h1"):
            self._id = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._id is not None:
            self.by_id[self._id] += data


async def dump_dom(chromium: str, url: str, profile: Path) -> str:
    process = await asyncio.create_subprocess_exec(
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--virtual-time-budget=3000", "--dump-dom", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


def test_status_page_shows_pools_backends_breakers_and_cache_ratio(harness, chromium, tmp_path: Path):
    token_file = tmp_path / "admin.token"
    token_file.write_text("page-token")

    async def scenario() -> None:
        async with harness(token_file=token_file) as h:
            await _shape(h)
            dom = await dump_dom(chromium, f"{h.admin.url}/status#token=page-token", tmp_path / "profile")
        page = _Cells()
        page.feed(dom)
        assert set(page.rows) == {("web", "alpha"), ("web", "beta"), ("api", "gamma")}, dom[-3000:]
        alpha, beta = page.rows[("web", "alpha")], page.rows[("web", "beta")]
        assert alpha[:3] == ["alpha", f"127.0.0.1:{h.runtime.pools['web'].backends[0].port}", "drained"]
        assert "drained by an operator" in alpha[3]
        assert beta[2] == "healthy" and beta[4].startswith("open (")
        assert "breaker: 2 consecutive failures" in beta[3]
        assert page.rows[("api", "gamma")][4] == "closed"
        assert beta[9].endswith(" ms")  # the last probe's latency
        assert page.by_id["cache-ratio"] == "75.0%"
        assert page.by_id["rate"] != "-"  # two polls or more: a request rate
        assert page.by_id["error"] == ""
        assert "pool web" in dom and "1/2 usable" in dom

    asyncio.run(scenario())


async def _shape(h: Harness) -> None:
    web = h.runtime.pools["web"]
    await h.post_json("/admin/backends/web/alpha/drain", headers={"Authorization": "Bearer page-token"})
    web.backends[1].breaker.on_failure()
    web.backends[1].breaker.on_failure()
    for result in ("hit_exact", "hit_semantic", "hit_exact", "miss"):
        h.metrics.cache_lookup("web", result)
    for _ in range(3):
        assert (await h.proxy_get("/echo"))[0] == 200
