"""The real daemon against a hostile HipChat server: it stays up, never stalls, stays small.

Each misdeed of :mod:`tests.hostile_hipchat` is served once, then the server
behaves; the daemon must deliver the event within the wait clamp (trio's
mock clock, so a clamp of minutes costs nothing). The memory tests run the
daemon as a child process against the same server on the real clock and
read its peak RSS (``VmHWM``) from ``/proc``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from hipchatd import app as app_module
from hipchatd.clock import unix_now
from hipchatd.config import HipChatSettings, Secret
from hipchatd.delivery.budget import RESET_MARGIN
from hipchatd.delivery.hipchat import MAX_SERVER_WAIT, SENT_BODY_GRACE, HipChatClient, OutcomeKind
from hipchatd.delivery.lanes import BACKOFF_CAP
from hipchatd.delivery.render import Message
from hipchatd.delivery.routing import Target
from tests.conftest import classic_event, make_config, send_tcp
from tests.hostile_hipchat import (
    Behaviour,
    HostileHipChat,
    answer,
    drip_body,
    drip_headers,
    endless_body,
    huge_body,
    reset_mid_body,
    reset_mid_headers,
)
from tests.processes import STARTUP, Child

#: Seconds one attempt may take (the daemon's hipchat.timeout in these tests).
TIMEOUT = 10.0
#: The longest a lane may wait after one misdeed before its next attempt: a
#: clamped wait (plus the budget's margin), or a full backoff, whichever is longer.
LONGEST_WAIT = max(MAX_SERVER_WAIT + RESET_MARGIN, BACKOFF_CAP)
YEARS_AHEAD = 10 * 365 * 86400


def far_reset(prefix: str, limit: str = "500") -> Behaviour:
    """A 429 whose family is exhausted until a reset years ahead."""
    reset = str(int(unix_now()) + YEARS_AHEAD)
    headers = [(f"{prefix}-Limit", limit), (f"{prefix}-Remaining", "0"), (f"{prefix}-Reset", reset)]
    return answer(429, headers)


#: Misdeeds after which the event must still be delivered, by a later attempt.
FAILED_ATTEMPTS: dict[str, Any] = {
    "endless body": lambda: endless_body(500),
    "huge body": lambda: huge_body(503),
    "Retry-After 99999999999": lambda: answer(429, [("Retry-After", "99999999999")]),
    "Retry-After 400 digits": lambda: answer(429, [("Retry-After", "9" * 400)]),
    "Retry-After in 2099": lambda: answer(503, [("Retry-After", "Wed, 21 Oct 2099 07:28:00 GMT")]),
    "Retry-After negative": lambda: answer(429, [("Retry-After", "-5")]),
    "Retry-After garbage": lambda: answer(503, [("Retry-After", "soon\x7f")]),
    "rate reset years ahead": lambda: far_reset("X-Ratelimit"),
    "flood reset years ahead": lambda: far_reset("X-FloodControl"),
    "rate limit 0 on a 429": lambda: far_reset("X-Ratelimit", limit="0"),
    "flood limit 0 on a 429": lambda: far_reset("X-FloodControl", limit="0"),
    "garbage rate headers": lambda: answer(
        429,
        [("X-Ratelimit-Limit", "-1"), ("X-Ratelimit-Remaining", "NaN"), ("X-Ratelimit-Reset", "")],
    ),
    "reset mid-headers": reset_mid_headers,
    "reset mid-body": lambda: reset_mid_body(500),
    "slow drip headers": lambda: drip_headers(1.0),
    "slow drip error body": lambda: drip_body(500, 1.0),
}


@pytest.fixture
async def hostile(nursery: trio.Nursery) -> HostileHipChat:
    server = HostileHipChat()
    await nursery.start(server.serve)
    return server


async def start_daemon(nursery: trio.Nursery, server: HostileHipChat) -> app_module.App:
    config = make_config(server.url, timeout=TIMEOUT)
    started: app_module.App = await nursery.start(app_module.run, config)
    return started


def event(name: str) -> bytes:
    return json.dumps(classic_event(name=name, output=f"{name} is down")).encode()


@pytest.mark.parametrize("misdeed", list(FAILED_ATTEMPTS))
async def test_one_misdeed_then_the_event_is_delivered_within_the_clamp(
    nursery: trio.Nursery,
    hostile: HostileHipChat,
    autojump_clock: trio.testing.MockClock,
    misdeed: str,
) -> None:
    hostile.then(FAILED_ATTEMPTS[misdeed]())
    with trio.fail_after(3600):
        app = await start_daemon(nursery, hostile)
        await send_tcp(app.tcp_addresses[0], event("check_one"))
        await hostile.wait_delivered(1)
    first, *_, last = hostile.requests
    assert last.at - first.at <= TIMEOUT + LONGEST_WAIT
    [delivered] = hostile.delivered
    assert "check_one" in str(delivered["message"])


#: Misdeeds that, repeated for ever, would each have held a lane without end.
STALLING = [
    "Retry-After 99999999999",
    "Retry-After in 2099",
    "rate reset years ahead",
    "flood reset years ahead",
    "rate limit 0 on a 429",
    "reset mid-headers",
]
MAX_AGE = 900.0


async def test_a_server_that_never_behaves_still_lets_max_age_fire_on_time(
    nursery: trio.Nursery,
    hostile: HostileHipChat,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """However HipChat misbehaves, an event is dead-lettered as expired at max_age."""
    hostile.then(*(FAILED_ATTEMPTS[STALLING[i % len(STALLING)]]() for i in range(10_000)))
    with trio.fail_after(4 * MAX_AGE):
        config = make_config(hostile.url, timeout=TIMEOUT, max_age=MAX_AGE)
        app: app_module.App = await nursery.start(app_module.run, config)
        sent_at = trio.current_time()
        with capture_logs() as logs:
            await send_tcp(app.tcp_addresses[0], event("check_one"))
            await trio.sleep_until(sent_at + MAX_AGE - 1)
            assert app.spool.counts() == {"pending": 1, "dead": 0}
            while app.spool.counts()["dead"] < 1:
                await trio.sleep(0.1)
    waited = trio.current_time() - sent_at
    assert MAX_AGE <= waited <= MAX_AGE + 2
    assert app.spool.counts() == {"pending": 0, "dead": 1}
    assert hostile.delivered == []
    # It kept trying meanwhile: no wait the server named held the room past the clamp.
    assert len(hostile.requests) >= MAX_AGE // LONGEST_WAIT
    [expired] = [line for line in logs if line["event"] == "delivery.dead_lettered"]
    assert expired["reason"] == "expired"


#: Bytes the server may get written before the daemon stops reading: 64 KiB
#: read, plus what the loopback socket buffers hold (a few MiB at most).
WRITTEN_LIMIT = 16 * 1024 * 1024


@pytest.mark.parametrize("status", [200, 500])
@pytest.mark.parametrize("body", [endless_body, huge_body])
async def test_big_bodies_are_not_read_whole(
    nursery: trio.Nursery,
    hostile: HostileHipChat,
    autojump_clock: trio.testing.MockClock,
    body: Any,
    status: int,
) -> None:
    written: list[int] = []
    hostile.then(body(status, written=written))
    with trio.fail_after(3600):
        app = await start_daemon(nursery, hostile)
        await send_tcp(app.tcp_addresses[0], event("check_one"))
        while not written:
            await trio.sleep(0.1)
        if status != 200:
            await hostile.wait_delivered(1)
    assert written[0] < WRITTEN_LIMIT


@pytest.mark.parametrize(
    "misdeed",
    [
        # HipChat's own answer says delivered; what comes with it must not stop the lane.
        pytest.param(
            lambda: answer(
                204,
                [
                    ("X-Ratelimit-Limit", "0"),
                    ("X-Ratelimit-Remaining", "0"),
                    ("X-Ratelimit-Reset", str(int(unix_now()) + YEARS_AHEAD)),
                ],
            ),
            id="rate limit 0 on a 204",
        ),
        pytest.param(
            lambda: answer(
                204,
                [
                    ("X-FloodControl-Limit", "0"),
                    ("X-FloodControl-Remaining", "0"),
                    ("X-FloodControl-Reset", str(int(unix_now()) + YEARS_AHEAD)),
                ],
            ),
            id="flood limit 0 on a 204",
        ),
        pytest.param(lambda: endless_body(200), id="endless body on a 200"),
        pytest.param(lambda: drip_body(200, 1.0), id="slow drip body on a 200"),
    ],
)
async def test_a_delivered_answer_with_a_misdeed_does_not_stall_the_next_event(
    nursery: trio.Nursery,
    hostile: HostileHipChat,
    autojump_clock: trio.testing.MockClock,
    misdeed: Any,
) -> None:
    hostile.then(misdeed())
    with trio.fail_after(3600):
        app = await start_daemon(nursery, hostile)
        await send_tcp(app.tcp_addresses[0], event("check_one"))
        while not hostile.requests:
            await trio.sleep(0.1)
        sent_at = trio.current_time()
        await send_tcp(app.tcp_addresses[0], event("check_two"))
        await hostile.wait_delivered(1)
    assert len(hostile.requests) == 2  # the first was delivered once, never retried
    assert trio.current_time() - sent_at <= SENT_BODY_GRACE + LONGEST_WAIT
    [delivered] = hostile.delivered
    assert "check_two" in str(delivered["message"])


async def test_protocol_errors_are_logged_once_per_header_while_retrying(
    nursery: trio.Nursery, hostile: HostileHipChat, autojump_clock: trio.testing.MockClock
) -> None:
    hostile.then(*[answer(503, [("Retry-After", "99999999999")]) for _ in range(6)])
    with capture_logs() as logs, trio.fail_after(3600):
        app = await start_daemon(nursery, hostile)
        await send_tcp(app.tcp_addresses[0], event("check_one"))
        await hostile.wait_delivered(1)
    warnings = [e for e in logs if e["event"] == "hipchat.protocol_error"]
    failures = [e for e in logs if e["event"] == "delivery.failed"]
    assert len(failures) == 6
    assert 1 <= len(warnings) < len(failures)
    assert warnings[0]["header"] == "Retry-After"
    assert warnings[0]["value"] == "99999999999"
    assert all(failure["retry_in"] <= BACKOFF_CAP for failure in failures)


# --- the token --------------------------------------------------------------------------------

NEWLINE_TOKEN = "hostile-token-5f4e3d2c1b0a\n"
ROOM = Target(kind="room", name="ops", notify=True, username="sensu", message_format="text")
MESSAGE = Message(text="x", color="red", notify=True, message_format="text", sender="sensu")


@pytest.mark.parametrize("api_version", ["v1", "v2"])
async def test_a_token_with_a_newline_fails_as_an_outcome_without_showing_it(
    hostile: HostileHipChat, api_version: str
) -> None:
    # What a token read with its newline did before load_config stripped it.
    settings = HipChatSettings(
        api_token=Secret(NEWLINE_TOKEN), server_url=hostile.url, api_version=api_version
    )
    with trio.fail_after(30):
        async with httpx.AsyncClient() as http:
            outcome = await HipChatClient(settings, http).send(ROOM, MESSAGE)
    if api_version == "v1":
        # In a form body the newline is percent-encoded: sendable, and refused by HipChat.
        assert outcome.kind is OutcomeKind.SENT
        assert b"auth_token=hostile-token-5f4e3d2c1b0a%0A" in hostile.requests[0].body
        return
    assert outcome.kind is OutcomeKind.TRANSPORT_ERROR
    assert outcome.error == "LocalProtocolError: Illegal header value b'Bearer [REDACTED]'"
    assert "5f4e3d2c1b0a" not in repr(outcome)


async def test_the_daemon_logs_no_form_of_a_bad_token(
    nursery: trio.Nursery, hostile: HostileHipChat, autojump_clock: trio.testing.MockClock
) -> None:
    config = make_config(hostile.url, timeout=TIMEOUT, api_token=NEWLINE_TOKEN)
    with capture_logs() as logs, trio.fail_after(3600):
        app: app_module.App = await nursery.start(app_module.run, config)
        await send_tcp(app.tcp_addresses[0], event("check_one"))
        while sum(e["event"] == "delivery.failed" for e in logs) < 3:
            await trio.sleep(1)
    failures = [e for e in logs if e["event"] == "delivery.failed"]
    assert failures[0]["error"] == "LocalProtocolError: Illegal header value b'Bearer [REDACTED]'"
    assert "5f4e3d2c1b0a" not in repr(logs)
    assert hostile.requests == []


# --- memory: the daemon as a child process -----------------------------------------------------

#: Peak RSS (MiB) the daemon may reach while HipChat sends endless or 100 MiB bodies.
#: Reading them whole took 725 MB to 1.18 GB; bounded reads leave the daemon near its idle size.
PEAK_RSS_LIMIT_MB = 150


@pytest.mark.parametrize(
    ("name", "misdeed"),
    [("endless", lambda: endless_body(500)), ("huge", lambda: huge_body(503))],
)
async def test_peak_memory_stays_bounded_against_big_bodies(
    nursery: trio.Nursery, tmp_path: Path, name: str, misdeed: Any
) -> None:
    server = HostileHipChat()
    await nursery.start(server.serve)
    attempts = 4
    server.then(*[misdeed() for _ in range(attempts)])
    config = {
        # A timeout of 3 s, as in the campaign: a body read whole grew for all of it.
        "hipchat": {"api_token": "memory-token-0123456789", "server_url": server.url, "timeout": 3},
        "hipchatd": {
            "tcp": {"host": "127.0.0.1", "port": 0},
            "udp": None,
            "state_dir": str(tmp_path / "state"),
        },
    }
    path = tmp_path / "hipchatd.json"
    path.write_text(json.dumps(config))
    child = Child("serve", "--config", str(path))
    try:
        started = await trio.to_thread.run_sync(child.wait_logged, "daemon.started")
        host, port = started["tcp"][0].rsplit(":", 1)
        await send_tcp((host, int(port)), event("check_memory"))
        with trio.fail_after(10 * STARTUP):
            await server.wait_delivered(1)
        peak = child.memory()["peak_mb"]
    finally:
        child.close()
    assert len(server.requests) == attempts + 1
    print(f"hostile {name} body: daemon peak RSS {peak:.1f} MiB")
    assert peak < PEAK_RSS_LIMIT_MB, f"peak RSS {peak:.1f} MiB"
