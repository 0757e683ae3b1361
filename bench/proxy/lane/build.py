"""Build lane.pyx into an extension module beside it (cythonize -i), when missing or stale.

Usage: python build.py [--force]

Exit status: 0 built or up to date; 3 Cython is not installed for this interpreter; 4 no C
compiler (gcc/cc) on PATH; 1 the build failed (its output is printed). The reason goes to
stderr in one line first, so the benchmark harness can show it as the skip reason.
"""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "lane.pyx"


def built() -> Path | None:
    """The extension module for this interpreter, if there is one."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = HERE / f"lane{suffix}"
        if path.exists():
            return path
    return None


def main(argv: list[str]) -> int:
    target = built()
    if target and "--force" not in argv and target.stat().st_mtime >= SOURCE.stat().st_mtime:
        return 0
    try:
        import Cython  # noqa: F401
    except ImportError:
        print(f"Cython is not installed for {sys.executable} (pip install cython)",
              file=sys.stderr)
        return 3
    compiler = os.environ.get("CC", "gcc").split()[0]
    if not (shutil.which(compiler) or shutil.which("cc")):
        print(f"no C compiler: {compiler} and cc not on PATH", file=sys.stderr)
        return 4
    # -O2 is already in Python's CFLAGS; the build's temporary files stay out of the tree.
    done = subprocess.run([sys.executable, "-m", "Cython.Build.Cythonize", "-i", "-3", "-q",
                           SOURCE.name], cwd=HERE, capture_output=True, text=True)
    shutil.rmtree(HERE / "build", ignore_errors=True)
    if done.returncode != 0 or not built():
        output = (done.stdout + done.stderr).strip()
        print(f"building lane.pyx failed (status {done.returncode}):\n{output}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
