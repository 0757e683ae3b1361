"""What a reload did: a small frozen record the daemon returns and emits to metrics, and a
summary of what changed between two configs, for people (the admin API, ``lbd reload``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from lbd.config.model import Config, PoolConfig

__all__ = ["ReloadResult", "config_changes"]


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """``ok``: the new config applies; ``errors``: path-named messages when it was refused;
    ``changes``: :func:`config_changes` when it applied; ``at``: Unix time. Truthy when ``ok``,
    so callers that only ask "did it apply?" read it as a bool."""

    ok: bool
    errors: tuple[str, ...] = ()
    changes: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def __bool__(self) -> bool:
        return self.ok

    @classmethod
    def applied(cls, changes: dict[str, Any]) -> ReloadResult:
        return cls(True, changes=changes)

    @classmethod
    def refused(cls, errors: list[str] | tuple[str, ...]) -> ReloadResult:
        return cls(False, errors=tuple(errors))

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "errors": list(self.errors), "changes": self.changes, "at": self.at}

    def describe(self) -> str:
        """One line per fact, for a terminal."""
        if not self.ok:
            return "reload refused; nothing changed:\n" + "\n".join(f"  {e}" for e in self.errors)
        return "reloaded: " + (describe_changes(self.changes) or "no changes")


def config_changes(old: Config, new: Config) -> dict[str, Any]:
    """Pools added and removed, and per kept pool the backends added and removed and the
    settings that differ; the top-level sections that differ (``pools`` aside)."""
    changes: dict[str, Any] = {
        "pools_added": sorted(new.pools.keys() - old.pools.keys()),
        "pools_removed": sorted(old.pools.keys() - new.pools.keys()),
        "pools_changed": {},
        "settings_changed": [key for key in Config.model_fields
                             if key != "pools" and getattr(old, key) != getattr(new, key)],
    }
    for name in sorted(old.pools.keys() & new.pools.keys()):
        pool_changes = _pool_changes(old.pools[name], new.pools[name])
        if pool_changes:
            changes["pools_changed"][name] = pool_changes
    return changes


def _pool_changes(old: PoolConfig, new: PoolConfig) -> dict[str, Any]:
    before = {b.display_name: b for b in old.backends}
    after = {b.display_name: b for b in new.backends}
    changes: dict[str, Any] = {}
    for key, names in (("backends_added", after.keys() - before.keys()),
                       ("backends_removed", before.keys() - after.keys()),
                       ("backends_changed", {n for n in before.keys() & after.keys() if before[n] != after[n]})):
        if names:
            changes[key] = sorted(names)
    settings = [key for key in PoolConfig.model_fields if key != "backends" and getattr(old, key) != getattr(new, key)]
    if settings:
        changes["settings"] = settings
    return changes


def describe_changes(changes: dict[str, Any]) -> str:
    parts = []
    if changes.get("pools_added"):
        parts.append("pools added: " + ", ".join(changes["pools_added"]))
    if changes.get("pools_removed"):
        parts.append("pools removed: " + ", ".join(changes["pools_removed"]))
    for pool, detail in (changes.get("pools_changed") or {}).items():
        items = [f"{key.replace('_', ' ')}: {', '.join(values)}" for key, values in detail.items()]
        parts.append(f"pool {pool}: " + "; ".join(items))
    if changes.get("settings_changed"):
        parts.append("settings changed: " + ", ".join(changes["settings_changed"]))
    return "; ".join(parts)
