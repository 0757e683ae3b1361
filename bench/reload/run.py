"""Reload benchmark: 100 reloads under a steady load, lbd (SIGHUP) beside nginx (`nginx -s reload`).

Run it through run.sh (which installs nginx and wrk when missing):

    bench/reload/run.sh [--only lbd,nginx] [--rate 3000] [--reloads 100] [--load python|wrk]

Three upstream nginx servers (one worker each, bench/proxy/upstream.nginx.conf.tmpl) serve a
fixed JSON answer. Each proxy in turn starts pinned to --proxy-cpu with a config serving two
of them with round robin; a steady load (client.py: --rate POSTs a second over --connections
keep-alive connections, every status, latency and socket error recorded with its time) runs
on --load-cpu with the upstreams. After --warmup seconds, --reloads reloads follow at even
intervals over --span seconds: each rewrites the config (atomically, by rename) to serve
another set of upstreams (a backend added, removed, or both) with another algorithm, and
reload 50 is invalid (configs.py). lbd gets SIGHUP. nginx gets `nginx -s reload`; when that
refuses (it parses the file first, as `nginx -t` does, and sends nothing), the master gets
SIGHUP itself, to see what nginx does with a bad file. Each reload waits (2 s at most) for the
proxy's log to say it applied or refused the file before the next one is due: signals sent
while one is still pending merge into one, and the bad file could go unread. Then --settle
seconds more of load.

Per proxy the report gives requests, non-2xx, socket errors (by kind, and which reload they
followed), idle keep-alive connections the proxy closed, latency percentiles, open file
descriptors (by kind: client, per-upstream, listening, other) and RSS of the whole process tree
before the first reload, after the settle time (load still running) and at their peak, the
reloads applied and refused (from the proxy's own log) and how long each took to apply, and
whether the last config was in effect at the end (only its upstreams got requests in the last
seconds). Markdown to stdout and bench/out/reload-<date>.md. Exit status 1 when lbd fails the
issue's bar (judge()): any non-2xx or socket error, fds up by more than 8 beyond its pooled
upstream connections, a connection left to a removed upstream, RSS up by more than 20 MiB, not
99 applied and 1 refused, or the last config not alone in effect. nginx is the reference and
is reported, not judged. Standard library only.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "proxy"))

import configs  # noqa: E402
from load import BODY, probe  # noqa: E402
from noise import NOISY_PCT, Interference, wait_quiet  # noqa: E402
from report import machine  # noqa: E402
from servers import (ROOT, Process, Skip, _stub_requests, free_port, lbd_command,  # noqa: E402
                     render)

PROXIES = ("lbd", "nginx")
FD_SLACK = 8               # the "beyond noise": pooled connections differ by a few
RSS_SLACK_KIB = 20 * 1024


# --------------------------------------------------------------------------- processes

def usage(process: Process, ports: tuple[int, list[int]] | None = None) -> dict:
    """Open fds and RSS of the process and its descendants (nginx: master and workers); with
    ``ports`` (the proxy's, the upstreams'), the fds by kind as well (``kinds``)."""
    per, links = [], []
    for pid in process.pids():
        with contextlib.suppress(OSError, ValueError):
            status = Path(f"/proc/{pid}/status").read_text()
            found = re.search(r"^VmRSS:\s+(\d+)", status, re.M)
            if found is None:            # a worker that has exited, not yet reaped
                continue
            rss = int(found.group(1))
            fds = os.listdir(f"/proc/{pid}/fd")
            if ports:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            per.append({"pid": pid, "fds": len(fds), "rss_kib": rss, "cmd": name})
    sample = {"fds": sum(p["fds"] for p in per), "rss_kib": sum(p["rss_kib"] for p in per),
              "processes": len(per), "per": per}
    if ports:
        sample["kinds"] = fd_kinds(links, *ports)
    return sample


def fd_kinds(links: list[str], port: int, upstreams: list[int]) -> dict[str, int]:
    """fds by kind: client connections (to the proxy's port), connections to each upstream
    (u0, u1, ...), listening sockets, other sockets, and everything else (files, pipes, the
    event loop's epoll)."""
    sockets = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                sockets[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16),
                                  state == "0A")
    kinds: collections.Counter[str] = collections.Counter()
    for link in links:
        inode = link[8:-1] if link.startswith("socket:[") else None
        if inode is None:
            kinds["other fds"] += 1
        elif inode not in sockets:
            kinds["other sockets"] += 1
        else:
            local, remote, listening = sockets[inode]
            if listening:
                kinds["listening"] += 1
            elif local == port:
                kinds["clients"] += 1
            elif remote in upstreams:
                kinds[f"u{upstreams.index(remote)}"] += 1
            else:
                kinds["other sockets"] += 1
    return dict(kinds)


class Upstreams:
    """Three identical nginx upstreams with request counters (bench/proxy's template)."""

    def __init__(self, run_dir: Path, cpu: int, count: int = 3) -> None:
        self.ports = [free_port() for _ in range(count)]
        self.processes = []
        self.reads = 0
        for index, port in enumerate(self.ports):
            name = f"upstream{index}"
            conf = render("upstream.nginx.conf.tmpl", run_dir / f"{name}.conf", dir=run_dir,
                          name=name, port=port)
            self.processes.append(Process(name, ["nginx", "-p", str(run_dir), "-c", str(conf)],
                                          cpu, run_dir))
        try:
            for process, port in zip(self.processes, self.ports):
                process.wait_listening(port)
        except Skip as error:
            self.stop()
            sys.exit(f"FATAL: upstream failed: {error}")

    def counts(self) -> list[int]:
        """Requests each upstream answered, less the /__stub reads themselves (nginx counts
        each one, this one included), so that differences are the proxied requests alone."""
        self.reads += 1
        return [_stub_requests(port) + 1 - self.reads for port in self.ports]

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


def write_atomic(path: Path, text: str) -> None:
    """As configuration management and editors do: a new file renamed over the old one."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    os.replace(temporary, path)


class LogTail:
    """New lines of a log file, read from where the last call stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.partial = b""

    def lines(self) -> list[str]:
        with contextlib.suppress(OSError), self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
            self.offset += len(data)
            *complete, self.partial = (self.partial + data).split(b"\n")
            return [line.decode(errors="replace") for line in complete]
        return []


# --------------------------------------------------------------------------- one proxy

class Proxy:
    def __init__(self, name: str, run_dir: Path, upstreams: list[int], args: argparse.Namespace) -> None:
        self.name, self.run_dir, self.upstreams, self.args = name, run_dir, upstreams, args
        self.port, self.admin_port = free_port(), free_port()
        self.conf = run_dir / ("lbd.yaml" if name == "lbd" else "nginx.conf")
        self.signal_tool_refused: list[str] = []      # `nginx -s reload` answers, when not 0

    def config(self, index: int) -> str:
        if self.name == "lbd":
            return configs.lbd_config(index, self.port, self.admin_port, self.upstreams)
        return configs.nginx_config(index, self.run_dir, self.port, self.upstreams)

    def check_argv(self) -> list[str]:
        if self.name == "lbd":
            return [*lbd_command(self.args.python), "check", str(self.conf)]
        return ["nginx", "-t", "-q", "-p", str(self.run_dir), "-c", str(self.conf)]

    def start(self) -> Process:
        write_atomic(self.conf, self.config(-1))
        check = subprocess.run(self.check_argv(), capture_output=True, text=True, cwd=ROOT)
        if check.returncode != 0:
            raise Skip(f"{self.name} config check failed: {(check.stdout + check.stderr).strip()}")
        if self.name == "lbd":
            argv = [*lbd_command(self.args.python), "serve", "--config", str(self.conf)]
        else:
            argv = ["nginx", "-p", str(self.run_dir), "-c", str(self.conf)]
        self.process = Process(self.name, argv, self.args.proxy_cpu, self.run_dir)
        try:
            self.process.wait_listening(self.port)
        except Skip:
            self.process.stop()
            raise
        return self.process

    def log_path(self) -> Path:
        return self.process.log if self.name == "lbd" else self.run_dir / "nginx.error.log"

    def outcome(self, line: str) -> str | None:
        """'applied' or 'refused' when the log line says how a reload ended, else None."""
        if self.name == "lbd":
            if '"msg":"reloaded"' in line:
                return "applied"
            return "refused" if "reload refused" in line else None
        if f" {self.process.popen.pid}#" not in line:      # the master's lines only
            return None
        if "[emerg]" in line:
            return "refused"
        return "applied" if re.search(r"start worker process \d+", line) else None

    def reload_and_wait(self, timeout: float) -> tuple[str, float]:
        """Reload; wait until the proxy's log says it applied or refused the file. Waiting
        keeps every reload its own: two signals sent while the first is still pending merge
        into one (the kernel queues one of each), and the bad file would go unread."""
        tail = LogTail(self.log_path())
        started = time.perf_counter()
        self.reload()
        deadline = started + timeout
        while time.perf_counter() < deadline:
            for line in tail.lines():
                if outcome := self.outcome(line):
                    return outcome, time.perf_counter() - started
            time.sleep(0.002)
        return "no answer", time.perf_counter() - started

    def reload(self) -> None:
        if self.name == "lbd":
            os.kill(self.process.popen.pid, signal.SIGHUP)
            return
        done = subprocess.run(["nginx", "-s", "reload", "-p", str(self.run_dir), "-c", str(self.conf)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            # nginx -s parses the file first and sends nothing when it is invalid; send the
            # signal anyway, as a plain `kill -HUP` (or a config manager) would.
            self.signal_tool_refused.append((done.stderr or done.stdout).strip().splitlines()[-1])
            os.kill(self.process.popen.pid, signal.SIGHUP)

    def reload_outcome(self) -> dict:
        if self.name == "lbd":
            log = self.process.log.read_text(errors="replace")
            refused = [line for line in log.splitlines() if "reload refused" in line]
            return {"applied": log.count('"msg":"reloaded"'), "refused": len(refused),
                    "refused_how": [_lbd_error(line) for line in refused][:2]}
        master = self.process.popen.pid
        log = (self.run_dir / "nginx.error.log").read_text(errors="replace")
        mine = [line for line in log.splitlines() if f" {master}#" in line]
        hups = sum("signal 1 (SIGHUP) received" in line for line in mine)
        emerg = [line.split("[emerg]", 1)[1].split(": ", 1)[1] for line in mine if "[emerg]" in line]
        workers = sum(bool(re.search(r"start worker process \d+", line)) for line in mine)
        return {"applied": hups - len(emerg), "refused": len(emerg), "refused_how": emerg[:2],
                "signal_tool_refused": self.signal_tool_refused, "workers_started": workers}


def _lbd_error(line: str) -> str:
    with contextlib.suppress(ValueError):
        record = json.loads(line[line.index("{"):])
        return "; ".join(record.get("errors") or [record.get("msg", "")])
    return line.strip()[:200]


def bench_proxy(name: str, run_dir: Path, upstreams: Upstreams, args: argparse.Namespace) -> dict:
    proxy = Proxy(name, run_dir, upstreams.ports, args)
    result: dict = {"proxy": name}
    try:
        process = proxy.start()
    except Skip as error:
        result["skipped"] = str(error)
        return result
    try:
        problem = probe(proxy.port, BODY.encode())
        if problem:
            result["probe"] = problem
        result.update(drive(proxy, process, upstreams, args))
        result.update(proxy.reload_outcome())
        if process.popen.poll() is not None:
            result["exited"] = process.popen.returncode
    finally:
        process.stop()
    return result


def drive(proxy: Proxy, process: Process, upstreams: Upstreams, args: argparse.Namespace) -> dict:
    """The load, the reloads, the samples: everything measured for one proxy."""
    total = args.warmup + args.span + args.settle
    load_out = proxy.run_dir / f"{proxy.name}.load.json"
    load = start_load(proxy.port, total, load_out, args)
    try:
        others = Interference()
        others.start()
        time.sleep(args.warmup)
        ports = (proxy.port, upstreams.ports)
        before, counts_start = usage(process, ports), upstreams.counts()
        peak = {"fds": before["fds"], "rss_kib": before["rss_kib"], "processes": before["processes"]}
        reload_at: list[float] = []
        acks: list[tuple[str, float]] = []
        interval = args.span / args.reloads
        started = time.monotonic()
        for index in range(args.reloads):
            write_atomic(proxy.conf, proxy.config(index))
            reload_at.append(time.time())
            outcome, took = proxy.reload_and_wait(max(2.0, interval))
            acks.append((outcome, took))
            now = usage(process)
            for key in peak:
                peak[key] = max(peak[key], now[key])
            time.sleep(max(0.0, started + (index + 1) * interval - time.monotonic()))
        reload_seconds = time.monotonic() - started
        # Settle: old nginx workers finish; the last config alone must get requests after that.
        time.sleep(min(1.0, args.settle / 2))
        counts_settled = upstreams.counts()
        time.sleep(max(0.0, args.settle - min(1.0, args.settle / 2) - 0.5))
        counts_end, after = upstreams.counts(), usage(process, ports)
    except BaseException:
        load.stop()
        raise
    load_result = load()
    other_cpu, other_top = others.finish()
    final_set, _, _ = configs.step(args.reloads - 1 if args.reloads - 1 != configs.INVALID
                                   else args.reloads - 2)
    settled = [e - s for s, e in zip(counts_settled, counts_end)]
    stray = [i for i, n in enumerate(settled) if n and i not in final_set]
    return {"load": load_result, "before": before, "after": after, "peak": peak,
            "reload_at": reload_at, "reload_seconds": reload_seconds, "acks": acks,
            "upstream_split": [e - s for s, e in zip(counts_start, counts_end)],
            "settled_split": settled, "final_set": list(final_set),
            # consistent_hash sends one client's requests to one upstream: any of the set.
            "final_config_ok": not stray and any(settled[i] for i in final_set),
            "other_cpu": other_cpu, "other_top": other_top}


def start_load(port: int, seconds: float, out: Path, args: argparse.Namespace):
    """Start the load now; return a function that waits for it and returns its summary."""
    if args.load == "python":
        popen = subprocess.Popen(
            ["taskset", "-c", str(args.load_cpu), args.python, str(HERE / "client.py"),
             "--port", str(port), "--rate", str(args.rate), "--connections", str(args.connections),
             "--duration", str(seconds), "--out", str(out)], cwd=ROOT)

        def wait() -> dict:
            if popen.wait(seconds + 60) != 0:
                raise Skip(f"the load client exited with status {popen.returncode}")
            return json.loads(out.read_text())
        wait.stop = popen.kill          # type: ignore[attr-defined]
        return wait
    from load import wrk
    box: dict = {}
    wrk_args = argparse.Namespace(load_cpu=args.load_cpu, threads=1, connections=args.connections)
    thread = threading.Thread(target=lambda: box.update(result=wrk(port, int(round(seconds)), wrk_args)))
    thread.start()

    def wait_wrk() -> dict:
        thread.join(seconds + 90)
        stats, _ = box["result"]
        errors = {k: stats[k] for k in ("connect", "read", "write", "timeout") if stats[k]}
        return {"requests": stats["requests"], "statuses": {}, "non2xx": stats["status"],
                "socket_errors": sum(errors.values()), "wrk_errors": errors,
                "p50_ms": stats["p50_us"] / 1000, "p90_ms": stats["p90_us"] / 1000,
                "p99_ms": stats["p99_us"] / 1000, "p999_ms": stats["p999_us"] / 1000,
                "max_ms": stats["max_us"] / 1000, "errors": [], "non2xx_at": [],
                "duration": stats["duration_us"] / 1e6}
    wait_wrk.stop = lambda: None        # type: ignore[attr-defined]  # wrk ends on its own
    return wait_wrk


# --------------------------------------------------------------------------- report

def judge(result: dict) -> list[str]:
    """The issue's bar: zero non-2xx and socket errors, no growth in fds or memory beyond
    noise, every good file applied and the bad one refused, the last config in effect."""
    if "skipped" in result:
        return []
    problems = []
    load = result["load"]
    if load["non2xx"] or load["socket_errors"]:
        problems.append(f"{load['non2xx']} non-2xx, {load['socket_errors']} socket errors")
    before, after = result["before"], result["after"]
    grew = after["fds"] - before["fds"]
    pooled = {k for k in after["kinds"] if re.fullmatch(r"u\d+", k)}
    others_grew = (sum(v for k, v in after["kinds"].items() if k not in pooled)
                   - sum(v for k, v in before["kinds"].items() if k not in pooled))
    # More pooled upstream connections at the end than at the start is the pool following the
    # load, not a leak, while every other kind of fd stays put.
    if grew > FD_SLACK and others_grew > 2:
        problems.append(f"fds +{grew} ({others_grew} not upstream connections)")
    stale = {k: v for k, v in after["kinds"].items()
             if k in pooled and int(k[1:]) not in result["final_set"]}
    if stale:
        problems.append(f"connections to upstreams the last config removed still open: {stale}")
    grew = result["after"]["rss_kib"] - result["before"]["rss_kib"]
    if grew > RSS_SLACK_KIB:
        problems.append(f"RSS +{grew / 1024:.1f} MiB")
    reloads = len(result["reload_at"])
    expected = (reloads - 1, 1) if reloads > configs.INVALID else (reloads, 0)
    if (result["applied"], result["refused"]) != expected:
        problems.append(f"{result['applied']} applied / {result['refused']} refused, "
                        f"not {expected[0]} / {expected[1]}")
    silent = sum(outcome == "no answer" for outcome, _ in result["acks"])
    if silent:
        problems.append(f"{silent} reload(s) neither applied nor refused in the log")
    if not result["final_config_ok"]:
        problems.append(f"last config not in effect: last seconds' split {result['settled_split']}")
    if "exited" in result:
        problems.append(f"exited with status {result['exited']}")
    if "probe" in result:
        problems.append(result["probe"])
    return problems


def attribute(times: list[float], reload_at: list[float]) -> collections.Counter[str]:
    """Which reload each event followed (by index), 'before' the first, 'after' (> 1 s)."""
    counter: collections.Counter[str] = collections.Counter()
    for moment in times:
        previous = [i for i, at in enumerate(reload_at) if at <= moment]
        if not previous:
            counter["before the reloads"] += 1
        elif moment - reload_at[previous[-1]] > 1.0 and previous[-1] == len(reload_at) - 1:
            counter["after the last"] += 1
        else:
            counter[f"#{previous[-1]}"] += 1
    return counter


def _role(cmd: str) -> str:
    for role in ("master", "worker"):
        if f"{role} process" in cmd:
            return role
    return cmd.rsplit("/", 1)[-1]


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def table(results: list[dict]) -> str:
    lines = ["| proxy | requests | req/s | non-2xx | socket errors | p50 ms | p99 ms | p99.9 ms "
             "| max ms | open fds before → after (peak) | RSS MiB before → after (peak) "
             "| processes before → after (peak) | reloads applied / refused | last config in effect | check |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['proxy']} | skipped | | | | | | | | | | | | | {r['skipped'].splitlines()[0]} |")
            continue
        load, before, after, peak = r["load"], r["before"], r["after"], r["peak"]
        problems = r.get("problems", [])
        check = ("FAIL: " + "; ".join(problems)) if problems else "ok"
        if r["proxy"] != "lbd" and problems:
            check = "(reference) " + "; ".join(problems)
        if r["other_cpu"] >= NOISY_PCT:
            check += f" (noisy: {r['other_top']})"
        lines.append(
            f"| {r['proxy']} | {load['requests']:,} | {load['requests'] / load['duration']:,.0f} "
            f"| {load['non2xx']} | {load['socket_errors']} | {load['p50_ms']:.2f} | {load['p99_ms']:.2f} "
            f"| {load['p999_ms']:.2f} | {load['max_ms']:.1f} "
            f"| {before['fds']} → {after['fds']} ({peak['fds']}) "
            f"| {_mib(before['rss_kib'])} → {_mib(after['rss_kib'])} ({_mib(peak['rss_kib'])}) "
            f"| {before['processes']} → {after['processes']} ({peak['processes']}) "
            f"| {r['applied']} / {r['refused']} | {'yes' if r['final_config_ok'] else 'NO'} | {check} |")
    return "\n".join(lines)


def details(r: dict) -> list[str]:
    if "skipped" in r:
        return []
    load = r["load"]
    out = [f"### {r['proxy']}", ""]
    statuses = ", ".join(f"{k}: {v:,}" for k, v in load.get("statuses", {}).items())
    if statuses:
        out.append(f"- statuses: {statuses}")
    kinds = collections.Counter(load.get("wrk_errors") or load.get("error_kinds") or {})
    if kinds:
        out.append("- socket errors by kind (where: on a connection just opened or one reused "
                   "from keep-alive, or after the response head): "
                   + ", ".join(f"{k} {v}" for k, v in kinds.most_common()))
    events = [t for t, _ in load["errors"]] + [t for t, _ in load["non2xx_at"]]
    if events:
        after = attribute(events, r["reload_at"])
        reloads = sum(1 for key in after if key.startswith("#"))
        shown = ", ".join(f"{k} ({v})" for k, v in after.most_common(8))
        out.append(f"- failures came after {reloads} of the {len(r['reload_at'])} reloads "
                   f"(each counted to the last reload before it); most: {shown}")
    if "idle_closed" in load:
        out.append(f"- idle keep-alive connections the proxy closed (seen closed before the next "
                   f"request; reopened, not errors): {load['idle_closed']:,}; connections opened "
                   f"in all: {load['connects']:,} for {load['connections']} clients")
    out.append(f"- reloads: {len(r['reload_at'])} in {r['reload_seconds']:.1f} s; applied "
               f"{r['applied']}, refused {r['refused']}"
               + (f": `{r['refused_how'][0]}`" if r["refused_how"] else ""))
    took = sorted(1000 * seconds for outcome, seconds in r["acks"] if outcome == "applied")
    silent = sum(outcome == "no answer" for outcome, _ in r["acks"])
    if took:
        how = "SIGHUP" if r["proxy"] == "lbd" else "`nginx -s reload` (which parses the file too)"
        out.append(f"- from {how} to the log line saying the file was applied: median "
                   f"{took[len(took) // 2]:.0f} ms, max {took[-1]:.0f} ms"
                   + (f"; {silent} reload(s) with no answer in the log" if silent else ""))
    if r["proxy"] == "nginx":
        refused = r.get("signal_tool_refused", [])
        out.append(f"- `nginx -s reload` itself refused {len(refused)} time(s)"
                   + (f" (`{refused[0]}`) and sent nothing; the master was sent SIGHUP directly"
                      if refused else ""))
        out.append(f"- worker processes started by the master: {r['workers_started']} (one per "
                   "applied reload plus the first): each reload starts new workers with the new "
                   "config and tells the old ones to finish their requests and exit; an old "
                   "worker closes its idle keep-alive client connections")
        for label, sample in (("before", r["before"]), ("after", r["after"])):
            parts = [f"{_role(p['cmd'])} pid {p['pid']}: {p['fds']} fds, "
                     f"{_mib(p['rss_kib'])} MiB" for p in sample["per"]]
            out.append(f"- {label}: " + "; ".join(parts))
    for label, sample in (("before", r["before"]), ("after", r["after"])):
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(sample["kinds"].items()))
        out.append(f"- open fds {label} by kind: {kinds}")
    out.append(f"- upstream requests during the run: {r['upstream_split']}; in the last seconds "
               f"{r['settled_split']} (last config serves upstreams {r['final_set']})")
    out.append(f"- other processes used {r['other_cpu']:.0f}% of a CPU meanwhile"
               + (f" ({r['other_top']})" if r["other_top"] else ""))
    out.append("")
    return out


def report(results: list[dict], started: datetime.datetime, args: argparse.Namespace,
           machine_lines: list[str]) -> str:
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    lbd_version = subprocess.run([*lbd_command(args.python), "version"], capture_output=True,
                                 text=True, cwd=ROOT).stdout.strip()
    if args.load == "python":
        load_line = (f"bench/reload/client.py, {args.rate:g} POST/s paced over {args.connections} "
                     f"keep-alive connections ({len(BODY)}-byte JSON body), every status and "
                     "socket error recorded with its time; no request retried")
    else:
        load_line = (f"wrk -t1 -c{args.connections} --latency -s bench/proxy/post.lua "
                     "(as fast as it goes)")
    span = args.warmup + args.span + args.settle
    parts = [f"# Reload benchmark, {started:%Y-%m-%d %H:%M:%S %Z}", "",
             f"- command: `{' '.join(['bench/reload/run.sh', *sys.argv[1:]])}`",
             *machine_lines,
             f"- lbd: {lbd_version} at commit {commit}",
             f"- pinning: the proxy on CPU {args.proxy_cpu} alone (nginx: master and 1 worker); "
             f"the load and 3 upstream nginx (1 worker each) on CPU {args.load_cpu}",
             f"- load: {load_line}; {span:g} s per proxy: {args.warmup:g} s before the first "
             f"reload, {args.reloads} reloads over {args.span:g} s, {args.settle:g} s after",
             f"- reloads: config rewritten by rename; upstream sets cycle {configs.SETS}, "
             f"algorithms cycle {configs.ALGORITHMS} (nginx: round robin, least_conn, random, "
             "random two least_conn, weight=2, hash $remote_addr consistent); reload "
             f"{configs.INVALID} is invalid (lbd: algorithm `round-robbin`; nginx: directive "
             "`least_conns`). lbd: SIGHUP; nginx: `nginx -s reload`, then SIGHUP to the master "
             "when that refuses",
             "- fds and RSS: summed over the proxy's process tree, before the first reload and "
             "at the end of the settle time (load still running); peak sampled after each reload; "
             "fds by kind: client connections, connections to each upstream (u0-u2), listening "
             "sockets, other",
             f"- check (lbd; nginx is the reference): 0 non-2xx and 0 socket errors; fds within "
             f"+{FD_SLACK} (or only pooled upstream connections grew, other fds within +2); no "
             "connection left to an upstream the last config removed; RSS within "
             f"+{RSS_SLACK_KIB // 1024} MiB; {args.reloads - 1} applied / 1 refused; the last "
             "config alone in effect", "",
             table(results), ""]
    for r in results:
        parts += details(r)
    return "\n".join(parts)


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(PROXIES), help="lbd,nginx (default: both)")
    parser.add_argument("--reloads", type=int, default=100)
    parser.add_argument("--span", type=float, default=18.0, help="seconds the reloads take (18)")
    parser.add_argument("--warmup", type=float, default=2.0, help="load before the first reload (2)")
    parser.add_argument("--settle", type=float, default=3.0, help="load after the last reload (3)")
    parser.add_argument("--load", choices=("python", "wrk"), default="python",
                        help="python: client.py, paced, every status recorded (default); "
                             "wrk: as fast as it goes, counts only")
    parser.add_argument("--rate", type=float, default=3000, help="python load: requests/s (3000)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--proxy-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--quiet-wait", type=float, default=20,
                        help="before each proxy, wait up to this many seconds for other "
                             "processes to use < 5%% of a CPU (20; 0: no wait)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for lbd and the load client (default: this one)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (configs, logs)")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    if set(args.only) - set(PROXIES):
        parser.error(f"--only: known: {', '.join(PROXIES)}")
    if args.reloads < 1 or args.span <= 0:
        parser.error("--reloads >= 1 and --span > 0")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    machine_lines = machine(args.python, os.getloadavg()[0])
    for tool in ("taskset", "nginx") + (("wrk",) if args.load == "wrk" else ()):
        if not shutil.which(tool):
            sys.exit(f"FATAL: {tool} not found; run bench/reload/run.sh, which installs it")
    started = datetime.datetime.now().astimezone()
    args.out.mkdir(parents=True, exist_ok=True)
    os.sched_setaffinity(0, {args.load_cpu})          # the harness off the proxy's CPU
    run_dir = Path(tempfile.mkdtemp(prefix="lbd-reload-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    upstreams = Upstreams(run_dir, args.load_cpu)
    results = []
    try:
        for name in [p for p in PROXIES if p in args.only]:
            print(f"{name}: {args.reloads} reloads under load ...", file=sys.stderr, flush=True)
            if args.quiet_wait:
                wait_quiet(args.quiet_wait)
            result = bench_proxy(name, run_dir, upstreams, args)
            result["problems"] = judge(result)
            results.append(result)
            print("  " + table([result]).splitlines()[-1], file=sys.stderr, flush=True)
    finally:
        upstreams.stop()
        if args.keep:
            print(f"run directory kept: {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    text = report(results, started, args, machine_lines)
    path = args.out / f"reload-{started:%Y%m%d-%H%M%S}.md"
    path.write_text(text)
    print(text)
    print(f"wrote {path}", file=sys.stderr)
    failed = [r for r in results if r["proxy"] == "lbd" and (r["problems"] or "skipped" in r)]
    for r in failed:
        print(f"FAIL lbd: {'; '.join(r['problems']) or r.get('skipped')}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
