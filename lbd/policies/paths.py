"""JSON paths into an answer: ``outputs[0].data``, ``outputs[name=probabilities].data``,
``choices[0].message.content``. A path is a name, then any number of ``.name``, ``[index]``
(negative counts from the end) and ``[key=value]`` (the first object of a list whose
``key`` is the text ``value``) steps; a leading ``$.`` is allowed."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["Path", "parse_path", "extract", "MISSING"]

_STEP = re.compile(r"(?:^|\.)([A-Za-z_][A-Za-z0-9_-]*)|\[(-?\d+)\]|\[([A-Za-z_][A-Za-z0-9_-]*)=([^\]]*)\]")
MISSING: Any = object()
"""What :func:`extract` returns when the path leads nowhere."""

Path = tuple[tuple[str, Any, Any], ...]
"""Steps: ``("key", name, None)``, ``("index", i, None)``, ``("where", key, value)``."""


def parse_path(text: str) -> Path:
    """The steps of ``text``; ``ValueError`` naming the first character that does not fit."""
    source = text[2:] if text.startswith("$.") else text
    steps: list[tuple[str, Any, Any]] = []
    position = 0
    while position < len(source):
        match = _STEP.match(source, position)
        dotted = source[position] == "."
        if match is None or match.end() == position or (match.group(1) is not None and dotted != (position > 0)):
            raise ValueError(f"not a JSON path: {text!r} (at {source[position:][:20]!r}); "
                             "use names, [index] and [key=value], e.g. outputs[name=probabilities].data")
        name, index, key, value = match.groups()
        if name is not None:
            steps.append(("key", name, None))
        elif index is not None:
            steps.append(("index", int(index), None))
        else:
            steps.append(("where", key, value))
        position = match.end()
    if not steps:
        raise ValueError(f"not a JSON path: {text!r}")
    return tuple(steps)


def extract(document: Any, path: Path) -> Any:
    """The value at ``path`` in ``document``, or :data:`MISSING`."""
    value = document
    for kind, first, second in path:
        if kind == "key":
            if not isinstance(value, dict) or first not in value:
                return MISSING
            value = value[first]
        elif kind == "index":
            if not isinstance(value, list) or not -len(value) <= first < len(value):
                return MISSING
            value = value[first]
        else:
            if not isinstance(value, list):
                return MISSING
            value = next((item for item in value if isinstance(item, dict) and str(item.get(first)) == second),
                         MISSING)
            if value is MISSING:
                return MISSING
    return value
