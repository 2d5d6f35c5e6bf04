"""Lane leases on PostgreSQL: one sender per lane among the instances sharing a schema.

A lane is held through a row ``leases(lane, owner, expires_at)``. Every
``RENEW_EVERY`` seconds an instance runs one round, one transaction on its
own connection: it renews every row it owns (``expires_at = now() + ttl``,
its heartbeat row ``instance:<owner>`` included), gives up lanes with no
pending entry left, and claims lanes that have pending entries and no live
lease (free, or expired: its owner died or was cut off), at most its fair
share (lanes with pending entries / live instances, rounded up). Claims are
``INSERT ... ON CONFLICT (lane) DO UPDATE ... WHERE leases.expires_at <
now()``, so two instances claiming at once cannot both win. Expiry is the
server's clock alone (``now()``); the owner's own stop uses its monotonic
clock (see :mod:`hipchatd.delivery.ownership`).

News from other instances comes through ``LISTEN`` on the schema's channel,
on a connection of its own in a worker thread (psycopg's blocking
``Connection.notifies``; psycopg's async API is asyncio-only). A connection
that broke is replaced at the next wait, and that wait reports news, since
notifications sent meanwhile were lost.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from typing import Any, Final, TypeVar

import psycopg
import structlog
import trio

from hipchatd.clock import unix_now
from hipchatd.delivery.spool.group import Worker
from hipchatd.delivery.spool.postgresql import sql
from hipchatd.delivery.spool.postgresql.connect import Server, Session
from hipchatd.delivery.spool.store import Entry, Held, SpoolError

__all__ = ["HEARTBEAT", "LEASE_TTL", "RENEW_EVERY", "PgLeases", "call"]

log = structlog.get_logger()

T = TypeVar("T")

#: Seconds a lease lasts after the round that took or renewed it: a dead owner's lanes are
#: free this long after its last round, and claimed at the next round of another instance.
LEASE_TTL: Final = 10.0
#: Seconds between rounds: three rounds fit in one TTL, so one slow or failed round loses nothing.
RENEW_EVERY: Final = 3.0
#: The lane prefix of an instance's heartbeat row (lanes are ``room:``/``user:``).
HEARTBEAT: Final = "instance:"

_ROUND: Final = (
    # Renew everything this instance owns, its heartbeat row included.
    "UPDATE leases SET expires_at = now() + make_interval(secs => %(ttl)s) WHERE owner = %(me)s",
    "INSERT INTO leases (lane, owner, expires_at)"
    " VALUES (%(beat)s, %(me)s, now() + make_interval(secs => %(ttl)s))"
    " ON CONFLICT (lane) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at",
    # A lane with nothing pending needs no sender: whoever has its next entry claims it.
    "DELETE FROM leases l WHERE l.owner = %(me)s AND l.lane <> %(beat)s"
    " AND NOT EXISTS (SELECT 1 FROM pending p WHERE p.lane = l.lane)",
)
_SHARE: Final = (
    "SELECT (SELECT count(*) FROM leases WHERE starts_with(lane, %(prefix)s)"
    " AND expires_at > now()),"
    " (SELECT count(DISTINCT lane) FROM pending),"
    " (SELECT count(*) FROM leases WHERE owner = %(me)s AND lane <> %(beat)s)"
)
_CLAIM: Final = (
    "INSERT INTO leases (lane, owner, expires_at)"
    " SELECT c.lane, %(me)s, now() + make_interval(secs => %(ttl)s) FROM ("
    " SELECT p.lane FROM pending p WHERE NOT EXISTS (SELECT 1 FROM leases l"
    " WHERE l.lane = p.lane AND l.expires_at >= now())"
    " GROUP BY p.lane ORDER BY min(p.id) LIMIT %(limit)s) c"
    " ON CONFLICT (lane) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at"
    " WHERE leases.expires_at < now()"
    # xmax is 0 for a row this statement inserted, not for one it took over.
    " RETURNING lane, xmax <> 0"
)


def lease_round(conn: psycopg.Connection[Any], owner: uuid.UUID, ttl: float) -> Held:
    """Renew, give up idle lanes, claim a fair share: the lanes held after it. Blocks."""
    params: dict[str, Any] = {"me": owner, "ttl": ttl, "beat": f"{HEARTBEAT}{owner}"}
    with conn.transaction():
        for statement in _ROUND:
            conn.execute(statement, params)
        row = conn.execute(_SHARE, {**params, "prefix": HEARTBEAT}).fetchone()
        assert row is not None
        live, busy, mine = (int(value) for value in row)
        limit = max(0, math.ceil(busy / max(1, live)) - mine)
        taken: set[str] = set()
        if limit:
            claimed = conn.execute(_CLAIM, {**params, "limit": limit}).fetchall()
            taken = {lane for lane, over in claimed if over}
        lanes = conn.execute(
            "SELECT lane FROM leases WHERE owner = %(me)s AND lane <> %(beat)s", params
        ).fetchall()
    return Held(frozenset(lane for (lane,) in lanes), frozenset(taken))


def release_all(conn: psycopg.Connection[Any], owner: uuid.UUID, channel: str) -> int:
    """Delete every lease of ``owner`` and notify the channel: lanes released. Blocks."""
    with conn.transaction():
        gone = conn.execute(
            "DELETE FROM leases WHERE owner = %s AND NOT starts_with(lane, %s)",
            [owner, HEARTBEAT],
        ).rowcount
        conn.execute("DELETE FROM leases WHERE owner = %s", [owner])
        conn.execute("SELECT pg_notify(%s, 'released')", [channel])
    return gone


class _Listener:
    """The LISTEN connection, used by one worker thread at a time."""

    def __init__(self, server: Server) -> None:
        self._session = Session(server)
        self._channel = server.channel
        self._listening: psycopg.Connection[Any] | None = None

    def wait(self, timeout: float) -> bool:
        conn = self._session.get()
        if conn is not self._listening:
            conn.execute(f'LISTEN "{self._channel}"')
            fresh = self._listening is not None
            self._listening = conn
            if fresh:
                # Notifications sent while the old connection was down are lost.
                return True
        return any(True for _ in conn.notifies(timeout=timeout, stop_after=1))

    def close(self) -> None:
        self._session.close()


class PgLeases:
    """The :class:`~hipchatd.delivery.spool.store.LaneLeases` of one instance on a schema."""

    ttl = LEASE_TTL
    renew_every = RENEW_EVERY

    def __init__(self, server: Server) -> None:
        self._server = server
        #: this instance, as the ``owner`` of its rows; new at each start.
        self.owner = uuid.uuid4()
        self._worker: Worker[Session] = Worker(Session(server), server.label)
        self._listener = _Listener(server)
        self._listen_limiter = trio.CapacityLimiter(1)

    async def round(self) -> Held:
        """One lease round (see the module). Raises SpoolError when the server cannot do it."""
        owner, ttl = self.owner, self.ttl
        return await self._call("renew the lane leases", lambda c: lease_round(c, owner, ttl))

    async def read(self, after: dict[str, int]) -> list[Entry]:
        """Pending entries of these lanes above each lane's mark, and re-queued ones, by id."""
        now = unix_now()
        return await self._call("read the lanes' entries", lambda c: sql.read_lanes(c, after, now))

    async def wait(self, within: float) -> bool:
        """Wait at most ``within`` s for a notification; True also after a reconnect.

        Raises SpoolError when the server cannot be reached (the caller polls meanwhile).
        """
        try:
            return await trio.to_thread.run_sync(
                self._listener.wait, within, limiter=self._listen_limiter
            )
        except psycopg.Error as exc:
            raise SpoolError(
                f"cannot listen on the spool {self._server.label}: {self._server.cause(exc)}"
            ) from exc

    async def release(self) -> None:
        """Give up every lane, notify the other instances, close. Never raises."""
        owner, channel = self.owner, self._server.channel
        try:
            released = await self._call(
                "release the lane leases", lambda c: release_all(c, owner, channel)
            )
            log.info("lease.released", lanes=released)
        except SpoolError as exc:
            log.warning("lease.release_failed", error=str(exc))
        finally:
            session, self._worker.conn = self._worker.conn, None
            if session is not None:
                await trio.to_thread.run_sync(session.close, limiter=self._worker.limiter)
            await trio.to_thread.run_sync(self._listener.close, limiter=self._listen_limiter)

    async def _call(self, what: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        return await call(self._worker, f"cannot {what} in the spool", fn)


async def call(
    worker: Worker[Session],
    failed: str,
    fn: Callable[[psycopg.Connection[Any]], T],
    error: type[SpoolError] = SpoolError,
) -> T:
    """``fn(connection)`` on the worker's thread; a psycopg error raises ``error``.

    Its message is ``failed``, the spool's label and the cause (never the DSN).
    """
    server = worker.conn.server if worker.conn is not None else None
    try:
        return await worker.call(lambda session: fn(session.get()))
    except psycopg.Error as exc:
        cause = server.cause(exc) if server is not None else str(exc)
        raise error(f"{failed} {worker.path}: {cause}") from exc
