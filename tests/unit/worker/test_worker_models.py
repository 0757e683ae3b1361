"""The built models against their references: MiniLM against sentence-transformers' vectors
(tests/unit/worker/data/minilm_reference.json, made by tools/make_minilm_reference.py), the
classifier against numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lbd_worker.build.classifier import reference_forward
from lbd_worker.config import WorkerConfig
from lbd_worker.models import TensorModel, TextEmbeddingModel, Work, load_model
from lbd_worker.protocol import BadRequest, InferRequest, InputTensor, RequestedOutput
from lbd_worker.runner import Device

REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())
CPU = Device("cpu", 0, "tests")


def _worker(model_dir: Path, **models) -> WorkerConfig:
    return WorkerConfig.model_validate({"device": "cpu", "model_dir": str(model_dir), "intra_op_threads": 2,
                                        "models": models or {"minilm": {}, "classifier": {}}})


@pytest.fixture(scope="module")
def minilm(model_dir, minilm_files) -> TextEmbeddingModel:
    config = _worker(model_dir)
    return load_model("minilm", config.models["minilm"], config, CPU)


@pytest.fixture(scope="module")
def classifier(model_dir, classifier_files) -> TensorModel:
    config = _worker(model_dir)
    return load_model("classifier", config.models["classifier"], config, CPU)


def _texts(*texts: str) -> InferRequest:
    array = np.empty(len(texts), dtype=object)
    array[:] = [text.encode() for text in texts]
    return InferRequest(None, (InputTensor("text", "BYTES", array.shape, array),))


def _embed(model: TextEmbeddingModel, works: list[Work]) -> list[np.ndarray]:
    outputs, _ = model.execute(works)
    return [output["embedding"] for output in outputs]


def _cosines(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return (vectors * reference).sum(axis=1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)


def test_minilm_matches_the_reference_model_in_one_padded_batch(minilm):
    work = minilm.prepare(_texts(*REFERENCE["sentences"]))
    (vectors,) = _embed(minilm, [work])
    assert vectors.shape == (8, 384) and vectors.dtype == np.float32
    assert _cosines(vectors, np.array(REFERENCE["embeddings"])).min() >= 1 - 1e-3
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_minilm_batched_with_other_requests_gives_the_same_vectors(minilm):
    works = [minilm.prepare(_texts(sentence)) for sentence in REFERENCE["sentences"]]
    vectors = np.concatenate(_embed(minilm, works))
    alone = np.concatenate([_embed(minilm, [work])[0] for work in works[:2]])
    assert _cosines(vectors, np.array(REFERENCE["embeddings"])).min() >= 1 - 1e-3
    np.testing.assert_allclose(vectors[:2], alone, atol=1e-5)


def test_minilm_metadata_and_buckets(minilm):
    assert minilm.metadata()["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert minilm.metadata()["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    assert minilm.prepare(_texts("hi")).bucket == 16
    assert minilm.prepare(_texts("word " * 40)).bucket == 64
    longest = minilm.prepare(_texts("word " * 1000))
    assert longest.bucket == 256 and len(longest.payload[0]) == 256  # truncated to max_sequence_length


def test_minilm_accepts_n_by_1_text(minilm):
    array = np.array([[b"a"], [b"b"]], dtype=object)
    work = minilm.prepare(InferRequest(None, (InputTensor("text", "BYTES", (2, 1), array),)))
    assert work.rows == 2


@pytest.mark.parametrize(("inputs", "outputs", "message"), [
    ((InputTensor("txt", "BYTES", (1,), np.array([b"a"], dtype=object)),), (), "has no input 'txt'"),
    ((InputTensor("text", "FP32", (1,), np.ones(1, np.float32)),), (), "datatype FP32, expected BYTES"),
    ((InputTensor("text", "BYTES", (1, 2), np.array([[b"a", b"b"]], dtype=object)),), (), "does not match [-1]"),
    ((InputTensor("text", "BYTES", (1,), np.array([b"\xff"], dtype=object)),), (), "must be UTF-8"),
    ((InputTensor("text", "BYTES", (65,), np.array([b"a"] * 65, dtype=object)),), (),
     "batch size 65 exceeds the model's max_batch_size 64"),
    ((InputTensor("text", "BYTES", (1,), np.array([b"a"], dtype=object)),), (RequestedOutput("vec", None),),
     "has no output 'vec'"),
])
def test_minilm_refuses_bad_requests(minilm, inputs, outputs, message):
    with pytest.raises(BadRequest) as error:
        minilm.prepare(InferRequest(None, inputs, outputs))
    assert message in error.value.message


def test_classifier_matches_numpy(classifier):
    rng = np.random.default_rng(3)
    features = [rng.normal(0, 2, (rows, 8)).astype(np.float32) for rows in (1, 3, 2)]
    works = [classifier.prepare(InferRequest(None, (InputTensor("features", "FP32", f.shape, f),)))
             for f in features]
    outputs, times = classifier.execute(works)
    for output, batch in zip(outputs, features):
        probabilities, labels = reference_forward(batch)
        np.testing.assert_allclose(output["probabilities"], probabilities, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(output["label"], labels)
    assert min(times.input, times.infer, times.output) >= 0


def test_classifier_metadata_comes_from_the_graph(classifier):
    assert classifier.metadata() == {
        "name": "classifier", "versions": ["1"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 8]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]}]}


@pytest.mark.parametrize(("tensor", "message"), [
    (InputTensor("features", "FP64", (1, 8), np.ones((1, 8))), "datatype FP64, expected FP32"),
    (InputTensor("features", "FP32", (1, 7), np.ones((1, 7), np.float32)), "shape [1, 7] does not match [-1, 8]"),
    (InputTensor("features", "FP32", (8,), np.ones(8, np.float32)), "shape [8] does not match [-1, 8]"),
    (InputTensor("features", "FP32", (0, 8), np.ones((0, 8), np.float32)), "the batch axis is 0"),
    (InputTensor("x", "FP32", (1, 8), np.ones((1, 8), np.float32)), "has no input 'x'"),
])
def test_classifier_refuses_bad_tensors(classifier, tensor, message):
    with pytest.raises(BadRequest) as error:
        classifier.prepare(InferRequest(None, (tensor,)))
    assert message in error.value.message


def test_a_model_from_an_onnx_path(model_dir, classifier_files):
    config = _worker(model_dir, numbers={"source": str(classifier_files.onnx_path), "version": 3})
    model = load_model("numbers", config.models["numbers"], config, CPU)
    assert isinstance(model, TensorModel) and model.version == "3" and model.batching
