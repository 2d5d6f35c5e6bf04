"""End to end: the real daemon, real sockets on loopback, the real emulator over HTTP."""

from __future__ import annotations

import json

import pytest
import trio

from hipchatd.emulator import Emulator
from tests.conftest import (
    TOKEN,
    StartDaemon,
    classic_event,
    length_prefixed,
    load_fixture,
    ndjson,
    represented,
    send_tcp,
    send_udp,
    wait_until,
)
from tests.logcapture import capture_logs

pytestmark = pytest.mark.usefixtures("emulator")


def _event(name: str, status: int = 2, room: object = None) -> dict[str, object]:
    check: dict[str, object] = {"name": name, "status": status, "output": f"{name} is down"}
    if room is not None:
        check["hipchat"] = {"room": room}
    return classic_event(**check)


@pytest.mark.parametrize("api_version", ["v1", "v2"])
async def test_tcp_write_and_close_delivers(
    start_daemon: StartDaemon, emulator: Emulator, api_version: str
) -> None:
    """Sensu's own behaviour: one compact event, no delimiter, then close."""
    with trio.fail_after(10):
        app = await start_daemon(api_version=api_version)
        await send_tcp(
            app.tcp_addresses[0], json.dumps(load_fixture("classic-critical.json")).encode()
        )
        await emulator.wait_for_messages(1)
    [msg] = emulator.messages
    assert msg.api_version == api_version
    assert msg.room == "sensu"
    assert "CRITICAL" in msg.message
    assert "sensu.test.local/testing" in msg.message
    assert "THIS IS AN ERROR" in msg.message
    assert msg.color == "red"
    assert msg.notify is False


async def test_go_event_pretty_printed_is_delivered(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    with trio.fail_after(10):
        app = await start_daemon()
        event = load_fixture("go-warning.json")
        # The sample is the 423rd occurrence: handle_when would hold it back as a repeat.
        event["check"]["occurrences"] = 1
        payload = json.dumps(event, indent=2).encode()
        await send_tcp(app.tcp_addresses[0], payload)
        await emulator.wait_for_messages(1)
    [msg] = emulator.messages
    assert "WARNING" in msg.message
    assert "70faa7c58706/helloworld" in msg.message
    assert msg.color == "yellow"


async def test_ndjson_on_one_connection(start_daemon: StartDaemon, emulator: Emulator) -> None:
    with trio.fail_after(10):
        app = await start_daemon()
        await send_tcp(app.tcp_addresses[0], ndjson(_event(f"check-{i}") for i in range(3)))
        await wait_until(lambda: represented(emulator) >= 3)
    text = "\n".join(m.message for m in emulator.messages)
    assert all(f"check-{i}" in text for i in range(3))
    assert represented(emulator) == 3


async def test_length_prefixed_frames(start_daemon: StartDaemon, emulator: Emulator) -> None:
    with trio.fail_after(10):
        app = await start_daemon()
        await send_tcp(app.tcp_addresses[0], length_prefixed(_event(f"len-{i}") for i in range(2)))
        await wait_until(lambda: represented(emulator) >= 2)
    text = "\n".join(m.message for m in emulator.messages)
    assert all(f"len-{i}" in text for i in range(2))
    assert represented(emulator) == 2


async def test_udp_datagram(start_daemon: StartDaemon, emulator: Emulator) -> None:
    with trio.fail_after(10):
        app = await start_daemon()
        assert app.udp_address is not None
        await send_udp(app.udp_address, json.dumps(_event("via-udp")).encode())
        await emulator.wait_for_messages(1)
    assert "via-udp" in emulator.messages[0].message
    assert app.metrics.value("hipchatd_events_received_total", transport="udp") == 1


@pytest.mark.parametrize("api_version", ["v1", "v2"])
async def test_awkward_room_names_arrive_intact(
    start_daemon: StartDaemon, emulator: Emulator, api_version: str
) -> None:
    rooms = ["my room", "ops/alerts", "#x", "a+b", "Café ☕"]
    with trio.fail_after(10):
        app = await start_daemon(api_version=api_version)
        await send_tcp(app.tcp_addresses[0], json.dumps(_event("rooms", room=rooms)).encode())
        await emulator.wait_for_messages(len(rooms))
    assert sorted(m.room or "" for m in emulator.messages) == sorted(rooms)


async def test_bad_input_does_not_hurt_good_input(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    with trio.fail_after(10), capture_logs() as logs:
        app = await start_daemon()
        address = app.tcp_addresses[0]
        await send_tcp(address, b"THIS IS NOT JSON, it is only_check_output text")
        await send_tcp(address, b'{"check": {"status": 2}}')
        await send_tcp(address, b'{"a": "\xff\xfe"}')
        await send_tcp(address, b'{"truncated": ')
        # Same connection: a bad line between two good ones.
        good = json.dumps(_event("first")).encode()
        await send_tcp(address, good + b"\n{oops}\n" + json.dumps(_event("second")).encode())
        await wait_until(lambda: represented(emulator) >= 2)
    text = "\n".join(m.message for m in emulator.messages)
    assert "first" in text
    assert "second" in text
    assert represented(emulator) == 2
    rejected = [entry for entry in logs if entry["event"] == "input.rejected"]
    reasons = " | ".join(entry["reason"] for entry in rejected)
    assert len(rejected) == 5, reasons
    assert all(entry["log_level"] == "warning" and "peer" in entry for entry in rejected)
    assert "UTF-8" in reasons
    assert "not a Sensu event" in reasons
    m = app.metrics
    assert m.value("hipchatd_events_rejected_total", reason="not_event") == 1
    assert m.value("hipchatd_events_rejected_total", reason="not_utf8") == 1
    assert m.value("hipchatd_events_rejected_total", reason="invalid_json") == 2
    assert m.value("hipchatd_events_rejected_total", reason="truncated") == 1


async def test_frame_too_large_closes_connection(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    with trio.fail_after(10), capture_logs() as logs:
        app = await start_daemon(max_frame_bytes=4096)
        await send_tcp(app.tcp_addresses[0], b'{"check": {"output": "' + b"x" * 10_000 + b'"}}')
        await send_tcp(app.tcp_addresses[0], json.dumps(_event("small")).encode())
        await emulator.wait_for_messages(1)
    assert "small" in emulator.messages[0].message
    assert app.metrics.value("hipchatd_events_rejected_total", reason="frame_too_large") == 1
    assert any(e["event"] == "input.rejected" and "max_frame_bytes" in e["reason"] for e in logs)


async def test_idle_peer_is_closed_after_idle_timeout(
    start_daemon: StartDaemon, emulator: Emulator, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(120), capture_logs() as logs:
        app = await start_daemon(idle_timeout=30.0)
        stream = await trio.open_tcp_stream(*app.tcp_addresses[0])
        started = trio.current_time()
        await stream.send_all(b'{"partial": ')
        # The daemon closes its side: our read sees EOF.
        assert await stream.receive_some(10) == b""
        elapsed = trio.current_time() - started
        await stream.aclose()
    assert 30.0 <= elapsed < 31.0
    [entry] = [e for e in logs if e["event"] == "connection.timed_out"]
    assert entry["idle_timeout"] == 30.0
    assert entry["nbytes"] == len(b'{"partial": ')


async def test_slow_hipchat_times_out_after_timeout_others_unaffected(
    start_daemon: StartDaemon, emulator: Emulator, autojump_clock: trio.testing.MockClock
) -> None:
    emulator.room_latency["slow"] = 60.0
    with trio.fail_after(300), capture_logs() as logs:
        app = await start_daemon(timeout=10.0)
        started = trio.current_time()
        await send_tcp(
            app.tcp_addresses[0], json.dumps(_event("lag", room=["slow", "ops"])).encode()
        )
        await emulator.wait_for_messages(1)
        fast_done = trio.current_time() - started
        while not any(e["event"] == "delivery.failed" for e in logs):
            await trio.sleep(0.5)
        failed_at = trio.current_time() - started
    assert emulator.messages[0].room == "ops"
    assert fast_done < 1.0
    [timeout] = [e for e in logs if e["event"] == "delivery.failed"]
    assert timeout["outcome"] == "timeout"
    assert timeout["room"] == "slow"
    assert timeout["retry_in"] >= 0
    assert 10.0 <= failed_at < 11.0
    assert app.metrics.value("hipchatd_notifications_failed_total", reason="timeout") == 1


async def test_full_spool_refuses_with_error(
    start_daemon: StartDaemon, emulator: Emulator, autojump_clock: trio.testing.MockClock
) -> None:
    emulator.latency = 5.0
    with trio.fail_after(60), capture_logs() as logs:
        app = await start_daemon(max_spool_events=1)
        await send_tcp(app.tcp_addresses[0], json.dumps(_event("one")).encode())
        await send_tcp(app.tcp_addresses[0], json.dumps(_event("two")).encode())
        await emulator.wait_for_messages(1)
    [refused] = [e for e in logs if e["event"] == "event.refused"]
    assert refused["log_level"] == "error"
    assert refused["check"] == "two"
    assert refused["reason"] == "spool full"
    assert app.metrics.value("hipchatd_events_rejected_total", reason="spool_full") == 1


async def test_filtered_events_are_skipped_and_counted(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    ok = _event("fine", status=0)
    silenced = _event("hushed")
    silenced["silenced"] = True
    with trio.fail_after(10), capture_logs() as logs:
        app = await start_daemon()
        for doc in (ok, silenced, _event("loud")):
            await send_tcp(app.tcp_addresses[0], json.dumps(doc).encode())
        await emulator.wait_for_messages(1)
    assert "loud" in emulator.messages[0].message
    skipped = {e["reason"] for e in logs if e["event"] == "event.skipped"}
    assert skipped == {"status_ok", "silenced"}


async def test_token_never_logged(
    emulator: Emulator, start_daemon: StartDaemon, autojump_clock: trio.testing.MockClock
) -> None:
    """Every captured log line, rendered, is free of the token: failures included."""
    emulator.fail_next(1, 500)
    with trio.fail_after(10), capture_logs() as logs:
        app = await start_daemon(api_version="v1")
        await send_tcp(app.tcp_addresses[0], json.dumps(_event("one")).encode())
        await send_tcp(app.tcp_addresses[0], json.dumps(_event("two")).encode())
        await emulator.wait_for_messages(1)
        await trio.sleep(0.2)
    rendered = [json.dumps(e, default=str) for e in logs]
    assert any(e["event"] == "delivery.failed" for e in logs)
    assert rendered
    assert not [line for line in rendered if TOKEN in line]


async def test_lines_name_their_connection_and_their_event(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    """A connection's lines carry its peer and conn_id; an event's, delivery included, its id."""
    emulator.fail_next(1, 500)
    event = _event("named", room=["ops", "dev"])
    event["id"] = "evt-named"
    with trio.fail_after(10), capture_logs() as logs:
        app = await start_daemon(max_targets_per_event=1)
        await send_tcp(app.tcp_addresses[0], b"{oops}\n" + json.dumps(event).encode())
        await wait_until(lambda: any(e["event"] == "event.delivered" for e in logs))
    [rejected] = [e for e in logs if e["event"] == "input.rejected"]
    [refused] = [e for e in logs if e["event"] == "event.targets_refused"]
    assert rejected["peer"].startswith("127.0.0.1:")
    assert (refused["peer"], refused["conn_id"]) == (rejected["peer"], rejected["conn_id"])
    assert "event_id" not in rejected
    assert refused["event_id"] == "evt-named"
    [failed] = [e for e in logs if e["event"] == "delivery.failed"]
    [delivered] = [e for e in logs if e["event"] == "event.delivered"]
    assert failed["event_id"] == delivered["event_id"] == "evt-named"
    # A lane serves every connection: it carries none of their context.
    assert not {"peer", "conn_id"} & (failed.keys() | delivered.keys())
