"""The metrics and health HTTP server, on a real loopback port."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import h11
import httpx
import pytest
import trio
import trio.testing
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from hipchatd.config import Listen
from hipchatd.metrics import Metrics
from hipchatd.ops import http


@dataclass
class Server:
    url: str
    address: tuple[str, int]
    metrics: Metrics
    #: what the health callback answers
    health: tuple[bool, str] = (True, "")


@pytest.fixture
async def server(nursery: trio.Nursery) -> Server:
    metrics = Metrics()
    listeners = await http.open_http_listeners(Listen("127.0.0.1", 0))
    state = Server("", ("", 0), metrics)
    addresses = await nursery.start(http.serve_http, listeners, metrics, lambda: state.health)
    host, _, port = addresses[0].rpartition(":")
    state.address = (host, int(port))
    state.url = f"http://{addresses[0]}"
    return state


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=None) as http:
        yield http


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_parse_and_follow_the_counters(
    server: Server, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(10):
        first = await client.get(f"{server.url}/metrics")
        server.metrics.events_accepted.inc(3)
        server.metrics.events_received.labels(transport="udp").inc()
        second = await client.get(f"{server.url}/metrics")
    assert first.status_code == 200
    assert first.headers["content-type"] == CONTENT_TYPE_LATEST
    before, after = _samples(first.text), _samples(second.text)
    assert before[("hipchatd_events_accepted_total", ())] == 0
    assert after[("hipchatd_events_accepted_total", ())] == 3
    assert after[("hipchatd_events_received_total", (("transport", "udp"),))] == 1
    assert after[("hipchatd_events_received_total", (("transport", "tcp"),))] == 0


async def test_healthz_ok_and_unavailable(server: Server, client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        ok = await client.get(f"{server.url}/healthz")
        server.health = (False, "HipChat unreachable for 120 s")
        down = await client.get(f"{server.url}/healthz")
    assert ok.status_code == 200
    assert ok.headers["content-type"] == "application/json"
    assert ok.json() == {"status": "ok"}
    assert down.status_code == 503
    assert down.json() == {"status": "unavailable", "reason": "HipChat unreachable for 120 s"}


async def test_healthz_degraded_is_200_with_its_reason(
    server: Server, client: httpx.AsyncClient
) -> None:
    """Working on a fallback is neither ok nor unavailable (a watchdog keeps it running)."""
    server.health = (True, f"{http.DEGRADED}local spool only: PostgreSQL unreachable")
    with trio.fail_after(10):
        degraded = await client.get(f"{server.url}/healthz")
    assert degraded.status_code == 200
    assert degraded.json() == {
        "status": "degraded",
        "reason": "local spool only: PostgreSQL unreachable",
    }


async def test_unknown_path_is_404_and_wrong_method_405(
    server: Server, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(10):
        missing = await client.get(f"{server.url}/")
        posted = await client.post(f"{server.url}/metrics", content=b"x")
        query = await client.get(f"{server.url}/healthz?verbose=1")
    assert missing.status_code == 404
    assert posted.status_code == 405
    assert posted.headers["allow"] == "GET, HEAD"
    assert query.status_code == 200


async def test_head_sends_headers_only(server: Server, client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        head = await client.head(f"{server.url}/metrics")
        get = await client.get(f"{server.url}/metrics")
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(get.content) > 0


# -- the wire, raw -----------------------------------------------------------------


class RawClient:
    """An h11 client on one TCP connection, to see keep-alive and closes."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def send(self, *events: h11.Event) -> None:
        await self.stream.send_all(b"".join(self.conn.send(e) or b"" for e in events))

    async def get(self, path: str) -> tuple[int, bytes]:
        await self.send(h11.Request(method="GET", target=path, headers=[("Host", "x")]))
        await self.send(h11.EndOfMessage())
        return await self.response()

    async def response(self) -> tuple[int, bytes]:
        status, body = 0, b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, body
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def closed_by_server(self) -> bool:
        return await self.stream.receive_some(65536) == b""


async def _raw(server: Server) -> RawClient:
    return RawClient(await trio.open_tcp_stream(*server.address))


async def test_keep_alive_serves_several_requests_on_one_connection(server: Server) -> None:
    with trio.fail_after(10):
        raw = await _raw(server)
        async with raw.stream:
            for _ in range(3):
                status, body = await raw.get("/healthz")
                assert (status, json.loads(body)) == (200, {"status": "ok"})
                raw.conn.start_next_cycle()


async def test_idle_connection_is_closed(
    server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(http.KEEPALIVE_IDLE_TIMEOUT + 10):
        raw = await _raw(server)
        async with raw.stream:
            start = trio.current_time()
            assert await raw.closed_by_server()
    assert trio.current_time() - start == pytest.approx(http.KEEPALIVE_IDLE_TIMEOUT)


async def test_slow_request_is_cut_off(
    server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(http.REQUEST_READ_TIMEOUT + 10):
        raw = await _raw(server)
        async with raw.stream:
            await raw.stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            start = trio.current_time()
            assert await raw.closed_by_server()
    assert trio.current_time() - start == pytest.approx(http.REQUEST_READ_TIMEOUT)


async def test_oversized_headers_get_431(server: Server) -> None:
    with trio.fail_after(10):
        raw = await _raw(server)
        async with raw.stream:
            big = b"X-Big: " + b"a" * http.MAX_HEADER_BYTES + b"\r\n"
            await raw.stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + big)
            reply = b""
            while chunk := await raw.stream.receive_some(65536):
                reply += chunk
    assert reply.startswith(b"HTTP/1.1 431 ")


async def test_oversized_body_gets_413_and_close(server: Server) -> None:
    with trio.fail_after(10):
        raw = await _raw(server)
        async with raw.stream:
            size = http.MAX_BODY_BYTES + 1
            headers = [("Host", "x"), ("Content-Length", str(size))]
            await raw.send(h11.Request(method="GET", target="/metrics", headers=headers))
            await raw.send(h11.Data(data=b"a" * size))
            status, _ = await raw.response()
            assert status == 413
            assert await raw.closed_by_server()


async def test_connections_over_the_limit_are_closed(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "MAX_CONNECTIONS", 1)
    with trio.fail_after(10):
        first = await _raw(server)
        async with first.stream:
            assert (await first.get("/healthz"))[0] == 200  # the first is being served
            second = await _raw(server)
            async with second.stream:
                assert await second.closed_by_server()
            first.conn.start_next_cycle()
            assert (await first.get("/healthz"))[0] == 200


async def test_declared_oversized_body_is_refused_before_it_is_sent(server: Server) -> None:
    with trio.fail_after(10):
        raw = await _raw(server)
        async with raw.stream:
            headers = [("Host", "x"), ("Content-Length", str(http.MAX_BODY_BYTES + 1))]
            await raw.send(h11.Request(method="GET", target="/metrics", headers=headers))
            status, body = await raw.response()
            assert (status, body) == (413, b"request body too large\n")
            assert await raw.closed_by_server()


async def test_malformed_request_gets_400_and_close(server: Server) -> None:
    with trio.fail_after(10):
        raw = await _raw(server)
        async with raw.stream:
            await raw.stream.send_all(b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while chunk := await raw.stream.receive_some(65536):
                reply += chunk
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert reply.endswith(b"\r\n\r\nBad Request\n")


async def test_a_bug_while_answering_is_counted_and_answered_500(
    server: Server, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ops server's fault boundary: one ERROR line, one count, a 500; it keeps serving."""
    real = http._Server._answer

    def broken(self: Any, method: str, path: str) -> Any:
        if path == "/healthz":
            raise RuntimeError("a bug while answering")
        return real(self, method, path)

    monkeypatch.setattr(http._Server, "_answer", broken)
    with trio.fail_after(10), capture_logs() as logs:
        failed = await client.get(f"{server.url}/healthz")
        metrics = await client.get(f"{server.url}/metrics")
    assert failed.status_code == 500
    assert metrics.status_code == 200
    samples = _samples(metrics.text)
    assert samples[("hipchatd_internal_errors_total", (("where", "http"),))] == 1.0
    [line] = [entry for entry in logs if entry["event"] == "internal_error.caught"]
    assert (line["where"], line["log_level"]) == ("http", "error")
