"""``prefix_affinity``: what the key is, for each body it reads."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import tritonclient.http as triton

from lbd.balancing import get, needs_body
from lbd.balancing.prefix_affinity import PrefixAffinity, PrefixAffinityOptions

from .conftest import FakeRequest, build_balancer, make_backends, pick

LONG = "You are a helpful assistant. " * 20  # 580 characters


def _key(body: bytes | dict, options: dict | None = None, path: str = "/v1/completions", **headers: str) -> str:
    balancer = build_balancer("prefix_affinity", make_backends(1, 1), options)
    raw = orjson.dumps(body) if isinstance(body, dict) else body
    return balancer.key(FakeRequest(path=path, body=raw, headers=headers))


def test_it_is_registered_and_asks_for_the_body():
    assert get("prefix_affinity") is PrefixAffinity
    assert needs_body(PrefixAffinity) and not needs_body(get("consistent_hash"))


@pytest.mark.parametrize("body, key", [
    ({"model": "m", "prompt": "tell me"}, "prompt:tell me"),
    ({"prompt": ["first", "second"]}, "prompt:first\nsecond"),
    ({"prompt": [101, 2023, 102]}, "prompt:101 2023 102"),   # token ids
    ({"input": "embed this"}, "prompt:embed this"),
    ({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
     "prompt:system: Be brief.\nuser: Hi"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "look"},
                                                {"type": "image_url", "image_url": {"url": "x"}},
                                                {"type": "text", "text": "here"}]}]},
     "prompt:user: look\nhere"),
    ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]}, "prompt:hello"),
    ({"inputs": [{"name": "ids", "shape": [1], "datatype": "INT64", "data": [1]},
                 {"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], ["b"]]}]}, "prompt:a\nb"),
])
def test_the_prompt_is_read_from_openai_and_kserve_bodies(body, key):
    assert _key(body) == key


def test_kserve_binary_tensors_are_read_after_the_json_header():
    numbers = triton.InferInput("x", [2], "FP32")
    numbers.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
    text = triton.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"hello world"], dtype=object))
    body, json_size = triton.InferenceServerClient.generate_request_body([numbers, text])
    assert _key(body, **{"inference-header-content-length": str(json_size)}) == "prompt:hello world"


def test_the_key_is_the_first_prefix_chars_of_the_prompt():
    assert _key({"prompt": LONG + "question one"}) == "prompt:" + LONG[:256]
    assert _key({"prompt": LONG + "one"}) == _key({"prompt": LONG + "two"})
    assert _key({"prompt": "ab" + LONG}, {"prefix_chars": 2}) == "prompt:ab"


def test_or_its_first_prefix_tokens():
    assert _key({"prompt": "  one two\n\tthree four five"}, {"prefix_tokens": 3}) == "prompt:one two three"
    assert _key({"prompt": "one two"}, {"prefix_tokens": 3}) == "prompt:one two"


@pytest.mark.parametrize("body, key", [
    (b"", "path:/v1/completions"),                                   # no body
    ({"model": "m", "temperature": 0}, "path:/v1/completions"),     # JSON without a prompt
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, "path:/v1/completions"),
    (b"[1, 2]", "path:/v1/completions"),
    (b"plain text prompt", "body:plain text prompt"),               # not JSON: the body is the prompt
    (b'{"prompt": "cut sho', 'body:{"prompt": "cut sho'),          # JSON cut short at 64 KiB
])
def test_without_a_prompt_the_key_falls_back(body, key):
    assert _key(body) == key


def test_the_same_prompt_prefix_goes_to_the_same_backend_on_every_proxy():
    backends = make_backends(1, 1, 1, 1, 1)
    proxies = [build_balancer("prefix_affinity", backends, seed=seed) for seed in (1, 2)]
    for index in range(200):
        request = FakeRequest(body=orjson.dumps({"prompt": f"{index} {LONG} {index}"}))
        variant = FakeRequest(body=orjson.dumps({"prompt": f"{index} {LONG} other ending"}))
        owner = pick(proxies[0], request)
        assert pick(proxies[1], request) is owner and pick(proxies[0], variant) is owner


@pytest.mark.parametrize("options, location, message", [
    ({"prefix_chars": 0}, ("prefix_chars",), "greater than or equal to 1"),
    ({"prefix_chars": 100, "prefix_tokens": 10}, (), "not both"),
    ({"prefix_tokens": 0}, ("prefix_tokens",), "greater than or equal to 1"),
    ({"load_factor": 0.5}, ("load_factor",), ">= 1.0"),
    ({"method": "maglev", "table_size": 65536}, ("table_size",), "prime"),
])
def test_bad_options_name_their_field(options, location, message):
    with pytest.raises(ValueError) as caught:
        PrefixAffinityOptions.model_validate(options)
    (error,) = caught.value.errors()
    assert error["loc"] == location and message in error["msg"]


def test_option_defaults():
    options = PrefixAffinityOptions()
    assert (options.prefix_chars, options.prefix_tokens, options.method, options.load_factor) == (256, None, "ring", 1.25)
    assert PrefixAffinityOptions(prefix_tokens=32).prefix_tokens == 32
    assert PrefixAffinityOptions(load_factor=0).load_factor is None
