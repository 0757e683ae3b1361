"""ONNX Runtime sessions on the CUDA execution provider where a GPU is, on the CPU otherwise.

The device is resolved once per worker (:func:`resolve_device`), which logs one line saying
which provider and why. Sessions release the GIL in ``run``, so batches execute on plain threads
while the event loop keeps serving.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from lbd_worker.config import WorkerConfig, parse_device

__all__ = ["Device", "resolve_device", "create_session"]

_log = logging.getLogger("lbd_worker.runner")
_CUDA, _CPU, _TENSORRT = "CUDAExecutionProvider", "CPUExecutionProvider", "TensorrtExecutionProvider"


@dataclass(frozen=True)
class Device:
    kind: str
    """``cuda`` or ``cpu``."""
    index: int
    reason: str

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def __str__(self) -> str:
        return f"cuda:{self.index}" if self.is_cuda else "cpu"


def resolve_device(device: str) -> Device:
    """The device a worker configured with ``device`` (auto|cpu|cuda[:N]) runs on.

    ``auto`` takes CUDA only when this onnxruntime has the CUDA provider, an NVIDIA device is
    present, and the provider actually initialises on it; an explicit ``cuda:N`` that cannot be
    had is an error rather than a silent fall back to the CPU.
    """
    kind, index = parse_device(device)
    if kind == "cpu":
        chosen = Device("cpu", 0, "device: cpu in the config")
    else:
        problem = _cuda_problem(index)
        if problem is None:
            chosen = Device("cuda", index, f"device: {device}; the CUDA provider initialised on GPU {index}")
        elif kind == "cuda":
            raise RuntimeError(f"device {device} was asked for, but {problem}")
        else:
            chosen = Device("cpu", 0, f"device: auto and {problem}")
    provider = _CUDA if chosen.is_cuda else _CPU
    _log.info("execution provider: %s on %s (%s)", provider, chosen, chosen.reason)
    return chosen


def _cuda_problem(index: int) -> str | None:
    """Why CUDA cannot be used on GPU ``index``, or ``None`` when it can."""
    if _CUDA not in ort.get_available_providers():
        return f"this onnxruntime ({ort.__version__}) has no CUDA provider (install onnxruntime-gpu)"
    if not any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia")) \
            and not os.environ.get("LBD_ASSUME_GPU"):
        return "no NVIDIA GPU is present (no /dev/nvidiactl, /dev/nvidia0 or /proc/driver/nvidia)"
    try:
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        _set_cuda_sync(index, os.environ.get("LBD_WORKER_CUDA_SYNC", "auto"))
        probe = _probe_session(index)
    except Exception as error:  # noqa: BLE001 - any failure means "no CUDA here", with its reason
        return f"the CUDA provider failed to start: {error}"
    if probe.get_providers()[0] != _CUDA:
        return "the CUDA provider did not initialise (CUDA/cuDNN libraries or driver missing?)"
    return None


_SCHEDULE_FLAGS = {"auto": 0x0, "spin": 0x1, "yield": 0x2, "block": 0x4}  # CU_CTX_SCHED_*


def _set_cuda_sync(index: int, mode: str) -> None:
    """How a thread waits for the GPU in ``session.run`` (its final stream synchronization),
    from ``LBD_WORKER_CUDA_SYNC``: ``auto`` (the default: CUDA's own choice, which spins on a
    host with more cores than GPUs), ``spin``, ``yield`` or ``block`` (the thread sleeps until
    the GPU is done: less CPU per worker, some microseconds more per execution; on the H100
    host of bench/worker/RESULTS.md it changed throughput within the noise with 8 workers and
    cost 13% with one). Set on the device's primary context, the one ONNX Runtime uses, before
    the first session creates it.
    """
    if mode == "auto":
        return
    flags = _SCHEDULE_FLAGS.get(mode)
    if flags is None:
        _log.warning("LBD_WORKER_CUDA_SYNC=%s is none of %s; leaving CUDA's default", mode, sorted(_SCHEDULE_FLAGS))
        return
    try:
        import ctypes

        driver = ctypes.CDLL("libcuda.so.1")
        device = ctypes.c_int()
        if driver.cuInit(0) or driver.cuDeviceGet(ctypes.byref(device), index):
            raise OSError("cuInit/cuDeviceGet failed")
        status = driver.cuDevicePrimaryCtxSetFlags(device, flags)
        if status:
            raise OSError(f"cuDevicePrimaryCtxSetFlags returned {status}")
    except OSError as error:
        _log.warning("could not set CUDA synchronization to %s: %s", mode, error)
    else:
        _log.info("CUDA synchronization on GPU %d: %s (LBD_WORKER_CUDA_SYNC)", index, mode)


def _probe_session(index: int) -> ort.InferenceSession:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failed probe is reported once, by resolve_device
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=[(_CUDA, {"device_id": index}), _CPU])


def create_session(path: Path, device: Device, config: WorkerConfig, *, tensorrt: bool = False,
                   fp16: bool = False, cache_dir: Path | None = None) -> ort.InferenceSession:
    """A session for ``path`` on ``device`` with the worker's thread settings."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=_providers(device, tensorrt, fp16, cache_dir))
    if device.is_cuda and session.get_providers()[0] not in (_CUDA, _TENSORRT):
        raise RuntimeError(f"{path.name}: the CUDA provider did not take the model")
    return session


def _providers(device: Device, tensorrt: bool, fp16: bool, cache_dir: Path | None) -> list:
    if not device.is_cuda:
        return [_CPU]
    providers: list = []
    if tensorrt and _TENSORRT in ort.get_available_providers():
        trt_options = {"device_id": device.index, "trt_fp16_enable": fp16}
        if cache_dir is not None:
            trt_options |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir)}
        providers.append((_TENSORRT, trt_options))
    elif tensorrt:
        _log.warning("tensorrt: true, but this onnxruntime has no TensorRT provider; using CUDA")
    providers.append((_CUDA, {"device_id": device.index}))
    providers.append(_CPU)
    return providers
