"""The KServe v2 (Open Inference Protocol) wire format: tensors, bodies and errors."""

from lbd_worker.protocol.codec import (
    HEADER_LENGTH, EncodedResponse, InferRequest, InputTensor, RequestedOutput, decode_request, encode_response,
)
from lbd_worker.protocol.errors import (
    BadRequest, ExecutionFailed, InferenceError, NotFound, QueueFull, QueueTimeout, Unavailable,
)

__all__ = [
    "HEADER_LENGTH", "EncodedResponse", "InferRequest", "InputTensor", "RequestedOutput",
    "decode_request", "encode_response",
    "BadRequest", "ExecutionFailed", "InferenceError", "NotFound", "QueueFull", "QueueTimeout", "Unavailable",
]
