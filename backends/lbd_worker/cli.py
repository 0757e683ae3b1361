"""``lbd-worker``: serve models, build the built-in models, or check a config.

    lbd-worker [serve] --config worker.yaml          # a standalone worker
    lbd-worker [serve] --config-json '{"models": {"minilm": {}}}'   # how lbd starts one
    lbd-worker [serve] --model minilm --model classifier --listen 127.0.0.1:9001
    lbd-worker build-models [--model-dir DIR] [--fp16]
    lbd-worker check --config worker.yaml

Serving: the socket opens at once (``/v2/health/live``), models load and warm up, then
``/v2/health/ready`` turns 200. SIGTERM or SIGINT: not ready, the queue is finished, exit 0.
Exit status 2 for a bad config, 1 when a model fails to load.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from lbd_worker.config import ConfigError, WorkerConfig, load_worker_config, validate_worker_config

__all__ = ["main", "serve"]

_log = logging.getLogger("lbd_worker")
READY_LINE = "lbd-worker ready on http://{host}:{port}"
"""Printed (and flushed) on stdout once every model is ready; supervisors may wait for it."""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args and args[0] in ("serve", "build-models", "check") else "serve"
    try:
        if command == "build-models":
            return _build_models(args)
        options = _serve_parser().parse_args(args)
        config = _config_from(options)
    except ConfigError as error:
        print(f"lbd-worker: {error}", file=sys.stderr)
        return 2
    if command == "check":
        print(f"ok: {len(config.models)} model(s): {', '.join(config.models)}")
        return 0
    return serve(config, exit_with_parent=options.exit_with_parent)


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lbd-worker", description="KServe v2 ONNX Runtime worker")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="FILE", help="worker YAML (the keys of WorkerConfig)")
    source.add_argument("--config-json", metavar="JSON", help="the config as one JSON object")
    parser.add_argument("--listen", help="host:port, overriding the config (port 0: any free port)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N, overriding the config")
    parser.add_argument("--model-dir", help="where built-in models are built and cached")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="shut down (as on SIGTERM) when the starting process dies (set by lbd)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME[=SOURCE]",
                        help="serve this model with default settings (repeatable)")
    return parser


def _config_from(args: argparse.Namespace) -> WorkerConfig:
    if args.config:
        data = load_worker_config(args.config).model_dump(exclude_defaults=True)
    elif args.config_json:
        data = load_worker_config(text=args.config_json).model_dump(exclude_defaults=True)
    else:
        data = {}
    models = dict(data.get("models", {}))
    for item in args.model:
        name, _, source = item.partition("=")
        models[name] = {"source": source} if source else {}
    data["models"] = models
    for key in ("listen", "device", "model_dir"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    return validate_worker_config(data, where=args.config or "command line")


def _build_models(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lbd-worker build-models",
                                     description="build the built-in models from installed packages")
    parser.add_argument("--model-dir", help="default: $LBD_MODEL_DIR or ~/.cache/lbd/models")
    parser.add_argument("--fp16", action="store_true", help="also build minilm's float16 variant")
    options = parser.parse_args(args)
    _configure_logging("info")
    from lbd_worker.build import ensure_builtin

    for name, fp16 in [("minilm", False), ("classifier", False)] + ([("minilm", True)] if options.fp16 else []):
        print(ensure_builtin(name, fp16=fp16, model_dir=options.model_dir).onnx_path)
    return 0


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(config: WorkerConfig, *, exit_with_parent: bool = False) -> int:
    """Runs the worker until SIGTERM/SIGINT; the process's exit status."""
    _configure_logging(config.log_level)
    # The loop thread and the execution threads share the GIL. With the default 5 ms switch
    # interval, a thread coming back from session.run (GIL released) can wait 5 ms for the busy
    # loop to let go, which idles the device between batches; 0.5 ms keeps that wait small.
    sys.setswitchinterval(float(os.environ.get("LBD_WORKER_SWITCH_INTERVAL", "0.0005")))
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio works too
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_serve(config, exit_with_parent))


async def _serve(config: WorkerConfig, exit_with_parent: bool) -> int:
    from lbd_worker.server import WorkerServer

    server = WorkerServer(config)
    http = server.http_server()
    try:
        host, port = await http.start(config.host, config.port)
    except OSError as error:
        _log.error("cannot listen on %s: %s", config.listen, error.strerror or error)
        return 1
    _log.info("listening on http://%s:%d (live; loading %s)", host, port, ", ".join(config.models))
    stop = _stop_event()
    watch = asyncio.create_task(_watch_parent(stop)) if exit_with_parent else None
    status = await _run_until_stopped(server, stop, host, port)
    if watch is not None:
        watch.cancel()
    await server.drain()
    await http.close()
    _log.info("stopped")
    return status


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _watch_parent(stop: asyncio.Event) -> None:
    """Sets ``stop`` once the process that started this one is gone (we were re-parented)."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    _log.warning("the parent process %d is gone; shutting down", parent)
    stop.set()


async def _run_until_stopped(server, stop: asyncio.Event, host: str, port: int) -> int:
    from lbd.systemd import Notifier

    notifier = Notifier()  # systemd's Type=notify; a no-op without NOTIFY_SOCKET
    loading = asyncio.create_task(server.load())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([loading, stopping], return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and loading.exception() is not None:
        _log.error("a model failed to load: %s", loading.exception())
        stopping.cancel()
        return 1
    if loading.done():
        print(READY_LINE.format(host=host, port=port), flush=True)
        notifier.ready(f"serving {', '.join(server.config.models)} on {host}:{port}")
        watchdog = asyncio.create_task(_watchdog(notifier)) if notifier.watchdog_interval else None
        await stopping
        if watchdog is not None:
            watchdog.cancel()
    else:
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
    notifier.stopping()
    _log.info("SIGTERM: not ready; finishing the queue (up to %.0fs)", server.config.drain_timeout)
    return 0


async def _watchdog(notifier) -> None:
    while True:
        notifier.watchdog()
        await asyncio.sleep(notifier.watchdog_interval)
