import pytest

from lbd.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize("text, seconds", [
    ("250ms", 0.25), ("2s", 2.0), ("1m", 60.0), ("1h", 3600.0), ("1m30s", 90.0), ("1.5s", 1.5),
    ("500us", 0.0005), (3, 3.0), (0.1, 0.1), ("0s", 0.0),
])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["2 seconds", "ms", "-1s", "", "1x", True, None, [1]])
def test_bad_durations_say_what_is_accepted(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize("text, size", [
    ("64KiB", 65536), ("1MiB", 1048576), ("1GiB", 1024**3), ("1MB", 10**6), ("512", 512), (512, 512), ("2k", 2000),
])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["64 KiBs", "lots", "-1", True, 1.5])
def test_bad_sizes(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize("seconds", [0.25, 2.0, 60.0, 3600.0, 0.0015])
def test_format_duration_round_trips(seconds):
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_format_size_round_trips():
    for size in (65536, 1024**3, 1000):
        assert parse_size(format_size(size)) == size
