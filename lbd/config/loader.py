"""Loading the config: YAML text to a validated :class:`Config`, or path-named errors.

Error lines read like ``nginx -t``'s::

    pools.minilm.balancer.algorithm: unknown 'round-robbin'; known: ... (line 14)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lbd.config.model import Config, NestedErrors
from lbd.config.yamlsrc import Lines, YamlError, load_yaml

__all__ = ["ConfigError", "load_config", "load_config_text", "DEFAULT_CONFIG_PATH"]

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent.parent / "conf" / "lbd.yaml"


class ConfigError(ValueError):
    """A config that cannot be used. ``messages`` holds one line per problem."""

    def __init__(self, source: str, messages: list[str]) -> None:
        self.source = source
        self.messages = messages
        super().__init__(f"{source}: " + "\n  ".join(messages) if len(messages) == 1
                         else f"{source}: {len(messages)} errors:\n  " + "\n  ".join(messages))


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror or exc}"]) from None
    return load_config_text(text, source=str(path))


def load_config_text(text: str, source: str = "<config>") -> Config:
    try:
        data, lines = load_yaml(text, source)
    except YamlError as exc:
        raise ConfigError(source, [str(exc).removeprefix(f"{source}: ")]) from None
    if not isinstance(data, dict):
        raise ConfigError(source, ["the top level must be a mapping of keys (listen, pools, ...)"])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _messages(exc.errors(include_url=False), lines)) from None


def _messages(errors: list[dict[str, Any]], lines: Lines) -> list[str]:
    out: list[str] = []
    for error in _flatten(errors):
        loc = tuple(error["loc"])
        path = ".".join(str(part) for part in loc) or "(top level)"
        out.append(f"{path}: {_describe(error)}{_line(loc, lines)}")
    return list(dict.fromkeys(out))


def _flatten(errors: list[dict[str, Any]], prefix: tuple = ()) -> list[dict[str, Any]]:
    """Expands :class:`NestedErrors` raised by validators into their inner, path-named errors."""
    flat: list[dict[str, Any]] = []
    for error in errors:
        loc = prefix + tuple(error["loc"])
        inner = (error.get("ctx") or {}).get("error")
        if isinstance(inner, NestedErrors):
            flat.extend(_flatten(inner.errors, loc))
        else:
            flat.append({**error, "loc": loc})
    return flat


def _describe(error: dict[str, Any]) -> str:
    kind, message = error.get("type", ""), error["msg"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required"
    if message.startswith("Value error, "):
        return message[len("Value error, "):]
    return message[0].lower() + message[1:] if message else kind


def _line(loc: tuple, lines: Lines) -> str:
    # The error may sit below the deepest key written in the file (a missing key): use the
    # nearest enclosing node that has a line.
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return f" (line {lines[loc[:end]]})"
    return ""
