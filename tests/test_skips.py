"""End to end: why nothing happened, and Classic's repeat settings, through the real daemon.

The daemon runs in this process against the real emulator over loopback,
with its log configured as ``hipchatd`` configures it (JSON lines at the
default level, ``info``), so a test reads what an operator would see.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
import trio
import trio.testing

from hipchatd.app import App
from hipchatd.emulator import Emulator
from hipchatd.ingest.skiplog import LINES_PER_WINDOW, MIN_PERIOD, WINDOW
from hipchatd.ops import logconfig
from tests.conftest import StartDaemon, classic_event, send_tcp, wait_until

pytestmark = pytest.mark.usefixtures("emulator")


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The daemon's log as rendered at the default level (``--log-level`` unset)."""
    out = io.StringIO()
    logconfig.configure(json=True, stream=out, cache=False)
    yield out
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def _lines(out: io.StringIO, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    return [line for line in lines if line["event"] == event]


async def _send(app: App, *documents: dict[str, Any]) -> None:
    for document in documents:
        await send_tcp(app.tcp_addresses[0], json.dumps(document).encode())


def _skipped(app: App, reason: str) -> float:
    return app.metrics.value("hipchatd_events_skipped_total", reason=reason)


async def test_a_skipped_events_reason_shows_at_the_default_level_once_per_check_per_period(
    start_daemon: StartDaemon,
    emulator: Emulator,
    log_lines: io.StringIO,
    autojump_clock: trio.testing.MockClock,
) -> None:
    fine = classic_event(name="fine", status=0)
    hushed = classic_event(name="hushed")
    hushed["silenced"] = True
    with trio.fail_after(3600):
        app = await start_daemon()
        await _send(app, fine, fine, hushed, fine, classic_event(name="loud"))
        await emulator.wait_for_messages(1)
        await wait_until(lambda: _skipped(app, "status_ok") == 3 and _skipped(app, "silenced"))
        await trio.sleep(1800)  # the default handle_when.reset: the next skip has its line
        await _send(app, fine)
        await wait_until(lambda: _skipped(app, "status_ok") == 4)
    assert "loud" in emulator.messages[0].message
    shown = [
        (line["level"], line["check"], line["reason"], line["skipped_since_last"], line["period"])
        for line in _lines(log_lines, "event.skipped")
    ]
    assert shown == [
        ("info", "fine", "status_ok", 0, 1800),
        ("info", "hushed", "silenced", 0, 1800),
        ("info", "fine", "status_ok", 2, 1800),
    ]
    assert all(line["source"] == "sensu.test.local" for line in _lines(log_lines, "event.skipped"))


async def test_a_flood_of_skipped_checks_is_held_to_the_line_budget(
    start_daemon: StartDaemon, log_lines: io.StringIO, autojump_clock: trio.testing.MockClock
) -> None:
    """Every skip is counted; the lines past the budget are reported in one line."""
    flood = [classic_event(name=f"check-{i}", status=0) for i in range(LINES_PER_WINDOW + 20)]
    with trio.fail_after(3600):
        app = await start_daemon()
        await _send(app, *flood)
        await wait_until(lambda: _skipped(app, "status_ok") == len(flood))
        await trio.sleep(WINDOW + WINDOW / 6)
    assert len(_lines(log_lines, "event.skipped")) == LINES_PER_WINDOW
    [summary] = _lines(log_lines, "event.skipped_suppressed")
    assert (summary["level"], summary["suppressed"]) == ("info", 20)
    assert not {"check", "source", "peer"} & summary.keys()


def _nth(n: int, **check: Any) -> dict[str, Any]:
    """The Classic sample at its ``n``-th occurrence, its check asking for 3 (sensu-plugin)."""
    event = classic_event(occurrences=3, output=f"occurrence {n}", **check)
    event["occurrences"] = event["occurrences_watermark"] = n
    return event


@pytest.mark.parametrize(
    ("setting", "check"),
    [(True, {}), (False, {"hipchat": {"legacy_occurrences": True}})],
    ids=["setting", "check-override"],
)
async def test_legacy_occurrences_holds_back_occurrences_below_the_threshold(
    start_daemon: StartDaemon,
    emulator: Emulator,
    log_lines: io.StringIO,
    setting: bool,
    check: dict[str, Any],
) -> None:
    with trio.fail_after(30):
        app = await start_daemon(legacy_occurrences=setting)
        await _send(app, _nth(1, **check), _nth(2, **check))
        await wait_until(lambda: _skipped(app, "below_occurrences") == 2)
        await _send(app, _nth(3, **check))
        await emulator.wait_for_messages(1)
    [message] = emulator.messages
    assert "occurrence 3" in message.message
    [line] = _lines(log_lines, "event.skipped")
    assert (line["reason"], line["occurrences"], line["skipped_since_last"]) == (
        "below_occurrences",
        1,
        0,
    )
    # The sample's refresh is 10 s, raised to the skip log's floor.
    assert line["period"] == MIN_PERIOD


async def test_without_legacy_occurrences_the_first_occurrence_is_delivered(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    """Off by default: handle_when's defaults decide, and check.occurrences is not read."""
    with trio.fail_after(30):
        app = await start_daemon()
        await _send(app, _nth(1))
        await emulator.wait_for_messages(1)
    [message] = emulator.messages
    assert "occurrence 1" in message.message
    assert _skipped(app, "below_occurrences") == 0
