"""A hostile HipChat server for tests: it answers each request with the next scripted misdeed.

Loopback TCP, raw HTTP/1.1 written by hand so that it can break every rule a
real server keeps: endless and huge bodies, absurd headers, resets in the
middle of the headers or the body, answers dripped a byte at a time. Once
the script is used up it behaves: ``204`` with sane rate-limit headers, and
the request counts as delivered.

Every behaviour is an async function of the connection that returns whether
the connection may carry another request. Sleeps are on trio's clock, so a
drip under ``autojump_clock`` costs no real time.
"""

from __future__ import annotations

import json
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import trio

from hipchatd.clock import unix_now

__all__ = [
    "Behaviour",
    "HostileHipChat",
    "answer",
    "drip_body",
    "drip_headers",
    "endless_body",
    "huge_body",
    "reset_mid_body",
    "reset_mid_headers",
]

Behaviour = Callable[[trio.SocketStream], Awaitable[bool]]

#: Bytes the server writes at a time.
CHUNK = 64 * 1024
#: Bytes after which an "endless" body ends after all.
ENDLESS_CAP = 256 * 1024 * 1024
#: Bytes of request headers read at most before the server gives up on a request.
MAX_REQUEST_HEAD = 64 * 1024

_REASONS = {200: "OK", 204: "No Content", 429: "Too Many Requests", 500: "Internal Server Error"}


def _head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Whatever')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _reset(stream: trio.SocketStream) -> None:
    # SO_LINGER 0: close() sends RST instead of FIN.
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


async def _send(stream: trio.SocketStream, data: bytes) -> bool:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


def answer(status: int, headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> Behaviour:
    """A complete, well-framed answer with whatever status and headers."""

    async def behave(stream: trio.SocketStream) -> bool:
        head = _head(status, [*headers, ("Content-Length", str(len(body)))])
        return await _send(stream, head + body)

    return behave


def endless_body(status: int = 500, written: list[int] | None = None) -> Behaviour:
    """A chunked body that does not end until the client goes away.

    To keep a client that reads it whole (under a mock clock no deadline
    stops it) from exhausting the machine, it does end after
    :data:`ENDLESS_CAP` bytes. The bytes written go to ``written``.
    """

    async def behave(stream: trio.SocketStream) -> bool:
        chunk = f"{CHUNK:x}\r\n".encode() + b"<p>" + b"x" * (CHUNK - 3) + b"\r\n"
        total = 0
        try:
            if not await _send(stream, _head(status, [("Transfer-Encoding", "chunked")])):
                return False
            while total < ENDLESS_CAP and await _send(stream, chunk):
                total += CHUNK
            return False
        finally:
            if written is not None:
                written.append(total)

    return behave


def huge_body(
    status: int = 503, size: int = 100 * 1024 * 1024, written: list[int] | None = None
) -> Behaviour:
    """An error page of ``size`` bytes (100 MiB by default), declared with Content-Length.

    The bytes of it written go to ``written``.
    """

    async def behave(stream: trio.SocketStream) -> bool:
        head = _head(status, [("Content-Type", "text/html"), ("Content-Length", str(size))])
        total = 0
        try:
            if not await _send(stream, head):
                return False
            piece = b"y" * CHUNK
            while total < size:
                if not await _send(stream, piece[: size - total]):
                    return False
                total += min(CHUNK, size - total)
            return True
        finally:
            if written is not None:
                written.append(total)

    return behave


def reset_mid_headers() -> Behaviour:
    """Half a header block, then a connection reset."""

    async def behave(stream: trio.SocketStream) -> bool:
        await _send(stream, b"HTTP/1.1 204 No Content\r\nX-Ratelimit-Lim")
        await _reset(stream)
        return False

    return behave


def reset_mid_body(status: int = 500) -> Behaviour:
    """Headers promising 1,000 bytes, ten of them, then a connection reset."""

    async def behave(stream: trio.SocketStream) -> bool:
        await _send(stream, _head(status, [("Content-Length", "1000")]) + b'{"error": ')
        await _reset(stream)
        return False

    return behave


def drip_headers(interval: float = 1.0) -> Behaviour:
    """A 204 whose status line and headers arrive a byte per ``interval`` seconds."""

    async def behave(stream: trio.SocketStream) -> bool:
        for byte in _head(204, [("Content-Length", "0")]):
            await trio.sleep(interval)
            if not await _send(stream, bytes([byte])):
                return False
        return True

    return behave


def drip_body(status: int = 500, interval: float = 1.0, size: int = 10_000) -> Behaviour:
    """Headers at once, then a body of ``size`` bytes at a byte per ``interval`` seconds."""

    async def behave(stream: trio.SocketStream) -> bool:
        if not await _send(stream, _head(status, [("Content-Length", str(size))])):
            return False
        for _ in range(size):
            await trio.sleep(interval)
            if not await _send(stream, b"z"):
                return False
        return True

    return behave


@dataclass
class Request:
    """One request as the server read it."""

    at: float
    target: str
    body: bytes
    #: header names (lower case) -> values, as sent
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class HostileHipChat:
    """The server. ``script`` is consumed one behaviour per request; then it behaves."""

    script: deque[Behaviour] = field(default_factory=deque)
    requests: list[Request] = field(default_factory=list)
    #: Bodies of the requests answered well (``204`` once the script is used up).
    delivered: list[dict[str, object]] = field(default_factory=list)
    url: str = ""
    delivered_event: trio.Event = field(default_factory=trio.Event)

    def then(self, *behaviours: Behaviour) -> None:
        self.script.extend(behaviours)

    async def serve(
        self,
        host: str = "127.0.0.1",
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host=host)
        port = listeners[0].socket.getsockname()[1]
        self.url = f"http://{host}:{port}"
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    async def wait_delivered(self, count: int) -> None:
        while len(self.delivered) < count:
            self.delivered_event = trio.Event()
            await self.delivered_event.wait()

    async def _connection(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        try:
            while True:
                request = await self._read_request(stream, buffer)
                if request is None:
                    return
                self.requests.append(request)
                behaviour = self.script.popleft() if self.script else self._behave
                if not await behaviour(stream):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()

    async def _behave(self, stream: trio.SocketStream) -> bool:
        body = self.requests[-1].body
        if body.startswith(b"{"):
            self.delivered.append(json.loads(body))
        else:  # v1's form body
            self.delivered.append(dict(parse_qsl(body.decode(), keep_blank_values=True)))
        self.delivered_event.set()
        now = int(unix_now())
        headers = [
            ("X-Ratelimit-Limit", "500"),
            ("X-Ratelimit-Remaining", "499"),
            ("X-Ratelimit-Reset", str(now + 300)),
        ]
        return await answer(204, headers)(stream)

    async def _read_request(self, stream: trio.SocketStream, buffer: bytearray) -> Request | None:
        while b"\r\n\r\n" not in buffer:
            if len(buffer) > MAX_REQUEST_HEAD:
                return None
            data = await stream.receive_some(CHUNK)
            if not data:
                return None
            buffer += data
        end = buffer.index(b"\r\n\r\n") + 4
        head = bytes(buffer[:end]).decode("latin-1")
        del buffer[:end]
        request_line, *header_lines = head.split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(buffer) < length:
            data = await stream.receive_some(CHUNK)
            if not data:
                return None
            buffer += data
        body = bytes(buffer[:length])
        del buffer[:length]
        target = request_line.split(" ")[1]
        return Request(at=trio.current_time(), target=target, body=body, headers=headers)
