"""The sd_notify protocol as systemd sees it: a datagram socket read by the test."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

from tests.support.procs import Proc, free_port, wait_port

CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
log: {{access: false}}
pools:
  web:
    backends: [{{url: "http://127.0.0.1:{upstream}"}}]
"""


def read_until(sock: socket.socket, wanted: str, timeout: float = 10.0) -> list[str]:
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            message = sock.recv(4096).decode()
        except socket.timeout:
            break
        seen.append(message)
        if wanted in message.split("\n"):
            return seen
    raise AssertionError(f"{wanted!r} not received; got {seen}")


def test_ready_reloading_watchdog_status_stopping(tmp_path, upstreams):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    port = free_port()
    config = tmp_path / "lbd.yaml"
    config.write_text(CONFIG.format(port=port, upstream=upstreams["a"]))
    proc = Proc([sys.executable, "-m", "lbd", "serve", "--config", str(config)], tmp_path / "lbd.log",
                env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    try:
        ready = read_until(sock, "READY=1")
        wait_port(port, timeout=1)  # READY=1 came after the listener was bound
        assert any("STATUS=1 pools, 1 backends" in m for m in ready), ready
        read_until(sock, "WATCHDOG=1", timeout=2)
        proc.signal(signal.SIGHUP)
        reloading = read_until(sock, "RELOADING=1")
        fields = dict(line.split("=", 1) for line in reloading[-1].split("\n"))
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert 0 <= now_usec - int(fields["MONOTONIC_USEC"]) < 5_000_000
        read_until(sock, "READY=1")
        proc.signal(signal.SIGTERM)
        read_until(sock, "STOPPING=1")
        assert proc.wait(15) == 0
    finally:
        proc.stop()
        sock.close()
        os.unlink(path)


def test_worker_notifies_ready_and_stopping(tmp_path):
    path = str(tmp_path / "worker-notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    port = free_port()
    proc = Proc([sys.executable, "-m", "lbd_worker", "--model", "classifier", "--listen", f"127.0.0.1:{port}"],
                tmp_path / "worker.log", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    try:
        ready = read_until(sock, "READY=1", timeout=60)
        wait_port(port, timeout=1)
        assert any("STATUS=serving classifier" in m for m in ready), ready
        read_until(sock, "WATCHDOG=1", timeout=2)
        proc.signal(signal.SIGTERM)
        read_until(sock, "STOPPING=1")
        assert proc.wait(30) == 0
    finally:
        proc.stop()
        sock.close()
        os.unlink(path)
