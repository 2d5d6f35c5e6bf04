"""hipchatd.delivery.hipchat: request shapes and outcome classification.

Narrow unit tests over ``httpx.MockTransport``; one loopback TLS test for
``ca_file``. End-to-end behaviour against the emulator lives elsewhere.
"""

from __future__ import annotations

import datetime
import email.utils
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus

import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from structlog.testing import capture_logs

import hipchatd
from hipchatd import reasons
from hipchatd.clock import unix_now
from hipchatd.config import HipChatSettings, Secret
from hipchatd.delivery import hipchat as client_module
from hipchatd.delivery import outcome
from hipchatd.delivery.hipchat import (
    MAX_BODY_BYTES,
    MAX_ERROR_CHARS,
    MAX_SERVER_WAIT,
    PROTOCOL_WARNING_INTERVAL,
    SENT_BODY_GRACE,
    HipChatClient,
    Outcome,
    OutcomeKind,
    RateInfo,
    make_http_client,
    parse_rate_info,
    parse_retry_after,
    room_path,
)
from hipchatd.delivery.render import Message
from hipchatd.delivery.routing import Target
from hipchatd.errors import ConfigError
from tests.hostile_hipchat import HostileHipChat, answer

# "+", "/" and "=" make the URL-encoded forms of the token differ from the token.
TOKEN = "s3cr3tT0ken+abc/def=="
TOKEN_FORMS = (TOKEN, quote(TOKEN, safe=""), quote_plus(TOKEN))

ROOM = Target(kind="room", name="ops", notify=True, username="sensu", message_format="html")
USER = Target(
    kind="user", name="oncall@example.com", notify=False, username="sensu", message_format="text"
)
MESSAGE = Message(
    text="<b>web01</b> check_http CRITICAL",
    color="red",
    notify=True,
    message_format="html",
    sender="sensu",
)
QUIET = Message(text="resolved", color="green", notify=False, message_format="text", sender="s")

Handler = Callable[[httpx.Request], httpx.Response]


def settings(**overrides: Any) -> HipChatSettings:
    values: dict[str, Any] = {
        "api_token": Secret(TOKEN),
        "server_url": "https://hipchat.example",
    }
    values.update(overrides)
    return HipChatSettings(**values)


@asynccontextmanager
async def hipchat(handler: Handler, **overrides: Any) -> AsyncIterator[HipChatClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        yield HipChatClient(settings(**overrides), http)


class Recorder:
    """A MockTransport handler that records requests and answers with a fixed response."""

    def __init__(
        self, status: int = 204, *, content: bytes = b"", headers: Mapping[str, str] = {}
    ) -> None:
        self.status = status
        self.content = content
        self.headers = dict(headers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, content=self.content, headers=self.headers)

    @property
    def only(self) -> httpx.Request:
        assert len(self.requests) == 1
        return self.requests[0]


def v2_error(code: int, kind: str, message: str, **extra: Any) -> bytes:
    """HipChat v2's error shape: 2-space indent, keys sorted."""
    body = {"error": {"code": code, "type": kind, "message": message, **extra}}
    return json.dumps(body, indent=2, sort_keys=True).encode()


def v1_error(code: int, kind: str, message: str) -> bytes:
    """HipChat v1's error shape: compact, code/type/message order, "/" escaped."""
    body = {"error": {"code": code, "type": kind, "message": message}}
    return json.dumps(body, separators=(",", ":")).replace("/", "\\/").encode()


def assert_no_token(outcome: Outcome) -> None:
    for form in TOKEN_FORMS:
        assert form not in repr(outcome)


# --- room_path ---------------------------------------------------------------

ENCODED_NAMES = [
    ("ops/alerts", "ops%2Falerts"),
    ("my room", "my%20room"),
    ("#x", "%23x"),
    ("a+b", "a%2Bb"),
    ("Café", "Caf%C3%A9"),
    ("x?y;z", "x%3Fy%3Bz"),
    ("50%", "50%25"),
]


@pytest.mark.parametrize(("name", "segment"), ENCODED_NAMES)
def test_room_path_escapes_everything(name: str, segment: str) -> None:
    assert room_path(name) == segment


@pytest.mark.parametrize(("name", "segment"), ENCODED_NAMES)
async def test_v2_room_path_is_sent_byte_for_byte(name: str, segment: str) -> None:
    recorder = Recorder(204)
    async with hipchat(recorder) as client:
        await client.send(
            Target(kind="room", name=name, notify=False, username="u", message_format="text"),
            MESSAGE,
        )
    assert recorder.only.url.raw_path == f"/v2/room/{segment}/notification".encode()


async def test_request_urls_are_made_once_per_path_and_a_few_hundred_kept() -> None:
    recorder = Recorder(204)
    rooms = [f"room-{i}" for i in range(client_module._URLS_KEPT + 50)]
    async with hipchat(recorder, server_url="https://hipchat.example/prefix/") as client:
        for name in [*rooms, rooms[-1], rooms[0]]:
            target = Target(
                kind="room", name=name, notify=False, username="u", message_format="text"
            )
            assert (await client.send(target, MESSAGE)).kind is OutcomeKind.SENT
        kept = dict(client._urls)
        last = f"/v2/room/{rooms[-1]}/notification".encode()
        # The same URL again for a room just sent to, not one made again.
        assert client._url(last) is kept[last]
    paths = [r.url.raw_path for r in recorder.requests]
    assert paths == [
        f"/prefix/v2/room/{n}/notification".encode() for n in [*rooms, rooms[-1], rooms[0]]
    ]
    assert {r.url.host for r in recorder.requests} == {"hipchat.example"}
    # The oldest rooms were let go (room-0 came back last).
    assert len(kept) == client_module._URLS_KEPT
    assert b"/v2/room/room-0/notification" in kept
    assert b"/v2/room/room-1/notification" not in kept


# --- request shapes ----------------------------------------------------------


async def test_v2_room_notification_request() -> None:
    recorder = Recorder(204)
    async with hipchat(recorder) as client:
        outcome = await client.send(ROOM, MESSAGE)

    request = recorder.only
    assert outcome == Outcome(OutcomeKind.SENT, status=204)
    assert request.method == "POST"
    assert str(request.url) == "https://hipchat.example/v2/room/ops/notification"
    assert request.url.query == b""
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    body = json.loads(request.content)
    assert body == {
        "message": "<b>web01</b> check_http CRITICAL",
        "color": "red",
        "notify": True,
        "message_format": "html",
        "from": "sensu",
    }
    assert body["notify"] is True


async def test_v2_notify_false_is_a_json_boolean() -> None:
    recorder = Recorder(204)
    async with hipchat(recorder) as client:
        await client.send(ROOM, QUIET)
    assert json.loads(recorder.only.content)["notify"] is False


async def test_v2_user_message_request() -> None:
    recorder = Recorder(204)
    async with hipchat(recorder) as client:
        outcome = await client.send(USER, QUIET)

    request = recorder.only
    assert outcome.kind is OutcomeKind.SENT
    assert request.method == "POST"
    assert request.url.raw_path == b"/v2/user/oncall%40example.com/message"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(request.content) == {
        "message": "resolved",
        "notify": False,
        "message_format": "text",
    }


@pytest.mark.parametrize(("message", "notify"), [(MESSAGE, "1"), (QUIET, "0")])
async def test_v1_room_message_request(message: Message, notify: str) -> None:
    recorder = Recorder(200, content=b'{"status": "sent"}')
    async with hipchat(recorder, api_version="v1") as client:
        outcome = await client.send(
            Target(kind="room", name="my room", notify=True, username="u", message_format="html"),
            message,
        )

    request = recorder.only
    assert outcome == Outcome(OutcomeKind.SENT, status=200)
    assert request.method == "POST"
    assert request.url.raw_path == b"/v1/rooms/message?format=json"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert "Authorization" not in request.headers
    assert dict(parse_qsl(request.content.decode(), strict_parsing=True)) == {
        "auth_token": TOKEN,
        "room_id": "my room",
        "from": message.sender,
        "message": message.text,
        "message_format": message.message_format,
        "color": message.color,
        "notify": notify,
    }


#: A card as render builds one; the client passes it on as it is.
CARD = {"style": "application", "id": "c1", "title": "CRITICAL web01/check_http"}


async def test_v2_room_notification_carries_the_card_beside_the_message() -> None:
    recorder = Recorder(204)
    async with hipchat(recorder) as client:
        await client.send(ROOM, replace(MESSAGE, card=CARD))
    body = json.loads(recorder.only.content)
    assert body["card"] == CARD
    assert body["message"] == MESSAGE.text


async def test_only_a_v2_room_notification_carries_a_card() -> None:
    recorder = Recorder(204)
    async with hipchat(recorder) as client:
        await client.send(USER, replace(QUIET, card=CARD))
        await client.send(ROOM, MESSAGE)
    v1 = Recorder(200, content=b'{"status": "sent"}')
    async with hipchat(v1, api_version="v1") as client:
        await client.send(ROOM, replace(MESSAGE, card=CARD))
    user_body, room_body = (json.loads(r.content) for r in recorder.requests)
    assert "card" not in user_body
    assert "card" not in room_body
    assert "card" not in dict(parse_qsl(v1.only.content.decode()))


@pytest.mark.parametrize("api_version", ["v1", "v2"])
async def test_token_never_in_the_url(api_version: str) -> None:
    recorder = Recorder(204)
    async with hipchat(recorder, api_version=api_version) as client:
        await client.send(ROOM, MESSAGE)
        await client.auth_test(ROOM)
    for request in recorder.requests:
        for form in TOKEN_FORMS:
            assert form not in str(request.url)


async def test_v1_user_target_is_refused_without_a_request() -> None:
    recorder = Recorder(200)
    async with hipchat(recorder, api_version="v1") as client:
        outcome = await client.send(USER, QUIET)
    assert recorder.requests == []
    assert outcome.kind is OutcomeKind.BAD_REQUEST
    assert outcome.error is not None
    assert "v2" in outcome.error


@pytest.mark.parametrize(
    ("server_url", "expected"),
    [
        ("https://h/prefix/", "https://h/prefix/v2/room/ops/notification"),
        ("https://h/prefix", "https://h/prefix/v2/room/ops/notification"),
        ("https://h/a/b//", "https://h/a/b/v2/room/ops/notification"),
        ("https://h/", "https://h/v2/room/ops/notification"),
        ("https://h", "https://h/v2/room/ops/notification"),
        ("http://127.0.0.1:8080/hc/", "http://127.0.0.1:8080/hc/v2/room/ops/notification"),
    ],
)
async def test_base_url_keeps_prefix_without_double_slash(server_url: str, expected: str) -> None:
    recorder = Recorder(204)
    async with hipchat(recorder, server_url=server_url) as client:
        await client.send(ROOM, MESSAGE)
    assert str(recorder.only.url) == expected


async def test_v1_base_url_keeps_prefix() -> None:
    recorder = Recorder(200)
    async with hipchat(recorder, api_version="v1", server_url="https://h/prefix/") as client:
        await client.send(ROOM, MESSAGE)
    assert str(recorder.only.url) == "https://h/prefix/v1/rooms/message?format=json"


async def test_lone_surrogate_is_sent_as_replacement_character() -> None:
    recorder = Recorder(204)
    broken = Message(
        text="bad \ud800 byte", color="red", notify=False, message_format="text", sender="s"
    )
    async with hipchat(recorder) as client:
        outcome = await client.send(ROOM, broken)
    assert outcome.kind is OutcomeKind.SENT
    assert json.loads(recorder.only.content)["message"] == "bad \ufffd byte"


# --- auth_test ---------------------------------------------------------------

AUTH_OK = json.dumps(
    {
        "success": {
            "code": 202,
            "message": "This auth_token has access to use this method.",
            "type": "Accepted",
        }
    }
).encode()


@pytest.mark.parametrize(
    ("target", "raw_path"),
    [
        (ROOM, b"/v2/room/ops/notification?auth_test=true"),
        (USER, b"/v2/user/oncall%40example.com/message?auth_test=true"),
    ],
)
async def test_v2_auth_test_request(target: Target, raw_path: bytes) -> None:
    recorder = Recorder(202, content=AUTH_OK)
    async with hipchat(recorder) as client:
        outcome = await client.auth_test(target)

    request = recorder.only
    assert outcome == Outcome(OutcomeKind.SENT, status=202)
    assert request.method == "POST"
    assert request.url.raw_path == raw_path
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    body = json.loads(request.content)
    assert isinstance(body["message"], str)
    assert body["message"]
    assert body["notify"] is False


async def test_v1_auth_test_request() -> None:
    recorder = Recorder(202, content=AUTH_OK)
    async with hipchat(recorder, api_version="v1") as client:
        outcome = await client.auth_test(ROOM)

    request = recorder.only
    assert outcome.kind is OutcomeKind.SENT
    assert request.url.raw_path == b"/v1/rooms/message?format=json"
    form = dict(parse_qsl(request.content.decode()))
    assert form["auth_test"] == "true"
    assert form["auth_token"] == TOKEN
    assert form["room_id"] == "ops"
    assert 1 <= len(form["from"]) <= 15


async def test_auth_test_with_bad_token_is_unauthorized() -> None:
    recorder = Recorder(401, content=v2_error(401, "Unauthorized", "Invalid OAuth session"))
    async with hipchat(recorder) as client:
        outcome = await client.auth_test(ROOM)
    assert outcome.kind is OutcomeKind.UNAUTHORIZED
    assert outcome.error == "Invalid OAuth session"


# --- classification ----------------------------------------------------------

RATE_LIMIT_MESSAGE = (
    "You have exceeded the rate limit. See https://www.hipchat.com/docs/api/rate_limiting"
)
NOTIFY_TYPE_MESSAGE = "Value u'true' for field 'notify' is not of type 'boolean'"
SCOPE_MESSAGE = "This action requires one of the following scopes: [u'send_notification']"
HTML_405 = (
    b"<!DOCTYPE HTML PUBLIC>\n<title>405 Method Not Allowed</title>\n"
    b"<h1>Method Not Allowed</h1>\n<p>The method is not allowed for the requested URL.</p>\n"
)


@pytest.mark.parametrize(
    ("api_version", "status", "content", "kind", "error"),
    [
        ("v2", 204, b"", OutcomeKind.SENT, None),
        ("v1", 200, b'{"status": "sent"}', OutcomeKind.SENT, None),
        ("v2", 201, b'{"id": "x"}', OutcomeKind.SENT, None),
        (
            "v2",
            429,
            v2_error(429, "Too Many Requests", "Rate Limit exceeded"),
            OutcomeKind.RATE_LIMITED,
            "Rate Limit exceeded",
        ),
        ("v2", 429, b"", OutcomeKind.RATE_LIMITED, "429 Too Many Requests"),
        (
            "v1",
            403,
            v1_error(403, "Forbidden", RATE_LIMIT_MESSAGE),
            OutcomeKind.RATE_LIMITED,
            RATE_LIMIT_MESSAGE,
        ),
        (
            "v2",
            403,
            v2_error(403, "Forbidden", RATE_LIMIT_MESSAGE),
            OutcomeKind.RATE_LIMITED,
            RATE_LIMIT_MESSAGE,
        ),
        (
            "v1",
            403,
            v1_error(403, "Forbidden", "Access denied"),
            OutcomeKind.FORBIDDEN,
            "Access denied",
        ),
        (
            "v2",
            403,
            v2_error(403, "Forbidden", SCOPE_MESSAGE),
            OutcomeKind.FORBIDDEN,
            SCOPE_MESSAGE,
        ),
        (
            "v1",
            401,
            v1_error(401, "Unauthorized", "Auth token invalid. Please see: https://x/auth"),
            OutcomeKind.UNAUTHORIZED,
            "Auth token invalid. Please see: https://x/auth",
        ),
        (
            "v2",
            401,
            v2_error(401, "Unauthorized", "Invalid OAuth session"),
            OutcomeKind.UNAUTHORIZED,
            "Invalid OAuth session",
        ),
        (
            "v2",
            404,
            v2_error(404, "Not Found", "Room not found"),
            OutcomeKind.NOT_FOUND,
            "Room not found",
        ),
        (
            "v1",
            404,
            v1_error(404, "Not Found", "Room not found"),
            OutcomeKind.NOT_FOUND,
            "Room not found",
        ),
        (
            "v2",
            400,
            v2_error(
                400,
                "Bad Request",
                NOTIFY_TYPE_MESSAGE,
                expected_type="boolean",
                field="notify",
                validation="type",
                value="true",
            ),
            OutcomeKind.BAD_REQUEST,
            NOTIFY_TYPE_MESSAGE,
        ),
        (
            "v2",
            405,
            HTML_405,
            OutcomeKind.BAD_REQUEST,
            "405 Method Not Allowed: 405 Method Not Allowed Method Not Allowed "
            "The method is not allowed for the requested URL.",
        ),
        ("v1", 406, b"", OutcomeKind.BAD_REQUEST, "406 Not Acceptable"),
        ("v2", 413, b"too big", OutcomeKind.BAD_REQUEST, "413 Request Entity Too Large: too big"),
        ("v2", 500, b"", OutcomeKind.SERVER_ERROR, "500 Internal Server Error"),
        (
            "v1",
            503,
            v1_error(503, "Service Unavailable", "Down for maintenance"),
            OutcomeKind.SERVER_ERROR,
            "Down for maintenance",
        ),
        ("v2", 599, b"", OutcomeKind.SERVER_ERROR, "HTTP 599"),
    ],
)
async def test_classification(
    api_version: str, status: int, content: bytes, kind: OutcomeKind, error: str | None
) -> None:
    async with hipchat(Recorder(status, content=content), api_version=api_version) as client:
        outcome = await client.send(ROOM, MESSAGE)
    assert outcome.kind is kind
    assert outcome.status == status
    assert outcome.error == error


@pytest.mark.parametrize(
    ("kind", "transient"),
    [
        (OutcomeKind.SENT, False),
        (OutcomeKind.RATE_LIMITED, True),
        (OutcomeKind.UNAUTHORIZED, False),
        (OutcomeKind.FORBIDDEN, False),
        (OutcomeKind.NOT_FOUND, False),
        (OutcomeKind.BAD_REQUEST, False),
        (OutcomeKind.SERVER_ERROR, True),
        (OutcomeKind.TRANSPORT_ERROR, True),
        (OutcomeKind.TIMEOUT, True),
    ],
)
def test_transient_kinds(kind: OutcomeKind, transient: bool) -> None:
    assert kind.transient is transient


async def test_redirect_is_not_followed() -> None:
    recorder = Recorder(301, headers={"Location": "https://elsewhere.example/v2/room/ops"})
    async with hipchat(recorder) as client:
        outcome = await client.send(ROOM, MESSAGE)
    assert len(recorder.requests) == 1
    assert outcome.kind is OutcomeKind.BAD_REQUEST
    assert outcome.error == "301 Moved Permanently to https://elsewhere.example/v2/room/ops"


@pytest.mark.parametrize(
    "content",
    [
        b"<html>" + b"x" * 5000 + b"</html>",
        b"\xff\xfe\x00garbage" * 100,
        b"[" * 100_000,
        b'{"error": "just a string"}',
        b'{"error": {"message": 42}}',
        b'["error"]',
        b"null",
    ],
)
async def test_odd_error_bodies_never_raise_and_stay_short(content: bytes) -> None:
    async with hipchat(Recorder(502, content=content)) as client:
        outcome = await client.send(ROOM, MESSAGE)
    assert outcome.kind is OutcomeKind.SERVER_ERROR
    assert outcome.error is not None
    assert outcome.error.startswith("502 Bad Gateway")
    assert len(outcome.error) <= MAX_ERROR_CHARS
    assert "\n" not in outcome.error


async def test_long_hipchat_message_is_cut() -> None:
    content = v2_error(400, "Bad Request", "y" * 1000)
    async with hipchat(Recorder(400, content=content)) as client:
        outcome = await client.send(ROOM, MESSAGE)
    assert outcome.error == "y" * (MAX_ERROR_CHARS - 1) + "…"


# --- transport errors, cancellation, bugs ------------------------------------


def raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("exc", "kind", "error"),
    [
        (
            httpx.ConnectError("[Errno 111] Connection refused"),
            OutcomeKind.TRANSPORT_ERROR,
            "ConnectError: [Errno 111] Connection refused",
        ),
        (httpx.ReadError(""), OutcomeKind.TRANSPORT_ERROR, "ReadError"),
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            OutcomeKind.TRANSPORT_ERROR,
            "RemoteProtocolError: Server disconnected without sending a response.",
        ),
        (httpx.ReadTimeout("timed out"), OutcomeKind.TIMEOUT, "ReadTimeout: timed out"),
    ],
)
async def test_transport_errors_become_outcomes(
    exc: Exception, kind: OutcomeKind, error: str
) -> None:
    async with hipchat(raising(exc)) as client:
        outcome = await client.send(ROOM, MESSAGE)
    assert outcome == Outcome(kind, error=error)
    assert outcome.kind.transient


def chained(outer: httpx.TransportError, inner: Exception) -> httpx.TransportError:
    """``outer`` as httpx raises it: ``raise outer from inner``."""
    outer.__cause__ = inner
    return outer


async def test_transport_error_description_comes_from_the_cause_chain() -> None:
    inner = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    )
    exc = chained(httpx.ConnectError(""), chained(httpx.ConnectError(""), inner))
    async with hipchat(raising(exc)) as client:
        outcome = await client.send(ROOM, MESSAGE)
    assert outcome == Outcome(
        OutcomeKind.TRANSPORT_ERROR,
        error="ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed",
    )


@pytest.mark.parametrize("api_version", ["v1", "v2"])
@pytest.mark.parametrize("auth_test", [False, True])
async def test_other_exceptions_become_transport_errors_logged_loud(
    api_version: str, auth_test: bool
) -> None:
    async with hipchat(raising(RuntimeError(f"a bug near {TOKEN}")), api_version=api_version) as c:
        with capture_logs() as logs:
            outcome = await (c.auth_test(ROOM) if auth_test else c.send(ROOM, MESSAGE))
    assert outcome == Outcome(
        OutcomeKind.TRANSPORT_ERROR, error="unexpected RuntimeError: a bug near [REDACTED]"
    )
    assert [(e["event"], e["log_level"], e["exc_info"]) for e in logs] == [
        ("hipchat.request_failed", "error", True)
    ]
    assert TOKEN not in repr(logs[0]["error"])


@pytest.mark.parametrize(
    ("token", "api_version"),
    [
        # httpx encodes header values as ASCII, v1's form body as UTF-8.
        ("tok\u20acen-0123456789", "v2"),
        ("tok\ud800en-0123456789", "v2"),
        ("tok\ud800en-0123456789", "v1"),
    ],
)
async def test_a_token_httpx_cannot_encode_is_an_outcome_not_a_crash(
    token: str, api_version: str
) -> None:
    # load_config refuses such a token; a client built around it still never raises.
    recorder = Recorder()
    async with hipchat(recorder, api_version=api_version, api_token=Secret(token)) as client:
        with capture_logs():
            outcome = await client.send(ROOM, MESSAGE)
    assert outcome.kind is OutcomeKind.TRANSPORT_ERROR
    assert outcome.error is not None
    assert outcome.error.startswith("unexpected ")
    assert "0123456789" not in outcome.error


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3)])
async def test_keyboard_interrupt_class_exceptions_propagate(exc: BaseException) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    async with hipchat(handler) as client:
        with pytest.raises(type(exc)):
            await client.send(ROOM, MESSAGE)


async def test_cancellation_propagates(autojump_clock: trio.testing.MockClock) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    outcomes: list[Outcome] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(hang)) as http:
        client = HipChatClient(settings(), http)
        with trio.move_on_after(10) as scope:
            outcomes.append(await client.send(ROOM, MESSAGE))
    assert scope.cancelled_caught
    assert outcomes == []


def test_timeout_outcome_helper() -> None:
    outcome = Outcome.timeout(10.0)
    assert outcome.kind is OutcomeKind.TIMEOUT
    assert outcome.kind.transient
    assert outcome.status is None
    assert outcome.error == "no answer from HipChat within 10 s"


# --- token scrubbing ----------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError(f"failed https://h/v1/rooms/message?auth_token={TOKEN}"),
        httpx.ConnectError(f"failed https://h/v2/room/ops?auth_token={quote(TOKEN, safe='')}"),
        httpx.ConnectError(f"form auth_token={quote_plus(TOKEN)}&room_id=ops"),
        httpx.ConnectError("x" * 195 + TOKEN),
        httpx.ReadTimeout(f"Bearer {TOKEN}"),
        httpx.LocalProtocolError(f"Illegal header value {f'Bearer {TOKEN}'.encode()!r}"),
        httpx.ConnectError(f"bad value {TOKEN!r} in {json.dumps({'auth_token': TOKEN})}"),
        httpx.ConnectError(f"auth_token={quote_plus(TOKEN).replace('%2F', '%2f')}"),
        chained(httpx.ConnectError(""), OSError(f"connect to https://h/?auth_token={TOKEN}")),
    ],
)
@pytest.mark.parametrize("api_version", ["v1", "v2"])
async def test_token_scrubbed_from_transport_errors(exc: Exception, api_version: str) -> None:
    async with hipchat(raising(exc), api_version=api_version) as client:
        outcome = await client.send(ROOM, MESSAGE)
    assert_no_token(outcome)
    assert outcome.error is not None
    assert TOKEN[:6] not in outcome.error
    assert "[REDACTED]" in outcome.error or outcome.error.endswith("…")


@pytest.mark.parametrize(
    ("status", "content", "headers"),
    [
        (401, v1_error(401, "Unauthorized", f"Auth token {TOKEN} invalid"), {}),
        (400, f"<p>bad auth_token={quote_plus(TOKEN)}</p>".encode(), {}),
        (500, f"echo Authorization: Bearer {TOKEN}".encode(), {}),
        (302, b"", {"Location": f"https://h/login?auth_token={quote(TOKEN, safe='')}"}),
    ],
)
async def test_token_scrubbed_from_hipchat_errors(
    status: int, content: bytes, headers: dict[str, str]
) -> None:
    async with hipchat(Recorder(status, content=content, headers=headers)) as client:
        outcome = await client.send(ROOM, MESSAGE)
    assert_no_token(outcome)
    assert outcome.error is not None
    assert "[REDACTED]" in outcome.error


# --- rate-limit headers -------------------------------------------------------


def test_parse_rate_info_integer_reset() -> None:
    headers = {
        "X-Ratelimit-Limit": "500",
        "X-Ratelimit-Remaining": "499",
        "X-Ratelimit-Reset": "1366037820",
    }
    assert parse_rate_info(headers, "X-Ratelimit") == RateInfo(500, 499, 1366037820.0)


def test_parse_rate_info_float_reset_and_lowercase_names() -> None:
    headers = {
        "x-ratelimit-limit": "100",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": "1412564640.0",
    }
    assert parse_rate_info(headers, "X-Ratelimit") == RateInfo(100, 0, 1412564640.0)


def test_parse_rate_info_reads_hipchat_go_casing() -> None:
    headers = httpx.Headers({"X-Floodcontrol-Remaining": "29", "X-Floodcontrol-Reset": "17.5"})
    assert parse_rate_info(headers, "X-FloodControl") == RateInfo(None, 29, 17.5)


def test_parse_rate_info_absent_family_is_none() -> None:
    assert parse_rate_info({"X-Ratelimit-Limit": "500"}, "X-FloodControl") is None
    assert parse_rate_info({}, "X-Ratelimit") is None


@pytest.mark.parametrize("garbage", ["", "abc", "-1", "nan", "inf", "1e3", "1_000", "1, 2", "0x10"])
def test_parse_rate_info_garbage_is_none(garbage: str) -> None:
    headers = {
        "X-Ratelimit-Limit": garbage,
        "X-Ratelimit-Remaining": garbage,
        "X-Ratelimit-Reset": garbage,
    }
    assert parse_rate_info(headers, "X-Ratelimit") == RateInfo(None, None, None)


def test_parse_rate_info_non_integral_count_is_none() -> None:
    headers = {"X-Ratelimit-Limit": "100.0", "X-Ratelimit-Remaining": "2.5"}
    assert parse_rate_info(headers, "X-Ratelimit") == RateInfo(100, None, None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 1000.0 + 120),
        (" 1.5 ", 1000.0 + 1.5),
        ("0", 1000.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 1445412480.0),
        ("Wed, 21 Oct 2015 07:28:00 -0000", 1445412480.0),
        ("Wed, 21 Oct 2015 09:28:00 +0200", 1445412480.0),
        (None, None),
        ("", None),
        ("-5", None),
        ("soon", None),
        ("nan", None),
        ("Wed, 99 Foo 2015", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=1000.0) == expected


def test_retry_after_date_constant_matches_datetime() -> None:
    expected = datetime.datetime(2015, 10, 21, 7, 28, tzinfo=datetime.UTC).timestamp()
    assert expected == 1445412480.0


def rate_headers(
    *, rate: tuple[int, float] | None = None, flood: tuple[int, float] | None = None
) -> dict[str, str]:
    headers: dict[str, str] = {}
    if rate is not None:
        headers |= {
            "X-Ratelimit-Limit": "500",
            "X-Ratelimit-Remaining": str(rate[0]),
            "X-Ratelimit-Reset": str(rate[1]),
        }
    if flood is not None:
        headers |= {
            "X-FloodControl-Limit": "30",
            "X-FloodControl-Remaining": str(flood[0]),
            "X-FloodControl-Reset": str(flood[1]),
        }
    return headers


async def test_429_carries_both_families(autojump_clock: trio.testing.MockClock) -> None:
    now = unix_now()
    headers = rate_headers(rate=(12, now + 200), flood=(0, now + 40))
    async with hipchat(Recorder(429, headers=headers)) as client:
        outcome = await client.send(ROOM, MESSAGE)
    assert outcome.rate == RateInfo(500, 12, now + 200)
    assert outcome.flood == RateInfo(30, 0, now + 40)


@pytest.mark.parametrize(
    ("rate", "flood", "extra", "offset"),
    [
        # Retry-After wins over everything.
        ((0, 200), (0, 40), {"Retry-After": "30"}, 30),
        # the exhausted family's reset: flood, then rate
        ((12, 200), (0, 40), {}, 40),
        ((0, 200), (3, 40), {}, 200),
        ((0, 200), (0, 40), {}, 40),
        # nothing exhausted: the later known reset
        ((5, 200), (3, 40), {}, 200),
        ((5, 20), (3, 40), {}, 40),
        (None, (3, 40), {}, 40),
        # exhausted but without a usable reset: fall back to the other family
        ((0, 200), None, {}, 200),
    ],
)
async def test_retry_at_for_rate_limited(
    autojump_clock: trio.testing.MockClock,
    rate: tuple[int, float] | None,
    flood: tuple[int, float] | None,
    extra: dict[str, str],
    offset: float,
) -> None:
    now = unix_now()
    headers = rate_headers(
        rate=None if rate is None else (rate[0], now + rate[1]),
        flood=None if flood is None else (flood[0], now + flood[1]),
    )
    async with hipchat(Recorder(429, headers=headers | extra)) as client:
        outcome = await client.send(ROOM, MESSAGE)
    assert outcome.kind is OutcomeKind.RATE_LIMITED
    assert outcome.retry_at == now + offset


async def test_retry_at_for_v1_403_rate_limit(autojump_clock: trio.testing.MockClock) -> None:
    now = unix_now()
    content = v1_error(403, "Forbidden", RATE_LIMIT_MESSAGE)
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": f"{now + 120:.0f}"}
    async with hipchat(Recorder(403, content=content, headers=headers), api_version="v1") as c:
        outcome = await c.send(ROOM, MESSAGE)
    assert outcome.kind is OutcomeKind.RATE_LIMITED
    assert outcome.retry_at == float(f"{now + 120:.0f}")


async def test_rate_limited_without_headers_has_no_retry_at() -> None:
    async with hipchat(Recorder(429)) as client:
        outcome = await client.send(ROOM, MESSAGE)
    assert outcome.kind is OutcomeKind.RATE_LIMITED
    assert outcome.retry_at is None
    assert outcome.rate is None
    assert outcome.flood is None


async def test_retry_after_http_date_on_503(autojump_clock: trio.testing.MockClock) -> None:
    when = float(int(unix_now()) + 120)
    headers = {"Retry-After": email.utils.formatdate(when, usegmt=True)}
    async with hipchat(Recorder(503, headers=headers)) as client:
        outcome = await client.send(ROOM, MESSAGE)
    assert outcome.kind is OutcomeKind.SERVER_ERROR
    assert outcome.retry_at == when


async def test_server_error_ignores_reset_headers() -> None:
    headers = rate_headers(rate=(0, 2e9), flood=(0, 2e9))
    async with hipchat(Recorder(500, headers=headers)) as client:
        outcome = await client.send(ROOM, MESSAGE)
    assert outcome.kind is OutcomeKind.SERVER_ERROR
    assert outcome.retry_at is None


@pytest.mark.parametrize("status", [204, 401, 404])
async def test_no_retry_at_unless_transient(
    autojump_clock: trio.testing.MockClock, status: int
) -> None:
    reset = float(int(unix_now()) + 200)
    headers = rate_headers(rate=(0, reset), flood=(0, reset)) | {"Retry-After": "30"}
    async with hipchat(Recorder(status, headers=headers)) as client:
        outcome = await client.send(ROOM, MESSAGE)
    assert outcome.retry_at is None
    assert outcome.rate == RateInfo(500, 0, reset)
    assert outcome.flood == RateInfo(30, 0, reset)


# --- server-named waits and protocol errors ----------------------------------


def protocol_errors(logs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["header"], e["value"]) for e in logs if e["event"] == "hipchat.protocol_error"]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("99999999999", "more than the 360 s believed"),
        ("9" * 400, "more than the 360 s believed"),
        ("361", "more than the 360 s believed"),
        ("Wed, 21 Oct 2099 07:28:00 GMT", "more than the 360 s believed"),
        ("-5", "neither non-negative delay seconds nor an HTTP-date"),
        ("soon", "neither non-negative delay seconds nor an HTTP-date"),
        ("1e3", "neither non-negative delay seconds nor an HTTP-date"),
    ],
)
@pytest.mark.parametrize("status", [429, 503])
async def test_an_absurd_retry_after_is_a_protocol_error_and_ignored(
    autojump_clock: trio.testing.MockClock, value: str, problem: str, status: int
) -> None:
    async with hipchat(Recorder(status, headers={"Retry-After": value})) as client:
        with capture_logs() as logs:
            outcome = await client.send(ROOM, MESSAGE)
    assert outcome.kind.transient
    assert outcome.retry_at is None  # the normal backoff applies
    [warning] = logs
    assert warning == {
        "event": "hipchat.protocol_error",
        "log_level": "warning",
        "header": "Retry-After",
        "value": value[:64],
        "problem": problem,
        "instead": "ignored Retry-After; retried after the normal backoff",
        "suppressed": 0,
    }


async def test_a_retry_after_within_the_clamp_is_believed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    now = unix_now()
    headers = {"Retry-After": f"{MAX_SERVER_WAIT:g}"}
    async with hipchat(Recorder(429, headers=headers)) as client:
        with capture_logs() as logs:
            outcome = await client.send(ROOM, MESSAGE)
    assert outcome.retry_at == now + MAX_SERVER_WAIT
    assert logs == []


def family(prefix: str, limit: str, remaining: str, reset: str) -> dict[str, str]:
    return {f"{prefix}-Limit": limit, f"{prefix}-Remaining": remaining, f"{prefix}-Reset": reset}


@pytest.mark.parametrize("prefix", ["X-Ratelimit", "X-FloodControl"])
@pytest.mark.parametrize(
    ("limit", "remaining", "reset_in", "header", "problem"),
    [
        ("0", "0", "60", "Limit", "a limit of 0 allows no request ever"),
        ("30", "0", "99999999", "Reset", "99999999 s ahead, more than the 360 s believed"),
        ("30", "0", "361", "Reset", "361 s ahead, more than the 360 s believed"),
        ("30", "31", "60", "Remaining", "more than the limit of 30"),
        ("-30", "0", "60", "Limit", "not a non-negative integer"),
        ("30", "-1", "60", "Remaining", "not a non-negative integer"),
        ("30", "lots", "60", "Remaining", "not a non-negative integer"),
        ("30", "0", "tomorrow", "Reset", "not a Unix time"),
    ],
)
@pytest.mark.parametrize("status", [204, 429])
async def test_a_broken_rate_family_is_a_protocol_error_and_ignored(
    autojump_clock: trio.testing.MockClock,
    prefix: str,
    limit: str,
    remaining: str,
    reset_in: str,
    header: str,
    problem: str,
    status: int,
) -> None:
    now = int(unix_now())
    reset = str(now + int(reset_in)) if reset_in.isdigit() else reset_in
    headers = family(prefix, limit, remaining, reset)
    async with hipchat(Recorder(status, headers=headers)) as client:
        with capture_logs() as logs:
            outcome = await client.send(ROOM, MESSAGE)
    assert outcome.rate is None
    assert outcome.flood is None
    assert outcome.retry_at is None
    [warning] = logs
    assert warning["header"] == f"{prefix}-{header}"
    assert warning["problem"] == problem
    assert warning["instead"] == (
        f"ignored the {prefix}-* headers; counted the request against the configured budget"
    )


async def test_the_other_family_survives_a_broken_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    now = int(unix_now())
    headers = family("X-Ratelimit", "500", "0", str(now + 10**9)) | family(
        "X-FloodControl", "30", "0", str(now + 40)
    )
    async with hipchat(Recorder(429, headers=headers)) as client:
        with capture_logs():
            outcome = await client.send(ROOM, MESSAGE)
    assert outcome.rate is None
    assert outcome.flood == RateInfo(30, 0, now + 40)
    assert outcome.retry_at == now + 40


async def test_a_reset_in_the_past_is_not_a_protocol_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Clocks disagree; the budget copes with a window that is over already.
    now = int(unix_now())
    headers = family("X-Ratelimit", "500", "10", str(now - 3600))
    async with hipchat(Recorder(204, headers=headers)) as client:
        with capture_logs() as logs:
            outcome = await client.send(ROOM, MESSAGE)
    assert outcome.rate == RateInfo(500, 10, now - 3600)
    assert logs == []


async def test_protocol_errors_are_logged_once_per_header_per_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    headers = {"Retry-After": "99999999999"}
    async with hipchat(Recorder(429, headers=headers)) as client:
        with capture_logs() as logs:
            for _ in range(5):
                await client.send(ROOM, MESSAGE)
            await trio.sleep(PROTOCOL_WARNING_INTERVAL)
            await client.send(ROOM, MESSAGE)
    assert protocol_errors(logs) == [("Retry-After", "99999999999")] * 2
    assert [e["suppressed"] for e in logs] == [0, 4]


# --- response bodies ------------------------------------------------------------


class Body(httpx.AsyncByteStream):
    """A response body as a server streams it: ``chunks`` pieces, then ``then``."""

    def __init__(
        self,
        chunk: bytes = b"x" * 4096,
        # "Endless": 64 MiB, so a client that reads bodies whole fails instead of
        # exhausting the machine.
        chunks: float = 16 * 1024,
        then: BaseException | None = None,
        drip: float = 0.0,
    ) -> None:
        self.chunk = chunk
        self.chunks = chunks
        self.then = then
        self.drip = drip
        self.sent = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.sent < self.chunks:
            # A socket read is a checkpoint even when data is waiting.
            await trio.sleep(self.drip)
            self.sent += 1
            yield self.chunk
        if self.then is not None:
            raise self.then

    async def aclose(self) -> None:
        self.closed = True


def streaming(status: int, body: Body, **headers: str) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, stream=body)

    return handler


@pytest.mark.parametrize("status", [204, 500, 401])
async def test_an_endless_body_is_read_up_to_the_limit_then_closed(status: int) -> None:
    body = Body()
    async with hipchat(streaming(status, body)) as client:
        outcome = await client.send(ROOM, MESSAGE)
    assert outcome.status == status
    assert body.sent * len(body.chunk) <= MAX_BODY_BYTES + len(body.chunk)
    assert body.closed


async def test_a_huge_error_page_keeps_its_status_and_a_short_error() -> None:
    body = Body(b"<p>" + b"y" * 65533, chunks=1600)  # 100 MiB
    async with hipchat(streaming(503, body)) as client:
        outcome = await client.send(ROOM, MESSAGE)
    assert outcome.kind is OutcomeKind.SERVER_ERROR
    assert outcome.error is not None
    assert len(outcome.error) <= MAX_ERROR_CHARS
    assert outcome.error.startswith("503 Service Unavailable: y")
    assert body.sent <= 2


@pytest.mark.parametrize(
    ("status", "kind"),
    [(204, OutcomeKind.SENT), (500, OutcomeKind.SERVER_ERROR), (404, OutcomeKind.NOT_FOUND)],
)
async def test_a_body_that_breaks_off_still_gives_the_status_outcome(
    status: int, kind: OutcomeKind
) -> None:
    body = Body(b'{"error": {"mess', chunks=1, then=httpx.ReadError("connection reset"))
    async with hipchat(streaming(status, body)) as client:
        outcome = await client.send(ROOM, MESSAGE)
    assert outcome.kind is kind
    assert outcome.status == status


async def test_a_dripping_2xx_body_is_sent_after_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    body = Body(b"{", drip=10.0)
    started = trio.current_time()
    async with hipchat(streaming(200, body)) as client:
        with trio.move_on_after(30):
            outcome = await client.send(ROOM, MESSAGE)
    assert outcome.kind is OutcomeKind.SENT
    assert trio.current_time() - started == pytest.approx(SENT_BODY_GRACE)


async def test_a_dripping_error_body_is_bounded_by_the_callers_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    body = Body(b"<", drip=1.0)
    outcomes: list[Outcome] = []
    async with hipchat(streaming(500, body)) as client:
        with trio.move_on_after(10) as scope:
            outcomes.append(await client.send(ROOM, MESSAGE))
    assert scope.cancelled_caught
    assert outcomes == []
    assert body.closed


async def test_a_compressed_body_is_not_inflated() -> None:
    body = Body(b"\x1f\x8b\x08\x00" + b"\x00" * 60, chunks=1)
    async with hipchat(streaming(500, body, **{"Content-Encoding": "gzip"})) as client:
        outcome = await client.send(ROOM, MESSAGE)
    assert outcome == Outcome(
        OutcomeKind.SERVER_ERROR, status=500, error="500 Internal Server Error"
    )


# --- make_http_client ---------------------------------------------------------


async def test_make_http_client_configuration() -> None:
    async with make_http_client(settings(), concurrency=7) as http:
        assert http.trust_env is False
        assert http.follow_redirects is False
        assert http.timeout == httpx.Timeout(None)
        assert http.headers["User-Agent"] == f"hipchatd/{hipchatd.__version__}"
        assert http.headers["Accept-Encoding"] == "identity"
        # httpx exposes no public view of its limits; httpcore's pool holds them.
        pool = http._transport._pool  # type: ignore[attr-defined]
        assert pool._max_connections == 7
        assert pool._max_keepalive_connections == 7


async def test_the_daemons_client_keeps_no_cookie_and_sends_compact_json(
    nursery: trio.Nursery,
) -> None:
    # HipChat authenticates every request by its token: a cookie a server (or a
    # balancer in front of it) sets is never sent back.
    server = HostileHipChat()
    server.then(answer(204, [("Set-Cookie", "session=abc; Path=/")]))
    await nursery.start(server.serve)
    async with make_http_client(settings(server_url=server.url), concurrency=1) as http:
        client = HipChatClient(settings(server_url=server.url), http)
        outcomes = [await client.send(ROOM, MESSAGE) for _ in range(2)]
        assert not http.cookies
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT, OutcomeKind.SENT]
    assert [r.headers.get("cookie") for r in server.requests] == [None, None]
    sent = server.requests[1]
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    compact = json.dumps(server.delivered[-1], separators=(",", ":"), ensure_ascii=False)
    assert sent.body == compact.encode()


async def test_the_daemons_client_once_closed_sends_nothing(nursery: trio.Nursery) -> None:
    server = HostileHipChat()
    await nursery.start(server.serve)
    async with make_http_client(settings(server_url=server.url), concurrency=1) as http:
        client = HipChatClient(settings(server_url=server.url), http)
    with capture_logs() as logs:
        outcome = await client.send(ROOM, MESSAGE)
    assert outcome.kind is OutcomeKind.TRANSPORT_ERROR
    assert outcome.error == "unexpected RuntimeError: the HTTP client is closed"
    assert [line["event"] for line in logs] == ["hipchat.request_failed"]
    assert server.requests == []


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_unusable_ca_file_is_a_config_error(tmp_path: Path, content: str | None) -> None:
    ca_file = tmp_path / "ca.pem"
    if content is not None:
        ca_file.write_text(content)
    with pytest.raises(ConfigError, match=r"hipchat\.ca_file") as info:
        make_http_client(settings(ca_file=str(ca_file)), concurrency=1)
    assert str(ca_file) in str(info.value)


def write_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a 127.0.0.1 server certificate it signed: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hipchatd test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "cert.pem",
        directory / "key.pem",
    )
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


async def answer_204(stream: trio.SSLStream[trio.SocketStream]) -> None:
    """Read one HTTP/1.1 request and answer 204; ignore clients that hang up."""
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some()
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += await stream.receive_some()
        await stream.send_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


@pytest.mark.parametrize("trusted", [True, False])
async def test_ca_file_is_trusted_over_loopback_tls(tmp_path: Path, trusted: bool) -> None:
    ca_path, cert_path, key_path = write_tls_files(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_path, key_path)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_ssl_over_tcp_listeners(0, server_context, host="127.0.0.1")
            transport = listeners[0].transport_listener
            assert isinstance(transport, trio.SocketListener)
            port = transport.socket.getsockname()[1]
            nursery.start_soon(trio.serve_listeners, answer_204, listeners)
            hipchat_settings = settings(
                server_url=f"https://127.0.0.1:{port}/",
                ca_file=str(ca_path) if trusted else None,
            )
            async with make_http_client(hipchat_settings, concurrency=1) as http:
                outcome = await HipChatClient(hipchat_settings, http).send(ROOM, MESSAGE)
            nursery.cancel_scope.cancel()
    if trusted:
        assert outcome == Outcome(OutcomeKind.SENT, status=204)
    else:
        assert outcome.kind is OutcomeKind.TRANSPORT_ERROR
        assert outcome.error is not None
        assert outcome.error.startswith("ConnectError: ")
        assert "CERTIFICATE_VERIFY_FAILED" in outcome.error


def test_the_client_returns_the_outcome_vocabulary() -> None:
    """The client's results are the pure module's types, and the kinds the metrics' labels."""
    for name in ("Outcome", "OutcomeKind", "RateInfo", "MAX_SERVER_WAIT"):
        assert getattr(client_module, name) is getattr(outcome, name), name
    for name in ("parse_rate_info", "parse_retry_after"):
        assert getattr(client_module, name) is getattr(outcome, name), name
    assert outcome.OutcomeKind is reasons.OutcomeKind


def test_classify_reads_an_answer_without_a_client() -> None:
    """Status, headers and error text -> Outcome, with no HTTP library involved."""
    now = 1_000_000.0
    reset = {"X-Ratelimit-Limit": "100", "X-Ratelimit-Remaining": "0"}
    reset["X-Ratelimit-Reset"] = str(int(now) + 60)
    sent = outcome.classify(204, reset, "", now=now)
    assert sent == Outcome(OutcomeKind.SENT, status=204, rate=RateInfo(100, 0, now + 60))
    # A 2xx answer carries no error text, whatever the caller passed.
    assert outcome.classify(200, {}, "ignored", now=now).error is None

    limited = outcome.classify(429, {"Retry-After": "30"}, "slow down", now=now)
    assert (limited.kind, limited.error, limited.retry_at) == (
        OutcomeKind.RATE_LIMITED,
        "slow down",
        now + 30,
    )
    # v1's rate limit is a 403 that says so; with no Retry-After the exhausted family decides.
    v1 = outcome.classify(403, reset, "You have exceeded the rate limit.", now=now)
    assert (v1.kind, v1.retry_at) == (OutcomeKind.RATE_LIMITED, now + 60)
    assert outcome.classify(403, {}, "Forbidden", now=now).kind is OutcomeKind.FORBIDDEN
    # Not transient: no retry time, even when the server names one.
    assert outcome.classify(404, {"Retry-After": "5"}, "gone", now=now).retry_at is None


def test_classify_reports_a_protocol_error_and_ignores_the_header() -> None:
    warned: list[tuple[str, str, str, str]] = []

    def warn(header: str, value: str, problem: str, instead: str) -> None:
        warned.append((header, value, problem, instead))

    now = 1_000_000.0
    far = str(MAX_SERVER_WAIT * 10)
    result = outcome.classify(503, {"Retry-After": far}, "busy", now=now, warn=warn)
    assert (result.kind, result.retry_at) == (OutcomeKind.SERVER_ERROR, None)
    assert [(h, v) for h, v, _, _ in warned] == [("Retry-After", far)]
