"""TLS settings: termination on listeners, and TLS (optionally mutual) to backends."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["ListenerTLSConfig", "UpstreamTLSConfig"]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ListenerTLSConfig(_Strict):
    """Terminate TLS on a listener. ``client_ca`` makes it mutual: clients must present a
    certificate signed by it. Certificates are read again on every reload. Default minimum
    version TLS 1.2."""

    cert: str
    key: str
    client_ca: str | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"


class UpstreamTLSConfig(_Strict):
    """TLS to the pool's ``https://`` backends. ``ca``: the CA bundle to verify them with
    (default: the system's); ``cert``/``key``: a client certificate for mutual TLS;
    ``server_name``: the name to verify (default: the backend's host); ``verify: false``
    only for tests."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None
    verify: bool = True
