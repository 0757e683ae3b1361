"""The jobs API's wire format, signatures and config: table-driven, no I/O."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest

from lbd.config import ConfigError, load_config_text
from lbd.config.jobs import WebhookConfig
from lbd.jobs.api import (
    Call, batch_bodies, batch_view, job_view, kept_preferences, parse_call, prefers_async, priority_from,
    stored_headers,
)
from lbd.jobs.base import BatchRecord, JobRecord, Response, WebhookStatus
from lbd.jobs.webhook import check_url, sign, verify

PREFIX = b"/v1/jobs"


@pytest.mark.parametrize(("method", "url", "call"), [
    (b"POST", b"/v1/jobs/v2/models/m/infer", Call("submit", target="/v2/models/m/infer")),
    (b"PUT", b"/v1/jobs/echo/x?a=1", Call("submit", target="/echo/x?a=1")),
    (b"POST", b"/v1/jobs/batch/v2/models/m/infer", Call("batch", target="/v2/models/m/infer")),
    (b"GET", b"/v1/jobs/jABC", Call("status", id="jABC")),
    (b"GET", b"/v1/jobs/jABC/", Call("status", id="jABC")),
    (b"GET", b"/v1/jobs/jABC/result", Call("result", id="jABC")),
    (b"DELETE", b"/v1/jobs/bXYZ", Call("cancel", id="bXYZ")),
    (b"GET", b"/v1/jobsx", None),
    (b"GET", b"/v2/models/m", None),
])
def test_calls(method, url, call):
    assert parse_call(PREFIX, method, url) == call


@pytest.mark.parametrize(("method", "url"), [
    (b"POST", b"/v1/jobs"), (b"POST", b"/v1/jobs/"), (b"POST", b"/v1/jobs/batch"), (b"GET", b"/v1/jobs"),
    (b"GET", b"/v1/jobs/a/b"), (b"DELETE", b"/v1/jobs/a/result"), (b"PATCH", b"/v1/jobs"), (b"HEAD", b"/v1/jobs/j1"),
])
def test_bad_calls_say_why(method, url):
    call = parse_call(PREFIX, method, url)
    assert call is not None and call.kind == "bad" and call.message


@pytest.mark.parametrize(("value", "wanted"), [
    ("respond-async", True), ("Respond-Async, wait=10", True), ("return=minimal; x, respond-async", True),
    ("wait=5", False), ("respond-asynchronously", False), (None, False), ("", False),
])
def test_prefer(value, wanted):
    assert prefers_async(value) is wanted


def test_a_stored_job_keeps_no_credentials_nor_lbd_controls():
    headers = [(b"Authorization", b"Bearer secret"), (b"X-Api-Key", b"k"), (b"Cookie", b"session=1"),
               (b"X-My-Key", b"k2"), (b"Content-Type", b"application/json"), (b"Content-Length", b"2"),
               (b"Prefer", b"respond-async, return=minimal"), (b"X-LBD-Callback", b"http://h/"),
               (b"x-lbd-priority", b"high"), (b"X-Request-ID", b"r1"), (b"X-Trace", b"t")]
    kept = stored_headers(headers, frozenset({b"x-my-key", b"x-lbd-priority"}))
    assert kept == (("Content-Type", "application/json"), ("Prefer", "return=minimal"), ("X-Trace", "t"))
    assert kept_preferences("respond-async, wait=3") is None


@pytest.mark.parametrize(("value", "default", "wanted"), [
    ("high", "normal", 0), ("LOW", "normal", 2), (None, "low", 2), ("5", "normal", 0), ("-1", "normal", 2),
    ("0", "high", 1), ("urgent", "normal", 1),
])
def test_priorities(value, default, wanted):
    assert priority_from(value, default) == wanted


def test_batch_bodies():
    assert batch_bodies(b'{"requests": [{"a": 1}, "t", 3]}') == [b'{"a":1}', b'"t"', b"3"]
    for bad in (b"[]", b'{"requests": []}', b'{"requests": {}}', b"not json"):
        assert isinstance(batch_bodies(bad), str)


def test_views():
    record = JobRecord("j1", "p", None, "succeeded", 2, "POST", "/x", 10.0, attempts=2, response=Response(
        200, (("content-type", "application/octet-stream"),), b"\xff\x00"), webhook=WebhookStatus("http://h/"))
    view = job_view(record, "/v1/jobs")
    assert view["priority"] == "low" and view["location"] == "/v1/jobs/j1"
    assert view["response"]["body_base64"] == "/wA=" and "body" not in view["response"]
    assert view["webhook"]["state"] == "pending"
    batch = batch_view(BatchRecord("b1", "p", None, 1.0, ["a", "b", "c"]), ["succeeded", None, "running"], "/v1/jobs")
    assert batch["state"] == "running" and batch["counts"]["expired"] == 1
    assert batch_view(BatchRecord("b1", "p", None, 1.0, ["a"]), ["succeeded"], "/j")["state"] == "succeeded"
    assert batch_view(BatchRecord("b1", "p", None, 1.0, ["a", "b"]), ["succeeded", "failed"], "/j")["state"] == "failed"


def test_signatures_verify_and_refuse_tampering_and_replays():
    secret, body = b"0123456789abcdef", orjson.dumps({"id": "j1"})
    header = sign(secret, body, 1_700_000_000)
    expected = hmac.new(secret, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"  # the documented construction
    assert verify(secret, header, body, now=1_700_000_100)
    assert not verify(secret, header, body + b" ", now=1_700_000_100)
    assert not verify(b"another-secret-16", header, body, now=1_700_000_100)
    assert not verify(secret, header, body, now=1_700_000_000 + 301)  # too old: a replay
    assert not verify(secret, header.replace("t=1700000000", "t=1700000200"), body, now=1_700_000_200)
    assert not verify(secret, None, body, now=0) and not verify(secret, "garbage", body, now=0)


def test_callback_urls():
    anywhere, listed = WebhookConfig(), WebhookConfig(allowed_hosts=["hooks.example.com", "*.example.org"])
    assert check_url("https://x.test/cb", anywhere) is None
    assert "http" in check_url("ftp://x.test/cb", anywhere)
    assert "not a URL" in check_url("http://x:99999/", anywhere)
    assert check_url("http://hooks.example.com/a", listed) is None
    assert check_url("http://a.example.org/a", listed) is None
    assert "allowed_hosts" in check_url("http://169.254.169.254/", listed)


@pytest.mark.parametrize(("text", "message"), [
    ("jobs: {path_prefix: v1/jobs}", "jobs.path_prefix: "),
    ("jobs: {store: mysql://x}", "jobs.store: "),
    ("jobs: {webhook: {secret: short}}", "jobs.webhook: "),
    ("jobs: {webhook: {secret: 0123456789abcdef, secret_file: /x}}", "jobs.webhook: "),
    ("jobs: {visibility_timeout: 100ms}", "jobs.visibility_timeout: "),
    ("jobs: {backoff: {base: 2s, max: 1s}}", "jobs.backoff: "),
    ("jobs: {webhook: {allowed_hosts: ['bad host']}}", "jobs.webhook.allowed_hosts: "),
    ("jobs: {typo: 1}", "jobs.typo: "),
])
def test_config_errors_name_the_key(text, message):
    pools = "\npools: {p: {backends: [{url: 'http://127.0.0.1:1'}], jobs: {priority: low}}}\n"
    with pytest.raises(ConfigError) as caught:
        load_config_text(text + pools)
    assert any(error.startswith(message) for error in caught.value.messages), caught.value.messages


def test_config_defaults():
    config = load_config_text("pools: {p: {backends: [{url: 'http://127.0.0.1:1'}], jobs: {concurrency: 0}}}")
    assert config.jobs.store == "memory" and config.jobs.enabled and config.jobs.path_prefix == "/v1/jobs"
    assert config.pools["p"].jobs.concurrency == 0 and config.pools["p"].jobs.priority == "normal"
