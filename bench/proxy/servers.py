"""The processes under test: the two nginx upstreams and each proxy, pinned, in the foreground.

Every server runs with its own config, pid and log files in the run directory, on a free port
on 127.0.0.1, in its own process group, so nothing of the system's services is touched and
stopping one never reaches another.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


class Skip(Exception):
    """A proxy that cannot be benchmarked in this run (not installed, failed to start)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def render(template: str, target: Path, **values: object) -> Path:
    text = string.Template((HERE / template).read_text()).substitute(**values)
    target.write_text(text)
    return target


class Process:
    """A child in its own process group, pinned to one CPU, stderr/stdout to a log file."""

    def __init__(self, name: str, argv: list[str], cpu: int, log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.log = log_dir / f"{name}.log"
        with self.log.open("wb") as log:
            self.popen = subprocess.Popen(["taskset", "-c", str(cpu), *argv], stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True, cwd=ROOT)

    def log_tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines()
        return "\n".join("    " + line for line in text[-lines:]) or "    (no output)"

    def wait_listening(self, port: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise Skip(f"{self.name} exited with status {self.popen.returncode} "
                           f"before listening:\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return
            time.sleep(0.05)
        raise Skip(f"{self.name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s:\n"
                   f"{self.log_tail()}")

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def pids(self) -> list[int]:
        """The process and its descendants (nginx's worker, lbd's children)."""
        found, frontier = [], [self.popen.pid]
        while frontier:
            pid = frontier.pop()
            found.append(pid)
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{pid}/task").iterdir():
                    children = (task / "children").read_text().split()
                    frontier += [int(child) for child in children]
        return found


class Upstreams:
    """The two identical nginx upstreams, each one worker, with request counters."""

    def __init__(self, run_dir: Path, cpu: int) -> None:
        self.ports = (free_port(), free_port())
        self.processes = []
        for index, port in enumerate(self.ports, 1):
            name = f"upstream{index}"
            conf = render("upstream.nginx.conf.tmpl", run_dir / f"{name}.conf",
                          dir=run_dir, name=name, port=port)
            process = Process(name, ["nginx", "-p", str(run_dir), "-c", str(conf)], cpu, run_dir)
            self.processes.append(process)
        for process, port in zip(self.processes, self.ports):
            try:
                process.wait_listening(port)
            except Skip as error:
                self.stop()
                sys.exit(f"FATAL: upstream failed: {error}")

    def counts(self) -> tuple[int, int]:
        return tuple(_stub_requests(port) for port in self.ports)  # type: ignore[return-value]

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


def _stub_requests(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/__stub")
    text = connection.getresponse().read().decode()
    connection.close()
    # "server accepts handled requests\n A H R": R counts this request itself too.
    return int(text.splitlines()[2].split()[2]) - 1


def start_proxy(name: str, run_dir: Path, port: int, upstreams: Upstreams, cpu: int,
                python: str) -> Process:
    up1, up2 = upstreams.ports
    if name == "nginx":
        conf = render("nginx.conf.tmpl", run_dir / "nginx.conf", dir=run_dir, port=port,
                      up1=up1, up2=up2)
        _config_check(["nginx", "-t", "-q", "-p", str(run_dir), "-c", str(conf)], name)
        argv = ["nginx", "-p", str(run_dir), "-c", str(conf)]
    elif name == "haproxy":
        conf = render("haproxy.cfg.tmpl", run_dir / "haproxy.cfg", dir=run_dir, port=port,
                      up1=up1, up2=up2)
        _config_check(["haproxy", "-c", "-q", "-f", str(conf)], name)
        argv = ["haproxy", "-db", "-f", str(conf)]
    elif name == "bare-python":
        argv = [python, str(HERE / "bare_proxy.py"), str(port),
                f"127.0.0.1:{up1}", f"127.0.0.1:{up2}"]
    elif name == "floor":
        argv = [python, str(HERE / "floor_proxy.py"), str(port),
                f"127.0.0.1:{up1}", f"127.0.0.1:{up2}"]
    elif name == "cython-lane":
        _build_lane(python)
        argv = [python, str(HERE / "lane" / "lane_proxy.py"), str(port),
                f"127.0.0.1:{up1}", f"127.0.0.1:{up2}"]
    elif name in ("lbd", "lbd-python"):
        # lbd as shipped (the compiled lane, lbd/proxy/_lane.pyx, serves plain requests), and
        # the same file on the Python data plane alone. LBD_LANE would override the file.
        os.environ.pop("LBD_LANE", None)
        conf = render("lbd.yaml.tmpl", run_dir / "lbd.yaml", port=port, up1=up1, up2=up2)
        conf.write_text(conf.read_text() + ("lane: off\n" if name == "lbd-python" else "lane: auto\n"))
        lbd = lbd_command(python)
        _config_check([*lbd, "check", str(conf)], name)
        argv = [*lbd, "serve", "--config", str(conf)]
    else:
        raise ValueError(name)
    process = Process(name, argv, cpu, run_dir)
    try:
        process.wait_listening(port)
    except Skip:
        process.stop()
        raise
    return process


def lbd_command(python: str) -> list[str]:
    """`lbd` from the benchmark's Python environment, else from PATH, else the module."""
    beside = Path(python).parent / "lbd"
    if beside.exists():
        return [str(beside)]
    if shutil.which("lbd"):
        return ["lbd"]
    probe = subprocess.run([python, "-c", "import lbd.cli"], capture_output=True, text=True,
                           cwd=ROOT)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise Skip(f"lbd is not installed and `import lbd.cli` fails: {last}")
    return [python, "-c", "import sys; from lbd.cli import main; sys.exit(main())"]


def _build_lane(python: str) -> None:
    """Build bench/proxy/lane/lane.pyx (Cython) when its extension is missing or stale."""
    build = subprocess.run([python, str(HERE / "lane" / "build.py")], capture_output=True,
                           text=True, cwd=ROOT)
    if build.returncode != 0:
        raise Skip(f"cython-lane: {build.stderr.strip() or f'build.py status {build.returncode}'}")


def _config_check(argv: list[str], name: str) -> None:
    check = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if check.returncode != 0:
        output = (check.stdout + check.stderr).strip()
        raise Skip(f"{name} config check `{' '.join(argv)}` failed:\n    {output}")
