"""lbd-worker: a KServe v2 REST server for ONNX Runtime models, with Triton-style dynamic batching.

Entry points: ``lbd-worker`` / ``python -m lbd_worker`` (:mod:`lbd_worker.cli`), and
:class:`lbd_worker.config.WorkerConfig`, which lbd embeds in its own config.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
