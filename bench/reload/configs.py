"""The hundred configs, the same changes for lbd and for nginx.

Reload ``i`` (0..99) serves the upstreams ``SETS[i % 4]`` (so each reload adds or removes a
backend, sometimes both) with ``ALGORITHMS[i % 6]``; reload ``INVALID`` is a file the proxy's
own check refuses (lbd: an unknown algorithm; nginx: an unknown directive in the upstream
block, which ``nginx -t`` refuses). The config before the first reload is ``step(-1)``.
"""

from __future__ import annotations

import string
from pathlib import Path

HERE = Path(__file__).resolve().parent

SETS = [(0, 1), (0, 1, 2), (1, 2), (0, 2)]
ALGORITHMS = ["round_robin", "least_connections", "random", "power_of_two_choices",
              "weighted_round_robin", "consistent_hash"]
INVALID = 50
# nginx's nearest equivalent of each lbd algorithm (its first line in the upstream block).
NGINX_METHOD = {
    "round_robin": "",
    "least_connections": "least_conn;",
    "random": "random;",
    "power_of_two_choices": "random two least_conn;",
    "weighted_round_robin": "",                    # weight=2 on the first server
    "consistent_hash": "hash $remote_addr consistent;",
}


def step(index: int) -> tuple[tuple[int, ...], str, bool]:
    """(indexes of the upstreams served, algorithm, whether the file is invalid)."""
    if index < 0:
        return SETS[0], "round_robin", False
    return SETS[index % len(SETS)], ALGORITHMS[index % len(ALGORITHMS)], index == INVALID


def lbd_config(index: int, port: int, admin_port: int, upstreams: list[int]) -> str:
    chosen, algorithm, invalid = step(index)
    lines = [f"# reload {index}: upstreams {list(chosen)}, {algorithm}{', INVALID' if invalid else ''}",
             f'listen: [{{address: "127.0.0.1:{port}", backlog: 4096}}]',
             f'admin: {{address: "127.0.0.1:{admin_port}"}}',
             "log: {access: false}",
             "watch: {enabled: false}",        # SIGHUP only: one reload per step, counted once
             "pools:",
             "  bench:",
             f"    balancer: {{algorithm: {'round-robbin' if invalid else algorithm}}}",
             "    backends:"]
    for rank, which in enumerate(chosen):
        weight = ", weight: 2" if algorithm == "weighted_round_robin" and rank == 0 else ""
        lines.append(f'      - {{url: "http://127.0.0.1:{upstreams[which]}"{weight}}}')
    lines.append("default_pool: bench")
    return "\n".join(lines) + "\n"


def nginx_config(index: int, run_dir: Path, port: int, upstreams: list[int]) -> str:
    chosen, algorithm, invalid = step(index)
    block = [f"    # reload {index}: upstreams {list(chosen)}, {algorithm}"
             f"{', INVALID' if invalid else ''}", "    upstream bench {"]
    # A balancing method other than round robin goes before `keepalive` (nginx's rule).
    if invalid:
        block.append("        least_conns;")
    elif NGINX_METHOD[algorithm]:
        block.append(f"        {NGINX_METHOD[algorithm]}")
    for rank, which in enumerate(chosen):
        weight = " weight=2" if algorithm == "weighted_round_robin" and rank == 0 else ""
        block.append(f"        server 127.0.0.1:{upstreams[which]}{weight};")
    block += ["        keepalive 128;", "        keepalive_requests 1000000000;", "    }"]
    template = string.Template((HERE / "nginx.conf.tmpl").read_text())
    return template.substitute(dir=run_dir, port=port, upstream="\n".join(block))
