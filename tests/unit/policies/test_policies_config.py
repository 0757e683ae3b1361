"""The policies' config: defaults, typed rules, and errors that name the key and the line."""

from __future__ import annotations

import pytest

from lbd.config import ConfigError, load_config_text
from lbd.config.policies import FALLBACK_ERRORS, AcceptConfig

BASE = """
pools:
  small:
    match: {{models: [small]}}
{policies}
    backends: [{{url: "http://127.0.0.1:9001"}}]
  big:
    backends: [{{url: "http://127.0.0.1:9002"}}]
  canary:
    backends: [{{url: "http://127.0.0.1:9003"}}]
"""


def config(policies: str):
    return load_config_text(BASE.format(policies=policies), source="t.yaml")


def errors_of(policies: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config(policies)
    return caught.value.messages


def test_no_policies_by_default():
    pool = config("").pools["small"]
    assert pool.fallback is None and pool.cascade is None and pool.shadow is None


def test_fallback_defaults_and_model_rewrite():
    fallback = config("    fallback: {chain: [{pool: big, model: big-model}, {pool: canary}]}").pools["small"].fallback
    assert [(t.pool, t.model) for t in fallback.chain] == [("big", "big-model"), ("canary", None)]
    assert fallback.on_status == [429, 502, 503, 504]
    assert tuple(fallback.on_errors) == FALLBACK_ERRORS


@pytest.mark.parametrize("policies, message", [
    ("    fallback: {chain: [{pool: nope}]}", "pools.small.fallback.chain.0.pool: no pool named 'nope'; pools: small, big, canary (line 5)"),
    ("    fallback: {chain: [{pool: small}]}", "pools.small.fallback.chain.0.pool: pool 'small' cannot be its own fallback (line 5)"),
    ("    fallback: {chain: [{pool: big}, {pool: big}]}", "pools.small.fallback.chain.1.pool: pool 'big' is already in the chain (line 5)"),
    ("    fallback: {chain: []}", "pools.small.fallback.chain: list should have at least 1 item after validation, not 0 (line 5)"),
    ("    fallback: {chain: [{pool: big}], on_status: [200]}", "pools.small.fallback.on_status: not an error status: 200; use 400..599 (line 5)"),
    ("    fallback: {chain: [{pool: big}], on_errors: [oops]}", "pools.small.fallback.on_errors.0: input should be 'no_backend'"),
    ("    fallback: {chain: [{pool: big, modle: x}]}", "pools.small.fallback.chain.0.modle: unknown key"),
    ("    cascade: {stages: [{pool: small}], accept: {top_probability: 0.8}}", "pools.small.cascade.stages: list should have at least 2 items"),
    ("    cascade: {stages: [{pool: small}, {pool: gone}], accept: {top_probability: 0.8}}", "pools.small.cascade.stages.1.pool: no pool named 'gone'"),
    ("    cascade: {stages: [{pool: small}, {pool: big}], accept: {}}", "pools.small.cascade.accept: give exactly one of 'top_probability' or 'field'"),
    ("    cascade: {stages: [{pool: small}, {pool: big}], accept: {top_probability: 0.8, field: a, value: 1}}", "pools.small.cascade.accept: give exactly one of"),
    ("    cascade: {stages: [{pool: small}, {pool: big}], accept: {top_probability: 1.5}}", "pools.small.cascade.accept.top_probability: input should be less than or equal to 1"),
    ("    cascade: {stages: [{pool: small}, {pool: big}], accept: {field: 'outputs[0'}}", "pools.small.cascade.accept.field: not a JSON path: 'outputs[0'"),
    ("    cascade: {stages: [{pool: small}, {pool: big}], accept: {field: a}}", "pools.small.cascade.accept: 'field' needs a 'value' to compare with"),
    ("    cascade: {stages: [{pool: small}, {pool: big}], accept: {field: a, op: in, value: 1}}", "pools.small.cascade.accept: op 'in' needs a list value"),
    ("    cascade: {stages: [{pool: small}, {pool: big}], accept: {field: a, op: '~', value: 1}}", "pools.small.cascade.accept.op: input should be"),
    ("    shadow: {pool: small}", "pools.small.shadow.pool: pool 'small' cannot be its own shadow (line 5)"),
    ("    shadow: {pool: nope}", "pools.small.shadow.pool: no pool named 'nope'"),
    ("    shadow: {pool: canary, share: 1.5}", "pools.small.shadow.share: input should be less than or equal to 1"),
    ("    shadow: {pool: canary, compare: {field: '[x]'}}", "pools.small.shadow.compare.field: not a JSON path"),
])
def test_errors_name_the_key(policies: str, message: str):
    assert any(m.startswith(message) for m in errors_of(policies)), errors_of(policies)


def test_cascade_and_shadow_parse_their_paths_once():
    pool = config("""    cascade:
      stages: [{pool: small}, {pool: big, model: large}]
      accept: {field: "outputs[name=probabilities].data", reduce: max, value: 0.8}
    shadow: {pool: canary, share: 0.25, compare: {field: null}}""").pools["small"]
    assert pool.cascade.accept.path == (("key", "outputs", None), ("where", "name", "probabilities"),
                                        ("key", "data", None))
    assert pool.cascade.accept.op == ">="
    assert pool.shadow.share == 0.25 and pool.shadow.max_inflight == 16 and pool.shadow.timeout == 10.0
    assert pool.shadow.compare.path is None and pool.shadow.compare.max_body_size == 256 * 1024


def test_a_cascade_may_name_its_own_pool_and_a_fallback_pool_may_shadow():
    pools = load_config_text("""
pools:
  a:
    cascade: {stages: [{pool: a}, {pool: b}], accept: {top_probability: 0.5}}
    fallback: {chain: [{pool: b}]}
    backends: [{url: "http://127.0.0.1:1"}]
  b:
    shadow: {pool: a}
    backends: [{url: "http://127.0.0.1:2"}]
""").pools
    assert pools["a"].cascade.stages[0].pool == "a" and pools["b"].shadow.pool == "a"


def test_accept_value_keeps_its_type():
    assert AcceptConfig(field="a", op="==", value=True).value is True
    assert AcceptConfig(field="a", op="==", value="stop").value == "stop"
    assert AcceptConfig(field="a", value=1).value == 1.0
