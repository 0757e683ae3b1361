"""API keys: a request's key, hashed, names its tenant; the key itself is never stored,
logged or (by default) forwarded."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from lbd.config.security import ApiKeyConfig, AuthConfig

__all__ = ["Authenticator", "hash_key", "CHALLENGE"]

CHALLENGE = (b"www-authenticate", b'Bearer realm="lbd"')


def hash_key(key: str | bytes) -> str:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


class Authenticator:
    __slots__ = ("config", "header", "_tenants")

    def __init__(self, config: AuthConfig, base_dir: Path | None = None) -> None:
        self.config = config
        self.header = config.header.encode()
        entries = list(config.keys)
        if config.key_file is not None:
            entries += _read_key_file(Path(config.key_file) if base_dir is None else base_dir / config.key_file)
        # Lookups by digest: equal work whatever the key, and nothing secret in memory.
        self._tenants = {bytes.fromhex(entry.sha256): entry.tenant for entry in entries}

    def tenant(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        """The tenant of the request's key; ``None`` when it has none or an unknown one."""
        wanted = self.header
        for name, value in headers:
            if name.lower() == wanted:
                key = value.strip()
                if wanted == b"authorization":
                    scheme, _, key = key.partition(b" ")
                    if scheme.lower() != b"bearer":
                        return None
                    key = key.strip()
                return self._tenants.get(hashlib.sha256(key).digest()) if key else None
        return None


def _read_key_file(path: Path) -> list[ApiKeyConfig]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"key file {path}: {exc}") from None
    if not isinstance(data, list):
        raise ValueError(f"key file {path}: a list of {{tenant, sha256}} entries")
    return [ApiKeyConfig.model_validate(entry) for entry in data]
