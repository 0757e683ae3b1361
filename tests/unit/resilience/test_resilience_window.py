from lbd.resilience.window import RollingWindow


def test_counts_each_field_within_the_window() -> None:
    window = RollingWindow(10.0, fields=2)
    window.add(100.0, 0)
    window.add(100.5, 0, 3)
    window.add(101.0, 1)
    assert (window.total(101.0, 0), window.total(101.0, 1)) == (4, 1)


def test_an_event_leaves_the_window_when_its_bucket_is_window_old() -> None:
    window = RollingWindow(10.0, fields=1)  # 1s buckets
    window.add(100.0, 0)
    window.add(103.0, 0)
    assert window.total(109.999, 0) == 2
    assert window.total(110.0, 0) == 1
    assert window.total(112.999, 0) == 1
    assert window.total(113.0, 0) == 0


def test_a_jump_past_the_whole_window_clears_it() -> None:
    window = RollingWindow(10.0, fields=1)
    for second in range(10):
        window.add(100.0 + second, 0)
    assert window.total(109.0, 0) == 10
    assert window.total(125.0, 0) == 0
    window.add(125.0, 0)
    assert window.total(125.0, 0) == 1


def test_clear() -> None:
    window = RollingWindow(1.0, fields=2)
    window.add(5.0, 1, 7)
    window.clear()
    assert window.total(5.0, 1) == 0
