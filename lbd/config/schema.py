"""The config's JSON Schema, for editor completion (``lbd schema``).

Pydantic derives it from the model; the one part it cannot know is each balancer's own
keys, which come from the registry (plugins included), so they are filled in here as a
``oneOf`` keyed on ``algorithm``.
"""

from __future__ import annotations

from typing import Any

from lbd.balancing import registry
from lbd.config.model import Config

__all__ = ["json_schema"]


def json_schema() -> dict[str, Any]:
    schema = Config.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "lbd configuration"
    definitions = schema.setdefault("$defs", {})
    variants = []
    for name in registry.names():
        options = registry.get(name).Options.model_json_schema(mode="validation")
        for key, value in options.pop("$defs", {}).items():
            definitions.setdefault(key, value)
        properties = {"algorithm": {"const": name}, **options.get("properties", {})}
        variants.append({
            "type": "object", "title": name, "properties": properties,
            "required": ["algorithm", *options.get("required", [])], "additionalProperties": False,
        })
    definitions["BalancerConfig"] = {
        "description": "The balancing algorithm and its own keys.",
        "oneOf": variants,
    }
    return schema
