"""The report: one markdown table per round (and medians), with the machine and versions."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

from load import BODY, BODY_CHECK, wrk_command
from noise import NOISY_PCT


@dataclasses.dataclass
class Result:
    proxy: str
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    non2xx: int = 0
    socket_errors: int = 0
    upstream_split: tuple[int, int] = (0, 0)
    cpu_busy: tuple[float, float] = (0.0, 0.0)
    proxy_us_per_request: float = 0.0
    other_cpu: float = 0.0                      # % of one CPU used by processes not ours
    other_top: str = ""
    problems: list[str] = dataclasses.field(default_factory=list)
    skipped: str = ""
    note: str = ""


def table(results: list[Result]) -> str:
    base = next((r for r in results if r.proxy == "nginx" and not r.skipped and r.rps), None)
    lines = ["| proxy | req/s | p50 ms | p99 ms | non-2xx / socket err | req/s vs nginx "
             "| p99 vs nginx | proxy CPU µs/req | CPU busy proxy/load | other procs CPU "
             "| upstream split | check |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.proxy} | skipped | | | | | | | | | | "
                         f"{r.skipped.splitlines()[0]} |")
            continue
        rps_ratio = f"{r.rps / base.rps:.2f}x" if base else "n/a"
        p99_ratio = f"{r.p99_ms / base.p99_ms:.2f}x" if base and base.p99_ms else "n/a"
        check = "FAIL: " + "; ".join(r.problems) if r.problems else "ok"
        if r.other_cpu >= NOISY_PCT:
            check += f" (noisy: {r.other_top})"
        if r.note:
            check += f"; {r.note}"
        lines.append(
            f"| {r.proxy} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {r.non2xx} / {r.socket_errors} | {rps_ratio} | {p99_ratio} "
            f"| {r.proxy_us_per_request:.1f} | {r.cpu_busy[0]:.0f}% / {r.cpu_busy[1]:.0f}% "
            f"| {r.other_cpu:.0f}% | {r.upstream_split[0]:,} / {r.upstream_split[1]:,} "
            f"| {check} |")
    return "\n".join(lines)



def median_table(rounds: list[list[Result]]) -> str:
    """Per proxy, medians over the rounds: over the quiet ones only, where there are any."""
    merged = []
    for name in [r.proxy for r in rounds[0]]:
        runs = [r for round_ in rounds for r in round_ if r.proxy == name and not r.skipped]
        if not runs:
            merged.append(next(r for r in rounds[0] if r.proxy == name))
            continue
        quiet = [r for r in runs if r.other_cpu < NOISY_PCT]
        used = quiet or runs

        def median(value):
            return statistics.median(value(r) for r in used)

        merged.append(Result(
            name, rps=median(lambda r: r.rps), p50_ms=median(lambda r: r.p50_ms),
            p99_ms=median(lambda r: r.p99_ms), requests=sum(r.requests for r in runs),
            non2xx=sum(r.non2xx for r in runs), socket_errors=sum(r.socket_errors for r in runs),
            upstream_split=tuple(sum(r.upstream_split[i] for r in runs) for i in (0, 1)),
            cpu_busy=(median(lambda r: r.cpu_busy[0]), median(lambda r: r.cpu_busy[1])),
            proxy_us_per_request=median(lambda r: r.proxy_us_per_request),
            other_cpu=median(lambda r: r.other_cpu),
            other_top="" if quiet else "; ".join(r.other_top for r in runs if r.other_top),
            problems=[p for r in runs for p in r.problems],
            note=f"median of {len(used)}{' quiet' if quiet else ''} of {len(runs)} rounds"))
    return table(merged)


def _version(argv: list[str], pattern: str) -> str:
    with contextlib.suppress(OSError):
        done = subprocess.run(argv, capture_output=True, text=True)
        match = re.search(pattern, done.stdout + done.stderr)
        if match:
            return match.group(1)
    return "not installed"


def machine(python: str, load_before: float) -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    code = ("import platform, uvloop, httptools; print(platform.python_version(), "
            "'uvloop', uvloop.__version__, 'httptools', httptools.__version__)")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    nginx = _version(["nginx", "-v"], r"nginx/(\S+)")
    haproxy = _version(["haproxy", "-v"], r"version (\S+)")
    wrk_version = _version(["wrk", "-v"], r"wrk (\S+)")
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return [
        f"- machine: `nproc` {nproc}, {model.group(1) if model else platform.processor()}, "
        f"kernel {platform.release()}, 1-min load average before the run {load_before:.2f}",
        f"- versions: nginx {nginx}, HAProxy {haproxy}, wrk {wrk_version}, "
        f"Python {done.stdout.strip() or '(uvloop/httptools missing)'} ({python})",
    ]


def report(rounds: list[list[Result]], started: datetime.datetime, args: argparse.Namespace,
           raw: list[str], machine_lines: list[str]) -> str:
    parts = [f"# Proxy benchmark, {started:%Y-%m-%d %H:%M:%S %Z}".rstrip(), "",
             f"- command: `{' '.join(['bench/proxy/run.sh', *sys.argv[1:]])}`",
             *machine_lines,
             f"- pinning: each proxy on CPU {args.proxy_cpu} alone; wrk and both upstream nginx "
             f"(1 worker each) on CPU {args.load_cpu}",
             f"- load: `{wrk_command(args)}` after a {args.warmup}s warm-up, POST "
             f"{len(BODY)}-byte JSON, Content-Type application/json; upstreams answer "
             f"200 `{BODY_CHECK.decode()}`",
             f"- check: probe answer must be 2xx `{BODY_CHECK.decode()}`, non-2xx + socket errors "
             f"<= {args.max_error_pct}%, upstream counters must match wrk's count, round robin "
             "split within 40/60", ""]
    for index, results in enumerate(rounds, 1):
        if len(rounds) > 1:
            parts += [f"## Round {index}", ""]
        parts += [table(results), ""]
    if len(rounds) > 1:
        parts += ["## Median over rounds", "", median_table(rounds), ""]
    skipped = [r for results in rounds for r in results if r.skipped]
    if skipped:
        parts += ["## Skipped", ""]
        for r in skipped:
            message = r.skipped.replace("\n", "\n    ")
            parts += [f"- {r.proxy}: {message}"]
        parts += [""]
    parts += ["<details><summary>wrk output</summary>", "", *raw, "</details>", ""]
    return "\n".join(parts)
