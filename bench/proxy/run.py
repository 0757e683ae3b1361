"""Proxy benchmark: nginx, HAProxy, a bare Python proxy and lbd over the same two upstreams.

Run it through run.sh (which installs nginx, HAProxy and wrk when missing):

    bench/proxy/run.sh [--only nginx,haproxy] [--duration 15] [--runs 1] [--profile lbd]

Each proxy in turn is started pinned to --proxy-cpu, probed, warmed up, then loaded by wrk
(pinned with the upstreams to --load-cpu) with a 99-byte JSON POST over 64 keep-alive
connections. The upstreams' request counters check that every answered request really went
through to them and that round robin split them evenly. The markdown report goes to stdout and
bench/out/proxy-<date>.md; the exit status is 1 when a proxy answered more than --max-error-pct
of its requests with errors or did not reach the upstreams, so a proxy failing fast cannot look
good. Only the standard library is used here.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from load import BODY, probe, wrk
from noise import (NOISY_PCT, TICKS, Interference, busy_percent, cpu_times, processes,
                   tree_ticks, wait_quiet)
from profiling import profile
from report import Result, machine, report
from servers import ROOT, Process, Skip, Upstreams, free_port, start_proxy

PROXIES = ("nginx", "haproxy", "floor", "bare-python", "cython-lane", "lbd", "lbd-python")


def bench_proxy(name: str, run_dir: Path, upstreams: Upstreams, args: argparse.Namespace,
                raw: list[str]) -> Result:
    result = Result(name)
    port = free_port()
    try:
        process = start_proxy(name, run_dir, port, upstreams, args.proxy_cpu, args.python)
    except Skip as error:
        result.skipped = str(error)
        return result
    try:
        problem = probe(port, BODY.encode())
        wrk(port, args.warmup, args)
        quiet = wait_quiet(args.quiet_wait)
        attempts = [measure(name, process, port, upstreams, args, raw, 1)]
        # Measure again after a burst from others, but not when the machine is busy for good.
        while (quiet and attempts[-1].other_cpu >= NOISY_PCT and not attempts[-1].problems
               and len(attempts) <= args.noisy_retries):
            print(f"  noisy ({attempts[-1].other_top}); measuring again", file=sys.stderr)
            quiet = wait_quiet(args.quiet_wait)
            attempts.append(measure(name, process, port, upstreams, args, raw,
                                    len(attempts) + 1))
        result = min(attempts, key=lambda attempt: attempt.other_cpu)
        if problem:
            result.problems.insert(0, problem)
        if process.popen.poll() is not None:
            result.problems.append(f"exited with status {process.popen.returncode} under load")
    except Skip as error:     # started, then wrk could not load it: a failure, not a skip
        result.problems.append(str(error).splitlines()[0])
    finally:
        process.stop()
    return result


def measure(name: str, process: Process, port: int, upstreams: Upstreams,
            args: argparse.Namespace, raw: list[str], attempt: int) -> Result:
    """One measured wrk run against a started, warmed-up proxy."""
    others = Interference()
    others.start()
    before_counts, before_cpu, before_procs = upstreams.counts(), cpu_times(), processes()
    stats, text = wrk(port, args.duration, args)
    after_procs, after_cpu, after_counts = processes(), cpu_times(), upstreams.counts()
    other_cpu, other_top = others.finish()
    raw.append(f"### {name}, attempt {attempt} (other processes {other_cpu:.0f}% of a CPU)"
               f"\n\n```\n{text.strip()}\n```\n")
    result = Result(name)
    fill(result, stats, before_counts, after_counts, args)
    result.cpu_busy = (busy_percent(before_cpu, after_cpu, args.proxy_cpu),
                       busy_percent(before_cpu, after_cpu, args.load_cpu))
    proxy_ticks = (tree_ticks(after_procs, process.popen.pid)
                   - tree_ticks(before_procs, process.popen.pid))
    result.proxy_us_per_request = 1e6 * proxy_ticks / TICKS / max(result.requests, 1)
    result.other_cpu, result.other_top = other_cpu, other_top
    return result


def fill(result: Result, stats: dict, before: tuple[int, int], after: tuple[int, int],
         args: argparse.Namespace) -> None:
    result.requests = stats["requests"]
    result.rps = stats["requests"] / (stats["duration_us"] / 1e6)
    result.p50_ms = stats["p50_us"] / 1000
    result.p99_ms = stats["p99_us"] / 1000
    result.non2xx = stats["status"]
    result.socket_errors = sum(stats[k] for k in ("connect", "read", "write", "timeout"))
    result.upstream_split = (after[0] - before[0], after[1] - before[1])
    limit = args.max_error_pct / 100 * max(result.requests, 1)
    if result.non2xx + result.socket_errors > limit:
        result.problems.append(f"{result.non2xx} non-2xx + {result.socket_errors} socket errors "
                               f"of {result.requests} requests (> {args.max_error_pct}%)")
    forwarded = sum(result.upstream_split)
    # wrk counts only completed responses; up to one request per connection is still in flight
    # when it stops, so the upstreams may have seen a few more, never fewer.
    in_flight = 4 * args.connections
    if not result.requests - result.non2xx <= forwarded <= result.requests + in_flight:
        result.problems.append(f"upstreams saw {forwarded} requests, wrk counted "
                               f"{result.requests}: not every request was proxied")
    if forwarded and min(result.upstream_split) < 0.4 * forwarded:
        result.problems.append(f"round robin is uneven: upstream split {result.upstream_split}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(PROXIES),
                        help=f"comma-separated subset of {','.join(PROXIES)} (default: all)")
    parser.add_argument("--duration", type=int, default=15, help="measured seconds (15)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up seconds (3)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="wrk threads (1: wrk has one CPU, shared with the upstreams)")
    parser.add_argument("--runs", type=int, default=1,
                        help="rounds over all proxies, interleaved; a median table is added")
    parser.add_argument("--proxy-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--max-error-pct", type=float, default=1.0)
    parser.add_argument("--noisy-retries", type=int, default=2,
                        help="measure again when other processes used >= 5%% of a CPU (2)")
    parser.add_argument("--quiet-wait", type=float, default=60,
                        help="before measuring, wait up to this many seconds for other "
                             "processes to use < 5%% of a CPU (60)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for bare-python and lbd (default: this one)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--keep", action="store_true",
                        help="keep the run directory (configs, logs)")
    parser.add_argument("--profile", choices=("lbd", "lbd-python", "bare-python", "nginx", "haproxy"),
                        help="instead of the benchmark: profile this proxy under load "
                             "(py-spy for lbd and bare-python, strace -c for all)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second (250)")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames)")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(args.only) - set(PROXIES)
    if unknown:
        parser.error(f"--only: unknown {sorted(unknown)}; known: {', '.join(PROXIES)}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    machine_lines = machine(args.python, os.getloadavg()[0])    # before pinning ourselves
    needs_py_spy = args.profile in ("lbd", "lbd-python", "bare-python")
    for tool in ("taskset", "wrk", "nginx") + (("py-spy",) if needs_py_spy else ()):
        if not shutil.which(tool):
            sys.exit(f"FATAL: {tool} not found; run bench/proxy/run.sh, which installs it")
    started = datetime.datetime.now().astimezone()
    stamp = f"{started:%Y%m%d-%H%M%S}"
    args.out.mkdir(parents=True, exist_ok=True)
    # Keep the harness itself (and so anything it starts before taskset) off the proxy's CPU.
    os.sched_setaffinity(0, {args.load_cpu})
    run_dir = Path(tempfile.mkdtemp(prefix="lbd-bench-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    upstreams = Upstreams(run_dir, args.load_cpu)
    try:
        if args.profile:
            return profile(run_dir, upstreams, args, args.out, stamp)
        rounds, raw, interrupted = [], [], False
        try:
            for index in range(args.runs):
                results = []
                rounds.append(results)
                for name in [p for p in PROXIES if p in args.only]:
                    print(f"[round {index + 1}/{args.runs}] {name} ...", file=sys.stderr,
                          flush=True)
                    results.append(bench_proxy(name, run_dir, upstreams, args, raw))
                    _progress(results[-1])
        except (KeyboardInterrupt, SystemExit):     # Ctrl-C, SIGTERM: report what we have
            interrupted = True
            rounds = [results for results in rounds if results]
            if not rounds:
                raise
    finally:
        upstreams.stop()
        if args.keep:
            print(f"run directory kept: {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    text = report(rounds, started, args, raw, machine_lines)
    if interrupted:
        text = text.replace("\n\n", "\n\n**Interrupted: partial results.**\n\n", 1)
    path = args.out / f"proxy-{stamp}.md"
    path.write_text(text)
    print(text)
    print(f"wrote {path}", file=sys.stderr)
    failed = [r for results in rounds for r in results if r.problems]
    for r in failed:
        print(f"FAIL {r.proxy}: {'; '.join(r.problems)}", file=sys.stderr)
    return 130 if interrupted else 1 if failed else 0


def _progress(result: Result) -> None:
    if result.skipped:
        print(f"  SKIP {result.proxy}: {result.skipped}", file=sys.stderr)
    else:
        print(f"  {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms"
              f"{'  FAIL: ' + '; '.join(result.problems) if result.problems else ''}",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
