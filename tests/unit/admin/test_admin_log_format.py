"""Log lines: the access log's fields, and the formatter's mask for secret-named fields."""

from __future__ import annotations

import io
import logging

import orjson

from lbd.log import AccessLog, JsonFormatter


def test_access_entries_carry_id_pool_backend_status_attempts_cache_and_duration():
    stream = io.BytesIO()
    log = AccessLog(stream=stream)
    log.add(("req-1", "10.0.0.9", "POST", "/v2/models/minilm/infer", 200, "minilm", "cpu0", 2, 0.0123456))
    log.add(("req-2", "10.0.0.9", "POST", "/v2/models/minilm/infer", 200, "minilm", None, 0, 0.0004, "hit_exact"))
    log.flush()
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert first["type"] == "access"
    assert {k: first[k] for k in ("request_id", "pool", "backend", "status", "attempts", "cache", "duration_ms")} == {
        "request_id": "req-1", "pool": "minilm", "backend": "cpu0", "status": 200, "attempts": 2, "cache": None,
        "duration_ms": 12.346}
    assert (second["cache"], second["backend"], second["attempts"]) == ("hit_exact", None, 0)
    assert {"ts", "type", "request_id", "client", "method", "path", "status", "pool", "backend", "attempts",
            "cache", "duration_ms"} <= set(first)
    assert not {"headers", "query", "authorization", "cookie"} & set(first)  # no headers, no query string

def test_secret_named_fields_are_masked_in_daemon_logs():
    record = logging.LogRecord("lbd.admin", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    record.authorization = "Bearer abc"
    record.api_key = "k-1"
    record.token = None
    record.pool = "web"
    line = orjson.loads(JsonFormatter().format(record))
    assert line["msg"] == "hello world"
    assert (line["authorization"], line["api_key"], line["token"], line["pool"]) == ("***", "***", None, "web")
