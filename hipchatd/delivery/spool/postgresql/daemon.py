"""The daemon's PostgreSQL spool: the :class:`~hipchatd.delivery.spool.store.Spool` on a server.

Writes are grouped as in every backend (:mod:`hipchatd.delivery.spool.group`):
``submit`` and the ``mark_*`` calls only buffer; the ``run`` task commits on
its worker thread's connection. An event is accepted once the transaction
holding its entries has committed on the server (``synchronous_commit`` as
the server is configured: with its default, ``on``, the commit is on the
server's disk). A failed commit keeps its work and is retried every
``WRITE_RETRY`` on a new connection; when the connection broke during
COMMIT, the retry finds the events that did commit (by their
``(origin, origin_id)``) and hands them out with the ids they got, so
nothing is stored twice and nothing reported accepted was not committed.

Entries ``hipchatd spool retry`` re-queued are picked up every
``RETRY_POLL`` (one indexed query). Several daemons may share a schema:
once the daemon takes the :meth:`PostgresSpool.lane_leases`, it sends only
for the lanes it holds and reads their entries (re-queued ones included)
through them, and the poll only refreshes the schema's counts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final, TypeVar

import psycopg
import structlog
import trio
from psycopg import errors as pg_errors

from hipchatd.clock import unix_now
from hipchatd.config import SpoolSettings
from hipchatd.delivery.spool.buffered import SHUTDOWN_FLUSH, BufferedSpool
from hipchatd.delivery.spool.group import Dialect, GroupCommit, Marks, Worker
from hipchatd.delivery.spool.postgresql import connect, forward, schema, sql
from hipchatd.delivery.spool.postgresql.connect import Server, Session
from hipchatd.delivery.spool.postgresql.leases import PgLeases, call
from hipchatd.delivery.spool.store import (
    DeadEntry,
    Entry,
    EventEntries,
    LaneLeases,
    OnCommitted,
    SpoolError,
    SpoolReadError,
    SpoolWriteError,
)

__all__ = [
    "COMMIT_DELAY",
    "RETRY_POLL",
    "SHUTDOWN_FLUSH",
    "PostgresSpool",
    "log_opened",
    "open_schema",
    "open_session",
]

log = structlog.get_logger()

T = TypeVar("T")

#: Seconds a group commit waits for more work: a commit costs a network round trip and the
#: server's WAL flush, so gather a little longer than SQLite's in-process append.
COMMIT_DELAY: Final = 0.005
#: Seconds between looks for entries an operator re-queued: the operator waits at most this.
RETRY_POLL: Final = 2.0


class PostgresDialect:
    """PostgreSQL's writes and errors, for group commit, on one daemon's session."""

    errors: tuple[type[Exception], ...] = (psycopg.Error, UnicodeEncodeError)

    def __init__(self, server: Server) -> None:
        self._channel = server.channel
        #: names this process's events in ``documents`` (with their ids here).
        self.origin = uuid.uuid4()
        #: first ids of events whose write failed: it may have committed all the same.
        self._uncertain: set[int] = set()

    def write_events(
        self, conn: Session, batch: list[EventEntries]
    ) -> tuple[int, list[EventEntries]]:
        return self._remembering(
            batch,
            lambda uncertain: sql.write_events(
                conn.get(), batch, self.origin, self._channel, uncertain
            ),
        )

    def write_marks(
        self,
        conn: Session,
        attempts: list[tuple[str, int]],
        dead: list[tuple[float, str, str | None, int]],
        delivered: list[int],
    ) -> tuple[int, int]:
        return sql.write_marks(conn.get(), attempts, dead, delivered)

    def write_round(
        self, conn: Session, marks: Marks, batch: list[EventEntries]
    ) -> tuple[int, int, int, list[EventEntries]]:
        args = (batch, self.origin, self._channel)
        return self._remembering(
            batch, lambda uncertain: sql.write_round(conn.get(), marks, *args, uncertain)
        )

    def _remembering(self, batch: list[EventEntries], write: Callable[[bool], T]) -> T:
        """``write(uncertain)``: True when an earlier write of some of ``batch`` failed (it
        may have committed all the same); a failure of this one makes them all uncertain."""
        firsts = {entries[0].id for _, entries in batch}
        try:
            written = write(not self._uncertain.isdisjoint(firsts))
        except BaseException:
            self._uncertain |= firsts
            raise
        self._uncertain -= firsts
        return written

    def is_transient(self, exc: Exception) -> bool:
        return connect.is_transient(exc)

    def does_not_fit(self, exc: Exception) -> bool:
        return connect.does_not_fit(exc)

    def log_keys(self, exc: Exception) -> dict[str, Any]:
        return {"sqlstate": getattr(exc, "sqlstate", None)}


class PostgresSpool(BufferedSpool[Session]):
    """The daemon's spool in a PostgreSQL schema. Create with ``await PostgresSpool.open``.

    In ``run``: each committed event's entries carry the ids the commit gave
    them; re-queued entries come within ``RETRY_POLL``. New events that do
    not fit are those the server cannot hold (a full disk, a value PostgreSQL
    cannot store). A lost connection or an unreachable server is retried
    every ``WRITE_RETRY`` on a new connection; a failure no retry can fix (a
    constraint, missing privileges) ends ``run`` with SpoolWriteError.
    """

    commit_delay = COMMIT_DELAY
    poll_every = RETRY_POLL
    library_errors = (psycopg.Error,)

    def __init__(
        self,
        server: Server,
        session: Session,
        *,
        counts: tuple[int, int],
        max_events: int,
        dialect: Dialect[Session] | None = None,
    ) -> None:
        worker = Worker(session, server.label)
        if dialect is None:
            dialect = PostgresDialect(server)
        writer = GroupCommit(worker, dialect, pending=counts[0], dead=counts[1])
        # Ids given here only name an event until its commit numbers it (``origin_id``).
        super().__init__(worker, writer, max_events=max_events, next_id=1)
        self._server = server
        self._leases: PgLeases | None = None

    @classmethod
    async def open(cls, settings: SpoolSettings, *, max_events: int) -> PostgresSpool:
        """Connect, create or migrate the schema.

        Raises SpoolError, one line naming the server (never the DSN or its
        password), the cause and what to check: the server cannot be reached
        (connect.Unreachable) or refuses the login, or the schema is newer
        than this hipchatd or holds other tables.
        """
        server, session, counts = await open_session(settings)
        return cls(server, session, counts=counts, max_events=max_events)

    def file_problem(self) -> str | None:
        """None: the server keeps the data (a failed commit shows in ``writable``)."""
        return None

    def lane_leases(self) -> LaneLeases:
        """This instance's lane leases on the schema (made at the first call).

        From then on the poll leaves re-queued entries to the lanes' owners
        and counts the schema's entries, every instance's.
        """
        if self._leases is None:
            self._leases = PgLeases(self._server)
        return self._leases

    async def load_pending(self) -> list[Entry]:
        """Every pending entry, in acceptance order. Call once at start, before ``run``.

        Entries an operator re-queued while the daemon was down come back like
        the rest, with attempts and error reset and ``accepted_at`` now.
        """
        return await self._read("the pending entries", partial(sql.load_pending, now=unix_now()))

    async def load_documents(self, ids: Sequence[int]) -> dict[int, str]:
        """The documents of these pending entries; ids not pending are absent.

        Raises SpoolReadError when the server cannot be read.
        """
        return await self._read("event documents", partial(sql.load_documents, ids=list(ids)))

    async def list_dead(self) -> list[DeadEntry]:
        """Every dead-lettered entry, oldest id first."""
        return await self._read("the dead entries", sql.list_dead)

    async def _read(self, what: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        return await call(self._worker, f"cannot read {what} from the spool", fn, SpoolReadError)

    def _write_error(self, exc: Exception) -> SpoolWriteError:
        return SpoolWriteError(
            f"cannot commit to the spool {self._path}: {self._server.cause(exc)}"
        )

    async def _look(self, on_committed: OnCommitted) -> None:
        if self._leases is not None:
            await self._count()
            return
        try:
            now = unix_now()
            entries, dead = await self._worker.call(lambda session: sql.pick_up(session.get(), now))
        except psycopg.Error as exc:
            if not connect.is_transient(exc):
                raise SpoolReadError(
                    f"cannot read re-queued entries from the spool {self._path}: "
                    f"{self._server.cause(exc)}"
                ) from exc
            log.error("spool.poll_failed", path=self._path, error=self._server.cause(exc))
            return
        self._writer.dead = dead
        if entries:
            self._writer.pending += len(entries)
            log.info("spool.requeued", entries=len(entries), ids=[e.id for e in entries[:20]])
            on_committed([(None, entries)])

    async def _count(self) -> None:
        """Refresh the counts from the schema: other instances deliver entries this one took."""
        try:
            pending, dead = await self._worker.call(lambda session: sql.count(session.get()))
        except psycopg.Error as exc:
            if not connect.is_transient(exc):
                raise SpoolReadError(
                    f"cannot count the entries of the spool {self._path}: {self._server.cause(exc)}"
                ) from exc
            log.error("spool.poll_failed", path=self._path, error=self._server.cause(exc))
            return
        self._writer.pending, self._writer.dead = pending, dead

    def _release(self) -> Callable[[Session], None]:
        return Session.close


async def open_session(settings: SpoolSettings) -> tuple[Server, Session, tuple[int, int]]:
    """(server, session, (pending, dead)); logs ``spool.opened``.

    Raises SpoolError as :meth:`PostgresSpool.open` says; connect.Unreachable
    (a SpoolError) when no server answered at all.
    """
    server = Server.of(settings)
    session, counts, found = await trio.to_thread.run_sync(_open, server)
    log_opened(server, counts, found)
    return server, session, counts


def log_opened(server: Server, counts: tuple[int, int], found: int) -> None:
    """``spool.opened``: the schema is current (``found``: the version it had, 0 for none)."""
    log.info(
        "spool.opened",
        path=server.label,
        backend="postgresql",
        pending=counts[0],
        dead=counts[1],
        schema_version=schema.SCHEMA_VERSION,
        created=found == 0,
    )


def _open(server: Server) -> tuple[Session, tuple[int, int], int]:
    """(session, (pending, dead), schema version found). Blocks."""
    session = Session(server)
    try:
        try:
            session.get()
        except psycopg.Error as exc:
            error = connect.cannot_open(server, exc, connect.CONNECT_HINT)
            if forward.unreachable_at_login(server, exc):
                raise connect.Unreachable(str(error), server.cause(exc)) from exc
            raise error from exc
        counts, found = open_schema(session)
    except BaseException:
        session.close()
        raise
    return session, counts, found


def open_schema(session: Session) -> tuple[tuple[int, int], int]:
    """Create or migrate the schema, then count: ((pending, dead), schema version found).

    Blocks. Raises SpoolError naming the fix, ``from`` psycopg's error when there is one.
    """
    server = session.server
    try:
        conn = session.get()
        found = schema.migrate(conn, server.schema, server.label)
        counts = sql.count(conn)
    except schema.SchemaMismatch as exc:
        raise SpoolError(f"cannot open the PostgreSQL spool {server.label}: {exc}") from exc
    except pg_errors.LockNotAvailable as exc:
        raise connect.cannot_open(
            server,
            exc,
            f"waited {schema.MIGRATION_LOCK_TIMEOUT_MS / 1000:g} s for a lock on the schema;"
            " end the session holding it (see pg_locks) and start hipchatd again",
        ) from exc
    except psycopg.Error as exc:
        raise connect.cannot_open(
            server, exc, "check that the role may create the schema and its tables"
        ) from exc
    return counts, found
