"""lbd: an inference-aware HTTP load balancer daemon."""

__version__ = "0.1.0"
__all__ = ["__version__"]
