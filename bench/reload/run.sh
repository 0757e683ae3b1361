#!/usr/bin/env bash
# The reload benchmark in one command: installs nginx and wrk when missing (bench/proxy/deps.sh),
# then runs bench/reload/run.py: 100 reloads under a steady load, lbd (SIGHUP) beside nginx
# (`nginx -s reload`), in front of the same three upstream nginx servers. About 1.5 minutes.
#   bench/reload/run.sh                   # both, report in bench/out/reload-<date>.md
#   bench/reload/run.sh --only lbd --rate 5000
#   bench/reload/run.sh --load wrk        # wrk as fast as it goes instead of the paced client
#   bench/reload/run.sh --help
# PYTHON=/path/to/python selects the interpreter for lbd and the load client (default: the
# repo's .venv if there is one, else python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=bench/proxy/deps.sh
source "$here/../proxy/deps.sh"
ensure_packages
ensure_python_modules
cd "$root"
exec "$PYTHON" "$here/run.py" "$@"
