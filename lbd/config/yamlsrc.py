"""YAML loading that remembers where every value came from.

``load_yaml`` returns plain Python data plus a map from each value's path (a tuple of keys
and indexes) to its 1-based line, so config errors can say ``(line 14)``. Duplicate keys
are errors: YAML silently keeps the last one, which hides mistakes.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["load_yaml", "Lines", "YamlError"]

Path = tuple[str | int, ...]
Lines = dict[Path, int]


class YamlError(ValueError):
    """The text is not valid YAML, or repeats a key; the message names the line."""


class _Builder(yaml.SafeLoader):
    """Builds data from composed nodes, recording each node's line."""


def load_yaml(text: str, source: str = "<config>") -> tuple[Any, Lines]:
    try:
        root = yaml.compose(text, Loader=_Builder)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlError(f"{source}: not valid YAML: {problem}{where}") from None
    lines: Lines = {}
    if root is None:
        return {}, lines
    constructor = _Builder("")
    try:
        return _build(root, (), lines, constructor, source), lines
    except yaml.YAMLError as exc:  # a value YAML can compose but not construct (e.g. "=")
        raise YamlError(f"{source}: not valid YAML: {_problem(exc)}") from None


def _problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" (line {mark.line + 1})" if mark is not None else ""
    return f"{getattr(exc, 'problem', None) or exc}{where}"


def _build(node: yaml.Node, path: Path, lines: Lines, constructor: yaml.SafeLoader, source: str) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        return _build_mapping(node, path, lines, constructor, source)
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), lines, constructor, source) for i, item in enumerate(node.value)]
    return constructor.construct_object(node, deep=True)


def _build_mapping(node: yaml.MappingNode, path: Path, lines: Lines, constructor: yaml.SafeLoader, source: str) -> dict:
    constructor.flatten_mapping(node)  # resolves YAML merge keys (<<: *anchor)
    result: dict = {}
    for key_node, value_node in node.value:
        key = constructor.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) or key is None:
            raise YamlError(f"{source}: a mapping key must be a plain value (line {key_node.start_mark.line + 1})")
        key = str(key) if not isinstance(key, str) else key
        if key in result:
            dotted = ".".join(str(p) for p in path + (key,))
            raise YamlError(f"{source}: {dotted}: duplicate key (line {key_node.start_mark.line + 1}; "
                            f"first at line {lines[path + (key,)]})")
        result[key] = _build(value_node, path + (key,), lines, constructor, source)
        lines[path + (key,)] = key_node.start_mark.line + 1
    return result
