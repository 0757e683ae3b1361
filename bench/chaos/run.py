"""Chaos benchmark: lbd beside HAProxy and nginx over the same three real workers and chaos.

Run it through run.sh:

    bench/chaos/run.sh [--only lbd,haproxy,nginx] [--runs 1] [--duration 20] [--keep]

For each proxy in turn, three standalone `lbd-worker` processes serving the `classifier` model
are started fresh on the same loopback ports (w2 with `dynamic_batching: false,
max_queue_size: 1`, so it sheds load with 503), the proxy is started in the foreground with its
own config (lbd.yaml.tmpl, haproxy.cfg.tmpl, nginx.conf.tmpl), and load.py drives a steady,
fixed-concurrency POST load through it while this driver runs the same chaos timeline:

    t=4s  SIGKILL w0; t=5s the harness starts it again (same port; ready about 1s later)
    t=9s  SIGSTOP w1; t=13s SIGCONT w1
    w2 sheds with 503 throughout

The workers are not supervised by lbd: the harness kills, restarts, freezes and thaws them the
same way for every proxy. The report (stdout and bench/out/chaos-<date>.md) gives per proxy the
client-visible errors and their breakdown, latency, throughput, the upstream tries per client
request from each proxy's own logs, and the errors and p99 per chaos phase.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from load import BODY

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROXIES = ("lbd", "haproxy", "nginx")
WORKER_CONFIGS = (
    {"intra_op_threads": 1, "models": {"classifier": {}}},
    {"intra_op_threads": 1, "models": {"classifier": {}}},
    {"intra_op_threads": 1, "models": {"classifier": {"dynamic_batching": False, "max_queue_size": 1}}},
)


class Failed(Exception):
    """A proxy or worker that could not be started; the proxy's run is reported as failed."""


# -- processes ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(argv: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus else argv


ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
"""The children's environment; PYTHONPATH points at the code snapshot when there is one."""


def snapshot(run_dir: Path, source: str) -> Path:
    """Copy lbd/ and backends/lbd_worker/ (``tree``: as they are now; ``head``: as committed),
    so that every proxy of this run meets the same lbd and the same workers even while someone
    edits the working tree."""
    src = run_dir / "src"
    if source == "head":
        export = run_dir / "head"
        export.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", "lbd", "backends/lbd_worker"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(export)], input=archive, check=True)
        base = export
    else:
        base = ROOT
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(base / "lbd", src / "lbd", ignore=ignore)
    shutil.copytree(base / "backends" / "lbd_worker", src / "lbd_worker", ignore=ignore)
    ENV["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))
    return src


class Process:
    """A child in its own process group (so signals reach only it), output to a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, cpus: str | None) -> None:
        self.name, self.log = name, log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(pinned(argv, cpus), stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT,
                                          env=ENV)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def send(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        self.send(signal.SIGCONT)
        self.send(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            self.popen.wait()

    def tail(self, lines: int = 12) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines()
        return "\n".join("    " + line for line in text[-lines:]) or "    (no output)"


def http_status(port: int, path: str, timeout: float = 0.5) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


def infer(port: int) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/classifier/infer", data=BODY,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError as error:
        return 0, str(error).encode()


def wait_until(condition, timeout: float, what: str, process: Process | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.popen.poll() is not None:
            raise Failed(f"{what}: {process.name} exited with status {process.popen.returncode}:\n"
                         f"{process.tail()}")
        if time.monotonic() > deadline:
            raise Failed(f"{what}: not within {timeout:.0f}s" + (f":\n{process.tail()}" if process else ""))
        time.sleep(0.05)


def executable(name: str, python: str) -> list[str]:
    """`name` from the benchmark's Python environment, else from PATH (not a pyenv shim, which
    would sit in the process tree and take the signals meant for the real process)."""
    beside = Path(python).parent / name
    if beside.exists():
        return [str(beside)]
    module = {"lbd": "lbd.cli", "lbd-worker": "lbd_worker.cli"}[name]
    return [python, "-c", f"import sys; from {module} import main; sys.exit(main())"]


class Workers:
    """The three workers on fixed ports; started fresh for each proxy."""

    def __init__(self, run_dir: Path, args: argparse.Namespace) -> None:
        self.run_dir, self.args = run_dir, args
        self.ports = [free_port() for _ in WORKER_CONFIGS]
        self.procs: list[Process | None] = [None] * len(WORKER_CONFIGS)
        self.command = executable("lbd-worker", args.python)

    def start(self, index: int, log_name: str) -> Process:
        config = json.dumps(WORKER_CONFIGS[index], separators=(",", ":"))
        argv = [*self.command, "--config-json", config, "--listen", f"127.0.0.1:{self.ports[index]}"]
        proc = Process(f"w{index}", argv, self.run_dir / f"{log_name}.w{index}.log", self.args.rest_cpus)
        self.procs[index] = proc
        return proc

    def start_all(self, log_name: str) -> None:
        for index in range(len(WORKER_CONFIGS)):
            self.start(index, log_name)
        for index, port in enumerate(self.ports):
            wait_until(lambda: http_status(port, "/v2/health/ready") == 200, 60,
                       f"worker w{index} ready", self.procs[index])
            status, body = infer(port)
            if status != 200:   # a broken worker would make every proxy look bad
                raise Failed(f"worker w{index} answers an inference with {status}: {body[:300]!r}\n"
                             f"{self.procs[index].tail()}")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc is not None:
                proc.stop()
        self.procs = [None] * len(WORKER_CONFIGS)


def render(template: str, target: Path, **values: object) -> Path:
    target.write_text(string.Template((HERE / template).read_text()).substitute(**values))
    return target


def config_check(argv: list[str], name: str) -> None:
    check = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=ENV)
    if check.returncode != 0:
        raise Failed(f"{name} config check `{' '.join(argv)}` failed:\n{(check.stdout + check.stderr).strip()}")


def start_proxy(name: str, run_dir: Path, tag: str, port: int, workers: Workers,
                args: argparse.Namespace) -> tuple[Process, Path]:
    p0, p1, p2 = workers.ports
    pdir = run_dir / tag
    pdir.mkdir()
    if name == "lbd":
        conf = render("lbd.yaml.tmpl", pdir / "lbd.yaml", port=port, p0=p0, p1=p1, p2=p2)
        lbd = executable("lbd", args.python)
        config_check([*lbd, "check", str(conf)], name)
        if args.lbd_trace:      # the same lbd, with breaker/ejection/panic events logged
            lbd = [args.python, str(HERE / "lbd_trace.py")]
        argv = [*lbd, "serve", "--config", str(conf)]
    elif name == "haproxy":
        conf = render("haproxy.cfg.tmpl", pdir / "haproxy.cfg", dir=pdir, port=port, p0=p0, p1=p1, p2=p2)
        config_check(["haproxy", "-c", "-q", "-f", str(conf)], name)
        argv = ["haproxy", "-db", "-f", str(conf)]
    elif name == "nginx":
        conf = render("nginx.conf.tmpl", pdir / "nginx.conf", dir=pdir, port=port, p0=p0, p1=p1, p2=p2)
        config_check(["nginx", "-t", "-q", "-p", str(pdir), "-c", str(conf)], name)
        argv = ["nginx", "-p", str(pdir), "-c", str(conf)]
    else:
        raise ValueError(name)
    proc = Process(name, argv, pdir / f"{name}.log", args.proxy_cpus)
    wait_until(lambda: port_open(port), 20, f"{name} listening", proc)
    return proc, pdir


# -- one proxy under chaos ---------------------------------------------------------------------

@dataclass
class Run:
    proxy: str
    round: int
    failed: str = ""
    t0_epoch: float = 0.0
    events: list[tuple[float, str]] = field(default_factory=list)
    load: dict = field(default_factory=dict)
    proxy_dir: Path | None = None
    proxy_log: Path | None = None
    haproxy_stats: str = ""
    ports: list[int] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    other_cpu: float = 0.0
    lbd_trace: bool = False
    """% of one CPU used by processes other than ours while this proxy ran (other people's work)."""


def busy_ticks() -> tuple[float, float]:
    """(busy, wall) seconds of all CPUs together since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick


def own_cpu() -> float:
    """CPU seconds of this driver and its waited-for children (workers, proxy, load client)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def chaos_run(name: str, round_: int, run_dir: Path, workers: Workers, args: argparse.Namespace) -> Run:
    busy0, own0, wall0 = busy_ticks()[0], own_cpu(), time.monotonic()
    try:
        run = _chaos_run(name, round_, run_dir, workers, args)
    finally:
        workers.stop_all()
    busy, own, wall = busy_ticks()[0] - busy0, own_cpu() - own0, time.monotonic() - wall0
    run.other_cpu = max(0.0, 100 * (busy - own) / wall)
    return run


def wait_quiet(limit: float) -> float:
    """Wait (up to ``limit`` seconds) until the machine is nearly idle; other people's work
    would otherwise share the CPUs with the proxy. Returns the last 1 s busy %% of a CPU."""
    deadline = time.monotonic() + limit
    while True:
        busy0, wall0 = busy_ticks()[0], time.monotonic()
        time.sleep(1.0)
        busy = 100 * (busy_ticks()[0] - busy0) / (time.monotonic() - wall0)
        if busy < 15 or time.monotonic() >= deadline:
            return busy


def _chaos_run(name: str, round_: int, run_dir: Path, workers: Workers, args: argparse.Namespace) -> Run:
    run = Run(name, round_, ports=list(workers.ports), lbd_trace=args.lbd_trace and name == "lbd")
    tag = f"r{round_}-{name}"
    proxy = None
    try:
        workers.start_all(tag)
        port = free_port()
        proxy, run.proxy_dir = start_proxy(name, run_dir, tag, port, workers, args)
        run.proxy_log = proxy.log
        time.sleep(args.settle)     # first health checks pass; the same pause for every proxy
        out = run.proxy_dir / "load.json"
        load = subprocess.Popen(
            pinned([args.python, str(HERE / "load.py"), "--port", str(port), "--duration", str(args.duration),
                    "--concurrency", str(args.concurrency), "--timeout", str(args.client_timeout),
                    "--out", str(out)], args.rest_cpus),
            stdout=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
        line = load.stdout.readline()
        if not line.startswith("GO "):
            load.wait()
            raise Failed(f"load client did not start: {line!r}")
        t0 = float(line.split()[1])
        run.t0_epoch = time.time() - (time.monotonic() - t0)
        timeline(run, t0, workers, tag, args)
        load.wait(args.duration + args.client_timeout + 30)
        run.load = json.loads(out.read_text())
        if name == "lbd":
            time.sleep(1.5)     # lbd flushes its access log once a second
        if name == "haproxy":
            run.haproxy_stats = haproxy_show_stat(run.proxy_dir / "haproxy.sock")
    except Failed as error:
        run.failed = str(error)
    finally:
        if proxy is not None:
            proxy.stop(signal.SIGQUIT if name == "nginx" else signal.SIGTERM, 20)
        workers.stop_all()
    return run


def timeline(run: Run, t0: float, workers: Workers, tag: str, args: argparse.Namespace) -> None:
    def at(offset: float) -> None:
        time.sleep(max(0.0, t0 + offset - time.monotonic()))

    def event(text: str) -> None:
        run.events.append((round(time.monotonic() - t0, 3), text))

    at(args.kill_at)
    workers.procs[0].send(signal.SIGKILL)
    workers.procs[0].popen.wait()
    event("SIGKILL w0")
    at(args.kill_at + args.restart_after)
    restarted = workers.start(0, f"{tag}.restarted")
    event("w0 restarted (process started)")

    def watch_ready() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and restarted.popen.poll() is None:
            if http_status(workers.ports[0], "/v2/health/ready", 0.2) == 200:
                event("w0 ready again")
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_ready, daemon=True)
    watcher.start()
    at(args.freeze_at)
    workers.procs[1].send(signal.SIGSTOP)
    event("SIGSTOP w1")
    at(args.thaw_at)
    workers.procs[1].send(signal.SIGCONT)
    event("SIGCONT w1")
    watcher.join(timeout=max(0.0, t0 + args.duration - time.monotonic()))
    run.events.sort()


def haproxy_show_stat(sock_path: Path) -> str:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(str(sock_path))
            sock.sendall(b"show stat\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")
    except OSError as error:
        return f"# show stat failed: {error}"


# -- analysis ----------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def phases(args: argparse.Namespace) -> list[tuple[str, float, float]]:
    return [("steady", 0.0, args.kill_at),
            ("w0 killed/restarting", args.kill_at, args.freeze_at),
            ("w1 frozen", args.freeze_at, args.thaw_at),
            ("after thaw", args.thaw_at, float("inf"))]


def is_error(outcome: object) -> bool:
    return not (isinstance(outcome, int) and 200 <= outcome < 300)


def analyse(run: Run, args: argparse.Namespace) -> dict:
    records = run.load["records"]
    latencies = [r[1] * 1000 for r in records]
    errors = [r for r in records if is_error(r[2])]
    breakdown = Counter(str(r[2]) for r in errors)
    s = {
        "requests": len(records),
        "errors": len(errors),
        "error_pct": 100 * len(errors) / max(1, len(records)),
        "breakdown": dict(breakdown),
        "p50": pct(latencies, 50), "p99": pct(latencies, 99), "p999": pct(latencies, 99.9),
        "max": max(latencies, default=0.0),
        "p99_ok": pct([r[1] * 1000 for r in records if not is_error(r[2])], 99),
        "rps": len(records) / max(run.load["elapsed"], 1e-9),
        "reasons": run.load["reasons"],
        "error_seconds": dict(sorted(Counter(int(r[0]) for r in errors).items())),
        "phases": [],
    }
    for label, start, end in phases(args):
        inside = [r for r in records if start <= r[0] < end]
        s["phases"].append((label, len(inside), sum(1 for r in inside if is_error(r[2])),
                            pct([r[1] * 1000 for r in inside], 99)))
    names = {str(port): f"w{i}" for i, port in enumerate(run.ports)}

    def served_by(header: str) -> str:
        last = header.split("#")[0].split(",")[-1].strip()
        return names.get(last.rsplit(":", 1)[-1], last) if ":" in last else (last or "?")

    s["served"] = []
    for label, start, end in phases(args):
        share = Counter(served_by(r[3]) for r in records if start <= r[0] < end and not is_error(r[2]))
        total = sum(share.values()) or 1
        s["served"].append((label, ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(share.items()))))
    s.update(proxy_side(run))
    return s


def proxy_side(run: Run) -> dict:
    """Upstream tries per client request and whatever else the proxy's own logs tell."""
    text = run.proxy_log.read_text(errors="replace") if run.proxy_log and run.proxy_log.exists() else ""
    if run.proxy == "lbd":
        return lbd_side(run, text)
    if run.proxy == "haproxy":
        return haproxy_side(run, text)
    return nginx_side(run)


def lbd_side(run: Run, text: str) -> dict:
    entries, events = [], []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("type") == "access":
            entries.append(entry)
        elif entry.get("msg") in ("backend up", "backend down"):
            events.append((round(entry["ts"] - run.t0_epoch, 2), f"{entry.get('backend')} {entry['msg'][8:]}"))
        elif entry.get("logger") == "lbd.trace":
            msg = entry["msg"]
            if msg == "ejected":
                what = f"{entry['backend']} ejected for {entry['seconds']:g}s ({entry['reason']})"
            elif msg.startswith("breaker"):
                what = f"{entry['backend']} {msg}" + (f" ({entry['reason']})" if msg == "breaker open" else "")
            else:
                what = f"{msg} ({entry['usable']}/{entry['total']} usable)"
            events.append((round(entry["ts"] - run.t0_epoch, 2), what))
    tries = Counter(e["attempts"] for e in entries)
    retried = [e for e in entries if e["attempts"] > 1]
    by_backend = Counter(e["backend"] for e in entries if 200 <= e["status"] < 300)
    notes = [
        f"access log: {len(entries)} entries for {len(run.load['records'])} client requests; tries per "
        f"request {dict(sorted(tries.items()))}; answered (2xx) by {dict(sorted(by_backend.items()))}",
        f"health{', breaker, ejection and panic' if run.lbd_trace else ''} events (s since load start): "
        f"{', '.join(f'{t} {e}' for t, e in events) or 'none'}",
    ]
    # x-lbd-attempts on the answers (retries + 1) against the access log's `attempts`, which
    # counts the distinct backends tried: a backend tried twice counts once there.
    header_tries = sum(int(r[3].split("#")[1]) if "#" in r[3] else 1
                       for r in run.load["records"] if isinstance(r[2], int))
    log_tries = sum(e["attempts"] for e in entries)
    notes.append(f"tries: {log_tries} by the access log's `attempts`, {header_tries} by the "
                 f"`x-lbd-attempts` response headers the client saw")
    if retried:
        durations = [e["duration_ms"] for e in retried]
        slow = sum(1 for d in durations if d >= 900)
        notes.append(f"retried requests: {len(retried)}, their duration p50 {pct(durations, 50):.0f} ms, "
                     f"p99 {pct(durations, 99):.0f} ms; {slow} took >= 900 ms"
                     + (" (the shedding worker's `Retry-After: 1` is waited out before the retry, "
                        "whichever backend the retry goes to)" if slow else ""))
    # An outlier ejection that outlives the backend's return to health.
    ejected_until = {}
    for t, what in events:
        found = re.match(r"(\S+) ejected for ([\d.]+)s", what)
        if found:
            ejected_until[found.group(1)] = (t, t + float(found.group(2)))
        found = re.match(r"(\S+) up$", what)
        if found and found.group(1) in ejected_until and t < ejected_until[found.group(1)][1]:
            name, (since, until) = found.group(1), ejected_until[found.group(1)]
            notes.append(f"{name} was healthy again at {t:.2f}s but stays ejected (since {since:.2f}s) until "
                         f"{until:.1f}s: outside panic routing it gets no traffic meanwhile")
    return {"entries": len(entries), "tries": sum(e["attempts"] for e in entries),
            "retried": len(retried), "notes": notes}


def haproxy_side(run: Run, text: str) -> dict:
    entries, notes, state = [], [], []
    for line in text.splitlines():
        if line.startswith("CHAOS "):
            parts = line.split()
            entries.append({"status": int(parts[1]), "retries": parts[2], "ta": int(parts[3]),
                            "server": parts[5], "tsc": parts[6]})
        elif re.search(r"Server \S+ is (DOWN|UP)", line):
            found = re.search(r"Server \S+/(\S+) is (DOWN|UP)", line)
            state.append(f"{found.group(1)} {found.group(2).lower()}")
    tries = [1 + int(e["retries"].lstrip("+")) for e in entries]
    redispatched = sum(1 for e in entries if e["retries"].startswith("+"))
    tsc = Counter(e["tsc"] for e in entries if e["tsc"] != "----")
    notes.append(f"log: {len(entries)} entries; tries per request {dict(sorted(Counter(tries).items()))}; "
                 f"{redispatched} redispatched; termination states other than ---- {dict(tsc)}")
    if state:
        notes.append(f"server state changes (in order): {', '.join(state)}")
    servers = []
    lines = run.haproxy_stats.splitlines()
    if lines and lines[0].startswith("# "):
        header = lines[0][2:].split(",")
        for row in lines[1:]:
            values = dict(zip(header, row.split(",")))
            if values.get("pxname") == "workers" and values.get("svname") not in ("BACKEND", "FRONTEND"):
                servers.append(f"{values['svname']}: stot {values.get('stot')}, 5xx {values.get('hrsp_5xx')}, "
                               f"eresp {values.get('eresp')}, econ {values.get('econ')}, "
                               f"wretr {values.get('wretr')}, wredis {values.get('wredis')}, "
                               f"chkdown {values.get('chkdown')}")
    if servers:
        notes.append("stats: " + "; ".join(servers))
    return {"entries": len(entries), "tries": sum(tries),
            "retried": sum(1 for t in tries if t > 1), "notes": notes}


def nginx_side(run: Run) -> dict:
    log = run.proxy_dir / "nginx.access.log" if run.proxy_dir else None
    entries = []
    if log and log.exists():
        for line in log.read_text(errors="replace").splitlines():
            found = re.match(r'(\S+) (\d+) (\S+) "([^"]*)" "([^"]*)"', line)
            if found:
                addrs = [a.strip() for a in re.split(r"[,:] ", found.group(4)) if a.strip()]
                entries.append({"status": int(found.group(2)),
                                "tries": sum(1 for a in addrs if re.match(r"\d+\.\d+\.\d+\.\d+:\d+$", a)),
                                "no_live": any(not re.match(r"\d+\.\d+\.\d+\.\d+:\d+$", a) for a in addrs),
                                "ustatus": found.group(5)})
    tries = Counter(e["tries"] for e in entries)
    notes = [f"access log: {len(entries)} entries; tries per request {dict(sorted(tries.items()))}; "
             f"{sum(1 for e in entries if e['no_live'])} hit 'no live upstreams'"]
    failed_final = Counter(e["ustatus"].split(", ")[-1] for e in entries if not 200 <= e["status"] < 300)
    if failed_final:
        notes.append(f"client errors by last upstream status: {dict(failed_final)}")
    error_log = run.proxy_dir / "nginx.error.log" if run.proxy_dir else None
    if error_log and error_log.exists():
        kinds = Counter()
        for line in error_log.read_text(errors="replace").splitlines():
            message = re.sub(r"^\S+ \S+ \[\w+\] \d+#\d+: \*?\d* ?", "", line).split(",")[0]
            kinds[re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", "ADDR", message)[:80]] += 1
        if kinds:
            notes.append("error log: " + "; ".join(f"{k} x{v}" for k, v in kinds.most_common(6)))
    return {"entries": len(entries), "tries": sum(e["tries"] for e in entries),
            "retried": sum(1 for e in entries if e["tries"] > 1), "notes": notes}


# -- report ------------------------------------------------------------------------------------

def fmt_breakdown(breakdown: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(breakdown.items())) or "-"


def table(runs: list[Run]) -> list[str]:
    lines = ["| proxy | requests | req/s | client errors | error % | breakdown | p50 ms | p99 ms "
             "| p99.9 ms | max ms | upstream tries / request | retried requests | other procs CPU |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        if run.failed:
            lines.append(f"| {run.proxy} | failed: {run.failed.splitlines()[0]} | | | | | | | | | | | |")
            continue
        s = run.stats
        tries = f"{s['tries'] / s['entries']:.3f}" if s.get("entries") else "n/a"
        lines.append(f"| {run.proxy} | {s['requests']:,} | {s['rps']:,.0f} | {s['errors']:,} "
                     f"| {s['error_pct']:.2f} | {fmt_breakdown(s['breakdown'])} | {s['p50']:.1f} "
                     f"| {s['p99']:.1f} | {s['p999']:.1f} | {s['max']:.0f} | {tries} | {s.get('retried', 0):,} "
                     f"| {run.other_cpu:.0f}% |")
    return lines


def phase_table(runs: list[Run]) -> list[str]:
    ok = [r for r in runs if not r.failed]
    if not ok:
        return []
    labels = [p[0] for p in ok[0].stats["phases"]]
    lines = ["| proxy | " + " | ".join(f"{label}: errors / p99 ms" for label in labels) + " |",
             "|---|" + "---:|" * len(labels)]
    for run in ok:
        cells = [f"{errors} of {n} / {p99:.0f}" for _, n, errors, p99 in run.stats["phases"]]
        lines.append(f"| {run.proxy} | " + " | ".join(cells) + " |")
    return lines


def details(run: Run) -> list[str]:
    if run.failed:
        return [f"- **{run.proxy}** failed:", "", "```", run.failed, "```"]
    s = run.stats
    out = [f"- **{run.proxy}**: chaos events (s): {', '.join(f'{t:.2f} {e}' for t, e in run.events)}",
           f"  - client errors by second of the run: {s['error_seconds'] or 'none'}",
           f"  - error answers by cause: {fmt_breakdown(s['reasons'])}",
           f"  - p99 of the 2xx answers alone: {s['p99_ok']:.1f} ms; other processes (not this "
           f"benchmark's) used {run.other_cpu:.0f}% of a CPU meanwhile",
           "  - 2xx answered by, per phase: " + "; ".join(f"{label}: {share}" for label, share in s["served"])]
    out += [f"  - {note}" for note in s.get("notes", [])]
    return out


def verdict(runs: list[Run]) -> str:
    by = {r.proxy: r.stats for r in runs if not r.failed}
    if "lbd" not in by or len(by) < 2:
        return "verdict: not enough proxies ran to compare"
    others = {k: v for k, v in by.items() if k != "lbd"}
    fewer = all(by["lbd"]["errors"] < v["errors"] for v in others.values())
    tie = not fewer and all(by["lbd"]["errors"] <= v["errors"] for v in others.values())
    p99 = all(by["lbd"]["p99"] <= v["p99"] for v in others.values())
    worst = max(v["p99"] for v in others.values())
    return (f"verdict (issue 4 target: fewer client errors than both, p99 no worse): "
            f"fewer errors: {'yes' if fewer else 'NO, a tie' if tie else 'NO'} (lbd {by['lbd']['errors']} vs "
            + ", ".join(f"{k} {v['errors']}" for k, v in others.items())
            + f"); p99 no worse: {'yes' if p99 else 'NO'} (lbd {by['lbd']['p99']:.0f} ms vs "
            + ", ".join(f"{k} {v['p99']:.0f} ms" for k, v in others.items())
            + f"{'' if p99 or by['lbd']['p99'] > worst else '; better than one of them'})")


def summary(rounds: list[list[Run]]) -> list[str]:
    names = [r.proxy for r in rounds[0]]
    lines = ["| proxy | client errors per round | error % per round | p99 ms per round "
             "| median errors | median p99 ms | median req/s |",
             "|---|---|---|---|---:|---:|---:|"]
    for name in names:
        runs = [r for round_ in rounds for r in round_ if r.proxy == name and not r.failed]
        if not runs:
            continue
        errors = " / ".join(str(r.stats["errors"]) for r in runs)
        error_pct = " / ".join("%.2f" % r.stats["error_pct"] for r in runs)
        p99 = " / ".join("%.0f" % r.stats["p99"] for r in runs)
        lines.append(f"| {name} | {errors} | {error_pct} | {p99} "
                     f"| {statistics.median(r.stats['errors'] for r in runs):g} "
                     f"| {statistics.median(r.stats['p99'] for r in runs):.0f} "
                     f"| {statistics.median(r.stats['rps'] for r in runs):,.0f} |")
    return lines


def version(argv: list[str], pattern: str) -> str:
    with contextlib.suppress(OSError):
        done = subprocess.run(argv, capture_output=True, text=True)
        found = re.search(pattern, done.stdout + done.stderr)
        if found:
            return found.group(1)
    return "?"


def machine(args: argparse.Namespace) -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    code = ("import platform, importlib.metadata as m\n"
            "def v(n):\n"
            "    try: return m.version(n)\n"
            "    except Exception: return '-'\n"
            "print(platform.python_version(), 'uvloop', v('uvloop'), 'onnxruntime', v('onnxruntime'),"
            " 'aiohttp', v('aiohttp'))")
    py = subprocess.run([args.python, "-c", code], capture_output=True, text=True).stdout.strip()
    haproxy = version(["haproxy", "-v"], r"version (\S+)")
    nginx = version(["nginx", "-v"], r"nginx/(\S+)")
    rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                         text=True).stdout.strip()
    changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "lbd", "backends/lbd_worker"],
                             capture_output=True, text=True).stdout.splitlines()
    if changed:
        rev += f", {len(changed)} uncommitted file(s) under lbd/ and backends/lbd_worker/"
    code_run = {"tree": "a copy of lbd/ and backends/lbd_worker/ from the working tree, taken when the run "
                        "began (`--code tree`)",
                "head": "lbd/ and backends/lbd_worker/ as committed at HEAD (`--code head`)",
                "live": "the working tree as it was at each start (`--code live`)"}[args.code]
    return [
        f"- machine: `nproc` {os.cpu_count()}, {model.group(1) if model else platform.processor()}, "
        f"kernel {platform.release()}, 1-min load average before the run {os.getloadavg()[0]:.2f}",
        f"- versions: lbd {rev or '?'} (git), HAProxy {haproxy}, nginx {nginx}, Python {py} ({args.python})",
        f"- code run: {code_run}",
    ]


def report(rounds: list[list[Run]], started: datetime.datetime, args: argparse.Namespace,
           machine_lines: list[str], argv: list[str]) -> str:
    pin = (f"each proxy on CPU {args.proxy_cpus}; the workers and the load client on CPU {args.rest_cpus}"
           if args.proxy_cpus else "none (the scheduler places everything)")
    parts = [f"# Chaos benchmark, {started:%Y-%m-%d %H:%M:%S %Z}".rstrip(), "",
             f"- command: `{' '.join(['bench/chaos/run.sh', *argv])}`",
             *machine_lines,
             "- workers: 3 × standalone `lbd-worker` (classifier, `intra_op_threads: 1`), started fresh for "
             "each proxy; w2 with `dynamic_batching: false, max_queue_size: 1` (sheds with 503 + Retry-After: 1)",
             f"- chaos (s after the load starts): {args.kill_at:g} SIGKILL w0, {args.kill_at + args.restart_after:g} "
             f"restart w0 (same port), {args.freeze_at:g} SIGSTOP w1, {args.thaw_at:g} SIGCONT w1",
             f"- load: bench/chaos/load.py, {args.concurrency} keep-alive connections, one POST at a time each, "
             f"{args.duration:g}s, {len(BODY)}-byte KServe JSON body to "
             f"/v2/models/classifier/infer, client timeout {args.client_timeout:g}s; proxies started "
             f"{args.settle:g}s before the load",
             f"- pinning: {pin}",
             "- client errors = non-2xx + connect/reset/protocol errors + client timeouts; latency percentiles "
             "over every request (errors included); upstream tries from each proxy's own log (lbd access "
             "log `attempts`, HAProxy `%rc` retries + 1, nginx `$upstream_addr` entries)",
             "- configs: bench/chaos/lbd.yaml.tmpl, haproxy.cfg.tmpl, nginx.conf.tmpl", ""]
    for index, runs in enumerate(rounds, 1):
        parts += [f"## Round {index}", "", *table(runs), "", "Per chaos phase (by request start time):", "",
                  *phase_table(runs), "", verdict(runs), ""]
        for run in runs:
            parts += details(run)
        parts.append("")
    if len(rounds) > 1:
        parts += ["## Over all rounds", "", *summary(rounds), ""]
    return "\n".join(parts)


# -- main --------------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(PROXIES), help="comma-separated subset of lbd,haproxy,nginx")
    parser.add_argument("--runs", type=int, default=1, help="rounds over all proxies (1)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load (20)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--client-timeout", type=float, default=5.0, help="per request, seconds (5)")
    parser.add_argument("--kill-at", type=float, default=4.0)
    parser.add_argument("--restart-after", type=float, default=1.0)
    parser.add_argument("--freeze-at", type=float, default=9.0)
    parser.add_argument("--thaw-at", type=float, default=13.0)
    parser.add_argument("--settle", type=float, default=1.0, help="seconds between proxy start and load (1)")
    parser.add_argument("--proxy-cpus", default="0", help="taskset CPU list for the proxy ('' = no pinning)")
    parser.add_argument("--rest-cpus", default="1", help="CPU list for workers and load client")
    parser.add_argument("--no-pin", action="store_true", help="pin nothing")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--no-lbd-trace", dest="lbd_trace", action="store_false",
                        help="run plain `lbd serve` instead of lbd_trace.py (which logs breaker, "
                             "ejection and panic events)")
    parser.add_argument("--quiet-wait", type=float, default=20.0,
                        help="before each proxy, wait up to this many seconds for other processes "
                             "to use < 15%% of a CPU (20)")
    parser.add_argument("--code", choices=("tree", "head", "live"), default="tree",
                        help="lbd and lbd-worker to run: tree = a copy of the working tree taken when the "
                             "run begins (default), head = the last commit, live = the working tree as "
                             "it is at each start")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (configs, logs, records)")
    args = parser.parse_args(argv)
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    if set(args.only) - set(PROXIES):
        parser.error(f"--only: unknown {sorted(set(args.only) - set(PROXIES))}")
    if args.no_pin or not args.proxy_cpus:
        args.proxy_cpus = args.rest_cpus = None
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    for tool in ("haproxy", "nginx") + (("taskset",) if args.proxy_cpus else ()):
        if not shutil.which(tool):
            sys.exit(f"FATAL: {tool} not found (bench/chaos/run.sh installs it)")
    machine_lines = machine(args)
    started = datetime.datetime.now().astimezone()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.rest_cpus:
        os.sched_setaffinity(0, {int(c) for c in args.rest_cpus.split(",")})
    run_dir = Path(tempfile.mkdtemp(prefix="lbd-chaos-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.code != "live":
        snapshot(run_dir, args.code)
    workers = Workers(run_dir, args)
    rounds: list[list[Run]] = []
    try:
        for index in range(1, args.runs + 1):
            runs = []
            for name in [p for p in PROXIES if p in args.only]:
                quiet = wait_quiet(args.quiet_wait) if args.quiet_wait > 0 else 0.0
                print(f"[round {index}/{args.runs}] {name} (machine busy {quiet:.0f}% of a CPU before) ...",
                      file=sys.stderr, flush=True)
                run = chaos_run(name, index, run_dir, workers, args)
                if not run.failed:
                    run.stats = analyse(run, args)
                    s = run.stats
                    print(f"  {s['requests']} requests, {s['errors']} client errors "
                          f"({fmt_breakdown(s['breakdown'])}), p50 {s['p50']:.1f} ms, p99 {s['p99']:.1f} ms",
                          file=sys.stderr, flush=True)
                else:
                    print(f"  FAILED: {run.failed}", file=sys.stderr, flush=True)
                runs.append(run)
            rounds.append(runs)
    finally:
        workers.stop_all()
        if args.keep:
            print(f"run directory kept: {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    text = report(rounds, started, args, machine_lines, argv)
    path = args.out / f"chaos-{started:%Y%m%d-%H%M%S}.md"
    path.write_text(text + "\n")
    print(text)
    print(f"wrote {path}", file=sys.stderr)
    return 1 if any(r.failed for runs in rounds for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
