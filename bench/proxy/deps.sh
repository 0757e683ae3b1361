# Sourced by run.sh and profile.sh: install what the benchmark needs, only when it is missing.
# Never starts system services: Debian's nginx/haproxy postinst asks policy-rc.d, and where the
# machine has none we put a temporary "deny" one in place for the install (and remove it).

_as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_packages() {
    local missing=()
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "bench: installing ${missing[*]} (apt-get)" >&2
    local policy=/usr/sbin/policy-rc.d added=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | _as_root tee "$policy" >/dev/null
        _as_root chmod 755 "$policy"
        added=1
    fi
    _as_root apt-get update -qq
    # nginx-light is the small build on Debian 12; fall back to nginx where it does not exist.
    if ! DEBIAN_FRONTEND=noninteractive _as_root apt-get install -y -qq "${missing[@]}"; then
        missing=("${missing[@]/nginx-light/nginx}")
        DEBIAN_FRONTEND=noninteractive _as_root apt-get install -y -qq "${missing[@]}"
    fi
    [ -n "$added" ] && _as_root rm -f "$policy"
    return 0
}

ensure_python_modules() {
    if [ -z "${PYTHON:-}" ]; then
        if [ -x "$root/.venv/bin/python" ]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
    fi
    # The real interpreter, not a pyenv shim (a bash script that would sit in the process tree).
    PYTHON="$("$PYTHON" -c 'import sys; print(sys.executable)')"
    export PATH="$PATH:/usr/sbin:/sbin"
    if ! "$PYTHON" -c 'import uvloop, httptools' 2>/dev/null; then
        echo "bench: installing uvloop httptools into $PYTHON" >&2
        "$PYTHON" -m pip install -q uvloop httptools
    fi
    # Cython builds bench/proxy/lane (the cython-lane entry); gcc comes with Debian's build tools.
    if ! "$PYTHON" -c 'import Cython' 2>/dev/null; then
        echo "bench: installing cython into $PYTHON" >&2
        "$PYTHON" -m pip install -q cython
    fi
}

ensure_py_spy() {
    if ! command -v py-spy >/dev/null 2>&1; then
        echo "bench: installing py-spy into $PYTHON" >&2
        "$PYTHON" -m pip install -q py-spy
        hash -r
    fi
}
