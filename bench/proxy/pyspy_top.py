"""Top functions from py-spy's collapsed stacks (`py-spy record --format raw`).

Usage: python pyspy_top.py FILE.collapsed.txt [--top 25] [--rate 250 --seconds 10]

Prints, as shares of all samples: self time per function (where the CPU was), inclusive time
per function (what it was doing on behalf of), and self time per source file (which layer).
With --rate and --seconds it also says how busy the sampled threads were (py-spy drops idle
samples, so samples / (rate x seconds) is roughly the CPU share the process used).
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path


def _stacks(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def _file(frame: str) -> str:
    match = re.search(r"\((.*?)(?::\d+)?\)$", frame)
    return match.group(1) if match else frame


def _without_line(frame: str) -> str:
    return re.sub(r":\d+\)$", ")", frame)


def _rows(counter: collections.Counter, total: int, top: int) -> list[str]:
    return [f"{100 * n / total:6.1f}%  {n:7d}  {name}" for name, n in counter.most_common(top)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("collapsed", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rate", type=int)
    parser.add_argument("--seconds", type=float)
    args = parser.parse_args()
    stacks = _stacks(args.collapsed)
    total = sum(n for _, n in stacks) or 1
    own, inclusive, files = collections.Counter(), collections.Counter(), collections.Counter()
    for frames, n in stacks:
        # --subprocesses adds a "process PID:<command line>" root frame: not a function.
        frames = [_without_line(f) for f in frames if not f.startswith("process ")] or ["?"]
        own[frames[-1]] += n
        files[_file(frames[-1])] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(f"{total} samples")
    if args.rate and args.seconds:
        print(f"busy: {100 * total / (args.rate * args.seconds):.0f}% of one CPU "
              "(samples / rate x seconds; idle samples are dropped by py-spy)")
    for title, counter in (("self time by function", own), ("inclusive time by function",
                           inclusive), ("self time by file", files)):
        print(f"\n## {title}\n")
        print("\n".join(_rows(counter, total, args.top)))


if __name__ == "__main__":
    main()
