"""What the semantic cache compares: KServe BYTES (JSON and binary) and OpenAI bodies."""

from __future__ import annotations

import struct

import orjson

from lbd.cache.keys import parse_body
from lbd.cache.text import extract_text, partition_of


def text_of(document: dict | bytes, headers: dict[str, str] | None = None):
    body = document if isinstance(document, bytes) else orjson.dumps(document)
    return extract_text(parse_body(body, headers or {}))


def kserve(texts: list[str], **extra) -> dict:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}], **extra}


def test_kserve_json_single_string() -> None:
    found = text_of(kserve(["  How do I reset my password?  "]))
    assert found.text == "How do I reset my password?"


def test_kserve_binary_bytes_are_length_prefixed() -> None:
    text = "Wie setze ich mein Passwort zur\u00fcck?".encode()
    header = orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                       "parameters": {"binary_data_size": 4 + len(text)}}]})
    body = header + struct.pack("<I", len(text)) + text
    found = text_of(body, {"inference-header-content-length": str(len(header))})
    assert found.text == text.decode()
    assert found.context == text_of(kserve(["other"])).context  # same request shape, same context


def test_kserve_batches_and_non_text_have_no_semantic_text() -> None:
    assert text_of(kserve(["a", "b"])) is None
    assert text_of({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}) is None
    assert text_of(kserve([""])) is None


def test_kserve_other_tensors_and_parameters_form_the_context() -> None:
    base = text_of(kserve(["q"]))
    assert base.context != text_of(kserve(["q"], parameters={"top_k": 3})).context
    assert base.context == text_of(kserve(["q"], id="r1")).context


def test_chat_compares_only_the_last_user_turn() -> None:
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about Paris."},
               {"role": "assistant", "content": "Paris is the capital of France."}]
    found = text_of({"model": "m", "messages": history + [{"role": "user", "content": "How big is it?"}]})
    assert found.text == "How big is it?"
    other = text_of({"model": "m", "messages": history[:1] + [{"role": "user", "content": "How big is it?"}]})
    assert other.text == found.text and other.context != found.context  # another conversation


def test_chat_text_parts_join_and_non_text_parts_opt_out() -> None:
    parts = [{"type": "text", "text": "Describe"}, {"type": "text", "text": "this."}]
    assert text_of({"messages": [{"role": "user", "content": parts}]}).text == "Describe\nthis."
    image = [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]
    assert text_of({"messages": [{"role": "user", "content": image}]}) is None
    assert text_of({"messages": [{"role": "assistant", "content": "hi"}]}) is None


def test_prompt_and_input_fields() -> None:
    assert text_of({"model": "m", "prompt": "Once upon a time"}).text == "Once upon a time"
    assert text_of({"model": "m", "input": ["embed me"]}).text == "embed me"
    assert text_of({"model": "m", "input": ["a", "b"]}) is None
    hot = text_of({"model": "m", "prompt": "x", "temperature": 1.0}).context
    assert hot != text_of({"model": "m", "prompt": "x", "temperature": 0.0}).context


def test_partitions_separate_tenants_versions_and_embedders() -> None:
    base = partition_of("p", "m", "1", "", "minilm-int8", b"ctx")
    assert base == partition_of("p", "m", "1", "", "minilm-int8", b"ctx")
    others = {partition_of("p", "m", "1", "k:a", "minilm-int8", b"ctx"),
              partition_of("p", "m", "2", "", "minilm-int8", b"ctx"),
              partition_of("p", "m", "1", "", "pool:minilm", b"ctx"),
              partition_of("p", "m", "1", "", "minilm-int8", b"c2")}
    assert base not in others and len(others) == 4
