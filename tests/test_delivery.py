"""Durable delivery end to end: the real daemon, the real emulator, trio's mock clock.

Retries, HipChat's rate-limit headers, dead letters, expiry and the alert
storm, each against a real HipChat emulator over loopback.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from hipchatd.delivery.lanes import BACKOFF_CAP, backoff_delay
from hipchatd.emulator import Emulator
from tests.conftest import (
    TOKEN,
    StartDaemon,
    classic_event,
    make_config,
    send_tcp,
)
from tests.conftest import (
    represented as _represented,
)
from tests.conftest import (
    wait_until as _wait_until,
)

pytestmark = pytest.mark.usefixtures("emulator")


def _event(check: str, status: int = 2, room: object = None, client: str = "web-1") -> bytes:
    attrs: dict[str, Any] = {"name": check, "status": status, "output": f"{check} output"}
    if room is not None:
        attrs["hipchat"] = {"room": room}
    event = classic_event(**attrs)
    event["client"]["name"] = client
    event["id"] = f"{client}-{check}-{status}"
    if status == 0:
        event["action"] = "resolve"
        event["check"]["history"] = ["2", "0"]
    return json.dumps(event).encode()


async def test_backoff_is_full_jitter_capped() -> None:
    rng = random.Random(7)
    assert all(0.0 <= backoff_delay(1, rng) <= 1.0 for _ in range(200))
    assert all(0.0 <= backoff_delay(3, rng) <= 4.0 for _ in range(200))
    delays = [backoff_delay(30, rng) for _ in range(500)]
    assert max(delays) <= BACKOFF_CAP
    # Full jitter spreads over the whole range, not around the ceiling.
    assert min(delays) < BACKOFF_CAP / 4
    assert max(delays) > BACKOFF_CAP * 3 / 4


async def test_hipchat_down_ten_minutes_then_everything_arrives(
    start_daemon: StartDaemon, emulator: Emulator, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(3600), capture_logs() as logs:
        app = await start_daemon()
        emulator.set_down(True)
        for i in range(5):
            await send_tcp(app.tcp_addresses[0], _event(f"disk-{i}"))
        await trio.sleep(600)
        assert emulator.messages == []
        emulator.set_down(False)
        await _wait_until(lambda: _represented(emulator) >= 5, step=1.0)
        await _wait_until(lambda: app.spool.counts()["pending"] == 0)
    text = "\n".join(m.message for m in emulator.messages)
    assert all(f"disk-{i}" in text for i in range(5))
    assert app.spool.counts() == {"pending": 0, "dead": 0}
    retries = [e for e in logs if e["event"] == "delivery.failed"]
    assert retries
    assert all(e["outcome"] == "transport_error" for e in retries)
    assert all(e["retry_in"] <= BACKOFF_CAP for e in retries)
    delivered = [e for e in logs if e["event"] == "event.delivered"]
    assert len(delivered) == 5
    assert all(e["attempts"] > 1 for e in delivered)


async def test_server_errors_are_retried_to_success(
    start_daemon: StartDaemon, emulator: Emulator, autojump_clock: trio.testing.MockClock
) -> None:
    emulator.fail_next(3, 503)
    with trio.fail_after(600), capture_logs() as logs:
        app = await start_daemon()
        await send_tcp(app.tcp_addresses[0], _event("api"))
        await emulator.wait_for_messages(1)
        await _wait_until(lambda: any(e["event"] == "event.delivered" for e in logs))
    assert emulator.count_status(503) == 3
    [summary] = [e for e in logs if e["event"] == "event.delivered"]
    assert summary["attempts"] == 4
    failures = [e for e in logs if e["event"] == "delivery.failed"]
    assert [e["status"] for e in failures] == [503, 503, 503]
    assert app.spool.counts() == {"pending": 0, "dead": 0}


async def test_429_is_honoured_at_its_reset_time(
    start_daemon: StartDaemon, emulator: Emulator, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(900), capture_logs() as logs:
        app = await start_daemon()
        # One ordinary request first, so the emulator's 5-minute window is open.
        await send_tcp(app.tcp_addresses[0], _event("first"))
        await emulator.wait_for_messages(1)
        window_start = emulator.requests[0].time
        emulator.fail_next(1, 429)
        await send_tcp(app.tcp_addresses[0], _event("second"))
        await emulator.wait_for_messages(2)
        delivered_at = trio.current_time()
    assert emulator.count_status(429) == 1
    [limited] = [e for e in logs if e["event"] == "delivery.failed"]
    assert limited["outcome"] == "rate_limited"
    # The 5-minute window's reset, not a short backoff, decided when to retry.
    assert window_start + 299 <= delivered_at <= window_start + 303
    assert app.spool.counts()["dead"] == 0


async def test_permanent_error_is_dead_lettered_once(
    start_daemon: StartDaemon, emulator: Emulator, autojump_clock: trio.testing.MockClock
) -> None:
    emulator.auto_create_rooms = False
    with trio.fail_after(600), capture_logs() as logs:
        app = await start_daemon()
        await send_tcp(app.tcp_addresses[0], _event("ghost", room="no-such-room"))
        await send_tcp(app.tcp_addresses[0], _event("real", room="ops"))
        await emulator.wait_for_messages(1)
        await _wait_until(lambda: app.spool.counts()["dead"] == 1)
        await trio.sleep(300)
    assert [r.status for r in emulator.requests if "no-such-room" in r.path] == [404]
    [dead] = [e for e in logs if e["event"] == "delivery.dead_lettered"]
    assert dead["log_level"] == "error"
    assert dead["status"] == 404
    assert "not found" in dead["error"]
    assert dead["room"] == "no-such-room"
    [failed] = [e for e in logs if e["event"] == "event.failed"]
    assert failed["check"] == "ghost"
    assert app.spool.counts() == {"pending": 0, "dead": 1}
    assert emulator.messages[0].room == "ops"


async def test_max_age_expires_undeliverable_events(
    start_daemon: StartDaemon, emulator: Emulator, autojump_clock: trio.testing.MockClock
) -> None:
    emulator.set_down(True)
    with trio.fail_after(3600), capture_logs() as logs:
        app = await start_daemon(max_age=300.0)
        await send_tcp(app.tcp_addresses[0], _event("stale"))
        await _wait_until(lambda: app.spool.counts()["dead"] == 1, step=1.0)
        expired_after = trio.current_time()
    [dead] = [e for e in logs if e["event"] == "delivery.dead_lettered"]
    assert dead["reason"] == "expired"
    assert dead["error"]  # the last transport error is kept
    # Expiry has its own timer: at max_age, not at the end of a backoff.
    assert 300 <= expired_after <= 300 + 2
    assert app.spool.counts() == {"pending": 0, "dead": 1}


async def test_resolve_never_overtakes_its_alert(
    start_daemon: StartDaemon, emulator: Emulator, autojump_clock: trio.testing.MockClock
) -> None:
    emulator.room_latency["ops"] = 2.0
    with trio.fail_after(600):
        app = await start_daemon(room="ops")
        await send_tcp(app.tcp_addresses[0], _event("cpu", status=2))
        # The alert is in flight (the room answers after 2 s) when the resolve arrives.
        await trio.sleep(0.5)
        await send_tcp(app.tcp_addresses[0], _event("cpu", status=0))
        await _wait_until(lambda: _represented(emulator) >= 2)
    first = emulator.messages[0].message
    assert "CRITICAL" in first
    assert "RESOLVED" in emulator.messages[-1].message


async def test_alert_storm_is_shown_whole_within_the_budget(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """2,000 events over 200 checks into 20 rooms in 10 s; 100 requests / 300 s, 30 / room / min."""
    from hipchatd import app as app_module

    rooms = [f"team-{r}" for r in range(20)]
    emulator = Emulator(
        tokens=[TOKEN], rooms=rooms, rate_limit=100, flood_limit=30, auto_create_rooms=False
    )
    await nursery.start(emulator.serve, "127.0.0.1", 0)
    config = make_config(emulator.url, rate_limit=100, flood_limit=30)
    with trio.fail_after(3600), capture_logs():
        app = await nursery.start(app_module.run, config)
        address = app.tcp_addresses[0]
        first_event_at = trio.current_time()
        for i in range(2000):
            check = i % 200
            room = rooms[check % 20]
            status = 2 if i % 3 else 1
            await send_tcp(address, _event(f"check-{check}", status, room=room))
            if i % 100 == 99:
                # 100 events every half second: 2,000 within 10 s.
                await trio.sleep(0.5)
        await _wait_until(lambda: _represented(emulator) >= 2000, step=1.0)
        await _wait_until(lambda: app.spool.counts()["pending"] == 0)
    assert emulator.count_status(429) == 0
    assert len(emulator.requests) <= 100
    assert _represented(emulator) == 2000
    for room in rooms:
        assert _represented(emulator, room) == 100
    first_message_at = min(r.time for r in emulator.requests)
    assert first_message_at - first_event_at <= 2.0
    assert app.spool.counts() == {"pending": 0, "dead": 0}
