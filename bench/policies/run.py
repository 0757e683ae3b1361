"""Shadow traffic and the primary's latency: the same open-loop load through lbd with no
shadow, a 10% shadow, a 100% shadow, and a 100% shadow to a pool that hangs.

    python bench/policies/run.py [--rate 300] [--duration 20] [--rounds 3] [--keep]

One `lbd serve` supervises three real workers serving the built-in ``classifier``: w0 answers
every primary request (under four model names, one per mode, each routed to its own pool),
w1 serves the shadow model (``classifier-v2``), and w2 is frozen with SIGSTOP for the whole
run, so copies sent to it wait until their timeout (2 s). The modes run in turn, interleaved
over ``--rounds`` rounds, each for ``--duration`` seconds of bench/policies/openloop.py at
``--rate`` requests a second, after a warm-up. The report (stdout and
bench/out/policies-<date>.md) gives, per mode, the primary's latency percentiles (median over
rounds, and every round's p99 to show the noise) and what the shadow counters recorded.

The machine may be shared. The report shows, for each mode, the CPU other processes used
during its runs (bench/proxy/noise.py), and the spread of the p99 over the rounds: a difference
between modes smaller than that spread is noise. Short runs interleaved over many rounds (the
order reversed every other round) share the noise between the modes. ``--wait-quiet S`` waits
up to S seconds for a quiet second before each run, and ``--retries N`` measures a run again
(up to N times) when others used more than 5% of a CPU meanwhile.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "proxy"))
from noise import NOISY_PCT, Interference, wait_quiet  # noqa: E402
MODES = {  # mode -> (model the load asks for, its pool, the shadow pool or None)
    "no shadow": ("classifier", "primary", None),
    "shadow 10%": ("classifier-s10", "share10", "canary"),
    "shadow 100%": ("classifier-s100", "share100", "canary"),
    "shadow 100%, hung": ("classifier-hung", "hung", "frozen"),
}
CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
admin: {{address: "127.0.0.1:{admin}"}}
log: {{access: false}}
watch: {{enabled: false}}
pools:
  primary:
    match: {{models: [classifier]}}
    backends: [{{worker: w0}}]
  share10:
    match: {{models: [classifier-s10]}}
    shadow: {{pool: canary, model: classifier-v2, share: 0.1}}
    backends: [{{worker: w0}}]
  share100:
    match: {{models: [classifier-s100]}}
    shadow: {{pool: canary, model: classifier-v2, share: 1.0}}
    backends: [{{worker: w0}}]
  hung:
    match: {{models: [classifier-hung]}}
    shadow: {{pool: frozen, model: classifier, share: 1.0, max_inflight: 16, timeout: 2s}}
    backends: [{{worker: w0}}]
  canary:
    backends: [{{worker: w1}}]
  frozen:
    health: {{enabled: false}}
    retry: {{attempts: 1}}
    backends: [{{worker: w2}}]
workers:
  w0:
    listen: "127.0.0.1:{w0}"
    intra_op_threads: 1
    models:
      classifier: {{}}
      classifier-s10: {{source: classifier}}
      classifier-s100: {{source: classifier}}
      classifier-hung: {{source: classifier}}
  w1: {{listen: "127.0.0.1:{w1}", intra_op_threads: 1, models: {{classifier-v2: {{source: classifier, version: 2}}}}}}
  w2: {{listen: "127.0.0.1:{w2}", intra_op_threads: 1, models: {{classifier: {{}}}}}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(admin: int) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("lbd_shadow_") and s.name.endswith("_total")}


def shadow_counts(before: dict, after: dict, pool: str) -> dict[str, int]:
    """Per-run deltas of the shadow counters of ``pool``: sent, dropped, answered, match..."""
    counts: dict[str, int] = {}
    for key, value in after.items():
        name, labels = key
        labels = dict(labels)
        if labels.get("pool") != pool:
            continue
        delta = int(value - before.get(key, 0))
        kind = labels.get("result") or labels.get("code")
        label = {"lbd_shadow_requests_total": kind, "lbd_shadow_responses_total": f"answered {kind}",
                 "lbd_shadow_comparisons_total": kind}[name]
        counts[label] = counts.get(label, 0) + delta
    return {k: v for k, v in counts.items() if v}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


def measure(port: int, admin: int, model: str, pool: str, rate: float, duration: float, out: Path,
            retries: int, quiet: float) -> tuple[dict, dict[str, int]]:
    """One load run and its shadow counters, taken again while others used the CPUs
    meanwhile (see the module doc)."""
    for attempt in range(retries + 1):
        time.sleep(2.5)  # copies of the last run finish or time out (2 s)
        if quiet:
            wait_quiet(quiet)
        before = scrape(admin)
        others = Interference()
        others.start()
        result = load(port, model, rate, duration, out)
        result["others"], result["top"] = others.finish()
        time.sleep(2.5)  # this run's copies finish or time out
        counts = shadow_counts(before, scrape(admin), pool)
        if result["others"] <= NOISY_PCT or attempt == retries:
            break
        print(f"  others used {result['others']:.0f}% of a CPU ({result['top']}); again", flush=True)
    return result, counts


def load(port: int, model: str, rate: float, duration: float, out: Path) -> dict:
    subprocess.run([sys.executable, str(ROOT / "bench" / "policies" / "openloop.py"), "--port", str(port),
                    "--path", f"/v2/models/{model}/infer", "--rate", str(rate), "--duration", str(duration),
                    "--out", str(out)], check=True)
    result = json.loads(out.read_text())
    latencies = [r[1] for r in result["records"] if r[2] == 200]
    errors = len(result["records"]) - len(latencies)
    return {"requests": len(result["records"]), "errors": errors,
            **{f"p{q}": percentile(latencies, q) * 1000 for q in (50, 90, 99, 99.9)}}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, Python {platform.python_version()}, "
            f"load average {os.getloadavg()[0]:.2f} at the start")


def report(args, results: dict[str, list[dict]], counts: dict[str, list[dict]], started: str, host: str) -> str:
    lines = [f"# Shadow traffic and the primary's latency ({started})", "",
             f"Command: `python bench/policies/run.py --rate {args.rate:g} --duration {args.duration:g} "
             f"--rounds {args.rounds} --retries {args.retries} --wait-quiet {args.wait_quiet:g}`",
             f"Machine: {host}", "",
             "Primary latency in ms, open loop (from each request's due time). p50 and p99: medians over the "
             "rounds; p99 spread: the rounds' lowest, quartiles and highest p99; others: the CPU other "
             "processes used during the runs (median, % of one CPU).", "",
             "| mode | requests | errors | p50 | p99 | p99 spread (min, q1, q3, max) | others | shadow counters |",
             "|---|---:|---:|---:|---:|---|---:|---|"]
    for mode, runs in results.items():
        p99s = sorted(r["p99"] for r in runs)
        quartiles = statistics.quantiles(p99s, n=4, method="inclusive") if len(p99s) > 1 else [p99s[0]] * 3
        total: dict[str, int] = {}
        for run in counts[mode]:
            for key, value in run.items():
                total[key] = total.get(key, 0) + value
        shadow = ", ".join(f"{k} {v}" for k, v in sorted(total.items())) or "-"
        lines.append(
            f"| {mode} | {sum(r['requests'] for r in runs)} | {sum(r['errors'] for r in runs)} | "
            f"{statistics.median(r['p50'] for r in runs):.2f} | {statistics.median(p99s):.2f} | "
            f"{p99s[0]:.2f}, {quartiles[0]:.2f}, {quartiles[2]:.2f}, {p99s[-1]:.2f} | "
            f"{statistics.median(r['others'] for r in runs):.0f}% | {shadow} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--retries", type=int, default=0, help="measure again while the machine is busy (0)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, help="wait up to S seconds for a quiet machine (0)")
    parser.add_argument("--keep", action="store_true", help="keep the config, logs and records")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop lbd and thaw w2 on the way out
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    host = machine()
    work = Path(tempfile.mkdtemp(prefix="lbd-policies-"))
    port, admin = free_port(), free_port()
    (work / "lbd.yaml").write_text(CONFIG.format(port=port, admin=admin, w0=free_port(), w1=free_port(), w2=free_port()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "backends"),
                                                        os.environ.get("PYTHONPATH", "")])}
    log = open(work / "lbd.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "lbd", "serve", "--config", str(work / "lbd.yaml")],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    frozen = 0
    try:
        deadline = time.monotonic() + 120
        while b'"msg":"ready"' not in (work / "lbd.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"lbd did not start:\n{(work / 'lbd.log').read_text()[-3000:]}")
            time.sleep(0.2)
        frozen = int(re.findall(rb"\[worker w2\] started, pid (\d+)", (work / "lbd.log").read_bytes())[-1])
        os.kill(frozen, signal.SIGSTOP)
        for model, _, _ in MODES.values():
            load(port, model, args.rate, args.warmup, work / "warmup.json")
        results: dict[str, list[dict]] = {mode: [] for mode in MODES}
        counts: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for round_ in range(args.rounds):
            order = list(MODES) if round_ % 2 == 0 else list(reversed(MODES))
            for mode in order:
                model, pool, _ = MODES[mode]
                result, shadow = measure(port, admin, model, pool, args.rate, args.duration,
                                         work / f"{pool}-{round_}.json", args.retries, args.wait_quiet)
                results[mode].append(result)
                counts[mode].append(shadow)
                print(f"round {round_ + 1} {mode}: {result} {counts[mode][-1]}", flush=True)
        text = report(args, results, counts, started, host)
        print(text)
        out = ROOT / "bench" / "out"
        out.mkdir(exist_ok=True)
        (out / f"policies-{started[:10]}.md").write_text(text)
    finally:
        if frozen:
            os.kill(frozen, signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if args.keep:
            print(f"kept {work}")
        else:
            for path in work.iterdir():
                path.unlink()
            work.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
