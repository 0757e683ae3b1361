"""Priority tiers: Envoy's load split, exact; the draw over 10,000 picks; the pool's filters,
retries and panic mode across tiers; tiers through config and reload."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lbd.balancing.peak_ewma import PeakEwma
from lbd.balancing.round_robin import RoundRobin
from lbd.config import ConfigError, load_config_text
from lbd.proxy.pool import Pool
from lbd.proxy.tiers import Tiers, priority_loads
from lbd.runtime import Runtime
from tests.unit.balancing.conftest import FakeRequest

PICKS = 10_000


@pytest.mark.parametrize("usable, totals, factor, loads", [
    ((4, 2), (4, 2), 140, [100, 0]),      # healthy tier 0 takes everything
    ((3, 2), (4, 2), 140, [100, 0]),      # 3/4 x 1.4 = 105%: capped, still everything
    ((2, 2), (4, 2), 140, [70, 30]),      # 2/4 x 1.4 = 70%: the rest spills to tier 1
    ((1, 2), (4, 2), 140, [35, 65]),
    ((0, 2), (4, 2), 140, [0, 100]),
    ((2, 2), (4, 2), 100, [50, 50]),      # no overprovisioning: the plain usable share
    ((1, 1), (4, 4), 140, [50, 50]),      # 35% + 35%: both degraded, scaled up to 100
    ((1, 0, 1), (4, 4, 4), 140, [50, 0, 50]),
    ((1, 1, 4), (4, 4, 4), 140, [35, 35, 30]),  # tier 2 takes only what is left
    ((1, 1, 1), (4, 4, 4), 140, [35, 35, 30]),  # 105% in all: capped at 100
    ((1, 1, 1), (3, 3, 3), 100, [34, 33, 33]),  # 99% in all: 33 each, the rounding to the first
    ((1, 2), (3, 3), 140, [46, 54]),      # 140 / 3 = 46 (integer percent, as Envoy)
    ((0, 0), (4, 2), 140, [100, 0]),      # nothing usable: tier 0 (panic routing decides)
    ((0, 0, 3), (4, 2, 3), 140, [0, 0, 100]),
])
def test_priority_loads_follow_envoys_arithmetic(usable, totals, factor, loads):
    assert priority_loads(usable, totals, factor) == loads
    assert sum(loads) == 100


def _runtime(tiers: list[int], *, factor: float = 1.4, algorithm: str = "round_robin", seed: int = 7,
             extra: str = "") -> Runtime:
    backends = "\n".join(f'      - {{url: "http://127.0.0.1:{9000 + index}", name: t{tier}-{index}, tier: {tier}}}'
                         for index, tier in enumerate(tiers))
    text = f"""
pools:
  web:
    balancer: {{algorithm: {algorithm}}}
    tiers: {{overprovisioning_factor: {factor}}}
{extra}    backends:
{backends}
"""
    return Runtime.build(load_config_text(text), rng=random.Random(seed))


def _pool(tiers: list[int], **options) -> Pool:
    return _runtime(tiers, **options).pools["web"]


def _down(pool: Pool, *names: str) -> None:
    for backend in pool.backends:
        if backend.name in names:
            backend.available = False
    pool.refresh()


def _tier_shares(pool: Pool, picks: int = PICKS) -> Counter:
    counts: Counter = Counter()
    for _ in range(picks):
        backend, _ = pool.select(FakeRequest(), set())
        counts[backend.name.partition("-")[0]] += 1
    return counts


def test_a_pool_of_one_tier_has_no_tier_layer():
    for tiers in ([0, 0, 0], [3, 3]):
        pool = _pool(tiers)
        assert pool.tiers is None and isinstance(pool.balancer, RoundRobin)
    pool = _pool([0, 0, 1])
    assert pool.tiers is pool.balancer and isinstance(pool.balancer, Tiers)
    assert pool.tiers.levels == (0, 1) and [len(m) for m in pool.tiers.members] == [2, 1]


def test_a_body_reading_balancer_makes_the_pool_wait_for_bodies_with_or_without_tiers():
    assert _pool([0, 1], algorithm="prefix_affinity").needs_body
    assert _pool([0, 0], algorithm="prefix_affinity").needs_body
    assert not _pool([0, 1]).needs_body and not _pool([0, 0]).needs_body


def test_tier_numbers_need_not_be_contiguous():
    pool = _pool([5, 2, 2, 9])
    assert pool.tiers.levels == (2, 5, 9)
    assert [[b.name for b in members] for members in pool.tiers.members] == [["t2-1", "t2-2"], ["t5-0"], ["t9-3"]]


def test_the_split_is_recomputed_on_refresh_and_spills_gradually():
    pool = _pool([0, 0, 0, 0, 1, 1])
    assert pool.tiers.loads == [100, 0]
    steps = []
    for name in ("t0-0", "t0-1", "t0-2", "t0-3"):
        _down(pool, name)
        steps.append(pool.tiers.loads)
    assert steps == [[100, 0], [70, 30], [35, 65], [0, 100]]
    assert not pool.panic  # tier 1 is whole: no panic, however tier 0 fares
    for backend in pool.backends:
        backend.available = True
    pool.refresh()
    assert pool.tiers.loads == [100, 0]


def test_ten_thousand_picks_follow_the_split():
    """Tier 0 with 4 backends, 2 down, factor 1.4: 70% / 30%, within a point; tier 0's
    share goes only to its two usable backends."""
    pool = _pool([0, 0, 0, 0, 1, 1])
    _down(pool, "t0-0", "t0-1")
    assert pool.tiers.loads == [70, 30]
    counts: Counter = Counter()
    for _ in range(PICKS):
        backend, _ = pool.select(FakeRequest(), set())
        counts[backend.name] += 1
    tier1 = counts["t1-4"] + counts["t1-5"]
    assert tier1 / PICKS == pytest.approx(0.30, abs=0.01), counts
    assert counts["t0-0"] == counts["t0-1"] == 0
    assert counts["t0-2"] + counts["t0-3"] == PICKS - tier1


@pytest.mark.parametrize("down, expected", [
    ((), {"t0": 1.0}),
    (("t0-0",), {"t0": 1.0}),
    (("t0-0", "t0-1", "t0-2"), {"t0": 0.35, "t1": 0.65}),
])
def test_shares_over_ten_thousand_picks(down, expected):
    pool = _pool([0, 0, 0, 0, 1, 1])
    _down(pool, *down)
    counts = _tier_shares(pool)
    for tier, share in expected.items():
        assert counts[tier] / PICKS == pytest.approx(share, abs=0.015), counts
    assert sum(counts.values()) == PICKS


def test_no_draw_is_made_while_tier_zero_takes_everything():
    """The common case costs no random number: the runtime's rng is untouched by picks."""
    rng = random.Random(1)
    config = load_config_text("""
pools:
  web:
    backends: [{url: "http://127.0.0.1:9000"}, {url: "http://127.0.0.1:9001", tier: 1}]
""")
    pool = Runtime.build(config, rng=rng).pools["web"]
    state = rng.getstate()
    for _ in range(100):
        assert pool.select(FakeRequest(), set())[0].name == "127.0.0.1:9000"
    assert rng.getstate() == state


def test_a_retry_falls_to_another_tier_when_the_chosen_one_is_used_up():
    pool = _pool([0, 0, 1])
    tier0 = {b for b in pool.backends if b.name.startswith("t0")}
    backend, _ = pool.select(FakeRequest(), set(tier0))
    assert backend.name == "t1-2"
    # Down, not just tried: the fallback is tier 1 too, and a tried tier-0 backend is the
    # last resort only when no tier has an untried one.
    _down(pool, "t1-2")
    backend, _ = pool.select(FakeRequest(), set(tier0))
    assert backend in tier0


def test_a_saturated_tier_overflows_to_the_next_before_queueing():
    pool = _pool([0, 0, 1], extra="    limits: {max_inflight_per_backend: 1}\n")
    for backend in pool.backends[:2]:
        backend.inflight = 1
    assert pool.select(FakeRequest(), set()) == (pool.backends[2], False)
    pool.backends[2].inflight = 1
    assert pool.select(FakeRequest(), set()) == (None, True)  # every tier full: queue


def test_panic_only_when_every_tier_is_below_the_threshold():
    pool = _pool([0, 0, 0, 0, 1, 1])
    _down(pool, "t0-0", "t0-1", "t0-2", "t0-3")  # tier 0 gone, tier 1 whole
    assert not pool.panic
    assert {pool.select(FakeRequest(), set())[0].name for _ in range(50)} == {"t1-4", "t1-5"}
    _down(pool, "t1-4")  # tier 1 at 50%: not below the 50% threshold
    assert not pool.panic and pool.tiers.loads == [0, 100]
    _down(pool, "t1-5")
    assert pool.panic
    assert pool.tiers.loads == [100, 0]
    # Panic routing: every backend is a candidate again, tier 0 first.
    assert pool.select(FakeRequest(), set())[0].name.startswith("t0")


def test_feedback_reaches_the_balancer_of_the_backends_tier():
    pool = _pool([0, 1, 1], algorithm="peak_ewma")
    _down(pool, "t0-0")
    slow, fast = pool.backends[1], pool.backends[2]
    assert all(isinstance(b, PeakEwma) for b in pool.tiers._balancers)
    pool.balancer.observe(slow, 1.0, True)
    pool.balancer.observe(fast, 0.010, True)
    pool.balancer.observe(object(), 5.0, False)  # a backend of an old runtime: ignored
    assert {pool.select(FakeRequest(), set())[0].name for _ in range(30)} == {"t1-2"}


def test_a_reload_keeps_backends_and_their_health_and_regroups_the_tiers():
    old = _runtime([0, 0, 1])
    old.pools["web"].backends[0].available = False
    new = Runtime.build(_runtime([0, 1, 1]).config, previous=old, rng=random.Random(1))
    pool = new.pools["web"]
    assert pool.backends[0] is old.pools["web"].backends[0] and not pool.backends[0].available
    assert [[b.name for b in members] for members in pool.tiers.members] == [["t0-0"], ["t1-1", "t1-2"]]
    pool.refresh()
    assert pool.tiers.loads == [0, 100]


def test_snapshot_names_each_tier():
    pool = _pool([0, 0, 1])
    _down(pool, "t0-0")
    assert pool.tiers.snapshot() == [
        {"tier": 0, "backends": ["t0-0", "t0-1"], "usable": 1, "load": 70},
        {"tier": 1, "backends": ["t1-2"], "usable": 1, "load": 30},
    ]


@pytest.mark.parametrize("change, message", [
    (("tier: 0}", "tier: -1}"), "pools.web.backends.0.tier: input should be greater than or equal to 0"),
    (("factor: 1.4", "factor: 0.9"), "pools.web.tiers.overprovisioning_factor: input should be greater than or equal to 1"),
])
def test_bad_tier_settings_name_their_path(change, message):
    text = """
pools:
  web:
    tiers: {overprovisioning_factor: 1.4}
    backends: [{url: "http://127.0.0.1:9000", tier: 0}]
"""
    with pytest.raises(ConfigError) as caught:
        load_config_text(text.replace(*change), source="t.yaml")
    (line,) = caught.value.messages
    assert line.startswith(message), line
