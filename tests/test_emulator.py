"""The HipChat emulator: wire shapes, validation, room paths, limits and faults.

End-to-end tests run the real emulator on a loopback port and talk to it with
httpx; the pure helpers (target splitting, windows, validators) are tested
without a socket.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio
import trio.testing
import trustme
from structlog.testing import capture_logs

from hipchatd.clock import unix_now
from hipchatd.config import Config, HipChatSettings, Secret
from hipchatd.delivery.hipchat import HipChatClient, OutcomeKind, make_http_client
from hipchatd.delivery.render import Message
from hipchatd.delivery.routing import Target
from hipchatd.emulator import (
    ApiError,
    Emulator,
    FixedWindow,
    ReceivedMessage,
    Reject,
    TLSUnavailable,
    add_arguments,
    add_parser,
    decode_segment,
    echo_line,
    match_route,
    py2_repr,
    run,
    split_target,
    throwaway_tls,
    v1_error_body,
    v1_json,
    validate_v1_message,
)
from hipchatd.emulator.api import NOT_FOUND_TEXT, ROUTES
from hipchatd.emulator.server import (
    KEEPALIVE_IDLE_TIMEOUT,
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    REQUEST_READ_TIMEOUT,
)
from hipchatd.ops import probe

TOKEN = "emu-test-token-9f8e7d6c5b4a"
WRONG = "wrong-token-0a1b2c3d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
COLORS = ["yellow", "green", "red", "purple", "gray", "random"]
ROOT = Path(__file__).resolve().parent.parent

StartEmulator = Callable[..., Awaitable[Emulator]]


@pytest.fixture
async def start(nursery: trio.Nursery) -> StartEmulator:
    """Start an Emulator (keyword options; TOKEN by default) on an ephemeral port."""

    async def _start(**options: Any) -> Emulator:
        options.setdefault("tokens", [TOKEN])
        emu = Emulator(**options)
        await nursery.start(emu.serve)
        return emu

    return _start


@pytest.fixture
async def emu(start: StartEmulator) -> Emulator:
    return await start(rooms=["sensu", "ops"])


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as http:
        yield http


def pretty(error: dict[str, Any]) -> str:
    """The v2 error body, as HipChat printed it: 2-space indent, sorted keys."""
    return json.dumps({"error": error}, indent=2, sort_keys=True)


async def notify(
    client: httpx.AsyncClient, emu: Emulator, segment: str = "sensu", **body: Any
) -> httpx.Response:
    body.setdefault("message", "hello")
    return await client.post(f"{emu.url}/v2/room/{segment}/notification", json=body, headers=AUTH)


async def raw_exchange(emu: Emulator, data: bytes) -> bytes:
    """Send raw bytes on a fresh connection and read until the server closes it."""
    host, port = emu.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    received = bytearray()
    async with stream:
        await stream.send_all(data)
        while chunk := await stream.receive_some(65536):
            received += chunk
    return bytes(received)


def raw_header_names(response: httpx.Response) -> list[bytes]:
    return [name for name, _ in response.headers.raw]


# --- pure helpers -------------------------------------------------------------


def test_split_target_splits_before_decoding() -> None:
    """%2F stays inside its segment, // is an empty segment, the query is separate."""
    target = split_target(b"/v2/room/ops%2Falerts/notification?auth_token=x&a=b+c")
    assert target.segments == ("v2", "room", "ops%2Falerts", "notification")
    assert target.path == "/v2/room/ops%2Falerts/notification"
    assert target.query == {"auth_token": "x", "a": "b c"}
    assert split_target(b"/v2//room").segments == ("v2", "", "room")


@pytest.mark.parametrize(
    ("segment", "name"),
    [
        ("a%2Bb", "a+b"),
        ("a+b", "a+b"),
        ("my%20room", "my room"),
        ("Caf%C3%A9", "Café"),
        ("%2541", "%41"),
        ("%23x", "#x"),
    ],
)
def test_decode_segment_decodes_exactly_once_and_keeps_plus(segment: str, name: str) -> None:
    assert decode_segment(segment) == name


def test_match_route() -> None:
    route = match_route(("v2", "room", "a%20b", "notification"))
    assert route is not None
    assert (route.name, route.param, route.methods) == ("v2_notification", "a%20b", ("POST",))
    assert match_route(("v2", "room", "", "notification")) is None
    assert match_route(("v2", "room", "a", "b", "notification")) is None


def test_every_route_holds_a_handler_and_matches_its_own_pattern() -> None:
    """The table is the dispatch: each entry names its handler; a path built from it finds it."""
    for endpoint in ROUTES:
        assert callable(endpoint.handler), endpoint.name
        segments = tuple("x" if part == "*" else part for part in endpoint.pattern)
        route = match_route(segments)
        assert route is not None, endpoint.name
        assert route.endpoint == endpoint
        assert route.param == ("x" if "*" in endpoint.pattern else None)
    controls = {endpoint.name for endpoint in ROUTES if endpoint.control}
    assert controls == {"admin_messages", "admin_requests", "admin_faults", "admin_reset"}
    assert all(endpoint.pattern[0] in ("v1", "v2") for endpoint in ROUTES if not endpoint.control)


def test_py2_repr_matches_the_servers_messages() -> None:
    assert py2_repr("Red") == "u'Red'"
    assert py2_repr("Café") == "u'Caf\\xe9'"
    assert py2_repr(None) == "None"
    assert py2_repr(True) == "True"
    assert py2_repr(["a", 1]) == "[u'a', 1]"


def test_v1_bodies_are_compact_ordered_and_escape_slashes() -> None:
    assert v1_json({"a": "x/y"}) == b'{"a":"x\\/y"}'
    body = v1_error_body(ApiError(400, "a/b"))
    assert body == b'{"error":{"code":400,"type":"Bad Request","message":"a\\/b"}}'


def test_fixed_window_counts_peeks_and_reopens() -> None:
    window = FixedWindow(300.0)
    assert window.peek(2, 10.0).remaining == 2
    first = window.take(2, 10.0)
    assert first is not None
    assert (first.remaining, first.reset) == (1, 310.0)
    assert window.take(2, 20.0) is not None
    assert window.take(2, 30.0) is None
    assert window.peek(2, 30.0).remaining == 0  # a refusal never goes below zero
    reopened = window.take(2, 310.0)
    assert reopened is not None
    assert (reopened.remaining, reopened.reset) == (1, 610.0)


@pytest.mark.parametrize(
    ("sender", "ok"),
    [
        ("a" * 15, True),
        ("Sensu Bot_1-x", True),
        ("Café", True),
        ("a" * 16, False),
        ("", False),
        ("Sensu!", False),
        ("a.b", False),
    ],
)
def test_v1_from_rules(sender: str, ok: bool) -> None:
    params = {"room_id": "sensu", "from": sender, "message": "hi"}
    if ok:
        assert validate_v1_message(params).sender == sender
    else:
        with pytest.raises(Reject):
            validate_v1_message(params)


def test_echo_line_strips_html_and_cuts() -> None:
    message = ReceivedMessage(
        kind="notification",
        api_version="v2",
        room_id=1,
        room="sensu",
        user=None,
        sender="sensu",
        message="<b>CRITICAL</b> sensu.test.local/testing:<br/>THIS &amp; THAT" + "x" * 300,
        color="red",
        notify=True,
        message_format="html",
        date=0.0,
    )
    line = echo_line(message)
    assert line.startswith("[room sensu] sensu: CRITICAL sensu.test.local/testing: THIS & THAT")
    assert line.endswith("... (red, notify)")
    assert "\n" not in line
    assert len(line) < 260


# --- v2 notification ----------------------------------------------------------


async def test_v2_notification_succeeds_with_204_and_is_recorded(
    emu: Emulator, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(10):
        before = unix_now()
        response = await notify(
            client, emu, message="<b>down</b>", color="red", notify=True, **{"from": "Sensu"}
        )
    assert response.status_code == 204
    assert response.content == b""
    [message] = emu.messages
    assert message.kind == "notification"
    assert message.api_version == "v2"
    assert (message.room_id, message.room, message.user) == (1, "sensu", None)
    assert (message.sender, message.message, message.color) == ("Sensu", "<b>down</b>", "red")
    assert (message.notify, message.message_format) == (True, "html")
    assert before <= message.date <= unix_now()
    assert emu.requests[-1].status == 204
    assert emu.requests[-1].path == "/v2/room/sensu/notification"


async def test_v2_notification_defaults(emu: Emulator, client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        response = await notify(client, emu, room_id=99, unknown_field={"x": 1})
    assert response.status_code == 204  # stray fields (hipchat-rb's room_id) are tolerated
    [message] = emu.messages
    assert (message.color, message.notify, message.message_format, message.sender) == (
        "yellow",
        False,
        "html",
        "",
    )


_ENUM_TEXT = "['yellow', 'green', 'red', 'purple', 'gray', 'random']"


def _color_error(value: str) -> dict[str, Any]:
    return {
        "code": 400,
        "field": "color",
        "message": f"Value u'{value}' for field 'color' is not in the enumeration: {_ENUM_TEXT}",
        "options": COLORS,
        "type": "Bad Request",
    }


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param(
            {"message": "hi", "notify": "true"},
            {
                "code": 400,
                "expected_type": "boolean",
                "field": "notify",
                "message": "Value u'true' for field 'notify' is not of type 'boolean'",
                "type": "Bad Request",
                "validation": "type",
                "value": "true",
            },
            id="notify-string",
        ),
        pytest.param(
            {"message": "hi", "color": "Red"},
            _color_error("Red"),
            id="color-Red",
        ),
        pytest.param(
            {"message": "hi", "color": "grey"},
            _color_error("grey"),
            id="color-grey",
        ),
        pytest.param(
            {"message": ""},
            {
                "code": 400,
                "field": "message",
                "message": "Length of value u'' for field 'message' must be greater than or "
                "equal to 1",
                "minLength": 1,
                "type": "Bad Request",
                "validation": "minLength",
                "value": "",
            },
            id="message-empty",
        ),
        pytest.param(
            {"message": "m" * 10_001},
            {
                "code": 400,
                "field": "message",
                "maxLength": 10_000,
                "message": f"Length of value u'{'m' * 10_001}' for field 'message' must be less "
                "than or equal to 10000",
                "type": "Bad Request",
                "validation": "maxLength",
                "value": "m" * 10_001,
            },
            id="message-10001",
        ),
        pytest.param(
            {"message": "hi", "from": "f" * 65},
            {
                "code": 400,
                "field": "from",
                "maxLength": 64,
                "message": f"Length of value u'{'f' * 65}' for field 'from' must be less than or "
                "equal to 64",
                "type": "Bad Request",
                "validation": "maxLength",
                "value": "f" * 65,
            },
            id="from-65",
        ),
        pytest.param(
            {"color": "red"},
            {
                "code": 400,
                "field": "message",
                "message": "Required field 'message' is missing",
                "type": "Bad Request",
                "validation": "required",
            },
            id="message-missing",
        ),
        pytest.param(
            {"message": "hi", "message_format": "markdown"},
            {
                "code": 400,
                "field": "message_format",
                "message": "Value u'markdown' for field 'message_format' is not in the "
                "enumeration: ['html', 'text']",
                "options": ["html", "text"],
                "type": "Bad Request",
            },
            id="message_format",
        ),
        pytest.param(
            {"message": "hi", "card": {"style": "link", "id": "c1"}},
            {
                "code": 400,
                "field": "card.title",
                "message": "Required field 'card.title' is missing",
                "type": "Bad Request",
                "validation": "required",
            },
            id="card-without-title",
        ),
    ],
)
async def test_v2_validation_errors_have_the_exact_pretty_sorted_body(
    emu: Emulator, client: httpx.AsyncClient, body: dict[str, Any], error: dict[str, Any]
) -> None:
    with trio.fail_after(10):
        response = await client.post(
            f"{emu.url}/v2/room/sensu/notification", json=body, headers=AUTH
        )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.text == pretty(error)
    assert emu.messages == []


async def test_v2_boundaries_are_accepted(emu: Emulator, client: httpx.AsyncClient) -> None:
    card = {"style": "link", "title": "t" * 500, "id": "c1", "url": "https://example.com"}
    with trio.fail_after(10):
        responses = [
            await notify(client, emu, message="m" * 10_000),
            await notify(client, emu, **{"from": "f" * 64}),
            await notify(client, emu, attach_to="a" * 36, card=card, message_format="text"),
            await notify(client, emu, color="gray", notify=False),
        ]
    assert [r.status_code for r in responses] == [204] * 4
    assert len(emu.messages) == 4


async def test_strict_from_25_mode(start: StartEmulator, client: httpx.AsyncClient) -> None:
    emu = await start(strict_from_25=True)
    with trio.fail_after(10):
        ok = await notify(client, emu, **{"from": "f" * 25})
        bad = await notify(client, emu, **{"from": "f" * 26})
    assert ok.status_code == 204
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert (error["field"], error["maxLength"], error["validation"]) == ("from", 25, "maxLength")


async def test_lenient_notify_accepts_true_false_strings(
    start: StartEmulator, client: httpx.AsyncClient
) -> None:
    emu = await start(lenient_notify=True)
    with trio.fail_after(10):
        yes = await notify(client, emu, notify="true")
        no = await notify(client, emu, notify="false")
        other = await notify(client, emu, notify="yes")
    assert (yes.status_code, no.status_code, other.status_code) == (204, 204, 400)
    assert [m.notify for m in emu.messages] == [True, False]


async def test_form_body_on_v2_is_refused_by_default(
    emu: Emulator, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(10):
        response = await client.post(
            f"{emu.url}/v2/room/sensu/notification", data={"message": "hi"}, headers=AUTH
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["type"]) == (400, "Bad Request")
    assert response.text == pretty(error)
    assert emu.messages == []


async def test_parse_form_v2_reads_the_form_and_type_checks_notify(
    start: StartEmulator, client: httpx.AsyncClient
) -> None:
    emu = await start(parse_form_v2=True)
    url = f"{emu.url}/v2/room/sensu/notification"
    with trio.fail_after(10):
        rejected = await client.post(url, data={"message": "hi", "notify": "true"}, headers=AUTH)
        accepted = await client.post(url, data={"message": "hi", "color": "red"}, headers=AUTH)
    assert rejected.status_code == 400
    assert rejected.json()["error"]["message"] == (
        "Value u'true' for field 'notify' is not of type 'boolean'"
    )
    assert accepted.status_code == 204
    assert emu.messages[0].color == "red"


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe"])
async def test_bad_json_is_400(emu: Emulator, client: httpx.AsyncClient, content: bytes) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    with trio.fail_after(10):
        response = await client.post(
            f"{emu.url}/v2/room/sensu/notification", content=content, headers=headers
        )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "Bad Request"


# --- authentication -----------------------------------------------------------


async def test_missing_and_invalid_tokens_get_401(emu: Emulator, client: httpx.AsyncClient) -> None:
    url = f"{emu.url}/v2/room/sensu/notification"
    expected = pretty({"code": 401, "message": "Invalid OAuth session", "type": "Unauthorized"})
    with trio.fail_after(10):
        missing = await client.post(url, json={"message": "hi"})
        invalid = await client.post(
            url, json={"message": "hi"}, headers={"Authorization": f"Bearer {WRONG}"}
        )
        in_query = await client.post(url, params={"auth_token": WRONG}, json={"message": "hi"})
        basic = await client.post(url, json={"message": "hi"}, auth=("user", TOKEN))
    for response in (missing, invalid, in_query, basic):
        assert response.status_code == 401
        assert response.text == expected
    assert emu.messages == []


async def test_bearer_header_wins_over_query_token(
    emu: Emulator, client: httpx.AsyncClient
) -> None:
    url = f"{emu.url}/v2/room/sensu/notification"
    with trio.fail_after(10):
        good_header = await client.post(
            url, params={"auth_token": WRONG}, json={"message": "a"}, headers=AUTH
        )
        bad_header = await client.post(
            url,
            params={"auth_token": TOKEN},
            json={"message": "b"},
            headers={"Authorization": f"Bearer {WRONG}"},
        )
        query_only = await client.post(url, params={"auth_token": TOKEN}, json={"message": "c"})
    assert (good_header.status_code, bad_header.status_code, query_only.status_code) == (
        204,
        401,
        204,
    )


async def test_open_mode_accepts_any_non_empty_token(
    start: StartEmulator, client: httpx.AsyncClient
) -> None:
    emu = await start(tokens=())
    url = f"{emu.url}/v2/room/sensu/notification"
    with trio.fail_after(10):
        anything = await client.post(
            url, json={"message": "hi"}, headers={"Authorization": "Bearer whatever"}
        )
        empty = await client.post(url, json={"message": "hi"}, params={"auth_token": ""})
        none = await client.post(url, json={"message": "hi"})
    assert (anything.status_code, empty.status_code, none.status_code) == (204, 401, 401)


async def test_auth_test_answers_202_and_performs_nothing(
    emu: Emulator, client: httpx.AsyncClient
) -> None:
    body = (
        '{"success":{"code":202,"message":"This auth_token has access to use this method.",'
        '"type":"Accepted"}}'
    )
    with trio.fail_after(10):
        v2 = await client.post(
            f"{emu.url}/v2/room/sensu/notification",
            params={"auth_test": "true"},
            json={"message": "hi"},
            headers=AUTH,
        )
        v1 = await client.post(
            f"{emu.url}/v1/rooms/message",
            data={"auth_token": TOKEN, "auth_test": "true", "room_id": "sensu", "from": "x"},
        )
        denied = await client.post(
            f"{emu.url}/v2/room/sensu/notification",
            params={"auth_test": "true", "auth_token": WRONG},
            json={"message": "hi"},
        )
    assert (v2.status_code, v2.text) == (202, body)
    assert (v1.status_code, v1.text) == (202, body)
    assert denied.status_code == 401
    assert emu.messages == []


# --- room paths ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["my room", "ops/alerts", "#x", "a+b", "Café", "a b+c", "%41"])
async def test_room_names_encoded_as_one_segment_reach_their_room(
    start: StartEmulator, client: httpx.AsyncClient, name: str
) -> None:
    """quote(name, safe="") is decoded exactly once back to the exact name."""
    emu = await start(rooms=["sensu", "A", name])
    with trio.fail_after(10):
        response = await notify(client, emu, quote(name, safe=""))
    assert response.status_code == 204
    assert emu.messages[0].room == name


async def test_raw_plus_is_a_plus_not_a_space(
    start: StartEmulator, client: httpx.AsyncClient
) -> None:
    emu = await start(rooms=["a+b", "a b", "my room"])
    with trio.fail_after(10):
        plus = await notify(client, emu, "a+b")
        space_as_plus = await notify(client, emu, "my+room")
    assert plus.status_code == 204
    assert emu.messages[0].room == "a+b"
    assert space_as_plus.status_code == 404
    assert space_as_plus.json()["error"]["message"] == "Room my+room not found"


async def test_raw_slash_and_double_slash_are_unknown_paths(
    start: StartEmulator, client: httpx.AsyncClient
) -> None:
    emu = await start(rooms=["ops/alerts", "sensu"])
    with trio.fail_after(10):
        raw_slash = await notify(client, emu, "ops/alerts")
        double_v2 = await client.post(
            f"{emu.url}/v2//room/sensu/notification", json={"message": "x"}, headers=AUTH
        )
        empty_room = await client.post(
            f"{emu.url}/v2/room//notification", json={"message": "x"}, headers=AUTH
        )
    for response in (raw_slash, double_v2, empty_room):
        assert response.status_code == 404
        assert response.json()["error"]["message"].startswith("The requested URL was not found")
    assert emu.messages == []


async def test_lookup_by_id_first_then_exact_case_sensitive_name(
    start: StartEmulator, client: httpx.AsyncClient
) -> None:
    emu = await start(rooms=["sensu", "1", "Ops", "123"])
    with trio.fail_after(10):
        by_id = await notify(client, emu, "3")
        id_beats_name = await notify(client, emu, "1")
        digits_name = await notify(client, emu, "123")
        exact = await notify(client, emu, "Ops")
        wrong_case = await notify(client, emu, "ops")
    assert [r.status_code for r in (by_id, id_beats_name, digits_name, exact)] == [204] * 4
    assert [m.room for m in emu.messages] == ["Ops", "sensu", "123", "Ops"]
    assert wrong_case.status_code == 404
    assert wrong_case.text == pretty(
        {"code": 404, "message": "Room ops not found", "type": "Not Found"}
    )


async def test_auto_create_rooms(start: StartEmulator, client: httpx.AsyncClient) -> None:
    emu = await start(auto_create_rooms=True)
    with trio.fail_after(10):
        created = await notify(client, emu, "new%20room")
        again = await notify(client, emu, "new%20room")
        too_long = await notify(client, emu, "n" * 51)
        over_path_limit = await notify(client, emu, "n" * 101)
    assert (created.status_code, again.status_code) == (204, 204)
    assert [m.room_id for m in emu.messages] == [2, 2]
    assert too_long.status_code == 404
    assert over_path_limit.status_code == 400


async def test_room_lookup_links_self_is_postable(emu: Emulator, client: httpx.AsyncClient) -> None:
    """HypChat's flow: GET the room by name, then POST to links.self + /notification."""
    with trio.fail_after(10):
        response = await client.get(f"{emu.url}/v2/room/ops", headers=AUTH)
        room = response.json()
        posted = await client.post(
            room["links"]["self"] + "/notification", json={"message": "hi"}, headers=AUTH
        )
    assert response.status_code == 200
    assert response.text == json.dumps(room, indent=2, sort_keys=True)
    assert (room["id"], room["name"], room["privacy"], room["is_archived"]) == (
        2,
        "ops",
        "public",
        False,
    )
    assert room["topic"] == ""
    assert room["links"]["self"] == f"{emu.url}/v2/room/2"
    assert posted.status_code == 204
    assert emu.messages[0].room == "ops"


async def test_room_list_and_405s(emu: Emulator, client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        listing = await client.get(f"{emu.url}/v2/room", headers=AUTH)
        # An unencoded '#' cut the POST down to /v2/room/: 405 (docs/hipchat-api.md §5).
        cut = await client.post(f"{emu.url}/v2/room/", json={"message": "x"}, headers=AUTH)
        wrong_method = await client.get(f"{emu.url}/v2/room/sensu/notification", headers=AUTH)
    assert [item["name"] for item in listing.json()["items"]] == ["sensu", "ops"]
    assert cut.status_code == 405
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert wrong_method.text == pretty(
        {
            "code": 405,
            "message": "The method is not allowed for the requested URL.",
            "type": "Method Not Allowed",
        }
    )


async def test_history_latest(emu: Emulator, client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        for i in range(3):
            await notify(client, emu, message=f"n{i}", color="red", **{"from": "Sensu"})
        sent = await client.post(
            f"{emu.url}/v2/room/sensu/message", json={"message": "m3", "from": "x"}, headers=AUTH
        )
        await notify(client, emu, "ops", message="elsewhere")
        full = await client.get(f"{emu.url}/v2/room/sensu/history/latest", headers=AUTH)
        last_two = await client.get(
            f"{emu.url}/v2/room/sensu/history/latest", params={"max-results": 2}, headers=AUTH
        )
        oldest = emu.messages[1].id
        since = await client.get(
            f"{emu.url}/v2/room/1/history/latest", params={"not-before": oldest}, headers=AUTH
        )
        bad = await client.get(
            f"{emu.url}/v2/room/1/history/latest", params={"max-results": "x"}, headers=AUTH
        )
    assert sent.status_code == 201
    assert set(sent.json()) == {"id", "timestamp"}
    items = full.json()["items"]
    assert [i["message"] for i in items] == ["n0", "n1", "n2", "m3"]
    assert full.json()["maxResults"] == 75
    first = items[0]
    assert (first["type"], first["from"], first["color"], first["message_format"]) == (
        "notification",
        "Sensu",
        "red",
        "html",
    )
    assert datetime.fromisoformat(first["date"]).tzinfo is not None
    assert first["id"] == emu.messages[0].id
    assert items[3]["type"] == "message"
    assert isinstance(items[3]["from"], dict)
    assert [i["message"] for i in last_two.json()["items"]] == ["n2", "m3"]
    assert [i["message"] for i in since.json()["items"]] == ["n1", "n2", "m3"]
    assert bad.status_code == 400


async def test_room_message_rules(emu: Emulator, client: httpx.AsyncClient) -> None:
    url = f"{emu.url}/v2/room/sensu/message"
    with trio.fail_after(10):
        ok = await client.post(url, json={"message": "m" * 1000, "from": "ignored"}, headers=AUTH)
        long = await client.post(url, json={"message": "m" * 1001}, headers=AUTH)
    assert ok.status_code == 201
    assert ok.json()["id"] == emu.messages[0].id
    assert (emu.messages[0].kind, emu.messages[0].sender) == ("room_message", "")
    assert long.status_code == 400
    assert long.json()["error"]["maxLength"] == 1000


async def test_user_message(emu: Emulator, client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        response = await client.post(
            f"{emu.url}/v2/user/{quote('alice@example.com', safe='')}/message",
            json={"message": "psst", "notify": True},
            headers=AUTH,
        )
        by_id = await client.post(
            f"{emu.url}/v2/user/42/message", json={"message": "x"}, headers=AUTH
        )
        bad = await client.post(
            f"{emu.url}/v2/user/42/message", json={"message": "x", "notify": "1"}, headers=AUTH
        )
    assert (response.status_code, by_id.status_code, bad.status_code) == (204, 204, 400)
    first, second = emu.messages
    assert (first.kind, first.user, first.room, first.room_id) == (
        "user_message",
        "alice@example.com",
        None,
        None,
    )
    assert (first.notify, first.message_format, first.color) == (True, "text", None)
    assert second.user == "42"
    assert "X-FloodControl-Remaining" in response.headers


# --- v1 -----------------------------------------------------------------------


async def test_v1_message_via_form(emu: Emulator, client: httpx.AsyncClient) -> None:
    form = {
        "room_id": "sensu",
        "from": "Sensu",
        "message": "disk full",
        "color": "red",
        "notify": "1",
        "message_format": "text",
        "api": "v1",  # Ansible's stray field
    }
    with trio.fail_after(10):
        response = await client.post(
            f"{emu.url}/v1/rooms/message", params={"auth_token": TOKEN}, data=form
        )
    assert response.status_code == 200
    assert response.text == '{"status":"sent"}'
    [message] = emu.messages
    assert (message.api_version, message.kind, message.room, message.sender) == (
        "v1",
        "notification",
        "sensu",
        "Sensu",
    )
    assert (message.color, message.notify, message.message_format) == ("red", True, "text")


async def test_v1_message_via_query_and_get_and_token_in_body(
    emu: Emulator, client: httpx.AsyncClient
) -> None:
    params = {"auth_token": TOKEN, "room_id": "2", "from": "S", "message": "q", "color": ""}
    url = f"{emu.url}/v1/rooms/message"
    with trio.fail_after(10):
        query_post = await client.post(url, params=params)
        query_get = await client.get(url, params=params)
        body_token = await client.post(
            url, data={"auth_token": TOKEN, "room_id": "ops", "from": "S", "message": "b"}
        )
    assert [r.status_code for r in (query_post, query_get, body_token)] == [200, 200, 200]
    assert [m.room for m in emu.messages] == ["ops", "ops", "ops"]
    assert emu.messages[0].color == "yellow"  # python-simple-hipchat sends color=""
    assert emu.messages[0].notify is False


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"from": "f" * 16}, 400, "From name must be between 1 and 15 characters."),
        ({"from": ""}, 400, "From name must be between 1 and 15 characters."),
        ({"from": "a/b"}, 400, None),
        ({"message": "m" * 10_001}, 400, None),
        ({"color": "Red"}, 400, None),
        ({"notify": "true"}, 400, None),
        ({"room_id": "nope"}, 404, "Room not found"),
    ],
)
async def test_v1_errors_are_compact(
    emu: Emulator,
    client: httpx.AsyncClient,
    fields: dict[str, str],
    status: int,
    message: str | None,
) -> None:
    form = {"auth_token": TOKEN, "room_id": "sensu", "from": "Sensu", "message": "hi", **fields}
    with trio.fail_after(10):
        response = await client.post(f"{emu.url}/v1/rooms/message", data=form)
    assert response.status_code == status
    error = response.json()["error"]
    assert list(error) == ["code", "type", "message"]
    assert response.text == json.dumps(response.json(), separators=(",", ":")).replace("/", "\\/")
    if message is not None:
        assert error["message"] == message
    assert emu.messages == []


async def test_v1_401_body_escapes_slashes(emu: Emulator, client: httpx.AsyncClient) -> None:
    form = {"auth_token": WRONG, "room_id": "sensu", "from": "Sensu", "message": "hi"}
    with trio.fail_after(10):
        response = await client.post(f"{emu.url}/v1/rooms/message", data=form)
    assert response.status_code == 401
    assert response.text == (
        '{"error":{"code":401,"type":"Unauthorized","message":"Auth token invalid. '
        'Please see: https:\\/\\/www.hipchat.com\\/docs\\/api\\/auth"}}'
    )


async def test_v1_format(emu: Emulator, client: httpx.AsyncClient) -> None:
    form = {"auth_token": TOKEN, "room_id": "sensu", "from": "Sensu", "message": "hi"}
    with trio.fail_after(10):
        bad = await client.post(f"{emu.url}/v1/rooms/message", data={**form, "format": "yaml"})
        xml = await client.post(f"{emu.url}/v1/rooms/message", data={**form, "format": "xml"})
    assert bad.status_code == 406
    assert bad.json()["error"]["code"] == 406
    assert xml.status_code == 200
    assert "<response><status>sent</status></response>" in xml.text
    assert len(emu.messages) == 1


async def test_v1_rooms_list_and_history(emu: Emulator, client: httpx.AsyncClient) -> None:
    form = {"auth_token": TOKEN, "room_id": "ops", "from": "Sensu", "message": "a/b"}
    with trio.fail_after(10):
        await client.post(f"{emu.url}/v1/rooms/message", data=form)
        today = datetime.fromtimestamp(unix_now(), UTC).strftime("%Y-%m-%d")
        rooms = await client.get(f"{emu.url}/v1/rooms/list", params={"auth_token": TOKEN})
        recent = await client.get(
            f"{emu.url}/v1/rooms/history",
            params={"auth_token": TOKEN, "room_id": "ops", "date": "recent"},
        )
        dated = await client.get(
            f"{emu.url}/v1/rooms/history",
            params={"auth_token": TOKEN, "room_id": "2", "date": today},
        )
        other_day = await client.get(
            f"{emu.url}/v1/rooms/history",
            params={"auth_token": TOKEN, "room_id": "2", "date": "2001-01-01"},
        )
        bad_date = await client.get(
            f"{emu.url}/v1/rooms/history",
            params={"auth_token": TOKEN, "room_id": "2", "date": "yesterday"},
        )
    listed = rooms.json()["rooms"]
    assert [(r["room_id"], r["name"]) for r in listed] == [(1, "sensu"), (2, "ops")]
    assert {"topic", "last_active", "created", "is_archived", "is_private", "owner_user_id"} <= set(
        listed[0]
    )
    [item] = recent.json()["messages"]
    assert item["from"] == {"name": "Sensu", "user_id": "api"}
    assert item["message"] == "a/b"
    assert '"a\\/b"' in recent.text
    assert dated.json() == recent.json()
    assert other_day.json() == {"messages": []}
    assert bad_date.status_code == 400


# --- rate limits and flood control -------------------------------------------


async def test_v2_rate_limit_429_then_window_reopens(
    start: StartEmulator, client: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    emu = await start(rate_limit=3)
    with trio.fail_after(1000):
        first_at = unix_now()
        allowed = [await notify(client, emu) for _ in range(3)]
        refused = await notify(client, emu)
        refused_again = await client.get(f"{emu.url}/v2/room/sensu", headers=AUTH)
        await trio.sleep(300)
        reopened = await notify(client, emu)
    assert [r.status_code for r in allowed] == [204, 204, 204]
    assert [r.headers["X-Ratelimit-Remaining"] for r in allowed] == ["2", "1", "0"]
    assert refused.status_code == 429
    assert refused.text == pretty(
        {"code": 429, "message": "Rate Limit exceeded", "type": "Too Many Requests"}
    )
    for response in (refused, refused_again):
        assert response.status_code == 429
        assert response.headers["X-Ratelimit-Limit"] == "3"
        assert response.headers["X-Ratelimit-Remaining"] == "0"
    reset = refused.headers["X-Ratelimit-Reset"]
    assert re.fullmatch(r"[0-9]+", reset)
    assert first_at + 300 <= int(reset) <= first_at + 301
    assert reopened.status_code == 204
    assert reopened.headers["X-Ratelimit-Remaining"] == "2"
    assert len(emu.messages) == 4
    assert emu.count_status(429) == 2


async def test_float_reset(start: StartEmulator, client: httpx.AsyncClient) -> None:
    emu = await start(float_reset=True)
    with trio.fail_after(10):
        response = await notify(client, emu)
    for name in ("X-Ratelimit-Reset", "X-FloodControl-Reset"):
        value = response.headers[name]
        assert "." in value
        assert float(value) > unix_now()


async def test_v1_rate_limit_is_403_with_x_ratelimit_headers(
    start: StartEmulator, client: httpx.AsyncClient
) -> None:
    emu = await start(rate_limit=2)
    form = {"auth_token": TOKEN, "room_id": "sensu", "from": "Sensu", "message": "hi"}
    with trio.fail_after(10):
        responses = [await client.post(f"{emu.url}/v1/rooms/message", data=form) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 403]
    assert responses[2].text == (
        '{"error":{"code":403,"type":"Forbidden","message":"You have exceeded the rate limit. '
        'See https:\\/\\/www.hipchat.com\\/docs\\/api\\/rate_limiting"}}'
    )
    names = raw_header_names(responses[2])
    assert b"X-RateLimit-Remaining" in names
    assert b"X-RateLimit-Limit" in names
    assert b"X-RateLimit-Reset" in names
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["1", "0", "0"]


async def test_auth_failures_do_not_count(start: StartEmulator, client: httpx.AsyncClient) -> None:
    emu = await start(rate_limit=1)
    url = f"{emu.url}/v2/room/sensu/notification"
    with trio.fail_after(10):
        for _ in range(3):
            denied = await client.post(url, json={"message": "x"}, params={"auth_token": WRONG})
            assert denied.status_code == 401
        allowed = await notify(client, emu)
    assert allowed.status_code == 204


async def test_flood_control_is_per_room_and_per_user(
    start: StartEmulator, client: httpx.AsyncClient
) -> None:
    emu = await start(rooms=["a", "b"], flood_limit=2)
    with trio.fail_after(10):
        room_a = [await notify(client, emu, "a") for _ in range(3)]
        room_b = await notify(client, emu, "b")
        room_msg = await client.post(
            f"{emu.url}/v2/room/a/message", json={"message": "x"}, headers=AUTH
        )
        users = [
            await client.post(f"{emu.url}/v2/user/u1/message", json={"message": "x"}, headers=AUTH)
            for _ in range(3)
        ]
        other_user = await client.post(
            f"{emu.url}/v2/user/u2/message", json={"message": "x"}, headers=AUTH
        )
    assert [r.status_code for r in room_a] == [204, 204, 429]
    assert [r.headers["X-FloodControl-Remaining"] for r in room_a] == ["1", "0", "0"]
    assert room_a[2].headers["X-FloodControl-Limit"] == "2"
    assert int(room_a[2].headers["X-Ratelimit-Remaining"]) > 0
    assert room_b.status_code == 204
    assert room_b.headers["X-FloodControl-Remaining"] == "1"
    assert room_msg.status_code == 429  # send_message shares the room's flood control
    assert [r.status_code for r in users] == [204, 204, 429]
    assert other_user.status_code == 204
    assert b"X-FloodControl-Limit" in raw_header_names(room_b)


async def test_flood_window_reopens(
    start: StartEmulator, client: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    emu = await start(flood_limit=1)
    with trio.fail_after(1000):
        first = await notify(client, emu)
        second = await notify(client, emu)
        await trio.sleep(60)
        third = await notify(client, emu)
    assert (first.status_code, second.status_code, third.status_code) == (204, 429, 204)


async def test_every_v2_response_carries_rate_limit_headers(
    emu: Emulator, client: httpx.AsyncClient
) -> None:
    """HypChat reads X-Ratelimit-* from every response and crashes without them."""
    with trio.fail_after(10):
        responses = [
            await notify(client, emu),
            await notify(client, emu, color="Red"),
            await notify(client, emu, "nope"),
            await client.get(f"{emu.url}/v2/nothing/here", headers=AUTH),
            await client.get(f"{emu.url}/v2/room/sensu/notification", headers=AUTH),
            await client.post(f"{emu.url}/v2/room/sensu/notification", json={"message": "x"}),
            await client.get(f"{emu.url}/v2/room/sensu", headers=AUTH),
        ]
    assert [r.status_code for r in responses] == [204, 400, 404, 404, 405, 401, 200]
    for response in responses:
        names = raw_header_names(response)
        assert {b"X-Ratelimit-Limit", b"X-Ratelimit-Remaining", b"X-Ratelimit-Reset"} <= set(names)
        assert re.fullmatch(r"[0-9]+", response.headers["X-Ratelimit-Reset"])
    assert "X-FloodControl-Remaining" in responses[1].headers  # 400 on a known room
    assert "X-FloodControl-Remaining" not in responses[6].headers  # not a message endpoint


# --- faults -------------------------------------------------------------------


async def test_fail_next(emu: Emulator, client: httpx.AsyncClient) -> None:
    emu.fail_next(2, 503)
    form = {"auth_token": TOKEN, "room_id": "sensu", "from": "Sensu", "message": "hi"}
    with trio.fail_after(10):
        first = await notify(client, emu)
        second = await client.post(f"{emu.url}/v1/rooms/message", data=form)
        third = await notify(client, emu)
    assert first.status_code == 503
    assert first.text == pretty(
        {"code": 503, "message": "Service Unavailable", "type": "Service Unavailable"}
    )
    assert "X-Ratelimit-Remaining" in first.headers
    assert second.status_code == 503
    assert second.text == (
        '{"error":{"code":503,"type":"Service Unavailable","message":"Service Unavailable"}}'
    )
    assert third.status_code == 204
    assert len(emu.messages) == 1
    assert emu.count_status(503) == 2


async def test_latency_delays_the_answer(
    emu: Emulator, client: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    emu.latency = 5.0
    emu.room_latency["ops"] = 20.0
    with trio.fail_after(100):
        started = trio.current_time()
        response = await notify(client, emu)
        plain = trio.current_time() - started
        started = trio.current_time()
        slow = await notify(client, emu, "2")  # by id: the room's name decides
        slow_elapsed = trio.current_time() - started
    assert response.status_code == 204
    assert 5.0 <= plain < 5.5
    assert slow.status_code == 204
    assert 25.0 <= slow_elapsed < 25.5


async def test_set_down_resets_api_requests_and_drops_then_comes_back(
    emu: Emulator, client: httpx.AsyncClient
) -> None:
    """Down: API requests and open connections get a reset; control requests are served."""
    host, port = emu.url.removeprefix("http://").rsplit(":", 1)
    with trio.fail_after(10):
        assert (await notify(client, emu)).status_code == 204
        held = await trio.open_tcp_stream(host, int(port))
        await held.send_all(b"GET /v2/room/sensu HTTP/1.1\r\n")  # an unfinished request
        await trio.testing.wait_all_tasks_blocked()
        emu.set_down(True)
        with pytest.raises(httpx.TransportError):  # the pooled connection was reset too
            await notify(client, emu)
        with pytest.raises(httpx.ReadError, match="reset"):  # a fresh connection: no answer
            await notify(client, emu)
        with pytest.raises(trio.BrokenResourceError):  # reset, not closed
            await held.receive_some(1024)
        await held.aclose()
        control = await client.get(f"{emu.url}/_emulator/requests")
        assert emu.down
        emu.set_down(False)
        back = await notify(client, emu)
    assert control.status_code == 200
    assert control.json() == {"204": 1, "total": 1, "arrived": 1}  # the reset ones never arrived
    assert back.status_code == 204
    assert emu.url.endswith(f":{port}")
    assert len(emu.messages) == 2


async def test_a_request_in_flight_when_going_down_is_not_delivered(
    emu: Emulator, client: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    """Down, or down and back, while a request waits out its latency: reset, not delivered."""
    emu.latency = 5.0
    failures: list[type[BaseException]] = []

    async def doomed() -> None:
        try:
            await notify(client, emu)
        except httpx.TransportError as exc:
            failures.append(type(exc))

    with trio.fail_after(100):
        for come_back in (False, True):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(doomed)
                await trio.sleep(1)
                emu.set_down(True)
                if come_back:
                    emu.set_down(False)
            emu.set_down(False)
    assert len(failures) == 2
    assert emu.messages == []
    assert emu.requests == []


async def test_down_for_keeps_the_control_endpoints_and_up_ends_it_early(
    emu: Emulator, client: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    faults = f"{emu.url}/_emulator/faults"
    with trio.fail_after(1000):
        went_down = await client.post(faults, json={"down_for": 300})
        with pytest.raises(httpx.TransportError):
            await notify(client, emu)
        messages = await client.get(f"{emu.url}/_emulator/messages")
        await trio.sleep(10)
        came_up = await client.post(faults, json={"up": True})
        up_at = trio.current_time()
        back = await notify(client, emu)
        # The ended outage's timer is gone: it cannot cut a later outage short.
        await client.post(faults, json={"down_for": 1000})
        await trio.sleep(400)
        assert emu.down
        state = await client.post(faults, json={})
        await client.post(f"{emu.url}/_emulator/reset")  # a reset ends an outage too
    assert went_down.status_code == 200
    assert went_down.json()["down"] is True
    assert messages.status_code == 200
    assert messages.json() == []
    assert came_up.json()["down"] is False
    assert up_at < 20
    assert back.status_code == 204
    assert state.json()["down"] is True
    assert not emu.down


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        ({"up": True, "down_for": 5}, "Give either down_for or up, not both"),
        ({"up": "yes"}, "Value u'yes' for field 'up' is not of type 'boolean'"),
    ],
)
async def test_bad_up_changes_nothing(
    emu: Emulator, client: httpx.AsyncClient, faults: dict[str, Any], message: str
) -> None:
    with trio.fail_after(10):
        response = await client.post(f"{emu.url}/_emulator/faults", json=faults)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == message
    assert not emu.down


async def test_hipchatd_client_sees_a_transport_error_while_down(
    emu: Emulator, client: httpx.AsyncClient
) -> None:
    """hipchatd's own client: a transport error (retried later) while down, sent after up."""
    settings = HipChatSettings(api_token=Secret(TOKEN), server_url=emu.url)
    target = Target(
        kind="room", name="sensu", notify=False, username="Sensu", message_format="text"
    )
    message = Message(text="drill", color="red", notify=False, message_format="text", sender="s")
    with trio.fail_after(10):
        async with make_http_client(settings, 1) as http:
            hipchat = HipChatClient(settings, http)
            await client.post(f"{emu.url}/_emulator/faults", json={"down_for": 600})
            down = await hipchat.send(target, message)
            await client.post(f"{emu.url}/_emulator/faults", json={"up": True})
            up = await hipchat.send(target, message)
    assert down.kind is OutcomeKind.TRANSPORT_ERROR
    assert down.kind.transient
    assert up.kind is OutcomeKind.SENT
    assert [m.message for m in emu.messages] == ["drill"]


# --- admin ----------------------------------------------------------------------


async def test_admin_endpoints(start: StartEmulator, client: httpx.AsyncClient) -> None:
    emu = await start(rate_limit=1)
    with trio.fail_after(10):
        await notify(client, emu, message="one", color="red")
        await notify(client, emu)  # 429
        messages = await client.get(f"{emu.url}/_emulator/messages")
        counts = await client.get(f"{emu.url}/_emulator/requests")
        for _ in range(3):  # admin calls are neither rate limited nor recorded
            assert (await client.get(f"{emu.url}/_emulator/requests")).status_code == 200
        faults = await client.post(
            f"{emu.url}/_emulator/faults",
            json={"fail_next": {"count": 1, "status": 500}, "rate_limit": 10, "flood_limit": 5},
        )
        failed = await notify(client, emu)
        ok = await notify(client, emu)
        bad_fault = await client.post(f"{emu.url}/_emulator/faults", json={"nope": 1})
        reset = await client.post(f"{emu.url}/_emulator/reset")
        after_reset = await client.get(f"{emu.url}/_emulator/requests")
    [record] = messages.json()
    assert record["message"] == "one"
    assert record["color"] == "red"
    assert record["room"] == "sensu"
    assert set(record) >= {"kind", "api_version", "room_id", "user", "sender", "notify", "date"}
    assert counts.json() == {"204": 1, "429": 1, "total": 2, "arrived": 2}
    assert faults.status_code == 200
    assert faults.json()["fail_next"] == {"count": 1, "status": 500}
    assert (failed.status_code, ok.status_code) == (500, 204)
    assert ok.headers["X-Ratelimit-Limit"] == "10"
    assert ok.headers["X-FloodControl-Limit"] == "5"
    assert bad_fault.status_code == 400
    assert reset.status_code == 204
    assert after_reset.json() == {"total": 0, "arrived": 0}
    assert emu.messages == []
    assert emu.rate_limit == 1


async def test_admin_down_for(
    emu: Emulator, client: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(100):
        response = await client.post(f"{emu.url}/_emulator/faults", json={"down_for": 30})
        await trio.sleep(1)
        with pytest.raises(httpx.TransportError):
            await notify(client, emu)
        await trio.sleep(30)
        back = await notify(client, emu)
    assert response.status_code == 200
    assert back.status_code == 204


async def test_admin_latency(
    emu: Emulator, client: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(100):
        await client.post(f"{emu.url}/_emulator/faults", json={"latency": 7})
        started = trio.current_time()
        await notify(client, emu)
        elapsed = trio.current_time() - started
        await client.post(f"{emu.url}/_emulator/reset")
    assert 7.0 <= elapsed < 7.5
    assert emu.latency == 0.0


# --- waiting, echo, secrecy, HTTP edges ---------------------------------------


async def test_wait_for_messages_wakes_on_the_count(
    emu: Emulator, client: httpx.AsyncClient
) -> None:
    reached = trio.Event()

    async def waiter() -> None:
        await emu.wait_for_messages(2)
        reached.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await notify(client, emu)
            await trio.testing.wait_all_tasks_blocked()
            assert not reached.is_set()
            await notify(client, emu)
            await reached.wait()
        await emu.wait_for_messages(1)  # already satisfied: returns at once


async def test_echo_lines_and_no_token_anywhere(
    start: StartEmulator, client: httpx.AsyncClient
) -> None:
    lines: list[str] = []
    emu = await start(echo=lines.append)
    message = "<b>CRITICAL</b> sensu.test.local/testing: THIS IS AN ERROR"
    with trio.fail_after(10), capture_logs() as logs:
        await notify(client, emu, message=message, color="red", notify=True, **{"from": "sensu"})
        await client.post(
            f"{emu.url}/v2/room/sensu/notification",
            params={"auth_token": TOKEN},
            json={"message": "q"},
        )
        await client.post(
            f"{emu.url}/v1/rooms/message",
            params={"auth_token": TOKEN},
            data={"room_id": "sensu", "from": "Sensu", "message": "v1 body"},
        )
        await client.post(
            f"{emu.url}/v2/room/sensu/notification",
            params={"auth_token": WRONG},
            json={"message": "denied"},
        )
        await client.post(
            f"{emu.url}/v2/user/bob/message", json={"message": "dm", "notify": True}, headers=AUTH
        )
        admin = [
            (await client.get(f"{emu.url}/_emulator/{what}")).text
            for what in ("messages", "requests")
        ]
    assert lines == [
        "[room sensu] sensu: CRITICAL sensu.test.local/testing: THIS IS AN ERROR (red, notify)",
        "[room sensu] q (yellow)",
        "[room sensu] Sensu: v1 body (yellow)",
        "[user bob] dm (notify)",
    ]
    everything = "\n".join([*lines, repr(emu.messages), repr(emu.requests), *admin, repr(logs)])
    assert TOKEN not in everything
    assert WRONG not in everything


async def test_a_token_is_never_recorded_in_any_encoding(
    start: StartEmulator, client: httpx.AsyncClient
) -> None:
    """A client that puts its token in the path (as a room name) sends it percent-encoded."""
    odd = "tok/with+odd chars-9f8e7d6c5b4a"
    emu = await start(tokens=[odd], rooms=["sensu"])
    with trio.fail_after(10):
        response = await client.post(
            f"{emu.url}/v2/room/{quote(odd, safe='')}/notification",
            headers={"Authorization": f"Bearer {odd}"},
            json={"message": "q"},
        )
    assert response.status_code == 404
    assert [record.path for record in emu.requests] == ["/v2/room/[REDACTED]/notification"]


async def test_keep_alive_serves_several_requests_on_one_connection(emu: Emulator) -> None:
    host, port = emu.url.removeprefix("http://").rsplit(":", 1)
    body = b'{"message": "ka"}'
    request = (
        b"POST /v2/room/sensu/notification HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
        b"\r\n" + body
    )
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            for _ in range(2):
                await stream.send_all(request)
                answer = b""
                while not answer.endswith(b"\r\n\r\n"):
                    answer += await stream.receive_some(4096)
                assert answer.startswith(b"HTTP/1.1 204 No Content\r\n")
                assert b"content-length" not in answer.lower()
    assert len(emu.messages) == 2


async def test_oversized_body_gets_413(emu: Emulator) -> None:
    request = (
        b"POST /v2/room/sensu/notification HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n"
    )
    with trio.fail_after(10):
        answer = await raw_exchange(emu, request)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"X-Ratelimit-Remaining" in answer
    assert emu.requests[-1].status == 413


async def test_raw_space_in_path_is_400(emu: Emulator) -> None:
    """HipChat answered 400 to a raw space (docs/hipchat-api.md §5); h11 refuses the line."""
    with trio.fail_after(10):
        answer = await raw_exchange(
            emu, b"POST /v2/room/my room/notification HTTP/1.1\r\nHost: x\r\n\r\n"
        )
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"X-Ratelimit-Remaining" in answer
    assert emu.messages == []


async def test_malformed_requests_never_log_the_token(emu: Emulator) -> None:
    """h11 quotes the bad line in its error; the log keeps only the kind of error."""
    bad_line = f"POST /v2/room/a b/notification?auth_token={TOKEN} HTTP/1.1\r\n\r\n"
    bad_header = f"GET /v2/room/sensu HTTP/1.1\r\nHost: x\r\nAuthorization Bearer {TOKEN}\r\n\r\n"
    with trio.fail_after(10), capture_logs() as logs:
        answers = [await raw_exchange(emu, raw.encode()) for raw in (bad_line, bad_header)]
    assert all(answer.startswith(b"HTTP/1.1 400 ") for answer in answers)
    assert [e["event"] for e in logs] == ["http.request_rejected"] * 2
    assert TOKEN not in repr(logs)
    assert all(TOKEN.encode() not in answer for answer in answers)


async def test_unknown_path_is_404_in_v2_shape(emu: Emulator, client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        response = await client.get(f"{emu.url}/v3/whatever", headers=AUTH)
        admin = await client.get(f"{emu.url}/_emulator/nothing")
    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["code"], error["type"]) == (404, "Not Found")
    assert admin.status_code == 404


async def test_every_api_endpoint_is_answered_by_its_handler(
    emu: Emulator, client: httpx.AsyncClient
) -> None:
    """No entry of the route table falls through to 404 or 405."""
    statuses: dict[str, int] = {}
    with trio.fail_after(10):
        for endpoint in ROUTES:
            if endpoint.control:
                continue
            path = "/".join("sensu" if part == "*" else part for part in endpoint.pattern)
            url = f"{emu.url}/{path}?auth_token={TOKEN}"
            response = await client.request(endpoint.methods[0], url)
            statuses[endpoint.name] = response.status_code
    assert all(status not in (404, 405) for status in statuses.values()), statuses
    assert statuses["v2_room_get"] == 200
    assert statuses["v2_notification"] == 400  # no message: the handler validated it


async def test_unknown_path_under_v1_is_404_in_v1_shape(
    emu: Emulator, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(10):
        response = await client.get(f"{emu.url}/v1/rooms/nothing?auth_token={TOKEN}")
    assert response.status_code == 404
    assert response.content == v1_error_body(ApiError(404, NOT_FOUND_TEXT))
    assert "X-RateLimit-Remaining" in response.headers


async def test_oversized_headers_get_431_in_v2_shape(emu: Emulator) -> None:
    big = b"X-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n"
    with trio.fail_after(10):
        answer = await raw_exchange(emu, b"GET /v2/room HTTP/1.1\r\nHost: x\r\n" + big)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b'"code": 431' in answer
    assert emu.requests == []


async def test_oversized_chunked_body_gets_413(emu: Emulator) -> None:
    head = (
        b"POST /v2/room/sensu/notification HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    size = MAX_BODY_BYTES + 1
    chunk = f"{size:x}\r\n".encode() + b"a" * size + b"\r\n"
    with trio.fail_after(10):
        answer = await raw_exchange(emu, head + chunk)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert emu.requests[-1].status == 413
    assert emu.messages == []


@pytest.mark.parametrize(
    ("sent", "timeout"),
    [
        pytest.param(b"", KEEPALIVE_IDLE_TIMEOUT, id="idle"),
        pytest.param(
            b"POST /v2/room/sensu/notification HTTP/1.1\r\n", REQUEST_READ_TIMEOUT, id="slow"
        ),
    ],
)
async def test_idle_and_slow_connections_are_closed_unanswered(
    emu: Emulator, autojump_clock: trio.testing.MockClock, sent: bytes, timeout: float
) -> None:
    """Idle: closed after the keep-alive time; a request begun: after the read timeout."""
    host, port = emu.url.removeprefix("http://").rsplit(":", 1)
    with trio.fail_after(timeout + 10):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(sent)
            start = trio.current_time()
            assert await stream.receive_some(1024) == b""
    assert trio.current_time() - start == pytest.approx(timeout)
    assert emu.requests == []


# --- command line -------------------------------------------------------------


def test_add_arguments_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.tokens, args.rooms) == ("127.0.0.1", 8780, [], [])
    assert (args.rate_limit, args.flood_limit, args.latency) == (500, 30, 0.0)
    flags = (
        "auto_create_rooms",
        "float_reset",
        "strict_from_25",
        "lenient_notify",
        "parse_form_v2",
    )
    assert [getattr(args, flag) for flag in flags] == [False] * len(flags)
    args = parser.parse_args(["--token", "a", "--token", "b", "--room", "x", "--room", "y z"])
    assert (args.tokens, args.rooms) == (["a", "b"], ["x", "y z"])


_RUN = (
    "import argparse, sys\n"
    "from hipchatd.emulator import add_arguments, run\n"
    "parser = argparse.ArgumentParser()\n"
    "add_arguments(parser)\n"
    "sys.exit(run(parser.parse_args(sys.argv[1:])))\n"
)


async def _read_line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> str:
    while b"\n" not in buffer:
        chunk = await stream.receive_some(4096)
        assert chunk, "the emulator exited early"
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


def test_add_parser_adds_the_emulator_subcommand() -> None:
    """``hipchatd emulator`` is the one line ``add_parser(sub)`` in the top command line."""
    parser = argparse.ArgumentParser(prog="hipchatd")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["emulator", "--port", "9", "--token", "t", "--tls"])
    assert (args.command, args.port, args.tokens, args.tls) == ("emulator", 9, ["t"], True)


@pytest.mark.parametrize("tokens", [["--token", "cli-secret"], []])
async def test_run_prints_startup_and_echo_lines_and_exits_0_on_sigterm(
    client: httpx.AsyncClient, tokens: list[str]
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", _RUN, "--port", "0", "--room", "ops", *tokens]
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, env=env)
        assert process.stdout is not None
        buffer = bytearray()
        try:
            startup = await _read_line(process.stdout, buffer)
            url = re.search(r"http://127\.0\.0\.1:[0-9]+", startup)
            assert url is not None
            token = tokens[-1] if tokens else "anything"
            response = await client.post(
                f"{url.group(0)}/v2/room/ops/notification",
                json={"message": "from cli"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status_code == 204
            echoed = await _read_line(process.stdout, buffer)
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.stdout.aclose()
    assert "ops (id 1)" in startup
    assert ("open mode: any token accepted" in startup) == (not tokens)
    assert "cli-secret" not in startup
    assert echoed == "[room ops] from cli (yellow)"


# --- HTTPS ----------------------------------------------------------------------

#: HypChat picks a JSON object's class by matching its links.self (docs/hipchat-api.md §9).
HYPCHAT_ROOM = re.compile(r"https://[^/]+/v2/room/[^/]+$")
HYPCHAT_USER = re.compile(r"https://[^/]+/v2/user/[^/]+$")
HYPCHAT_ROOMS = re.compile(r"https://[^/]+/v2/room$")
HYPCHAT_HISTORY = re.compile(r"https://[^/]+/v2/room/[^/]+/history$")
SENSU = Target(kind="room", name="sensu", notify=False, username="Sensu", message_format="text")
DRILL = Message(text="drill", color="red", notify=False, message_format="text", sender="s")


@pytest.fixture
async def tls_emu(nursery: trio.Nursery, tmp_path: Path) -> tuple[Emulator, Path]:
    """An HTTPS emulator with a throwaway certificate, and the file holding its CA."""
    ca = tmp_path / "ca.pem"
    emu = Emulator(tokens=[TOKEN], rooms=["sensu", "ops"])
    await nursery.start(functools.partial(emu.serve, ssl_context=throwaway_tls(ca)))
    return emu, ca


async def test_https_hipchatd_client_delivers_with_ca_file_and_fails_without(
    tls_emu: tuple[Emulator, Path],
) -> None:
    emu, ca = tls_emu
    trusting = HipChatSettings(api_token=Secret(TOKEN), server_url=emu.url, ca_file=str(ca))
    default = HipChatSettings(api_token=Secret(TOKEN), server_url=emu.url)
    with trio.fail_after(10):
        async with make_http_client(trusting, 1) as http:
            sent = await HipChatClient(trusting, http).send(SENSU, DRILL)
        async with make_http_client(default, 1) as http:
            refused = await HipChatClient(default, http).send(SENSU, DRILL)
    assert emu.url.startswith("https://127.0.0.1:")
    assert ca.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert sent.kind is OutcomeKind.SENT
    assert refused.kind is OutcomeKind.TRANSPORT_ERROR
    assert "CERTIFICATE_VERIFY_FAILED" in refused.error
    assert [m.message for m in emu.messages] == ["drill"]


async def test_https_check_online_and_send_test_trust_the_ca_file(
    tls_emu: tuple[Emulator, Path],
) -> None:
    emu, ca = tls_emu

    def config(**hipchat: Any) -> Config:
        settings = HipChatSettings(api_token=Secret(TOKEN), server_url=emu.url, **hipchat)
        return Config(hipchat=settings)

    outputs = [io.StringIO() for _ in range(3)]
    with trio.fail_after(10):
        checked = await probe.check_online(config(ca_file=str(ca)), outputs[0])
        sent = await probe.send_test(config(ca_file=str(ca)), None, outputs[1])
        untrusted = await probe.check_online(config(), outputs[2])
    assert (checked, sent, untrusted) == (0, 0, 1)
    assert outputs[0].getvalue() == "ok: room sensu (token accepted)\n"
    assert outputs[1].getvalue() == "sent: room sensu\n"
    first = outputs[2].getvalue().splitlines()[0]
    assert first.startswith(f"error: cannot reach {emu.url}: ConnectError:")
    assert "CERTIFICATE_VERIFY_FAILED" in first
    assert len(emu.messages) == 1


async def test_https_certificate_covers_localhost_and_links_follow_the_host(
    tls_emu: tuple[Emulator, Path],
) -> None:
    emu, ca = tls_emu
    port = emu.url.rsplit(":", 1)[1]
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=ca)) as https:
        with trio.fail_after(10):
            room = await https.get(f"https://localhost:{port}/v2/room/ops", headers=AUTH)
            plain = await raw_exchange_tcp(emu, b"GET /v2/room/ops HTTP/1.1\r\nHost: x\r\n\r\n")
    assert room.status_code == 200
    assert room.json()["links"]["self"] == f"https://localhost:{port}/v2/room/2"
    assert b"HTTP/1.1" not in plain  # no plain HTTP on an HTTPS port


async def raw_exchange_tcp(emu: Emulator, data: bytes) -> bytes:
    """Plain bytes to the emulator's port; what came back before it closed (or reset)."""
    host, port = emu.url.split("://")[1].rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    received = bytearray()
    async with stream:
        await stream.send_all(data)
        with contextlib.suppress(trio.BrokenResourceError):
            while chunk := await stream.receive_some(65536):
                received += chunk
    return bytes(received)


async def test_hypchat_room_objects_work_over_https(tls_emu: tuple[Emulator, Path]) -> None:
    """HypChat's flow: the room's links are https (its Room class), and each one it follows works.

    HypChat GETs /v2/room/{name}, wraps the answer in its Room class only when
    links.self matches https://host/v2/room/{id}, then posts JSON to
    links.self + /notification and reads links.self + /history[/latest]; it
    parses X-Ratelimit-Remaining as int and -Reset as float on every answer.
    """
    emu, ca = tls_emu
    headers = {**AUTH, "Content-Type": "application/json"}
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=ca)) as https:
        with trio.fail_after(10):
            rooms = await https.get(f"{emu.url}/v2/room", headers=AUTH)
            got = await https.get(f"{emu.url}/v2/room/ops", headers=AUTH)
            room = got.json()
            body = {"message": "from HypChat", "notify": False, "message_format": "html"}
            posted = await https.post(
                room["links"]["self"] + "/notification", content=json.dumps(body), headers=headers
            )
            history = await https.get(
                room["links"]["self"] + "/history",
                params={"date": "recent", "timezone": "UTC", "max-results": 200},
                headers=AUTH,
            )
            future = datetime.now(UTC).replace(year=2100).isoformat()
            until = await https.get(
                room["links"]["self"] + "/history", params={"date": future}, headers=AUTH
            )
            past = await https.get(
                room["links"]["self"] + "/history",
                params={"date": "2001-01-01T00:00:00"},
                headers=AUTH,
            )
            bad_date = await https.get(
                room["links"]["self"] + "/history", params={"date": "soon"}, headers=AUTH
            )
            latest = await https.get(room["links"]["self"] + "/history/latest", headers=AUTH)
    for answer in (rooms, got, posted, history, latest):
        int(answer.headers["x-ratelimit-remaining"])
        float(answer.headers["x-ratelimit-reset"])
    assert HYPCHAT_ROOMS.fullmatch(rooms.json()["links"]["self"])
    assert all(HYPCHAT_ROOM.fullmatch(item["links"]["self"]) for item in rooms.json()["items"])
    assert HYPCHAT_ROOM.fullmatch(room["links"]["self"])
    assert room["links"]["self"] == f"{emu.url}/v2/room/2"
    assert HYPCHAT_USER.fullmatch(room["owner"]["links"]["self"])
    # Room.__init__ and Room.save() read these.
    assert {"created", "last_active", "name", "privacy", "is_archived", "is_guest_accessible",
            "topic"} <= set(room)  # fmt: skip
    datetime.fromisoformat(room["created"])
    assert posted.status_code == 204
    assert emu.messages[-1].room == "ops"
    assert history.status_code == 200
    assert HYPCHAT_HISTORY.fullmatch(history.json()["links"]["self"])
    assert [item["message"] for item in history.json()["items"]] == ["from HypChat"]
    assert [item["message"] for item in until.json()["items"]] == ["from HypChat"]
    assert past.json()["items"] == []
    assert bad_date.status_code == 400
    assert latest.json()["links"]["self"] == f"{emu.url}/v2/room/2/history/latest"


# --- HTTPS from the command line ------------------------------------------------


async def _run_until_first_line(
    argv: list[str], client: httpx.AsyncClient, check: Callable[[str], Awaitable[None]]
) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", _RUN, "--port", "0", "--room", "ops", *argv]
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, env=env)
        assert process.stdout is not None
        try:
            startup = await _read_line(process.stdout, bytearray())
            await check(startup)
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.stdout.aclose()
    return startup


@pytest.mark.parametrize("where", ["given", "temporary"])
async def test_cli_tls_writes_the_ca_and_serves_https(
    client: httpx.AsyncClient, tmp_path: Path, where: str
) -> None:
    ca_out = tmp_path / "emulator-ca.pem"
    argv = ["--tls", "--tls-ca-out", str(ca_out)] if where == "given" else ["--tls"]
    answers: list[httpx.Response] = []

    async def check(startup: str) -> None:
        url = re.search(r"listening on (https://127\.0\.0\.1:[0-9]+);", startup)
        ca = re.search(r"CA certificate in (\S+)$", startup)
        assert url is not None, startup
        assert ca is not None, startup
        context = ssl.create_default_context(cafile=ca.group(1))
        async with httpx.AsyncClient(verify=context) as https:
            answers.append(
                await https.post(
                    f"{url.group(1)}/v2/room/ops/notification",
                    json={"message": "over https"},
                    headers={"Authorization": "Bearer any"},
                )
            )

    startup = await _run_until_first_line(argv, client, check)
    ca_path = Path(startup.rsplit("CA certificate in ", 1)[1])
    assert [a.status_code for a in answers] == [204]
    if where == "given":
        assert ca_path == ca_out
        assert ca_out.read_text().startswith("-----BEGIN CERTIFICATE-----")  # kept
    else:
        assert not await trio.Path(ca_path).exists()  # ours: removed at exit


async def test_cli_tls_cert_and_key(client: httpx.AsyncClient, tmp_path: Path) -> None:
    authority = trustme.CA()
    cert, key, ca = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    issued = authority.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    authority.cert_pem.write_to_path(str(ca))
    answers: list[int] = []

    async def check(startup: str) -> None:
        url = re.search(r"listening on (https://127\.0\.0\.1:[0-9]+);", startup)
        assert url is not None, startup
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=ca)) as https:
            answer = await https.get(f"{url.group(1)}/v2/room/ops", headers=AUTH)
            answers.append(answer.status_code)

    startup = await _run_until_first_line(
        ["--tls-cert", str(cert), "--tls-key", str(key)], client, check
    )
    assert answers == [200]
    assert "CA certificate" not in startup


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--tls-ca-out", "ca.pem"], "--tls-ca-out goes with --tls"),
        (["--tls", "--tls-cert", "c.pem"], "give either --tls"),
        (["--tls-key", "k.pem"], "--tls-key needs --tls-cert"),
        (["--tls-cert", "/nonexistent/cert.pem"], "cannot load --tls-cert /nonexistent/cert.pem"),
        (["--tls", "--tls-ca-out", "/nonexistent/dir/ca.pem"], "cannot write the CA certificate"),
    ],
)
def test_cli_tls_misuse_is_one_line(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(argv)) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    [message] = captured.err.splitlines()
    assert message.startswith(f"hipchatd emulator: {line}")


def test_cli_tls_without_trustme_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "trustme", None)  # import trustme now raises ImportError
    ca_out = tmp_path / "ca.pem"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--tls", "--tls-ca-out", str(ca_out)])) == 1
    [message] = capsys.readouterr().err.splitlines()
    assert message == (
        "hipchatd emulator: --tls needs the trustme package: "
        "pip install 'hipchatd[emulator-tls]' (or give your own certificate with --tls-cert "
        "and --tls-key)"
    )
    with pytest.raises(TLSUnavailable):
        throwaway_tls(ca_out)


async def test_https_silent_client_is_closed_after_the_read_timeout(
    tls_emu: tuple[Emulator, Path], autojump_clock: trio.testing.MockClock
) -> None:
    """A TCP client that never starts the TLS handshake is not kept for the keep-alive time."""
    emu, _ = tls_emu
    host, port = emu.url.split("://")[1].rsplit(":", 1)
    with trio.fail_after(100):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            started = trio.current_time()
            assert await stream.receive_some(1024) == b""
            waited = trio.current_time() - started
    assert 10 <= waited < 11


async def test_https_down_resets_the_api_and_keeps_the_controls(
    tls_emu: tuple[Emulator, Path],
) -> None:
    emu, ca = tls_emu
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=ca)) as https:
        with trio.fail_after(10):
            await https.post(f"{emu.url}/_emulator/faults", json={"down_for": 600})
            with pytest.raises(httpx.ReadError):
                await https.get(f"{emu.url}/v2/room/ops", headers=AUTH)
            came_up = await https.post(f"{emu.url}/_emulator/faults", json={"up": True})
            back = await https.get(f"{emu.url}/v2/room/ops", headers=AUTH)
    assert came_up.json()["down"] is False
    assert back.status_code == 200
