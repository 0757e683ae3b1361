"""The admin API and status page on their own listener, and the ``lbd reload`` client.

Imports are lazy so that ``lbd reload`` (:mod:`lbd.admin.client`) does not load aiohttp.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lbd.admin.app import build_app
    from lbd.admin.base import Control, Purger
    from lbd.admin.reload import ReloadResult, config_changes
    from lbd.admin.server import AdminRefused, AdminServer

__all__ = ["AdminServer", "AdminRefused", "build_app", "Control", "Purger", "ReloadResult", "config_changes"]

_WHERE = {"AdminServer": "server", "AdminRefused": "server", "build_app": "app", "Control": "base",
          "Purger": "base", "ReloadResult": "reload", "config_changes": "reload"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'lbd.admin' has no attribute {name!r}")
    return getattr(import_module(f"lbd.admin.{_WHERE[name]}"), name)
