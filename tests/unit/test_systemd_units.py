"""The unit files pass `systemd-analyze verify` without a single warning and carry the
directives a production service needs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.procs import ROOT

UNITS = {"lbd.service": "lbd", "lbd-worker@.service": "lbd-worker"}


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_verifies_cleanly(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is installed by `make test` (Debian package systemd)"
    binary = shutil.which(UNITS[unit])
    assert binary, f"{UNITS[unit]} is installed"
    text = (ROOT / "systemd" / unit).read_text().replace(f"/usr/local/bin/{UNITS[unit]}", binary)
    (tmp_path / unit).write_text(text)
    target = tmp_path / unit.replace("@.", "@gpu0.")
    if target.name != unit:
        target.symlink_to(tmp_path / unit)
    result = subprocess.run([analyze, "verify", str(target)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert problems == [], problems


def test_lbd_unit_is_a_hardened_notify_service() -> None:
    text = (ROOT / "systemd" / "lbd.service").read_text()
    for directive in ("Type=notify", "ExecReload=", "WatchdogSec=", "Restart=on-failure", "LimitNOFILE=",
                      "DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict",
                      "AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"):
        assert directive in text, directive
    worker = (ROOT / "systemd" / "lbd-worker@.service").read_text()
    for directive in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "DynamicUser=yes", "ProtectSystem=strict"):
        assert directive in worker, directive
