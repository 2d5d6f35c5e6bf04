"""A small HTTP CONNECT proxy for tests: trio, loopback only, every byte it carries kept.

It reads one request head per connection. ``CONNECT host:port`` opens a TCP
connection to ``host:port``, answers ``200 Connection established`` and then
relays bytes both ways until either side closes; any other request is
answered ``501``. Before that it can refuse: ``refuse_next`` requests get
``refusal`` (a 407 carries ``Proxy-Authenticate``), and with ``credentials``
a request without the matching ``Proxy-Authorization: Basic`` gets 407.
With ``ssl_context`` it is an https:// proxy (TLS from the client to it).

What a proxy's operator could log is in ``heads`` (each request head as
received) and ``seen`` (every byte in either direction, heads included).
"""

from __future__ import annotations

import base64
import contextlib
import ssl
from dataclasses import dataclass, field
from http import HTTPStatus

import trio

__all__ = ["ConnectProxy", "closed_port"]

#: Bytes a request head may take before the connection is dropped.
MAX_HEAD_BYTES = 16 * 1024
#: Bytes read at once while relaying.
CHUNK = 64 * 1024


@dataclass(eq=False)
class ConnectProxy:
    """A CONNECT proxy on 127.0.0.1; ``await nursery.start(proxy.serve)`` returns its URL."""

    #: (user, password) a request must present; None: no authentication.
    credentials: tuple[str, str] | None = None
    #: requests still to refuse with ``refusal``, whatever they carry.
    refuse_next: int = 0
    refusal: HTTPStatus = HTTPStatus.PROXY_AUTHENTICATION_REQUIRED
    #: a server context with the proxy's certificate: an https:// proxy.
    ssl_context: ssl.SSLContext | None = None
    heads: list[bytes] = field(default_factory=list)
    seen: bytearray = field(default_factory=bytearray)
    #: tunnels opened (CONNECT answered 200).
    tunnels: int = 0
    port: int = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def request_lines(self) -> list[str]:
        """The first line of every request head, e.g. ``CONNECT localhost:8443 HTTP/1.1``."""
        return [head.split(b"\r\n", 1)[0].decode("latin-1") for head in self.heads]

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started(url)`` once listening."""
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
        for listener in await trio.open_tcp_listeners(0, host="127.0.0.1"):
            self.port = listener.socket.getsockname()[1]
            if self.ssl_context is None:
                listeners.append(listener)
            else:
                listeners.append(trio.SSLListener(listener, self.ssl_context))
        task_status.started(self.url)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.abc.Stream) -> None:
        # A client that went away, or failed the TLS handshake with us, is no error here.
        gone = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError)
        async with client:
            with contextlib.suppress(*gone):
                await self._proxy(client)

    async def _proxy(self, client: trio.abc.Stream) -> None:
        head, rest = await self._read_head(client)
        if head is None:
            return
        self.heads.append(head)
        method, _, target = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        target = target.rpartition(" ")[0]
        if self.refuse_next > 0:
            self.refuse_next -= 1
            await self._answer(client, self.refusal)
            return
        if self.credentials is not None and _authorization(head) != _basic(*self.credentials):
            await self._answer(client, HTTPStatus.PROXY_AUTHENTICATION_REQUIRED)
            return
        if method != "CONNECT":
            await self._answer(client, HTTPStatus.NOT_IMPLEMENTED)
            return
        host, _, port = target.rpartition(":")
        upstream = await trio.open_tcp_stream(host.strip("[]"), int(port))
        async with upstream:
            await self._send(client, b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.tunnels += 1
            if rest:
                await self._send(upstream, rest)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._relay, client, upstream, nursery.cancel_scope)
                nursery.start_soon(self._relay, upstream, client, nursery.cancel_scope)

    async def _read_head(self, client: trio.abc.Stream) -> tuple[bytes | None, bytes]:
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer:
            if len(buffer) > MAX_HEAD_BYTES:
                return None, b""
            data = await client.receive_some(CHUNK)
            if not data:
                return None, b""
            self.seen += data
            buffer += data
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        return head + b"\r\n\r\n", rest

    async def _answer(self, client: trio.abc.Stream, status: HTTPStatus) -> None:
        extra = b""
        if status is HTTPStatus.PROXY_AUTHENTICATION_REQUIRED:
            extra = b'Proxy-Authenticate: Basic realm="test"\r\n'
        line = f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode()
        await self._send(client, line + extra + b"Content-Length: 0\r\nConnection: close\r\n\r\n")

    async def _send(self, stream: trio.abc.Stream, data: bytes) -> None:
        self.seen += data
        await stream.send_all(data)

    async def _relay(
        self, source: trio.abc.Stream, sink: trio.abc.Stream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some(CHUNK):
                await self._send(sink, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            scope.cancel()  # one side done: the tunnel is


def _authorization(head: bytes) -> str | None:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "proxy-authorization":
            return value.strip()
    return None


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


async def closed_port() -> int:
    """A loopback port nothing listens on: a connection to it is refused."""
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
