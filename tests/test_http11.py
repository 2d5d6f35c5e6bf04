"""The one HTTP/1.1 request loop, on memory streams: what every server built on it gets.

Each limit is checked with both servers' own :class:`Limits` (the ops server's
and the emulator's), so neither loses a bound it had when the loop was its own.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h11
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from hipchatd.emulator import server as emulator_server
from hipchatd.http11 import Head, Limits, Request, Response, serve_connection
from hipchatd.ops import http as ops_http

TOKEN = "loop-test-token-5e4d3c2b1a"

SERVERS = pytest.mark.parametrize(
    "limits", [ops_http.LIMITS, emulator_server.LIMITS], ids=["ops", "emulator"]
)


@dataclass
class Recorder:
    """A handler that answers 200 with the request's body and records what it saw."""

    heads: list[Head] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    refusals: list[tuple[int, Head | None]] = field(default_factory=list)
    #: what respond() answers instead of the echo
    answer: Response | None = None
    #: respond() answers None: the connection ends unanswered
    unanswered: bool = False
    #: whether refused() answers (else it sends nothing)
    answer_refusals: bool = True
    #: respond() raises, as a bug would
    broken: bool = False
    #: started() raises, as a bug would
    broken_start: bool = False
    #: the requests failed() was asked to answer, with the exception being handled
    failures: list[tuple[Request, BaseException | None]] = field(default_factory=list)

    def started(self, head: Head) -> None:
        self.heads.append(head)
        if self.broken_start:
            raise RuntimeError("a bug before the body")

    def refused(self, status: int, head: Head | None) -> Response | None:
        self.refusals.append((status, head))
        return Response(status, b"refused\n", "text/plain") if self.answer_refusals else None

    async def respond(self, request: Request) -> Response | None:
        self.requests.append(request)
        if self.broken:
            raise RuntimeError("a bug in the handler")
        if self.unanswered:
            return None
        if self.answer is not None:
            return self.answer
        return Response(200, b"echo:" + request.body, "text/plain")

    def failed(self, request: Request) -> Response:
        self.failures.append((request, sys.exc_info()[1]))
        return Response(500, b"failed\n", "text/plain")


@dataclass
class Loop:
    """The client end of a memory stream served by :func:`serve_connection`."""

    stream: trio.StapledStream[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]
    #: set once serve_connection returned
    done: trio.Event
    conn: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))

    async def request(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        fields = [("Host", "x"), *(headers or [])]
        if body or method == "POST":
            fields.append(("Content-Length", str(len(body))))
        events: list[h11.Event] = [h11.Request(method=method, target=target, headers=fields)]
        if body:
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        await self.stream.send_all(b"".join(self.conn.send(e) or b"" for e in events))

    async def response(self) -> tuple[h11.Response, bytes]:
        head: h11.Response | None = None
        body = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return head, body
            elif not isinstance(event, h11.InformationalResponse):
                raise AssertionError(f"unexpected {event!r}")

    async def rest(self) -> bytes:
        """Everything the server still sends, up to its end of the stream."""
        received = b""
        while chunk := await self.stream.receive_some(65536):
            received += chunk
        return received


@asynccontextmanager
async def serving(handler: Recorder, limits: Limits) -> AsyncIterator[Loop]:
    client, server = trio.testing.memory_stream_pair()
    done = trio.Event()

    async def serve() -> None:
        async with server:
            await serve_connection(server, handler, limits, server="loop-test")
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        yield Loop(client, done)
        nursery.cancel_scope.cancel()


def _header(response: h11.Response, name: bytes) -> bytes | None:
    return dict(response.headers).get(name)


async def test_requests_on_one_connection_reach_the_handler_whole() -> None:
    """Keep-alive: each request arrives whole, header names lowercase, the first value wins."""
    handler = Recorder()
    with trio.fail_after(10):
        async with serving(handler, ops_http.LIMITS) as loop:
            for n in range(2):
                headers = [("X-Dup", "first"), ("X-Dup", "second")]
                await loop.request("POST", f"/p{n}?q=1", f"body{n}".encode(), headers)
                response, body = await loop.response()
                assert (response.status_code, body) == (200, f"echo:body{n}".encode())
                assert _header(response, b"server") == b"loop-test"
                assert _header(response, b"content-type") == b"text/plain"
                loop.conn.start_next_cycle()
    assert [(r.method, r.target, r.body) for r in handler.requests] == [
        ("POST", b"/p0?q=1", b"body0"),
        ("POST", b"/p1?q=1", b"body1"),
    ]
    assert handler.requests[0].headers["x-dup"] == "first"
    assert [(h.method, h.target) for h in handler.heads] == [
        ("POST", b"/p0?q=1"),
        ("POST", b"/p1?q=1"),
    ]


async def test_head_and_204_frame_no_body() -> None:
    handler = Recorder()
    with trio.fail_after(10):
        async with serving(handler, ops_http.LIMITS) as loop:
            await loop.request("HEAD", "/")
            head, body = await loop.response()
            loop.conn.start_next_cycle()
            handler.answer = Response(204, b"ignored", "text/plain")
            await loop.request("GET", "/")
            empty, no_body = await loop.response()
    assert (head.status_code, body) == (200, b"")
    assert _header(head, b"content-length") == str(len(b"echo:")).encode()
    assert (empty.status_code, no_body) == (204, b"")
    assert _header(empty, b"content-length") is None


async def test_connection_close_ends_the_connection_after_the_answer() -> None:
    handler = Recorder()
    with trio.fail_after(10):
        async with serving(handler, ops_http.LIMITS) as loop:
            await loop.request("GET", "/", headers=[("Connection", "close")])
            response, _ = await loop.response()
            assert response.status_code == 200
            assert await loop.rest() == b""
            await loop.done.wait()


async def test_a_handler_that_answers_none_ends_the_connection_unanswered() -> None:
    handler = Recorder(unanswered=True)
    with trio.fail_after(10):
        async with serving(handler, ops_http.LIMITS) as loop:
            await loop.request("GET", "/")
            assert await loop.rest() == b""
            await loop.done.wait()


@SERVERS
async def test_headers_over_the_limit_are_refused_431(limits: Limits) -> None:
    handler = Recorder()
    big = b"X-Big: " + b"a" * limits.max_header_bytes + b"\r\n"
    with trio.fail_after(10):
        async with serving(handler, limits) as loop:
            await loop.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n" + big)
            reply = await loop.rest()
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert b"connection: close" in reply.lower()
    assert handler.refusals == [(431, None)]
    assert handler.requests == []


@SERVERS
async def test_headers_within_the_limit_are_served(limits: Limits) -> None:
    handler = Recorder()
    value = "a" * (limits.max_header_bytes - 100)
    with trio.fail_after(10):
        async with serving(handler, limits) as loop:
            await loop.request("GET", "/", headers=[("X-Big", value)])
            response, _ = await loop.response()
    assert response.status_code == 200


@SERVERS
@pytest.mark.parametrize("framing", ["declared", "chunked"])
async def test_a_body_over_the_limit_is_refused_413_and_closed(
    limits: Limits, framing: str
) -> None:
    """Declared: refused before a byte of it is read; chunked: once it passes the limit."""
    handler = Recorder()
    size = limits.max_body_bytes + 1
    if framing == "declared":
        fields, data = [("Content-Length", str(size))], []
    else:
        fields, data = [("Transfer-Encoding", "chunked")], [h11.Data(data=b"a" * size)]
    with trio.fail_after(10):
        async with serving(handler, limits) as loop:
            request = h11.Request(method="POST", target="/big", headers=[("Host", "x"), *fields])
            await loop.stream.send_all(b"".join(loop.conn.send(e) or b"" for e in [request, *data]))
            response, _ = await loop.response()
            assert await loop.rest() == b""
    assert response.status_code == 413
    assert _header(response, b"connection") == b"close"
    refusals = [(status, head and (head.method, head.target)) for status, head in handler.refusals]
    assert refusals == [(413, ("POST", b"/big"))]
    assert handler.requests == []


@SERVERS
async def test_a_body_at_the_limit_is_served(limits: Limits) -> None:
    handler = Recorder()
    body = b"b" * limits.max_body_bytes
    with trio.fail_after(10):
        async with serving(handler, limits) as loop:
            await loop.request("POST", "/", body)
            response, echoed = await loop.response()
    assert response.status_code == 200
    assert echoed == b"echo:" + body


async def test_a_refusal_half_closes_and_reads_what_the_client_still_sends() -> None:
    """The refused client's late bytes are read, not left to turn the close into a reset."""
    handler = Recorder()
    limits = ops_http.LIMITS
    with trio.fail_after(10):
        async with serving(handler, limits) as loop:
            headers = [("Host", "x"), ("Content-Length", str(limits.max_body_bytes + 1))]
            request = h11.Request(method="POST", target="/", headers=headers)
            await loop.stream.send_all(loop.conn.send(request) or b"")
            response, _ = await loop.response()
            assert await loop.rest() == b""  # the server's half is closed
            assert not loop.done.is_set()
            await loop.stream.send_all(b"a" * limits.max_body_bytes)  # still read
            await loop.stream.send_eof()
            await loop.done.wait()
    assert response.status_code == 413


@SERVERS
async def test_an_idle_connection_closes_after_the_idle_timeout(
    limits: Limits, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(limits.idle_timeout + 10):
        async with serving(Recorder(), limits) as loop:
            start = trio.current_time()
            await loop.done.wait()
    assert trio.current_time() - start == pytest.approx(limits.idle_timeout)


@SERVERS
async def test_a_slow_request_is_cut_off_after_the_read_timeout(
    limits: Limits, autojump_clock: trio.testing.MockClock
) -> None:
    handler = Recorder()
    with trio.fail_after(limits.read_timeout + 10), capture_logs() as logs:
        async with serving(handler, limits) as loop:
            await loop.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            start = trio.current_time()
            assert await loop.rest() == b""
            await loop.done.wait()
    assert trio.current_time() - start == pytest.approx(limits.read_timeout)
    assert handler.requests == []
    assert {"event": "http.connection_closed", "reason": "request too slow"}.items() <= logs[
        -1
    ].items()


async def test_a_malformed_request_is_logged_by_its_kind_only_and_refused() -> None:
    handler = Recorder()
    with trio.fail_after(10), capture_logs() as logs:
        async with serving(handler, emulator_server.LIMITS) as loop:
            await loop.stream.send_all(f"GET /a b?auth_token={TOKEN} HTTP/1.1\r\n\r\n".encode())
            reply = await loop.rest()
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert handler.refusals == [(400, None)]
    assert [e["event"] for e in logs] == ["http.request_rejected"]
    assert TOKEN not in repr(logs)


async def test_a_refusal_the_handler_does_not_answer_sends_nothing() -> None:
    handler = Recorder(answer_refusals=False)
    with trio.fail_after(10):
        async with serving(handler, ops_http.LIMITS) as loop:
            await loop.stream.send_all(b"GET /a b HTTP/1.1\r\n\r\n")
            assert await loop.rest() == b""
            await loop.done.wait()
    assert handler.refusals == [(400, None)]


async def test_expect_100_continue_is_answered_before_the_body() -> None:
    handler = Recorder()
    with trio.fail_after(10):
        async with serving(handler, emulator_server.LIMITS) as loop:
            head = (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
            )
            await loop.stream.send_all(head)
            interim = await loop.stream.receive_some(65536)
            assert interim.startswith(b"HTTP/1.1 100 ")
            await loop.stream.send_all(b"data")
            rest = await loop.stream.receive_some(65536)
    assert rest.startswith(b"HTTP/1.1 200 ")
    assert handler.requests[0].body == b"data"


@SERVERS
async def test_a_handler_that_raises_gets_500_and_only_its_connection_ends(
    limits: Limits,
) -> None:
    """The loop is one request's fault boundary: the bug is answered, nothing else stops."""
    broken = Recorder(broken=True)
    with trio.fail_after(10):
        async with serving(broken, limits) as loop:
            await loop.request("GET", "/metrics")
            response, body = await loop.response()
            assert await loop.rest() == b""  # the connection ended after the answer
            await loop.done.wait()
    assert (response.status_code, body) == (500, b"failed\n")
    assert _header(response, b"connection") == b"close"
    [(request, exc)] = broken.failures
    assert request.target == b"/metrics"
    assert isinstance(exc, RuntimeError)


@SERVERS
async def test_a_handler_that_raises_before_the_body_ends_only_its_connection(
    limits: Limits,
) -> None:
    """A bug outside respond() is logged with its traceback and the loop returns normally."""
    broken = Recorder(broken_start=True)
    with trio.fail_after(10), capture_logs() as logs:
        async with serving(broken, limits) as loop:
            await loop.request("GET", "/metrics")
            assert await loop.rest() == b""  # closed unanswered
            await loop.done.wait()
    [line] = [entry for entry in logs if entry["event"] == "http.connection_failed"]
    assert (line["log_level"], line["server"]) == ("error", "loop-test")
    assert line["exc_info"] is True
