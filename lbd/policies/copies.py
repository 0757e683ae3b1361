"""A request as lbd sends it again itself (a cascade stage, a shadow copy): what the client
sent, with its request id, without the API key the route keeps at the proxy, and with the
deadline it has left."""

from __future__ import annotations

from dataclasses import dataclass

from lbd.policies.rewrite import retarget, with_model

__all__ = ["Copy"]


@dataclass(frozen=True)
class Copy:
    method: str
    target: str
    """The origin-form request target, as sent upstream."""
    headers: tuple[tuple[str, str], ...]
    body: bytes
    tenant: str | None
    client_ip: str
    deadline: float | None
    """Loop time by which the route must have its answer; ``None``: no deadline."""

    def as_model(self, model: str | None) -> tuple[str, bytes]:
        """The target and body naming ``model`` (unchanged for ``None``)."""
        if model is None:
            return self.target, self.body
        target = retarget(self.target.encode("latin-1"), model).decode("latin-1")
        return target, with_model(self.body, model) or self.body

    def headers_within(self, seconds: float | None) -> list[tuple[str, str]]:
        """The headers, with ``x-lbd-timeout-ms`` set to ``seconds`` when there is a limit."""
        headers = list(self.headers)
        if seconds is not None:
            headers.append(("x-lbd-timeout-ms", str(max(1, int(seconds * 1000)))))
        return headers
