"""Who may send, the connection limit, the per-connection fault boundary, and the log bound.

End-to-end tests run the real daemon on loopback against the real emulator;
the address matching and the log table are also tested on their own.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import socket
import struct
from functools import partial
from typing import Any

import pytest
import structlog
import trio
import trio.testing

from hipchatd import app as app_module
from hipchatd.config import DaemonSettings, Listen
from hipchatd.emulator import Emulator
from hipchatd.ingest import listeners as listeners_module
from hipchatd.ingest.listeners import ConnectionHandler, reject, serve_tcp, serve_udp
from hipchatd.ingest.peers import (
    LOG_LINES_PER_PEER,
    LOG_LINES_TOTAL,
    LOG_WINDOW,
    MAX_PEERS_TRACKED,
    RejectLog,
    allowed,
    exposed,
    peer_address,
    peer_key,
    reject_log,
    warn_if_exposed,
)
from hipchatd.metrics import Metrics
from hipchatd.ops.systemd import InheritedSocket
from tests.conftest import (
    StartDaemon,
    classic_event,
    make_config,
    represented,
    send_tcp,
    send_udp,
    wait_until,
)
from tests.logcapture import capture_logs


def _nets(*items: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(item) for item in items)


def _event(name: str) -> bytes:
    return json.dumps(classic_event(name=name, status=2, output=f"{name} is down")).encode()


def _rejected(app: app_module.App, reason: str) -> float:
    return app.metrics.value("hipchatd_events_rejected_total", reason=reason)


# -- address matching ------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("10.1.2.3", "10.1.2.3"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("fe80::1%eth0", "fe80::1"),
        ("::1", "::1"),
        ("2001:db8::7", "2001:db8::7"),
        ("", None),
        ("localhost", None),
        (None, None),
    ],
)
def test_peer_address_unmaps_and_drops_the_scope(host: object, expected: str | None) -> None:
    address = peer_address(host)
    assert (None if address is None else str(address)) == expected


@pytest.mark.parametrize(
    ("networks", "host", "expected"),
    [
        (None, "203.0.113.9", True),
        (None, None, True),
        (("10.0.0.0/8",), "10.1.2.3", True),
        (("10.0.0.0/8",), "127.0.0.1", False),
        (("10.0.0.0/8",), "11.0.0.1", False),
        (("127.0.0.0/8",), "127.0.0.1", True),
        # A dual-stack socket reports IPv4 peers mapped into IPv6.
        (("10.0.0.0/8",), "::ffff:10.1.2.3", True),
        (("10.0.0.0/8",), "::ffff:192.0.2.1", False),
        (("::ffff:10.0.0.0/104",), "::ffff:10.1.2.3", True),
        (("::1/128",), "::ffff:127.0.0.1", False),
        (("::1/128",), "::1", True),
        (("::1/128",), "127.0.0.1", False),
        (("2001:db8::/32",), "2001:db8:1::5", True),
        (("2001:db8::/32",), "2001:db9::5", False),
        # A link-local peer carries its interface: the scope is not the address.
        (("fe80::/10",), "fe80::1%eth0", True),
        (("fe80::1/128",), "fe80::1%2", True),
        (("fe80::1/128",), "fe80::2%eth0", False),
        # Nothing to match: a peer that went away, or no IP address at all.
        (("0.0.0.0/0", "::/0"), None, False),
        (("0.0.0.0/0", "::/0"), "", False),
        (("0.0.0.0/0", "::/0"), "not-an-address", False),
    ],
)
def test_allowed_matches_ipv4_ipv6_mapped_and_scoped_peers(
    networks: tuple[str, ...] | None, host: object, expected: bool
) -> None:
    assert allowed(None if networks is None else _nets(*networks), host) is expected


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("10.1.2.3:5000", "10.1.2.3"),
        ("10.1.2.3:6000", "10.1.2.3"),
        ("[::ffff:10.1.2.3]:5000", "10.1.2.3"),
        ("[2001:db8:1:2:aaaa::1]:5000", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2:bbbb::9]:7", "2001:db8:1:2::/64"),
        ("[fe80::1%eth0]:5000", "fe80::/64"),
        ("unknown", "unknown"),
    ],
)
def test_peer_key_is_the_host_and_an_ipv6_slash_64(peer: str, key: str) -> None:
    assert peer_key(peer) == key


@pytest.mark.parametrize(
    ("sockname", "expected"),
    [
        (("127.0.0.1", 3033), False),
        (("127.0.0.2", 3033), False),
        (("::1", 3033, 0, 0), False),
        (("::ffff:127.0.0.1", 3033, 0, 0), False),
        (("0.0.0.0", 3033), True),
        (("::", 3033, 0, 0), True),
        (("10.1.2.3", 3033), True),
        (("2001:db8::1", 3033, 0, 0), True),
    ],
)
def test_exposed_means_reachable_beyond_loopback(sockname: object, expected: bool) -> None:
    assert exposed(sockname) is expected


def test_listening_beyond_loopback_without_allow_from_warns() -> None:
    listeners = [("tcp", ("0.0.0.0", 3033)), ("udp", ("::", 3033, 0, 0)), ("tcp", ("::1", 1))]
    with capture_logs() as logs:
        warn_if_exposed(None, listeners)
        warn_if_exposed(_nets("10.0.0.0/8"), listeners)
    assert [(e["transport"], e["address"]) for e in logs] == [
        ("tcp", "0.0.0.0:3033"),
        ("udp", "[::]:3033"),
    ]
    for entry in logs:
        assert entry["event"] == "listener.exposed"
        assert entry["log_level"] == "warning"
        assert "any host that can reach this address" in entry["reason"]
        assert "hipchatd.allow_from" in entry["fix"]


# -- who may send, end to end ----------------------------------------------------


async def test_tcp_peer_outside_allow_from_is_closed_unread(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    with trio.fail_after(10), capture_logs() as logs:
        app = await start_daemon(allow_from=_nets("10.0.0.0/8"))
        stream = await trio.open_tcp_stream(*app.tcp_addresses[0])
        try:
            await stream.send_all(_event("intruder"))
            # Closed right after accept: EOF, or a reset because our bytes went unread.
            assert await stream.receive_some(10) == b""
        except trio.BrokenResourceError:
            pass
        await stream.aclose()
        await wait_until(lambda: _rejected(app, "not_allowed") >= 1)
        await trio.sleep(0.1)
    assert not emulator.messages
    assert app.metrics.value("hipchatd_events_received_total", transport="tcp") == 0
    [refused] = [e for e in logs if e["event"] == "connection.refused"]
    assert refused["log_level"] == "warning"
    assert refused["peer"].startswith("127.0.0.1:")
    assert refused["reason"] == "peer not in hipchatd.allow_from"
    assert not [e for e in logs if e["event"] == "input.rejected"]


async def test_udp_peer_outside_allow_from_is_dropped_undecoded(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    with trio.fail_after(10), capture_logs() as logs:
        app = await start_daemon(allow_from=_nets("10.0.0.0/8"))
        assert app.udp_address is not None
        await send_udp(app.udp_address, b"not even JSON")
        await send_udp(app.udp_address, _event("intruder"))
        await wait_until(lambda: _rejected(app, "not_allowed") >= 2)
        await trio.sleep(0.1)
    assert not emulator.messages
    assert app.metrics.value("hipchatd_events_received_total", transport="udp") == 0
    assert _rejected(app, "invalid_json") == 0
    refused = [e for e in logs if e["event"] == "input.rejected"]
    assert [(e["transport"], e["reason"]) for e in refused] == [
        ("udp", "peer not in hipchatd.allow_from")
    ] * 2
    assert [e["nbytes"] for e in refused] == [len(b"not even JSON"), len(_event("intruder"))]


async def test_peer_inside_allow_from_is_served(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    with trio.fail_after(10):
        app = await start_daemon(allow_from=_nets("192.0.2.0/24", "127.0.0.0/8"))
        assert app.udp_address is not None
        await send_tcp(app.tcp_addresses[0], _event("via-tcp"))
        await send_udp(app.udp_address, _event("via-udp"))
        await wait_until(lambda: represented(emulator) >= 2)
    text = "\n".join(m.message for m in emulator.messages)
    assert "via-tcp" in text
    assert "via-udp" in text
    assert _rejected(app, "not_allowed") == 0


def _ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


async def _start_on(
    nursery: trio.Nursery, emulator: Emulator, host: str, **daemon: Any
) -> app_module.App:
    config = make_config(emulator.url)
    settings = dataclasses.replace(
        config.daemon, tcp=Listen(host, 0), udp=Listen(host, 0), **daemon
    )
    app: app_module.App = await nursery.start(
        app_module.run, dataclasses.replace(config, daemon=settings)
    )
    return app


async def _send_udp6(address: tuple[str, int], payload: bytes) -> None:
    with trio.socket.socket(trio.socket.AF_INET6, trio.socket.SOCK_DGRAM) as sock:
        await sock.sendto(payload, address)


async def test_ipv6_loopback_peer_is_matched(nursery: trio.Nursery, emulator: Emulator) -> None:
    """Over ::1 where the host has IPv6; else the same matching, without a socket."""
    if not _ipv6_loopback_works():
        assert allowed(_nets("::1"), "::1")
        assert not allowed(_nets("10.0.0.0/8"), "::1")
        return
    with trio.fail_after(10):
        refusing = await _start_on(nursery, emulator, "::1", allow_from=_nets("10.0.0.0/8"))
        allowing = await _start_on(nursery, emulator, "::1", allow_from=_nets("::1/128"))
        for app in (refusing, allowing):
            assert app.udp_address is not None
            await send_tcp(app.tcp_addresses[0], _event(f"tcp-{id(app)}"))
            await _send_udp6(app.udp_address, _event(f"udp-{id(app)}"))
        await wait_until(lambda: represented(emulator) >= 2)
        await wait_until(lambda: _rejected(refusing, "not_allowed") >= 2)
        await trio.sleep(0.1)
    text = "\n".join(m.message for m in emulator.messages)
    assert f"tcp-{id(allowing)}" in text
    assert f"udp-{id(allowing)}" in text
    assert represented(emulator) == 2
    assert _rejected(allowing, "not_allowed") == 0


async def test_dual_stack_socket_matches_ipv4_peers_as_ipv4(
    nursery: trio.Nursery, emulator: Emulator
) -> None:
    """systemd's default sockets are dual-stack: an IPv4 peer shows as ::ffff:a.b.c.d."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::ffff:127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    config = make_config(emulator.url, allow_from=_nets("127.0.0.0/8"))
    with trio.fail_after(10), capture_logs() as logs:
        app: app_module.App = await nursery.start(
            partial(app_module.run, config, inherited=[InheritedSocket(sock, "sensu", "stream")])
        )
        await send_tcp(("127.0.0.1", port), _event("mapped"))
        await emulator.wait_for_messages(1)
        # The same peer, refused once allow_from names IPv6 loopback only.
        app.reload(
            dataclasses.replace(
                config, daemon=dataclasses.replace(config.daemon, allow_from=_nets("::1"))
            )
        )
        await send_tcp(("127.0.0.1", port), _event("refused"))
        await wait_until(lambda: _rejected(app, "not_allowed") >= 1)
    assert "mapped" in emulator.messages[0].message
    assert len(emulator.messages) == 1
    [refused] = [e for e in logs if e["event"] == "connection.refused"]
    assert refused["peer"].startswith("127.0.0.1:")


async def test_reload_swaps_allow_from(start_daemon: StartDaemon, emulator: Emulator) -> None:
    with trio.fail_after(10):
        app = await start_daemon(allow_from=_nets("10.0.0.0/8"))
        assert app.udp_address is not None
        await send_tcp(app.tcp_addresses[0], _event("before"))
        await send_udp(app.udp_address, _event("before-udp"))
        await wait_until(lambda: _rejected(app, "not_allowed") >= 2)
        daemon = dataclasses.replace(app.config.daemon, allow_from=_nets("127.0.0.1/32"))
        restart = app.reload(dataclasses.replace(app.config, daemon=daemon))
        await send_tcp(app.tcp_addresses[0], _event("after"))
        await send_udp(app.udp_address, _event("after-udp"))
        await wait_until(lambda: represented(emulator) >= 2)
    assert restart == []
    text = "\n".join(m.message for m in emulator.messages)
    assert "after" in text
    assert "after-udp" in text
    assert "before" not in text


async def test_loopback_listeners_do_not_warn(start_daemon: StartDaemon) -> None:
    with trio.fail_after(10), capture_logs() as logs:
        await start_daemon()
    assert not [e for e in logs if e["event"] == "listener.exposed"]


# -- the connection limit --------------------------------------------------------


#: Seconds a slowloris waits before reconnecting: the canaries queue ahead of it.
_RECONNECT_PAUSE = 2.0


async def _slowloris(address: tuple[str, int], done: trio.Event) -> None:
    """Hold a connection with an event never completed; reconnect soon after it is closed."""
    while not done.is_set():
        try:
            stream = await trio.open_tcp_stream(*address)
        except OSError:
            pass
        else:
            async with stream:
                try:
                    await stream.send_all(b'{"check": {"output": "')
                    while await stream.receive_some(100):
                        pass
                except trio.BrokenResourceError:
                    pass
        await trio.sleep(_RECONNECT_PAUSE)


async def test_over_max_connections_new_ones_wait_and_are_served(
    start_daemon: StartDaemon, emulator: Emulator, autojump_clock: trio.testing.MockClock
) -> None:
    """At the limit nothing is accepted and closed: a canary waits in the backlog."""
    with trio.fail_after(300), capture_logs() as logs:
        app = await start_daemon(max_connections=2, idle_timeout=30.0)
        address = app.tcp_addresses[0]
        holders = [await trio.open_tcp_stream(*address) for _ in range(2)]
        for holder in holders:
            await holder.send_all(b"{")
        await wait_until(lambda: app.connections.active == 2)
        started = trio.current_time()
        # What Sensu does: connect, write, close; connect and write succeed on the backlog.
        await send_tcp(address, _event("canary"))
        await emulator.wait_for_messages(1)
        waited = trio.current_time() - started
        for holder in holders:
            await holder.aclose()
    assert "canary" in emulator.messages[0].message
    # Served once idle_timeout closed a holder, not before.
    assert waited >= 30.0
    assert not [e for e in logs if e["event"] == "connection.refused"]
    assert _rejected(app, "too_many_connections") == 0
    assert _rejected(app, "idle_timeout") == 2
    [limit] = [e for e in logs if e["event"] == "connection.limit_reached"]
    assert limit["max_connections"] == 2
    assert app.metrics.value("hipchatd_connections_open") == 0


async def test_slowloris_does_not_drop_canary_events(
    start_daemon: StartDaemon, emulator: Emulator, autojump_clock: trio.testing.MockClock
) -> None:
    """249 held connections that reconnect when closed; 16 Sensu events all arrive."""
    canaries = 16
    with trio.fail_after(300), capture_logs() as logs:
        app = await start_daemon(max_connections=64, idle_timeout=30.0)
        address = app.tcp_addresses[0]
        done = trio.Event()
        async with trio.open_nursery() as attackers:
            for _ in range(249):
                attackers.start_soon(_slowloris, address, done)
            await wait_until(lambda: app.connections.active == 64)
            async with trio.open_nursery() as sensu:
                for i in range(canaries):
                    sensu.start_soon(send_tcp, address, _event(f"canary-{i}"))
            await wait_until(lambda: represented(emulator) >= canaries, step=1.0)
            done.set()
            attackers.cancel_scope.cancel()
    text = "\n".join(m.message for m in emulator.messages)
    assert all(f"canary-{i} is down" in text for i in range(canaries))
    assert represented(emulator) == canaries
    assert _rejected(app, "too_many_connections") == 0
    assert not [e for e in logs if e["event"] == "connection.refused"]
    # The held connections were closed by idle_timeout, their lines bounded per peer.
    assert _rejected(app, "idle_timeout") >= 64
    timed_out = [e for e in logs if e["event"] == "connection.timed_out"]
    assert len(timed_out) <= LOG_LINES_PER_PEER * (1 + trio.current_time() // LOG_WINDOW)


# -- the per-connection fault boundary -------------------------------------------


async def test_unexpected_error_ends_only_that_connection(nursery: trio.Nursery) -> None:
    documents: list[object] = []
    calls = 0

    async def room() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug while reading one connection")

    metrics = Metrics()
    settings = DaemonSettings(tcp=Listen("127.0.0.1", 0), max_connections=1)
    handler = ConnectionHandler(
        settings, lambda doc, peer, transport: documents.append(doc.value), metrics, room
    )
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    address = listeners[0].socket.getsockname()[:2]
    with trio.fail_after(10), capture_logs() as logs:
        await nursery.start(serve_tcp, listeners, handler)
        first = await trio.open_tcp_stream(*address)
        await first.send_all(b'{"n": 1}\n')
        # Only this connection ends: the daemon closes it.
        assert await first.receive_some(10) == b""
        await first.aclose()
        # The one slot was released: the next connection is accepted and read.
        await send_tcp(address, b'{"n": 2}\n')
        await wait_until(lambda: len(documents) == 2)
        await wait_until(lambda: handler.slots.free == 1)
    assert documents == [{"n": 1}, {"n": 2}]
    [caught] = [e for e in logs if e["event"] == "internal_error.caught"]
    assert caught["where"] == "connection"
    assert caught["peer"].startswith("127.0.0.1:")
    assert isinstance(caught["conn_id"], int)
    assert caught["log_level"] == "error"
    assert metrics.value("hipchatd_internal_errors_total", where="connection") == 1
    assert metrics.value("hipchatd_connections_open") == 0
    assert handler.active == 0


async def _collecting(
    **settings: Any,
) -> tuple[ConnectionHandler, list[trio.SocketListener], tuple[str, int], list[object]]:
    """A handler keeping each document it reads; loopback listeners, not yet served."""
    documents: list[object] = []
    handler = ConnectionHandler(
        DaemonSettings(tcp=Listen("127.0.0.1", 0), **settings),
        lambda doc, peer, transport: documents.append(doc.value),
        Metrics(),
    )
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    return handler, listeners, listeners[0].socket.getsockname()[:2], documents


async def test_a_peer_resetting_its_connection_keeps_what_it_completed(
    nursery: trio.Nursery,
) -> None:
    """Over loopback: a reset is one INFO line naming the peer; the connection's slot is freed."""
    handler, listeners, address, documents = await _collecting(max_connections=1)
    with trio.fail_after(10), capture_logs() as logs:
        await nursery.start(serve_tcp, listeners, handler)
        sock = trio.socket.socket()
        await sock.connect(address)
        peer = "{}:{}".format(*sock.getsockname()[:2])
        await sock.send(b'{"n": 1}\n{"half"')
        await wait_until(lambda: documents == [{"n": 1}])
        # A zero linger time: close sends a reset instead of a FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        await wait_until(lambda: handler.slots.free == 1)
    # What the connection completed before the reset is kept; the half event is not rejected.
    assert documents == [{"n": 1}]
    [reset] = [e for e in logs if e["event"] == "connection.reset"]
    assert reset["log_level"] == "info"
    assert reset["peer"] == peer
    assert reset["error"].startswith("socket connection broken: ")
    assert "reset" in reset["error"].lower()
    assert not [e for e in logs if e["event"] == "input.rejected"]
    assert handler.metrics.value("hipchatd_connections_open") == 0
    assert handler.active == 0


async def test_connections_written_whole_before_they_are_read_are_handled_alike(
    nursery: trio.Nursery,
) -> None:
    """Sent and half-closed before the daemon reads: each is read whole, bad input apart."""
    payloads = [b'{"n": 1}', b"not JSON", b'{"big": "' + b"x" * 2000 + b'"}', b'{"n": 2}\n']
    handler, listeners, address, documents = await _collecting(max_frame_bytes=1024)
    metrics = handler.metrics
    senders = []
    with trio.fail_after(10), capture_logs() as logs:
        # Every connection waits, written and half-closed, in the listen backlog.
        for payload in payloads:
            sender = await trio.open_tcp_stream(*address)
            await sender.send_all(payload)
            await sender.send_eof()
            senders.append(sender)
        await nursery.start(serve_tcp, listeners, handler)
        for sender in senders:
            # Each is read to its end and closed by the daemon.
            assert await sender.receive_some(10) == b""
            await sender.aclose()
        await wait_until(lambda: handler.active == 0)
    assert sorted(documents, key=str) == [{"n": 1}, {"n": 2}]
    assert metrics.value("hipchatd_events_received_total", transport="tcp") == 4
    for reason in ("invalid_json", "frame_too_large"):
        assert metrics.value("hipchatd_events_rejected_total", reason=reason) == 1, reason
    rejected = {e["reason"].split(":")[0]: e for e in logs if e["event"] == "input.rejected"}
    assert len(rejected) == 2
    assert [e["action"] for e in rejected.values() if "action" in e] == ["connection closed"]
    assert not [e for e in logs if e["event"] in ("connection.timed_out", "connection.reset")]
    assert metrics.value("hipchatd_connections_open") == 0


def test_a_connection_can_be_read_without_waiting() -> None:
    """``receive_now``: None while nothing came, the bytes, b"" at the end; never blocks."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    connection = listeners_module._Connection(ours, "peer")
    try:
        assert connection.receive_now() is None
        theirs.sendall(b"event")
        assert connection.receive_now() == b"event"
        theirs.shutdown(socket.SHUT_WR)
        assert connection.receive_now() == b""
    finally:
        theirs.close()
        ours.close()


def test_a_reset_connection_read_without_waiting_is_broken() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        theirs = socket.create_connection(server.getsockname()[:2])
        ours, _ = server.accept()
    ours.setblocking(False)
    connection = listeners_module._Connection(ours, "peer")
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    theirs.close()
    try:
        with pytest.raises(trio.BrokenResourceError, match=r"^socket connection broken: "):
            connection.receive_now()
    finally:
        ours.close()
    with pytest.raises(trio.ClosedResourceError):
        connection.receive_now()


# -- what each line names --------------------------------------------------------


async def test_each_datagram_names_its_peer_and_its_own_conn_id(nursery: trio.Nursery) -> None:
    """The lines of one datagram share a conn_id; the next datagram gets another."""
    metrics = Metrics()
    contexts: list[dict[str, Any]] = []

    def sink(document: Any, peer: str, transport: str) -> None:
        contexts.append(structlog.contextvars.get_contextvars())

    server = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await server.bind(("127.0.0.1", 0))
    sender = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sender.bind(("127.0.0.1", 0))
    peer = f"127.0.0.1:{sender.getsockname()[1]}"
    with trio.fail_after(10), server, sender, capture_logs() as logs:
        await nursery.start(serve_udp, server, DaemonSettings(), sink, metrics)
        await sender.sendto(b'{bad}\n{"ok":1}\n{worse}\n', server.getsockname())
        await sender.sendto(b"{bad again}", server.getsockname())
        await wait_until(lambda: _rejected_total(metrics) == 3)
        nursery.cancel_scope.cancel()
    rejected = [e for e in logs if e["event"] == "input.rejected"]
    assert [e["peer"] for e in rejected] == [peer] * 3
    first, second, third = (e["conn_id"] for e in rejected)
    assert first == second != third
    assert [(c["peer"], c["conn_id"]) for c in contexts] == [(peer, first)]


def _rejected_total(metrics: Metrics) -> float:
    return metrics.value("hipchatd_events_rejected_total", reason="invalid_json")


# -- the log bound ---------------------------------------------------------------


def _suppressed(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "input.rejected_suppressed"]


async def test_rejected_frames_log_a_bounded_number_of_lines(
    autojump_clock: trio.testing.MockClock,
) -> None:
    metrics = Metrics()
    with capture_logs() as logs:
        for i in range(10_000):
            # Source ports change; the host is the same peer.
            reject(
                metrics,
                "not_event",
                peer=f"192.0.2.7:{40000 + i % 5000}",
                transport="tcp",
                nbytes=2,
                reason="not a Sensu event",
            )
        assert len([e for e in logs if e["event"] == "input.rejected"]) == LOG_LINES_PER_PEER
        assert not _suppressed(logs)
        await trio.sleep(LOG_WINDOW)
        reject_log(metrics).flush()
        # The peer's next window starts with its lines written again.
        reject(metrics, "not_event", peer="192.0.2.7:1", transport="tcp", nbytes=2, reason="x")
    rejected = [e for e in logs if e["event"] == "input.rejected"]
    assert len(rejected) == LOG_LINES_PER_PEER + 1
    [summary] = _suppressed(logs)
    assert summary["peer"] == "192.0.2.7"
    assert summary["suppressed"] == 10_000 - LOG_LINES_PER_PEER
    assert summary["window"] == LOG_WINDOW
    assert summary["log_level"] == "warning"
    assert metrics.value("hipchatd_events_rejected_total", reason="not_event") == 10_001


async def test_a_quiet_peer_gets_its_summary_when_the_window_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RejectLog()
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(limiter.run)
            for _ in range(25):
                limiter.admit("198.51.100.1:9")
            await trio.sleep(LOG_WINDOW * 1.5)
            nursery.cancel_scope.cancel()
    [summary] = _suppressed(logs)
    assert summary["suppressed"] == 25 - LOG_LINES_PER_PEER
    assert len(limiter) == 0


async def test_peer_table_stays_at_its_cap(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RejectLog()
    written = 0
    with capture_logs() as logs:
        for i in range(20_000):
            # Distinct IPv4 hosts: each takes a place in the table.
            written += limiter.admit(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:1")
            assert len(limiter) <= MAX_PEERS_TRACKED
        assert len(limiter) == MAX_PEERS_TRACKED
        # Cycling addresses inside one /64 is one peer.
        for i in range(20_000):
            written += limiter.admit(f"[2001:db8:0:1::{i:x}]:{i % 65536}")
        assert len(limiter) == MAX_PEERS_TRACKED
        # Two windows on: every closed window is reported, the overflow summed in one line.
        for _ in range(2):
            await trio.sleep(LOG_WINDOW)
            limiter.flush()
    # Many peers together write no more than the total budget per window, plus a summary.
    assert written == LOG_LINES_TOTAL
    assert len(logs) <= 2 * (LOG_LINES_TOTAL + 1)
    reported = sum(e["suppressed"] for e in _suppressed(logs))
    assert reported == 40_000 - written


async def test_flood_of_rejected_frames_over_tcp_is_logged_bounded(
    start_daemon: StartDaemon, autojump_clock: trio.testing.MockClock
) -> None:
    """10,000 `{}` lines from one peer: every one counted, a few lines logged, the rest summed."""
    with trio.fail_after(2 * LOG_WINDOW), capture_logs() as logs:
        app = await start_daemon()
        await send_tcp(app.tcp_addresses[0], b"{}\n" * 10_000)
        await wait_until(lambda: _rejected(app, "not_event") == 10_000)
        await trio.sleep(LOG_WINDOW)
        await wait_until(lambda: bool(_suppressed(logs)))
    assert len([e for e in logs if e["event"] == "input.rejected"]) == LOG_LINES_PER_PEER
    [summary] = _suppressed(logs)
    assert summary["peer"] == "127.0.0.1"
    assert summary["suppressed"] == 10_000 - LOG_LINES_PER_PEER


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_refused_peers_are_logged_bounded(
    start_daemon: StartDaemon, transport: str, autojump_clock: trio.testing.MockClock
) -> None:
    attempts = 3 * LOG_LINES_PER_PEER
    with trio.fail_after(2 * LOG_WINDOW), capture_logs() as logs:
        app = await start_daemon(allow_from=_nets("10.0.0.0/8"))
        assert app.udp_address is not None
        for _ in range(attempts):
            if transport == "tcp":
                await send_tcp(app.tcp_addresses[0], b"{}")
            else:
                await send_udp(app.udp_address, b"{}")
        await wait_until(lambda: _rejected(app, "not_allowed") == attempts)
        await trio.sleep(LOG_WINDOW)
        await wait_until(lambda: bool(_suppressed(logs)))
    refused = [e for e in logs if e.get("reason") == "peer not in hipchatd.allow_from"]
    assert len(refused) == LOG_LINES_PER_PEER
    [summary] = _suppressed(logs)
    assert summary["suppressed"] == attempts - LOG_LINES_PER_PEER
