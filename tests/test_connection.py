"""The connection handler over in-memory streams: framings, partial reads, rejects, timeouts.

:class:`hipchatd.ingest.listeners.ConnectionHandler` reads any trio stream
and is told its peer's name, so these tests drive it through
``trio.testing.memory_stream_pair`` (writes arrive as they are sent) and
``lockstep_stream_pair`` (each read returns what one write sent), on trio's
mock clock, without a socket. The socket side (``allow_from``, the
connection limit, the listen backlog) is tested over loopback in
``test_access.py``, and the whole path end to end in ``test_daemon.py``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import structlog
import trio
import trio.testing

from hipchatd.config import DaemonSettings
from hipchatd.ingest.listeners import ConnectionHandler, log_context
from hipchatd.metrics import Metrics
from hipchatd.sensu.framing import Document, Framing
from tests.logcapture import capture_logs

PEER = "192.0.2.10:40000"
#: A ceiling on trio's clock for every test here: the handler's own timeouts are 30 s.
CEILING = 600.0


class Sunk:
    """The sink: each document, with the transport and the log context it was handed over in."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.contexts: list[dict[str, Any]] = []
        self.transports: set[str] = set()

    def __call__(self, document: Document, peer: str, transport: str) -> None:
        self.values.append(document.value)
        self.contexts.append(structlog.contextvars.get_contextvars())
        self.transports.add(transport)


def _handler(
    room: Callable[[], Any] | None = None, **settings: Any
) -> tuple[ConnectionHandler, Sunk, Metrics]:
    sunk = Sunk()
    metrics = Metrics()
    if room is None:
        handler = ConnectionHandler(DaemonSettings(**settings), sunk, metrics)
    else:
        handler = ConnectionHandler(DaemonSettings(**settings), sunk, metrics, room)
    return handler, sunk, metrics


async def _serve(
    handler: ConnectionHandler,
    writes: Iterable[bytes],
    *,
    peer: str = PEER,
    lockstep: bool = False,
    close: bool = True,
) -> float:
    """Write ``writes`` to a connection ``handler`` reads, then close it; the trio time it ended."""
    client, server = (
        trio.testing.lockstep_stream_pair() if lockstep else trio.testing.memory_stream_pair()
    )
    ended = trio.Event()
    at = 0.0

    async def read() -> None:
        nonlocal at
        await handler(server, peer)
        at = trio.current_time()
        ended.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        for data in writes:
            await client.send_all(data)
        if close:
            await client.send_stream.aclose()
        await ended.wait()
    return at


def _event(name: str) -> dict[str, Any]:
    return {"client": {"name": "web-01"}, "check": {"name": name, "status": 2}}


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _received(metrics: Metrics) -> float:
    return metrics.value("hipchatd_events_received_total", transport="tcp")


def _rejected(metrics: Metrics, reason: str) -> float:
    return metrics.value("hipchatd_events_rejected_total", reason=reason)


# --- framings ---------------------------------------------------------------------------------

EVENTS = [_event("a"), _event("b"), _event("c")]


def _length_prefixed(values: Iterable[Any]) -> bytes:
    return b"".join(struct.pack(">I", len(_compact(v))) + _compact(v) for v in values)


@pytest.mark.parametrize(
    ("framing", "payload", "count"),
    [
        ("auto", _compact(EVENTS[0]), 1),  # what Sensu writes: one document, then close
        ("auto", b"\n".join(_compact(v) for v in EVENTS), 3),  # NDJSON, no final newline
        ("auto", b"".join(json.dumps(v, indent=2).encode() for v in EVENTS), 3),  # back to back
        ("auto", _length_prefixed(EVENTS), 3),
        ("newline", b"".join(_compact(v) + b"\r\n" for v in EVENTS), 3),
        ("length", _length_prefixed(EVENTS), 3),
        ("eof", json.dumps(EVENTS[0], indent=2).encode(), 1),
    ],
    ids=["sensu", "ndjson", "pretty", "auto-length", "newline", "length", "eof"],
)
async def test_each_framing_yields_its_documents_in_order(
    framing: Framing, payload: bytes, count: int
) -> None:
    handler, sunk, metrics = _handler(framing=framing)
    with trio.fail_after(CEILING):
        await _serve(handler, [payload])
    expected = EVENTS[:count]
    assert sunk.values == expected
    assert sunk.transports == {"tcp"}
    assert _received(metrics) == len(expected)
    assert handler.active == 0
    assert metrics.value("hipchatd_connections_open") == 0


@pytest.mark.parametrize("framing", ["auto", "newline", "length"])
async def test_documents_split_at_every_byte_are_read_whole(
    framing: Framing, autojump_clock: trio.testing.MockClock
) -> None:
    """One byte per read (lockstep): every frame boundary falls inside some read."""
    if framing == "length":
        payload = _length_prefixed(EVENTS[:2])
    else:
        payload = b"".join(_compact(v) + b"\n" for v in EVENTS[:2])
    handler, sunk, _ = _handler(framing=framing)
    with trio.fail_after(CEILING):
        await _serve(handler, [payload[i : i + 1] for i in range(len(payload))], lockstep=True)
    assert sunk.values == EVENTS[:2]


# --- rejects, and the context of every line ---------------------------------------------------


async def test_rejects_carry_the_connections_peer_and_conn_id() -> None:
    """Bad frames between good ones: each is rejected on a line naming the connection."""
    handler, sunk, metrics = _handler()
    writes = [
        _compact(_event("first")) + b"\n",
        b"{oops}\n",
        b'{"a": "\xff\xfe"}\n',
        _compact(_event("second")) + b"\n",
    ]
    with trio.fail_after(CEILING), capture_logs() as logs:
        await _serve(handler, writes)
    assert [v["check"]["name"] for v in sunk.values] == ["first", "second"]
    rejected = [line for line in logs if line["event"] == "input.rejected"]
    assert [line["reason"].split(":")[0] for line in rejected] == ["invalid JSON", "not UTF-8"]
    conn_ids = {line["conn_id"] for line in rejected}
    assert len(conn_ids) == 1
    assert isinstance(next(iter(conn_ids)), int)
    assert all(line["peer"] == PEER and line["transport"] == "tcp" for line in rejected)
    # The sink runs in the connection's context too: what it logs names the connection.
    assert [(c["peer"], c["conn_id"]) for c in sunk.contexts] == [(PEER, *conn_ids)] * 2
    assert _rejected(metrics, "invalid_json") == 1
    assert _rejected(metrics, "not_utf8") == 1
    assert _received(metrics) == 4


async def test_two_concurrent_connections_do_not_mix(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Interleaved reads of two connections: each line and document carries its own peer."""
    handler, sunk, _ = _handler()
    peers = ["192.0.2.1:1000", "[2001:db8::2]:2000"]
    streams = [trio.testing.lockstep_stream_pair() for _ in peers]

    async def connection(index: int) -> None:
        client, server = streams[index]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handler, server, peers[index])
            for n in range(3):
                await client.send_all(_compact(_event(f"{index}-{n}")) + b"\n")
                await client.send_all(f"not json {index}-{n}\n".encode())
                # The other connection takes its turn in between.
                await trio.sleep(1)
            await client.send_stream.aclose()

    with trio.fail_after(CEILING), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection, 0)
            nursery.start_soon(connection, 1)
    rejected = [line for line in logs if line["event"] == "input.rejected"]
    assert len(rejected) == 6
    by_peer: dict[str, set[int]] = {}
    for line in rejected:
        index = int(line["preview"].split()[-1].split("-")[0])
        assert line["peer"] == peers[index]
        by_peer.setdefault(line["peer"], set()).add(line["conn_id"])
    for value, context in zip(sunk.values, sunk.contexts, strict=True):
        index = int(value["check"]["name"].split("-")[0])
        assert context["peer"] == peers[index]
        by_peer[context["peer"]].add(context["conn_id"])
    # One conn_id per connection, and not the same one.
    assert [len(ids) for ids in by_peer.values()] == [1, 1]
    assert by_peer[peers[0]] != by_peer[peers[1]]
    assert len(sunk.values) == 6


# --- timeouts, on trio's mock clock ------------------------------------------------------------


async def test_an_idle_peer_is_closed_after_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler, sunk, metrics = _handler(idle_timeout=30.0)
    with trio.fail_after(CEILING), capture_logs() as logs:
        started = trio.current_time()
        ended = await _serve(handler, [b'{"partial": '], close=False)
    assert ended - started == pytest.approx(30.0)
    [line] = [entry for entry in logs if entry["event"] == "connection.timed_out"]
    assert line["idle_timeout"] == 30.0
    assert line["nbytes"] == len(b'{"partial": ')
    assert line["peer"] == PEER
    assert isinstance(line["conn_id"], int)
    assert _rejected(metrics, "idle_timeout") == 1
    assert sunk.values == []
    assert metrics.value("hipchatd_connections_open") == 0


async def test_a_trickling_peer_is_closed_like_an_idle_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A byte every 10 s never completes an event: closed 30 s after the last complete one."""
    handler, sunk, metrics = _handler(idle_timeout=30.0)
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handler, server, PEER)
            await client.send_all(_compact(_event("whole")) + b"\n")
            complete_at = trio.current_time()
            await trio.sleep(5)
            closed_at = None
            for _ in range(10):
                try:
                    await client.send_all(b" ")
                except trio.BrokenResourceError:
                    closed_at = trio.current_time()
                    break
                await trio.sleep(10)
    assert closed_at is not None
    assert [v["check"]["name"] for v in sunk.values] == ["whole"]
    assert _rejected(metrics, "idle_timeout") == 1
    # The write after the close fails: at most one trickle interval after the timeout.
    assert complete_at + 30.0 <= closed_at <= complete_at + 30.0 + 10.0


async def test_waiting_for_spool_room_is_not_idleness(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While the spool has no room the peer is not read; that wait is not its idle time."""
    waits = 0

    async def full_for_a_while() -> None:
        nonlocal waits
        waits += 1
        if waits == 1:
            await trio.sleep(100.0)

    handler, sunk, metrics = _handler(full_for_a_while, idle_timeout=30.0)
    writes = [_compact(_event("one")) + b"\n", _compact(_event("two")) + b"\n"]
    with trio.fail_after(CEILING):
        # Lockstep: "two" is read only once the 100 s wait for room is over.
        ended = await _serve(handler, writes, lockstep=True)
    assert ended >= 100.0
    assert [v["check"]["name"] for v in sunk.values] == ["one", "two"]
    assert _rejected(metrics, "idle_timeout") == 0


# --- the end of a connection ------------------------------------------------------------------


async def test_a_frame_too_large_closes_the_connection() -> None:
    handler, sunk, metrics = _handler(max_frame_bytes=1024)
    big = b'{"check": {"output": "' + b"x" * 2000 + b'"}}\n'
    client, server = trio.testing.lockstep_stream_pair()
    with trio.fail_after(CEILING), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            # The handler returns without the peer closing: it closed the connection.
            nursery.start_soon(handler, server, PEER)
            await client.send_all(_compact(_event("before")) + b"\n")
            await client.send_all(big)
            with pytest.raises(trio.BrokenResourceError):
                await client.send_all(_compact(_event("after")) + b"\n")
    assert [v["check"]["name"] for v in sunk.values] == ["before"]
    [line] = [entry for entry in logs if entry["event"] == "input.rejected"]
    assert line["action"] == "connection closed"
    assert "max_frame_bytes=1024" in line["reason"]
    assert (line["peer"], line["transport"]) == (PEER, "tcp")
    assert isinstance(line["conn_id"], int)
    assert _rejected(metrics, "frame_too_large") == 1
    assert _received(metrics) == 2


async def test_events_sent_with_a_frame_too_large_in_one_write_are_kept() -> None:
    """An oversized frame closes the connection, but the events before it were whole."""
    handler, sunk, metrics = _handler(max_frame_bytes=1024)
    big = b'{"check": {"output": "' + b"x" * 2000 + b'"}}\n'
    chunk = _compact(_event("first")) + b"\n" + _compact(_event("second")) + b"\n" + big
    with trio.fail_after(CEILING):
        await _serve(handler, [chunk])
    assert [v["check"]["name"] for v in sunk.values] == ["first", "second"]
    assert _rejected(metrics, "frame_too_large") == 1
    assert _received(metrics) == 3


@pytest.mark.parametrize(
    ("framing", "cut"),
    [
        ("auto", b'{"partial": '),
        ("length", _length_prefixed([_event("cut")])[:-5]),
        ("length", b"\x00\x00"),
    ],
    ids=["json-text", "length-payload", "length-prefix"],
)
async def test_eof_in_the_middle_of_a_frame_rejects_it(framing: Framing, cut: bytes) -> None:
    """The frames before it are used; the unfinished one is rejected as truncated."""
    whole = (
        _length_prefixed([_event("whole")]) if framing == "length" else _compact(_event("whole"))
    )
    handler, sunk, metrics = _handler(framing=framing)
    with trio.fail_after(CEILING), capture_logs() as logs:
        await _serve(handler, [whole, cut])
    [line] = [entry for entry in logs if entry["event"] == "input.rejected"]
    assert line["peer"] == PEER
    assert line["nbytes"] > 0
    assert _rejected(metrics, "truncated") == 1
    assert _received(metrics) == 2
    assert [v["check"]["name"] for v in sunk.values] == ["whole"]


class _ResetStream(trio.abc.ReceiveStream):
    """A stream whose peer resets the connection after sending ``data``."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.data:
            data, self.data = self.data, b""
            return data
        raise trio.BrokenResourceError("connection reset by peer")

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


async def test_a_reset_connection_keeps_what_it_completed() -> None:
    """Any ReceiveStream will do: a reset is logged at INFO and the stream closed."""
    handler, sunk, metrics = _handler()
    stream = _ResetStream(_compact(_event("done")) + b"\n" + b'{"half"')
    with trio.fail_after(CEILING), capture_logs() as logs:
        await handler(stream, PEER)
    assert stream.closed
    assert [v["check"]["name"] for v in sunk.values] == ["done"]
    [line] = [entry for entry in logs if entry["event"] == "connection.reset"]
    assert line["log_level"] == "info"
    assert line["error"] == "connection reset by peer"
    assert line["peer"] == PEER
    assert isinstance(line["conn_id"], int)
    assert not [entry for entry in logs if entry["event"] == "input.rejected"]
    assert metrics.value("hipchatd_connections_open") == 0
    # The handler ran in this task: its binding ended with the connection.
    assert structlog.contextvars.get_contextvars() == {}


async def test_a_bug_while_reading_ends_only_that_connection() -> None:
    """The connection's fault boundary: one ERROR line naming it, one count, the stream closed."""

    async def broken_room() -> None:
        raise RuntimeError("a bug while reading one connection")

    handler, sunk, metrics = _handler(broken_room)
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(CEILING), capture_logs() as logs:
        await client.send_all(_compact(_event("one")) + b"\n")
        await handler(server, PEER)
        with pytest.raises(trio.BrokenResourceError):
            await client.send_all(b"more")
    assert [v["check"]["name"] for v in sunk.values] == ["one"]
    [caught] = [entry for entry in logs if entry["event"] == "internal_error.caught"]
    assert (caught["where"], caught["peer"]) == ("connection", PEER)
    assert isinstance(caught["conn_id"], int)
    assert caught["exc_info"] is True
    assert metrics.value("hipchatd_internal_errors_total", where="connection") == 1
    assert handler.active == 0
    assert metrics.value("hipchatd_connections_open") == 0


async def test_each_connection_gets_a_new_conn_id() -> None:
    handler, _, _ = _handler()
    with trio.fail_after(CEILING), capture_logs() as logs:
        for _ in range(3):
            await _serve(handler, [b"{bad}\n"])
    ids = [line["conn_id"] for line in logs if line["event"] == "input.rejected"]
    assert len(ids) == 3
    assert ids == sorted(set(ids))


def test_log_context_is_the_variable_structlog_binds_the_key_in() -> None:
    """Setting it binds the key for every line, as bind_contextvars does; its reset unbinds."""
    var = log_context("conn_id")
    assert var is log_context("conn_id")
    token = var.set(7)
    try:
        assert structlog.contextvars.get_contextvars()["conn_id"] == 7
        with capture_logs() as logs:
            structlog.get_logger().info("probe.logged")
        assert logs[0]["conn_id"] == 7
    finally:
        var.reset(token)
    assert "conn_id" not in structlog.contextvars.get_contextvars()
    tokens = structlog.contextvars.bind_contextvars(conn_id=8)
    assert var.get() == 8
    structlog.contextvars.reset_contextvars(**tokens)
