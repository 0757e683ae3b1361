#!/usr/bin/env bash
# The chaos benchmark in one command: lbd, HAProxy and nginx in turn over the same three real
# lbd-worker processes while one is SIGKILLed and restarted, one is frozen, one sheds with 503.
#   bench/chaos/run.sh                  # all three proxies, 20 s each, ~1.5 min; report in bench/out/
#   bench/chaos/run.sh --runs 2         # two interleaved rounds and a summary (~3 min)
#   bench/chaos/run.sh --only lbd --keep   # one proxy, keep configs/logs/records
#   bench/chaos/run.sh --help
# PYTHON=/path/to/python selects the interpreter for lbd, lbd-worker and the load client
# (default: the repo's .venv if there is one, else python3). Installs nginx/HAProxy when missing
# (bench/proxy/deps.sh: apt-get, never starting the system services).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=bench/proxy/deps.sh
source "$root/bench/proxy/deps.sh"
ensure_packages
ensure_python_modules
if ! "$PYTHON" -c 'import lbd, lbd_worker' 2>/dev/null; then
    echo "bench: lbd is not importable from $PYTHON; install it first (pip install -e .)" >&2
    exit 2
fi
cd "$root"
exec "$PYTHON" "$here/run.py" "$@"
