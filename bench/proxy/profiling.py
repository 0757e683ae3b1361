"""Profile mode: py-spy (flamegraph, collapsed stacks, top functions) and system calls per
request (strace -c) of one proxy under the benchmark's load."""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from load import BODY, probe, wrk
from servers import HERE, Process, Skip, Upstreams, free_port, start_proxy

STRACE_SECONDS = 3


def profile(run_dir: Path, upstreams: Upstreams, args: argparse.Namespace, out: Path,
            stamp: str) -> int:
    """Load one proxy with wrk while py-spy samples it (flamegraph SVG, then collapsed stacks
    and a top-functions summary), then count its system calls per request with strace -c."""
    target, seconds = args.profile, args.duration
    port = free_port()
    try:
        process = start_proxy(target, run_dir, port, upstreams, args.proxy_cpu, args.python)
    except Skip as error:
        print(f"SKIP {target}: {error}", file=sys.stderr)
        return 1
    base = out / f"profile-{target}-{stamp}"
    svg, collapsed = Path(f"{base}.svg"), Path(f"{base}.collapsed.txt")
    load_seconds = 2 * seconds + STRACE_SECONDS + 8
    load_argv = ["taskset", "-c", str(args.load_cpu), "wrk", f"-t{args.threads}",
                 f"-c{args.connections}", f"-d{load_seconds}s", "--latency", "-s",
                 str(HERE / "post.lua"), f"http://127.0.0.1:{port}/"]
    python_target = target in ("lbd", "lbd-python", "bare-python")     # py-spy reads Python stacks only
    load = None
    try:
        problem = probe(port, BODY.encode())
        if problem:
            print(f"WARNING {target}: {problem}", file=sys.stderr)
        wrk(port, args.warmup, args)
        load = subprocess.Popen(load_argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        time.sleep(1)
        common = ["taskset", "-c", str(args.load_cpu), "py-spy", "record",
                  "--pid", str(process.popen.pid), "--subprocesses", "--rate", str(args.rate),
                  "--duration", str(seconds), *(["--native"] if args.native else [])]
        if python_target:
            subprocess.run([*common, "--format", "flamegraph", "-o", str(svg)], check=True)
            subprocess.run([*common, "--format", "raw", "-o", str(collapsed)], check=True)
        syscalls = count_syscalls(process, upstreams, args.load_cpu)
        load.send_signal(signal.SIGINT)       # wrk stops early and still prints its summary
        wrk_out = load.communicate()[0]
    finally:
        if load is not None and load.poll() is None:
            load.kill()
        process.stop()
    summary = "(py-spy: not a Python process)\n"
    if python_target:
        summary = subprocess.run([sys.executable, str(HERE / "pyspy_top.py"), str(collapsed),
                                  "--rate", str(args.rate), "--seconds", str(seconds)],
                                 capture_output=True, text=True, check=True).stdout
    top = Path(f"{base}.top.txt")
    top.write_text(f"# Profile of {target}\n\nload: `{' '.join(load_argv[3:-1])} URL` "
                   f"(proxy on CPU {args.proxy_cpu}; py-spy, strace and wrk on CPU "
                   f"{args.load_cpu}); py-spy at {args.rate}/s for {seconds}s, twice "
                   f"(flamegraph, then raw stacks){', --native' if args.native else ''}\n\n"
                   f"{summary}\n{syscalls}\nwrk for the whole profile (slowed by the "
                   f"samplers):\n{wrk_out}")
    print(top.read_text())
    if python_target:
        print(f"wrote {svg}\nwrote {collapsed} (speedscope.app opens it too)")
    print(f"wrote {top}")
    return 0


def count_syscalls(process: Process, upstreams: Upstreams, cpu: int) -> str:
    """System calls per proxied request, from `strace -c -f` over a few seconds of load.

    strace slows the proxy many times over, but the calls each request costs stay the same;
    on this path they are most of the time (write/read/epoll), so fewer calls is faster.
    """
    if not shutil.which("strace"):
        return "## system calls\n\nstrace not installed (apt-get install strace)\n"
    pids = process.pids()                           # nginx: the master and its worker
    strace = subprocess.Popen(["taskset", "-c", str(cpu), "strace", "-c", "-f",
                               *[arg for pid in pids for arg in ("-p", str(pid))]],
                              stderr=subprocess.PIPE, text=True)
    attached = 0
    while attached < len(pids):            # count requests only while every pid is traced
        line = strace.stderr.readline()
        if not line:
            return "## system calls\n\nstrace failed (ptrace not permitted?)\n"
        attached += " attached" in line
    before = sum(upstreams.counts())
    time.sleep(STRACE_SECONDS)
    requests = max(sum(upstreams.counts()) - before, 1)
    strace.send_signal(signal.SIGINT)
    output = strace.communicate()[1]
    rows = []
    for line in output.splitlines():
        fields = line.split()
        if (len(fields) >= 5 and fields[0][0].isdigit() and fields[-1].isidentifier()
                and fields[-1] != "total"):
            calls = int(fields[3])
            rows.append((calls / requests, fields[-1], calls))
    rows.sort(reverse=True)
    lines = [f"## system calls per request (strace -c -f, {STRACE_SECONDS}s, {requests} "
             f"requests reached the upstreams)", "",
             f"{sum(r[0] for r in rows):6.2f}  total"]
    lines += [f"{per:6.2f}  {name} ({calls})" for per, name, calls in rows if per >= 0.01]
    return "\n".join(lines) + "\n"
