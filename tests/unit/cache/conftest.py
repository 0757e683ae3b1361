"""Fixtures for the cache's unit tests: the real MiniLM (int8, in process), built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cache_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``$LBD_MODEL_DIR`` when set, else the folder the worker tests build into (shared)."""
    configured = os.environ.get("LBD_MODEL_DIR")
    return Path(configured) if configured else tmp_path_factory.getbasetemp().parent / "lbd-models"


@pytest.fixture(scope="session")
def embedder(cache_model_dir: Path):
    from lbd.cache.embedder import InProcessEmbedder

    return InProcessEmbedder(model_dir=cache_model_dir)
