"""PostgreSQL down is not an outage: accept into the local SQLite spool, forward it later.

Sensu never reads a socket handler's reply, so a daemon whose spool is on a
PostgreSQL server cannot push back on Sensu while the server is
unreachable. :class:`FallbackSpool` is the PostgreSQL spool with the
SQLite spool file in ``state_dir`` beside it; its dialect chooses per
commit:

- **Start**: a server that does not answer at all (no connection, a
  timeout, a name that does not resolve, a server starting up or shutting
  down) does not stop the start: the spool opens *degraded* on the local
  file, and creates or migrates the schema once the server answers. A
  server that answers and refuses (a wrong password, a database that does
  not exist, a schema newer than this hipchatd) still fails the start.
- **Switch-over**: the first commit (events or marks) that fails because the
  server cannot be reached (a refused or lost connection, the server shutting
  down; not a write the server refused) makes the spool degraded. That
  commit's events, and every event after it, are committed locally instead:
  they are accepted once committed there, and handed back at once as
  ``(handle, [])`` (accepted; their entries reach the lanes once forwarded,
  as ``(None, entries)``). ``spool.degraded`` is logged once, with the cause.
  A write the server refuses (a full disk, a value it cannot store) is not
  unreachability: it is handled as before (halved, refused).
- **While degraded**: nothing on the commit path waits for the server.
  Marks (delivered, attempts, dead) of entries that are on the server are
  kept in the local file (so a restart does not send those entries again)
  and written there first when the server answers; until then this
  instance's lane leases hold nothing, so no lane's entries are read (and
  sent) again before their marks are written. Locally accepted entries are
  not delivered yet: a lane's owner is whoever holds its lease on the
  server, so during an outage those notifications wait; nothing is lost.
- **Forwarding**: at each of the spool's looks (every ``RETRY_POLL``) a
  probe connects on a thread of its own; once it succeeds, the writer opens
  the schema if it never did, writes the kept marks, then forwards the
  oldest ``FORWARD_EVENTS`` local events per step, each step one server
  transaction (events named by the local spool's origin and their local id,
  so a copy repeated after a crash stores nothing twice) and then one local
  transaction deleting them. New events keep going local until the backlog
  is empty, so acceptance order holds across the switch. When nothing is
  left, ``spool.caught_up`` is logged (entries forwarded, seconds degraded)
  and commits go to the server again.
- **Restart**: marks and entries left by an earlier run are written and
  forwarded while the spool opens, before the server's pending entries are
  read, so a forward cut short by ``kill -9`` (copied, not yet deleted) is
  found by its name and not stored twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from typing import Any, Final

import outcome
import structlog
import trio

from hipchatd.config import SpoolSettings
from hipchatd.delivery.spool.gated import GatedLeases
from hipchatd.delivery.spool.group import Marks
from hipchatd.delivery.spool.postgresql import daemon as pg
from hipchatd.delivery.spool.postgresql import forward
from hipchatd.delivery.spool.postgresql.connect import Server, Session, Unreachable
from hipchatd.delivery.spool.sqlite import files, local
from hipchatd.delivery.spool.sqlite.writer import DIALECT as SQLITE
from hipchatd.delivery.spool.store import Entry, EventEntries, LaneLeases, OnCommitted, SpoolError

__all__ = ["FORWARD_EVENTS", "FallbackDialect", "FallbackSpool", "LocalFile"]

log = structlog.get_logger()

#: Local events copied to the server per forwarding transaction: a step stays short (new
#: events wait for the writer meanwhile) and the backlog still drains far faster than
#: events arrive (one step is a few milliseconds).
FORWARD_EVENTS: Final = 256

#: Marks as GroupCommit writes them: attempts (error, id), dead (dead_at, reason, error, id).
_Attempts = list[tuple[str, int]]
_Dead = list[tuple[float, str, str | None, int]]

#: ``spool.degraded``'s reason when the server could not be reached at start.
AT_START: Final = (
    "PostgreSQL cannot be reached at start: accepting into the local spool until it answers"
)


@dataclasses.dataclass(slots=True)
class LocalFile:
    """The local spool file: its connection, its forwarding origin and what it holds."""

    opened: files.Opened
    origin: uuid.UUID
    #: the id of the next entry committed here.
    next_id: int
    #: pending entries here (not yet forwarded).
    held: int
    #: marks kept here for entries on the server (not yet written there).
    marks: int

    @classmethod
    def open(cls, state_dir: str) -> LocalFile:
        """Open (creating if needed) ``state_dir/spool.sqlite3``. Blocks; raises SpoolError."""
        opened = files.open_spool_file(state_dir)
        try:
            found = local.origin(opened.conn)
            marks = local.marks_held(opened.conn)
        except SQLITE.errors as exc:
            files.release(opened.conn, opened.lock)
            raise SpoolError(f"cannot open the spool {opened.path}: {exc}") from exc
        return cls(opened, found, opened.next_id, opened.pending, marks)

    @property
    def path(self) -> str:
        return self.opened.path

    def close(self) -> None:
        files.release(self.opened.conn, self.opened.lock)


class FallbackDialect:
    """The server's writes while it answers, the local file's while it does not."""

    def __init__(self, server: Server, local_file: LocalFile) -> None:
        self._server = server
        self._pg = pg.PostgresDialect(server)
        #: what a failed write to the server raises.
        self.server_errors = self._pg.errors
        self.errors: tuple[type[Exception], ...] = (*self.server_errors, *SQLITE.errors)
        self.local = local_file
        #: why the spool is degraded (the server's error), None while it is not.
        self.cause: str | None = None
        #: time.monotonic() when the spool became degraded.
        self.since = 0.0
        #: entries forwarded since the spool became degraded, and since the start.
        self.forwarded_now = 0
        self.forwarded = 0
        #: the last probe answered, and nothing failed since: the server may be written to.
        self.reachable = False
        #: the schema was created or migrated on the server (at start, or once it answered).
        self.opened = True
        #: local ids copied to the server but not deleted here yet.
        self._copied: list[int] = []

    def degrade(
        self,
        cause: str,
        reason: str = "PostgreSQL cannot be reached: accepting into the local spool",
    ) -> None:
        """Commit locally from now on; logs ``spool.degraded`` (once per outage)."""
        self.reachable = False
        if self.cause is not None:
            return
        self.cause = cause
        self.since = time.monotonic()
        self.forwarded_now = 0
        log.warning(
            "spool.degraded",
            path=self._server.label,
            local=self.local.path,
            error=cause,
            reason=reason,
        )

    def write_events(
        self, conn: Session, batch: list[EventEntries]
    ) -> tuple[int, list[EventEntries]]:
        if self.cause is None:
            try:
                return self._pg.write_events(conn, batch)
            except Exception as exc:
                if not forward.is_unreachable(exc):
                    raise
                self.degrade(self._server.cause(exc))
                # The connection may have broken during COMMIT: these may be on the server.
                return self._write_local(batch, maybe_stored=True)
        return self._write_local(batch, maybe_stored=False)

    def _write_local(
        self, batch: list[EventEntries], *, maybe_stored: bool
    ) -> tuple[int, list[EventEntries]]:
        """Commit ``batch`` to the local file, numbered from its ids: each event comes back as
        ``(handle, [])`` (accepted; its entries go to the lanes once forwarded).

        With ``maybe_stored``, each event keeps its name on the server, so forwarding finds
        it there if the failed write did commit.
        """
        next_id = self.local.next_id
        renumbered: list[EventEntries] = []
        names: list[tuple[int, local.Name]] = []
        for handle, entries in batch:
            moved = [dataclasses.replace(e, id=next_id + k) for k, e in enumerate(entries)]
            renumbered.append((handle, moved))
            names.append((next_id, (self._pg.origin, entries[0].id)))
            next_id += len(entries)
        conn = self.local.opened.conn
        written, _ = SQLITE.write_events(conn, renumbered)
        self.local.next_id = next_id
        self.local.held += written
        if maybe_stored:
            try:
                local.name(conn, names)
            except SQLITE.errors as exc:
                # Committed here all the same: at worst a copy is stored twice (sent twice).
                log.error("spool.name_failed", local=self.local.path, error=str(exc))
        return written, [(handle, []) for handle, _ in batch]

    def write_marks(
        self, conn: Session, attempts: _Attempts, dead: _Dead, delivered: list[int]
    ) -> tuple[int, int]:
        # Marks kept here go first: a mark goes to the server only when none waits here.
        if self.cause is None or (self.reachable and self.opened and not self.local.marks):
            try:
                return self._pg.write_marks(conn, attempts, dead, delivered)
            except Exception as exc:
                if not forward.is_unreachable(exc):
                    raise
                self.degrade(self._server.cause(exc))
        found = (attempts, dead, delivered)
        self.local.marks += local.keep_marks(self.local.opened.conn, self._server.label, found)
        return 0, 0

    def write_kept_marks(self, conn: Session) -> tuple[int, int, int]:
        """Write the marks kept here to the server, then forget them here. Blocks.

        (removed from pending, moved to dead, marks dropped because they were
        kept for another server). Writing them again after a crash between
        the two changes nothing for entries no longer pending (an attempt
        may be counted twice).
        """
        found, last, foreign = local.marks(self.local.opened.conn, self._server.label)
        removed, dead = self._pg.write_marks(conn, *found)
        local.drop_marks(self.local.opened.conn, last)
        self.local.marks = 0
        return removed, dead, foreign

    def write_round(
        self, conn: Session, marks: Marks, batch: list[EventEntries]
    ) -> tuple[int, int, int, list[EventEntries]]:
        maybe_stored = False
        if self.cause is None:
            try:
                return self._pg.write_round(conn, marks, batch)
            except Exception as exc:
                if not forward.is_unreachable(exc):
                    raise
                self.degrade(self._server.cause(exc))
                # The connection may have broken during COMMIT: these may be on the server.
                maybe_stored = True
        removed, dead = self.write_marks(conn, marks.attempts, marks.dead, marks.delivered)
        written, committed = self._write_local(batch, maybe_stored=maybe_stored)
        return removed, dead, written, committed

    def forward_step(self, session: Session) -> list[EventEntries]:
        """Copy the oldest local events to the server, then delete them here. Blocks.

        The events as committed on the server (ids final, handle None: each
        was handed back as accepted when committed here); empty when nothing
        is left. Raises psycopg's error when the server fails (nothing
        deleted here), SQLite's when the file does (what was copied is
        deleted at the next step, before anything else is read).
        """
        conn = self.local.opened.conn
        if self._copied:
            self._delete_local(self._copied)
        found = local.oldest(conn, FORWARD_EVENTS)
        if not found:
            return []
        # One origin per step: the oldest events under the local spool's origin, or those the
        # server may hold under the name they had there (renumbered to it).
        origin = self.local.origin if found[0][1] is None else found[0][1][0]
        events: list[list[Entry]] = []
        batch: list[EventEntries] = []
        for entries, named in found:
            if (self.local.origin if named is None else named[0]) != origin:
                break
            events.append(entries)
            if named is not None:
                start = named[1]
                entries = [dataclasses.replace(e, id=start + k) for k, e in enumerate(entries)]
            batch.append((None, entries))
        _, committed = forward.forward(session, batch, origin)
        self._copied = [e.id for entries in events for e in entries]
        count = len(self._copied)
        self.forwarded_now += count
        self.forwarded += count
        try:
            self._delete_local(self._copied)
        except SQLITE.errors as exc:
            log.error("spool.forward_delete_failed", local=self.local.path, error=str(exc))
        return committed

    def _delete_local(self, ids: list[int]) -> None:
        conn = self.local.opened.conn
        removed, _ = SQLITE.write_marks(conn, [], [], ids)
        self.local.held -= removed
        self._copied = []
        # Names are kept by the id of an event's first entry: among ``ids``.
        local.forget(conn, ids)

    def is_transient(self, exc: Exception) -> bool:
        if isinstance(exc, SQLITE.errors):
            return SQLITE.is_transient(exc)
        return self._pg.is_transient(exc)

    def does_not_fit(self, exc: Exception) -> bool:
        if isinstance(exc, SQLITE.errors):
            return SQLITE.does_not_fit(exc)
        return self._pg.does_not_fit(exc)

    def log_keys(self, exc: Exception) -> dict[str, Any]:
        if isinstance(exc, SQLITE.errors):
            return SQLITE.log_keys(exc)
        return self._pg.log_keys(exc)


class FallbackSpool(pg.PostgresSpool):
    """The PostgreSQL spool that accepts into ``state_dir`` while the server is unreachable.

    Create with ``await FallbackSpool.open_with_fallback``. ``counts()``'s
    ``pending`` includes the entries held in the local file;
    ``fallback_counts()`` says how many, and how many were forwarded since
    start; :attr:`degraded` says why it runs on the local file (``/healthz``).
    """

    def __init__(
        self,
        server: Server,
        session: Session,
        dialect: FallbackDialect,
        *,
        counts: tuple[int, int],
        max_events: int,
        opened: bool = True,
    ) -> None:
        super().__init__(server, session, counts=counts, max_events=max_events, dialect=dialect)
        self._fallback = dialect
        self._writer.pending += dialect.local.held
        dialect.opened = opened
        self._probing = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._gated: GatedLeases | None = None

    @classmethod
    async def open_with_fallback(
        cls, settings: SpoolSettings, state_dir: str, *, max_events: int
    ) -> FallbackSpool:
        """Open the server, then the local file; write and forward what an earlier run kept.

        A server that does not answer at all leaves the spool degraded (the
        schema is opened once it answers); one that refuses raises SpoolError
        as ``PostgresSpool.open`` does, and the local file raises as
        ``SqliteSpool.open`` does. A server that fails while the earlier
        run's marks and entries are written leaves the spool degraded too.
        """
        unreachable: Unreachable | None = None
        try:
            server, session, counts = await pg.open_session(settings)
        except Unreachable as exc:
            unreachable = exc
            server = Server.of(settings)
            session, counts = Session(server), (0, 0)
        try:
            local_file = await trio.to_thread.run_sync(LocalFile.open, state_dir)
        except BaseException:
            session.close()
            raise
        log.info(
            "spool.local_opened",
            local=local_file.path,
            held=local_file.held,
            marks=local_file.marks,
        )
        dialect = FallbackDialect(server, local_file)
        spool = cls(
            server,
            session,
            dialect,
            counts=counts,
            max_events=max_events,
            opened=unreachable is None,
        )
        if unreachable is not None:
            dialect.degrade(unreachable.cause, AT_START)
        elif local_file.held or local_file.marks:
            dialect.degrade(
                "entries or marks kept in the local spool by an earlier run",
                "writing to PostgreSQL what an earlier run kept in the local spool",
            )
            dialect.reachable = True
            await spool._catch_up(None, whole=True)
        return spool

    @property
    def degraded(self) -> str | None:
        """Why accepted events are held in the local file, or None when they are not."""
        fallback = self._fallback
        if fallback.cause is None:
            return None
        return (
            f"local spool only: PostgreSQL {self._path} unreachable ({fallback.cause}); "
            f"{fallback.local.held} entries held in {fallback.local.path}"
        )

    @property
    def opened(self) -> bool:
        """The schema was created or migrated on the server (at start, or once it answered)."""
        return self._fallback.opened

    @property
    def ready(self) -> bool:
        """The schema is open and no mark waits in the local file: lanes may be read."""
        return self.opened and not self._fallback.local.marks

    def fallback_counts(self) -> dict[str, int]:
        """Entries held in the local file now, and forwarded to the server since start."""
        return {"held": self._fallback.local.held, "forwarded": self._fallback.forwarded}

    def file_problem(self) -> str | None:
        """Why the local file would not keep what is committed to it, else None."""
        opened = self._fallback.local.opened
        return files.file_problem(opened.path, opened.identity)

    def lane_leases(self) -> LaneLeases:
        """The schema's lane leases, holding nothing until :attr:`ready`.

        Before the schema is open (a start while the server did not answer)
        there is nothing to lease; while marks wait in the local file, the
        entries they mark are still pending on the server, and reading them
        would send them again.
        """
        if self._gated is None:
            self._gated = GatedLeases(
                super().lane_leases(), ready=lambda: self.ready, opened=lambda: self.opened
            )
        return self._gated

    def _look_asked(self) -> bool:
        return self._fallback.cause is not None and self._fallback.reachable

    async def _look(self, on_committed: OnCommitted) -> None:
        if self._fallback.cause is None:
            await super()._look(on_committed)
        elif self._fallback.reachable:
            await self._catch_up(on_committed, whole=False)
        else:
            self._probe()

    async def _catch_up(self, on_committed: OnCommitted | None, *, whole: bool) -> None:
        """Open the schema (if never opened), write the kept marks, forward one step (all
        with ``whole``); caught up once nothing is left."""
        if not self.opened and not await self._open_schema():
            return
        while True:
            if self._fallback.local.marks and not await self._write_kept_marks():
                return
            committed = await self._forward_step()
            if committed is None:
                return
            if not committed:
                self._caught_up()
                return
            if on_committed is not None:
                on_committed(committed)
            if not whole:
                # More to forward: the write loop comes back without waiting for its poll.
                self._writer.nudge()
                return

    async def _open_schema(self) -> bool:
        """Create or migrate the schema on the server that now answers; False if it failed."""
        try:
            counts, found = await self._worker.call(pg.open_schema)
        except SpoolError as exc:
            cause = exc.__cause__
            unreachable = cause is not None and forward.is_unreachable(cause)
            # A schema this hipchatd cannot use: accepting goes on, the operator reads why.
            (log.warning if unreachable else log.error)(
                "spool.open_failed", error=str(exc), held=self._fallback.local.held
            )
            self._fallback.reachable = False
            return False
        self._fallback.opened = True
        self._writer.pending = counts[0] + self._fallback.local.held
        self._writer.dead = counts[1]
        pg.log_opened(self._server, counts, found)
        return True

    async def _write_kept_marks(self) -> bool:
        fallback = self._fallback
        try:
            removed, dead, foreign = await self._worker.call(fallback.write_kept_marks)
        except (*fallback.server_errors, *SQLITE.errors) as exc:
            self._failed("spool.marks_failed", exc)
            return False
        self._writer.pending -= removed
        self._writer.dead += dead
        if foreign:
            log.warning(
                "spool.marks_dropped",
                local=fallback.local.path,
                marks=foreign,
                reason="kept for another PostgreSQL spool (hipchatd.spool changed since)",
            )
        return True

    async def _forward_step(self) -> list[EventEntries] | None:
        """One forwarding step: the events now on the server (empty: none left); None if it
        failed (logged; tried again after the next probe)."""
        fallback = self._fallback
        try:
            return await self._worker.call(fallback.forward_step)
        except (*fallback.server_errors, *SQLITE.errors) as exc:
            # Unreachable again: forwarding resumes after the next probe. Anything else (the
            # server refusing what it is given) is logged as an error and tried again the same
            # way: the entries stay held, and accepting goes on, rather than a daemon that
            # stops (and could not start again while they are held).
            self._failed("spool.forward_failed", exc)
            return None

    def _failed(self, event: str, exc: Exception) -> None:
        fallback = self._fallback
        fallback.reachable = False
        if isinstance(exc, SQLITE.errors):
            log.error(event, local=fallback.local.path, error=str(exc))
            return
        (log.warning if forward.is_unreachable(exc) else log.error)(
            event, path=self._path, error=self._server.cause(exc), held=fallback.local.held
        )

    def _caught_up(self) -> None:
        fallback = self._fallback
        log.info(
            "spool.caught_up",
            path=self._path,
            local=fallback.local.path,
            forwarded=fallback.forwarded_now,
            seconds=round(time.monotonic() - fallback.since, 3),
        )
        fallback.cause = None
        fallback.local.held = 0
        fallback.reachable = False

    def _probe(self) -> None:
        """Start a probe of the server on a thread of its own, unless one is running."""
        if self._probing:
            return
        self._probing = True
        token = self._token = self._token or trio.lowlevel.current_trio_token()
        server = self._server

        def deliver(result: outcome.Outcome[bool]) -> None:
            # After the run ended nobody waits for the answer.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._probed, result)

        trio.lowlevel.start_thread_soon(lambda: _probe_quietly(server), deliver)

    def _probed(self, result: outcome.Outcome[bool]) -> None:
        self._probing = False
        if isinstance(result, outcome.Value) and result.unwrap():
            self._fallback.reachable = True
            self._writer.nudge()

    def _after_close(self) -> None:
        self._fallback.local.close()


def _probe_quietly(server: Server) -> bool:
    """True when the server answers a new connection. Blocks (at most its connect timeout)."""
    try:
        forward.probe(server)
    except Exception as exc:
        if not forward.is_unreachable(exc):
            log.warning("spool.probe_failed", path=server.label, error=server.cause(exc))
        return False
    return True
