"""Durations (``250ms``, ``2s``, ``1m``) and sizes (``64KiB``) for the typed config.

Both are plain ``float`` seconds and ``int`` bytes once parsed, so the hot path never
converts units. A bare number is taken as seconds (durations) or bytes (sizes).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

__all__ = ["Duration", "Size", "parse_duration", "parse_size", "format_duration", "format_size"]

_DURATION_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zµ]*)", re.IGNORECASE)
_DURATION_TEXT = re.compile(r"^(?:\d+(?:\.\d+)?\s*(?:us|µs|ms|s|m|h|d)\s*)+$", re.IGNORECASE)


def parse_duration(value: object) -> float:
    """Seconds from ``1.5``, ``"250ms"``, ``"2s"``, ``"1m30s"``; errors say what is accepted."""
    if isinstance(value, bool):
        raise ValueError("a duration, not a boolean")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION_TEXT.match(value.strip()):
        seconds = sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in _PART.findall(value))
    else:
        raise ValueError(f"not a duration: {value!r}; use a number with a unit: 250ms, 2s, 1m, 1h")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {value!r}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from ``65536``, ``"64KiB"``, ``"1MB"``, ``"1GiB"``."""
    if isinstance(value, bool):
        raise ValueError("a size, not a boolean")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", value, re.IGNORECASE)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _SIZE_UNITS:
            raise ValueError(f"not a size: {value!r}; use bytes or a unit: 512, 64KiB, 16MiB, 1GB")
        size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    else:
        raise ValueError(f"not a size: {value!r}")
    if size < 0:
        raise ValueError(f"a size cannot be negative: {value!r}")
    return size


def format_duration(seconds: float) -> str:
    """The shortest exact text for a duration, the inverse of :func:`parse_duration`."""
    for unit, scale in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3)):
        count = seconds / scale
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    return f"{seconds * 1e3:g}ms"


def format_size(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": ["string", "number"], "pattern": r"^(\d+(\.\d+)?\s*(us|ms|s|m|h|d)\s*)+$",
                    "description": "a duration: seconds as a number, or text such as 250ms, 2s, 1m"}),
]
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    PlainSerializer(format_size, return_type=str),
    WithJsonSchema({"type": ["string", "integer"], "pattern": r"^\d+(\.\d+)?\s*([kKmMgG]i?[bB]?|[bB])?$",
                    "description": "a size: bytes as a number, or text such as 64KiB, 16MiB, 1GB"}),
]
