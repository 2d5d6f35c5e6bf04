"""The HipChat API emulator: a real HTTP/1.1 server on trio + h11.

HipChat Cloud is gone, so hipchatd's end-to-end tests, and users who want to
try a configuration, talk to this emulator instead. It enforces the rules in
``hipchat-api.md`` (the project's HipChat reference); section numbers below
(§) point into it. Where the reference lists an open question, the emulator
implements the choice from its §11 table.

Served endpoints (all need a token unless noted):

- v2 ``POST /v2/room/{id_or_name}/notification`` -> 204
- v2 ``POST /v2/room/{id_or_name}/message`` -> 201 ``{"id", "timestamp"}``
- v2 ``POST /v2/user/{id_or_email}/message`` -> 204
- v2 ``GET /v2/room`` (a minimal room list), ``GET /v2/room/{id_or_name}``,
  ``GET /v2/room/{id_or_name}/history/latest``, ``GET /v2/room/{id_or_name}/history``
- v1 ``GET|POST /v1/rooms/message`` -> 200 ``{"status": "sent"}``,
  ``GET /v1/rooms/list``, ``GET /v1/rooms/history``
- admin, no token, not rate limited, not recorded: ``GET /_emulator/messages``,
  ``GET /_emulator/requests``, ``POST /_emulator/faults``, ``POST /_emulator/reset``.
  They stay up while the API is down (``down_for``), so an outage can be ended early.

Plain HTTP, or HTTPS with ``serve(ssl_context=...)`` (``--tls-cert``, or
``--tls`` for a throwaway CA from :func:`throwaway_tls`). Links in answers
(``links.self`` and the rest) carry the scheme and ``Host`` the client used,
as HipChat's did: HypChat follows them, and picks a room's class (the one with
``notification()``) by matching ``links.self`` against ``https://...`` (S12).

Wire shapes: v2 errors are pretty-printed JSON (2-space indent, sorted keys),
``{"error": {"code", "message", "type", ...}}`` (§4.3). v1 errors are compact
JSON with keys in the order code, type, message and ``/`` escaped as ``\\/``
(§3.2). Every v2 response carries ``X-Ratelimit-Limit/Remaining/Reset``;
message-sending endpoints also carry ``X-FloodControl-*``. v1 sends
``X-RateLimit-*`` (§6). Reset values are absolute Unix times from
:func:`hipchatd.clock.unix_now`, rounded up to an integer unless
``float_reset``.

Choices the reference leaves open, marked *[inferred]* there or here:

- Validation messages other than the two observed ones (notify type, colour
  enumeration) follow the wording of the same schema validator, whose templates
  those two messages match ("Length of value ... must be less than or equal
  to ...", "Required field '...' is missing").
- v1 messages other than the observed "From name ..." and "Auth token invalid"
  texts are ours; v1 ``auth_test=true`` answers 202 with the v2 body.
- A request path that matches no endpoint gets 404; a known path with the wrong
  method gets 405 with ``Allow``. Both use the v2 shape unless under ``/v1/``.
- Flood control is per room (per user for private messages) and also applies
  to v1 ``rooms/message``; exceeding it answers like the token rate limit
  (429 on v2, 403 on v1) with ``X-FloodControl-Remaining: 0``.
- The token limit counts every authenticated request to a known endpoint,
  including ones answered 400 or 404 (unknown room) and ``auth_test``. Auth
  failures, unknown paths, 405, 406 and injected ``fail_next`` answers do not
  count. Flood control counts only messages that passed validation.
- ``latency`` (and per-room ``room_latency``) delays the handling of a request,
  so a client that gives up during the delay still gets its message delivered:
  the duplicate risk a slow real server poses.

Tokens never reach ``messages``, ``requests``, the echo line or the logs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import html
import json
import math
import os
import re
import signal
import socket
import ssl
import struct
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote
from xml.sax.saxutils import escape as xml_escape

import h11
import structlog
import trio

from hipchatd import __version__
from hipchatd.clock import unix_now
from hipchatd.http11 import (
    RequestReader,
    rejection_status,
    send_events,
    send_response,
    start_next_cycle,
    status_phrase,
)
from hipchatd.redaction import scrub

__all__ = [
    "ApiError",
    "Emulator",
    "FixedWindow",
    "Quota",
    "ReceivedMessage",
    "RequestRecord",
    "Target",
    "add_arguments",
    "decode_segment",
    "py2_repr",
    "run",
    "split_target",
    "v1_error_body",
    "v1_json",
    "v2_error_body",
]

log = structlog.get_logger()

Api = Literal["v1", "v2"]
Json = Any

# --- limits and defaults -----------------------------------------------------

#: Request bodies above this get 413; a Sensu event message is a few KiB.
MAX_BODY_BYTES = 1024 * 1024
#: Request line plus headers; h11 answers 431 above this.
MAX_HEADER_BYTES = 64 * 1024
#: Seconds a request may take to arrive once its first byte is in (slowloris guard).
REQUEST_READ_TIMEOUT = 10.0
#: Seconds an idle keep-alive connection is kept open. Longer than the 60 s and
#: 300 s limit windows, so a client on trio's MockClock that sleeps exactly one
#: window never races the server closing its pooled connection.
KEEPALIVE_IDLE_TIMEOUT = 900.0
RECEIVE_CHUNK = 65536
#: SO_LINGER on, 0 s: close() sends RST, not FIN, as when a server dies with a request unread.
_LINGER_ZERO = struct.pack("ii", 1, 0)
DEFAULT_PORT = 8780

COLORS = ("yellow", "green", "red", "purple", "gray", "random")  # §4.1, order as in S37
MESSAGE_FORMATS = ("html", "text")
CARD_STYLES = ("file", "image", "application", "link", "media")  # §4.2
V2_MESSAGE_MAX = 10_000  # §4.1
V2_ROOM_MESSAGE_MAX = 1_000  # §7, send_message
V2_FROM_MAX = 64  # §11 q1 default
V2_FROM_MAX_STRICT = 25  # §11 q1 strict mode
V1_FROM_MAX = 15  # §11 q2: 1-15
V1_MESSAGE_MAX = 10_000  # §3.1
ATTACH_TO_MAX = 36  # §4.1
CARD_TITLE_MAX = 500  # §4.2
ROOM_PATH_MAX = 100  # §5: the path value is 1-100 characters
ROOM_NAME_MAX = 50  # §5: names are at most 50 characters when created
HISTORY_DEFAULT = 75  # §13, inferred
HISTORY_MAX = 1000
ECHO_MAX = 200
#: What ``POST /_emulator/faults`` accepts.
FAULT_KEYS = ("latency", "fail_next", "down_for", "up", "rate_limit", "flood_limit")

V2_UNAUTHORIZED = "Invalid OAuth session"  # S28
V1_UNAUTHORIZED = "Auth token invalid. Please see: https://www.hipchat.com/docs/api/auth"  # S24
V2_RATE_LIMITED = "Rate Limit exceeded"  # §11 q12
V1_RATE_LIMITED = (
    "You have exceeded the rate limit. See https://www.hipchat.com/docs/api/rate_limiting"  # §6.1
)
# The v2 API ran on Werkzeug: S50's 405 text is Werkzeug's; its 404 text is the sibling.
NOT_FOUND_TEXT = (
    "The requested URL was not found on the server. "
    "If you entered the URL manually please check your spelling and try again."
)
METHOD_NOT_ALLOWED_TEXT = "The method is not allowed for the requested URL."
AUTH_TEST_BODY = (
    b'{"success":{"code":202,"message":"This auth_token has access to use this method.",'
    b'"type":"Accepted"}}'
)  # §2, S3/S32: sent byte for byte

#: The token owner, shown where HipChat shows the token's user (send_message, history).
TOKEN_OWNER: dict[str, Json] = {"id": 1, "mention_name": "SensuBot", "name": "Sensu Bot"}


# --- public records ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message the emulator accepted.

    ``kind`` is ``"notification"`` (v2 notification, v1 rooms/message),
    ``"room_message"`` (v2 send_message) or ``"user_message"`` (v2 private
    message). ``sender`` is the ``from`` label, empty when absent or ignored;
    ``color`` is None for the kinds that have none.
    """

    kind: str
    api_version: str
    room_id: int | None
    room: str | None
    user: str | None
    sender: str
    message: str
    color: str | None
    notify: bool
    message_format: str
    date: float
    #: The message id, as shown in room history and accepted by ``attach_to``.
    id: str = ""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One answered API request: the raw path (no query string), status, trio time."""

    method: str
    path: str
    status: int
    time: float


# --- wire shapes (pure) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiError:
    """An error answer before it is given a v1 or v2 shape."""

    status: int
    message: str
    #: Extra keys for the v2 body (validation details), sorted in with the rest.
    extra: Mapping[str, Json] = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()


def py2_repr(value: Json) -> str:
    """``repr`` as the Python 2 server printed JSON values: ``u'Red'``, ``True``, ``None``."""
    if isinstance(value, str):
        return "u" + ascii(value)
    if isinstance(value, list):
        return "[" + ", ".join(py2_repr(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{py2_repr(k)}: {py2_repr(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    return repr(value)


def v2_json(obj: Json) -> bytes:
    """A v2 JSON body: 2-space indent, sorted keys (§4.3)."""
    return json.dumps(obj, indent=2, sort_keys=True).encode()


def v2_error_body(error: ApiError) -> bytes:
    """``{"error": {"code", "message", "type", ...extra}}``, pretty and sorted (§4.3)."""
    inner = dict(error.extra)
    # HipChat's error ``type`` is the status's standard reason phrase.
    inner.update(code=error.status, message=error.message, type=status_phrase(error.status))
    return v2_json({"error": inner})


def v1_json(obj: Json) -> bytes:
    """A v1 JSON body: compact, ``/`` escaped as ``\\/`` like PHP's json_encode (§3.2).

    Replacing ``/`` in the serialised text is safe: JSON has no ``/`` outside strings.
    """
    return json.dumps(obj, separators=(",", ":")).replace("/", "\\/").encode()


def v1_error_body(error: ApiError) -> bytes:
    """The compact v1 error, keys in the order code, type, message (§3.2)."""
    return v1_json(
        {
            "error": {
                "code": error.status,
                "type": status_phrase(error.status),
                "message": error.message,
            }
        }
    )


def _xml_element(name: str, value: Json) -> str:
    if isinstance(value, dict):
        inner = "".join(_xml_element(k, v) for k, v in value.items())
    elif isinstance(value, list):
        child = name[:-1] if name.endswith("s") else "item"
        inner = "".join(_xml_element(child, item) for item in value)
    elif isinstance(value, bool):
        inner = "true" if value else "false"
    elif value is None:
        inner = ""
    else:
        inner = xml_escape(str(value))
    return f"<{name}>{inner}</{name}>"


def v1_xml(obj: Mapping[str, Json]) -> bytes:
    """A v1 ``format=xml`` body *[inferred]*: ``{"rooms": [...]}`` -> ``<rooms><room>...``.

    A single key holding a container becomes the root; anything else is
    wrapped in ``<response>``, e.g. ``<response><status>sent</status></response>``.
    """
    if len(obj) == 1:
        ((key, value),) = obj.items()
        if isinstance(value, dict | list):
            root = _xml_element(key, value)
        else:
            root = _xml_element("response", dict(obj))
    else:
        root = _xml_element("response", dict(obj))
    return ('<?xml version="1.0" encoding="utf-8"?>\n' + root + "\n").encode()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="microseconds")


def _v1_date(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S%z")


# --- request target (pure) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A request target split before any decoding."""

    #: the raw path as sent, still percent-encoded
    path: str
    #: ``path`` split on ``/`` (leading slash dropped); segments are not decoded
    segments: tuple[str, ...]
    #: the query string decoded as form data (``+`` is a space here, as in any query)
    query: dict[str, str]


def split_target(raw: bytes) -> Target:
    """Split a raw request target into path segments and query parameters.

    The path is split on ``/`` *before* percent-decoding, so ``%2F`` stays
    inside its segment and ``//`` yields an empty segment (never collapsed).
    """
    text = raw.decode("latin-1")
    path, _, query = text.partition("?")
    segments = tuple(path[1:].split("/")) if path.startswith("/") else ()
    params = dict(parse_qsl(query, keep_blank_values=True, encoding="utf-8", errors="replace"))
    return Target(path=path, segments=segments, query=params)


def decode_segment(segment: str) -> str:
    """Percent-decode one path segment exactly once, as UTF-8; ``+`` stays ``+`` (§5)."""
    return unquote(segment, encoding="utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class Route:
    """An endpoint matched by path: its name, allowed methods and path parameter."""

    name: str
    methods: tuple[str, ...]
    param: str | None = None


_ROUTES: tuple[tuple[tuple[str, ...], str, tuple[str, ...]], ...] = (
    (("v2", "room"), "v2_room_list", ("GET",)),
    # S49: a `#` cut a POST down to /v2/room/, which answered 405.
    (("v2", "room", ""), "v2_room_list", ("GET",)),
    (("v2", "room", "*"), "v2_room_get", ("GET",)),
    (("v2", "room", "*", "notification"), "v2_notification", ("POST",)),
    (("v2", "room", "*", "message"), "v2_room_message", ("POST",)),
    (("v2", "room", "*", "history"), "v2_history_view", ("GET",)),
    (("v2", "room", "*", "history", "latest"), "v2_history", ("GET",)),
    (("v2", "user", "*", "message"), "v2_user_message", ("POST",)),
    (("v1", "rooms", "message"), "v1_message", ("GET", "POST")),
    (("v1", "rooms", "list"), "v1_rooms_list", ("GET",)),
    (("v1", "rooms", "history"), "v1_history", ("GET",)),
    (("_emulator", "messages"), "admin_messages", ("GET",)),
    (("_emulator", "requests"), "admin_requests", ("GET",)),
    (("_emulator", "faults"), "admin_faults", ("POST",)),
    (("_emulator", "reset"), "admin_reset", ("POST",)),
)


def match_route(segments: Sequence[str]) -> Route | None:
    """The endpoint for raw path segments; ``*`` matches one non-empty segment."""
    for pattern, name, methods in _ROUTES:
        if len(pattern) != len(segments):
            continue
        param = None
        for want, got in zip(pattern, segments, strict=True):
            if want == "*":
                if not got:
                    break
                param = got
            elif want != got:
                break
        else:
            return Route(name, methods, param)
    return None


# --- validation (pure) -------------------------------------------------------


class _Reject(Exception):
    """Stops handling one request with an error answer."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def _type_error(name: str, value: Json, expected: str) -> _Reject:
    # Observed shape (S39): expected_type, field, validation, value.
    return _Reject(
        ApiError(
            400,
            f"Value {py2_repr(value)} for field '{name}' is not of type '{expected}'",
            {"expected_type": expected, "field": name, "validation": "type", "value": value},
        )
    )


def _enum_error(name: str, value: Json, options: Sequence[str]) -> _Reject:
    # Observed shape (S37): field, options.
    return _Reject(
        ApiError(
            400,
            f"Value {py2_repr(value)} for field '{name}' is not in the enumeration: "
            f"{list(options)!r}",
            {"field": name, "options": list(options)},
        )
    )


def _length_error(name: str, value: str, bound: int, *, too_long: bool) -> _Reject:
    kind, relation = ("maxLength", "less") if too_long else ("minLength", "greater")
    return _Reject(
        ApiError(
            400,
            f"Length of value {py2_repr(value)} for field '{name}' must be "
            f"{relation} than or equal to {bound}",
            {"field": name, kind: bound, "validation": kind, "value": value},
        )
    )


def _required_error(name: str) -> _Reject:
    return _Reject(
        ApiError(
            400,
            f"Required field '{name}' is missing",
            {"field": name, "validation": "required"},
        )
    )


def _string(
    body: Mapping[str, Json],
    name: str,
    *,
    required: bool = False,
    min_len: int = 0,
    max_len: int | None = None,
) -> str | None:
    if name not in body:
        if required:
            raise _required_error(name)
        return None
    value = body[name]
    if not isinstance(value, str):
        raise _type_error(name, value, "string")
    if len(value) < min_len:
        raise _length_error(name, value, min_len, too_long=False)
    if max_len is not None and len(value) > max_len:
        raise _length_error(name, value, max_len, too_long=True)
    return value


def _enum(body: Mapping[str, Json], name: str, options: Sequence[str], default: str) -> str:
    if name not in body:
        return default
    value = body[name]
    if not isinstance(value, str) or value not in options:
        raise _enum_error(name, value, options)
    return value


def _boolean(body: Mapping[str, Json], name: str, *, lenient: bool) -> bool:
    if name not in body:
        return False
    value = body[name]
    if isinstance(value, bool):
        return value
    # §11 q3: lenient mode accepts what Grafana sent for years ("true").
    if lenient and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _type_error(name, value, "boolean")


def parse_v2_body(content_type: str, body: bytes, *, parse_form: bool) -> dict[str, Json]:
    """The v2 request body as a dict, or raise ``_Reject`` with a 400.

    Form bodies are refused unless ``parse_form`` (§11 q4); then every value
    is a string, so ``notify`` fails its boolean check as it did on HipChat.
    An empty body is an empty object (the missing ``message`` is reported).
    """
    media = content_type.partition(";")[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        if not parse_form:
            raise _Reject(
                ApiError(400, "Form-encoded bodies are not accepted: send JSON (application/json)")
            )
        text = body.decode("utf-8", errors="replace")
        return dict(parse_qsl(text, keep_blank_values=True))
    if not body.strip():
        return {}
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _Reject(ApiError(400, "The request body is not valid JSON")) from None
    if not isinstance(data, dict):
        raise _Reject(ApiError(400, "The request body must be a JSON object"))
    return data


@dataclass(frozen=True, slots=True)
class Notification:
    """A validated v2 room notification."""

    message: str
    message_format: str
    color: str
    notify: bool
    sender: str
    attach_to: str | None


def validate_notification(
    body: Mapping[str, Json], *, from_max: int, lenient_notify: bool
) -> Notification:
    """Apply the §4.1/§4.2 rules; raise ``_Reject`` on the first violation.

    Unknown top-level fields are ignored (hipchat-rb sends a stray ``room_id``).
    """
    message = _string(body, "message", required=True, min_len=1, max_len=V2_MESSAGE_MAX)
    message_format = _enum(body, "message_format", MESSAGE_FORMATS, "html")
    color = _enum(body, "color", COLORS, "yellow")
    notify = _boolean(body, "notify", lenient=lenient_notify)
    sender = _string(body, "from", max_len=from_max)
    attach_to = _string(body, "attach_to", max_len=ATTACH_TO_MAX)
    if body.get("card") is not None:
        _validate_card(body["card"])
    assert message is not None
    return Notification(message, message_format, color, notify, sender or "", attach_to)


def _validate_card(card: Json) -> None:
    # A light check of the required card fields (§4.2), not the whole schema.
    if not isinstance(card, dict):
        raise _type_error("card", card, "object")
    for name in ("style", "title", "id"):
        if name not in card:
            raise _required_error(name)
    _enum(card, "style", CARD_STYLES, "")
    _string(card, "title", min_len=1, max_len=CARD_TITLE_MAX)


@dataclass(frozen=True, slots=True)
class V1Message:
    """A validated v1 ``rooms/message`` call."""

    room_id: str
    sender: str
    message: str
    message_format: str
    color: str
    notify: bool


_V1_FROM_CHARS = re.compile(r"[\w -]+")


def validate_v1_message(params: Mapping[str, str]) -> V1Message:
    """Apply the §3.1 rules to merged query and form parameters.

    Empty values mean the default: python-simple-hipchat sends ``color=``.
    """
    room_id = params.get("room_id", "")
    if not room_id:
        raise _Reject(ApiError(400, "Room ID is required."))
    sender = params.get("from", "")
    if not 1 <= len(sender) <= V1_FROM_MAX:
        raise _Reject(ApiError(400, "From name must be between 1 and 15 characters."))  # S20
    # The doc allows letters, digits, -, _ and spaces; S21 implies non-ASCII letters.
    if not _V1_FROM_CHARS.fullmatch(sender):
        raise _Reject(
            ApiError(400, "From name may only contain letters, numbers, -, _, and spaces.")
        )
    message = params.get("message", "")
    if not 1 <= len(message) <= V1_MESSAGE_MAX:
        raise _Reject(ApiError(400, "Message must be between 1 and 10,000 characters."))
    message_format = params.get("message_format") or "html"
    if message_format not in MESSAGE_FORMATS:
        raise _Reject(ApiError(400, "Invalid message_format. Valid values are html and text."))
    color = params.get("color") or "yellow"
    if color not in COLORS:
        raise _Reject(
            ApiError(
                400, "Invalid color. Valid colors are yellow, green, red, purple, gray, random."
            )
        )
    notify = params.get("notify") or "0"
    if notify not in ("0", "1"):
        raise _Reject(ApiError(400, "Notify must be 0 or 1."))
    return V1Message(room_id, sender, message, message_format, color, notify == "1")


# --- rate limiting (pure) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Quota:
    """A window's state after a request: limit, remaining, reset (trio time)."""

    limit: int
    remaining: int
    reset: float


@dataclass(slots=True)
class FixedWindow:
    """A fixed window of ``length`` seconds opened by the first request after expiry.

    The limit is passed on each call so :meth:`Emulator.set_limits` applies at once.
    """

    length: float
    start: float | None = None
    used: int = 0

    def _expired(self, now: float) -> bool:
        return self.start is None or now >= self.start + self.length

    def peek(self, limit: int, now: float) -> Quota:
        """The state without counting a request; an expired window reads as fresh."""
        if self.start is None or self._expired(now):
            return Quota(limit, limit, now + self.length)
        return Quota(limit, max(0, limit - self.used), self.start + self.length)

    def take(self, limit: int, now: float) -> Quota | None:
        """Count one request; None (and nothing counted) when the window is full."""
        if self.start is None or self._expired(now):
            self.start, self.used = now, 0
        if self.used >= limit:
            return None
        self.used += 1
        return Quota(limit, limit - self.used, self.start + self.length)


# --- HTTP plumbing -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One complete HTTP request; header names are lowercase, first value wins."""

    method: str
    target: bytes
    headers: Mapping[str, str]
    body: bytes


@dataclass(slots=True)
class Response:
    """An answer before h11 framing."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False
    #: drop the connection with a TCP reset instead of answering (the emulator is down)
    reset: bool = False


def _json_response(status: int, body: bytes) -> Response:
    return Response(status, body, "application/json")


_HOST_HEADER = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]+)?|\[[0-9A-Fa-f:.]+\](:[0-9]+)?")
_BREAK_TAG = re.compile(r"<(?:br|hr|/p|/div|/li|/tr)\b[^>]*>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def echo_line(message: ReceivedMessage) -> str:
    """The one-line console summary of an accepted message; HTML tags are stripped."""
    where = f"[room {message.room}]" if message.room is not None else f"[user {message.user}]"
    text = message.message
    if message.message_format == "html":
        text = html.unescape(_TAG.sub("", _BREAK_TAG.sub(" ", text)))
    text = _SPACE.sub(" ", text).strip()
    if len(text) > ECHO_MAX:
        text = text[: ECHO_MAX - 3] + "..."
    who = f"{message.sender}: " if message.sender else ""
    flags = [message.color] if message.color else []
    if message.notify:
        flags.append("notify")
    tail = f" ({', '.join(flags)})" if flags else ""
    return f"{where} {who}{text}{tail}"


@dataclass(slots=True)
class _Room:
    id: int
    name: str
    created: float | None
    topic: str = ""


@dataclass(slots=True)
class _Call:
    """Per-request state that decides the error shape and the rate-limit headers."""

    api: Api
    fmt: Literal["json", "xml"] = "json"
    #: the token that passed authentication
    token: str | None = None
    #: whatever token the client sent, valid or not: redacted from recorded paths
    presented: str | None = None
    rate: Quota | None = None
    flood_key: tuple[str, str] | None = None
    flood: Quota | None = None


@dataclass(eq=False, slots=True)
class _Connection:
    """One open client connection, so that going down can reset it."""

    socket: trio.socket.SocketType
    #: serving a ``/_emulator/`` request, which going down leaves alone
    control: bool = False
    #: reset by going down; a request it carried must not be delivered
    dropped: bool = False
    #: the TLS handshake finished (always False for plain HTTP, where there is none)
    handshaken: bool = False

    def drop(self) -> None:
        """Reset the connection (RST, not FIN): what a client of a dead server sees."""
        self.dropped = True
        with contextlib.suppress(OSError):  # already closed
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        self.socket.close()


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType:
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    assert isinstance(stream, trio.SocketStream)
    return stream.socket


def _is_control(target: bytes) -> bool:
    return split_target(target).segments[:1] == ("_emulator",)


# --- the emulator ------------------------------------------------------------


class Emulator:
    """A HipChat API server holding rooms, recorded messages and fault switches.

    Run it with ``await nursery.start(emulator.serve)``; it serves until
    cancelled. All state lives in this object: tests read ``messages`` and
    ``requests`` directly, out-of-process users read ``/_emulator/*``.
    """

    def __init__(
        self,
        *,
        tokens: Iterable[str] = (),
        rooms: Iterable[str] = ("sensu",),
        auto_create_rooms: bool = False,
        rate_limit: int = 500,
        rate_window: float = 300.0,
        flood_limit: int = 30,
        flood_window: float = 60.0,
        float_reset: bool = False,
        strict_from_25: bool = False,
        lenient_notify: bool = False,
        parse_form_v2: bool = False,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        if rate_limit < 0 or flood_limit < 0:
            raise ValueError("rate_limit and flood_limit must be >= 0")
        if rate_window <= 0 or flood_window <= 0:
            raise ValueError("rate_window and flood_window must be > 0")
        self._tokens = frozenset(tokens)
        if "" in self._tokens:
            raise ValueError("tokens must be non-empty strings")
        self.auto_create_rooms = auto_create_rooms
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.flood_limit = flood_limit
        self.flood_window = flood_window
        self.float_reset = float_reset
        self.strict_from_25 = strict_from_25
        self.lenient_notify = lenient_notify
        self.parse_form_v2 = parse_form_v2
        self.echo = echo
        #: seconds added before every API answer
        self.latency = 0.0
        #: extra seconds before answering requests addressed to a room, by room name
        self.room_latency: dict[str, float] = {}
        self.url = ""
        self.messages: list[ReceivedMessage] = []
        self.requests: list[RequestRecord] = []
        self._rooms: dict[int, _Room] = {}
        self._room_ids: dict[str, int] = {}
        self._next_room_id = 1
        self._users: dict[str, int] = {}
        self._rate_windows: dict[str, FixedWindow] = {}
        self._flood_windows: dict[tuple[str, str], FixedWindow] = {}
        self._fail_count = 0
        self._fail_status = 503
        self._baseline = (rate_limit, flood_limit, 0.0)
        self._arrivals = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None
        self._scheme = "http"
        self._down = False
        #: the pending return of a ``down_for`` outage
        self._up_timer: trio.CancelScope | None = None
        self._connections: set[_Connection] = set()
        for name in rooms:
            self.add_room(name)

    # --- public controls ---

    def add_room(self, name: str) -> int:
        """Create a room and return its id (1, 2, ...); an existing name returns its id."""
        if not 1 <= len(name) <= ROOM_NAME_MAX:
            raise ValueError(f"room names are 1-{ROOM_NAME_MAX} characters, got {name!r}")
        if name in self._room_ids:
            return self._room_ids[name]
        room = _Room(self._next_room_id, name, self._now_or_none())
        self._next_room_id += 1
        self._rooms[room.id] = room
        self._room_ids[name] = room.id
        return room.id

    async def wait_for_messages(self, count: int) -> None:
        """Return once at least ``count`` messages were accepted; wakes on arrival, no polling.

        Takes no timeout: wrap it in ``trio.fail_after``.
        """
        if len(self.messages) >= count:
            await trio.lowlevel.checkpoint()
            return
        while len(self.messages) < count:
            await self._arrivals.park()

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` API requests with ``status`` in the v1/v2 error shape.

        Replaces any pending count. The requests are not authenticated, not
        rate counted and deliver nothing.
        """
        if count < 0 or not 400 <= status <= 599:
            raise ValueError("fail_next needs count >= 0 and a 4xx/5xx status")
        self._fail_count, self._fail_status = count, status

    def set_limits(self, *, rate_limit: int | None = None, flood_limit: int | None = None) -> None:
        """Change the per-token and per-recipient limits; counts so far are kept."""
        if rate_limit is not None:
            if rate_limit < 0:
                raise ValueError("rate_limit must be >= 0")
            self.rate_limit = rate_limit
        if flood_limit is not None:
            if flood_limit < 0:
                raise ValueError("flood_limit must be >= 0")
            self.flood_limit = flood_limit

    def count_status(self, status: int) -> int:
        """How many recorded requests were answered with ``status``."""
        return sum(1 for record in self.requests if record.status == status)

    def reset(self) -> None:
        """Clear messages, requests, rate and flood counters and faults; rooms stay.

        An outage (:meth:`set_down`, ``down_for``) is a fault too: it ends.
        """
        self.messages.clear()
        self.requests.clear()
        self._rate_windows.clear()
        self._flood_windows.clear()
        self._fail_count, self._fail_status = 0, 503
        self.rate_limit, self.flood_limit, self.latency = self._baseline
        self._come_up()

    @property
    def down(self) -> bool:
        """Whether API requests are being refused (:meth:`set_down`, ``down_for``)."""
        return self._down

    def set_down(self, down: bool) -> None:
        """Fail every API request as a dead server does (True), or serve again (False).

        While down the emulator keeps listening, so its ``/_emulator/*``
        control endpoints stay up; any other request is read and its
        connection reset (RST): no answer, nothing delivered, and the client
        sees "connection reset by peer" (a refused connect cannot be given to
        some requests and not others on one port). Going down also resets
        every open connection that is not serving a control request, so a
        client's pooled connection fails too. Takes effect before returning.
        Going up cancels a pending ``down_for`` return. Raises RuntimeError
        outside :meth:`serve`.
        """
        if self._nursery is None:
            raise RuntimeError("set_down() needs a running serve()")
        if not down:
            if self._down:
                self._come_up()
                log.info("emulator.up", url=self.url)
            return
        if self._down:
            return
        self._down = True
        for connection in list(self._connections):
            if not connection.control:
                connection.drop()
        log.info("emulator.down", url=self.url)

    def _come_up(self) -> None:
        self._down = False
        if self._up_timer is not None:
            self._up_timer.cancel()
            self._up_timer = None

    # --- serving ---

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and serve until cancelled.

        With ``ssl_context`` (a server context holding the certificate, e.g.
        from :func:`throwaway_tls`) it speaks HTTPS only, and every URL it
        hands out (``self.url``, ``links.self``) is ``https://``. Reports
        ``self.url`` through ``task_status.started`` once the socket listens.
        Raises OSError if it cannot bind.
        """
        if self._nursery is not None:
            raise RuntimeError("this Emulator is already serving")
        sockets = await trio.open_tcp_listeners(port, host=host)
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(sockets)
        self._scheme = "http"
        if ssl_context is not None:
            self._scheme = "https"
            # https_compatible: HTTPS clients close without close_notify (RFC 2818 §2.2.2).
            listeners = [
                trio.SSLListener(sock, ssl_context, https_compatible=True) for sock in sockets
            ]
        first = sockets[0].socket
        self.url = _base_url(self._scheme, first.family, first.getsockname())
        self._baseline = (self.rate_limit, self.flood_limit, self.latency)
        for room in self._rooms.values():
            if room.created is None:
                room.created = unix_now()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(trio.serve_listeners, self._handle_connection, listeners)
                task_status.started(self.url)
        finally:
            self._nursery = None
            self._come_up()

    def _go_down_for(self, seconds: float) -> None:
        assert self._nursery is not None  # only called while serving a request
        self.set_down(True)
        if self._up_timer is not None:
            self._up_timer.cancel()  # the newest down_for decides when we come back
        self._up_timer = trio.CancelScope()
        self._nursery.start_soon(self._come_back_after, self._up_timer, seconds)

    async def _come_back_after(self, timer: trio.CancelScope, seconds: float) -> None:
        with timer:
            await trio.sleep(seconds)
            self._up_timer = None
            self.set_down(False)

    async def _handle_connection(self, stream: trio.abc.Stream) -> None:
        connection = _Connection(_socket_of(stream))
        self._connections.add(connection)
        try:
            await self._converse(stream, connection)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away (or failed the TLS handshake), or we dropped it
        finally:
            self._connections.discard(connection)
            await trio.aclose_forcefully(stream)

    async def _converse(self, stream: trio.abc.Stream, connection: _Connection) -> None:
        if isinstance(stream, trio.SSLStream):
            with trio.move_on_after(REQUEST_READ_TIMEOUT):
                await stream.do_handshake()
                connection.handshaken = True
            if not connection.handshaken:
                return  # a slow or silent TLS client: close without an answer
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        while True:
            outcome = await self._read_request(conn, stream, connection)
            if outcome is None:
                return
            if isinstance(outcome, Response):
                if outcome.reset:
                    connection.drop()
                else:
                    await _send_response(conn, stream, outcome)
                return
            # Down: the whole request is read first, so the client, done writing, sees the
            # reset as it waits for the answer (ECONNRESET), whatever its write pattern.
            response = await self._respond(outcome, connection)
            connection.control = False
            if response.reset:
                connection.drop()
                return
            await _send_response(conn, stream, response, head=outcome.method == "HEAD")
            if not start_next_cycle(conn):
                return

    async def _read_request(
        self, conn: h11.Connection, stream: trio.abc.Stream, connection: _Connection
    ) -> Request | Response | None:
        """Read one request; a Response means answer it (or reset) and close, None means close."""
        started: h11.Request | None = None
        body = bytearray()
        with trio.move_on_after(KEEPALIVE_IDLE_TIMEOUT) as scope:
            reader = RequestReader(
                conn, stream, scope, read_timeout=REQUEST_READ_TIMEOUT, chunk=RECEIVE_CHUNK
            )
            while True:
                try:
                    event = await reader.next_event()
                except h11.RemoteProtocolError as exc:
                    if self._down:
                        return Response(0, reset=True)
                    response = _protocol_error(conn, exc)
                    if response is not None:
                        self._decorate(_Call("v2"), response)
                    return response
                if isinstance(event, h11.Request):
                    started = event
                    connection.control = _is_control(event.target)
                    declared = _content_length(event)
                    if declared is not None and declared > MAX_BODY_BYTES:
                        return self._too_large(event)
                    if conn.they_are_waiting_for_100_continue:
                        await send_events(
                            conn, stream, h11.InformationalResponse(status_code=100, headers=[])
                        )
                elif isinstance(event, h11.Data):
                    body += event.data
                    if started is not None and len(body) > MAX_BODY_BYTES:
                        return self._too_large(started)
                elif isinstance(event, h11.EndOfMessage):
                    assert started is not None
                    headers: dict[str, str] = {}
                    for name, value in started.headers:
                        headers.setdefault(name.decode("ascii"), value.decode("latin-1"))
                    method = started.method.decode("ascii")
                    return Request(method, started.target, headers, bytes(body))
                else:  # ConnectionClosed, or PAUSED which cannot happen before EndOfMessage
                    return None
        return None  # idle or slow client; close without an answer

    def _too_large(self, event: h11.Request) -> Response:
        target = split_target(event.target)
        if self._down and target.segments[:1] != ("_emulator",):
            return Response(0, reset=True)
        api: Api = "v1" if target.segments[:1] == ("v1",) else "v2"
        call = _Call(api)
        response = self._error(call, ApiError(413, "Request body is over 1 MiB"))
        response.close = True
        if target.segments[:1] != ("_emulator",):
            self._decorate(call, response)
            self._record(event.method.decode("ascii"), target.path, response.status, None)
        return response

    async def _respond(self, request: Request, connection: _Connection) -> Response:
        target = split_target(request.target)
        if target.segments[:1] == ("_emulator",):
            return self._admin(request, target)
        if self._down:
            return Response(0, reset=True)
        delay = self.latency + self._room_delay(request, target)
        if delay > 0:
            await trio.sleep(delay)
        if self._down or connection.dropped:
            # Down (or down and back) while this request waited: it dies unanswered and
            # undelivered, so a client never sees an error for a message that arrived.
            return Response(0, reset=True)
        api: Api = "v1" if target.segments[:1] == ("v1",) else "v2"
        call = _Call(api)
        try:
            response = self._api(call, request, target)
        except _Reject as exc:
            response = self._error(call, exc.error)
        self._decorate(call, response)
        self._record(request.method, target.path, response.status, call.presented)
        return response

    def _room_delay(self, request: Request, target: Target) -> float:
        if not self.room_latency:
            return 0.0
        route = match_route(target.segments)
        if route is None:
            return 0.0
        if route.name == "v1_message":
            name = self._v1_params(request, target).get("room_id", "")
        elif route.name.startswith(("v2_room_", "v2_history")) or route.name == "v2_notification":
            name = decode_segment(route.param or "")
        else:
            return 0.0
        if name.isascii() and name.isdigit() and int(name) in self._rooms:
            name = self._rooms[int(name)].name
        return self.room_latency.get(name, 0.0)

    def _record(self, method: str, path: str, status: int, token: str | None) -> None:
        if token:
            path = scrub(path, token)  # a token must never be recorded, in any encoding
        self.requests.append(RequestRecord(method, path, status, trio.current_time()))

    # --- API dispatch (sync) ---

    def _api(self, call: _Call, request: Request, target: Target) -> Response:
        route = match_route(target.segments)
        params = self._v1_params(request, target) if call.api == "v1" else {}
        token = params.get("auth_token") if call.api == "v1" else _v2_token(request, target)
        call.presented = token
        if self._token_ok(token):
            call.token = token  # from here on the rate headers describe this token
        if route is None:
            raise _Reject(ApiError(404, NOT_FOUND_TEXT))
        if request.method not in route.methods:
            allow = (("Allow", ", ".join(route.methods)),)
            raise _Reject(ApiError(405, METHOD_NOT_ALLOWED_TEXT, headers=allow))
        if call.api == "v1":
            fmt = params.get("format") or "json"
            if fmt not in ("json", "xml"):
                raise _Reject(ApiError(406, "Invalid format. Valid formats are json and xml."))
            call.fmt = "json" if fmt == "json" else "xml"
        if self._fail_count > 0:
            self._fail_count -= 1
            raise _Reject(ApiError(self._fail_status, status_phrase(self._fail_status)))
        if call.token is None:
            raise _Reject(ApiError(401, V1_UNAUTHORIZED if call.api == "v1" else V2_UNAUTHORIZED))
        window = self._rate_windows.setdefault(call.token, FixedWindow(self.rate_window))
        call.rate = window.take(self.rate_limit, trio.current_time())
        if call.rate is None:
            raise self._rate_limited(call)
        auth_test = params.get("auth_test") if call.api == "v1" else target.query.get("auth_test")
        if auth_test is not None and auth_test.lower() == "true":
            return _json_response(202, AUTH_TEST_BODY)
        base = self._base(request)
        param = decode_segment(route.param) if route.param is not None else ""
        if route.name == "v2_notification":
            return self._v2_notification(call, request, param)
        if route.name == "v2_room_message":
            return self._v2_room_message(call, request, param)
        if route.name == "v2_user_message":
            return self._v2_user_message(call, request, param)
        if route.name == "v2_room_get":
            return _json_response(200, v2_json(self._room_json(self._v2_room(param), base)))
        if route.name == "v2_room_list":
            return self._v2_room_list(base)
        if route.name in ("v2_history", "v2_history_view"):
            view = route.name == "v2_history_view"
            return self._v2_history(self._v2_room(param), target.query, base, view=view)
        if route.name == "v1_message":
            return self._v1_message(call, params)
        if route.name == "v1_rooms_list":
            return self._v1_body(call, {"rooms": [self._v1_room(r) for r in self._rooms.values()]})
        if route.name == "v1_history":
            return self._v1_history(call, params)
        raise AssertionError(f"unhandled route {route.name}")

    def _token_ok(self, token: str | None) -> bool:
        return bool(token) and (not self._tokens or token in self._tokens)

    def _v1_params(self, request: Request, target: Target) -> dict[str, str]:
        # §3.1: clients send fields in the query, the form body, or both; the
        # body wins on a clash, as in PHP's $_REQUEST.
        params = dict(target.query)
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if request.body and media in ("", "application/x-www-form-urlencoded"):
            text = request.body.decode("utf-8", errors="replace")
            params.update(parse_qsl(text, keep_blank_values=True))
        return params

    def _base(self, request: Request) -> str:
        host = request.headers.get("host", "")
        # The scheme and host the client used, as HipChat did: clients such as HypChat
        # follow these links, and pick the room's class by an https:// pattern (S12).
        return f"{self._scheme}://{host}" if _HOST_HEADER.fullmatch(host) else self.url

    def _rate_limited(self, call: _Call) -> _Reject:
        if call.api == "v1":
            return _Reject(ApiError(403, V1_RATE_LIMITED))
        return _Reject(ApiError(429, V2_RATE_LIMITED))

    def _error(self, call: _Call, error: ApiError) -> Response:
        if call.api == "v2":
            response = _json_response(error.status, v2_error_body(error))
        elif call.fmt == "xml":
            body = v1_xml(
                {"error": {"code": error.status, "type": status_phrase(error.status),
                           "message": error.message}}
            )  # fmt: skip
            response = Response(error.status, body, "application/xml; charset=utf-8")
        else:
            response = _json_response(error.status, v1_error_body(error))
        response.headers.extend(error.headers)
        return response

    def _decorate(self, call: _Call, response: Response) -> None:
        now = trio.current_time()
        rate = call.rate
        if rate is None:
            window = self._rate_windows.get(call.token) if call.token else None
            rate = (window or FixedWindow(self.rate_window)).peek(self.rate_limit, now)
        prefix = "X-RateLimit" if call.api == "v1" else "X-Ratelimit"
        response.headers.extend(self._quota_headers(prefix, rate, now))
        if call.flood_key is not None:
            flood = call.flood
            if flood is None:
                window = self._flood_windows.get(call.flood_key) or FixedWindow(self.flood_window)
                flood = window.peek(self.flood_limit, now)
            response.headers.extend(self._quota_headers("X-FloodControl", flood, now))

    def _quota_headers(self, prefix: str, quota: Quota, now: float) -> list[tuple[str, str]]:
        reset = unix_now() + (quota.reset - now)
        # Integer resets round up, so a client sleeping until the reset is never early.
        reset_text = repr(round(reset, 3)) if self.float_reset else str(math.ceil(reset))
        return [
            (f"{prefix}-Limit", str(quota.limit)),
            (f"{prefix}-Remaining", str(quota.remaining)),
            (f"{prefix}-Reset", reset_text),
        ]

    # --- rooms and recipients ---

    def _lookup_room(self, name: str) -> _Room | None:
        # §11 q6: numeric id first, then the exact, case-sensitive name.
        if name.isascii() and name.isdigit() and int(name) in self._rooms:
            return self._rooms[int(name)]
        room_id = self._room_ids.get(name)
        if room_id is not None:
            return self._rooms[room_id]
        if self.auto_create_rooms and 1 <= len(name) <= ROOM_NAME_MAX:
            return self._rooms[self.add_room(name)]
        return None

    def _v2_room(self, name: str) -> _Room:
        if len(name) > ROOM_PATH_MAX:
            raise _length_error("room_id_or_name", name, ROOM_PATH_MAX, too_long=True)
        room = self._lookup_room(name)
        if room is None:
            raise _Reject(ApiError(404, f"Room {name} not found"))  # S48
        return room

    def _take_flood(self, call: _Call, key: tuple[str, str]) -> None:
        call.flood_key = key
        window = self._flood_windows.setdefault(key, FixedWindow(self.flood_window))
        call.flood = window.take(self.flood_limit, trio.current_time())
        if call.flood is None:
            raise self._rate_limited(call)

    def _deliver(self, message: ReceivedMessage) -> None:
        self.messages.append(message)
        self._arrivals.unpark_all()
        if self.echo is not None:
            self.echo(echo_line(message))

    def _deliver_notification(self, api: Api, room: _Room, note: Notification | V1Message) -> None:
        """Deliver a room notification: a v2 notification or a v1 rooms/message."""
        self._deliver(
            ReceivedMessage(
                kind="notification",
                api_version=api,
                room_id=room.id,
                room=room.name,
                user=None,
                sender=note.sender,
                message=note.message,
                color=note.color,
                notify=note.notify,
                message_format=note.message_format,
                date=unix_now(),
                id=str(uuid.uuid4()),
            )
        )

    # --- v2 handlers ---

    def _v2_notification(self, call: _Call, request: Request, name: str) -> Response:
        room = self._v2_room(name)
        call.flood_key = ("room", str(room.id))
        body = parse_v2_body(
            request.headers.get("content-type", ""), request.body, parse_form=self.parse_form_v2
        )
        from_max = V2_FROM_MAX_STRICT if self.strict_from_25 else V2_FROM_MAX
        note = validate_notification(body, from_max=from_max, lenient_notify=self.lenient_notify)
        self._take_flood(call, ("room", str(room.id)))
        self._deliver_notification("v2", room, note)
        return Response(204)

    def _v2_room_message(self, call: _Call, request: Request, name: str) -> Response:
        room = self._v2_room(name)
        call.flood_key = ("room", str(room.id))
        body = parse_v2_body(
            request.headers.get("content-type", ""), request.body, parse_form=self.parse_form_v2
        )
        # §7: send_message caps the message at 1,000 characters and ignores `from`.
        text = _string(body, "message", required=True, min_len=1, max_len=V2_ROOM_MESSAGE_MAX)
        assert text is not None
        self._take_flood(call, ("room", str(room.id)))
        message = ReceivedMessage(
            kind="room_message",
            api_version="v2",
            room_id=room.id,
            room=room.name,
            user=None,
            sender="",
            message=text,
            color=None,
            notify=False,
            message_format="text",
            date=unix_now(),
            id=str(uuid.uuid4()),
        )
        self._deliver(message)
        return _json_response(201, v2_json({"id": message.id, "timestamp": _iso(message.date)}))

    def _v2_user_message(self, call: _Call, request: Request, user: str) -> Response:
        # Any id, email or @mention is a user; they are created on first use.
        self._users.setdefault(user, len(self._users) + 1)
        call.flood_key = ("user", user)
        body = parse_v2_body(
            request.headers.get("content-type", ""), request.body, parse_form=self.parse_form_v2
        )
        text = _string(body, "message", required=True, min_len=1, max_len=V2_MESSAGE_MAX)
        assert text is not None
        notify = _boolean(body, "notify", lenient=self.lenient_notify)
        message_format = _enum(body, "message_format", MESSAGE_FORMATS, "text")
        self._take_flood(call, ("user", user))
        self._deliver(
            ReceivedMessage(
                kind="user_message",
                api_version="v2",
                room_id=None,
                room=None,
                user=user,
                sender="",
                message=text,
                color=None,
                notify=notify,
                message_format=message_format,
                date=unix_now(),
                id=str(uuid.uuid4()),
            )
        )
        return Response(204)

    def _room_json(self, room: _Room, base: str) -> dict[str, Json]:
        link = f"{base}/v2/room/{room.id}"
        created = room.created if room.created is not None else unix_now()
        return {
            "id": room.id,
            "name": room.name,
            "topic": room.topic,
            "privacy": "public",
            "is_archived": False,
            "is_guest_accessible": False,
            "guest_access_url": None,
            "created": _iso(created),
            "last_active": _iso(self._last_active(room)),
            "owner": _user(base),
            "participants": [],
            "links": {
                "self": link,
                "webhooks": f"{link}/webhook",
                "members": f"{link}/member",
                "participants": f"{link}/participant",
            },
        }

    def _v2_room_list(self, base: str) -> Response:
        items = [
            {
                "id": r.id,
                "name": r.name,
                "links": {
                    "self": f"{base}/v2/room/{r.id}",
                    "webhooks": f"{base}/v2/room/{r.id}/webhook",
                },
            }
            for r in self._rooms.values()
        ]
        body = {
            "items": items,
            "startIndex": 0,
            "maxResults": len(items),
            "links": {"self": f"{base}/v2/room"},
        }
        return _json_response(200, v2_json(body))

    def _v2_history(
        self, room: _Room, query: Mapping[str, str], base: str, *, view: bool
    ) -> Response:
        """``history/latest``, or with ``view`` the ``history`` endpoint (HypChat's history()).

        ``history`` takes ``date``: ``recent`` (the default) or an ISO 8601
        time, the newest a message may be; a time without a zone is UTC and
        ``timezone`` is ignored [inferred]. ``not-before`` is ``latest``'s.
        """
        raw = query.get("max-results", str(HISTORY_DEFAULT))
        if not raw.isascii() or not raw.isdigit():
            raise _type_error("max-results", raw, "integer")
        limit = int(raw)
        if limit > HISTORY_MAX:
            raise _Reject(
                ApiError(
                    400,
                    f"Value {limit} for field 'max-results' is greater than maximum value: "
                    f"{HISTORY_MAX}",
                    {"field": "max-results", "validation": "maximum", "value": limit},
                )
            )
        in_room = [m for m in self.messages if m.room_id == room.id]
        if view:
            newest = _history_date(query.get("date", "recent"))
            if newest is not None:
                in_room = [m for m in in_room if m.date <= newest]
        else:
            not_before = query.get("not-before")
            ids = [m.id for m in in_room]
            if not_before and not_before in ids:  # an unknown id filters nothing [inferred]
                in_room = in_room[ids.index(not_before) :]
        chosen = in_room[-limit:] if limit else []
        path = "history" if view else "history/latest"
        body = {
            "items": [_history_item(m, base) for m in chosen],
            "startIndex": 0,
            "maxResults": limit,
            "links": {"self": f"{base}/v2/room/{room.id}/{path}"},
        }
        return _json_response(200, v2_json(body))

    def _last_active(self, room: _Room) -> float:
        dates = [m.date for m in self.messages if m.room_id == room.id]
        if dates:
            return max(dates)
        return room.created if room.created is not None else unix_now()

    # --- v1 handlers ---

    def _v1_body(self, call: _Call, obj: Mapping[str, Json]) -> Response:
        if call.fmt == "xml":
            return Response(200, v1_xml(obj), "application/xml; charset=utf-8")
        return _json_response(200, v1_json(obj))

    def _v1_room_or_404(self, room_id: str) -> _Room:
        room = self._lookup_room(room_id)
        if room is None:
            raise _Reject(ApiError(404, "Room not found"))  # S31
        return room

    def _v1_message(self, call: _Call, params: Mapping[str, str]) -> Response:
        fields = validate_v1_message(params)
        room = self._v1_room_or_404(fields.room_id)
        self._take_flood(call, ("room", str(room.id)))
        self._deliver_notification("v1", room, fields)
        return self._v1_body(call, {"status": "sent"})

    def _v1_room(self, room: _Room) -> dict[str, Json]:
        created = room.created if room.created is not None else unix_now()
        return {
            "room_id": room.id,
            "name": room.name,
            "topic": room.topic,
            "last_active": int(self._last_active(room)),
            "created": int(created),
            "owner_user_id": TOKEN_OWNER["id"],
            "is_archived": False,
            "is_private": False,
            "guest_access_url": None,
        }

    def _v1_history(self, call: _Call, params: Mapping[str, str]) -> Response:
        room_id = params.get("room_id", "")
        if not room_id:
            raise _Reject(ApiError(400, "Room ID is required."))
        day = params.get("date", "")
        wanted: date | None = None
        if day != "recent":
            try:
                wanted = datetime.strptime(day, "%Y-%m-%d").date()
            except ValueError:
                raise _Reject(ApiError(400, "Invalid date. Use YYYY-MM-DD or recent.")) from None
        room = self._v1_room_or_404(room_id)
        in_room = [m for m in self.messages if m.room_id == room.id]
        if wanted is None:
            chosen = in_room[-HISTORY_DEFAULT:]
        else:  # dates are read in UTC; the `timezone` parameter is ignored [inferred]
            chosen = [m for m in in_room if datetime.fromtimestamp(m.date, UTC).date() == wanted]
        return self._v1_body(call, {"messages": [_v1_history_item(m) for m in chosen]})

    # --- admin ---

    def _admin(self, request: Request, target: Target) -> Response:
        route = match_route(target.segments)
        call = _Call("v2")
        try:
            if route is None:
                raise _Reject(ApiError(404, NOT_FOUND_TEXT))
            if request.method not in route.methods:
                allow = (("Allow", ", ".join(route.methods)),)
                raise _Reject(ApiError(405, METHOD_NOT_ALLOWED_TEXT, headers=allow))
            if route.name == "admin_messages":
                return _json_response(200, _compact([dataclasses.asdict(m) for m in self.messages]))
            if route.name == "admin_requests":
                counts: dict[str, int] = {}
                for record in self.requests:
                    counts[str(record.status)] = counts.get(str(record.status), 0) + 1
                counts["total"] = len(self.requests)
                return _json_response(200, _compact(counts))
            if route.name == "admin_reset":
                self.reset()
                return Response(204)
            return self._admin_faults(request)
        except _Reject as exc:
            return self._error(call, exc.error)

    def _admin_faults(self, request: Request) -> Response:
        body = parse_v2_body("application/json", request.body, parse_form=False)
        unknown = set(body) - set(FAULT_KEYS)
        if unknown:
            raise _Reject(ApiError(400, f"Unknown fault keys: {sorted(unknown)}"))
        latency = _number(body, "latency")
        down_for = _number(body, "down_for")
        rate_limit = _count(body, "rate_limit")
        flood_limit = _count(body, "flood_limit")
        up = body.get("up", False)
        if not isinstance(up, bool):
            raise _type_error("up", up, "boolean")
        if up and down_for:
            raise _Reject(ApiError(400, "Give either down_for or up, not both"))
        fail: tuple[int, int] | None = None
        if "fail_next" in body:
            spec = body["fail_next"]
            if not isinstance(spec, dict):
                raise _type_error("fail_next", spec, "object")
            count, status = _count(spec, "count"), _count(spec, "status")
            fail = (count if count is not None else 1, status if status is not None else 503)
            if not 400 <= fail[1] <= 599:
                raise _Reject(ApiError(400, "fail_next.status must be 400-599"))
        # Validated everything; now apply, so a bad request changes nothing.
        if latency is not None:
            self.latency = latency
        if fail is not None:
            self.fail_next(*fail)
        self.set_limits(rate_limit=rate_limit, flood_limit=flood_limit)
        if down_for:
            # Down before answering: this control request is served all the same.
            self._go_down_for(down_for)
        if up:
            self.set_down(False)
        return _json_response(
            200,
            _compact(
                {
                    "latency": self.latency,
                    "fail_next": {"count": self._fail_count, "status": self._fail_status},
                    "rate_limit": self.rate_limit,
                    "flood_limit": self.flood_limit,
                    "down_for": down_for or 0,
                    "down": self._down,
                }
            ),
        )

    @staticmethod
    def _now_or_none() -> float | None:
        try:
            return unix_now()
        except RuntimeError:  # outside trio.run: filled in when serve() starts
            return None


# --- helpers -----------------------------------------------------------------


def _compact(obj: Json) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _number(body: Mapping[str, Json], name: str) -> float | None:
    if name not in body:
        return None
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _type_error(name, value, "non-negative number")
    return float(value)


def _count(body: Mapping[str, Json], name: str) -> int | None:
    if name not in body:
        return None
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _type_error(name, value, "non-negative integer")
    return value


def _v2_token(request: Request, target: Target) -> str | None:
    # §11 q11: a Bearer header wins over ?auth_token=; other schemes are ignored (S8).
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    return target.query.get("auth_token")


def _user(base: str) -> dict[str, Json]:
    """The token owner as HipChat shows a user inside a room or message: with ``links.self``."""
    return {**TOKEN_OWNER, "links": {"self": f"{base}/v2/user/{TOKEN_OWNER['id']}"}}


def _history_date(value: str) -> float | None:
    if value == "recent":
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise _Reject(
            ApiError(
                400,
                f"Value {py2_repr(value)} for field 'date' is not an ISO 8601 date or 'recent'",
                {"field": "date", "value": value},
            )
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _history_item(message: ReceivedMessage, base: str) -> dict[str, Json]:
    item: dict[str, Json] = {
        "id": message.id,
        "date": _iso(message.date),
        "message": message.message,
        "message_format": message.message_format,
        "mentions": [],
    }
    if message.kind == "notification":
        item.update({"type": "notification", "from": message.sender, "color": message.color})
    else:
        item.update({"type": "message", "from": _user(base)})
    return item


def _v1_history_item(message: ReceivedMessage) -> dict[str, Json]:
    if message.kind == "notification":
        sender: dict[str, Json] = {"name": message.sender, "user_id": "api"}
    else:
        sender = {"name": TOKEN_OWNER["name"], "user_id": TOKEN_OWNER["id"]}
    return {"date": _v1_date(message.date), "from": sender, "message": message.message}


def _content_length(event: h11.Request) -> int | None:
    for name, value in event.headers:
        if name == b"content-length":
            return int(value)  # h11 has already checked it is a valid integer
    return None


def _protocol_error(conn: h11.Connection, exc: h11.RemoteProtocolError) -> Response | None:
    status = rejection_status(conn, exc)
    if status is None:
        return None
    # A raw space in a room name failed with 400 on HipChat too (S52, S54).
    error = ApiError(status, status_phrase(status))
    response = _json_response(error.status, v2_error_body(error))
    response.close = True
    return response


async def _send_response(
    conn: h11.Connection, stream: trio.abc.Stream, response: Response, *, head: bool = False
) -> None:
    headers = [("Server", f"hipchatd-emulator/{__version__}")]
    if response.content_type is not None:
        headers.append(("Content-Type", response.content_type))
    if response.status != 204:  # RFC 9110 §8.6: no Content-Length on 204
        headers.append(("Content-Length", str(len(response.body))))
    if response.close:
        headers.append(("Connection", "close"))
    headers.extend(response.headers)
    body = b"" if head or response.status == 204 else response.body
    await send_response(conn, stream, response.status, headers, body)


def _base_url(scheme: str, family: int, address: Any) -> str:
    host, port = address[0], address[1]
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if family == socket.AF_INET6:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


# --- HTTPS ---------------------------------------------------------------------

#: Every name a local client may use for the emulator; the throwaway certificate covers each.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
#: How to get what ``--tls`` needs: the extra that pulls in trustme.
TLS_INSTALL_HINT = "pip install 'hipchatd[emulator-tls]'"
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")


class TLSUnavailable(RuntimeError):
    """``--tls`` needs trustme (which makes the throwaway CA), and it is not installed."""


def throwaway_tls(
    ca_path: str | os.PathLike[str], hosts: Iterable[str] = LOOPBACK_NAMES
) -> ssl.SSLContext:
    """A server context with a fresh certificate for ``hosts``, signed by a fresh CA.

    Writes the CA's certificate (PEM) to ``ca_path``, for clients to trust:
    hipchatd's ``hipchat.ca_file``, ``curl --cacert``, httpx's ``verify``. The
    CA's private key never leaves memory, so the certificate is worthless once
    the process ends. Raises TLSUnavailable when trustme is not installed,
    OSError when ``ca_path`` cannot be written.
    """
    try:
        import trustme
    except ImportError as exc:
        raise TLSUnavailable(
            f"--tls needs the trustme package: {TLS_INSTALL_HINT} "
            "(or give your own certificate with --tls-cert and --tls-key)"
        ) from exc
    authority = trustme.CA(organization_name="hipchatd emulator")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(*dict.fromkeys(hosts)).configure_cert(context)
    authority.cert_pem.write_to_path(os.fspath(ca_path))
    return context


@dataclass(frozen=True, slots=True)
class _Tls:
    context: ssl.SSLContext
    #: the throwaway CA's certificate, None with --tls-cert
    ca_path: str | None = None
    #: the CA file is ours to remove at exit (no --tls-ca-out)
    temporary: bool = False


class _CannotStart(Exception):
    """One line saying why the emulator cannot start as asked."""


def _tls_from_args(args: argparse.Namespace) -> _Tls | None:
    if args.tls and args.tls_cert:
        raise _CannotStart("give either --tls (a throwaway certificate) or --tls-cert, not both")
    if args.tls_key and not args.tls_cert:
        raise _CannotStart("--tls-key needs --tls-cert")
    if args.tls_ca_out and not args.tls:
        raise _CannotStart("--tls-ca-out goes with --tls (it names where the throwaway CA goes)")
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            key = f" and --tls-key {args.tls_key}" if args.tls_key else ""
            raise _CannotStart(
                f"cannot load --tls-cert {args.tls_cert}{key}: {exc}; both must be PEM and "
                "the key must match the certificate"
            ) from None
        return _Tls(context)
    if not args.tls:
        return None
    hosts = [*LOOPBACK_NAMES]
    if args.host not in _WILDCARD_HOSTS:
        hosts.append(args.host)
    temporary = not args.tls_ca_out
    if temporary:
        fd, path = tempfile.mkstemp(prefix="hipchatd-emulator-ca-", suffix=".pem")
        os.close(fd)
    else:
        path = os.path.abspath(args.tls_ca_out)
    try:
        context = throwaway_tls(path, hosts)
    except TLSUnavailable as exc:
        _remove_quietly(path, temporary)
        raise _CannotStart(str(exc)) from None
    except OSError as exc:
        _remove_quietly(path, temporary)
        raise _CannotStart(f"cannot write the CA certificate to {path}: {exc.strerror}") from None
    return _Tls(context, path, temporary)


def _remove_quietly(path: str, ours: bool) -> None:
    if ours:
        with contextlib.suppress(OSError):
            os.unlink(path)


# --- command line (called by `hipchatd emulator`) ----------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options to ``parser`` (the ``hipchatd emulator`` subcommand)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default %(default)s")
    parser.add_argument(
        "--token",
        dest="tokens",
        action="append",
        default=[],
        metavar="T",
        help="accepted token (repeatable); none means any non-empty token is accepted",
    )
    parser.add_argument(
        "--room",
        dest="rooms",
        action="append",
        default=[],
        metavar="NAME",
        help="room to create (repeatable; default: sensu)",
    )
    parser.add_argument(
        "--auto-create-rooms", action="store_true", help="create unknown rooms on first use"
    )
    parser.add_argument(
        "--rate-limit", type=int, default=500, metavar="N", help="requests per token per 5 minutes"
    )
    parser.add_argument(
        "--flood-limit", type=int, default=30, metavar="N", help="messages per room/user per minute"
    )
    parser.add_argument(
        "--float-reset", action="store_true", help="send X-*-Reset as a float, as seen in 2014"
    )
    parser.add_argument(
        "--strict-from-25", action="store_true", help="limit v2 `from` to 25 characters, not 64"
    )
    parser.add_argument(
        "--lenient-notify", action="store_true", help='accept "true"/"false" strings for notify'
    )
    parser.add_argument(
        "--parse-form-v2", action="store_true", help="parse form bodies on v2 instead of 400"
    )
    parser.add_argument("--latency", type=float, default=0.0, metavar="S",
                        help="seconds added before every API answer")  # fmt: skip
    https = parser.add_argument_group("HTTPS (default: plain HTTP)")
    https.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS with a throwaway certificate for 127.0.0.1, localhost and ::1 "
        f"(and --host), from a new CA whose certificate is written out; needs {TLS_INSTALL_HINT}",
    )
    https.add_argument(
        "--tls-ca-out",
        metavar="PATH",
        help="with --tls: write the CA certificate (PEM) here, for hipchat.ca_file "
        "(default: a new file in the temporary directory, removed at exit)",
    )
    https.add_argument(
        "--tls-cert", metavar="FILE", help="serve HTTPS with this certificate chain (PEM)"
    )
    https.add_argument(
        "--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM; default: in it)"
    )


def emulator_from_args(args: argparse.Namespace, echo: Callable[[str], None]) -> Emulator:
    """Build an Emulator from :func:`add_arguments` options."""
    emulator = Emulator(
        tokens=args.tokens,
        rooms=args.rooms or ("sensu",),
        auto_create_rooms=args.auto_create_rooms,
        rate_limit=args.rate_limit,
        flood_limit=args.flood_limit,
        float_reset=args.float_reset,
        strict_from_25=args.strict_from_25,
        lenient_notify=args.lenient_notify,
        parse_form_v2=args.parse_form_v2,
        echo=echo,
    )
    emulator.latency = args.latency
    return emulator


def _print_line(line: str) -> None:
    print(line, flush=True)


def _startup_line(emulator: Emulator, args: argparse.Namespace, tls: _Tls | None = None) -> str:
    rooms = ", ".join(f"{name} (id {emulator._room_ids[name]})" for name in emulator._room_ids)
    tokens = (
        f"{len(set(args.tokens))} token(s) accepted"
        if args.tokens
        else "open mode: any token accepted"
    )
    auto = ", unknown rooms auto-created" if args.auto_create_rooms else ""
    return (
        f"hipchatd emulator listening on {emulator.url}; rooms: {rooms}{auto}; "
        f"rate limit {emulator.rate_limit}/{emulator.rate_window:g}s per token, "
        f"flood control {emulator.flood_limit}/{emulator.flood_window:g}s per room; {tokens}"
        + (f"; CA certificate in {tls.ca_path}" if tls is not None and tls.ca_path else "")
    )


async def _serve_until_signalled(
    emulator: Emulator, args: argparse.Namespace, tls: _Tls | None
) -> int:
    serve = functools.partial(emulator.serve, ssl_context=tls.context if tls else None)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(serve, args.host, args.port)
            except OSError as exc:
                print(f"hipchatd emulator: cannot listen on {args.host}:{args.port}: {exc}",
                      file=sys.stderr)  # fmt: skip
                return 1
            _print_line(_startup_line(emulator, args, tls))
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the emulator in the foreground until Ctrl-C or SIGTERM; return the exit code.

    Prints one startup line (with ``--tls``, it names the CA certificate
    file), then one line per accepted message. Returns 0 on a signal, 1 if it
    cannot start: the address cannot be bound, or the HTTPS options cannot be
    used (one line on stderr says why).
    """
    try:
        tls = _tls_from_args(args)
    except _CannotStart as exc:
        print(f"hipchatd emulator: {exc}", file=sys.stderr)
        return 1
    emulator = emulator_from_args(args, _print_line)
    try:
        return trio.run(_serve_until_signalled, emulator, args, tls)
    except KeyboardInterrupt:  # Ctrl-C before the signal receiver was installed
        return 0
    finally:
        if tls is not None and tls.ca_path is not None:
            _remove_quietly(tls.ca_path, tls.temporary)
