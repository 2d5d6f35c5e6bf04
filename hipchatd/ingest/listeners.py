"""TCP and UDP listeners: bytes from Sensu in, documents out to a sink.

The server never writes to a socket and never waits on HipChat: each
decoded document is handed to a synchronous sink, which only queues work.
Bad input is logged with the peer, byte count, reason and a preview, and
counted; it never affects another frame or connection. Those WARNINGs are
rate-limited per peer host (:mod:`hipchatd.ingest.peers`); the counters count all.

Every line logged while a connection or a datagram is handled carries its
``peer`` and a ``conn_id`` (one counter for both, so an id names one unit of
input), bound with :mod:`structlog.contextvars` in the task that reads it.

Peers outside ``allow_from`` are refused before a byte is read. At
``max_connections`` the listeners stop accepting: new connections wait in
the kernel's listen backlog, and a sender sees a real failure only when
that is full, never an accepted connection that is closed unread.
"""

from __future__ import annotations

import errno
import itertools
import math
import socket
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import structlog
import trio

from hipchatd import boundary
from hipchatd.config import DaemonSettings
from hipchatd.errors import FrameTooLarge
from hipchatd.ingest.frames import Frames, Sink, log_context, reject
from hipchatd.ingest.frames import handle_frames as _handle_frames
from hipchatd.ingest.peers import LOG_WINDOW, AllowFrom, allowed, peer_address, warn_limited
from hipchatd.metrics import Metrics
from hipchatd.reasons import RejectReason
from hipchatd.sensu.framing import Decoder, Framing

__all__ = ["ConnectionHandler", "Sink", "log_context", "reject", "serve_tcp", "serve_udp"]

log = structlog.get_logger()

#: Awaited between reads: returns at once unless accepted events are piling up.
Room = Callable[[], Awaitable[None]]


async def _always_room() -> None:
    return None


#: Bytes per receive: one call takes a typical 1-5 KB event whole.
_RECEIVE_SIZE = 65536
#: Reads of a new connection taken without waiting: one Sensu event, then its end.
_READY_READS = 2
#: The largest UDP payload IPv4 can carry.
_DATAGRAM_SIZE = 65535
#: accept(2) errors about one connection (gone, or refused by a firewall, before it was
#: accepted), not the listener: ``trio.SocketListener.accept`` skips the same ones.
_ACCEPT_SKIPPED = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ENOSR",
        "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT",
        "ETIMEDOUT",
        "ECONNRESET",
    )
    # Not every platform names every one.
    if hasattr(errno, name)
)

#: ``conn_id`` of each connection and datagram, unique within the process.
_conn_ids = itertools.count(1)


_PEER = log_context("peer")
_CONN_ID = log_context("conn_id")


def _peer_name(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        # Only an IPv6 form can be a dual-stack socket's ::ffff:10.1.2.3, the IPv4
        # peer 10.1.2.3: a plain IPv4 host (every connection, usually) is not parsed.
        if isinstance(host, str) and ":" in host:
            ip = peer_address(host)
            if ip is not None and ip.version == 4:
                host = str(ip)
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address) if address else "unknown"


def _refused(
    metrics: Metrics, allow_from: AllowFrom, address: Any, transport: str, nbytes: int = 0
) -> bool:
    """Whether the peer at ``address`` is outside ``allow_from``: then it is counted and logged.

    The caller then drops the connection or datagram unread.
    """
    host = address[0] if isinstance(address, tuple) and address else None
    if allowed(allow_from(), host):
        return False
    metrics.rejected[RejectReason.NOT_ALLOWED].inc()
    warn_limited(
        metrics,
        "connection.refused" if transport == "tcp" else "input.rejected",
        peer=_peer_name(address),
        transport=transport,
        nbytes=nbytes,
        reason="peer not in hipchatd.allow_from",
    )
    return True


class _Slots:
    """Free connection slots, shared by every listener of one handler."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        #: listeners sharing these slots; each holds at most one while it waits in accept.
        self.listeners = 1
        self._freed = trio.Event()
        self._warned_at = -math.inf

    async def take(self, listener: trio.SocketListener) -> None:
        """Wait for a free slot and for a connection queued on ``listener``; take the slot.

        While slots are plentiful (more free than listeners) the slot is
        taken at once: even if every sibling then waits in accept holding
        one, a slot is left for each. Near the limit, the slot is taken only
        once a connection is waiting, so a listener that gets none never
        holds one its siblings could use.
        """
        if self.free > self.listeners:
            # The common case, without an extra scheduling round per connection.
            self.free -= 1
            return
        while True:
            while self.free <= 0:
                self._note_full()
                await self._freed.wait()
            await trio.lowlevel.wait_readable(listener.socket)
            if self.free > 0:
                self.free -= 1
                return

    def release(self) -> None:
        self.free += 1
        self._freed.set()
        self._freed = trio.Event()

    def _note_full(self) -> None:
        now = trio.current_time()
        if now - self._warned_at >= LOG_WINDOW:
            self._warned_at = now
            log.warning(
                "connection.limit_reached",
                max_connections=self.size,
                action="new connections wait in the kernel's listen backlog",
            )


class _Connection(trio.abc.ReceiveStream):
    """An accepted Sensu connection, read-only: hipchatd never writes to one.

    ``trio.SocketStream`` prepares each connection for sending (two
    ``setsockopt`` calls and a conflict detector) and wraps each receive in a
    generator-based context manager; this reads the socket as trio's socket
    layer does (a checkpoint per read, the same errors) without either, keeps
    the peer address ``accept`` returned, and can take what the socket holds
    already without waiting (:meth:`receive_now`). ``trio.serve_listeners``
    closes what it accepted with ``trio.aclose_forcefully`` once the handler
    returns, and the handler has closed it already: closing a socket cannot
    block, so ``aclose`` never checkpoints, and neither close costs a
    scheduling round (nor the forceful one a raised and caught Cancelled).
    """

    __slots__ = ("address", "sock")

    def __init__(self, sock: socket.socket, address: Any) -> None:
        self.sock = sock
        self.address = address

    def receive_now(self) -> bytes | None:
        """What the socket holds now (b"" at its end), or None when a read would wait.

        Never blocks and is no checkpoint. Raises what ``receive_some`` raises.
        """
        try:
            return self.sock.recv(_RECEIVE_SIZE)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _stream_error(exc) from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = _RECEIVE_SIZE if max_bytes is None else max_bytes
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                data = self.sock.recv(size)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            except OSError as exc:
                raise _stream_error(exc) from exc
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    async def aclose(self) -> None:
        if self.sock.fileno() != -1:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    def __del__(self) -> None:
        # trio.serve_listeners drops a stream it accepted if its handler nursery has
        # already closed. The daemon's nursery encloses the accept loops, so that cannot
        # happen there; for any other caller, the descriptor is closed here, not leaked.
        if self.sock.fileno() != -1:
            self.sock.close()


def _stream_error(exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    """The error ``trio.SocketStream`` raises for ``exc`` from a read, in its words."""
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


class _SlotListener(trio.abc.Listener[_Connection]):
    """A listener whose ``accept`` first waits for a free connection slot.

    Past ``max_connections`` nothing is accepted: connections queue in the
    kernel's backlog (the sender's write succeeds only into a connection
    that will be read), and the kernel refuses them once that is full.
    ``accept`` skips the errors ``trio.SocketListener.accept`` skips (a
    connection gone before it was accepted) and raises the rest, resource
    exhaustion included, for ``trio.serve_listeners`` to back off.
    """

    def __init__(self, listener: trio.SocketListener, slots: _Slots) -> None:
        self.listener = listener
        self.socket = listener.socket
        self._slots = slots
        self._family = listener.socket.family

    async def accept(self) -> _Connection:
        await self._slots.take(self.listener)
        try:
            while True:
                try:
                    sock, address = await self.socket.accept()
                except OSError as exc:
                    if exc.errno == errno.EBADF:
                        raise trio.ClosedResourceError from None
                    if exc.errno not in _ACCEPT_SKIPPED:
                        raise
                else:
                    # The same descriptor as a plain socket: trio has no read that never waits.
                    plain = socket.socket(self._family, socket.SOCK_STREAM, 0, sock.detach())
                    # Said, not inherited: a read that would wait must raise, never block.
                    plain.setblocking(False)
                    return _Connection(plain, address)
        except BaseException:
            self._slots.release()
            raise

    async def aclose(self) -> None:
        await self.listener.aclose()


class ConnectionHandler:
    """Reads one Sensu connection to its end; counts and bounds open connections.

    ``allow_from`` reads the running allow list (a reload may change it),
    checked by :func:`serve_tcp` before a connection reaches the handler;
    by default it is ``settings.allow_from``.
    """

    def __init__(
        self,
        settings: DaemonSettings,
        sink: Sink,
        metrics: Metrics,
        room: Room = _always_room,
        *,
        allow_from: AllowFrom | None = None,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.metrics = metrics
        self.room = room
        self.allow_from: AllowFrom = allow_from or (lambda: settings.allow_from)
        self.slots = _Slots(settings.max_connections)
        self.active = 0
        self._idle = trio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no connection is being read."""
        await self._idle.wait()

    async def __call__(self, stream: trio.abc.ReceiveStream, peer: str) -> None:
        """Read ``stream`` to its end and close it; ``peer`` names the sender.

        Any trio stream will do (the handler never writes, nor looks at a
        socket): :func:`serve_tcp` passes accepted connections, having
        refused peers outside ``allow_from``. ``peer`` and a new ``conn_id``
        are bound for every line logged meanwhile. This is the connection's
        fault boundary: an unexpected exception is reported by
        :func:`hipchatd.boundary.caught` and ends this connection only.
        """
        # Tokens, not bound_contextvars(): a connection per event makes this per-event work.
        peer_token = _PEER.set(peer)
        conn_token = _CONN_ID.set(next(_conn_ids))
        self.active += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        self.metrics.connections_open.inc()
        try:
            await self._read(stream, peer)
        except Exception:
            boundary.caught(self.metrics, "connection")
        finally:
            self.active -= 1
            if not self.active:
                self._idle.set()
            self.metrics.connections_open.dec()
            try:
                await stream.aclose()
            finally:
                _CONN_ID.reset(conn_token)
                _PEER.reset(peer_token)

    async def _read(self, stream: trio.abc.ReceiveStream, peer: str) -> None:
        settings = self.settings
        decoder = Decoder(settings.framing, settings.max_frame_bytes)
        frames = Frames(self.sink, self.metrics, peer, "tcp")
        received = 0
        if isinstance(stream, _Connection):
            ready = await self._read_ready(stream, decoder, frames, peer)
            if ready is None:
                return
            received = ready
        # The deadline moves on each completed frame: a peer that trickles
        # bytes without ever completing an event is closed like an idle one.
        with trio.CancelScope(deadline=trio.current_time() + settings.idle_timeout) as scope:
            try:
                while True:
                    data = await stream.receive_some(_RECEIVE_SIZE)
                    if not data:
                        _handle_frames(decoder.close(), self.sink, self.metrics, peer, "tcp")
                        return
                    received += len(data)
                    # bytes() of bytes is the same object: a copy only for a bytearray.
                    if frames.feed(decoder, bytes(data)):
                        # Waiting for the spool is not the peer being idle.
                        scope.deadline = math.inf
                        await self.room()
                        scope.deadline = trio.current_time() + settings.idle_timeout
            except FrameTooLarge as exc:
                self._too_large(exc, peer)
                return
            except trio.BrokenResourceError as exc:
                log.info("connection.reset", error=str(exc))
                return
        if scope.cancelled_caught:
            self.metrics.rejected[RejectReason.IDLE_TIMEOUT].inc()
            warn_limited(
                self.metrics,
                "connection.timed_out",
                peer=peer,
                idle_timeout=settings.idle_timeout,
                nbytes=received,
                reason="no complete event within idle_timeout",
            )

    async def _read_ready(
        self, stream: _Connection, decoder: Decoder, frames: Frames, peer: str
    ) -> int | None:
        """Read what the connection holds already: None once it has ended, else the bytes read.

        A Sensu-style sender has usually written its event and half-closed
        before its connection is read: then the event and the end are read
        here, without a cancel scope or a scheduling round. At most
        ``_READY_READS`` reads, without waiting; whatever is left is read by
        ``_read``, each read a checkpoint, so a peer that keeps sending holds
        this task no longer than one that waits.
        """
        received = 0
        try:
            for _ in range(_READY_READS):
                data = stream.receive_now()
                if data is None:
                    break
                if not data:
                    _handle_frames(decoder.close(), self.sink, self.metrics, peer, "tcp")
                    return None
                received += len(data)
                if frames.feed(decoder, data):
                    await self.room()
        except FrameTooLarge as exc:
            self._too_large(exc, peer)
            return None
        except trio.BrokenResourceError as exc:
            log.info("connection.reset", error=str(exc))
            return None
        return received

    def _too_large(self, exc: FrameTooLarge, peer: str) -> None:
        """A frame past ``max_frame_bytes`` ends the connection; the frames before it count."""
        _handle_frames(exc.frames, self.sink, self.metrics, peer, "tcp")
        self.metrics.received["tcp"].inc()
        reject(
            self.metrics,
            RejectReason.FRAME_TOO_LARGE,
            peer=peer,
            transport="tcp",
            nbytes=exc.size,
            reason=str(exc),
            action="connection closed",
        )


async def serve_tcp(
    listeners: Sequence[trio.SocketListener],
    handler: ConnectionHandler,
    *,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept Sensu connections on ``listeners`` until cancelled; ``handler`` reads each.

    A peer outside the handler's ``allow_from`` is closed unread.
    ``trio.serve_listeners`` provides the accept loop and its EMFILE back-off.
    Each listener accepts only while fewer than ``max_connections``
    connections are open; the slot is freed when the handler returns.
    With ``handler_nursery``, connections live there: cancelling this task
    stops accepting (and closes the listeners) while open connections are
    still read to their end.
    """

    async def hold_slot(connection: _Connection) -> None:
        try:
            address = connection.address
            if _refused(handler.metrics, handler.allow_from, address, "tcp"):
                await connection.aclose()
                return
            await handler(connection, _peer_name(address))
        finally:
            handler.slots.release()

    handler.slots.listeners = max(1, len(listeners))
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(trio.serve_listeners, handler_nursery=handler_nursery),
            hold_slot,
            [_SlotListener(listener, handler.slots) for listener in listeners],
        )
        task_status.started()


async def serve_udp(
    sock: trio.socket.SocketType,
    settings: DaemonSettings,
    sink: Sink,
    metrics: Metrics,
    room: Room = _always_room,
    *,
    allow_from: AllowFrom | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Read datagrams from a bound UDP socket until cancelled: each is one event or NDJSON.

    A datagram from a peer outside ``allow_from`` (by default
    ``settings.allow_from``) is dropped before it is decoded. Each datagram is
    handled inside a fault boundary: an unexpected exception is reported
    (``hipchatd_internal_errors_total{where="datagram"}``), the datagram is
    dropped, and the loop reads the next one.
    """
    mode: Framing = "newline" if settings.framing == "newline" else "auto"
    permitted: AllowFrom = allow_from or (lambda: settings.allow_from)
    task_status.started()
    while True:
        data, address = await sock.recvfrom(_DATAGRAM_SIZE)
        if _refused(metrics, permitted, address, "udp", len(data)):
            continue
        peer = _peer_name(address)
        # Reset before the next datagram: this task reads them all.
        peer_token = _PEER.set(peer)
        conn_token = _CONN_ID.set(next(_conn_ids))
        try:
            _handle_datagram(data, peer, mode, settings, sink, metrics)
        except Exception:
            boundary.caught(metrics, "datagram", transport="udp", nbytes=len(data))
        finally:
            _CONN_ID.reset(conn_token)
            _PEER.reset(peer_token)
        await room()


def _handle_datagram(
    data: bytes, peer: str, mode: Framing, settings: DaemonSettings, sink: Sink, metrics: Metrics
) -> None:
    decoder = Decoder(mode, settings.max_frame_bytes)
    try:
        frames = [*decoder.feed(data), *decoder.close()]
    except FrameTooLarge as exc:
        _handle_frames(exc.frames, sink, metrics, peer, "udp")
        metrics.received["udp"].inc()
        reject(
            metrics,
            RejectReason.FRAME_TOO_LARGE,
            peer=peer,
            transport="udp",
            nbytes=len(data),
            reason=str(exc),
        )
        return
    _handle_frames(frames, sink, metrics, peer, "udp")
