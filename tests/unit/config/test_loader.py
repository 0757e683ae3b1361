"""Config loading: defaults, frozen values, and errors that name the path and the line."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lbd.config import ConfigError, load_config, load_config_text
from lbd.config.loader import DEFAULT_CONFIG_PATH
from tests.support.procs import ROOT

MINIMAL = """
pools:
  web:
    backends: [{url: "http://127.0.0.1:9000"}]
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, source="t.yaml")
    return caught.value.messages


def test_minimal_config_gets_defaults():
    config = load_config_text(MINIMAL)
    assert config.listen[0].address == "0.0.0.0:8080"
    pool = config.pools["web"]
    assert pool.balancer.algorithm == "round_robin"
    assert pool.timeouts.connect == 2.0 and pool.timeouts.per_try == 30.0
    assert config.client.max_header_size == 64 * 1024
    assert config.effective_default_pool == "web"
    assert pool.backends[0].host_port == ("127.0.0.1", 9000)


def test_config_is_frozen():
    config = load_config_text(MINIMAL)
    with pytest.raises(ValidationError):
        config.pools["web"].timeouts.connect = 5  # type: ignore[misc]


def test_unknown_algorithm_names_path_line_and_choices():
    text = MINIMAL.replace("    backends:", "    balancer:\n      algorithm: round-robbin\n    backends:")
    (message,) = errors_of(text)
    assert message.startswith("pools.web.balancer.algorithm: unknown 'round-robbin'; known: ")
    assert "round_robin" in message and "consistent_hash" in message
    assert message.endswith("(line 5)")


def test_unknown_keys_are_errors_with_their_line():
    text = MINIMAL + "lisen: [{address: ':80'}]\n"
    (message,) = errors_of(text)
    assert message == "lisen: unknown key (line 5)"
    (message,) = errors_of(MINIMAL.replace('9000"}', '9000", wieght: 2}'))
    assert message == "pools.web.backends.0.wieght: unknown key (line 4)"


def test_balancer_options_are_checked_against_the_algorithm():
    text = MINIMAL.replace("    backends:", "    balancer: {algorithm: peak_ewma, hash_on: header}\n    backends:")
    (message,) = errors_of(text)
    assert message.startswith("pools.web.balancer.hash_on: unknown key")


def test_bad_values_name_their_path():
    text = MINIMAL.replace("    backends:", "    timeouts: {connect: 2 seconds}\n    backends:")
    (message,) = errors_of(text)
    assert message.startswith("pools.web.timeouts.connect: not a duration: '2 seconds'")
    (message,) = errors_of(MINIMAL.replace("http://127.0.0.1:9000", "ftp://x"))
    assert message.startswith("pools.web.backends.0.url: not a backend URL")


def test_cross_references_are_checked():
    text = """
pools:
  web:
    match: {models: [m]}
    backends: [{url: "http://127.0.0.1:9000"}]
  api:
    match: {models: [m]}
    backends: [{worker: missing}]
default_pool: nope
"""
    messages = errors_of(text)
    assert "default_pool: no pool named 'nope'; pools: web, api (line 9)" in messages
    assert any(m.startswith("pools.api.backends.0.worker: no worker named 'missing'") and m.endswith("(line 8)")
               for m in messages)
    assert any(m.startswith("pools.api.match.models.0: model 'm' is already routed to pool 'web'") for m in messages)


def test_yaml_problems_are_reported_with_lines():
    (message,) = errors_of("pools:\n  web: {backends: [\n")
    assert "not valid YAML" in message and "line" in message
    (message,) = errors_of(MINIMAL + "pools: {}\n")
    assert message == "pools: duplicate key (line 5; first at line 2)"
    (message,) = errors_of("=")  # composes, but has no constructor (found by the fuzzer)
    assert "not valid YAML" in message and "line 1" in message
    (message,) = errors_of("- just\n- a list\n")
    assert "top level must be a mapping" in message


def test_missing_required_section():
    (message,) = errors_of("listen: [{address: '127.0.0.1:1'}]\n")
    assert message.startswith("pools: required")


def test_shipped_configs_are_valid():
    assert load_config(DEFAULT_CONFIG_PATH).workers, "the embedded default runs local workers"
    assert load_config(ROOT / "conf" / "container.yaml").listen[0].address == "0.0.0.0:8080"
    example = load_config(ROOT / "conf" / "lbd.example.yaml")
    assert example.pools["sticky"].balancer.options.hash_on == "header"


def _model_keys(model: type, prefix: str = "") -> set[str]:
    from pydantic import BaseModel
    import typing
    keys = set()
    for name, field in model.model_fields.items():
        keys.add(prefix + name)
        annotation = field.annotation
        for candidate in (annotation, *typing.get_args(annotation)):
            for inner in (candidate, *typing.get_args(candidate)):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    keys |= _model_keys(inner, f"{prefix}{name}.")
    return keys


def test_annotated_example_shows_every_key():
    """conf/lbd.example.yaml must name every key of the model (the balancers' own too)."""
    import yaml
    from lbd.balancing import registry
    from lbd.config.model import Config

    def walk(node, prefix=""):
        found = set()
        if isinstance(node, dict):
            for key, value in node.items():
                found.add(prefix + key)
                found |= walk(value, prefix + key + ".")
        elif isinstance(node, list):
            for item in node:
                found |= walk(item, prefix)
        return found

    data = yaml.safe_load((ROOT / "conf" / "lbd.example.yaml").read_text())
    # Dictionary levels (pool, worker and model names) collapse to a placeholder.
    normalized = set()
    for key in walk(data):
        parts = key.split(".")
        if parts[0] == "pools" and len(parts) > 1:
            parts[1] = "*"
        if parts[0] == "workers" and len(parts) > 1:
            parts[1] = "*"
            if len(parts) > 3 and parts[2] == "models":
                parts[3] = "*"
        normalized.add(".".join(parts))
    wanted = set()
    for key in _model_keys(Config):
        parts = key.split(".")
        if parts[0] in ("pools", "workers"):
            parts.insert(1, "*")
            if parts[0] == "workers" and len(parts) > 2 and parts[2] == "models":
                parts.insert(3, "*")
        wanted.add(".".join(parts))
    for name in registry.names():
        for option in registry.get(name).Options.model_fields:
            wanted.add(f"pools.*.balancer.{option}")
    assert sorted(wanted - normalized) == []
