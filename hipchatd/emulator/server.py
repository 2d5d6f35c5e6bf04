"""The emulator as a server: :class:`Emulator` (state, controls, lifecycle) and its connections.

Plain HTTP, or HTTPS with ``serve(ssl_context=...)``. Each connection is
served by the request loop of :mod:`hipchatd.http11`, with this module's
limits; its handler sends ``/_emulator/`` requests to the control endpoints
and the rest, after any injected latency, to the API.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterable
from typing import Any

import structlog
import trio

from hipchatd import __version__
from hipchatd.emulator import api
from hipchatd.emulator.faults import Connection, socket_of
from hipchatd.emulator.limits import Call, Limiter
from hipchatd.emulator.records import ReceivedMessage
from hipchatd.emulator.rooms import Rooms
from hipchatd.emulator.site import Site
from hipchatd.emulator.validation import Rules
from hipchatd.emulator.wire import ApiError, error_response, split_target
from hipchatd.http11 import Head, Limits, Request, Response, serve_connection, status_phrase

log = structlog.get_logger()

#: Request bodies above this get 413; a Sensu event message is a few KiB.
MAX_BODY_BYTES = 1024 * 1024
#: Request line plus headers; h11 answers 431 above this.
MAX_HEADER_BYTES = 64 * 1024
#: Seconds a request may take to arrive once its first byte is in (slowloris guard),
#: and a TLS client to finish its handshake.
REQUEST_READ_TIMEOUT = 10.0
#: Seconds an idle keep-alive connection is kept open. Longer than the 60 s and
#: 300 s limit windows, so a client on trio's MockClock that sleeps exactly one
#: window never races the server closing its pooled connection.
KEEPALIVE_IDLE_TIMEOUT = 900.0
#: Bytes read per receive.
RECEIVE_CHUNK = 65536
#: The port ``hipchatd emulator`` listens on unless told otherwise.
DEFAULT_PORT = 8780

#: The request loop's bounds for the emulator (see the constants above).
LIMITS = Limits(
    MAX_HEADER_BYTES, MAX_BODY_BYTES, REQUEST_READ_TIMEOUT, KEEPALIVE_IDLE_TIMEOUT, RECEIVE_CHUNK
)
_SERVER = f"hipchatd-emulator/{__version__}"


class Emulator(Site):
    """A HipChat API server holding rooms, recorded messages and fault switches.

    Run it with ``await nursery.start(emulator.serve)``; it serves until
    cancelled. All state lives in this object: tests read ``messages`` and
    ``requests`` directly, out-of-process users read ``/_emulator/*``.
    ``latency`` and ``room_latency`` may be set at any time.
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
        limits = Limiter(
            rate_limit=rate_limit,
            rate_window=rate_window,
            flood_limit=flood_limit,
            flood_window=flood_window,
            float_reset=float_reset,
        )
        super().__init__(
            tokens=tokens,
            rules=Rules(strict_from_25, lenient_notify, parse_form_v2),
            rooms=Rooms(rooms, auto_create=auto_create_rooms, echo=echo),
            limits=limits,
        )
        self._serving = False

    @property
    def messages(self) -> list[ReceivedMessage]:
        """Every accepted message, oldest first."""
        return self.rooms.messages

    @property
    def auto_create_rooms(self) -> bool:
        """Whether an unknown room is created on first use."""
        return self.rooms.auto_create

    @auto_create_rooms.setter
    def auto_create_rooms(self, value: bool) -> None:
        self.rooms.auto_create = value

    @property
    def rate_limit(self) -> int:
        """Requests per token per rate window."""
        return self.limits.rate_limit

    @property
    def down(self) -> bool:
        """Whether API requests are being refused (:meth:`set_down`, ``down_for``)."""
        return self.faults.down

    # --- controls ---

    def add_room(self, name: str) -> int:
        """Create a room and return its id (1, 2, ...); an existing name returns its id."""
        return self.rooms.add(name)

    async def wait_for_messages(self, count: int) -> None:
        """Return once at least ``count`` messages were accepted; wakes on arrival, no polling.

        Takes no timeout: wrap it in ``trio.fail_after``.
        """
        await self.rooms.wait_for(count)

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` API requests with ``status`` in the v1/v2 error shape.

        Replaces any pending count. The requests are not authenticated, not
        rate counted and deliver nothing.
        """
        self.faults.fail_next(count, status)

    def set_limits(self, *, rate_limit: int | None = None, flood_limit: int | None = None) -> None:
        """Change the per-token and per-recipient limits; counts so far are kept."""
        self.limits.set_limits(rate_limit=rate_limit, flood_limit=flood_limit)

    def count_status(self, status: int) -> int:
        """How many recorded requests were answered with ``status``."""
        return sum(1 for record in self.requests if record.status == status)

    def reset(self) -> None:
        """Clear messages, requests, rate and flood counters and faults; rooms stay.

        An outage (:meth:`set_down`, ``down_for``) is a fault too: it ends.
        """
        super().reset()

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
        self.faults.set_down(down)

    # --- lifecycle ---

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
        from :func:`~hipchatd.emulator.tls.throwaway_tls`) it speaks HTTPS
        only, and every URL it hands out (``self.url``, ``links.self``) is
        ``https://``. Reports ``self.url`` through ``task_status.started``
        once the socket listens. Raises OSError if it cannot bind.
        """
        if self._serving:
            raise RuntimeError("this Emulator is already serving")
        sockets = await trio.open_tcp_listeners(port, host=host)
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(sockets)
        self.scheme = "http"
        if ssl_context is not None:
            self.scheme = "https"
            # https_compatible: HTTPS clients close without close_notify (RFC 2818 §2.2.2).
            listeners = [
                trio.SSLListener(sock, ssl_context, https_compatible=True) for sock in sockets
            ]
        first = sockets[0].socket
        self.url = _base_url(self.scheme, first.family, first.getsockname())
        self.baseline = (self.limits.rate_limit, self.limits.flood_limit, self.latency)
        self.rooms.open()
        self._serving = True
        try:
            async with trio.open_nursery() as nursery:
                self.faults.attach(nursery, self.url)
                await nursery.start(trio.serve_listeners, self._handle_connection, listeners)
                task_status.started(self.url)
        finally:
            self._serving = False
            self.faults.attach(None)

    async def _handle_connection(self, stream: trio.abc.Stream) -> None:
        connection = Connection(socket_of(stream))
        self.faults.connections.add(connection)
        try:
            if isinstance(stream, trio.SSLStream):
                with trio.move_on_after(REQUEST_READ_TIMEOUT):
                    await stream.do_handshake()
                    connection.handshaken = True
                if not connection.handshaken:
                    return  # a slow or silent TLS client: close without an answer
            handler = _ConnectionHandler(self, connection)
            await serve_connection(stream, handler, LIMITS, server=_SERVER)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client failed the TLS handshake or went away during it
        finally:
            self.faults.connections.discard(connection)
            await trio.aclose_forcefully(stream)


class _ConnectionHandler:
    """The emulator's :class:`~hipchatd.http11.Handler` for one connection.

    While down, an API request is read whole before its connection is reset,
    so the client, done writing, sees the reset as it waits for the answer
    (ECONNRESET), whatever its write pattern.
    """

    def __init__(self, site: Site, connection: Connection) -> None:
        self._site = site
        self._connection = connection

    def started(self, head: Head) -> None:
        """Mark a control request, which going down leaves alone."""
        self._connection.control = split_target(head.target).control

    def refused(self, status: int, head: Head | None) -> Response | None:
        """413 or a malformed request, in the v2 shape (413 in v1's under ``/v1/``)."""
        site = self._site
        target = split_target(head.target) if head is not None else None
        if site.faults.down and (target is None or not target.control):
            self._connection.drop()
            return None
        if head is None or target is None:
            # A raw space in a room name failed with 400 on HipChat too (docs/hipchat-api.md §5).
            response = error_response("v2", ApiError(status, status_phrase(status)))
            site.limits.decorate(Call("v2"), response)
            return response
        call = Call(target.api)
        response = error_response(
            call.api, ApiError(status, f"Request body is over {MAX_BODY_BYTES // 1024 // 1024} MiB")
        )
        if not target.control:
            site.limits.decorate(call, response)
            site.record(head.method, target.path, response.status, None)
        return response

    async def respond(self, request: Request) -> Response | None:
        """Answer, or reset the connection (None) when down."""
        response = await self._answer(request)
        self._connection.control = False
        if response is None:
            self._connection.drop()
        return response

    def failed(self, request: Request) -> Response:
        """A bug in the emulator: logged with its traceback, answered 500 in the v2 shape."""
        log.error("emulator.request_failed", method=request.method, exc_info=True)
        return error_response("v2", ApiError(500, "Internal Server Error"))

    async def _answer(self, request: Request) -> Response | None:
        site = self._site
        target = split_target(request.target)
        if target.control:
            return api.answer_control(site, request, target)
        if site.faults.down:
            return None
        site.arrived += 1
        delay = site.latency + api.room_delay(site, request, target)
        if delay > 0:
            await trio.sleep(delay)
        if site.faults.down or self._connection.dropped:
            # Down (or down and back) while this request waited: it dies unanswered and
            # undelivered, so a client never sees an error for a message that arrived.
            return None
        return api.answer_api(site, request, target)


def _base_url(scheme: str, family: int, address: Any) -> str:
    host, port = address[0], address[1]
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if family == socket.AF_INET6:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"
