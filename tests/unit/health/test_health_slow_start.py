import pytest

from lbd.health.slow_start import SlowStart, ramp


@pytest.mark.parametrize(("elapsed", "factor"), [
    (0.0, 0.1), (2.5, 0.325), (5.0, 0.55), (7.5, 0.775), (9.999, 0.1 + 0.9 * 0.9999), (10.0, 1.0), (60.0, 1.0),
])
def test_ramp_is_linear_from_the_floor_to_one(elapsed, factor) -> None:
    assert ramp(elapsed, 10.0) == pytest.approx(factor, abs=1e-12)


def test_a_zero_window_is_off() -> None:
    assert ramp(0.0, 0.0) == 1.0
    slow = SlowStart(0.0)
    slow.start(100.0)
    assert slow.factor(100.0) == 1.0 and not slow.active(100.0)


def test_slow_start_ramps_from_its_start() -> None:
    slow = SlowStart(30.0, floor=0.25)
    assert slow.factor(0.0) == 1.0  # not started
    slow.start(100.0)
    assert [slow.factor(t) for t in (100.0, 115.0, 130.0)] == [0.25, 0.625, 1.0]
    assert slow.active(129.9) and not slow.active(130.0)
    slow.stop()
    assert slow.factor(110.0) == 1.0


def test_floor_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SlowStart(10.0, floor=0.0)
