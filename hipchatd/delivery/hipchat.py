"""The HipChat HTTP client: v1 and v2 requests, outcome classification.

The only module that knows httpx. It never raises: every attempt becomes an
Outcome, a HipChat answer, a transport failure and a bug alike (a bug is also
logged at ERROR with its traceback). Only trio's cancellation and
KeyboardInterrupt-class exceptions propagate.

Everything a server sends is bounded before it is believed:

* A response body is read up to :data:`MAX_BODY_BYTES`, then the response is
  closed; a body that ends early (reset, truncated) still gives the outcome
  its status names.
* A wait the server names (``Retry-After``, ``X-Ratelimit-Reset``,
  ``X-FloodControl-Reset``) is never believed beyond :data:`MAX_SERVER_WAIT`.
  Such a wait, a limit of 0, a remaining count above the limit, and a
  malformed or negative value are protocol errors: logged at WARNING
  (``hipchat.protocol_error``, at most once per header per
  :data:`PROTOCOL_WARNING_INTERVAL`), and the whole header family (or the
  ``Retry-After``) is ignored, so the budget counts the request itself over
  its configured window and a retry waits the normal backoff.

Requests (see the HipChat API reference shipped with the project):

* v2 room: ``POST {base}/v2/room/{room}/notification``, JSON, ``Authorization: Bearer``.
* v2 user: ``POST {base}/v2/user/{user}/message``, JSON, ``Authorization: Bearer``.
* v1 room: ``POST {base}/v1/rooms/message?format=json``, form body carrying
  ``auth_token``. The token never goes in a URL: URLs end up in logs.

``{room}`` and ``{user}`` are percent-encoded as one path segment with nothing
left unescaped (:func:`room_path`) and sent to the server byte for byte.
"""

from __future__ import annotations

import email.utils
import enum
import json
import math
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any
from urllib.parse import quote

import httpx
import structlog
import trio

from hipchatd import __version__
from hipchatd.clock import unix_now
from hipchatd.config import ApiVersion, HipChatSettings
from hipchatd.delivery.render import Message
from hipchatd.delivery.routing import Target
from hipchatd.errors import ConfigError
from hipchatd.redaction import scrub

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_SERVER_WAIT",
    "HipChatClient",
    "Outcome",
    "OutcomeKind",
    "RateInfo",
    "make_http_client",
    "parse_rate_info",
    "parse_retry_after",
    "room_path",
]

log = structlog.get_logger()

#: Characters of error text kept in an Outcome: one log line, not an HTML page.
MAX_ERROR_CHARS = 200
#: Bytes of a response body read at most. HipChat's bodies are small JSON (an
#: error object of a few hundred bytes, v1's ``{"status": "sent"}``); the rest
#: of a longer one is never read, so an endless or huge body costs no memory.
MAX_BODY_BYTES = 64 * 1024
#: Seconds a 2xx answer's body may take to arrive. The status already proves
#: delivery; the body is read only so the connection can be reused, and one
#: that drips must not turn a delivered message into a timeout and a duplicate.
SENT_BODY_GRACE = 1.0
#: Seconds at most that any wait a server names is believed (Retry-After, a
#: reset header). HipChat's windows are 5 minutes for the token's rate limit and
#: 1 minute for flood control, so a wait that ends within 6 minutes covers every
#: real one; a later one is a protocol error, never a stalled room.
MAX_SERVER_WAIT = 360.0
#: Seconds between two protocol-error WARNINGs about the same header: a broken
#: server answers every request the same way.
PROTOCOL_WARNING_INTERVAL = 60.0
#: Exceptions followed down a ``raise ... from`` chain to find a description.
_MAX_CAUSES = 8
#: Header prefixes of the two rate-limit families (matched case-insensitively).
RATE_PREFIX = "X-Ratelimit"
FLOOD_PREFIX = "X-FloodControl"
#: The message ``auth_test`` requests carry; HipChat validates it but posts nothing.
AUTH_TEST_MESSAGE = "hipchatd auth test"
#: v1 requires ``from`` (1-15 characters); ``auth_test`` has no Message to take it from.
AUTH_TEST_SENDER = "hipchatd"

# v1 answers a rate-limited call with 403 (not 429), and so did the v2 beta;
# the only known wording is "You have exceeded the rate limit." (reference §6.1).
_RATE_LIMIT_TEXT = re.compile(r"rate[ _-]?limit", re.IGNORECASE)
_DECIMAL = re.compile(r"\d+(?:\.\d+)?")
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
_SURROGATE = re.compile("[\ud800-\udfff]")


class OutcomeKind(enum.Enum):
    SENT = "sent"
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    BAD_REQUEST = "bad_request"
    SERVER_ERROR = "server_error"
    TRANSPORT_ERROR = "transport_error"
    TIMEOUT = "timeout"

    @property
    def transient(self) -> bool:
        """Worth retrying later: rate limits, 5xx, transport errors, timeouts."""
        return self in _TRANSIENT


_TRANSIENT = frozenset(
    {
        OutcomeKind.RATE_LIMITED,
        OutcomeKind.SERVER_ERROR,
        OutcomeKind.TRANSPORT_ERROR,
        OutcomeKind.TIMEOUT,
    }
)


@dataclass(frozen=True, slots=True)
class RateInfo:
    """One rate-limit header family: limit, remaining, reset (absolute Unix time)."""

    limit: int | None
    remaining: int | None
    reset: float | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt achieved."""

    kind: OutcomeKind
    #: HTTP status, None when no response arrived.
    status: int | None = None
    #: HipChat's own error message, or the transport error's description.
    error: str | None = None
    #: ``X-Ratelimit-*`` (per token).
    rate: RateInfo | None = None
    #: ``X-FloodControl-*`` (per room or user).
    flood: RateInfo | None = None
    #: absolute Unix time HipChat asked us to come back (Retry-After or a reset header).
    #: Set only for transient kinds; may lie in the past when clocks disagree.
    retry_at: float | None = None

    @classmethod
    def timeout(cls, seconds: float) -> Outcome:
        """The outcome a caller records when its cancel scope ended the attempt."""
        return cls(OutcomeKind.TIMEOUT, error=f"no answer from HipChat within {seconds:g} s")


# v1 has no private-message method (reference §13 lists only v2's); refuse
# without a request so a misconfiguration reads as what it is.
_V1_HAS_NO_USER_MESSAGES = Outcome(
    OutcomeKind.BAD_REQUEST,
    error="HipChat API v1 cannot message a user; set hipchat.api_version to v2",
)


def room_path(name: str) -> str:
    """Percent-encode a room name (or user id / e-mail) as a single path segment.

    Nothing is left unescaped (reference §5): ``my room`` -> ``my%20room``,
    ``ops/alerts`` -> ``ops%2Falerts``, ``#x`` -> ``%23x``, ``a+b`` -> ``a%2Bb``,
    ``Café`` -> ``Caf%C3%A9``. HipChat decodes the segment exactly once.
    """
    return quote(_wire_text(name), safe="")


def parse_rate_info(headers: Mapping[str, str], prefix: str) -> RateInfo | None:
    """Read ``{prefix}-Limit``, ``-Remaining`` and ``-Reset``, header names in any case.

    ``Reset`` is an absolute Unix time, integer or float (``1366037820``,
    ``1412564640.0``). A value that does not parse becomes None; the function
    never raises. Returns None when none of the three headers is present.
    """
    limit = _header(headers, f"{prefix}-Limit")
    remaining = _header(headers, f"{prefix}-Remaining")
    reset = _header(headers, f"{prefix}-Reset")
    if limit is None and remaining is None and reset is None:
        return None
    return RateInfo(limit=_count(limit), remaining=_count(remaining), reset=_decimal(reset))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as an absolute Unix time: delay seconds from ``now``, or an HTTP-date.

    Delay seconds may carry a fraction. Garbage, negative values and dates
    without a year-month-day-time become None; the function never raises.
    """
    if value is None:
        return None
    value = value.strip()
    seconds = _decimal(value)
    if seconds is not None:
        return now + seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are GMT; "-0000" parses as naive.
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def make_http_client(settings: HipChatSettings, concurrency: int) -> httpx.AsyncClient:
    """The one AsyncClient for the process: pool sized to ``concurrency``, ``ca_file`` trusted.

    * No httpx timeouts. Each attempt runs inside the caller's
      ``trio.move_on_after(settings.timeout)``, which bounds pool wait, connect,
      TLS, write and read together; httpx's per-phase timeouts would only
      repeat that deadline under another name (a pool timeout shorter than it
      would report our own queueing as a HipChat failure). A caller that
      forgets its scope can wait forever: always wrap.
    * ``trust_env=False``: ``HTTPS_PROXY``, ``SSL_CERT_FILE`` and ``.netrc`` are
      ignored, so the daemon behaves the same under systemd and in a shell.
    * ``ca_file`` *replaces* the default CA bundle (like ``curl --cacert``):
      HipChat Server with a private CA. Without it, httpx's bundled CAs are used.
    * Redirects are not followed: a redirect means ``server_url`` is wrong, and
      a POST must not be replayed elsewhere.
    * ``Accept-Encoding: identity``: bodies are read raw and bounded
      (:data:`MAX_BODY_BYTES`); a compressed one could inflate far beyond that.

    Raises ConfigError when ``ca_file`` cannot be read as PEM CA certificates.
    """
    return httpx.AsyncClient(
        headers={
            "User-Agent": f"hipchatd/{__version__}",
            "Accept": "application/json",
            "Accept-Encoding": "identity",
        },
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        timeout=httpx.Timeout(None),
        verify=_ssl_context(settings.ca_file),
        trust_env=False,
        follow_redirects=False,
    )


class HipChatClient:
    """Posts messages to HipChat; one instance per process (per reload)."""

    def __init__(self, settings: HipChatSettings, http: httpx.AsyncClient) -> None:
        self._settings = settings
        self._http = http
        self._api_version: ApiVersion = settings.api_version
        base = httpx.URL(settings.server_url)
        self._origin = base.copy_with(raw_path=b"/", fragment=None)
        # Keep a path prefix (HipChat Server behind a proxy) but never double the
        # slash: HipChat does not collapse "//" (reference §11 q10).
        self._prefix = base.raw_path.partition(b"?")[0].rstrip(b"/")
        #: header name (lower case) -> (Unix time of its last WARNING, suppressed since).
        self._warned: dict[str, tuple[float, int]] = {}

    @property
    def http(self) -> httpx.AsyncClient:
        """The shared AsyncClient (a reloaded client reuses it)."""
        return self._http

    async def send(self, target: Target, message: Message) -> Outcome:
        """Post ``message`` to ``target`` once and classify the answer.

        Takes no timeout: the caller wraps it in ``trio.move_on_after``.
        Cancellation propagates; every other failure is an Outcome.
        """
        if self._api_version == "v1":
            if target.kind == "user":
                return _V1_HAS_NO_USER_MESSAGES
            return await self._post_form(
                {
                    "room_id": _wire_text(target.name),
                    "from": _wire_text(message.sender),
                    "message": _wire_text(message.text),
                    "message_format": message.message_format,
                    "color": message.color,
                    "notify": "1" if message.notify else "0",
                }
            )
        if target.kind == "user":
            return await self._post_json(
                _user_path(target.name),
                {
                    "message": _wire_text(message.text),
                    "notify": bool(message.notify),
                    "message_format": message.message_format,
                },
            )
        return await self._post_json(
            _room_path(target.name),
            {
                "message": _wire_text(message.text),
                "color": message.color,
                "notify": bool(message.notify),
                "message_format": message.message_format,
                "from": _wire_text(message.sender),
            },
        )

    async def auth_test(self, target: Target) -> Outcome:
        """Ask HipChat whether the token may post to ``target``, without posting.

        v2 sends the real request with ``?auth_test=true`` (reference §2):
        HipChat checks token, scope and recipient and answers 202 instead of
        delivering. v1 documents no such answer; ``auth_test=true`` in the
        ``rooms/message`` form is the nearest equivalent. Should a server
        ignore the flag, the body is a quiet gray text notice. Any 2xx is
        SENT. Same contract as :meth:`send`: the caller owns the deadline,
        cancellation propagates.
        """
        if self._api_version == "v1":
            if target.kind == "user":
                return _V1_HAS_NO_USER_MESSAGES
            return await self._post_form(
                {
                    "auth_test": "true",
                    "room_id": _wire_text(target.name),
                    "from": AUTH_TEST_SENDER,
                    "message": AUTH_TEST_MESSAGE,
                    "message_format": "text",
                    "color": "gray",
                    "notify": "0",
                }
            )
        body: dict[str, Any] = {
            "message": AUTH_TEST_MESSAGE,
            "notify": False,
            "message_format": "text",
        }
        path = _user_path(target.name) if target.kind == "user" else _room_path(target.name)
        return await self._post_json(path + b"?auth_test=true", body)

    async def _post_json(self, path: bytes, body: dict[str, Any]) -> Outcome:
        token = self._settings.api_token.reveal()
        return await self._post(
            path, token, headers={"Authorization": f"Bearer {token}"}, json_body=body
        )

    async def _post_form(self, fields: dict[str, str]) -> Outcome:
        token = self._settings.api_token.reveal()
        return await self._post(
            b"/v1/rooms/message?format=json", token, form={"auth_token": token, **fields}
        )

    async def _post(
        self,
        path: bytes,
        token: str,
        *,
        headers: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
        form: dict[str, str] | None = None,
    ) -> Outcome:
        try:
            # raw_path keeps the percent-encoding exactly as room_path() made it.
            url = self._origin.copy_with(raw_path=self._prefix + path)
            request = self._http.build_request(
                "POST", url, headers=headers, json=json_body, data=form
            )
            response = await self._http.send(request, stream=True)
        except httpx.TimeoutException as exc:
            # Only with a client that has httpx timeouts (ours has none).
            return Outcome(OutcomeKind.TIMEOUT, error=_clean(_describe(exc), token))
        except httpx.RequestError as exc:
            # TransportError (refused, reset, TLS, protocol) and DecodingError.
            return Outcome(OutcomeKind.TRANSPORT_ERROR, error=_clean(_describe(exc), token))
        except Exception as exc:
            return _unexpected(exc, token)
        try:
            content = await _read_body(response)
            return _classify(
                response.status_code,
                response.headers,
                content,
                now=unix_now(),
                token=token,
                warn=self._warn,
            )
        except Exception as exc:
            return _unexpected(exc, token)
        finally:
            # Unread bytes are never read: httpx closes the connection instead.
            await response.aclose()

    def _warn(self, header: str, value: str, problem: str, instead: str) -> None:
        """Log a protocol error, at most once per header per PROTOCOL_WARNING_INTERVAL."""
        now = unix_now()
        last, suppressed = self._warned.get(header.lower(), (-math.inf, 0))
        if now - last < PROTOCOL_WARNING_INTERVAL:
            self._warned[header.lower()] = (last, suppressed + 1)
            return
        self._warned[header.lower()] = (now, 0)
        log.warning(
            "hipchat.protocol_error",
            header=header,
            value=value[:_MAX_VALUE_CHARS],
            problem=problem,
            instead=instead,
            suppressed=suppressed,
        )


#: Characters of a bad header value quoted in a protocol-error WARNING.
_MAX_VALUE_CHARS = 64

_Warn = Callable[[str, str, str, str], None]


def _ignore_protocol_error(header: str, value: str, problem: str, instead: str) -> None:
    pass


async def _read_body(response: httpx.Response) -> bytes:
    """Up to MAX_BODY_BYTES of the body, as sent (no decompression: see make_http_client).

    A body that breaks off (reset, truncated) yields what arrived. A 2xx body
    gets SENT_BODY_GRACE seconds, then what arrived.
    """
    if response.is_stream_consumed:
        # Read already by a transport that buffers (httpx.MockTransport).
        return response.content[:MAX_BODY_BYTES]
    chunks: list[bytes] = []
    size = 0
    grace = SENT_BODY_GRACE if response.is_success else math.inf
    with trio.move_on_after(grace) as scope:
        try:
            async for chunk in response.aiter_raw():
                if size < MAX_BODY_BYTES:
                    chunks.append(chunk[: MAX_BODY_BYTES - size])
                    size += len(chunks[-1])
                if size >= MAX_BODY_BYTES:
                    # Not ``break``: that would abandon httpx's stream generators
                    # unclosed. Cancelled, the next read raises through all of
                    # them, and httpcore closes the connection on its way out.
                    scope.cancel()
        except httpx.RequestError:
            pass  # the status line and headers arrived; they decide the outcome
    if response.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        return b""  # asked for identity; a compressed body is not ours to inflate
    return b"".join(chunks)


def _unexpected(exc: Exception, token: str) -> Outcome:
    """A bug (ours or a library's) in one attempt: logged loud, retried like a transport error."""
    error = _clean(f"unexpected {type(exc).__name__}: {exc}", token)
    log.error("hipchat.request_failed", error=error, exc_info=True)
    return Outcome(OutcomeKind.TRANSPORT_ERROR, error=error)


def _room_path(name: str) -> bytes:
    return f"/v2/room/{room_path(name)}/notification".encode("ascii")


def _user_path(name: str) -> bytes:
    return f"/v2/user/{room_path(name)}/message".encode("ascii")


def _classify(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    now: float,
    token: str,
    warn: _Warn = _ignore_protocol_error,
) -> Outcome:
    rate = _checked_rate_info(headers, RATE_PREFIX, now, warn)
    flood = _checked_rate_info(headers, FLOOD_PREFIX, now, warn)
    if 200 <= status < 300:
        return Outcome(OutcomeKind.SENT, status=status, rate=rate, flood=flood)
    error = _clean(_error_text(status, headers, content), token)
    kind = _kind(status, error)
    retry_at = None
    if kind.transient:
        retry_at = _checked_retry_after(headers, now, warn)
        if retry_at is None and kind is OutcomeKind.RATE_LIMITED:
            retry_at = _reset_at(rate, flood)
        if retry_at is not None:
            retry_at = min(retry_at, now + MAX_SERVER_WAIT)
    return Outcome(kind, status=status, error=error, rate=rate, flood=flood, retry_at=retry_at)


def _checked_rate_info(
    headers: Mapping[str, str], prefix: str, now: float, warn: _Warn
) -> RateInfo | None:
    """parse_rate_info, or None (and a warning) when the family breaks the protocol."""
    info = parse_rate_info(headers, prefix)
    if info is None:
        return None
    names = {field: f"{prefix}-{field.capitalize()}" for field in ("limit", "remaining", "reset")}
    instead = f"ignored the {prefix}-* headers; counted the request against the configured budget"
    values = {field: _header(headers, name) for field, name in names.items()}
    problems: list[tuple[str, str]] = []
    for field, parsed in (("limit", info.limit), ("remaining", info.remaining)):
        if values[field] is not None and parsed is None:
            problems.append((field, "not a non-negative integer"))
    if values["reset"] is not None and info.reset is None:
        problems.append(("reset", "not a Unix time"))
    if info.limit == 0:
        problems.append(("limit", "a limit of 0 allows no request ever"))
    elif info.limit is not None and info.remaining is not None and info.remaining > info.limit:
        problems.append(("remaining", f"more than the limit of {info.limit}"))
    if info.reset is not None and info.reset > now + MAX_SERVER_WAIT:
        ahead = min(info.reset - now, 1e18)  # a finite number of seconds to print
        problems.append(
            ("reset", f"{math.ceil(ahead)} s ahead, more than the {MAX_SERVER_WAIT:g} s believed")
        )
    for field, problem in problems:
        warn(names[field], values[field] or "", problem, instead)
    return None if problems else info


def _checked_retry_after(headers: Mapping[str, str], now: float, warn: _Warn) -> float | None:
    """parse_retry_after, or None (and a warning) when the value breaks the protocol."""
    value = _header(headers, "Retry-After")
    if value is None:
        return None
    at = parse_retry_after(value, now)
    instead = "ignored Retry-After; retried after the normal backoff"
    if at is None:
        warn("Retry-After", value, "neither non-negative delay seconds nor an HTTP-date", instead)
    elif not at <= now + MAX_SERVER_WAIT:
        problem = f"more than the {MAX_SERVER_WAIT:g} s believed"
        warn("Retry-After", value, problem, instead)
        return None
    return at


def _kind(status: int, error: str) -> OutcomeKind:
    if status == 429 or (status == 403 and _RATE_LIMIT_TEXT.search(error)):
        return OutcomeKind.RATE_LIMITED
    if status == 401:
        return OutcomeKind.UNAUTHORIZED
    if status == 403:
        return OutcomeKind.FORBIDDEN
    if status == 404:
        return OutcomeKind.NOT_FOUND
    if 500 <= status < 600:
        return OutcomeKind.SERVER_ERROR
    # Other 4xx, and 3xx (redirects are not followed: server_url is wrong).
    return OutcomeKind.BAD_REQUEST


def _reset_at(rate: RateInfo | None, flood: RateInfo | None) -> float | None:
    # The exhausted family decides; flood control first, it is the narrower one.
    for info in (flood, rate):
        if info is not None and info.remaining == 0 and info.reset is not None:
            return info.reset
    resets = [info.reset for info in (flood, rate) if info is not None and info.reset is not None]
    return max(resets, default=None)


def _error_text(status: int, headers: Mapping[str, str], content: bytes) -> str:
    message = _hipchat_message(content)
    if message is not None:
        return message
    reason = httpx.codes.get_reason_phrase(status)
    text = f"{status} {reason}" if reason else f"HTTP {status}"
    location = _header(headers, "Location")
    if 300 <= status < 400 and location:
        text += f" to {location}"
    body = _TAG.sub(" ", content.decode("utf-8", errors="replace"))
    return f"{text}: {body}" if body.strip() else text


def _hipchat_message(content: bytes) -> str | None:
    """``error.message`` of HipChat's error shape (v1 compact, v2 pretty), else None."""
    if not content.strip():
        return None
    try:
        document = json.loads(content)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    error = document.get("error")
    if not isinstance(error, dict):
        return None
    message = error.get("message")
    if not isinstance(message, str) or not message.strip():
        return None
    return message


def _describe(exc: Exception) -> str:
    # httpx re-raises httpcore's error, which wraps trio's, which wraps the OS or
    # TLS error; the outer ones often have no text (a failed TLS handshake is a
    # bare "ConnectError"). Name the httpx class, quote the first text in the chain.
    cause: BaseException | None = exc
    for _ in range(_MAX_CAUSES):
        if cause is None:
            break
        text = str(cause).strip()
        if text:
            return f"{type(exc).__name__}: {text}"
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


def _clean(text: str, token: str) -> str:
    """Error text for an Outcome: the token removed, one line, at most MAX_ERROR_CHARS."""
    # The token as typed, and escaped or quoted as it appears in a URL, a form
    # body, a header's bytes repr or a JSON string.
    text = _SPACE.sub(" ", scrub(text, token)).strip()
    # Redact again: collapsing whitespace may have joined what the first pass missed.
    text = scrub(text, token)
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    return text


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # httpx.Headers is case-insensitive already; a plain dict (tests, callers) is not.
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def _count(value: str | None) -> int | None:
    number = _decimal(value)
    if number is None or not number.is_integer():
        return None
    return int(number)


def _decimal(value: str | None) -> float | None:
    # A strict pattern: float() would also take "nan", "inf", "-1" and "1_0".
    if value is None or not _DECIMAL.fullmatch(value := value.strip()):
        return None
    return float(value)


def _wire_text(text: str) -> str:
    # A lone surrogate (valid in JSON input, not in UTF-8) would make httpx
    # raise while encoding the request; send U+FFFD instead of crashing.
    return _SURROGATE.sub("\ufffd", text)


def _ssl_context(ca_file: str | None) -> ssl.SSLContext | bool:
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            [
                f"hipchat.ca_file: cannot load CA certificates from {ca_file!r} ({reason}); "
                "expected a readable PEM file of CA certificates"
            ]
        ) from exc
