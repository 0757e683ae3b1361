"""Balancers by name: the built-ins, and third-party ones from the ``lbd.balancers`` group.

A built-in is named here as ``"module:Class"`` and imported only when asked for. A plugin
is declared in its distribution's metadata::

    [project.entry-points."lbd.balancers"]
    sticky = "my_package.sticky:Sticky"

Built-in names win over a plugin of the same name, and a plugin that fails to load raises
:class:`BalancerPluginError` naming it, only when that plugin is asked for.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

from lbd.balancing.base import Backend, Balancer, BalancerOptions
from lbd.clock import Clock

__all__ = ["ENTRY_POINT_GROUP", "UnknownBalancer", "BalancerPluginError", "names", "get", "build"]

ENTRY_POINT_GROUP = "lbd.balancers"

_BUILTIN = {
    "consistent_hash": "lbd.balancing.consistent_hash:ConsistentHash",
    "least_connections": "lbd.balancing.least_connections:LeastConnections",
    "peak_ewma": "lbd.balancing.peak_ewma:PeakEwma",
    "power_of_two_choices": "lbd.balancing.power_of_two_choices:PowerOfTwoChoices",
    "prefix_affinity": "lbd.balancing.prefix_affinity:PrefixAffinity",
    "random": "lbd.balancing.random_choice:WeightedRandom",
    "round_robin": "lbd.balancing.round_robin:RoundRobin",
    "weighted_round_robin": "lbd.balancing.weighted_round_robin:WeightedRoundRobin",
}


class UnknownBalancer(LookupError):
    """No balancer of that name; ``str()`` is ``unknown 'NAME'; known: a, b, c``."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(name, tuple(known))
        self.name = name
        self.known = tuple(known)

    def __str__(self) -> str:
        return f"unknown {self.name!r}; known: {', '.join(self.known)}"


class BalancerPluginError(ImportError):
    """A plugin's entry point cannot be loaded, or what it loads is not a balancer."""

    def __init__(self, name: str, target: str, reason: str) -> None:
        super().__init__(f"balancer plugin {name!r} ({target}): {reason}")
        self.name = name
        self.target = target


def names() -> list[str]:
    """Every balancer name, sorted: the built-ins and the installed plugins."""
    return sorted(_BUILTIN.keys() | _plugins().keys())


def get(name: str) -> type[Balancer]:
    """The balancer class called ``name``; raises :class:`UnknownBalancer` or
    :class:`BalancerPluginError`."""
    target = _BUILTIN.get(name)
    if target is not None:
        module_name, _, class_name = target.partition(":")
        return getattr(importlib.import_module(module_name), class_name)
    entry_point = _plugins().get(name)
    if entry_point is None:
        raise UnknownBalancer(name, names())
    return _load_plugin(entry_point)


def build(
    name: str,
    backends: Sequence[Backend],
    options: Mapping[str, Any] | BalancerOptions | None = None,
    *,
    rng: random.Random,
    clock: Clock,
) -> Balancer:
    """A new balancer over ``backends``; ``options`` is validated against its ``Options``
    (a pydantic ``ValidationError`` names the offending key)."""
    balancer_class = get(name)
    backends = tuple(backends)
    _check_backends(backends)
    return balancer_class(backends, _validated(balancer_class, options), rng=rng, clock=clock)


def _plugins() -> dict[str, metadata.EntryPoint]:
    """Installed plugins by name; the first of two with one name wins, and :func:`get`
    looks at the built-ins first, so a plugin never shadows one."""
    found: dict[str, metadata.EntryPoint] = {}
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry_point.name, entry_point)
    return found


def _load_plugin(entry_point: metadata.EntryPoint) -> type[Balancer]:
    try:
        loaded = entry_point.load()
    except Exception as error:  # any failure in third-party import code is that plugin's
        raise BalancerPluginError(
            entry_point.name, entry_point.value, f"cannot be loaded: {type(error).__name__}: {error}"
        ) from error
    problem = _not_a_balancer(loaded)
    if problem:
        raise BalancerPluginError(entry_point.name, entry_point.value, problem)
    return loaded


def _not_a_balancer(loaded: object) -> str | None:
    if not isinstance(loaded, type):
        return f"is a {type(loaded).__name__}, not a class"
    options = getattr(loaded, "Options", None)
    if not (isinstance(options, type) and issubclass(options, BalancerOptions)):
        return "has no Options class attribute deriving from lbd.balancing.BalancerOptions"
    for method in ("candidates", "observe"):
        if not callable(getattr(loaded, method, None)):
            return f"has no {method}() method"
    return None


def _validated(
    balancer_class: type[Balancer], options: Mapping[str, Any] | BalancerOptions | None
) -> BalancerOptions:
    expected = balancer_class.Options
    if isinstance(options, expected):
        return options
    if isinstance(options, BalancerOptions):
        raise TypeError(f"{type(options).__name__} given where {expected.__name__} is expected")
    return expected.model_validate(options or {})


def _check_backends(backends: Sequence[Backend]) -> None:
    if not backends:
        raise ValueError("a balancer needs at least one backend")
    seen: set[str] = set()
    for backend in backends:
        if backend.name in seen:
            raise ValueError(f"backend {backend.name!r} appears twice; names must be unique in a pool")
        seen.add(backend.name)
