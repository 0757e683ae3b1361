"""SSL contexts from config. A listener's context is kept across reloads and its
certificate chain loaded again, so new handshakes see the new certificate while
connections already open keep theirs."""

from __future__ import annotations

import ssl

from lbd.config.tls import ListenerTLSConfig, UpstreamTLSConfig

__all__ = ["server_context", "reload_server_context", "client_context", "certificate_problems"]

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def server_context(config: ListenerTLSConfig) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[config.min_version]
    context.set_alpn_protocols(["http/1.1"])
    reload_server_context(context, config)
    return context


def reload_server_context(context: ssl.SSLContext, config: ListenerTLSConfig) -> None:
    context.load_cert_chain(config.cert, config.key)
    if config.client_ca is not None:
        context.load_verify_locations(cafile=config.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE


def client_context(config: UpstreamTLSConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.ca)
    if config.cert is not None:
        context.load_cert_chain(config.cert, config.key)
    if not config.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def certificate_problems(config) -> list[str]:
    """Listener certificates that do not load, path-named (``lbd check`` and reloads)."""
    problems = []
    for index, listener in enumerate(config.listen):
        if listener.tls is not None:
            try:
                server_context(listener.tls)
            except (OSError, ValueError, ssl.SSLError) as exc:
                problems.append(f"listen.{index}.tls: cannot load the certificate: {exc}")
    return problems
