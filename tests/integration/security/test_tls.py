"""TLS termination (and mutual TLS) on a listener, certificates reloaded with the config,
and TLS with a client certificate to a backend. Certificates are made by openssl here."""

from __future__ import annotations

import http.client
import json
import signal
import ssl
import subprocess
import sys

import pytest

from tests.support.procs import Proc, free_port, start_lbd, wait_for, wait_port, UPSTREAM


def openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_cert(directory, name: str, ca: str = "ca", san: str = "DNS:localhost,IP:127.0.0.1") -> None:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}", cwd=directory)
    (directory / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=directory)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=lbd test CA", cwd=directory)
    for name in ("server", "server2", "client", "backend"):
        make_cert(directory, name)
    return directory


CONFIG = """
listen:
  - address: "127.0.0.1:{port}"
    tls: {{cert: "{pki}/{server}.crt", key: "{pki}/{server}.key"{mutual}}}
log: {{access: false}}
watch: {{enabled: false}}
pools:
  web:
    health: {{enabled: false}}
    backends: [{{url: "http://127.0.0.1:{a}"}}]
"""


def https_get(port: int, pki, client_cert: bool = False):
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if client_cert:
        context.load_cert_chain(pki / "client.crt", pki / "client.key")
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    conn.request("GET", "/echo")
    response = conn.getresponse()
    body = response.read()
    peer = conn.sock.getpeercert()
    return response, body, dict(x[0] for x in peer["subject"])["commonName"]


def test_tls_termination_and_certificate_reload(tmp_path, pki, upstreams):
    port = free_port()
    values = dict(port=port, pki=pki, a=upstreams["a"], mutual="")
    proc = start_lbd(tmp_path, CONFIG.format(server="server", **values), port)
    try:
        response, body, served_as = https_get(port, pki)
        assert response.status == 200 and served_as == "server"
        headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
        assert headers["x-forwarded-proto"] == "https"
        (tmp_path / "lbd.yaml").write_text(CONFIG.format(server="server2", **values))
        proc.signal(signal.SIGHUP)
        wait_for(lambda: https_get(port, pki)[2] == "server2", 10, what="new certificate served")
        (tmp_path / "lbd.yaml").write_text(CONFIG.format(server="missing", **values))
        proc.signal(signal.SIGHUP)
        wait_for(lambda: "cannot load the certificate" in proc.output(), 10, what="bad certificate refused")
        assert https_get(port, pki)[2] == "server2"  # nothing changed
    finally:
        proc.stop()


def test_mutual_tls_requires_a_client_certificate(tmp_path, pki, upstreams):
    port = free_port()
    mutual = f', client_ca: "{pki}/ca.crt"'
    proc = start_lbd(tmp_path, CONFIG.format(port=port, pki=pki, a=upstreams["a"], server="server", mutual=mutual), port)
    try:
        assert https_get(port, pki, client_cert=True)[0].status == 200
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            https_get(port, pki, client_cert=False)
    finally:
        proc.stop()


def test_mutual_tls_to_a_backend(tmp_path, pki):
    backend_port, port = free_port(), free_port()
    backend = Proc([sys.executable, str(UPSTREAM), "--port", str(backend_port), "--name", "tls-backend",
                    "--tls-cert", str(pki / "backend.crt"), "--tls-key", str(pki / "backend.key"),
                    "--tls-client-ca", str(pki / "ca.crt")], tmp_path / "backend.log")
    wait_port(backend_port)
    config = f"""
listen: [{{address: "127.0.0.1:{port}"}}]
pools:
  web:
    health: {{enabled: false}}
    upstream:
      tls: {{ca: "{pki}/ca.crt", cert: "{pki}/client.crt", key: "{pki}/client.key", server_name: localhost}}
    backends: [{{url: "https://127.0.0.1:{backend_port}"}}]
"""
    proc = start_lbd(tmp_path, config, port)
    try:
        for _ in range(3):  # the TLS connection is pooled and reused
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/echo")
            response = conn.getresponse()
            assert response.status == 200 and response.getheader("x-upstream") == "tls-backend"
            response.read()
    finally:
        proc.stop()
        backend.stop()
