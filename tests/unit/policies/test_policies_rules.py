"""Judging answers: JSON paths, the cascade's accept rule (JSON and binary KServe answers,
the classifier's real probabilities), and the shadow comparison."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from lbd.config.policies import AcceptConfig, ShadowCompareConfig
from lbd.policies.answers import read_answer
from lbd.policies.paths import MISSING, extract, parse_path
from lbd.policies.rules import MATCH, MISMATCH, SKIPPED, accepts, compare, same, top_probability
from lbd_worker.build.classifier import reference_forward
from lbd_worker.protocol import InferRequest, RequestedOutput
from lbd_worker.protocol.codec import encode_response


def classifier_answer(features: np.ndarray, *, binary: bool = False, version: str = "1") -> tuple[bytes, str | None]:
    """What the worker answers for ``features``, as JSON or in the binary extension."""
    probabilities, label = reference_forward(features.astype(np.float32))
    request = InferRequest(None, (), (RequestedOutput("probabilities", binary), RequestedOutput("label", binary)))
    encoded = encode_response("classifier", version, request, [("probabilities", probabilities), ("label", label)])
    return encoded.body, str(encoded.header_length) if encoded.header_length is not None else None


CONFIDENT = np.ones((1, 8))   # top probability 0.989
UNSURE = np.zeros((1, 8))     # top probability 0.385


@pytest.mark.parametrize("text, steps", [
    ("outputs[0].data", (("key", "outputs", None), ("index", 0, None), ("key", "data", None))),
    ("$.choices[-1].message.content", (("key", "choices", None), ("index", -1, None), ("key", "message", None),
                                       ("key", "content", None))),
    ("outputs[name=label].shape[0]", (("key", "outputs", None), ("where", "name", "label"), ("key", "shape", None),
                                      ("index", 0, None))),
])
def test_paths_parse(text, steps):
    assert parse_path(text) == steps


@pytest.mark.parametrize("text", ["", ".a", "a..b", "a[", "a[0]b", "0a", "a b", "a.[0]", "a[x]"])
def test_bad_paths_are_refused(text):
    with pytest.raises(ValueError, match="not a JSON path"):
        parse_path(text)


def test_extract_follows_keys_indexes_and_selectors():
    document = {"outputs": [{"name": "label", "data": [2]}, {"name": "p", "data": [0.1, 0.9]}]}
    assert extract(document, parse_path("outputs[name=p].data[-1]")) == 0.9
    assert extract(document, parse_path("outputs[1].name")) == "p"
    for missing in ("outputs[2]", "outputs[name=q]", "outputs.name", "nothing", "outputs[0].data[0].x"):
        assert extract(document, parse_path(missing)) is MISSING


def test_binary_answers_read_like_json_ones():
    json_body, none = classifier_answer(CONFIDENT)
    binary_body, length = classifier_answer(CONFIDENT, binary=True)
    assert none is None and length is not None and len(binary_body) > int(length)
    assert read_answer(binary_body, length) == read_answer(json_body)
    assert read_answer(binary_body[:-3], length) is None  # a tensor cut short
    assert read_answer(b"not json") is None and read_answer(b"{bad") is None


def test_top_probability_of_the_real_classifier():
    for features in (CONFIDENT, UNSURE, np.stack([CONFIDENT[0], UNSURE[0]])):
        expected = reference_forward(features.astype(np.float32))[0].max(axis=1).min()
        for binary in (False, True):
            body, length = classifier_answer(features, binary=binary)
            assert top_probability(read_answer(body, length)) == pytest.approx(expected, abs=1e-6)
    document = read_answer(classifier_answer(CONFIDENT)[0])
    assert top_probability(document, "label") == 1  # an output named outright
    assert top_probability(document, "missing") is None and top_probability({"x": 1}) is None


@pytest.mark.parametrize("rule, confident, unsure", [
    (AcceptConfig(top_probability=0.8), True, False),
    (AcceptConfig(top_probability=0.3), True, True),
    (AcceptConfig(top_probability=0.8, output="probabilities"), True, False),
    (AcceptConfig(field="outputs[name=probabilities].data", reduce="max", value=0.8), True, False),
    (AcceptConfig(field="outputs[name=probabilities].data", reduce="max", op="<", value=0.5), False, True),
    (AcceptConfig(field="outputs[name=label].data[0]", op="==", value=1), True, False),
    (AcceptConfig(field="outputs[name=label].data[0]", op="in", value=[1, 2]), True, True),
    (AcceptConfig(field="outputs[name=label].data", reduce="length", value=1, op="=="), True, True),
    (AcceptConfig(field="model_name", op="==", value="classifier"), True, True),
    (AcceptConfig(field="outputs[name=probabilities].data", value=0.8), False, False),  # a list, not reduced
    (AcceptConfig(field="model_name", value=0.8), False, False),   # text against a number
    (AcceptConfig(field="no.such.field", op="!=", value=1), False, False),
])
def test_accept_rules(rule, confident, unsure):
    for binary in (False, True):
        assert accepts(rule, *classifier_answer(CONFIDENT, binary=binary)) is confident
        assert accepts(rule, *classifier_answer(UNSURE, binary=binary)) is unsure


def test_accept_rules_on_other_json():
    chat = orjson.dumps({"choices": [{"finish_reason": "stop", "logprobs": [-0.1, -2.5]}]})
    assert accepts(AcceptConfig(field="choices[0].finish_reason", op="==", value="stop"), chat)
    assert not accepts(AcceptConfig(field="choices[0].finish_reason", op="==", value="length"), chat)
    assert accepts(AcceptConfig(field="choices[0].logprobs", reduce="mean", op=">", value=-2), chat)
    assert not accepts(AcceptConfig(field="choices[0].logprobs", reduce="min", op=">", value=-2), chat)
    assert not accepts(AcceptConfig(top_probability=0.5), chat)
    assert not accepts(AcceptConfig(field="a", value=1), b"plain text")
    assert not accepts(AcceptConfig(field="a", reduce="max", value=1), b'{"a": []}')


def test_same_with_tolerance():
    assert same({"a": [1, 2.0, "x", True]}, {"a": [1.0, 2, "x", True]}, 0)
    assert same(0.5, 0.5 + 1e-9, 1e-6) and not same(0.5, 0.5 + 1e-5, 1e-6)
    assert same(1000.0, 1000.0005, 1e-6) and not same(1000.0, 1000.01, 1e-6)  # relative above 1
    assert not same(True, 1, 1) and not same([1], [1, 1], 1) and not same({"a": 1}, {"b": 1}, 1)
    assert not same(float("nan"), float("nan"), 1) and same(None, None, 0)


def test_shadow_comparison():
    outputs = ShadowCompareConfig()
    whole = ShadowCompareConfig(field=None)
    primary = classifier_answer(CONFIDENT)
    # A new version answers the same outputs (binary or not): the outputs match, the bodies do not.
    assert compare(outputs, *primary, *classifier_answer(CONFIDENT, binary=True, version="2")) == MATCH
    assert compare(whole, *primary, *classifier_answer(CONFIDENT, version="2")) == MISMATCH
    assert compare(whole, *primary, *classifier_answer(CONFIDENT)) == MATCH
    assert compare(outputs, *primary, *classifier_answer(UNSURE)) == MISMATCH
    assert compare(outputs, *primary, b'{"other": 1}', None) == MISMATCH
    assert compare(outputs, b'{"x": 1}', None, b'{"y": 2}', None) == SKIPPED
    assert compare(outputs, b"text", None, b"text", None) == SKIPPED
    assert compare(whole, b"text", None, b"text", None) == MATCH
    assert compare(whole, b"text", None, b"other", None) == MISMATCH
    assert compare(whole, b"text", None, b'{"a": 1}', None) == MISMATCH
