"""The load: wrk with post.lua, and the probe request that must pass before it."""

from __future__ import annotations

import argparse
import http.client
import json
import re
import subprocess

from servers import HERE, Skip

BODY = re.search(r"wrk.body = '(.*)'", (HERE / "post.lua").read_text()).group(1)
BODY_CHECK = b'{"ok":true}'     # what the upstreams answer; the probe wants exactly this


def probe(port: int, body: bytes) -> str:
    """One POST like wrk's; return a problem description, or "" when it answered 2xx + body."""
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = response.read()
        connection.close()
    except (OSError, http.client.HTTPException) as error:
        return f"probe POST failed: {error!r}"
    if not 200 <= response.status < 300 or answer != BODY_CHECK:
        return f"probe POST answered {response.status} {answer[:200]!r}"
    return ""


# --------------------------------------------------------------------------- wrk

def wrk(port: int, seconds: float, args: argparse.Namespace) -> tuple[dict, str]:
    argv = ["taskset", "-c", str(args.load_cpu), "wrk", f"-t{args.threads}",
            f"-c{args.connections}", f"-d{seconds}s", "--timeout", "5s", "--latency",
            "-s", str(HERE / "post.lua"), f"http://127.0.0.1:{port}/"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    match = re.search(r"^WRKJSON (\{.*\})$", done.stdout, re.M)
    if done.returncode != 0 or not match:
        raise Skip(f"wrk failed (status {done.returncode}):\n{done.stdout}{done.stderr}")
    return json.loads(match.group(1)), done.stdout


def wrk_command(args: argparse.Namespace) -> str:
    return (f"taskset -c {args.load_cpu} wrk -t{args.threads} -c{args.connections} "
            f"-d{args.duration}s --timeout 5s --latency -s bench/proxy/post.lua URL")
