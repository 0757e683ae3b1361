"""The response cache through a real ``lbd serve``: real upstreams, real MiniLM, real Redis.

Each test starts its own lbd (and upstream) processes on free ports. The upstream's ``/echo``
and ``/v2/...`` answer with what they were asked, so a served body shows which request it
answered; ``/stats`` counts what really reached it.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer
from tests.support.procs import free_port, start_lbd, start_upstream, upstream_requests, wait_for


def request(port: int, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            method: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers or {},
                                 method=method or ("POST" if body is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=20) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def kserve(text: str) -> bytes:
    return json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}).encode()


def config(port: int, admin: int, upstream: int, cache: str = "{}", top: str = "") -> str:
    return f"""
listen: [{{address: "127.0.0.1:{port}"}}]
admin: {{address: "127.0.0.1:{admin}"}}
log: {{level: warning, access: false}}
{top}
pools:
  echo:
    cache: {cache}
    health: {{enabled: false}}
    retry: {{attempts: 1}}
    backends: [{{url: "http://127.0.0.1:{upstream}"}}]
"""


@pytest.fixture(scope="module")
def model_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Where lbd's in-process MiniLM is built once for every test (as the cache conftest does)."""
    configured = os.environ.get("LBD_MODEL_DIR")
    folder = Path(configured) if configured else tmp_path_factory.getbasetemp().parent / "lbd-models"
    return {"LBD_MODEL_DIR": str(folder), "OPENBLAS_NUM_THREADS": "1"}


class Fleet:
    """One upstream and any number of lbd instances, stopped at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list = []
        proc, self.upstream = start_upstream(tmp, "a")
        self.upstream_proc = proc
        self.procs.append(proc)

    def lbd(self, cache: str = "{}", top: str = "", name: str = "lbd", env: dict[str, str] | None = None,
            upstream: int | None = None) -> tuple[int, int]:
        port, admin = free_port(), free_port()
        text = config(port, admin, upstream or self.upstream, cache, top)
        self.procs.append(start_lbd(self.tmp, text, port, name, env=env, timeout=120))
        return port, admin

    def reached(self) -> int:
        return upstream_requests(self.upstream)

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def fleet(tmp_path: Path):
    fleet = Fleet(tmp_path)
    yield fleet
    fleet.stop()


def test_equal_requests_hit_canonically_and_never_across_tenants(fleet: Fleet) -> None:
    port, _ = fleet.lbd()
    status, headers, first = request(port, "/echo", b'{"a": 1, "b": [1, 2]}')
    assert status == 200 and headers["x-lbd-cache"] == "miss"
    reached = fleet.reached()
    status, headers, again = request(port, "/echo", b'{"b":[1,2.0],"a":1}')  # the same JSON, written differently
    assert status == 200 and headers["x-lbd-cache"] == "hit" and again == first
    assert "x-lbd-backend" not in headers and int(headers["age"]) >= 0
    assert fleet.reached() == reached
    _, headers, _ = request(port, "/echo", b'{"a": 1, "b": [1, 3]}')
    assert headers["x-lbd-cache"] == "miss"
    # Tenants (API keys here) never share an answer.
    _, headers, _ = request(port, "/echo", b'{"a": 1, "b": [1, 2]}', {"x-api-key": "k1"})
    assert headers["x-lbd-cache"] == "miss"
    _, headers, _ = request(port, "/echo", b'{"a": 1, "b": [1, 2]}', {"x-api-key": "k1"})
    assert headers["x-lbd-cache"] == "hit"
    _, headers, _ = request(port, "/echo", b'{"a": 1, "b": [1, 2]}', {"x-api-key": "k2"})
    assert headers["x-lbd-cache"] == "miss"
    # A chunked request body is keyed on its content, not its framing.
    chunked = urllib.request.Request(f"http://127.0.0.1:{port}/echo", data=iter([b'{"a": 1, ', b'"b": [1, 2]}']),
                                     method="POST")
    with urllib.request.urlopen(chunked, timeout=10) as response:
        assert response.headers["x-lbd-cache"] == "hit" and response.read() == first


def test_only_answers_the_backend_and_the_client_allow_are_stored(fleet: Fleet) -> None:
    port, _ = fleet.lbd()
    for _ in range(2):  # an error is never cached (the complaint about GPTCache's users' setups)
        status, headers, _ = request(port, "/status/500", b"{}")
        assert status == 500 and headers["x-lbd-cache"] == "miss"
    for value in ("no-store", "private", "no-cache"):
        for _ in range(2):
            _, headers, _ = request(port, f"/cc?value={value}", b"{}")
            assert headers["x-lbd-cache"] == "miss", value
    # max-age=0 from the backend: stored for no time at all.
    request(port, "/cc?value=max-age%3D0", b"{}")
    assert request(port, "/cc?value=max-age%3D0", b"{}")[1]["x-lbd-cache"] == "miss"
    # The client's no-store: answered, not stored.
    request(port, "/echo", b'{"q": "ns"}', {"cache-control": "no-store"})
    assert request(port, "/echo", b'{"q": "ns"}')[1]["x-lbd-cache"] == "miss"
    # Now stored; the client's no-cache skips the lookup and goes upstream.
    reached = fleet.reached()
    _, headers, _ = request(port, "/echo", b'{"q": "ns"}', {"cache-control": "no-cache"})
    assert headers["x-lbd-cache"] == "miss" and fleet.reached() == reached + 1
    assert request(port, "/echo", b'{"q": "ns"}')[1]["x-lbd-cache"] == "hit"
    # Methods other than GET/HEAD/POST, and bodies over 64KiB, bypass the cache.
    assert request(port, "/echo", b"{}", method="PUT")[1]["x-lbd-cache"] == "bypass"
    big = b'{"x": "' + b"a" * 70_000 + b'"}'
    for _ in range(2):
        status, headers, body = request(port, "/echo", big)
        assert status == 200 and headers["x-lbd-cache"] == "bypass"
        assert json.loads(body)["body_length"] == len(big)


def test_identical_requests_in_flight_wait_for_the_first(fleet: Fleet) -> None:
    port, _ = fleet.lbd()
    reached = fleet.reached()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: request(port, "/slow?delay=1"), range(8)))
    assert all(status == 200 for status, _, _ in answers)
    kinds = sorted(headers["x-lbd-cache"] for _, headers, _ in answers)
    assert fleet.reached() == reached + 1, kinds
    assert kinds == ["hit-coalesced"] * 7 + ["miss"]


def test_an_expired_answer_is_served_marked_stale_when_every_try_fails(fleet: Fleet) -> None:
    port, _ = fleet.lbd(cache="{exact: {ttl: 1s}, stale_if_error: 1m}")
    _, headers, body = request(port, "/echo", b'{"q": 1}')
    assert headers["x-lbd-cache"] == "miss"
    time.sleep(1.3)  # past the TTL: a fresh lookup misses
    fleet.upstream_proc.stop()
    status, headers, stale = request(port, "/echo", b'{"q": 1}')
    assert status == 200 and headers["x-lbd-cache"] == "stale" and stale == body
    status, headers, _ = request(port, "/echo", b'{"q": 2}')  # nothing to fall back on: the error
    assert status == 502 and "x-lbd-cache" not in headers


def test_semantic_hits_through_the_proxy_with_guards_and_tenants(fleet: Fleet, model_env) -> None:
    port, admin = fleet.lbd(cache="{semantic: {}}", env=model_env)
    path = "/v2/models/m/infer"
    _, headers, original = request(port, path, kserve("How do I reset my password?"))
    assert headers["x-lbd-cache"] == "miss"
    status, headers, body = request(port, path, kserve("How can I reset my password?"))
    assert status == 200 and headers["x-lbd-cache"].startswith("hit-semantic; similarity=0.9")
    assert body == original  # the first question's answer
    # The negation guard: close in meaning by cosine, opposite by intent.
    _, headers, _ = request(port, path, kserve("How do I not reset my password?"))
    assert headers["x-lbd-cache"] == "miss"
    # A different number is a different question.
    request(port, path, kserve("What is the capital of France in 1900?"))
    _, headers, _ = request(port, path, kserve("What is the capital of France in 1800?"))
    assert headers["x-lbd-cache"] == "miss"
    # Another tenant's paraphrase is a miss: entries never cross tenants.
    _, headers, _ = request(port, path, kserve("How can I reset my password?"), {"x-api-key": "other"})
    assert headers["x-lbd-cache"] == "miss"
    # Chat: earlier turns are context; the same last question after another history misses.
    def chat(history: str, last: str) -> bytes:
        return json.dumps({"model": "m", "messages": [{"role": "user", "content": history},
                                                      {"role": "assistant", "content": "ok"},
                                                      {"role": "user", "content": last}]}).encode()
    request(port, "/echo/chat", chat("I use Linux.", "How do I install Python?"))
    _, headers, _ = request(port, "/echo/chat", chat("I use Linux.", "How can I install Python?"))
    assert headers["x-lbd-cache"].startswith("hit-semantic")
    _, headers, _ = request(port, "/echo/chat", chat("I use Windows.", "How can I install Python?"))
    assert headers["x-lbd-cache"] == "miss"
    # The admin API's purge drops them.
    purge = urllib.request.Request(f"http://127.0.0.1:{admin}/admin/cache/purge", data=b'{"pool": "echo"}',
                                   method="POST", headers={"content-type": "application/json"})
    with urllib.request.urlopen(purge, timeout=10) as response:
        assert json.load(response)["purged"] >= 4
    _, headers, _ = request(port, path, kserve("How do I reset my password?"))
    assert headers["x-lbd-cache"] == "miss"


def test_two_instances_share_entries_through_redis(fleet: Fleet, redis_url: str, prefix: str, model_env) -> None:
    top = f'cache: {{store: "{redis_url}", redis: {{key_prefix: "{prefix}"}}}}'
    first, _ = fleet.lbd(cache="{semantic: {}}", top=top, name="first", env=model_env)
    second, _ = fleet.lbd(cache="{semantic: {}}", top=top, name="second", env=model_env)
    path = "/v2/models/m/infer"
    _, headers, answer = request(first, path, kserve("Where can I find the billing settings?"))
    assert headers["x-lbd-cache"] == "miss"
    request(first, "/echo", b'{"exact": true}')
    time.sleep(1.0)  # the bound: entries added by one are served by the others within a second
    _, headers, body = request(second, "/echo", b'{"exact": true}')
    assert headers["x-lbd-cache"] == "hit"
    _, headers, body = request(second, path, kserve("Where do I find the billing settings?"))
    assert headers["x-lbd-cache"].startswith("hit-semantic") and body == answer
    # A third instance that starts later loads the index.
    third, _ = fleet.lbd(cache="{semantic: {}}", top=top, name="third", env=model_env)
    _, headers, body = request(third, path, kserve("Where do I find billing settings?"))
    assert headers["x-lbd-cache"].startswith("hit-semantic") and body == answer


def test_a_dead_redis_fails_open_and_is_used_again(fleet: Fleet, tmp_path: Path, prefix: str) -> None:
    redis = RedisServer(tmp_path).start()
    try:
        top = f'cache: {{store: "{redis.url}", redis: {{key_prefix: "{prefix}"}}}}'
        port, admin = fleet.lbd(top=top)
        request(port, "/echo", b'{"r": 1}')
        assert request(port, "/echo", b'{"r": 1}')[1]["x-lbd-cache"] == "hit"
        redis.kill()
        for index in range(20):  # no request fails because of the cache, and none waits long
            started = time.monotonic()
            status, headers, _ = request(port, "/echo", b'{"r": %d}' % index)
            assert status == 200 and headers["x-lbd-cache"] == "miss"
            assert time.monotonic() - started < 2.0
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        errors = [line for line in metrics.splitlines() if line.startswith("lbd_cache_errors_total")]
        assert errors and sum(float(line.rsplit(" ", 1)[1]) for line in errors) > 0, errors
        redis.start()  # the same port: lbd reconnects with backoff and caches again
        request(port, "/echo", b'{"r": "back"}')

        def cached_again() -> bool:
            request(port, "/echo", b'{"r": "back"}')
            return request(port, "/echo", b'{"r": "back"}')[1]["x-lbd-cache"] == "hit"
        wait_for(cached_again, timeout=15, interval=0.3, what="the cache in use again after Redis came back")
    finally:
        redis.kill()


def test_changing_a_models_version_drops_its_answers(tmp_path: Path, model_env) -> None:
    """A real worker serving the classifier; its version changes in the file, lbd reloads."""
    port, admin, worker = free_port(), free_port(), free_port()

    def text(version: int) -> str:
        return f"""
listen: [{{address: "127.0.0.1:{port}"}}]
admin: {{address: "127.0.0.1:{admin}"}}
log: {{level: warning, access: false}}
watch: {{enabled: false}}
pools:
  classifier:
    match: {{models: [classifier]}}
    cache: {{}}
    backends: [{{worker: w}}]
workers:
  w:
    listen: "127.0.0.1:{worker}"
    device: cpu
    intra_op_threads: 1
    model_dir: "{model_env['LBD_MODEL_DIR']}"
    models: {{classifier: {{version: {version}}}}}
"""
    proc = start_lbd(tmp_path, text(1), port, env=model_env, timeout=180)
    try:
        import numpy as np
        import tritonclient.http as triton

        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        metadata = client.get_model_metadata("classifier")
        spec = metadata["inputs"][0]
        shape = [1 if dim == -1 else dim for dim in spec["shape"]]
        features = np.linspace(-1, 1, int(np.prod(shape)), dtype=np.float32).reshape(shape)

        def infer(binary: bool):
            tensor = triton.InferInput(spec["name"], shape, spec["datatype"])
            tensor.set_data_from_numpy(features, binary_data=binary)
            return client.infer("classifier", [tensor]).as_numpy(metadata["outputs"][0]["name"])

        def hits() -> float:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as response:
                lines = response.read().decode().splitlines()
            return sum(float(line.rsplit(" ", 1)[1]) for line in lines
                       if line.startswith("lbd_cache_requests_total") and 'result="hit_exact"' in line)

        first = infer(binary=True)
        assert hits() == 0
        again = infer(binary=False)  # the same tensor as JSON: the same key
        assert hits() == 1 and np.array_equal(first, again)
        (tmp_path / "lbd.yaml").write_text(text(2))
        proc.signal(signal.SIGHUP)
        wait_for(lambda: "reloaded" in proc.output() or _reloaded(admin), timeout=120, interval=0.5,
                 what="the reload with version 2")
        wait_for(lambda: client.is_model_ready("classifier"), timeout=120, interval=0.5, what="version 2 ready")
        infer(binary=True)
        assert hits() == 1  # version 2's first answer came from the worker, not the cache
        infer(binary=True)
        assert hits() == 2
    finally:
        proc.stop()


def _reloaded(admin: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("lbd_config_reloads_total") and 'result="success"' in line:
                return float(line.rsplit(" ", 1)[1]) >= 1
    return False


def test_a_pool_of_workers_can_be_the_embedder(fleet: Fleet, model_env) -> None:
    """`embedder: {pool: minilm}`: lbd embeds through its own worker pool (internal requests)."""
    port, admin, worker = free_port(), free_port(), free_port()
    text = f"""
listen: [{{address: "127.0.0.1:{port}"}}]
admin: {{address: "127.0.0.1:{admin}"}}
log: {{level: warning, access: false}}
pools:
  minilm:
    match: {{models: [minilm]}}
    backends: [{{worker: w}}]
  qa:
    match: {{path_prefix: /echo}}
    health: {{enabled: false}}
    cache: {{semantic: {{embedder: {{pool: minilm, timeout: 5s}}}}}}
    backends: [{{url: "http://127.0.0.1:{fleet.upstream}"}}]
workers:
  w:
    listen: "127.0.0.1:{worker}"
    device: cpu
    intra_op_threads: 1
    model_dir: "{model_env['LBD_MODEL_DIR']}"
    models: {{minilm: {{}}}}
"""
    fleet.procs.append(start_lbd(fleet.tmp, text, port, "routed", env=model_env, timeout=180))
    question = json.dumps({"prompt": "How do I change the color of the sidebar?"}).encode()
    _, headers, original = request(port, "/echo/ask", question)
    assert headers["x-lbd-cache"] == "miss"
    paraphrase = json.dumps({"prompt": "How can I change the sidebar's color?"}).encode()
    _, headers, body = request(port, "/echo/ask", paraphrase)
    assert headers["x-lbd-cache"].startswith("hit-semantic") and body == original
    # The embedding requests went to the worker pool and were not cached themselves.
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    served = [line for line in lines if line.startswith("lbd_requests_total") and 'pool="minilm"' in line]
    assert served and sum(float(line.rsplit(" ", 1)[1]) for line in served) >= 2, served
    assert not [line for line in lines if line.startswith("lbd_cache_requests_total") and 'pool="minilm"' in line]


def test_a_large_body_already_whole_when_admitted_is_not_keyed(fleet: Fleet) -> None:
    """Pipelined behind a slow request, a body over 64KiB is whole before its turn comes:
    it must bypass the cache, not be keyed as if it were empty."""
    import socket

    port, _ = fleet.lbd()

    def pipelined(fill: bytes) -> dict:
        body = b'{"x": "' + fill * 70_000 + b'"}'
        raw = (b"GET /slow?delay=0.3 HTTP/1.1\r\nHost: x\r\n\r\n"
               b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%b"
               % (len(body), body))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(raw)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        second = data[data.index(b"HTTP/1.1 ", 1):]
        head, _, payload = second.partition(b"\r\n\r\n")
        assert b"x-lbd-cache: bypass" in head.lower(), head
        return json.loads(payload)

    first, second = pipelined(b"a"), pipelined(b"b")
    assert first["body_sha256"] != second["body_sha256"]  # each answer is its own request's


def test_a_client_gone_while_its_request_leads_hands_the_lead_back(fleet: Fleet) -> None:
    """The leader's client goes away while the answer is still upstream: its lead must end
    then, so an identical request goes upstream itself at once instead of waiting
    coalesce_timeout (30s) on an answer nobody will store."""
    import socket

    port, _ = fleet.lbd()
    reached = fleet.reached()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /slow?delay=2 HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: fleet.reached() == reached + 1, what="the leader's request upstream")
    started = time.monotonic()
    status, headers, _ = request(port, "/slow?delay=2")
    assert status == 200 and headers["x-lbd-cache"] == "miss"
    assert time.monotonic() - started < 6, "waited on the gone leader"
    assert fleet.reached() == reached + 2
    assert request(port, "/slow?delay=2")[1]["x-lbd-cache"] == "hit"
