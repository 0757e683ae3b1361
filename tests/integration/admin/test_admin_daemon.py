"""``lbd serve`` as a real process with its admin listener: metrics from real traffic,
``lbd reload`` through the admin API (exit codes and messages), SIGHUP, and the config
rule that an admin listener off loopback needs a token.

These need the daemon to start the admin listener itself (``Daemon.admin``); until it does
they are skipped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lbd.config import ConfigError, load_config_text
from tests.support.procs import ROOT, free_port, wait_for

MINIMAL = 'pools: {web: {backends: [{url: "http://127.0.0.1:1"}]}}\n'

CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
admin: {{address: "127.0.0.1:{admin_port}", token_file: "{token_file}"}}
log: {{access: false}}
pools:
  web:
    health: {{path: /echo, interval: 500ms}}
    backends: [{{url: "http://127.0.0.1:{a}", name: alpha}}]
"""


def _get(url: str, token: str) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


def _samples(admin_port: int) -> dict[tuple[str, tuple], float]:
    text = _get(f"http://127.0.0.1:{admin_port}/metrics", "e2e-token").decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _lbd_reload(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lbd", "reload", "-c", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_lbd_reload_and_metrics_against_a_running_daemon(lbd, upstreams, tmp_path: Path):
    token_file = tmp_path / "admin.token"
    token_file.write_text("e2e-token\n")
    admin_port = free_port()
    proc, port = lbd(CONFIG, admin_port=admin_port, token_file=token_file, a=upstreams["a"])
    config = tmp_path / "lbd0.yaml"
    for _ in range(5):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/echo", timeout=5) as response:
            assert response.status == 200
    requests = ("lbd_requests_total", (("backend", "alpha"), ("code", "200"), ("pool", "web")))
    wait_for(lambda: _samples(admin_port).get(requests) == 5, timeout=5, what="5 requests counted")

    good = config.read_text()
    config.write_text(good.replace("interval: 500ms", "interval: 400ms"))
    done = _lbd_reload(config)
    assert (done.returncode, done.stdout.strip()) == (0, "reloaded: pool web: settings: health"), done.stderr

    config.write_text(good.replace("interval: 500ms", "interval: never"))
    done = _lbd_reload(config)
    assert done.returncode == 1
    assert "reload refused; nothing changed" in done.stderr and "pools.web.health.interval" in done.stderr
    samples = _samples(admin_port)
    assert samples[("lbd_config_reloads_total", (("result", "failure"),))] == 1
    assert samples[("lbd_config_last_reload_successful", ())] == 0

    config.write_text(good)
    proc.signal(signal.SIGHUP)
    wait_for(lambda: _samples(admin_port)[("lbd_config_last_reload_successful", ())] == 1, timeout=10,
             what="the SIGHUP reload counted")
    summary = json.loads(_get(f"http://127.0.0.1:{admin_port}/admin/summary", "e2e-token"))
    assert summary["reloads"] == {"success": 2, "failure": 1} and summary["requests"] >= 5


def test_an_admin_address_off_loopback_needs_a_token_file():
    with pytest.raises(ConfigError) as refused:
        load_config_text('admin: {address: "0.0.0.0:9901"}\n' + MINIMAL)
    assert any(message.startswith("admin: ") and "token_file" in message for message in refused.value.messages)
    load_config_text('admin: {address: "0.0.0.0:9901", token_file: /etc/lbd/admin.token}\n' + MINIMAL)
    load_config_text('admin: {address: "[::1]:9901"}\n' + MINIMAL)
