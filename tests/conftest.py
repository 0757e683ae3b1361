"""Shared fixtures: real upstream processes and a factory for lbd processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import os

import pytest
from hypothesis import settings

from tests.support.procs import Proc, free_port, start_lbd, start_upstream


# CI explores the same examples every run (a red run does not land); local runs explore anew
# and keep what they find in .hypothesis/ to replay it.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """Two real upstream servers, ``a`` and ``b``: name -> port."""
    tmp = tmp_path_factory.mktemp("upstreams")
    procs = {name: start_upstream(tmp, name) for name in ("a", "b")}
    yield {name: port for name, (_, port) in procs.items()}
    for proc, _ in procs.values():
        proc.stop()


@pytest.fixture
def lbd(tmp_path: Path) -> Iterator[Callable[..., tuple[Proc, int]]]:
    """Starts lbd on a free port from a config template with ``{port}`` in it."""
    started: list[Proc] = []

    def start(config_template: str, **values: object) -> tuple[Proc, int]:
        port = free_port()
        proc = start_lbd(tmp_path, config_template.format(port=port, **values), port, name=f"lbd{len(started)}")
        started.append(proc)
        return proc, port

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def compiled_lane() -> None:
    """The compiled lane must be built: it is lbd's default data plane, so its tests fail
    rather than skip where it is missing (``pip install -e .`` builds it with a C compiler)."""
    from lbd.proxy import lane

    if not lane.available():
        pytest.fail("the compiled lane (lbd/proxy/_lane.pyx) is not built: run `pip install -e .` with a C compiler")
