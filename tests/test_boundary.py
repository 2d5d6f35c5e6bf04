"""boundary.caught: a bug at a fault boundary is one ERROR line with its traceback, and a count."""

from __future__ import annotations

from structlog.testing import capture_logs

from hipchatd.boundary import caught
from hipchatd.metrics import INTERNAL_ERROR_PLACES, Metrics


def test_every_place_reads_zero_before_anything_is_caught() -> None:
    metrics = Metrics()
    for where in INTERNAL_ERROR_PLACES:
        assert (
            metrics.registry.get_sample_value("hipchatd_internal_errors_total", {"where": where})
            == 0.0
        )


def test_caught_logs_once_with_the_traceback_and_counts() -> None:
    metrics = Metrics()
    with capture_logs() as logs:
        try:
            raise ZeroDivisionError("a bug")
        except ZeroDivisionError:
            caught(metrics, "frame", peer="127.0.0.1:5000")
    assert len(logs) == 1
    line = logs[0]
    assert line["event"] == "internal_error.caught"
    assert line["log_level"] == "error"
    assert line["where"] == "frame"
    assert line["peer"] == "127.0.0.1:5000"
    assert line["exc_info"] is True
    assert metrics.value("hipchatd_internal_errors_total", where="frame") == 1.0
    assert metrics.value("hipchatd_internal_errors_total", where="lane") == 0.0
