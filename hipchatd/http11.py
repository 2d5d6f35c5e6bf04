"""The one HTTP/1.1 request loop on trio + h11, shared by the emulator and the ops server.

:func:`serve_connection` serves one connection: it reads each request under
two deadlines (the server's idle one until the request's first byte, then a
short read one: the slowloris guard), bounds its head and its body, hands the
whole request to the server's :class:`Handler`, frames the answer as head,
body, end, and keeps the connection for another request only when both sides
finished the last one. A malformed request is logged by its kind only and
answered with h11's status; a body over the limit, declared or received, is
answered 413. Both are refusals: the handler shapes the answer, and the
connection ends after it. h11 is known only to this module. What a server
answers, and its limits (:class:`Limits`), stay with that server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol

import h11
import structlog
import trio

__all__ = [
    "Handler",
    "Head",
    "Limits",
    "Request",
    "Response",
    "serve_connection",
    "status_phrase",
]

log = structlog.get_logger()

#: The status a body over :attr:`Limits.max_body_bytes` is refused with.
TOO_LARGE = 413


@dataclass(frozen=True, slots=True)
class Limits:
    """What one server allows a request and an idle connection."""

    #: Request line plus headers; h11 answers 431 above this.
    max_header_bytes: int
    #: A body over this (by its Content-Length, or as it arrives) is refused with 413.
    max_body_bytes: int
    #: Seconds a request may take to arrive once its first byte is in (slowloris guard).
    read_timeout: float
    #: Seconds a connection may wait for a request's first byte.
    idle_timeout: float
    #: Bytes read per receive.
    receive_chunk: int


@dataclass(frozen=True, slots=True)
class Head:
    """A request's line and headers, as soon as they arrived, before its body.

    Header names are lowercase; of a repeated header, the first value wins.
    """

    method: str
    #: the target as sent: not split, not decoded
    target: bytes
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Request(Head):
    """One complete request: its head and its whole body."""

    body: bytes


@dataclass(slots=True)
class Response:
    """An answer before h11 frames it.

    The loop adds ``Server``, ``Content-Type`` (when set), ``Content-Length``
    (except on 204) and, with ``close``, ``Connection: close``; ``headers``
    follow them. The body is not sent for HEAD and 204.
    """

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: end the connection after this answer
    close: bool = False


class Handler(Protocol):
    """What a server does with the requests of one connection."""

    def started(self, head: Head) -> None:
        """A request's line and headers arrived; its body has not been read."""

    def refused(self, status: int, head: Head | None) -> Response | None:
        """The answer to a request the loop refuses, sent before the connection ends.

        ``status`` is 413 (the body is over the limit; ``head`` is known) or
        the 4xx h11 gives a malformed request (``head`` is None). None sends
        nothing (the handler may have reset the connection itself).
        """

    async def respond(self, request: Request) -> Response | None:
        """The answer to ``request``; None ends the connection unanswered."""

    def failed(self, request: Request) -> Response:
        """The answer when :meth:`respond` raised: a bug, reported by the handler.

        Called inside the ``except`` block, so the handler can log the
        traceback; the loop sends the answer and ends the connection. Other
        connections are served as before.
        """


async def serve_connection(
    stream: trio.abc.Stream, handler: Handler, limits: Limits, *, server: str
) -> None:
    """Serve requests on ``stream`` until it must close; ``server`` is the Server header.

    Returns when the client closes, goes idle past ``limits.idle_timeout``,
    is too slow, goes away, or sends a request that ends the connection; it
    does not close ``stream`` (the caller does). The loop is the fault
    boundary of one connection: an exception from ``handler.respond`` is
    answered with ``handler.failed``, and any other (from ``started``,
    ``refused`` or a response h11 cannot frame) is logged; either ends that
    connection only.
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
    try:
        while True:
            outcome = await _read_request(conn, stream, handler, limits)
            if outcome is None:
                return
            if isinstance(outcome, Response):
                outcome.close = True
                await _send(conn, stream, outcome, server, head=False)
                await _linger(stream, limits)
                return
            try:
                response = await handler.respond(outcome)
            except Exception:
                response = handler.failed(outcome)
                response.close = True
            if response is None:
                return
            await _send(conn, stream, response, server, head=outcome.method == "HEAD")
            # Reused only when both sides finished the last request cleanly (an unread
            # body or a ``Connection: close`` ends it).
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return  # the client went away, or the handler reset the connection
    except Exception:
        log.error("http.connection_failed", server=server, exc_info=True)


async def _read_request(
    conn: h11.Connection, stream: trio.abc.Stream, handler: Handler, limits: Limits
) -> Request | Response | None:
    """One request; a Response refuses it (answer, then close), None means just close."""
    head: Head | None = None
    body = bytearray()
    started = False
    with trio.move_on_after(limits.idle_timeout) as scope:
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                return _malformed(conn, exc, handler)
            if event is h11.NEED_DATA:
                data = await stream.receive_some(limits.receive_chunk)
                if data and not started:
                    started = True
                    scope.deadline = trio.current_time() + limits.read_timeout
                conn.receive_data(bytes(data))
            elif isinstance(event, h11.Request):
                head = _head(event)
                handler.started(head)
                declared = _content_length(event)
                if declared is not None and declared > limits.max_body_bytes:
                    return handler.refused(TOO_LARGE, head)
                if conn.they_are_waiting_for_100_continue:
                    informational = h11.InformationalResponse(status_code=100, headers=[])
                    await stream.send_all(conn.send(informational) or b"")
            elif isinstance(event, h11.Data):
                body += event.data
                if head is not None and len(body) > limits.max_body_bytes:
                    return handler.refused(TOO_LARGE, head)
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return Request(head.method, head.target, head.headers, bytes(body))
            else:  # ConnectionClosed, or PAUSED which cannot happen before EndOfMessage
                return None
    log.debug("http.connection_closed", reason="request too slow" if started else "idle")
    return None


def _malformed(
    conn: h11.Connection, exc: h11.RemoteProtocolError, handler: Handler
) -> Response | None:
    # h11 quotes the offending bytes, which may hold a token: log only the kind of error.
    reason = str(exc).partition(":")[0]
    log.info("http.request_rejected", reason=reason, status=exc.error_status_hint)
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return None  # a response has begun, so no other can be sent
    return handler.refused(exc.error_status_hint, None)


def _head(event: h11.Request) -> Head:
    headers: dict[str, str] = {}
    for name, value in event.headers:
        headers.setdefault(name.decode("ascii"), value.decode("latin-1"))
    return Head(event.method.decode("ascii"), event.target, headers)


def _content_length(event: h11.Request) -> int | None:
    for name, value in event.headers:
        if name == b"content-length":
            return int(value)  # h11 has already checked it is a valid integer
    return None


def status_phrase(status: int) -> str:
    """The standard reason phrase; "Error" for a status that has none."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


async def _send(
    conn: h11.Connection,
    stream: trio.abc.Stream,
    response: Response,
    server: str,
    *,
    head: bool,
) -> None:
    headers = [("Server", server)]
    if response.content_type is not None:
        headers.append(("Content-Type", response.content_type))
    if response.status != 204:  # RFC 9110 §8.6: no Content-Length on 204
        headers.append(("Content-Length", str(len(response.body))))
    if response.close:
        headers.append(("Connection", "close"))
    headers.extend(response.headers)
    reason = status_phrase(response.status).encode()
    events: list[h11.Event] = [
        h11.Response(status_code=response.status, headers=headers, reason=reason)
    ]
    if response.body and not head and response.status != 204:
        events.append(h11.Data(data=response.body))
    events.append(h11.EndOfMessage())
    await stream.send_all(b"".join(conn.send(event) or b"" for event in events))


async def _linger(stream: trio.abc.Stream, limits: Limits) -> None:
    """After a refusal, half-close and read what the client still sends, then return.

    Closing with unread bytes makes the kernel send RST, which can destroy
    the refusal before the client reads it (RFC 9112 §9.6). A TLS stream
    cannot half-close; it is closed at once.
    """
    if not isinstance(stream, trio.abc.HalfCloseableStream):
        return
    await stream.send_eof()
    drained = 0
    with trio.move_on_after(limits.read_timeout):
        while drained <= limits.max_body_bytes:
            data = await stream.receive_some(limits.receive_chunk)
            if not data:
                return
            drained += len(data)
