"""The contract every balancer keeps, checked for every registered name."""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from lbd.balancing import (
    BalancerPluginError,
    NoOptions,
    UnknownBalancer,
    build,
    get,
    names,
)
from lbd.balancing.consistent_hash import ConsistentHashOptions
from lbd.balancing.round_robin import RoundRobin
from lbd.clock import ManualClock

from .conftest import SEED, FakeBackend, FakeRequest, build_balancer, make_backends, pick

BUILTIN = [
    "consistent_hash", "least_connections", "peak_ewma", "power_of_two_choices", "prefix_affinity",
    "random", "round_robin", "weighted_round_robin",
]
ALL_NAMES = names()


def _requests(count: int) -> list[FakeRequest]:
    """Distinct clients and prompts, so hashing algorithms see many keys."""
    return [FakeRequest(client_ip=f"10.0.{index // 256}.{index % 256}", body=b'{"prompt": "question %d"}' % index)
            for index in range(count)]


def test_every_builtin_is_registered():
    assert set(BUILTIN) <= set(ALL_NAMES)
    assert ALL_NAMES == sorted(ALL_NAMES)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_candidates_are_a_permutation_when_fully_consumed(name):
    backends = make_backends(3, 1, 2, 1, 1)
    for backend, inflight in zip(backends, [0, 2, 1, 0, 5]):
        backend.inflight = inflight
    balancer = build_balancer(name, backends)
    for request in _requests(200):
        order = [backend.name for backend in balancer.candidates(request)]
        assert sorted(order) == sorted(backend.name for backend in backends)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_candidates_are_lazy_and_state_advances_once_per_call(name):
    """Three twins see the same requests and feedback. One takes only the pick, one drains
    every candidate, one also makes (and drops) an unstarted generator before each call. If
    fallbacks or an unstarted generator moved a counter or drew from the rng, their picks
    would part ways."""
    def picks(mode: str) -> list[str]:
        backends = make_backends(3, 1, 2, 1, 1)
        for backend, inflight in zip(backends, [0, 2, 1, 0, 5]):
            backend.inflight = inflight
        clock = ManualClock()
        balancer = build_balancer(name, backends, clock=clock)
        chosen = []
        for index, request in enumerate(_requests(300)):
            if mode == "unstarted":
                balancer.candidates(request)
            generator = balancer.candidates(request)
            first = next(generator)
            if mode == "drained":
                list(generator)
            chosen.append(first.name)
            clock.advance(0.001)
            balancer.observe(first, latency=0.002 * (index % 7 + 1), ok=index % 5 != 0)
        return chosen

    first_only = picks("first")
    assert picks("drained") == first_only
    assert picks("unstarted") == first_only


@pytest.mark.parametrize("name", ALL_NAMES)
def test_repeated_first_picks_spread_over_equal_backends(name):
    backends = make_backends(1, 1, 1, 1)
    balancer = build_balancer(name, backends)
    counts = Counter(pick(balancer, request).name for request in _requests(4000))
    assert set(counts) == {backend.name for backend in backends}
    for count in counts.values():
        assert 0.2 <= count / 4000 <= 0.3, counts


@pytest.mark.parametrize("name", ["round_robin", "weighted_round_robin", "least_connections"])
def test_rotating_algorithms_take_strict_turns_over_equal_idle_backends(name):
    backends = make_backends(1, 1, 1)
    balancer = build_balancer(name, backends)
    first_picks = [pick(balancer).name for _ in range(9)]
    assert [first_picks[i:i + 3] for i in (0, 3, 6)] == [first_picks[:3]] * 3
    assert sorted(first_picks[:3]) == ["b0", "b1", "b2"]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_a_single_backend_is_always_the_only_candidate(name):
    only = FakeBackend("only", weight=2.0)
    balancer = build_balancer(name, [only])
    for request in _requests(20):
        assert list(balancer.candidates(request)) == [only]
        only.inflight += 1  # busy or not, it is the only one


@pytest.mark.parametrize("name", ALL_NAMES)
def test_feedback_from_an_unknown_backend_is_ignored(name):
    balancer = build_balancer(name, make_backends(1, 1))
    balancer.observe(FakeBackend("from-an-old-runtime"), latency=0.5, ok=False)
    assert pick(balancer).name in {"b0", "b1"}


# --- registry -------------------------------------------------------------------------


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownBalancer) as caught:
        get("round-robbin")
    assert isinstance(caught.value, LookupError)
    assert str(caught.value) == "unknown 'round-robbin'; known: " + ", ".join(names())
    assert caught.value.name == "round-robbin"
    with pytest.raises(UnknownBalancer):
        build("round-robbin", make_backends(1), rng=random.Random(SEED), clock=ManualClock())


@pytest.mark.parametrize("name", ALL_NAMES)
def test_unknown_option_is_an_error_naming_it(name):
    with pytest.raises(ValidationError) as caught:
        build_balancer(name, make_backends(1, 1), {"no_such_option": 1})
    (error,) = caught.value.errors()
    assert error["loc"] == ("no_such_option",)
    assert error["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    "name, options, location, message",
    [
        ("consistent_hash", {"hash_on": "header"}, (), "key: required"),
        ("consistent_hash", {"hash_on": "cookie"}, (), "key: required"),
        ("consistent_hash", {"hash_on": "path", "key": "x-user"}, (), "key: only for"),
        ("consistent_hash", {"hash_on": "body"}, ("hash_on",), "client_ip"),
        ("consistent_hash", {"method": "maglev", "table_size": 65536}, ("table_size",), "prime"),
        ("consistent_hash", {"method": "jump"}, ("method",), "maglev"),
        ("consistent_hash", {"bounded_load": 0.5}, ("bounded_load",), ">= 1.0"),
        ("consistent_hash", {"virtual_nodes": 0}, ("virtual_nodes",), "greater than or equal"),
        ("peak_ewma", {"decay": "soon"}, ("decay",), "not a duration"),
        ("peak_ewma", {"decay": 0}, ("decay",), "greater than 0"),
        ("peak_ewma", {"default_rtt": "-5ms"}, ("default_rtt",), "duration"),
    ],
)
def test_bad_option_values_are_errors_naming_the_field(name, options, location, message):
    with pytest.raises(ValidationError) as caught:
        build_balancer(name, make_backends(1, 1), options)
    (error,) = caught.value.errors()
    assert error["loc"] == location
    assert message in error["msg"]


def test_options_take_defaults_and_units():
    assert get("peak_ewma").Options.model_validate({"decay": "250ms"}).decay == 0.25
    assert get("peak_ewma").Options().decay == 10.0
    assert ConsistentHashOptions().bounded_load == 1.25
    assert ConsistentHashOptions(bounded_load=0).bounded_load is None
    assert ConsistentHashOptions(bounded_load=None).bounded_load is None
    assert ConsistentHashOptions(hash_on="header", key="X-User").key == "X-User"
    assert get("round_robin").Options is NoOptions


def test_build_accepts_a_validated_model_of_the_right_class_only():
    options = ConsistentHashOptions(hash_on="path")
    balancer = build_balancer("consistent_hash", make_backends(1, 1), options)
    assert pick(balancer, FakeRequest(path="/a")).name in {"b0", "b1"}
    with pytest.raises(TypeError, match="ConsistentHashOptions given where NoOptions"):
        build_balancer("round_robin", make_backends(1), options)


def test_build_refuses_an_empty_pool_and_duplicate_names():
    with pytest.raises(ValueError, match="at least one backend"):
        build_balancer("round_robin", [])
    with pytest.raises(ValueError, match="'b0' appears twice"):
        build_balancer("round_robin", [FakeBackend("b0"), FakeBackend("b0")])


# --- plugins through the entry point group -----------------------------------------------

_PLUGIN_MODULE = "lbd_test_plugin_sticky"
_PLUGIN_SOURCE = '''
from lbd.balancing import NoOptions

class Sticky:
    """Always the backends in list order."""
    Options = NoOptions

    def __init__(self, backends, options, *, rng, clock):
        self.backends = list(backends)

    def candidates(self, request):
        yield from self.backends

    def observe(self, backend, latency, ok):
        pass

NOT_A_BALANCER = 42
'''
_ENTRY_POINTS = f"""[lbd.balancers]
sticky = {_PLUGIN_MODULE}:Sticky
broken = lbd_test_plugin_missing:Nope
not_a_class = {_PLUGIN_MODULE}:NOT_A_BALANCER
round_robin = {_PLUGIN_MODULE}:Sticky
"""


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real (if tiny) installed distribution: a module and a dist-info on ``sys.path``."""
    (tmp_path / f"{_PLUGIN_MODULE}.py").write_text(_PLUGIN_SOURCE)
    dist_info = tmp_path / "lbd_test_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: lbd-test-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(_ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop(_PLUGIN_MODULE, None)


def test_a_plugin_is_listed_got_and_built(installed_plugin):
    assert {"sticky", "broken", "not_a_class"} <= set(names())
    assert names() == sorted(names())
    backends = make_backends(1, 1, 1)
    balancer = build_balancer("sticky", backends)
    assert list(balancer.candidates(FakeRequest())) == backends
    assert get("sticky").__module__ == _PLUGIN_MODULE


def test_a_broken_plugin_names_itself_and_spares_the_builtins(installed_plugin):
    with pytest.raises(BalancerPluginError) as caught:
        get("broken")
    assert "'broken'" in str(caught.value)
    assert "lbd_test_plugin_missing:Nope" in str(caught.value)
    assert "ModuleNotFoundError" in str(caught.value)
    with pytest.raises(BalancerPluginError, match="'not_a_class'.*not a class"):
        get("not_a_class")
    for name in BUILTIN:
        assert pick(build_balancer(name, make_backends(1, 1))).name in {"b0", "b1"}


def test_a_plugin_cannot_take_a_builtin_name(installed_plugin):
    assert get("round_robin") is RoundRobin
    assert names().count("round_robin") == 1


def test_plugins_vanish_with_their_distribution():
    assert "sticky" not in names()
    with pytest.raises(UnknownBalancer):
        get("sticky")
