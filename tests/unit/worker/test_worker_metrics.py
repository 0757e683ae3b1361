from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from lbd_worker.metrics import WorkerMetrics


def test_exposition_parses_and_keeps_tritons_exact_names():
    pending = {"minilm": 7}
    metrics = WorkerMetrics(pending=lambda model: pending[model], inflight=lambda: 3)
    stats = metrics.stats("minilm", "1")
    stats.request_success, stats.inference_count, stats.queue_duration_us = 2, 5, 1234.6
    stats.failures["REJECTED"] += 1
    metrics.batch_rows.labels("minilm", "1").observe(4)
    text = metrics.render().decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert "nv_inference_request_success 2" not in text  # labelled, never bare
    assert 'nv_inference_request_success{model="minilm",version="1"} 2\n' in text
    assert 'nv_inference_queue_duration_us{model="minilm",version="1"} 1235\n' in text
    assert 'nv_inference_request_failure{model="minilm",version="1",reason="REJECTED"} 1\n' in text
    assert 'nv_inference_pending_request_count{model="minilm",version="1"} 7\n' in text
    assert "lbd_worker_inflight_requests 3\n" in text
    assert families["lbd_worker_batch_size"].type == "histogram"
    assert "# TYPE nv_inference_count counter" in text
