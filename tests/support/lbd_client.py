"""A client for a running lbd: plain HTTP/1.1 calls, the admin API, and its metrics."""

from __future__ import annotations

import http.client
import json
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["LbdClient"]


class LbdClient:
    """Plain HTTP/1.1 calls to lbd (one connection each) and its admin API."""

    def __init__(self, port: int, admin: int) -> None:
        self.port, self.admin = port, admin

    def call(self, path: str, body: bytes | None = None, headers: dict | None = None, method: str | None = None,
             timeout: float = 20.0) -> tuple[http.client.HTTPResponse, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        conn.request(method or ("POST" if body is not None else "GET"), path, body=body,
                     headers={"content-type": "application/json", **(headers or {})})
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response, data

    def admin_post(self, path: str) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def metric(self, name: str, **labels: str) -> float:
        """The sample ``name`` with exactly these labels among its own (0 when absent)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=10) as response:
            text = response.read().decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total
