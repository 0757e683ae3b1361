"""Every metric the worker exposes, declared once, with Triton's names where Triton has one.

Triton's counters are exposed under their exact names (``nv_inference_request_success``, no
``_total`` suffix), cumulative, labelled ``model`` and ``version``; durations are in
microseconds and summed per request, as Triton does (a request in a batch of eight counts the
whole batch's compute time). Batch size histograms and the pending/in-flight gauges are added.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from prometheus_client import CollectorRegistry, Histogram, generate_latest

__all__ = ["ModelStats", "WorkerMetrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

_COUNTERS = {  # field of ModelStats -> (Triton's metric name, help)
    "request_success": ("nv_inference_request_success", "Number of successful inference requests"),
    "inference_count": ("nv_inference_count", "Number of inferences performed (rows, not requests)"),
    "exec_count": ("nv_inference_exec_count", "Number of model executions (batches) performed"),
    "request_duration_us": ("nv_inference_request_duration_us",
                            "Cumulative inference request duration in microseconds"),
    "queue_duration_us": ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds"),
    "compute_input_duration_us": ("nv_inference_compute_input_duration_us",
                                  "Cumulative compute input duration in microseconds"),
    "compute_infer_duration_us": ("nv_inference_compute_infer_duration_us",
                                  "Cumulative compute inference duration in microseconds"),
    "compute_output_duration_us": ("nv_inference_compute_output_duration_us",
                                   "Cumulative compute output duration in microseconds"),
}
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
"""Triton's ``reason`` label: REJECTED (queue full, queue timeout, draining), CANCELED (client
went away), BACKEND (ONNX Runtime failed), OTHER (bad requests)."""


@dataclass
class ModelStats:
    """Counters of one model version; updated on the event loop only."""

    request_success: int = 0
    inference_count: int = 0
    exec_count: int = 0
    request_duration_us: float = 0.0
    queue_duration_us: float = 0.0
    compute_input_duration_us: float = 0.0
    compute_infer_duration_us: float = 0.0
    compute_output_duration_us: float = 0.0

    def __post_init__(self) -> None:
        self.failures = dict.fromkeys(FAILURE_REASONS, 0)


class WorkerMetrics:
    """The worker's registry. ``pending`` and ``inflight`` are read at scrape time."""

    def __init__(self, pending: Callable[[str], int], inflight: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._stats: dict[tuple[str, str], ModelStats] = {}
        self._pending, self._inflight = pending, inflight
        self.batch_rows = Histogram(
            "lbd_worker_batch_size", "Rows (inferences) per model execution", ["model", "version"],
            buckets=_BATCH_BUCKETS, registry=self.registry)
        self.batch_requests = Histogram(
            "lbd_worker_batch_requests", "Requests per model execution", ["model", "version"],
            buckets=_BATCH_BUCKETS, registry=self.registry)
        self.request_rows = Histogram(
            "lbd_worker_request_batch_size", "Rows per inference request", ["model", "version"],
            buckets=_BATCH_BUCKETS, registry=self.registry)

    def stats(self, model: str, version: str) -> ModelStats:
        return self._stats.setdefault((model, version), ModelStats())

    def render(self) -> bytes:
        """The text exposition format (0.0.4): Triton's families first, then the histograms."""
        return self._render_triton().encode() + generate_latest(self.registry)

    def _render_triton(self) -> str:
        """By hand, because prometheus_client renames counter families to ``*_total``, and
        dashboards built for Triton expect its exact names."""
        lines: list[str] = []
        for field_name, (name, help_text) in _COUNTERS.items():
            _family(lines, name, help_text, "counter",
                    [({}, key, getattr(stats, field_name)) for key, stats in self._stats.items()])
        _family(lines, "nv_inference_request_failure", "Number of failed inference requests", "counter",
                [({"reason": reason}, key, count) for key, stats in self._stats.items()
                 for reason, count in stats.failures.items()])
        _family(lines, "nv_inference_pending_request_count", "Instantaneous number of requests waiting in the queue",
                "gauge", [({}, key, self._pending(key[0])) for key in self._stats])
        lines += ["# HELP lbd_worker_inflight_requests Inference requests received and not yet answered",
                  "# TYPE lbd_worker_inflight_requests gauge", f"lbd_worker_inflight_requests {self._inflight()}"]
        return "\n".join(lines) + "\n"


def _family(lines: list[str], name: str, help_text: str, kind: str, samples: list) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for extra, (model, version), value in samples:
        labels = {"model": model, "version": version, **extra}
        rendered = ",".join(f'{key}="{_escape(str(val))}"' for key, val in labels.items())
        lines.append(f"{name}{{{rendered}}} {_number(value)}")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(round(value))  # Triton's counters and gauges are integers (durations in whole µs)


assert {f.name for f in fields(ModelStats)} == set(_COUNTERS), "every counter is declared once"
