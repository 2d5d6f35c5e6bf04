"""Metrics and health over HTTP: ``GET /metrics`` and ``GET /healthz`` (trio + h11).

A small HTTP/1.1 server for a Prometheus scraper and a load balancer or
monitoring probe, enabled by the ``hipchatd.metrics`` setting:

* ``GET /metrics``: the daemon's registry in the Prometheus text format.
* ``GET /healthz``: ``200 {"status": "ok"}``; ``200 {"status": "degraded",
  "reason": "..."}`` while working on a fallback (accepting into the local
  spool); or ``503 {"status": "unavailable", "reason": "..."}`` when the
  health callback says so.
* ``HEAD`` on both; anything else on them 405, any other path 404.

Connections are kept alive (Prometheus reuses one per target). Every request
is bounded (by the request loop of :mod:`hipchatd.http11`): headers to
:data:`MAX_HEADER_BYTES`, a body (GET needs none; it is read and discarded)
to :data:`MAX_BODY_BYTES`, a request to
:data:`REQUEST_READ_TIMEOUT` seconds from its first byte, an idle connection
to :data:`KEEPALIVE_IDLE_TIMEOUT`, and :data:`MAX_CONNECTIONS` at once.
Nothing here is authenticated: listen on loopback (the default) or behind
a firewall.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial

import structlog
import trio
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from hipchatd import __version__, boundary
from hipchatd.config import Listen
from hipchatd.http11 import Head, Limits, Request, Response, serve_connection, status_phrase
from hipchatd.metrics import Metrics

__all__ = [
    "DEGRADED",
    "KEEPALIVE_IDLE_TIMEOUT",
    "LIMITS",
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

#: ``() -> (healthy, reason)``; the reason is shown only when unhealthy, or when a healthy
#: reason starts with DEGRADED (working, on a fallback).
HealthCheck = Callable[[], tuple[bool, str]]

#: Starts the reason of a healthy daemon working on a fallback: ``{"status": "degraded"}``.
DEGRADED = "degraded: "

_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_ALLOWED = ("GET", "HEAD")

#: The request loop's bounds for this server (see the constants above).
LIMITS = Limits(
    MAX_HEADER_BYTES, MAX_BODY_BYTES, REQUEST_READ_TIMEOUT, KEEPALIVE_IDLE_TIMEOUT, RECEIVE_CHUNK
)


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
    loop: it must be quick and must not block; an exception from it is a bug,
    answered 500 and counted under ``where="http"``. Cancelling closes open
    connections at once.
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
    """The ops server's :class:`~hipchatd.http11.Handler`: one for all its connections."""

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
                await serve_connection(stream, self, LIMITS, server=f"hipchatd/{__version__}")
            finally:
                self._open -= 1

    def started(self, head: Head) -> None:
        """Nothing to do before the body: every request is answered the same way."""

    def refused(self, status: int, head: Head | None) -> Response:
        """A short text answer naming the refusal."""
        text = "request body too large" if status == 413 else status_phrase(status)
        return Response(status, f"{text}\n".encode(), _TEXT)

    async def respond(self, request: Request) -> Response:
        """The answer to one request, logged at DEBUG."""
        path = request.target.decode("ascii", "replace").partition("?")[0]
        response = self._answer(request.method, path)
        log.debug("http.request_served", method=request.method, path=path, status=response.status)
        return response

    def failed(self, request: Request) -> Response:
        """A bug while answering: reported at its fault boundary, answered 500."""
        boundary.caught(self._metrics, "http", method=request.method)
        return Response(500, b"internal error\n", _TEXT)

    def _answer(self, method: str, path: str) -> Response:
        if path not in ("/metrics", "/healthz"):
            return Response(404, b"not found\n", _TEXT)
        if method not in _ALLOWED:
            allow = [("Allow", ", ".join(_ALLOWED))]
            return Response(405, b"method not allowed\n", _TEXT, allow)
        if path == "/metrics":
            return Response(
                200,
                generate_latest(self._metrics.registry),
                CONTENT_TYPE_LATEST,
                [("Cache-Control", "no-store")],
            )
        healthy, reason = self._health()
        document: dict[str, str] = (
            {"status": "ok"} if healthy else {"status": "unavailable", "reason": reason}
        )
        if healthy and reason.startswith(DEGRADED):
            document = {"status": "degraded", "reason": reason.removeprefix(DEGRADED)}
        return Response(
            200 if healthy else 503,
            json.dumps(document).encode() + b"\n",
            _JSON,
            [("Cache-Control", "no-store")],
        )
