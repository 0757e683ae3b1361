"""Simulations of each algorithm's distribution, with seeded randomness and a manual clock."""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter

import pytest

from lbd.clock import ManualClock

from .conftest import FakeBackend, FakeRequest, build_balancer, make_backends, pick

PICKS = 10_000


def _shares(counts: Counter, backends: list[FakeBackend]) -> list[float]:
    return [counts[backend.name] / sum(counts.values()) for backend in backends]


def _expected(backends: list[FakeBackend]) -> list[float]:
    total = sum(backend.weight for backend in backends)
    return [backend.weight / total for backend in backends]


# --- weights -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["weighted_round_robin", "random", "power_of_two_choices"])
@pytest.mark.parametrize("weights", [(5, 3, 1, 1), (1, 2, 3, 4), (1, 1, 8), (0.5, 1.5)])
def test_weights_are_honoured_within_two_points_when_idle(name, weights):
    """Idle pool (in flight returns to zero before the next request): shares follow weights
    to within 2 percentage points over 10,000 picks."""
    backends = make_backends(*weights)
    balancer = build_balancer(name, backends)
    counts = Counter(pick(balancer).name for _ in range(PICKS))
    for share, expected in zip(_shares(counts, backends), _expected(backends)):
        assert share == pytest.approx(expected, abs=0.02), counts


def test_weighted_round_robin_is_exact_over_whole_cycles():
    backends = make_backends(5, 3, 1, 1)  # a cycle of 10 picks
    balancer = build_balancer("weighted_round_robin", backends)
    counts = Counter(pick(balancer).name for _ in range(PICKS))
    assert [counts[b.name] for b in backends] == [5000, 3000, 1000, 1000]


@pytest.mark.parametrize("weights", [(3, 2, 1), (1, 1, 4), (2, 2, 1, 1)])
def test_least_connections_follows_weights_under_a_service_model(weights):
    """One arrival per tick, each held for an exponential time (mean 40 ticks): least
    connections keeps in-flight proportional to weight, so by Little's law the arrival
    shares follow the weights too."""
    backends = make_backends(*weights)
    balancer = build_balancer("least_connections", backends)
    service = random.Random(7)
    departures: list[tuple[int, int]] = []
    counts: Counter = Counter()
    for tick in range(PICKS + 1000):
        while departures and departures[0][0] <= tick:
            backends[heapq.heappop(departures)[1]].inflight -= 1
        chosen = pick(balancer)
        chosen.inflight += 1
        heapq.heappush(departures, (tick + math.ceil(service.expovariate(1 / 40)), backends.index(chosen)))
        if tick >= 1000:  # past the warm-up
            counts[chosen.name] += 1
    for share, expected in zip(_shares(counts, backends), _expected(backends)):
        assert share == pytest.approx(expected, abs=0.02), counts


@pytest.mark.parametrize(
    "weights, inflight, expected",
    [
        ((1, 1, 1), (4, 1, 3), "b1"),
        ((4, 1, 1), (4, 2, 2), "b0"),  # 1.0 per unit of weight beats 2.0
        ((1, 2, 1), (1, 1, 1), "b1"),
        ((1, 1, 3), (0, 0, 1), None),  # b2's 0.33 loses to two idle backends
    ],
)
def test_least_connections_picks_the_lowest_inflight_per_weight(weights, inflight, expected):
    backends = make_backends(*weights)
    for backend, count in zip(backends, inflight):
        backend.inflight = count
    balancer = build_balancer("least_connections", backends)
    first_picks = Counter(pick(balancer).name for _ in range(12))
    if expected is not None:
        assert first_picks == {expected: 12}
    else:  # the idle pair share by turns
        assert first_picks == {"b0": 6, "b1": 6}


def test_power_of_two_choices_takes_the_less_loaded_of_its_draws():
    backends = make_backends(3, 1)  # with two backends both are always drawn
    backends[0].inflight = 4  # 4 / 3 per unit of weight against 1 / 1
    backends[1].inflight = 1
    balancer = build_balancer("power_of_two_choices", backends)
    assert {pick(balancer).name for _ in range(50)} == {"b1"}
    backends[0].inflight = 2  # 0.67 against 1.0
    assert {pick(balancer).name for _ in range(50)} == {"b0"}


def test_power_of_two_choices_draws_its_pair_by_weight_without_replacement():
    """Loads that rank b2 < b1 < b0 make the pick tell which pair was drawn: b1 exactly
    when the pair is {b0, b1}. P({b0, b1}) = w0/W * w1/(W - w0) + w1/W * w0/(W - w1)."""
    backends = make_backends(3, 2, 1)
    for backend, inflight in zip(backends, (3, 1, 0)):  # 1.0, 0.5, 0.0 per unit of weight
        backend.inflight = inflight
    balancer = build_balancer("power_of_two_choices", backends)
    counts = Counter(pick(balancer).name for _ in range(PICKS))
    w0, w1, total = 3, 2, 6
    pair_01 = w0 / total * w1 / (total - w0) + w1 / total * w0 / (total - w1)  # 7/12
    assert counts["b0"] == 0
    assert counts["b1"] / PICKS == pytest.approx(pair_01, abs=0.02), counts


# --- smooth weighted round robin -----------------------------------------------------------


def _wrr_sequence(weights, count: int) -> list[int]:
    backends = make_backends(*weights)
    balancer = build_balancer("weighted_round_robin", backends)
    return [backends.index(pick(balancer)) for _ in range(count)]


def _longest_runs(sequence: list[int], size: int) -> list[int]:
    longest = [0] * size
    run, previous = 0, None
    for index in sequence:
        run = run + 1 if index == previous else 1
        previous = index
        longest[index] = max(longest[index], run)
    return longest


def _weight_vectors(count: int):
    rng = random.Random(11)
    for _ in range(count):
        size = rng.randint(2, 8)
        kind = rng.choice(["small", "wide", "float"])
        if kind == "small":
            yield [rng.randint(1, 5) for _ in range(size)]
        elif kind == "wide":
            yield [rng.randint(1, 100) for _ in range(size)]
        else:
            yield [round(rng.uniform(0.1, 10.0), 3) for _ in range(size)]


def test_smooth_wrr_gives_nginx_sequence():
    letters = "abc"
    assert "".join(letters[i] for i in _wrr_sequence((5, 1, 1), 14)) == "aabacaa" * 2


def test_smooth_wrr_never_runs_ahead_of_its_share():
    """x_i(t) <= t * w_i / W + (n - 1) / n for every prefix t (module docstring's proof)."""
    for weights in _weight_vectors(300):
        total, size = sum(weights), len(weights)
        picks_so_far = [0] * size
        for step, index in enumerate(_wrr_sequence(weights, 400), start=1):
            picks_so_far[index] += 1
            limit = step * weights[index] / total + (size - 1) / size
            assert picks_so_far[index] <= limit + 1e-9, (weights, step, index)


def test_smooth_wrr_run_length_bound():
    """A run of backend i is at most (n - 1) * W / (W - w_i) picks; with two backends, at
    most ceil(w_i / w_j)."""
    for weights in _weight_vectors(300):
        total, size = sum(weights), len(weights)
        longest = _longest_runs(_wrr_sequence(weights, 400), size)
        for index, weight in enumerate(weights):
            assert longest[index] <= (size - 1) * total / (total - weight) + 1e-9, (weights, index)
            if size == 2:
                assert longest[index] <= math.ceil(weight / (total - weight) - 1e-9), weights


def test_smooth_wrr_can_exceed_the_naive_bound_with_three_backends():
    """Documents why the bound above is not ceil(w_i / (W - w_i)): 5, 1, 1 repeats
    a a b a c a a, so 'a' runs 4 times across the cycle boundary, not 3."""
    assert _longest_runs(_wrr_sequence((5, 1, 1), 70), 3)[0] == 4


def test_smooth_wrr_integer_weights_are_exact_in_every_cycle():
    for weights in _weight_vectors(200):
        if any(isinstance(weight, float) for weight in weights):
            continue
        total = sum(weights)
        sequence = _wrr_sequence(weights, 3 * total)
        for cycle in range(3):
            counts = Counter(sequence[cycle * total:(cycle + 1) * total])
            assert [counts[i] for i in range(len(weights))] == list(weights)


def test_smooth_wrr_reads_weights_at_pick_time():
    """Slow start raises a weight between picks; the very next cycle follows it."""
    backends = make_backends(1, 1, 1)
    balancer = build_balancer("weighted_round_robin", backends)
    for _ in range(7):
        pick(balancer)
    backends[0].weight = 3.0  # now 3 : 1 : 1
    counts = Counter(pick(balancer).name for _ in range(500))
    assert abs(counts["b0"] - 300) <= 2 and abs(counts["b1"] - 100) <= 2, counts


# --- consistent hashing ----------------------------------------------------------------------

KEYS = [FakeRequest(path=f"/users/{index}") for index in range(10_000)]


def _owners(backends: list[FakeBackend], method: str, requests=KEYS) -> list[str]:
    balancer = build_balancer("consistent_hash", backends, {"hash_on": "path", "method": method})
    return [pick(balancer, request).name for request in requests]


@pytest.mark.parametrize("method", ["ring", "maglev"])
@pytest.mark.parametrize("size", [5, 10])
def test_removing_one_backend_moves_few_keys(method, size):
    """Dropping one of N backends moves at most 1/N + 5% of 10,000 keys: essentially only
    the keys it owned."""
    before = _owners(make_backends(*[1] * size), method)
    survivors = [b for b in make_backends(*[1] * size) if b.name != "b2"]
    after = _owners(survivors, method)
    moved = [old for old, new in zip(before, after) if old != new]
    assert len(moved) / len(KEYS) <= 1 / size + 0.05
    assert before.count("b2") == moved.count("b2")  # every key of the removed one moved
    if method == "ring":
        assert set(moved) == {"b2"}  # a ring moves nothing else at all


@pytest.mark.parametrize("method", ["ring", "maglev"])
def test_placement_follows_weights_and_names_not_list_order(method):
    backends = make_backends(1, 1, 2, 4)
    owners = _owners(backends, method)
    shares = Counter(owners)
    for backend, expected in zip(backends, _expected(backends)):
        assert shares[backend.name] / len(KEYS) == pytest.approx(expected, abs=0.05), shares
    assert _owners(list(reversed(backends)), method) == owners


@pytest.mark.parametrize("hash_on, request_for", [
    ("client_ip", lambda key: FakeRequest(client_ip=key)),
    ("header", lambda key: FakeRequest(headers={"x-user": key})),
    ("cookie", lambda key: FakeRequest(cookies={"session": key})),
    ("path", lambda key: FakeRequest(path=key)),
])
def test_the_same_key_always_goes_to_the_same_backend(hash_on, request_for):
    options = {"hash_on": hash_on, "key": {"header": "X-User", "cookie": "session"}.get(hash_on)}
    backends = make_backends(1, 1, 1, 1, 1)
    balancers = [build_balancer("consistent_hash", backends, options, seed=seed) for seed in (1, 2)]
    for key in (f"key-{index}" for index in range(200)):
        first = pick(balancers[0], request_for(key))
        assert all(pick(balancer, request_for(key)) is first for balancer in balancers)


def test_requests_without_a_key_spread_evenly():
    backends = make_backends(1, 1, 1, 1)
    balancer = build_balancer("consistent_hash", backends, {"hash_on": "header", "key": "x-user"})
    counts = Counter(pick(balancer, FakeRequest()).name for _ in range(4000))
    assert all(0.22 <= count / 4000 <= 0.28 for count in counts.values()), counts


def _skewed_keys(count: int) -> list[FakeRequest]:
    """Half the traffic on one hot key, the rest over 500 keys."""
    rng = random.Random(3)
    return [FakeRequest(path="/hot" if rng.random() < 0.5 else f"/k/{rng.randrange(500)}")
            for _ in range(count)]


@pytest.mark.parametrize("method", ["ring", "maglev"])
@pytest.mark.parametrize("factor", [1.0, 1.25, 2.0])
@pytest.mark.parametrize("weights", [(1,) * 8, (2, 1, 1, 1, 1, 3)])
def test_bounded_load_holds_its_factor_under_a_hot_key(method, factor, weights):
    """Requests pile up (none finish): after every assignment, every backend's in-flight
    is within ceil(factor * total * weight / total_weight), weight-aware mean."""
    backends = make_backends(*weights)
    balancer = build_balancer(
        "consistent_hash", backends, {"hash_on": "path", "method": method, "bounded_load": factor})
    total_weight = sum(weights)
    for total, request in enumerate(_skewed_keys(3000), start=1):
        pick(balancer, request).inflight += 1
        for backend in backends:
            assert backend.inflight <= math.ceil(factor * total * backend.weight / total_weight - 1e-9)


@pytest.mark.parametrize("method", ["ring", "maglev"])
def test_bounded_load_holds_at_assignment_with_departures(method):
    backends = make_backends(1, 1, 1, 1, 1)
    balancer = build_balancer("consistent_hash", backends, {"hash_on": "path", "method": method})
    rng = random.Random(5)
    live: list[FakeBackend] = []
    for request in _skewed_keys(5000):
        if live and rng.random() < 0.45:
            live.pop(rng.randrange(len(live))).inflight -= 1
        chosen = pick(balancer, request)
        chosen.inflight += 1
        live.append(chosen)
        assert chosen.inflight <= math.ceil(1.25 * len(live) / len(backends) - 1e-9)


def test_without_bounded_load_the_hot_key_overloads_its_backend():
    """The same skew with the bound off: the hot key's owner far exceeds the mean."""
    backends = make_backends(*[1] * 8)
    balancer = build_balancer("consistent_hash", backends, {"hash_on": "path", "bounded_load": None})
    for request in _skewed_keys(3000):
        pick(balancer, request).inflight += 1
    assert max(backend.inflight for backend in backends) > 2 * 3000 / 8


def test_bounded_load_keeps_affinity_while_the_owner_has_room():
    backends = make_backends(1, 1, 1, 1)
    balancer = build_balancer("consistent_hash", backends, {"hash_on": "path"})
    owner = pick(balancer, FakeRequest(path="/a"))
    for backend in backends:
        backend.inflight = 4
    owner.inflight = 4  # total 16: capacity ceil(1.25 * 17 / 4) = 6, so 5 still fits
    assert pick(balancer, FakeRequest(path="/a")) is owner
    owner.inflight = 6  # total 18: capacity ceil(1.25 * 19 / 4) = 6, 7 does not fit
    assert pick(balancer, FakeRequest(path="/a")) is not owner
    assert owner in list(balancer.candidates(FakeRequest(path="/a")))


# --- peak EWMA -------------------------------------------------------------------------------


def test_peak_ewma_steers_away_from_a_slow_backend():
    backends = make_backends(1, 1, 1, 1)
    latency = {"b0": 0.010, "b1": 0.012, "b2": 0.500, "b3": 0.011}
    clock = ManualClock()
    balancer = build_balancer("peak_ewma", backends, clock=clock)
    counts: Counter = Counter()
    for _ in range(PICKS):
        chosen = pick(balancer)
        counts[chosen.name] += 1
        clock.advance(0.001)
        balancer.observe(chosen, latency[chosen.name], ok=True)
    assert counts["b2"] <= 5, counts  # its first probe or so, then it loses every draw
    # Of two uniform draws the faster wins, so b0 wins the half of pairs that hold it, b3
    # the third of the rest, b1 what is left: 1/2, 1/3, 1/6.
    assert [counts[name] / PICKS for name in ("b0", "b3", "b1")] == pytest.approx(
        [1 / 2, 1 / 3, 1 / 6], abs=0.02), counts


def _two_measured(decay: str = "10s"):
    backends = make_backends(1, 1)
    clock = ManualClock()
    balancer = build_balancer("peak_ewma", backends, {"decay": decay}, clock=clock)
    for backend in backends:
        balancer.observe(backend, 0.010, ok=True)
    return backends, clock, balancer


def test_peak_ewma_believes_a_peak_at_once():
    (a, b), clock, balancer = _two_measured()
    clock.advance(0.001)
    balancer.observe(a, 1.0, ok=True)
    assert {pick(balancer).name for _ in range(20)} == {"b1"}


@pytest.mark.parametrize("decay, expected", [("10s", 10 * math.log(100)), ("5s", 5 * math.log(100))])
def test_peak_ewma_forgets_a_peak_with_its_decay_time(decay, expected):
    """After one 1 s sample on b0 while b1 keeps answering in 10 ms, b0 is tried again once
    its estimate has decayed below b1's: 1 s * exp(-t / decay) < 10 ms, t = decay * ln 100."""
    (a, b), clock, balancer = _two_measured(decay)
    balancer.observe(a, 1.0, ok=True)
    start = clock.now()
    while pick(balancer) is b:
        clock.advance(0.01)
        balancer.observe(b, 0.010, ok=True)
        assert clock.now() - start < 2 * expected
    assert clock.now() - start == pytest.approx(expected, abs=0.02)


def test_peak_ewma_probes_a_new_backend_once():
    (a, b), clock, balancer = _two_measured()
    fresh = FakeBackend("fresh")
    balancer = build_balancer("peak_ewma", [a, fresh], clock=clock)
    balancer.observe(a, 0.010, ok=True)
    assert pick(balancer) is fresh  # unmeasured and idle: costs nothing
    fresh.inflight = 1
    assert {pick(balancer).name for _ in range(20)} == {"b0"}  # its probe is out: wait for it


def test_peak_ewma_cost_divides_by_weight_and_counts_inflight():
    backends = [FakeBackend("heavy", weight=3.0, inflight=2), FakeBackend("light", weight=1.0, inflight=1)]
    balancer = build_balancer("peak_ewma", backends)
    for backend in backends:
        balancer.observe(backend, 0.010, ok=True)
    assert pick(balancer).name == "heavy"  # 10 ms * 3 / 3 against 10 ms * 2 / 1
    backends[0].inflight = 6
    assert pick(balancer).name == "light"  # 10 ms * 7 / 3 against 10 ms * 2 / 1


@pytest.mark.parametrize("ok, expected", [(True, "slow-then-fast"), (False, "steady")])
def test_peak_ewma_a_fast_failure_never_makes_a_backend_look_faster(ok, expected):
    backends = [FakeBackend("slow-then-fast"), FakeBackend("steady")]
    clock = ManualClock()
    balancer = build_balancer("peak_ewma", backends, clock=clock)
    balancer.observe(backends[0], 0.100, ok=True)
    clock.advance(20.0)  # 100 ms has decayed to 13.5 ms
    balancer.observe(backends[1], 0.020, ok=True)
    balancer.observe(backends[0], 0.001, ok=ok)  # success: 14.4 ms; failure: 25.2 ms
    assert pick(balancer).name == expected


def test_least_connections_falls_back_by_load_not_by_list_order():
    """A filtered-out backend is idle, so it is the pick; the fallbacks must still be the
    least loaded, or its list neighbour takes everything."""
    backends = make_backends(1, 1, 1, 1)
    balancer = build_balancer("least_connections", backends)
    backends[1].inflight, backends[2].inflight, backends[3].inflight = 9, 1, 5
    order = list(balancer.candidates(FakeRequest()))
    assert order[0] is backends[0]
    assert order[1:] == [backends[2], backends[3], backends[1]]


# --- prefix affinity ---------------------------------------------------------------------------

SYSTEM_PROMPT = "You are a careful assistant; answer in one paragraph. " * 6  # 324 characters


def _prompt(prefix: int, suffix: int) -> FakeRequest:
    """Conversations ``prefix`` share their first 256 characters and differ after them."""
    text = f"conversation {prefix:04d}: {SYSTEM_PROMPT}" + f"turn {suffix}"
    return FakeRequest(path="/v1/completions", body=b'{"prompt": "%s"}' % text.encode())


def test_prefix_affinity_keeps_each_prefix_on_one_backend_when_load_allows():
    """An idle pool: 10,000 requests over 200 prefixes, each with its own ending. Every
    prefix lands on one backend, and the prefixes spread over all of them."""
    backends = make_backends(1, 1, 1, 1)
    balancer = build_balancer("prefix_affinity", backends)
    rng = random.Random(13)
    homes: dict[int, set[str]] = {}
    for _ in range(PICKS):
        prefix = rng.randrange(200)
        homes.setdefault(prefix, set()).add(pick(balancer, _prompt(prefix, rng.randrange(10**6))).name)
    assert all(len(names) == 1 for names in homes.values())
    per_backend = Counter(next(iter(names)) for names in homes.values())
    assert set(per_backend) == {b.name for b in backends}
    assert all(25 <= count <= 75 for count in per_backend.values()), per_backend


@pytest.mark.parametrize("method", ["ring", "maglev"])
def test_prefix_affinity_spills_a_hot_prefix_only_when_its_bound_forces_it(method):
    """Requests pile up (none finish), half of them on one hot prefix. A prefix leaves its
    owner only when the owner is at ceil(1.25 * (total + 1) / n); it then goes to the next
    backend on the table that has room, and no backend ever exceeds the bound."""
    backends = make_backends(1, 1, 1, 1, 1)
    balancer = build_balancer("prefix_affinity", backends, {"method": method})
    owners = {prefix: list(balancer.candidates(_prompt(prefix, 0))) for prefix in range(100)}
    rng = random.Random(17)
    spills = 0
    for total in range(3000):
        prefix = 0 if rng.random() < 0.5 else rng.randrange(1, 100)
        chosen = pick(balancer, _prompt(prefix, rng.randrange(10**6)))
        order = owners[prefix]
        capacity = math.ceil(1.25 * (total + 1) / len(backends) - 1e-9)
        for ahead in order[:order.index(chosen)]:  # each passed over was full
            assert ahead.inflight + 1 > capacity
        spills += chosen is not order[0]
        chosen.inflight += 1
        assert all(backend.inflight <= capacity for backend in backends)
    assert spills > 0  # the hot prefix did fill its owner


def _service_model(load_factor: float | None) -> tuple[list[str], Counter, float, int]:
    """One arrival per tick, each held 40 ticks on average (5 in flight per backend); 30% of
    the traffic shares one prefix, the rest is spread over 399. Returns the hot prefix's walk,
    where its requests went, the share of the others served by their owner, and the peak
    in-flight count of any backend."""
    backends = make_backends(*[1] * 8)
    balancer = build_balancer("prefix_affinity", backends, {"load_factor": load_factor})
    owners = {prefix: list(balancer.candidates(_prompt(prefix, 0))) for prefix in range(400)}
    service = random.Random(7)
    departures: list[tuple[int, int]] = []
    hot: Counter = Counter()
    cold_home = cold = peak = 0
    for tick in range(PICKS):
        while departures and departures[0][0] <= tick:
            backends[heapq.heappop(departures)[1]].inflight -= 1
        prefix = 0 if service.random() < 0.3 else service.randrange(1, 400)
        chosen = pick(balancer, _prompt(prefix, tick))
        if prefix == 0:
            hot[chosen.name] += 1
        else:
            cold += 1
            cold_home += chosen is owners[prefix][0]
        chosen.inflight += 1
        peak = max(peak, chosen.inflight)
        heapq.heappush(departures, (tick + math.ceil(service.expovariate(1 / 40)), backends.index(chosen)))
    return [backend.name for backend in owners[0]], hot, cold_home / cold, peak


@pytest.mark.parametrize("load_factor, at_home", [(1.25, 0.7), (2.0, 0.9)])
def test_prefix_affinity_spills_a_hot_prefix_along_its_walk_under_a_service_model(load_factor, at_home):
    """The hot prefix uses its owner most and spills to the next backends of its walk, in
    order, never across the whole pool; the other prefixes mostly stay home. A tighter
    bound moves more of them: with 5 in flight per backend, ceil(1.25 * mean) is often hit
    by chance alone."""
    walk, hot, cold_at_home, peak = _service_model(load_factor)
    assert hot.most_common(1)[0][0] == walk[0], hot
    assert set(hot) <= set(walk[:len(hot)]) and len(hot) < len(walk), (walk, hot)
    assert cold_at_home >= at_home, cold_at_home
    assert peak <= 2.5 * 5 * load_factor


def test_prefix_affinity_without_a_bound_piles_the_hot_prefix_on_one_backend():
    walk, hot, cold_at_home, peak = _service_model(None)
    assert set(hot) == {walk[0]} and cold_at_home == 1.0
    assert peak > 4 * 5  # 30% of the traffic against a fair share of 12.5%
