"""Injected faults: failed answers, an outage (``down_for``), and the connections it resets.

An outage is what a client of a dead server sees: every open API connection
is reset (RST, not FIN), and each new API request is read and its connection
reset, unanswered and undelivered. The ``/_emulator/*`` control endpoints
stay up on the same address, so an outage can be watched and ended early.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
import trio

from hipchatd.emulator.validation import Reject, count, number, type_error
from hipchatd.emulator.wire import ApiError, Json
from hipchatd.http11 import status_phrase

log = structlog.get_logger()

#: What ``POST /_emulator/faults`` accepts.
FAULT_KEYS = ("latency", "fail_next", "down_for", "up", "rate_limit", "flood_limit")
#: SO_LINGER on, 0 s: close() sends RST, not FIN, as when a server dies with a request unread.
_LINGER_ZERO = struct.pack("ii", 1, 0)


@dataclass(eq=False, slots=True)
class Connection:
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


def socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType:
    """The TCP socket under ``stream`` (plain or TLS)."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    assert isinstance(stream, trio.SocketStream)
    return stream.socket


@dataclass(frozen=True, slots=True)
class FaultChange:
    """A validated ``POST /_emulator/faults`` body; None leaves a setting as it is."""

    latency: float | None = None
    #: (count, status) for fail_next
    fail: tuple[int, int] | None = None
    rate_limit: int | None = None
    flood_limit: int | None = None
    down_for: float | None = None
    up: bool = False


def parse_faults(body: Mapping[str, Json]) -> FaultChange:
    """Check a whole faults body; raise Reject (400) at its first fault, changing nothing."""
    unknown = set(body) - set(FAULT_KEYS)
    if unknown:
        raise Reject(ApiError(400, f"Unknown fault keys: {sorted(unknown)}"))
    latency = number(body, "latency")
    down_for = number(body, "down_for")
    rate_limit = count(body, "rate_limit")
    flood_limit = count(body, "flood_limit")
    up = body.get("up", False)
    if not isinstance(up, bool):
        raise type_error("up", up, "boolean")
    if up and down_for:
        raise Reject(ApiError(400, "Give either down_for or up, not both"))
    fail: tuple[int, int] | None = None
    if "fail_next" in body:
        spec = body["fail_next"]
        if not isinstance(spec, dict):
            raise type_error("fail_next", spec, "object")
        times, status = count(spec, "count"), count(spec, "status")
        fail = (times if times is not None else 1, status if status is not None else 503)
        if not 400 <= fail[1] <= 599:
            raise Reject(ApiError(400, "fail_next.status must be 400-599"))
    return FaultChange(latency, fail, rate_limit, flood_limit, down_for, up)


class Faults:
    """The fault switches, and the open connections an outage resets."""

    def __init__(self) -> None:
        self.connections: set[Connection] = set()
        self._fail_count = 0
        self._fail_status = 503
        self._down = False
        #: the pending return of a ``down_for`` outage
        self._up_timer: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._url = ""

    @property
    def down(self) -> bool:
        """Whether API requests are being refused."""
        return self._down

    @property
    def pending_failure(self) -> tuple[int, int]:
        """How many API requests will still fail, and with which status."""
        return self._fail_count, self._fail_status

    def attach(self, nursery: trio.Nursery | None, url: str = "") -> None:
        """Serving started in ``nursery`` at ``url``, or (None) stopped: an outage ends."""
        self._nursery, self._url = nursery, url
        if nursery is None:
            self.come_up()

    def fail_next(self, times: int, status: int = 503) -> None:
        """Answer the next ``times`` API requests with ``status``; replaces any pending count."""
        if times < 0 or not 400 <= status <= 599:
            raise ValueError("fail_next needs count >= 0 and a 4xx/5xx status")
        self._fail_count, self._fail_status = times, status

    def take_failure(self) -> ApiError | None:
        """The injected error for this request, if one is pending (and count it)."""
        if self._fail_count <= 0:
            return None
        self._fail_count -= 1
        return ApiError(self._fail_status, status_phrase(self._fail_status))

    def clear(self) -> None:
        """End the injected failures and an outage."""
        self._fail_count, self._fail_status = 0, 503
        self.come_up()

    def set_down(self, down: bool) -> None:
        """Go down (reset every open connection not serving a control request), or up.

        Going up cancels a pending ``down_for`` return. Raises RuntimeError
        when not serving.
        """
        if self._nursery is None:
            raise RuntimeError("set_down() needs a running serve()")
        if not down:
            if self._down:
                self.come_up()
                log.info("emulator.up", url=self._url)
            return
        if self._down:
            return
        self._down = True
        for connection in list(self.connections):
            if not connection.control:
                connection.drop()
        log.info("emulator.down", url=self._url)

    def go_down_for(self, seconds: float) -> None:
        """Go down now and come back up after ``seconds``; the newest call decides when."""
        assert self._nursery is not None  # only called while serving a request
        self.set_down(True)
        if self._up_timer is not None:
            self._up_timer.cancel()
        self._up_timer = trio.CancelScope()
        self._nursery.start_soon(self._come_back_after, self._up_timer, seconds)

    def come_up(self) -> None:
        """Serve again, silently; a pending ``down_for`` return is cancelled."""
        self._down = False
        if self._up_timer is not None:
            self._up_timer.cancel()
            self._up_timer = None

    async def _come_back_after(self, timer: trio.CancelScope, seconds: float) -> None:
        with timer:
            await trio.sleep(seconds)
            self._up_timer = None
            self.set_down(False)
