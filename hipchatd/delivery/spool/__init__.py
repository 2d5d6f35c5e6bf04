"""The spool: accepted events on disk until HipChat confirms them, in embedded SQLite.

An event counts as accepted once its entries (one per target) are committed
here. An entry leaves ``pending`` only when HipChat confirms delivery
(``mark_delivered``) or when it is moved to ``dead`` with a reason
(``mark_dead``). Nothing else deletes a pending entry: a full spool refuses
new events and keeps the oldest.

Writes are grouped. ``submit`` and the ``mark_*`` calls are synchronous and
only buffer; the ``run`` task commits what gathered within ``COMMIT_DELAY``
(or as soon as ``BATCH`` items are waiting) in one transaction on a worker
thread, then hands each new event's entries, with their ids and the handle
the event was submitted with, to ``on_committed``.
One connection, used by one worker thread at a time (a ``CapacityLimiter(1)``).

Durability: WAL journal with ``synchronous=NORMAL``. A commit survives the
process dying in any way, ``kill -9`` included, because the WAL is in the
OS page cache by then. A power loss or kernel crash may lose the last
commits before a checkpoint (SQLite's documented trade-off for NORMAL in WAL
mode); it never corrupts the file.

Marks (delivered, dead, attempts) commit in their own transaction, before
new entries: they free space, and a batch of new events that cannot be
written never holds them back. A batch of new events that does not fit
(``SQLITE_FULL``: the disk, or the file's size limit) is halved until its
pieces fit; an event that alone cannot be written is refused (it was never
accepted): one ``event.refused`` ERROR line, and ``on_refused`` is told.
Any other failed commit is retried whole every ``WRITE_RETRY``.

Schema (``PRAGMA user_version`` = ``SCHEMA_VERSION``)::

    documents(id INTEGER PRIMARY KEY, entries, document)
    pending(id INTEGER PRIMARY KEY AUTOINCREMENT, accepted_at, source, check_name,
            target, attempts, last_error, requeued, document_id)
    dead(id INTEGER PRIMARY KEY, accepted_at, dead_at, source, check_name, target,
         attempts, reason, error, document_id)

``target`` is the Target as a JSON object. The event document is stored once
per event however many targets it has: ``documents.id`` is the id of the
event's first entry, and its ``entries`` (one per target) have the ids
``id .. id + entries - 1`` (ids are handed out consecutively per event and
never reused), each with ``document_id`` = ``documents.id``. So whether a
document is still needed is two primary-key range probes (one into
``pending``, one into ``dead``), and a document is deleted in the
transaction that removes its last entry. ``id`` is acceptance order, so a
dead entry keeps its id when ``hipchatd spool retry`` moves it back.
Version 1 (a copy of the document in every entry) is migrated in place, in
one transaction, when the daemon opens it.

The daemon remembers the file's device and inode at open; ``file_problem``
(``/healthz``) and the writer notice when the file is deleted or replaced
while it runs: nothing written after that would survive a restart.

Operator commands (``hipchatd spool list|retry|purge``, see ``add_arguments``
and ``run``) open a second connection to the same file while the daemon runs.
``retry`` moves dead rows back to ``pending`` with ``requeued = 1``; the daemon
notices another connection's commit (``PRAGMA data_version``) within
``RETRY_POLL``, resets those entries' attempts and error, sets their
``accepted_at`` to the pickup time (so ``max_age`` starts over: a retried
alert gets a full delivery window) and hands them to ``on_committed``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import math
import os
import pwd
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from itertools import chain
from pathlib import Path
from typing import Any, Final, TypeAlias, TypeVar

import structlog
import trio

from hipchatd.clock import unix_now
from hipchatd.delivery.routing import Target
from hipchatd.errors import HipchatdError
from hipchatd.sensu.events import Event

__all__ = [
    "BATCH",
    "COMMIT_DELAY",
    "LOCK_FILE",
    "MEMORY",
    "RETRY_POLL",
    "SCHEMA_VERSION",
    "SHUTDOWN_FLUSH",
    "SPOOL_FILE",
    "WRITE_RETRY",
    "DeadEntry",
    "Entry",
    "EventEntries",
    "Spool",
    "SpoolError",
    "SpoolReadError",
    "SpoolWriteError",
    "add_arguments",
    "format_age",
    "run",
]

log = structlog.get_logger()

T = TypeVar("T")

#: ``state_dir`` value for an in-memory database: same code, nothing kept across restarts.
MEMORY: Final = ":memory:"
#: The database file inside ``state_dir``.
SPOOL_FILE: Final = "spool.sqlite3"
#: flock()ed by the daemon that has the spool open (the operator commands do not take it).
LOCK_FILE: Final = "spool.lock"
SCHEMA_VERSION: Final = 2
#: Seconds a group commit waits for more work: far below HipChat latency, many events per commit.
COMMIT_DELAY: Final = 0.002
#: Buffered items (new entries + marks) that start a commit without waiting for COMMIT_DELAY;
#: also the most new entries one transaction takes.
BATCH: Final = 1024
#: New entries waiting for their commit before readers pause (about 6 MB of 3 KB events).
HIGH_WATER: Final = 2 * BATCH
#: Seconds between checks for entries that ``hipchatd spool retry`` re-queued.
RETRY_POLL: Final = 2.0
#: Seconds before a failed commit is tried again (disk full, I/O error, lock held too long).
WRITE_RETRY: Final = 1.0
#: Seconds a cancelled ``run`` (or ``aclose``) may spend committing what is buffered.
SHUTDOWN_FLUSH: Final = 2.0
#: Bytes per database page, for a new spool: a typical 3 KB event fills a 4 KB page alone;
#: 16 KB pages hold five, which doubled measured insert throughput.
PAGE_SIZE: Final = 16384
#: Milliseconds SQLite waits for another connection's lock (the operator commands).
BUSY_TIMEOUT_MS: Final = 5000
#: Bytes: WAL size kept after a checkpoint, so a burst does not leave a huge file behind.
JOURNAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
#: Parameters per ``IN (...)``: below SQLite's historical 999-variable limit.
_CHUNK: Final = 500
#: KiB of page cache: a full BATCH transaction (about 3 MB of 3 KB events, plus the pages its
#: deletes touch) stays in memory instead of spilling to the WAL before it commits (the
#: default is 2 MB). Measured: about 20% less CPU per delete, 5-10% less per insert.
_CACHE_KIB: Final = 4096
#: Characters of an error shown by ``hipchatd spool list``.
_ERROR_COLUMN: Final = 60
_STATE_DIR_HINT: Final = "set hipchatd.state_dir in the configuration or pass --state-dir"

#: The current schema, for a new spool file.
_SCHEMA: Final[tuple[str, ...]] = (
    """CREATE TABLE documents (
        id INTEGER PRIMARY KEY,
        entries INTEGER NOT NULL,
        document TEXT NOT NULL
    )""",
    """CREATE TABLE pending (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        accepted_at REAL NOT NULL,
        source TEXT NOT NULL,
        check_name TEXT NOT NULL,
        target TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        requeued INTEGER NOT NULL DEFAULT 0,
        document_id INTEGER NOT NULL
    )""",
    # Partial: empty in normal operation, so it costs nothing per insert.
    "CREATE INDEX pending_requeued ON pending (id) WHERE requeued = 1",
    """CREATE TABLE dead (
        id INTEGER PRIMARY KEY,
        accepted_at REAL NOT NULL,
        dead_at REAL NOT NULL,
        source TEXT NOT NULL,
        check_name TEXT NOT NULL,
        target TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        reason TEXT NOT NULL,
        error TEXT,
        document_id INTEGER NOT NULL
    )""",
    # count(*) walks this small index instead of every row.
    "CREATE INDEX dead_dead_at ON dead (dead_at)",
)

_ENTRY_COLUMNS: Final = (
    "id, accepted_at, document_id, source, check_name, target, attempts, last_error"
)
_INSERT_DOCUMENTS: Final = "INSERT INTO documents (id, entries, document) VALUES (?, ?, ?)"
_INSERT_ENTRIES: Final = (
    "INSERT INTO pending (id, accepted_at, source, check_name, target, document_id)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_ATTEMPT: Final = "UPDATE pending SET attempts = attempts + 1, last_error = ? WHERE id = ?"
_TO_DEAD: Final = (
    "INSERT INTO dead (id, accepted_at, dead_at, source, check_name, target, attempts,"
    " reason, error, document_id)"
    " SELECT id, accepted_at, ?, source, check_name, target, attempts, ?,"
    " coalesce(?, last_error), document_id FROM pending WHERE id = ?"
)
#: One run of consecutive ids: delivery confirms in acceptance order, so a batch of
#: deliveries is usually a single run, deleted by one statement.
_DELETE_RUN: Final = "DELETE FROM pending WHERE id BETWEEN ? AND ?"
#: An entry of document d has an id in d .. d + entries - 1: no index on document_id needed.
_UNUSED: Final = (
    "NOT EXISTS (SELECT 1 FROM pending WHERE pending.id"
    " BETWEEN documents.id AND documents.id + documents.entries - 1)"
    " AND NOT EXISTS (SELECT 1 FROM dead WHERE dead.id"
    " BETWEEN documents.id AND documents.id + documents.entries - 1)"
)
#: The documents a run of removed ids (first, last) may have held: from the one holding
#: ``first`` up to ``last``, deleted when no entry is left in their range.
_DELETE_UNUSED_DOCUMENTS: Final = (
    "DELETE FROM documents WHERE id BETWEEN"
    " (SELECT max(id) FROM documents WHERE id <= ?1) AND ?2 AND " + _UNUSED
)
_REQUEUED: Final = f"SELECT {_ENTRY_COLUMNS} FROM pending WHERE requeued = 1 ORDER BY id"
_RESET_REQUEUED: Final = (
    "UPDATE pending SET requeued = 0, attempts = 0, last_error = NULL, accepted_at = ?"
    " WHERE requeued = 1"
)
#: SQLite result codes for "this does not fit": the disk or the file's size limit is
#: full, or one value exceeds SQLite's length limit. Smaller pieces may still fit.
_DOES_NOT_FIT: Final = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_TOOBIG})


class SpoolError(HipchatdError):
    """The spool cannot be opened or used; the message names the path and the fix.

    No ``sqlite3`` exception leaves this module: each is raised as a SpoolError
    (or a subclass) ``from`` the original, so callers catch hipchatd's types only.
    """


class SpoolReadError(SpoolError):
    """Reading the spool back failed (``load_pending``, ``load_documents``, ``list_dead``).

    The message names the operation, the path and SQLite's cause; the spool
    stays usable, so a caller may try again later.
    """


class SpoolWriteError(SpoolError):
    """A commit failed in a way retrying cannot fix (a constraint or misuse: a bug).

    Ends ``run``. Failures a retry may fix (a full disk, an I/O error, a lock)
    never raise: ``run`` logs them and retries every ``WRITE_RETRY``.
    """


@dataclass(frozen=True, slots=True)
class Entry:
    """One pending delivery: one event to one target."""

    #: acceptance order; never reused.
    id: int
    #: Unix time of acceptance (or of the operator's retry).
    accepted_at: float
    #: the event's JSON text, for ``events.parse_event(json.loads(...))``.
    document: str
    source: str
    check: str
    target: Target
    attempts: int
    last_error: str | None
    #: True when handed out after ``hipchatd spool retry`` moved it back from ``dead``
    #: (not a new submit, so no ``submit`` call matches it).
    requeued: bool = False


@dataclass(frozen=True, slots=True)
class DeadEntry:
    """A dead-lettered delivery: given up, kept for the operator."""

    id: int
    accepted_at: float
    dead_at: float
    source: str
    check: str
    target: Target
    attempts: int
    #: why it was given up: "expired", "permanent", ...
    reason: str
    #: HipChat's message (or the last error when none was given).
    error: str | None


#: One event's entries with the handle given to ``Spool.submit`` (None for entries no
#: ``submit`` call made: re-queued by ``hipchatd spool retry``). Commits hand these out,
#: so a caller matches what was committed (or refused) to what it submitted by identity.
EventEntries: TypeAlias = tuple[object, list[Entry]]


@dataclass(slots=True)
class _Batch:
    """Work for the next commit: its marks (one transaction), then its new events."""

    #: each new event (its handle and its entries, consecutive ids), in acceptance order.
    events: list[EventEntries] = field(default_factory=list)
    #: entries in ``events``.
    entries: int = 0
    #: (error, id)
    attempts: list[tuple[str, int]] = field(default_factory=list)
    #: (dead_at, reason, error, id)
    dead: list[tuple[float, str, str | None, int]] = field(default_factory=list)
    delivered: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return self.entries + self.marks

    @property
    def marks(self) -> int:
        return len(self.attempts) + len(self.dead) + len(self.delivered)

    def prepend_marks(self, older: _Batch) -> None:
        self.attempts[:0] = older.attempts
        self.dead[:0] = older.dead
        self.delivered[:0] = older.delivered

    def prepend_events(self, older: list[EventEntries]) -> None:
        self.events[:0] = older
        self.entries += sum(len(entries) for _, entries in older)


@dataclass(frozen=True, slots=True)
class _Marked:
    removed: int
    dead: int


class Spool:
    """The daemon's handle on the spool. Create with ``await Spool.open(...)``.

    ``submit`` and ``mark_*`` buffer and never block; ``run`` is the task that
    commits. Use from one trio run.
    """

    def __init__(self, opened: _Opened, *, max_events: int) -> None:
        self._conn: sqlite3.Connection | None = opened.conn
        self._lock = opened.lock
        self._path = opened.path
        self._max_events = max_events
        self._next_id = opened.next_id
        self._pending = opened.pending
        self._dead = opened.dead
        #: (st_dev, st_ino) of the database file at open; None in memory.
        self._identity = opened.identity
        #: the file was found deleted or replaced (logged once).
        self._file_lost = False
        self._limiter = trio.CapacityLimiter(1)
        self._buffer = _Batch()
        #: new entries buffered or being committed: they count against max_events.
        self._unflushed = 0
        self._work = trio.Event()
        self._full = trio.Event()
        #: PRAGMA data_version at the last look; None: look at the first poll.
        self._data_version: int | None = None
        self._in_flight = False
        #: set (and replaced) after every commit attempt and at close, for ``flush``.
        self._progress = trio.Event()
        self._closed = False
        #: False after a failed commit or a refused event, True again after the next round of
        #: commits without a failure (for /healthz).
        self.writable = True
        #: write transactions committed so far (for tests and metrics).
        self.transactions = 0

    @classmethod
    async def open(cls, state_dir: str, *, max_events: int) -> Spool:
        """Open (creating if needed) ``state_dir/spool.sqlite3``, or memory for ``":memory:"``.

        A missing directory is created with mode 0700, a missing file with
        mode 0600. ``state_dir/spool.lock`` is held (flock) until close, so a
        second daemon on the same directory is refused. Raises SpoolError
        naming the path and the cause when the directory or file cannot be
        used, the file is not a hipchatd spool, or another daemon holds it.
        A version 1 spool is migrated in place (one transaction).
        """
        opened = await trio.to_thread.run_sync(_open_sync, state_dir)
        log.info(
            "spool.opened",
            path=opened.path,
            pending=opened.pending,
            dead=opened.dead,
            journal_mode=opened.journal_mode,
            next_id=opened.next_id,
        )
        return cls(opened, max_events=max_events)

    @property
    def path(self) -> str:
        """The database file, or ``":memory:"``."""
        return self._path

    @property
    def closed(self) -> bool:
        """True once shutdown began; ``submit`` then refuses everything."""
        return self._closed

    @property
    def buffered(self) -> int:
        """New entries submitted but not yet committed."""
        return self._unflushed

    def counts(self) -> dict[str, int]:
        """``{"pending": n, "dead": n}`` of committed entries, from counters (no I/O)."""
        return {"pending": self._pending, "dead": self._dead}

    def file_problem(self) -> str | None:
        """Why the database file is no longer this spool's, else None. One ``stat()``.

        A spool file deleted or replaced while the daemon runs leaves the
        daemon writing to a file no restart will find: nothing written since
        is durable. For ``/healthz``; the writer checks it too and logs
        ``spool.file_lost`` once.
        """
        if self._identity is None:
            return None
        try:
            found = os.stat(self._path)
        except FileNotFoundError:
            what = "was deleted"
        except OSError as exc:
            what = f"cannot be checked ({exc.strerror or exc})"
        else:
            if (found.st_dev, found.st_ino) == self._identity:
                return None
            what = "was replaced by another file"
        return (
            f"spool file {self._path} {what} while hipchatd runs: events accepted since are not "
            "durable; restart hipchatd to open the spool at that path again"
        )

    # --- the daemon's side: buffer now, commit in run() -------------------------------------

    def submit(
        self,
        event: Event,
        document: str,
        targets: Sequence[Target],
        accepted_at: float,
        handle: object = None,
    ) -> bool:
        """Buffer one entry per target for the next group commit. Never blocks.

        All or nothing: False, and nothing buffered, when the committed,
        in-flight and buffered entries plus ``len(targets)`` would exceed
        ``max_events`` (the caller logs the refusal), or once the spool is
        closed. The event is accepted only when ``on_committed`` sees its
        entries: they come back together, as ``(handle, entries)``, ``handle``
        being this object (``on_refused`` gets the same pair if the event
        cannot be stored). With no targets there is nothing to store: True,
        and ``handle`` never comes back.
        """
        count = len(targets)
        if self._closed or self._pending + self._unflushed + count > self._max_events:
            return False
        if not count:
            return True
        first = self._next_id
        source, check = event.source, event.check
        entries = [
            Entry(first + k, accepted_at, document, source, check, target, 0, None)
            for k, target in enumerate(targets)
        ]
        self._buffer.events.append((handle, entries))
        self._buffer.entries += count
        self._next_id = first + count
        self._unflushed += count
        self._wake()
        return True

    def mark_delivered(self, ids: Iterable[int]) -> None:
        """HipChat confirmed these entries: delete them at the next commit."""
        self._buffer.delivered.extend(ids)
        self._wake()

    def mark_dead(self, ids: Iterable[int], reason: str, error: str | None) -> None:
        """Move these entries to ``dead`` at the next commit.

        ``error`` is HipChat's message; None keeps the entry's ``last_error``.
        """
        dead_at = unix_now()
        self._buffer.dead.extend((dead_at, reason, error, i) for i in ids)
        self._wake()

    def mark_attempt(self, ids: Iterable[int], error: str) -> None:
        """Record a failed attempt (attempts + 1, ``last_error``) at the next commit."""
        self._buffer.attempts.extend((error, i) for i in ids)
        self._wake()

    def _wake(self) -> None:
        self._work.set()
        if len(self._buffer) >= BATCH:
            self._full.set()

    async def load_pending(self) -> list[Entry]:
        """Every pending entry, in acceptance order. Call once at start, before ``run``.

        Entries an operator re-queued while the daemon was down are returned
        like the rest, with attempts and error reset and ``accepted_at`` now.
        """
        self._data_version, entries = await self._read(
            "the pending entries", partial(_load_pending, now=unix_now())
        )
        return entries

    async def load_documents(self, ids: Sequence[int]) -> dict[int, str]:
        """The documents of these pending entries; ids not pending are absent.

        Raises SpoolReadError when SQLite cannot read them.
        """
        return await self._read("event documents", partial(_load_documents, ids=list(ids)))

    async def list_dead(self) -> list[DeadEntry]:
        """Every dead-lettered entry, oldest id first."""
        return await self._read("the dead entries", _list_dead)

    async def _read(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._call(fn)
        except sqlite3.Error as exc:
            raise SpoolReadError(
                f"cannot read {what} from the spool {self._path}: {_cause(exc)}"
            ) from exc

    async def wait_for_room(self) -> None:
        """Return once fewer than ``HIGH_WATER`` new entries wait for their commit.

        Readers call this between frames: when ingest outruns the disk, the
        kernel's socket buffers hold the excess instead of this process.
        """
        while not self._closed and self._unflushed >= HIGH_WATER:
            await self._progress.wait()

    async def flush(self) -> None:
        """Wait until nothing is buffered or being written (or the spool is closed).

        Needs the ``run`` task. Under steady load this may wait long: for tests and tools.
        """
        while not self._closed and (self._work.is_set() or self._in_flight):
            await self._progress.wait()

    async def run(
        self,
        on_committed: Callable[[list[EventEntries]], None],
        *,
        on_refused: Callable[[EventEntries], None] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Commit buffered work until cancelled; then flush what is left and close.

        After each commit, ``on_committed`` gets the new events, in acceptance
        order, each as ``(handle, entries)``: the handle given to ``submit``
        and all of that event's entries (ids set), synchronously in this task;
        an event's entries are always committed together. Every ``RETRY_POLL``
        it also gets the entries ``hipchatd spool retry`` re-queued, as one
        ``(None, entries)``. Marks commit before new entries, in their own
        transaction. New events that do not fit (``SQLITE_FULL``) are written
        in halves; an event that alone does not fit is refused: ``event.refused``
        is logged, ``writable`` set False, and ``on_refused`` gets its
        ``(handle, entries)``, in acceptance order with the ``on_committed``
        calls. Any other failed commit logs ``spool.write_failed``, sets
        ``writable`` False and is retried every ``WRITE_RETRY`` with its work
        kept; a failure no retry can fix (a constraint or misuse: a bug) ends
        ``run`` with SpoolWriteError. Every ``RETRY_POLL`` the file is checked
        (``file_problem``).

        On cancellation, a commit already running on the worker thread
        finishes first (SQLite cannot be stopped mid-transaction; at worst
        ``BUSY_TIMEOUT_MS``); then what is buffered is committed within
        ``SHUTDOWN_FLUSH`` (shielded) without calling ``on_committed``: those
        entries are delivered at the next start. Then the spool is closed.
        Past ``SHUTDOWN_FLUSH`` the worker thread is abandoned and
        ``spool.flush_incomplete`` logged.
        """
        if self._conn is None:
            raise SpoolError(f"the spool {self._path} is closed")
        task_status.started()
        try:
            try:
                await self._write_loop(on_committed, on_refused)
            finally:
                await self._shutdown()
        except sqlite3.Error as exc:
            raise self._write_error(exc) from exc

    async def aclose(self) -> None:
        """Commit what is buffered (within ``SHUTDOWN_FLUSH``, shielded) and close.

        Idempotent. For a spool whose ``run`` task was started, cancel that
        task instead: it closes the spool on its way out.
        """
        try:
            await self._shutdown()
        except sqlite3.Error as exc:
            raise self._write_error(exc) from exc

    def _write_error(self, exc: sqlite3.Error) -> SpoolWriteError:
        return SpoolWriteError(f"cannot commit to the spool {self._path}: {_cause(exc)}")

    async def _write_loop(
        self,
        on_committed: Callable[[list[EventEntries]], None],
        on_refused: Callable[[EventEntries], None] | None,
    ) -> None:
        next_poll = trio.current_time() + RETRY_POLL
        while True:
            with trio.move_on_at(next_poll):
                await self._work.wait()
            if self._work.is_set():
                if len(self._buffer) < BATCH:
                    with trio.move_on_after(COMMIT_DELAY):
                        await self._full.wait()
                if not await self._commit(on_committed, on_refused, abandon_on_cancel=False):
                    await trio.sleep(WRITE_RETRY)
            if trio.current_time() >= next_poll:
                self._check_file()
                requeued = await self._pick_up_requeued()
                next_poll = trio.current_time() + RETRY_POLL
                if requeued:
                    on_committed([(None, requeued)])

    async def _commit(
        self,
        on_committed: Callable[[list[EventEntries]], None] | None,
        on_refused: Callable[[EventEntries], None] | None,
        *,
        abandon_on_cancel: bool,
    ) -> bool:
        """Write the buffer: its marks in one transaction, then its new events. False on failure."""
        batch, self._buffer = self._buffer, _Batch()
        self._work = trio.Event()
        self._full = trio.Event()
        # A burst becomes several transactions (whole events each): commit latency and WAL size
        # stay bounded, and measured throughput is the same as one huge transaction.
        taken = entries = 0
        for _, event in batch.events:
            if taken and entries + len(event) > BATCH:
                break
            taken += 1
            entries += len(event)
        if taken < len(batch.events):
            self._buffer.prepend_events(batch.events[taken:])
            del batch.events[taken:]
            batch.entries = entries
            self._wake()
        if not batch:
            return True
        self._in_flight = True
        try:
            marked = await self._write_marks(batch, abandon_on_cancel)
            written = await self._write_events(
                batch.events, on_committed, on_refused, abandon_on_cancel
            )
        finally:
            self._in_flight = False
            self._progress.set()
            self._progress = trio.Event()
        if marked and written and not self.writable:
            self.writable = True
            log.info("spool.write_recovered", path=self._path, items=len(batch))
        return marked and written

    async def _write_marks(self, batch: _Batch, abandon_on_cancel: bool) -> bool:
        """Commit the marks of ``batch`` in one transaction; on failure keep them for later.

        When they do not fit, the deliveries are committed alone: they only delete, so they
        fit and free room. Cancellation (or a bug) also keeps the events of ``batch``, which
        are not written yet.
        """
        if not batch.marks:
            return True
        try:
            marked = await self._call(partial(_write_marks, batch=batch), abandon_on_cancel)
        except sqlite3.DatabaseError as exc:
            self._buffer.prepend_marks(batch)
            self._work.set()
            if not _is_transient(exc):
                self._buffer.prepend_events(batch.events)
                raise
            self._write_failed(exc, entries=0, items=batch.marks)
            if _does_not_fit(exc) and batch.delivered and (batch.attempts or batch.dead):
                deliveries = _Batch(delivered=self._buffer.delivered[: len(batch.delivered)])
                del self._buffer.delivered[: len(batch.delivered)]
                try:
                    await self._write_marks(deliveries, abandon_on_cancel)
                except BaseException:
                    self._buffer.prepend_events(batch.events)
                    raise
            return False
        except BaseException:
            self._buffer.prepend_marks(batch)
            self._buffer.prepend_events(batch.events)
            self._work.set()
            raise
        self.transactions += 1
        self._pending -= marked.removed
        self._dead += marked.dead
        return True

    async def _write_events(
        self,
        events: list[EventEntries],
        on_committed: Callable[[list[EventEntries]], None] | None,
        on_refused: Callable[[EventEntries], None] | None,
        abandon_on_cancel: bool,
    ) -> bool:
        """Commit ``events``, halving pieces that do not fit; refuse an event that alone does not.

        Any other failure keeps what is not written yet for the next try.
        """
        # A stack of pieces, the next to write last: acceptance order is kept.
        pieces = [events] if events else []
        refused = False
        while pieces:
            piece = pieces.pop()
            try:
                inserted = await self._call(partial(_write_batch, batch=piece), abandon_on_cancel)
            except sqlite3.DatabaseError as exc:
                if _does_not_fit(exc):
                    if len(piece) > 1:
                        if len(piece) == len(events):
                            log.warning(
                                "spool.batch_split",
                                path=self._path,
                                error=str(exc),
                                events=len(piece),
                                entries=sum(len(e) for _, e in piece),
                            )
                        half = len(piece) // 2
                        pieces += (piece[half:], piece[:half])
                    else:
                        self._refuse(piece[0], exc, on_refused)
                        refused = True
                    continue
                self._buffer.prepend_events([*piece, *chain.from_iterable(reversed(pieces))])
                self._work.set()
                if not _is_transient(exc):
                    raise
                self._write_failed(exc, entries=sum(len(e) for _, e in piece), items=len(piece))
                return False
            except BaseException:
                # Cancelled before the thread started, or abandoned: keep the events.
                self._buffer.prepend_events([*piece, *chain.from_iterable(reversed(pieces))])
                self._work.set()
                raise
            self.transactions += 1
            self._unflushed -= sum(len(entries) for _, entries in piece)
            self._pending += inserted
            if on_committed is not None:
                on_committed(piece)
        return not refused

    def _refuse(
        self,
        event: EventEntries,
        exc: sqlite3.DatabaseError,
        on_refused: Callable[[EventEntries], None] | None,
    ) -> None:
        entries = event[1]
        self._unflushed -= len(entries)
        self.writable = False
        first = entries[0]
        log.error(
            "event.refused",
            reason="the spool cannot store it",
            error=str(exc),
            sqlite_error=getattr(exc, "sqlite_errorname", None),
            path=self._path,
            source=first.source,
            check=first.check,
            targets=len(entries),
            nbytes=len(first.document.encode(errors="replace")),
        )
        if on_refused is not None:
            on_refused(event)

    def _write_failed(self, exc: sqlite3.DatabaseError, *, entries: int, items: int) -> None:
        log.error(
            "spool.write_failed",
            path=self._path,
            error=str(exc),
            sqlite_error=getattr(exc, "sqlite_errorname", None),
            entries=entries,
            items=items,
            retry_in=WRITE_RETRY,
        )
        self.writable = False

    def _check_file(self) -> None:
        if self._file_lost:
            return
        problem = self.file_problem()
        if problem is not None:
            self._file_lost = True
            log.error("spool.file_lost", path=self._path, problem=problem)

    async def _pick_up_requeued(self) -> list[Entry]:
        try:
            version, entries, dead = await self._call(
                partial(_pick_up, now=unix_now(), last_version=self._data_version)
            )
        except sqlite3.DatabaseError as exc:
            if not _is_transient(exc):
                raise SpoolReadError(
                    f"cannot read re-queued entries from the spool {self._path}: {_cause(exc)}"
                ) from exc
            log.error("spool.poll_failed", path=self._path, error=str(exc))
            return []
        self._data_version = version
        if dead is not None:
            self._dead = dead
        if entries:
            self._pending += len(entries)
            log.info("spool.requeued", entries=len(entries), ids=[e.id for e in entries[:20]])
        return entries

    async def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        conn, lock = self._conn, self._lock
        with trio.move_on_after(SHUTDOWN_FLUSH, shield=True) as scope:
            while self._work.is_set():
                if not await self._commit(None, None, abandon_on_cancel=True):
                    await trio.sleep(WRITE_RETRY)
            await self._call(partial(_close, lock=lock), abandon_on_cancel=True)
        self._conn = None
        self._progress.set()
        if not scope.cancelled_caught:
            log.info("spool.closed", path=self._path, pending=self._pending, dead=self._dead)
            return
        log.error(
            "spool.flush_incomplete",
            path=self._path,
            entries=self._unflushed,
            reason=f"not committed within {SHUTDOWN_FLUSH} s; these events were not accepted",
        )
        # An abandoned worker thread keeps its limiter token until it returns: while it runs
        # it owns the connection (and closes it, if it was _close), so leave both alone.
        if conn is not None and self._limiter.borrowed_tokens == 0:
            _close(conn, lock)

    async def _call(
        self, fn: Callable[[sqlite3.Connection], T], abandon_on_cancel: bool = False
    ) -> T:
        conn = self._conn
        if conn is None:
            raise SpoolError(f"the spool {self._path} is closed")
        return await trio.to_thread.run_sync(
            fn, conn, limiter=self._limiter, abandon_on_cancel=abandon_on_cancel
        )


# --- worker-thread functions: each one owns the connection while it runs -------------------


def _cause(exc: sqlite3.Error) -> str:
    """SQLite's message, with its error name when it has one (``disk I/O error (SQLITE_IOERR)``)."""
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else str(exc) or type(exc).__name__


def _is_transient(exc: sqlite3.DatabaseError) -> bool:
    """A failure worth retrying (full disk, I/O error, lock) rather than a bug of ours."""
    return not isinstance(
        exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.InterfaceError
    )


def _does_not_fit(exc: sqlite3.DatabaseError) -> bool:
    """SQLite said the write does not fit (full disk or file limit): smaller pieces might."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _DOES_NOT_FIT


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            # The error that got us here is the one to report; a failing ROLLBACK adds nothing
            # (SQLite rolls back on close anyway).
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


@dataclass(frozen=True, slots=True)
class _Opened:
    conn: sqlite3.Connection
    path: str
    #: the flock()ed ``spool.lock``; None in memory.
    lock: int | None
    next_id: int
    pending: int
    dead: int
    journal_mode: str
    #: (st_dev, st_ino) of the database file; None in memory.
    identity: tuple[int, int] | None


def _open_sync(state_dir: str) -> _Opened:
    try:
        return _open_or_fail(state_dir)
    except (OSError, ValueError) as exc:
        # Whatever the checks below did not foresee still names the path.
        path = os.path.join(state_dir, SPOOL_FILE)
        raise SpoolError(_cannot_open(path, _os_cause(exc, path))) from exc


def _open_or_fail(state_dir: str) -> _Opened:
    lock = None
    identity = None
    if state_dir == MEMORY:
        path = MEMORY
    else:
        path = os.path.join(state_dir, SPOOL_FILE)
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise SpoolError(_cannot_open(path, _directory_cause(exc, state_dir))) from exc
        lock = _lock(state_dir, path)
        try:
            # Events carry check output; the WAL and shm files copy these permissions.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            os.close(lock)
            raise SpoolError(_cannot_open(path, _os_cause(exc, path))) from exc
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        journal = _configure(conn)
        _migrate(conn, path)
        next_id, pending, dead = _open_counts(conn)
        if path != MEMORY:
            found = os.stat(path)
            identity = (found.st_dev, found.st_ino)
    except BaseException as exc:
        if conn is not None:
            conn.close()
        if lock is not None:
            os.close(lock)
        if isinstance(exc, sqlite3.Error):
            raise SpoolError(_cannot_open(path, _sqlite_cause(exc, path))) from exc
        raise
    return _Opened(conn, path, lock, next_id, pending, dead, journal, identity)


def _cannot_open(path: str, cause: str) -> str:
    return f"cannot open the spool {path}: {cause}"


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _directory_cause(exc: OSError, state_dir: str) -> str:
    if isinstance(exc, FileExistsError | NotADirectoryError):
        blocking = Path(state_dir)
        for parent in (blocking, *blocking.parents):
            if parent.exists():
                blocking = parent
                break
        return f"{blocking} is not a directory; {_STATE_DIR_HINT}"
    return _os_cause(exc, state_dir)


def _os_cause(exc: OSError | ValueError, where: str) -> str:
    """The cause of a failed system call on ``where`` and what to do, for an operator."""
    if not isinstance(exc, OSError):
        return f"{exc}; {_STATE_DIR_HINT}"
    directory = os.path.dirname(where) or "."
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied on {exc.filename or where}; give the user hipchatd runs as "
            f"({_user()}) read and write access to {directory}, or {_STATE_DIR_HINT}"
        )
    if code == errno.EROFS:
        return (
            f"{directory} is on a read-only file system; put state_dir on a writable one "
            "(under systemd: StateDirectory= or ReadWritePaths=), or " + _STATE_DIR_HINT
        )
    if code == errno.ENOTDIR:
        return f"a part of {where} is not a directory; {_STATE_DIR_HINT}"
    if code == errno.EISDIR:
        return f"{where} is a directory; move it away or {_STATE_DIR_HINT}"
    if code == errno.ENOSPC:
        return f"no space left on the device of {directory}; free some space"
    return f"{exc.strerror or exc}; {_STATE_DIR_HINT}"


def _sqlite_cause(exc: sqlite3.Error, path: str) -> str:
    """The cause of a failed SQLite call on the spool file and what to do, for an operator."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code == sqlite3.SQLITE_NOTADB:
        return (
            f"the file is not an SQLite database ({exc}), so not a hipchatd spool; "
            f"move it away (a new spool is then created) or {_STATE_DIR_HINT}"
        )
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return (
            f"the database is locked by another program ({exc}: a `hipchatd spool` "
            f"command or an sqlite3 shell?) for more than {BUSY_TIMEOUT_MS / 1000:g} s; "
            "end it and start hipchatd again"
        )
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM):
        return (
            f"the database cannot be written ({exc}); give the user hipchatd runs as "
            f"({_user()}) write access to {path}, its -wal and -shm files and "
            f"{os.path.dirname(path) or '.'}, or {_STATE_DIR_HINT}"
        )
    if code == sqlite3.SQLITE_CORRUPT:
        return (
            f"the database is damaged ({exc}); move it away (keep it to inspect) and start "
            "hipchatd again: a new spool is created"
        )
    if code == sqlite3.SQLITE_FULL:
        return f"the disk is full ({exc}); free some space on it"
    return f"{exc}; {_STATE_DIR_HINT}"


def _lock(state_dir: str, path: str) -> int:
    """Hold ``spool.lock``: two daemons on one spool would hand out the same ids.

    The holder's pid is written into it, for the message a second daemon prints.
    """
    lock_path = os.path.join(state_dir, LOCK_FILE)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise SpoolError(_cannot_open(path, _os_cause(exc, lock_path))) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _lock_holder(fd)
        os.close(fd)
        raise SpoolError(
            _cannot_open(
                path,
                f"another hipchatd process{holder} is using it (it holds {lock_path}); "
                "stop that one, or give each daemon its own state_dir",
            )
        ) from exc
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        # Only the message of a second daemon loses the pid.
        log.warning("spool.lock_unwritable", path=lock_path, error=str(exc))
    return fd


def _lock_holder(fd: int) -> str:
    """`` (pid N)`` from a held lock file, or nothing when it names none."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {text})" if text.isdigit() else ""


def _configure(conn: sqlite3.Connection) -> str:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    # Only takes effect on a new database (before WAL mode and the first table).
    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    journal: str = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
    conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
    # Deleted events are still zeroed on the pages that are written anyway, but freed pages
    # are not rewritten just to zero them (Debian builds SQLite with secure_delete on, which
    # made each delete cost about 45% more CPU). Stock SQLite's default is off.
    conn.execute("PRAGMA secure_delete = FAST")
    return journal


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    """Create the schema in a new file, or bring an older one up to date: one transaction."""
    with _transaction(conn):
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SpoolError(
                _cannot_open(
                    path,
                    f"it has schema version {version}, written by a newer hipchatd (this one "
                    f"reads up to {SCHEMA_VERSION}); upgrade hipchatd, or {_STATE_DIR_HINT}",
                )
            )
        if version == 0:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise SpoolError(
                    _cannot_open(
                        path,
                        "it is an SQLite database but not a hipchatd spool; move it away, or "
                        + _STATE_DIR_HINT,
                    )
                )
            for statement in _SCHEMA:
                conn.execute(statement)
        else:
            for step in range(version + 1, SCHEMA_VERSION + 1):
                _MIGRATIONS[step](conn)
        if version != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    if 0 < version < SCHEMA_VERSION:
        log.info("spool.migrated", path=path, from_version=version, to_version=SCHEMA_VERSION)


def _to_version_2(conn: sqlite3.Connection) -> None:
    """Version 1 kept a copy of the event document in every entry: keep one per event.

    An event's entries have consecutive ids, so each run of consecutive entries (pending
    and dead, by id) with the same document becomes one document whose id is the run's
    first id, and its range holds no other entry.
    """
    (sequence,) = conn.execute(
        "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'pending'"
    ).fetchone()
    conn.execute("DROP INDEX pending_requeued")
    conn.execute("DROP INDEX dead_dead_at")
    conn.execute("ALTER TABLE pending RENAME TO pending_v1")
    conn.execute("ALTER TABLE dead RENAME TO dead_v1")
    for statement in _SCHEMA:
        conn.execute(statement)
    rows = conn.execute(
        "SELECT id, document FROM pending_v1 UNION ALL SELECT id, document FROM dead_v1 ORDER BY id"
    )
    # Streamed: one document in memory at a time (the sorted rows are SQLite's copy).
    conn.executemany(_INSERT_DOCUMENTS, _runs_of_documents(rows))
    owner = "(SELECT max(d.id) FROM documents d WHERE d.id <= old.id)"
    conn.execute(
        "INSERT INTO pending (id, accepted_at, source, check_name, target, attempts,"
        " last_error, requeued, document_id)"
        " SELECT id, accepted_at, source, check_name, target, attempts, last_error, requeued,"
        f" {owner} FROM pending_v1 AS old"
    )
    conn.execute(
        "INSERT INTO dead (id, accepted_at, dead_at, source, check_name, target, attempts,"
        " reason, error, document_id)"
        " SELECT id, accepted_at, dead_at, source, check_name, target, attempts, reason, error,"
        f" {owner} FROM dead_v1 AS old"
    )
    conn.execute("DROP TABLE pending_v1")
    conn.execute("DROP TABLE dead_v1")
    # Ids are never reused: keep the highest one ever handed out.
    conn.execute("DELETE FROM sqlite_sequence WHERE name = 'pending'")
    conn.execute(
        "INSERT INTO sqlite_sequence (name, seq)"
        " SELECT 'pending', max(?, coalesce((SELECT max(id) FROM pending), 0))",
        (sequence,),
    )


def _runs_of_documents(rows: Iterable[tuple[int, str]]) -> Iterator[tuple[int, int, str]]:
    """(first id, entries, document) per run of consecutive rows with the same document."""
    first = last = 0
    current: str | None = None
    for id_, document in rows:
        if document != current:
            if current is not None:
                yield first, last - first + 1, current
            first, current = id_, document
        last = id_
    if current is not None:
        yield first, last - first + 1, current


#: Schema version -> the step that brings the version before it there (inside the transaction).
_MIGRATIONS: Final[dict[int, Callable[[sqlite3.Connection], None]]] = {2: _to_version_2}


def _open_counts(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """(next id, pending, dead). Counting pending reads every row, once per start."""
    last_id = conn.execute(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'pending'), 0),"
        " coalesce((SELECT max(id) FROM pending), 0), coalesce((SELECT max(id) FROM dead), 0))"
    ).fetchone()[0]
    pending = conn.execute("SELECT count(*) FROM pending").fetchone()[0]
    dead = conn.execute("SELECT count(*) FROM dead").fetchone()[0]
    return int(last_id) + 1, int(pending), int(dead)


@lru_cache(maxsize=4096)
def _encode_target(target: Target) -> str:
    return json.dumps(
        {
            "kind": target.kind,
            "name": target.name,
            "notify": target.notify,
            "username": target.username,
            "message_format": target.message_format,
        },
        separators=(",", ":"),
    )


@lru_cache(maxsize=4096)
def _decode_target(text: str) -> Target:
    try:
        data = json.loads(text)
        kind, name, notify = data["kind"], data["name"], data["notify"]
        username, message_format = data["username"], data["message_format"]
    except (ValueError, TypeError, KeyError) as exc:
        raise SpoolError(f"unreadable target in the spool: {text[:200]!r}") from exc
    if (
        kind not in ("room", "user")
        or message_format not in ("html", "text")
        or not isinstance(name, str)
        or not isinstance(notify, bool)
        or not isinstance(username, str)
    ):
        raise SpoolError(f"unreadable target in the spool: {text[:200]!r}")
    return Target(
        kind=kind, name=name, notify=notify, username=username, message_format=message_format
    )


def _entries(conn: sqlite3.Connection, rows: Iterable[Sequence[Any]]) -> list[Entry]:
    """Entries from ``_ENTRY_COLUMNS`` rows, each event's document read once and shared."""
    found = list(rows)
    documents = _documents(conn, sorted({row[2] for row in found}))
    return [
        Entry(
            id_,
            accepted_at,
            # A missing document reads as unparsable: the lane dead-letters it as "unreadable".
            documents.get(document_id, ""),
            source,
            check,
            _decode_target(target),
            attempts,
            last_error,
        )
        for id_, accepted_at, document_id, source, check, target, attempts, last_error in found
    ]


def _documents(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, str]:
    documents: dict[int, str] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = list(ids[start : start + _CHUNK])
        marks = ",".join("?" * len(chunk))
        documents.update(
            conn.execute(f"SELECT id, document FROM documents WHERE id IN ({marks})", chunk)
        )
    return documents


def _write_batch(conn: sqlite3.Connection, batch: list[EventEntries]) -> int:
    """Insert these new events (each document once, then one entry per target): entries written."""
    # Every statement releases the GIL while SQLite works and must win it back from a busy
    # event loop (up to sys.getswitchinterval(), 5 ms, each time): so a whole batch is a few
    # statements, never one per row. Beside a busy thread, one per row managed 400 entries/s.
    encode = _encode_target
    documents = [(event[0].id, len(event), event[0].document) for _, event in batch]
    entries = [
        (e.id, e.accepted_at, e.source, e.check, encode(e.target), event[0].id)
        for _, event in batch
        for e in event
    ]
    with _transaction(conn):
        _insert_rows(conn, _INSERT_DOCUMENTS, documents)
        return _insert_rows(conn, _INSERT_ENTRIES, entries)


def _insert_rows(conn: sqlite3.Connection, insert: str, rows: list[tuple[Any, ...]]) -> int:
    """``rows`` through multi-row ``insert`` statements (a power of two rows each)."""
    if not rows:
        return 0
    columns = len(rows[0])
    values = list(chain.from_iterable(rows))
    most = max(1, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // columns)
    inserted = start = 0
    for count in _insert_sizes(len(rows), most):
        stop = start + count * columns
        inserted += conn.execute(_insert_sql(insert, columns, count), values[start:stop]).rowcount
        start = stop
    return inserted


def _write_marks(conn: sqlite3.Connection, batch: _Batch) -> _Marked:
    """Attempts, dead-letter moves and deliveries, in one transaction; documents left unused go."""
    removed = dead = 0
    with _transaction(conn):
        if batch.attempts:
            conn.executemany(_ATTEMPT, batch.attempts)
        if batch.dead:
            dead = conn.executemany(_TO_DEAD, batch.dead).rowcount
        if batch.dead or batch.delivered:
            runs = _runs(sorted({*batch.delivered, *(d[3] for d in batch.dead)}))
            removed = conn.executemany(_DELETE_RUN, runs).rowcount
            conn.executemany(_DELETE_UNUSED_DOCUMENTS, runs)
    return _Marked(removed, dead)


def _insert_sizes(count: int, most: int) -> list[int]:
    """Rows per INSERT for ``count`` entries, each a power of two up to ``most`` and BATCH.

    The largest size first, then the binary digits of the rest: at most eleven statement
    texts ever exist (the connection's statement cache keeps them all), and a trickle of a
    few entries costs a few statements.
    """
    size = 1 << (min(most, BATCH).bit_length() - 1)
    sizes = [size] * (count // size)
    rest = count % size
    while rest:
        size //= 2
        if rest >= size:
            sizes.append(size)
            rest -= size
    return sizes


@lru_cache(maxsize=32)
def _insert_sql(insert: str, columns: int, rows: int) -> str:
    return insert + f", ({', '.join('?' * columns)})" * (rows - 1)


def _runs(ids: list[int]) -> list[tuple[int, int]]:
    """Sorted, distinct ``ids`` as the (first, last) of each run of consecutive ids."""
    if ids[-1] - ids[0] == len(ids) - 1:
        return [(ids[0], ids[-1])]
    breaks = [k for k in range(1, len(ids)) if ids[k] != ids[k - 1] + 1]
    starts = [0, *breaks]
    ends = [*breaks, len(ids)]
    return [(ids[a], ids[b - 1]) for a, b in zip(starts, ends, strict=True)]


def _data_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA data_version").fetchone()[0]
    return version


def _load_pending(conn: sqlite3.Connection, now: float) -> tuple[int, list[Entry]]:
    # Read before the transaction: a commit in between is seen now and again at the next poll
    # (which then finds nothing), never missed.
    version = _data_version(conn)
    with _transaction(conn):
        conn.execute(_RESET_REQUEUED, (now,))
        rows = conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM pending ORDER BY id")
        return version, _entries(conn, rows)


def _load_documents(conn: sqlite3.Connection, ids: list[int]) -> dict[int, str]:
    """Entry id -> document for the pending ones among ``ids``; each document read once."""
    references: dict[int, int] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        references.update(
            conn.execute(f"SELECT id, document_id FROM pending WHERE id IN ({marks})", chunk)
        )
    documents = _documents(conn, sorted(set(references.values())))
    return {i: documents[d] for i, d in references.items() if d in documents}


def _pick_up(
    conn: sqlite3.Connection, now: float, last_version: int | None
) -> tuple[int, list[Entry], int | None]:
    """Re-queued entries and the dead count, when another connection committed since last time."""
    version = _data_version(conn)
    if version == last_version:
        return version, [], None
    with _transaction(conn):
        entries = _entries(conn, conn.execute(_REQUEUED))
        if entries:
            conn.execute(_RESET_REQUEUED, (now,))
        dead: int = conn.execute("SELECT count(*) FROM dead").fetchone()[0]
    fresh = [
        Entry(e.id, now, e.document, e.source, e.check, e.target, 0, None, requeued=True)
        for e in entries
    ]
    return version, fresh, dead


def _list_dead(conn: sqlite3.Connection) -> list[DeadEntry]:
    rows = conn.execute(
        "SELECT id, accepted_at, dead_at, source, check_name, target, attempts, reason, error"
        " FROM dead ORDER BY id"
    )
    return [
        DeadEntry(id_, accepted, dead_at, source, check, _decode_target(target), n, reason, error)
        for id_, accepted, dead_at, source, check, target, n, reason, error in rows
    ]


def _close(conn: sqlite3.Connection, lock: int | None) -> None:
    try:
        conn.close()
    except sqlite3.Error as exc:
        # Everything was committed before; closing only checkpoints the WAL (done at next open).
        log.warning("spool.close_failed", error=str(exc))
    finally:
        if lock is not None:
            os.close(lock)


# --- operator commands: hipchatd spool list|retry|purge -----------------------------------


def add_arguments(
    parser: argparse.ArgumentParser, *, parents: Sequence[argparse.ArgumentParser] = ()
) -> None:
    """Add ``list``, ``retry`` and ``purge`` to ``parser`` (the ``hipchatd spool`` subcommand).

    ``parents`` (e.g. a parser holding ``--state-dir`` and ``--config``) are
    added to each of them, so those options may follow the sub-subcommand.
    """
    sub = parser.add_subparsers(dest="spool_command", metavar="ACTION", required=True)
    listing = sub.add_parser(
        "list", parents=list(parents), help="show pending (or dead-lettered) events"
    )
    listing.add_argument("--dead", action="store_true", help="show dead-lettered events instead")
    retry = sub.add_parser(
        "retry", parents=list(parents), help="move dead-lettered events back for delivery"
    )
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", nargs="*", type=int, default=[], metavar="ID", help="entry id")
    which.add_argument("--all", action="store_true", help="every dead-lettered event")
    purge = sub.add_parser("purge", parents=list(parents), help="delete dead-lettered events")
    purge.add_argument(
        "--dead", action="store_true", required=True, help="delete every dead-lettered event"
    )


def run(args: argparse.Namespace, state_dir: str) -> int:
    """Run ``hipchatd spool ACTION`` against ``state_dir``; return the exit code (0 or 1).

    Safe while the daemon runs: a second connection to the same WAL
    database. Never creates a spool. Messages go to stdout, errors to stderr.
    """
    if state_dir == MEMORY:
        return _fail(
            'the spool is in memory (state_dir ":memory:"): it lives inside the running daemon '
            "and cannot be inspected"
        )
    path = Path(state_dir) / SPOOL_FILE
    if not path.is_file():
        return _fail(
            f"no spool at {path} (has the daemon run with this state_dir?); {_STATE_DIR_HINT}"
        )
    try:
        conn = _open_existing(path)
    except SpoolError as exc:
        return _fail(str(exc))
    try:
        command: str = args.spool_command
        if command == "list":
            return _list(conn, dead=args.dead)
        if command == "retry":
            return _retry(conn, args.ids, every=args.all)
        return _purge_dead(conn)
    except (sqlite3.Error, SpoolError) as exc:
        return _fail(f"{path}: {exc}")
    finally:
        conn.close()


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _open_existing(path: Path) -> sqlite3.Connection:
    try:
        # mode=rw: never create a database where there was none.
        conn = sqlite3.connect(
            f"{path.absolute().as_uri()}?mode=rw", uri=True, isolation_level=None
        )
    except sqlite3.Error as exc:
        raise SpoolError(f"cannot open the spool {path}: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        conn.close()
        raise SpoolError(f"cannot open the spool {path}: {exc}") from exc
    if version != SCHEMA_VERSION:
        conn.close()
        if 0 < version < SCHEMA_VERSION:
            raise SpoolError(
                f"{path} was written by an older hipchatd (schema version {version}, this one "
                f"reads {SCHEMA_VERSION}): start the daemon once to upgrade it in place, then "
                "run this again"
            )
        raise SpoolError(
            f"{path} is not a spool this hipchatd reads (schema version {version}, "
            f"expected {SCHEMA_VERSION})"
        )
    return conn


def _list(conn: sqlite3.Connection, *, dead: bool) -> int:
    now = time.time()
    headers: tuple[str, ...]
    rows: list[tuple[str, ...]]
    if dead:
        entries = _list_dead(conn)
        if not entries:
            print("no dead-lettered events")
            return 0
        headers = ("ID", "AGE", "SOURCE/CHECK", "TARGET", "ATTEMPTS", "REASON", "ERROR")
        rows = [
            (
                str(e.id),
                format_age(now - e.accepted_at),
                f"{e.source}/{e.check}",
                _target_label(e.target),
                str(e.attempts),
                e.reason,
                _cut(e.error),
            )
            for e in entries
        ]
    else:
        found = conn.execute(
            "SELECT id, accepted_at, source, check_name, target, attempts, last_error"
            " FROM pending ORDER BY id"
        ).fetchall()
        if not found:
            print("no pending events")
            return 0
        headers = ("ID", "AGE", "SOURCE/CHECK", "TARGET", "ATTEMPTS", "LAST ERROR")
        rows = [
            (
                str(id_),
                format_age(now - accepted_at),
                f"{source}/{check}",
                _target_label(_decode_target(target)),
                str(attempts),
                _cut(last_error),
            )
            for id_, accepted_at, source, check, target, attempts, last_error in found
        ]
    print(_table(headers, rows))
    return 0


def _retry(conn: sqlite3.Connection, ids: Sequence[int], *, every: bool) -> int:
    with _transaction(conn):
        if every:
            chosen = [row[0] for row in conn.execute("SELECT id FROM dead ORDER BY id")]
            if not chosen:
                print("no dead-lettered events")
                return 0
        else:
            chosen = list(dict.fromkeys(ids))
            known = {i for (i,) in _select_ids(conn, "dead", chosen)}
            missing = [i for i in chosen if i not in known]
            if missing:
                pending = {i for (i,) in _select_ids(conn, "pending", missing)}
                for i in missing:
                    if i in pending:
                        print(f"error: entry {i} is pending, not dead-lettered", file=sys.stderr)
                    else:
                        print(f"error: no dead-lettered entry with id {i}", file=sys.stderr)
                print("nothing re-queued", file=sys.stderr)
                return 1
        for start in range(0, len(chosen), _CHUNK):
            chunk = chosen[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            conn.execute(
                "INSERT INTO pending (id, accepted_at, source, check_name, target, attempts,"
                " last_error, requeued, document_id)"
                " SELECT id, accepted_at, source, check_name, target, attempts, error, 1,"
                f" document_id FROM dead WHERE id IN ({marks})",
                chunk,
            )
            conn.execute(f"DELETE FROM dead WHERE id IN ({marks})", chunk)
    print(
        f"re-queued {_events(len(chosen))} for delivery "
        f"(a running daemon picks them up within {RETRY_POLL:g} s)"
    )
    return 0


def _purge_dead(conn: sqlite3.Connection) -> int:
    with _transaction(conn):
        purged = conn.execute("DELETE FROM dead").rowcount
        conn.execute(f"DELETE FROM documents WHERE {_UNUSED}")
    print(f"purged {_events(purged)} from the dead-letter table")
    return 0


def _select_ids(conn: sqlite3.Connection, table: str, ids: Sequence[int]) -> list[tuple[int]]:
    found: list[tuple[int]] = []
    for start in range(0, len(ids), _CHUNK):
        chunk = list(ids[start : start + _CHUNK])
        marks = ",".join("?" * len(chunk))
        found += conn.execute(f"SELECT id FROM {table} WHERE id IN ({marks})", chunk).fetchall()
    return found


def _events(n: int) -> str:
    return f"{n} dead-lettered event" + ("" if n == 1 else "s")


def format_age(seconds: float) -> str:
    """Seconds as the two largest units: ``42s``, ``3m12s``, ``2h05m``, ``3d04h``."""
    s = max(0, math.floor(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _target_label(target: Target) -> str:
    return target.name if target.kind == "room" else f"user:{target.name}"


def _cut(text: str | None) -> str:
    if not text:
        return "-"
    flat = " ".join(text.split())
    return flat if len(flat) <= _ERROR_COLUMN else flat[: _ERROR_COLUMN - 3] + "..."


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
