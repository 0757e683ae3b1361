#!/usr/bin/env bash
# The proxy benchmark in one command: installs nginx, HAProxy and wrk when missing, then runs
# bench/proxy/run.py (nginx, HAProxy, bare-python and lbd over the same two upstreams).
#   bench/proxy/run.sh                      # all proxies, 15 s each, report in bench/out/
#   bench/proxy/run.sh --only nginx,haproxy --runs 2
#   bench/proxy/run.sh --help
# PYTHON=/path/to/python selects the interpreter for bare-python and lbd (default: the repo's
# .venv if there is one, else python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=bench/proxy/deps.sh
source "$here/deps.sh"
ensure_packages
ensure_python_modules
cd "$root"
exec "$PYTHON" "$here/run.py" "$@"
