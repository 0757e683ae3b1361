"""The GPTCache-style quality evaluation of ``eval.py``, measured through a real ``lbd serve``.

Starts three processes on loopback: an upstream that answers each KServe inference request
with the text it was asked (``outputs[0].data[0]``), ``lbd serve`` with one pool in front of
it whose ``cache:`` has a ``semantic:`` section (in-process MiniLM, memory store), and this
client. Every text travels as a real HTTP request
``POST /v2/models/minilm/infer {"inputs": [{"name": "text", "datatype": "BYTES", ...}]}``:

- fill: the cached texts are sent with ``Cache-Control: no-cache`` (no lookup, the answer is
  stored), so every origin is cached even when a near twin already is;
- query: the paraphrases are sent with ``Cache-Control: no-store`` (looked up, a miss is not
  stored, so one query never answers another). ``x-lbd-cache`` says hit, hit-semantic or
  miss; a hit's body names the cached text that answered, which decides right or wrong.

Tenants (``x-api-key``) keep the sets apart: ``mock``, ``held`` (QQP held-out), ``pos`` (QQP
duplicates) and one tenant per hard-negative pair. Each threshold of ``--thresholds`` is
applied with ``lbd reload`` (the cache survives a reload that changes only the pools'
settings), so the origins are cached once. Sets and scoring are those of ``eval.py``.

    OPENBLAS_NUM_THREADS=1 python bench/cache/proxy_eval.py --json bench/cache/proxy_eval_int8.json
    python bench/cache/proxy_eval.py --embedder fp32 --thresholds 0.90,0.92
    python bench/cache/proxy_eval.py --upstream 18000     # only the upstream (used by the above)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval import SHARED, format_row, load, split_clusters, thresholds  # noqa: E402

PATH = "/v2/models/minilm/infer"
_SENTINEL = "The proxy evaluation filled every cached text before this one"


# -- the upstream --------------------------------------------------------------------------------
def serve_upstream(port: int) -> None:
    """A KServe-shaped server that answers with the text it was asked (and its health)."""
    from aiohttp import web

    async def infer(request: web.Request) -> web.Response:
        document = json.loads(await request.read())
        text = document["inputs"][0]["data"][0]
        request.app["counter"][0] += 1
        body = {"model_name": request.match_info["model"], "model_version": "1",
                "outputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
        return web.json_response(body)

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"requests": request.app["counter"][0]})

    app = web.Application(client_max_size=1024**2)
    app["counter"] = [0]
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_get("/v2/models/{model}/ready", ready)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2/health/live", ready)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# -- lbd -----------------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config_text(listen: int, admin: int, upstream: int, threshold: float, quantized: bool,
                extra_semantic: dict | None = None) -> str:
    """One pool ``minilm`` in front of the upstream, exact + semantic cache (defaults but the
    threshold), in-process MiniLM, memory store."""
    semantic = {"threshold": threshold, **(extra_semantic or {})}
    config = {
        "listen": [{"address": f"127.0.0.1:{listen}"}],
        "admin": {"address": f"127.0.0.1:{admin}"},
        "log": {"level": "warning", "access": False},
        "watch": {"enabled": False},
        "pools": {"minilm": {"match": {"models": ["minilm"]}, "backends": [{"url": f"http://127.0.0.1:{upstream}"}],
                             "cache": {"coalesce": False, "semantic": semantic}}},
        "cache": {"store": "memory", "embedder": {"quantized": quantized, "threads": 1}},
    }
    return json.dumps(config, indent=1)  # JSON is YAML


def wait_port(port: int, process: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on {port} within {timeout:.0f}s")


class Processes:
    """The upstream and lbd, in their own process groups, stopped on exit."""

    def __init__(self, folder: Path, args: argparse.Namespace) -> None:
        self.folder = folder
        self.listen, self.admin, self.upstream = free_port(), free_port(), free_port()
        self.config = folder / "lbd.yaml"
        self.quantized = args.embedder == "int8"
        self.extra = json.loads(args.semantic) if args.semantic else None
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
        self.env = env
        self.children: list[subprocess.Popen] = []
        self._start([sys.executable, __file__, "--upstream", str(self.upstream)], "upstream")
        wait_port(self.upstream, self.children[-1], "the upstream")
        self.write(args.threshold_list[0])
        self._start([sys.executable, "-m", "lbd", "serve", "--config", str(self.config)], "lbd")
        wait_port(self.listen, self.children[-1], "lbd")
        self.wait_cache()

    def wait_cache(self, timeout: float = 300.0) -> None:
        """Until answers carry ``x-lbd-cache`` (a request that finds no cache ready skips it;
        lbd builds the cache before it listens, older versions did not)."""
        import urllib.request

        body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["probe"]}]})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            request = urllib.request.Request(f"http://127.0.0.1:{self.listen}{PATH}", data=body.encode(), headers={
                "content-type": "application/json", "x-api-key": "probe", "cache-control": "no-store"})
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.headers.get("x-lbd-cache"):
                    return
            time.sleep(0.2)
        raise SystemExit(f"lbd's cache was not ready within {timeout:.0f}s")

    def _start(self, argv: list[str], name: str) -> None:
        log = open(self.folder / f"{name}.log", "wb")
        self.children.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env,
                                              start_new_session=True))

    def write(self, threshold: float) -> None:
        self.config.write_text(config_text(self.listen, self.admin, self.upstream, threshold, self.quantized,
                                           self.extra))

    def reload(self, threshold: float) -> None:
        self.write(threshold)
        subprocess.run([sys.executable, "-m", "lbd", "reload", "-c", str(self.config)], check=True, cwd=ROOT,
                       env=self.env, stdout=subprocess.DEVNULL)

    def metrics(self) -> dict[str, float]:
        """lbd's cache counters (lookups by result, store and embedder errors)."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=10) as response:
            lines = response.read().decode().splitlines()
        return {name: float(value) for name, _, value in (line.rpartition(" ") for line in lines)
                if name.startswith(("lbd_cache_requests_total", "lbd_cache_errors_total"))}

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(15)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")


# -- the client ----------------------------------------------------------------------------------
class Client:
    """Sends texts through the proxy, ``concurrency`` at a time, and reads what answered."""

    def __init__(self, port: int, concurrency: int) -> None:
        import aiohttp

        self._url = f"http://127.0.0.1:{port}{PATH}"
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))
        self._limit = asyncio.Semaphore(concurrency)
        self.outcomes: dict[str, int] = {}
        self._sentinels = 0

    async def send(self, text: str, tenant: str, directive: str) -> tuple[str | None, float | None]:
        """``(answering text, similarity)`` for a hit, ``(None, None)`` for a miss."""
        body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]})
        headers = {"content-type": "application/json", "x-api-key": tenant, "cache-control": directive}
        async with self._limit, self._session.post(self._url, data=body, headers=headers) as response:
            payload = await response.read()
            if response.status != 200:
                raise RuntimeError(f"{response.status} from the proxy: {payload[:300]!r}")
            status = response.headers.get("x-lbd-cache", "")
        kind, _, similarity = status.partition(";")
        self.outcomes[kind] = self.outcomes.get(kind, 0) + 1
        if not kind.startswith("hit"):
            return None, None
        answer = json.loads(payload)["outputs"][0]["data"][0].strip()
        value = similarity.strip().removeprefix("similarity=")
        return answer, float(value) if value else None

    async def fill(self, texts: list[str], tenants: list[str], chunk: int = 64) -> None:
        """Caches ``texts``, ``chunk`` at a time, each chunk indexed before the next is sent.

        Entries are stored after their answer is sent, and their texts wait in the embedder's
        queue; sent faster than it embeds, a backlog past the embedder's timeout (1 s) would
        leave texts out of the index, which is not what this evaluation measures."""
        for start in range(0, len(texts), chunk):
            await asyncio.gather(*(self.send(text, tenant, "no-cache") for text, tenant in
                                   zip(texts[start:start + chunk], tenants[start:start + chunk])))
            await self.settle()

    async def settle(self, timeout: float = 120.0) -> None:
        """Waits until the texts filled so far are in the index. The embedder works in
        order, so a sentinel filled last is indexed last: once a near copy of it hits, all
        are."""
        self._sentinels += 1
        sentinel, tenant = f"{_SENTINEL} (number {self._sentinels})", f"sentinel{self._sentinels}"
        started = time.monotonic()
        await self.send(sentinel, tenant, "no-cache")
        while time.monotonic() - started < timeout:
            if (await self.send(sentinel + ".", tenant, "no-store"))[1] is not None:
                return
            await asyncio.sleep(0.02)
        raise SystemExit(f"the filled texts were not all indexed within {timeout:.0f}s")

    async def query(self, texts: list[str], tenants: list[str]) -> list[tuple[str | None, float | None]]:
        return list(await asyncio.gather(*(self.send(text, tenant, "no-store")
                                           for text, tenant in zip(texts, tenants))))

    async def close(self) -> None:
        await self._session.close()


async def evaluate(args: argparse.Namespace, processes: Processes) -> dict:
    mock, qqp, negatives = load(Path(args.source))
    cached_half, query_half = split_clusters(qqp, args.seed)
    pair_tenants = [f"pair{x['idx']}" for x in negatives]
    cluster_of = {x["origin"].strip(): x["cluster"] for x in qqp}
    client = Client(processes.listen, args.concurrency)
    try:
        started = time.perf_counter()
        await client.fill([x["origin"] for x in mock], ["mock"] * len(mock))
        await client.fill([x["origin"] for x in cached_half], ["held"] * len(cached_half))
        await client.fill([x["origin"] for x in qqp], ["pos"] * len(qqp))
        await client.fill([x["text_a"] for x in negatives], pair_tenants)
        print(f"filled in {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
        client.outcomes.clear()
        rows = []
        for number, threshold in enumerate(args.threshold_list):
            if number:
                processes.reload(threshold)
            started = time.perf_counter()
            row = {"threshold": round(threshold, 4)}
            found = await client.query([x["similar"] for x in mock], ["mock"] * len(mock))
            hits = [(f, x) for f, x in zip(found, mock) if f[0] is not None]
            wrong = sum(1 for (text, _), x in hits if text != x["origin"].strip())
            row["mock"] = {"queries": len(mock), "hits": len(hits), "correct": len(hits) - wrong, "wrong": wrong,
                           "misses": len(mock) - len(hits)}
            found = await client.query([x["similar"] for x in query_half], ["held"] * len(query_half))
            row["qqp_heldout"] = {"queries": len(query_half), "false_hits": sum(f[0] is not None for f in found)}
            found = await client.query([x["similar"] for x in qqp], ["pos"] * len(qqp))
            pos_hits = [(f, x) for f, x in zip(found, qqp) if f[0] is not None]
            pos_wrong = sum(1 for (text, _), x in pos_hits if cluster_of.get(text) != x["cluster"])
            row["qqp_positives"] = {"queries": len(qqp), "hits": len(pos_hits), "wrong": pos_wrong}
            found = await client.query([x["text_b"] for x in negatives], pair_tenants)
            row["qqp_negatives"] = {"pairs": len(negatives), "hits": sum(f[0] is not None for f in found)}
            row["seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(format_row(row), flush=True)
        return {"through": "lbd serve (real HTTP, x-lbd-cache)", "embedder": args.embedder, "seed": args.seed,
                "semantic_extra": processes.extra, "x_lbd_cache": client.outcomes, "lbd_metrics": processes.metrics(),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
                "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv), "rows": rows}
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=str(SHARED), help="folder of the three JSON files")
    parser.add_argument("--embedder", choices=("int8", "fp32"), default="int8")
    parser.add_argument("--thresholds", default="0.92", help="e.g. 0.92 or 0.88,0.92 or 0.86:0.94:0.02")
    parser.add_argument("--semantic", help="more keys of the pool's cache.semantic section, as JSON")
    parser.add_argument("--seed", type=int, default=0, help="QQP cluster split seed")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        serve_upstream(args.upstream)
        return
    args.threshold_list = [t for part in args.thresholds.split(",") for t in thresholds(part)]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the children on the way out
    with tempfile.TemporaryDirectory(prefix="lbd-proxy-eval-") as folder:
        processes = Processes(Path(folder), args)
        try:
            result = asyncio.run(evaluate(args, processes))
        except BaseException:
            processes.stop()
            print(processes.log("lbd")[-3000:], file=sys.stderr)
            raise
        processes.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
