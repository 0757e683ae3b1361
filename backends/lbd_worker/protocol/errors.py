"""Errors that carry their HTTP meaning; the server turns each into ``{"error": message}``."""

from __future__ import annotations

__all__ = ["InferenceError", "BadRequest", "NotFound", "Unavailable", "QueueFull", "QueueTimeout",
           "ExecutionFailed"]


class InferenceError(Exception):
    """Base: ``status`` is the HTTP status; ``retryable`` says whether another worker may
    succeed where this one did not (the request never ran)."""

    status = 500
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(InferenceError):
    """The request is malformed or does not match the model: names, types, shapes, body."""

    status = 400


class NotFound(InferenceError):
    status = 404


class Unavailable(InferenceError):
    """Not served now (loading, draining); nothing ran, so another worker may take it."""

    status = 503
    retryable = True


class QueueFull(Unavailable):
    """The model's queue holds ``max_queue_size`` requests already."""


class QueueTimeout(Unavailable):
    """The request waited in the queue longer than its timeout and never ran."""


class ExecutionFailed(InferenceError):
    """ONNX Runtime failed on a batch this request was part of."""
