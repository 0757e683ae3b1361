"""Serving a request as another model: KServe paths, OpenAI-style JSON bodies, heads."""

from __future__ import annotations

import pytest

from lbd.policies.copies import Copy
from lbd.policies.rewrite import retarget, with_content_length, with_model, with_request_target


@pytest.mark.parametrize("url, rewritten", [
    (b"/v2/models/small/infer", b"/v2/models/big/infer"),
    (b"/v2/models/small/versions/3/infer?trace=1", b"/v2/models/big/infer?trace=1"),
    (b"/v2/models/small", b"/v2/models/big"),
    (b"/v2/models/small/versions/3", b"/v2/models/big"),
    (b"/v2/models/small/ready", b"/v2/models/big/ready"),
    (b"/v1/chat/completions", b"/v1/chat/completions"),
    (b"/v2/health/ready", b"/v2/health/ready"),
])
def test_retarget(url, rewritten):
    assert retarget(url, "big") == rewritten


@pytest.mark.parametrize("body, rewritten", [
    (b'{"model": "small", "messages": []}', b'{"model":"big","messages":[]}'),
    (b' \n{"model":"small"}', b'{"model":"big"}'),
    (b'{"inputs": [{"name": "x"}]}', None),        # KServe: the model is in the path
    (b'{"model": 3}', None),
    (b'[{"model": "small"}]', None),
    (b'{"model": "small"', None),
    (b"", None),
])
def test_with_model(body, rewritten):
    assert with_model(body, "big") == rewritten


def test_heads():
    head = b"POST /v2/models/a/infer HTTP/1.1\r\nhost: x\r\nContent-Length: 5\r\nx-y: z\r\n\r\n"
    assert with_request_target(head, b"/v2/models/b/infer").startswith(b"POST /v2/models/b/infer HTTP/1.1\r\nhost: x\r\n")
    assert with_content_length(head, 12) == head.replace(b"Content-Length: 5", b"content-length: 12")


def test_a_copy_as_another_model_with_its_deadline():
    copy = Copy("POST", "/v2/models/a/versions/1/infer", (("x-request-id", "r1"),), b'{"model":"a"}', None, "10.0.0.1", None)
    assert copy.as_model(None) == ("/v2/models/a/versions/1/infer", b'{"model":"a"}')
    assert copy.as_model("b") == ("/v2/models/b/infer", b'{"model":"b"}')
    assert copy.headers_within(None) == [("x-request-id", "r1")]
    assert copy.headers_within(1.5) == [("x-request-id", "r1"), ("x-lbd-timeout-ms", "1500")]
    assert copy.headers_within(0.0001)[-1] == ("x-lbd-timeout-ms", "1")
