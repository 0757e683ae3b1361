"""The admin API from the command line (``lbd reload``): standard library only, no loop.

The admin address and token file are read from the config file leniently (YAML only, no
validation): ``lbd reload`` must work exactly when the file was just edited into a state the
daemon will refuse, so that the daemon can say why.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

__all__ = ["reload", "admin_target", "read_token", "connect_host", "format_address", "DEFAULT_ADMIN_ADDRESS"]

DEFAULT_ADMIN_ADDRESS = "127.0.0.1:9901"
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def connect_host(host: str) -> str:
    """Where to connect for a listener bound to ``host`` (a wildcard means this machine)."""
    return _WILDCARDS.get(host, host)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def admin_target(config_path: str | Path) -> tuple[str, str | None]:
    """``(admin address, token file or None)`` from a config file, defaults where the file
    says nothing or cannot be parsed."""
    try:
        data = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return DEFAULT_ADMIN_ADDRESS, None
    admin = data.get("admin") if isinstance(data, dict) else None
    if not isinstance(admin, dict):
        return DEFAULT_ADMIN_ADDRESS, None
    address, token_file = admin.get("address", DEFAULT_ADMIN_ADDRESS), admin.get("token_file")
    return str(address), (str(token_file) if token_file else None)


def read_token(token_file: str | None) -> str | None:
    if token_file is None:
        return None
    return Path(token_file).read_text(encoding="utf-8").strip()


def reload(admin_address: str, token: str | None, timeout: float = 120.0) -> tuple[bool, str]:
    """Ask the daemon behind ``admin_address`` (``host:port``) to reload its config file.
    ``(True, what changed)`` or ``(False, why not)``: the path-named config errors, a refused
    token, or an unreachable daemon."""
    from lbd.config.model import parse_address

    host, port = parse_address(admin_address, default_host="127.0.0.1")
    url = f"http://{format_address(connect_host(host), port)}/admin/reload"
    request = urllib.request.Request(url, data=b"", method="POST")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return True, _describe(_json(response.read()))
    except urllib.error.HTTPError as exc:
        return False, _failure(exc.code, _json(exc.read()))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"cannot reach the admin API at {url}: {reason} (is lbd running? is admin.address right?)"


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {"error": body.decode("utf-8", "replace").strip()}
    return value if isinstance(value, dict) else {"error": str(value)}


def _describe(payload: dict[str, Any]) -> str:
    from lbd.admin.reload import describe_changes

    return "reloaded: " + (describe_changes(payload.get("changes") or {}) or "no changes")


def _failure(status: int, payload: dict[str, Any]) -> str:
    if status == 401:
        return "the admin API refused the token (give the config's admin.token_file, readable by you)"
    errors = payload.get("errors") or []
    if errors:
        return "reload refused; nothing changed:\n" + "\n".join(f"  {e}" for e in errors)
    return f"reload failed ({status}): {payload.get('error', 'no reason given')}"
