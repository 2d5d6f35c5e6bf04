"""Metrics and health over HTTP: ``GET /metrics`` and ``GET /healthz`` (trio + h11).

A small HTTP/1.1 server for a Prometheus scraper and a load balancer or
monitoring probe, enabled by the ``hipchatd.metrics`` setting:

* ``GET /metrics``: the daemon's registry in the Prometheus text format.
* ``GET /healthz``: ``200 {"status": "ok"}``, or ``503 {"status":
  "unavailable", "reason": "..."}`` when the health callback says so.
* ``HEAD`` on both; anything else on them 405, any other path 404.

Connections are kept alive (Prometheus reuses one per target). Every request
is bounded: headers to :data:`MAX_HEADER_BYTES`, a body (GET needs none; it
is read and discarded) to :data:`MAX_BODY_BYTES`, a request to
:data:`REQUEST_READ_TIMEOUT` seconds from its first byte, an idle connection
to :data:`KEEPALIVE_IDLE_TIMEOUT`, and :data:`MAX_CONNECTIONS` at once.
Nothing here is authenticated: listen on loopback (the default) or behind
a firewall.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import h11
import structlog
import trio
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from hipchatd import __version__
from hipchatd.config import Listen
from hipchatd.http11 import (
    RequestReader,
    rejection_status,
    send_response,
    start_next_cycle,
    status_phrase,
)
from hipchatd.metrics import Metrics

__all__ = [
    "KEEPALIVE_IDLE_TIMEOUT",
    "MAX_BODY_BYTES",
    "MAX_CONNECTIONS",
    "MAX_HEADER_BYTES",
    "REQUEST_READ_TIMEOUT",
    "HealthCheck",
    "open_http_listeners",
    "serve_http",
]

log = structlog.get_logger()

#: Request line plus headers; h11 answers 431 above this. A scraper sends < 1 KiB.
MAX_HEADER_BYTES = 16 * 1024
#: A request body is never needed; one up to this size is read and discarded, 413 above.
MAX_BODY_BYTES = 64 * 1024
#: Seconds a request may take to arrive once its first byte is in (slowloris guard).
REQUEST_READ_TIMEOUT = 10.0
#: Seconds an idle keep-alive connection is kept: above Prometheus' default 60 s
#: scrape interval, so a scraper's pooled connection is reused, not raced.
KEEPALIVE_IDLE_TIMEOUT = 120.0
#: Connections served at once; more are closed unanswered. Scrapers and probes are few.
MAX_CONNECTIONS = 64
#: Bytes read per receive.
RECEIVE_CHUNK = 16 * 1024

#: ``() -> (healthy, reason)``; the reason is shown only when unhealthy.
HealthCheck = Callable[[], tuple[bool, str]]

_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_ALLOWED = ("GET", "HEAD")


@dataclass(slots=True)
class _Response:
    status: int
    body: bytes = b""
    content_type: str = _TEXT
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str


async def open_http_listeners(listen: Listen) -> list[trio.SocketListener]:
    """Bind ``listen`` (every address its host resolves to) for :func:`serve_http`.

    Raises OSError when the address cannot be bound (in use, not local).
    """
    return await trio.open_tcp_listeners(listen.port, host=listen.host)


async def serve_http(
    listeners: Sequence[trio.SocketListener],
    metrics: Metrics,
    health: HealthCheck,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` and ``/healthz`` on ``listeners`` until cancelled.

    Takes ownership of the listeners and closes them when cancelled.
    ``task_status.started`` reports the ``host:port`` addresses once they
    accept. ``health`` is called once per ``/healthz`` request, on the event
    loop: it must be quick and must not block; an exception from it is a bug
    and propagates. Cancelling closes open connections at once.
    """
    server = _Server(metrics, health)
    addresses = [_address(listener) for listener in listeners]
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(trio.serve_listeners, server.handle, list(listeners)))
        log.info("http.started", addresses=addresses)
        task_status.started(addresses)


def _address(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Server:
    def __init__(self, metrics: Metrics, health: HealthCheck) -> None:
        self._metrics = metrics
        self._health = health
        self._open = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self._open >= MAX_CONNECTIONS:
                log.warning("http.connection_refused", reason="too many connections")
                return
            self._open += 1
            try:
                await self._serve_connection(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the client went away
            finally:
                self._open -= 1

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        while True:
            request = await _read_request(conn, stream)
            if request is None:
                return
            if isinstance(request, _Response):
                await _send(conn, stream, request, head=False)
                return
            response = self._respond(request)
            await _send(conn, stream, response, head=request.method == "HEAD")
            log.debug(
                "http.request_served",
                method=request.method,
                path=request.path,
                status=response.status,
            )
            if not start_next_cycle(conn):
                return

    def _respond(self, request: _Request) -> _Response:
        if request.path not in ("/metrics", "/healthz"):
            return _Response(404, b"not found\n")
        if request.method not in _ALLOWED:
            return _Response(405, b"method not allowed\n", headers=[("Allow", ", ".join(_ALLOWED))])
        if request.path == "/metrics":
            return _Response(
                200,
                generate_latest(self._metrics.registry),
                content_type=CONTENT_TYPE_LATEST,
                headers=[("Cache-Control", "no-store")],
            )
        healthy, reason = self._health()
        document: dict[str, str] = (
            {"status": "ok"} if healthy else {"status": "unavailable", "reason": reason}
        )
        return _Response(
            200 if healthy else 503,
            json.dumps(document).encode() + b"\n",
            content_type=_JSON,
            headers=[("Cache-Control", "no-store")],
        )


async def _read_request(
    conn: h11.Connection, stream: trio.SocketStream
) -> _Request | _Response | None:
    """One request; a _Response means answer it and close, None means just close."""
    started: h11.Request | None = None
    body_bytes = 0
    with trio.move_on_after(KEEPALIVE_IDLE_TIMEOUT) as scope:
        reader = RequestReader(
            conn, stream, scope, read_timeout=REQUEST_READ_TIMEOUT, chunk=RECEIVE_CHUNK
        )
        while True:
            try:
                event = await reader.next_event()
            except h11.RemoteProtocolError as exc:
                return _protocol_error(conn, exc)
            if isinstance(event, h11.Request):
                started = event
            elif isinstance(event, h11.Data):
                body_bytes += len(event.data)
                if body_bytes > MAX_BODY_BYTES:
                    return _Response(413, b"request body too large\n", close=True)
            elif isinstance(event, h11.EndOfMessage):
                assert started is not None
                method = started.method.decode("ascii", "replace")
                target = started.target.decode("ascii", "replace")
                return _Request(method, target.partition("?")[0])
            else:  # ConnectionClosed
                return None
    log.debug("http.connection_closed", reason="request too slow" if reader.started else "idle")
    return None


def _protocol_error(conn: h11.Connection, exc: h11.RemoteProtocolError) -> _Response | None:
    status = rejection_status(conn, exc)
    if status is None:
        return None
    return _Response(status, f"{status_phrase(status)}\n".encode(), close=True)


async def _send(
    conn: h11.Connection, stream: trio.SocketStream, response: _Response, *, head: bool
) -> None:
    headers = [
        ("Server", f"hipchatd/{__version__}"),
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        *response.headers,
    ]
    if response.close:
        headers.append(("Connection", "close"))
    await send_response(conn, stream, response.status, headers, b"" if head else response.body)
