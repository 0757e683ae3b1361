from __future__ import annotations

import json

import pytest

from lbd_worker.config import ConfigError, ModelConfig, WorkerConfig, load_worker_config, parse_device, parse_listen


def test_smallest_config_is_valid_with_documented_defaults():
    config = WorkerConfig.model_validate({"listen": "127.0.0.1:9001", "models": {"minilm": {}}})
    model = config.models["minilm"]
    assert (config.device, config.host, config.port, config.warmup) == ("auto", "127.0.0.1", 9001, True)
    assert (model.max_batch_size, model.max_queue_delay, model.max_queue_size) == (64, 0.0, 1024)
    assert model.default_queue_timeout is None and model.dynamic_batching and model.version == 1
    assert model.resolved_source("minilm") == "minilm"


def test_durations_and_sizes_take_units():
    config = WorkerConfig.model_validate({"models": {"classifier": {
        "max_queue_delay": "500us", "default_queue_timeout": "250ms"}}, "max_request_size": "1MiB",
        "drain_timeout": "1m"})
    model = config.models["classifier"]
    assert model.max_queue_delay == pytest.approx(0.0005)
    assert model.default_queue_timeout == pytest.approx(0.25)
    assert (config.max_request_size, config.drain_timeout) == (1024 * 1024, 60.0)


@pytest.mark.parametrize(("data", "message"), [
    ({"models": {}}, "models: Dictionary should have at least 1 item"),
    ({"models": {"minilm": {}}, "device": "gpu"}, "device: 'gpu' is not one of auto, cpu, cuda, cuda:N"),
    ({"models": {"minilm": {}}, "listen": "9001"}, "listen: '9001' is not host:port"),
    ({"models": {"minilm": {"max_batch_size": 0}}}, "models.minilm.max_batch_size: Input should be greater"),
    ({"models": {"minilm": {"max_batch": 8}}}, "models.minilm.max_batch: Extra inputs are not permitted"),
    ({"models": {"minilm": {"max_batch_size": 8, "preferred_batch_sizes": [4, 16]}}},
     "models.minilm: preferred_batch_sizes [16] exceed max_batch_size 8"),
    ({"models": {"minilm": {"max_queue_delay": "soon"}}}, "models.minilm.max_queue_delay: not a duration"),
    ({"models": {"bert": {}}}, "models: bert.source: 'bert' is neither a built-in model"),
    ({"models": {"minilm": {}}, "threads": 4}, "threads: Extra inputs are not permitted"),
])
def test_errors_name_the_field(data, message):
    with pytest.raises(ConfigError) as error:
        load_worker_config(text=json.dumps(data))
    assert message in str(error.value)


def test_config_is_frozen():
    config = WorkerConfig.model_validate({"models": {"minilm": {}}})
    with pytest.raises(Exception):
        config.device = "cpu"  # type: ignore[misc]
    with pytest.raises(Exception):
        config.models["minilm"].max_batch_size = 1  # type: ignore[misc]


def test_json_round_trip_is_what_lbd_hands_the_worker():
    config = WorkerConfig.model_validate({"listen": "127.0.0.1:0", "device": "cpu", "models": {
        "minilm": {"max_queue_delay": "1ms", "preferred_batch_sizes": [16, 8]},
        "numbers": {"source": "/models/x.onnx", "instances": 2}}})
    again = load_worker_config(text=config.to_json())
    assert again == config
    assert again.models["minilm"].preferred_batch_sizes == (8, 16)


def test_yaml_file(tmp_path):
    path = tmp_path / "worker.yaml"
    path.write_text("listen: 0.0.0.0:9100\ndevice: cuda:1\nmodels:\n  minilm: {max_batch_size: 128, fp16: true}\n")
    config = load_worker_config(path)
    assert config.port == 9100 and config.device == "cuda:1" and config.models["minilm"].fp16


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "worker.yaml"
    path.write_text("models: [unclosed\n")
    with pytest.raises(ConfigError, match="worker.yaml"):
        load_worker_config(path)


def test_parsers():
    assert parse_listen("[::1]:80") == ("::1", 80)
    assert parse_device("cuda") == ("cuda", 0) and parse_device("cuda:3") == ("cuda", 3)
    with pytest.raises(ValueError):
        parse_device("cuda:x")


def test_tokenizer_only_for_onnx_sources():
    with pytest.raises(ValueError, match="tokenizer is only for an .onnx source"):
        ModelConfig(source="minilm", tokenizer="/t.json")
