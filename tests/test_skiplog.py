"""SkipLog: one INFO line per check per period, a shared line budget, a bounded table.

The limiter is given the time, so these tests step it by hand; only ``run``
reads trio's clock.
"""

from __future__ import annotations

import tracemalloc

import trio
import trio.testing

from hipchatd.clock import unix_now
from hipchatd.ingest.skiplog import (
    LINES_PER_WINDOW,
    MAX_CHECKS_TRACKED,
    MIN_PERIOD,
    WINDOW,
    SkipLog,
    check_key,
)
from tests.logcapture import capture_logs

DISK = check_key(("", "web-01", "disk"))
LOAD = check_key(("", "web-01", "load"))


def _shown(limiter: SkipLog, key: bytes, times: range, period: int = 1800) -> list[int | None]:
    return [limiter.admit(key, period, float(t)) for t in times]


def test_one_line_per_check_per_period_with_the_count_since_the_last() -> None:
    limiter = SkipLog()
    # One skip a minute for an hour and a bit: a line at 0, 1800 and 3600.
    shown = _shown(limiter, DISK, range(0, 3601, 60))
    assert [(t * 60, n) for t, n in enumerate(shown) if n is not None] == [
        (0, 0),
        (1800, 29),
        (3600, 29),
    ]


def test_a_second_check_gets_its_own_line() -> None:
    limiter = SkipLog()
    assert limiter.admit(DISK, 1800, 0.0) == 0
    assert limiter.admit(DISK, 1800, 1.0) is None
    assert limiter.admit(LOAD, 1800, 2.0) == 0
    assert limiter.admit(LOAD, 1800, 3.0) is None
    assert limiter.admit(DISK, 1800, 1800.0) == 1
    assert len(limiter) == 2


def test_the_period_is_the_one_the_current_skip_names() -> None:
    """A reload (or the event) can change a check's reset: the next skip is judged by it."""
    limiter = SkipLog()
    assert limiter.admit(DISK, 1800, 0.0) == 0
    assert limiter.admit(DISK, 1800, 300.0) is None
    assert limiter.admit(DISK, 300, 300.0) == 1


def test_a_period_below_the_floor_is_raised_to_it() -> None:
    limiter = SkipLog()
    assert MIN_PERIOD == 60
    assert _shown(limiter, DISK, range(0, 121, 10), period=0) == [0] + [None] * 5 + [5] + [
        None
    ] * 5 + [5]


def test_the_check_skipped_least_recently_is_forgotten_first() -> None:
    limiter = SkipLog(max_checks=2)
    third = check_key(("", "web-01", "ntp"))
    assert limiter.admit(DISK, 1800, 0.0) == 0
    assert limiter.admit(LOAD, 1800, 1.0) == 0
    assert limiter.admit(DISK, 1800, 2.0) is None  # DISK is now the most recent
    assert limiter.admit(third, 1800, 3.0) == 0  # LOAD goes
    assert len(limiter) == 2
    assert limiter.admit(DISK, 1800, 4.0) is None  # still remembered
    assert limiter.admit(LOAD, 1800, 5.0) == 0  # forgotten: a first line again


def test_the_line_budget_holds_back_lines_and_one_line_reports_them() -> None:
    limiter = SkipLog(lines_per_window=3)
    keys = [check_key(("", f"host-{i}", "disk")) for i in range(10)]
    with capture_logs() as logs:
        assert [limiter.admit(key, 1800, 0.0) for key in keys] == [0, 0, 0] + [None] * 7
        limiter.flush(WINDOW - 1)
        assert logs == []  # the window has not ended
        limiter.flush(WINDOW)
        limiter.flush(WINDOW + 1)  # reported once
    [summary] = logs
    assert summary == {
        "event": "event.skipped_suppressed",
        "log_level": "info",
        "suppressed": 7,
        "window": WINDOW,
    }
    # A check held back by the budget has its line at its next skip, with its count.
    assert limiter.admit(keys[5], 1800, WINDOW + 2) == 1
    assert limiter.admit(keys[0], 1800, WINDOW + 3) is None  # its period runs


def test_lines_and_memory_stay_bounded_under_100000_distinct_checks() -> None:
    """A flood of distinct checks with long names: the table keeps its size, lines their budget.

    One skip per millisecond for 100 s: two budget windows.
    """
    limiter = SkipLog()
    long_name = "x" * 1000
    lines = 0
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100_000):
            key = check_key(("ns", f"{long_name}-{i}", long_name))
            lines += limiter.admit(key, 1800, i / 1000) is not None
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(limiter) == MAX_CHECKS_TRACKED
    # The names are not kept: a few hundred bytes per check tracked, far below 2 KB of names.
    assert grown < MAX_CHECKS_TRACKED * 400
    assert lines == 2 * LINES_PER_WINDOW  # the windows opening at 0 s and at 60 s


def test_check_keys_are_fixed_size_and_tell_checks_apart() -> None:
    keys = {
        check_key(("", "a/b", "c")),
        check_key(("", "a", "b/c")),
        check_key(("a", "", "b/c")),
        check_key(("", "a\x00b", "c")),
        check_key(("", "a", "\x00b/c")),
        check_key(("", "\ud800", "c")),  # a lone surrogate, as JSON allows
    }
    assert len(keys) == 6
    assert {len(key) for key in keys} == {16}
    assert check_key(("", "a", "b")) == check_key(("", "a", "b"))


async def test_run_reports_held_back_lines_once_the_window_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = SkipLog(lines_per_window=1)
    with trio.fail_after(600), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(limiter.run)
            now = unix_now()
            assert limiter.admit(DISK, 1800, now) == 0
            assert limiter.admit(LOAD, 1800, now) is None
            await trio.sleep(WINDOW + WINDOW / 6)
            nursery.cancel_scope.cancel()
    assert [(line["event"], line["suppressed"]) for line in logs] == [
        ("event.skipped_suppressed", 1)
    ]
