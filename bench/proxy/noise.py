"""CPU accounting: how busy each core was, what the proxy spent, and who else used the CPUs."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import sys
import threading
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
NOISY_PCT = 5.0    # other processes (or the hypervisor) above this share of one CPU: suspect


def cpu_times() -> dict[int, tuple[int, int]]:
    """Per CPU (busy, total) jiffies from /proc/stat."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if re.match(r"cpu\d+ ", line):
            name, *fields = line.split()
            values = [int(v) for v in fields[:8]]
            idle = values[3] + values[4]
            times[int(name[3:])] = (sum(values) - idle, sum(values))
    return times


def busy_percent(before: dict, after: dict, cpu: int) -> float:
    busy = after[cpu][0] - before[cpu][0]
    total = after[cpu][1] - before[cpu][1]
    return 100.0 * busy / total if total else 0.0


TICKS = os.sysconf("SC_CLK_TCK")


def processes() -> dict[int, tuple[int, str, int, int]]:
    """pid -> (ppid, name, own ticks, reaped children's ticks) for every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = (entry / "stat").read_text()
            name = text[text.index("(") + 1:text.rindex(")")]
            fields = text[text.rindex(")") + 2:].split()
            table[int(entry.name)] = (int(fields[1]), name, int(fields[11]) + int(fields[12]),
                                      int(fields[13]) + int(fields[14]))
    return table


def _descendants(table: dict, root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, frontier = set(), [root]
    while frontier:
        pid = frontier.pop()
        found.add(pid)
        frontier += children.get(pid, [])
    return found


def _steal_ticks() -> int:
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(first[8]) if len(first) > 8 else 0


class Interference(threading.Thread):
    """CPU used during a measurement by processes that are not this harness's.

    The machine may be shared (other engineers' tests, installs; other guests on the host, seen
    as steal time): a burst on the proxy's or the load's CPU changes the result, so the report
    shows it and the harness measures again instead of letting it pass for a proxy's speed.
    /proc is sampled every half second; a process that lives less than that is still caught
    through its parent's reaped-children time. Kernel threads are left out (softirq work done
    for our own load shows there).
    """

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self._interval = interval
        self._stop_event = threading.Event()
        self._usage: collections.Counter[str] = collections.Counter()
        self._since = time.monotonic()
        self._previous = processes()
        self._steal_before = _steal_ticks()

    def run(self) -> None:
        while not self._stop_event.wait(self._interval):
            self._sample()

    def finish(self) -> tuple[float, str]:
        """Stop; return (% of one CPU used by others, the top three by name)."""
        self._stop_event.set()
        self.join()
        self._sample()
        seconds = time.monotonic() - self._since
        # Steal: time the hypervisor ran something else while our vCPUs wanted to run.
        self._usage["(steal)"] += _steal_ticks() - self._steal_before
        usage = [(100.0 * ticks / TICKS / seconds, name) for name, ticks in self._usage.items()]
        usage.sort(reverse=True)
        top = ", ".join(f"{name} {pct:.0f}%" for pct, name in usage[:3] if pct >= 1)
        return sum(pct for pct, _ in usage), top

    def _sample(self) -> None:
        previous, current = self._previous, processes()
        me = os.getpid()
        skip = (_descendants(previous, me) | _descendants(current, me)
                | _descendants(previous, 2) | _descendants(current, 2))
        # Time already counted for processes gone since then, by parent: it reappears in the
        # parent's reaped-children time and must not be counted twice.
        # A chain of processes can end within one interval: their time all reappears in the
        # nearest ancestor still alive, so charge what was counted to that ancestor.
        gone: collections.Counter[int] = collections.Counter()
        for pid, (ppid, _, ticks, reaped_ticks) in previous.items():
            if pid not in current:
                while ppid in previous and ppid not in current:
                    ppid = previous[ppid][0]
                gone[ppid] += ticks + reaped_ticks
        for pid, (_, name, ticks, reaped_ticks) in current.items():
            if pid in skip:
                continue
            before = previous.get(pid)
            if before is None:                     # started since the last sample
                self._usage[name] += ticks + reaped_ticks
                continue
            reaped = max(0, reaped_ticks - before[3] - gone[pid])
            self._usage[name] += ticks - before[2] + reaped
        self._previous = current


def tree_ticks(table: dict, root: int) -> int:
    return sum(table[pid][2] for pid in _descendants(table, root) if pid in table)


def wait_quiet(limit: float) -> bool:
    """Wait up to limit seconds for one second in which others stay under NOISY_PCT.

    Returns False when the machine stayed busy the whole time.
    """
    deadline = time.monotonic() + limit
    while True:
        others = Interference()
        others.start()
        time.sleep(1)
        used, top = others.finish()
        if used < NOISY_PCT:
            return True
        if time.monotonic() >= deadline:
            print(f"  still busy after {limit:.0f}s ({top}); measuring anyway",
                  file=sys.stderr, flush=True)
            return False
        print(f"  waiting for a quiet machine ({top})", file=sys.stderr, flush=True)
