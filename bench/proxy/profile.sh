#!/usr/bin/env bash
# Where lbd's time goes: lbd under wrk load (same upstreams, pinning and body as run.sh) while
# py-spy samples it, writing to bench/out/:
#   profile-<target>-<date>.svg             flamegraph
#   profile-<target>-<date>.collapsed.txt   collapsed stacks (speedscope.app opens them)
#   profile-<target>-<date>.top.txt         top functions by self/inclusive time, by file
# Usage: bench/proxy/profile.sh [--target lbd|bare-python] [--duration 10] [--native] [--rate 250]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=bench/proxy/deps.sh
source "$here/deps.sh"
target=lbd duration=10 rest=()
while [ $# -gt 0 ]; do
    case "$1" in
        --target) target="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        *) rest+=("$1"); shift ;;
    esac
done
ensure_packages
ensure_python_modules
ensure_py_spy
cd "$root"
exec "$PYTHON" "$here/run.py" --profile "$target" --duration "$duration" \
    ${rest[@]+"${rest[@]}"}
