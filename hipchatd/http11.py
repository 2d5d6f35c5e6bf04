"""HTTP/1.1 server plumbing on trio + h11, shared by the emulator and the metrics endpoint.

Both servers read a request under two deadlines (the caller's idle one until
its first byte, then a short read one: the slowloris guard), log a malformed
request by its kind only, frame a response as head, body, end, and keep a
connection for another request only when both sides finished the last one.
What they answer, and their limits, stay with each server.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus

import h11
import structlog
import trio

log = structlog.get_logger()


class RequestReader:
    """Receives for h11 what one request needs, and starts its read deadline.

    Make one per request inside the caller's idle scope, ``with
    trio.move_on_after(idle) as scope``: the request's first bytes move
    ``scope``'s deadline to ``read_timeout`` seconds from then.
    """

    def __init__(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        scope: trio.CancelScope,
        *,
        read_timeout: float,
        chunk: int,
    ) -> None:
        self._conn = conn
        self._stream = stream
        self._scope = scope
        self._read_timeout = read_timeout
        self._chunk = chunk
        #: Whether a byte of this request has arrived.
        self.started = False

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        """The next h11 event, never NEED_DATA.

        Raises h11.RemoteProtocolError for a malformed request, and what
        ``receive_some`` raises when the peer is gone.
        """
        while True:
            event = self._conn.next_event()
            if event is h11.PAUSED or isinstance(event, h11.Event):
                return event
            data = await self._stream.receive_some(self._chunk)
            if data and not self.started:
                self.started = True
                self._scope.deadline = trio.current_time() + self._read_timeout
            self._conn.receive_data(bytes(data))


def rejection_status(conn: h11.Connection, exc: h11.RemoteProtocolError) -> int | None:
    """Log a malformed request; the status to answer it with, or None to just close.

    None when a response has already begun, so no other can be sent.
    """
    # h11 quotes the offending bytes, which may hold a token: log only the kind of error.
    reason = str(exc).partition(":")[0]
    log.info("http.request_rejected", reason=reason, status=exc.error_status_hint)
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return None
    status: int = exc.error_status_hint
    return status


def status_phrase(status: int) -> str:
    """The standard reason phrase; "Error" for a status that has none."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


async def send_events(conn: h11.Connection, stream: trio.abc.Stream, *events: h11.Event) -> None:
    """Frame ``events`` with h11 and send them in one write."""
    await stream.send_all(b"".join(conn.send(event) or b"" for event in events))


async def send_response(
    conn: h11.Connection,
    stream: trio.abc.Stream,
    status: int,
    headers: Sequence[tuple[str, str]],
    body: bytes,
) -> None:
    """One whole response: its head, ``body`` unless empty, its end.

    The caller leaves ``body`` empty for HEAD and 204, and puts the headers
    it needs (Content-Length, Connection: close) in ``headers``.
    """
    events: list[h11.Event] = [
        h11.Response(
            status_code=status, headers=list(headers), reason=status_phrase(status).encode()
        )
    ]
    if body:
        events.append(h11.Data(data=body))
    events.append(h11.EndOfMessage())
    await send_events(conn, stream, *events)


def start_next_cycle(conn: h11.Connection) -> bool:
    """Ready ``conn`` for another request; False, and nothing done, when it must close.

    A connection is reused only when both sides finished the last request
    cleanly (an unread body or a ``Connection: close`` ends it).
    """
    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
        return False
    conn.start_next_cycle()
    return True
