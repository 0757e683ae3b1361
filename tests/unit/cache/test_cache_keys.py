"""Exact keys: canonical bodies, KServe JSON == binary, tenants and vary headers."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from lbd.cache.keys import (
    ANONYMOUS, RequestInfo, canonical_body, canonical_json, exact_key, key_fields, label, parse_body, tenant_of,
)

PATH = "/v2/models/m/infer"


def info(body: bytes, headers: dict[str, str] | None = None, **fields) -> RequestInfo:
    values = {"pool": "p", "model": "m", "version": "1", "method": "POST", "path": PATH,
              "headers": headers or {}, "body": body} | fields
    return RequestInfo(**values)


def key(body: bytes, headers: dict[str, str] | None = None, tenant: str = "", vary=(), **fields) -> str:
    request = info(body, headers, **fields)
    return exact_key(request, tenant, vary, canonical_body(parse_body(request.body, request.headers)))


def binary_request(tensors: list[tuple[str, str, list[int], bytes]], extra: dict | None = None) -> tuple[bytes, dict]:
    inputs = [{"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(b)}}
              for n, d, s, b in tensors]
    header = orjson.dumps({"inputs": inputs, **(extra or {})})
    return header + b"".join(b for *_, b in tensors), {"inference-header-content-length": str(len(header))}


@pytest.mark.parametrize("a, b", [
    (b'{"a": 1, "b": [1, 2]}', b'{"b":[1,2],"a":1}'),
    (b'{"x": 1.0}', b'{"x": 1}'),
    (b'{"x": 1e2}', b'{"x": 100}'),
    (b'{"x": {"z": 0.5, "y": "s"}}', b'{ "x" : { "y" : "s" , "z" : 5e-1 } }'),
])
def test_equal_json_gives_equal_keys(a: bytes, b: bytes) -> None:
    assert key(a) == key(b)


@pytest.mark.parametrize("a, b", [
    (b'{"x": 1}', b'{"x": 2}'),
    (b'{"x": 1.5}', b'{"x": 1}'),
    (b'{"x": "1"}', b'{"x": 1}'),
    (b'{"x": [1, 2]}', b'{"x": [2, 1]}'),
    (b'plain', b'plain '),
])
def test_different_bodies_give_different_keys(a: bytes, b: bytes) -> None:
    assert key(a) != key(b)


def test_kserve_fp32_json_and_binary_give_one_key() -> None:
    values = np.array([[0.1, 2.0, -3.25]], dtype=np.float32)
    as_json = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0.1, 2.0, -3.25]}]})
    body, headers = binary_request([("x", "FP32", [1, 3], values.astype("<f4").tobytes())])
    assert key(as_json) == key(body, headers)
    assert key(as_json) != key(as_json.replace(b"-3.25", b"-3.5"))


def test_kserve_bytes_json_and_binary_give_one_key() -> None:
    texts = [b"hello", "w\u00f6rld".encode()]
    blob = b"".join(struct.pack("<I", len(t)) + t for t in texts)
    body, headers = binary_request([("text", "BYTES", [2], blob)])
    tensor = {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["hello", "w\u00f6rld"]}
    as_json = orjson.dumps({"inputs": [tensor]})
    assert key(as_json) == key(body, headers)


def test_kserve_int64_nested_json_and_binary_give_one_key() -> None:
    as_json = b'{"inputs":[{"name":"ids","datatype":"INT64","shape":[2,2],"data":[[1,2],[3,4]]}]}'
    body, headers = binary_request([("ids", "INT64", [2, 2], np.arange(1, 5, dtype="<i8").tobytes())])
    assert key(as_json) == key(body, headers)


def test_kserve_request_id_is_not_part_of_the_key_but_outputs_are() -> None:
    base = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [7]}]}
    assert key(orjson.dumps({**base, "id": "a"})) == key(orjson.dumps({**base, "id": "b"}))
    binary_out = {**base, "parameters": {"binary_data_output": True}}
    assert key(orjson.dumps(base)) != key(orjson.dumps(binary_out))
    assert key(orjson.dumps(base)) != key(orjson.dumps({**base, "outputs": [{"name": "y"}]}))


def test_kserve_dtype_and_shape_are_part_of_the_key() -> None:
    fp32 = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"data":[1,2]}]}'
    assert key(fp32) != key(fp32.replace(b"FP32", b"FP64"))
    assert key(fp32) != key(fp32.replace(b'"shape":[2]', b'"shape":[1,2]'))


def test_tenants_never_share_a_key() -> None:
    body = b'{"x": 1}'
    keys = {key(body, tenant=tenant) for tenant in ("", "k:key-a", "k:key-b", "h:acme")}
    assert len(keys) == 4
    assert key_fields(key(body))[2] == ANONYMOUS
    assert "key-a" not in key(body, tenant="k:key-a")  # only a hash of the API key is stored


def test_tenant_comes_from_header_then_api_key() -> None:
    headers = {"x-tenant": "acme", "authorization": "Bearer s3cret"}
    assert tenant_of(headers, "x-tenant", True) == "h:acme"
    assert tenant_of(headers, None, True) == "k:Bearer s3cret"
    assert tenant_of({"x-api-key": "k1"}, "x-tenant", True) == "k:k1"
    assert tenant_of(headers, None, False) == ""


def test_pool_model_version_method_path_and_vary_headers_are_in_the_key() -> None:
    body = b'{"x": 1}'
    base = key(body)
    assert base != key(body, pool="q")
    assert base != key(body, model="n")
    assert base != key(body, version="2")
    assert base != key(body, path=PATH + "?a=1")
    assert key(body, path="/x?b=2&a=1") == key(body, path="/x?a=1&b=2")
    vary = ["x-lang"]
    assert key(body, {"x-lang": "en"}, vary=vary) != key(body, {"x-lang": "de"}, vary=vary)
    assert key(body, {"x-other": "en"}, vary=vary) == key(body, {"x-other": "de"}, vary=vary)


def test_unsafe_names_are_hashed_into_glob_safe_labels() -> None:
    assert label("minilm") == "minilm"
    assert label("a*b:c").startswith("~") and "*" not in label("a*b:c")
    pool, model, _ = key_fields(key(b"{}", pool="p", model="odd:name*"))
    assert (pool, model) == ("p", label("odd:name*"))


def test_canonical_json_survives_values_orjson_cannot_write() -> None:
    assert canonical_json({"b": 1, "a": 2.0}) == b'{"a":2,"b":1}'
    assert canonical_json({"big": 2**70})  # falls back to repr, no exception
