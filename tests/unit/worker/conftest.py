"""Fixtures for the worker's unit tests: the built-in models, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lbd_worker.build import BuiltModel, ensure_builtin


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``$LBD_MODEL_DIR`` when set, else a folder beside pytest's temp dirs that outlives the
    session, so reruns reuse the build (builds are stamped and locked; see lbd_worker.build)."""
    configured = os.environ.get("LBD_MODEL_DIR")
    return Path(configured) if configured else tmp_path_factory.getbasetemp().parent / "lbd-models"


@pytest.fixture(scope="session")
def minilm_files(model_dir: Path) -> BuiltModel:
    return ensure_builtin("minilm", model_dir=model_dir)


@pytest.fixture(scope="session")
def classifier_files(model_dir: Path) -> BuiltModel:
    return ensure_builtin("classifier", model_dir=model_dir)
