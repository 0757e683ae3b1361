"""API keys and rate limits through the real proxy: 401 with a challenge, tenants from
hashed keys, keys never logged nor forwarded, 429 with Retry-After and RateLimit fields,
buckets shared through a real Redis, and failing open when Redis is down."""

from __future__ import annotations

import http.client
import json
import shutil
import time

import pytest

from lbd.security import hash_key
from tests.support.procs import Proc, free_port, wait_port

KEY_A, KEY_B = "sk-acme-0123456789", "sk-globex-9876543210"

CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
pools:
  web:
    health: {{enabled: false}}
    auth:
      keys: [{{tenant: acme, sha256: "{sha_a}"}}]
      key_file: {key_file}
    rate_limit: {{rate: {rate}, burst: {burst}, by: tenant, store: "{store}"}}
    backends: [{{url: "http://127.0.0.1:{a}"}}]
"""


def call(port: int, key: str | None = None, header: str = "Authorization"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {} if key is None else {header: f"Bearer {key}" if header == "Authorization" else key}
    conn.request("GET", "/echo", headers=headers)
    response = conn.getresponse()
    return response, response.read()


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(f"- {{tenant: globex, sha256: {hash_key(KEY_B)}}}\n")
    return path


def start(lbd, upstreams, key_file, rate=1000, burst=1000, store="local"):
    return lbd(CONFIG, a=upstreams["a"], sha_a=hash_key(KEY_A), key_file=key_file, rate=rate, burst=burst,
               store=store)


def test_api_keys_name_tenants_and_never_leak(lbd, upstreams, key_file):
    proc, port = start(lbd, upstreams, key_file)
    for key in (None, "sk-wrong", ""):
        response, body = call(port, key)
        assert response.status == 401
        assert response.getheader("www-authenticate") == 'Bearer realm="lbd"'
        assert json.loads(body)["code"] == "unauthorized"
    response, _ = call(port, KEY_A.replace("Bearer", ""), header="X-Other")
    assert response.status == 401
    for key in (KEY_A, KEY_B):  # one from the config, one from the key file
        response, body = call(port, key)
        assert response.status == 200
        received = {k.lower() for k, _ in json.loads(body)["headers"]}
        assert "authorization" not in received  # the key stays at the proxy
    time.sleep(1.2)  # the access log is flushed once a second
    log = proc.output()
    assert '"tenant":"acme"' in log and '"tenant":"globex"' in log
    assert KEY_A not in log and KEY_B not in log


def test_local_token_bucket_per_tenant(lbd, upstreams, key_file):
    _, port = start(lbd, upstreams, key_file, rate=1, burst=3)
    statuses = [call(port, KEY_A)[0].status for _ in range(3)]
    assert statuses == [200, 200, 200]
    refused, body = call(port, KEY_A)
    assert refused.status == 429 and json.loads(body)["code"] == "rate_limited"
    assert refused.getheader("retry-after") == "1"
    assert refused.getheader("ratelimit-policy") == '"default";q=3;w=3'
    assert refused.getheader("ratelimit").startswith('"default";r=0;t=')
    allowed, _ = call(port, KEY_B)  # another tenant, another bucket
    assert allowed.status == 200 and allowed.getheader("ratelimit").startswith('"default";r=2;')
    time.sleep(1.05)
    assert call(port, KEY_A)[0].status == 200  # one token back after a second


@pytest.fixture
def redis_server(tmp_path):
    binary = shutil.which("redis-server")
    assert binary, "redis-server is installed by `make test`"
    port = free_port()
    proc = Proc([binary, "--port", str(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"],
                tmp_path / f"redis-{port}.log")
    wait_port(port)
    yield proc, port
    proc.stop()


def test_buckets_are_shared_through_redis_and_fail_open(lbd, upstreams, key_file, redis_server):
    redis_proc, redis_port = redis_server
    store = f"redis://127.0.0.1:{redis_port}/0"
    _, first = start(lbd, upstreams, key_file, rate=0.1, burst=4, store=store)
    _, second = start(lbd, upstreams, key_file, rate=0.1, burst=4, store=store)
    statuses = [call(port, KEY_A)[0].status for port in (first, second, first, second, first, second)]
    assert statuses == [200, 200, 200, 200, 429, 429]  # one bucket of 4 for both instances
    redis_proc.stop()
    for port in (first, second):  # Redis is gone: the limiter lets requests through
        assert [call(port, KEY_A)[0].status for _ in range(3)] == [200, 200, 200]
