"""Judging answers: a cascade stage's accept rule, and whether a shadow's answer differs
from the primary's. Both read answers with :func:`~lbd.policies.answers.read_answer`."""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any

from lbd.policies.answers import read_answer
from lbd.policies.paths import MISSING, extract

if TYPE_CHECKING:
    from lbd.config.policies import AcceptConfig, ShadowCompareConfig

__all__ = ["accepts", "top_probability", "compare", "same", "MATCH", "MISMATCH", "SKIPPED"]

MATCH, MISMATCH, SKIPPED = "match", "mismatch", "skipped"
_FLOATS = frozenset({"FP16", "FP32", "FP64"})
_OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
        ">=": operator.ge, "in": lambda a, b: a in b, "not_in": lambda a, b: a not in b}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mean(values: list) -> float:
    return sum(values) / len(values)


_REDUCE = {"max": max, "min": min, "mean": _mean, "sum": sum, "length": len,
           "first": operator.itemgetter(0), "last": operator.itemgetter(-1)}


def accepts(rule: AcceptConfig, body: bytes, header_length: str | None = None) -> bool:
    """Whether an answer is good enough under ``rule``; an unreadable one is not."""
    document = read_answer(body, header_length)
    if document is None:
        return False
    if rule.top_probability is not None:
        top = top_probability(document, rule.output)
        return top is not None and top >= rule.top_probability
    value = extract(document, rule.path)  # type: ignore[arg-type]
    if value is MISSING:
        return False
    if rule.reduce is not None:
        numeric = rule.reduce not in ("length", "first", "last")
        if not isinstance(value, list) or not value or (numeric and not all(map(_number, value))):
            return False
        value = _REDUCE[rule.reduce](value)
    if isinstance(value, (list, dict)):
        return False
    try:
        return bool(_OPS[rule.op](value, rule.value))
    except TypeError:  # a string compared with a number: not good enough
        return False


def top_probability(document: Any, output: str | None = None) -> float | None:
    """The smallest, over rows, of each row's largest value in the KServe output named
    ``output`` (default: the first floating-point output): how sure a classifier is of its
    least sure row. ``None`` when there is no such output."""
    outputs = document.get("outputs") if isinstance(document, dict) else None
    if not isinstance(outputs, list):
        return None
    found = next((o for o in outputs if isinstance(o, dict) and (
        o.get("name") == output if output is not None else o.get("datatype") in _FLOATS)), None)
    if found is None:
        return None
    data, shape = found.get("data"), found.get("shape")
    if not isinstance(data, list) or not data or not all(map(_number, data)):
        return None
    classes = shape[-1] if isinstance(shape, list) and shape and isinstance(shape[-1], int) and shape[-1] > 0 else len(data)
    if len(data) % classes:
        return None
    return min(max(data[start:start + classes]) for start in range(0, len(data), classes))


def compare(config: ShadowCompareConfig, primary: bytes, primary_header_length: str | None,
            shadow: bytes, shadow_header_length: str | None) -> str:
    """``match``, ``mismatch``, or ``skipped`` (the compared field is in neither answer, or
    neither is JSON when a field is compared)."""
    left, right = read_answer(primary, primary_header_length), read_answer(shadow, shadow_header_length)
    if left is None or right is None:
        if config.path is None and left is None and right is None:
            return MATCH if primary == shadow else MISMATCH
        return MISMATCH if (left is None) != (right is None) else SKIPPED
    if config.path is not None:
        left, right = extract(left, config.path), extract(right, config.path)
        if left is MISSING and right is MISSING:
            return SKIPPED
        if left is MISSING or right is MISSING:
            return MISMATCH
    return MATCH if same(left, right, config.tolerance) else MISMATCH


def same(left: Any, right: Any, tolerance: float) -> bool:
    """Equal JSON values, numbers within ``tolerance`` relative to the larger magnitude
    (absolute below 1); booleans are not numbers."""
    if _number(left) and _number(right):
        if left == right:
            return True
        if not (math.isfinite(left) and math.isfinite(right)):
            return False
        return abs(left - right) <= tolerance * max(1.0, abs(left), abs(right))
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(same(a, b, tolerance) for a, b in zip(left, right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(same(left[k], right[k], tolerance) for k in left)
    return type(left) is type(right) and left == right
