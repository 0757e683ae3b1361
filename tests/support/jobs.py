"""A small synchronous client for the jobs API, for tests that drive ``lbd serve`` processes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

__all__ = ["request", "submit"]


def request(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, dict]:
    """Status, headers and JSON body (``{}`` when empty) of one request; errors are answers too."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"{}")


def submit(port: int, path: str, body: bytes, callback: str | None = None) -> str:
    """Submits ``POST /v1/jobs{path}`` to lbd on ``port``; the job id (asserts a 202)."""
    headers = {"content-type": "application/json", **({"x-lbd-callback": callback} if callback else {})}
    status, _, accepted = request("POST", f"http://127.0.0.1:{port}/v1/jobs{path}", body, headers)
    assert status == 202, accepted
    return accepted["id"]
