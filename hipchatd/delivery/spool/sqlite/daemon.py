"""The daemon's SQLite spool: the :class:`~hipchatd.delivery.spool.store.Spool` on one file.

Writes are grouped (:mod:`.writer`): ``submit`` and the ``mark_*`` calls
only buffer; the ``run`` task commits what gathered within ``COMMIT_DELAY``
(or as soon as ``BATCH`` items are waiting) in one transaction on a worker
thread, then hands each new event's entries, with their ids and the handle
the event was submitted with, to ``on_committed``. One connection, used by
one worker thread at a time.

Durability: WAL journal with ``synchronous=NORMAL``. A commit survives the
process dying in any way, ``kill -9`` included, because the WAL is in the
OS page cache by then. A power loss or kernel crash may lose the last
commits before a checkpoint (SQLite's documented trade-off for NORMAL in WAL
mode); it never corrupts the file.

The daemon remembers the file's device and inode at open; ``file_problem``
(``/healthz``) and the writer notice when the file is deleted or replaced
while it runs: nothing written after that would survive a restart.

Re-queued entries: ``hipchatd spool retry`` moves dead rows back to
``pending`` with ``requeued = 1`` through a connection of its own; the
writer notices (:mod:`.lookout`: within ``RETRY_POLL`` from another process,
at once from this one), resets those entries' attempts and error, sets
their ``accepted_at`` to the pickup time (so ``max_age`` starts over) and
hands them to ``on_committed``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Final, TypeVar

import structlog
import trio

from hipchatd.clock import unix_now
from hipchatd.delivery.routing import Target
from hipchatd.delivery.spool.sqlite import files, sql
from hipchatd.delivery.spool.sqlite.lookout import RETRY_POLL, Lookout
from hipchatd.delivery.spool.sqlite.writer import DIALECT, WRITE_RETRY, GroupCommit, Worker
from hipchatd.delivery.spool.store import (
    DeadEntry,
    Entry,
    OnCommitted,
    OnRefused,
    SpoolError,
    SpoolReadError,
    SpoolWriteError,
)
from hipchatd.sensu.events import Event

__all__ = ["COMMIT_DELAY", "SHUTDOWN_FLUSH", "SqliteSpool"]

log = structlog.get_logger()

T = TypeVar("T")

#: Seconds a group commit waits for more work: far below HipChat latency, many events per commit.
COMMIT_DELAY: Final = 0.002
#: Seconds a cancelled ``run`` (or ``aclose``) may spend committing what is buffered.
SHUTDOWN_FLUSH: Final = 2.0


class SqliteSpool:
    """The daemon's spool in one SQLite file (or memory). Create with ``await SqliteSpool.open``.

    ``submit`` and ``mark_*`` buffer and never block; ``run`` is the task that
    commits. Use from one trio run.
    """

    def __init__(self, opened: files.Opened, *, max_events: int) -> None:
        self._worker = Worker(opened.conn, opened.path)
        self._writer = GroupCommit(self._worker, DIALECT, pending=opened.pending, dead=opened.dead)
        self._lock = opened.lock
        self._path = opened.path
        self._max_events = max_events
        self._next_id = opened.next_id
        #: (st_dev, st_ino) of the database file at open; None in memory.
        self._identity = opened.identity
        self._lookout = Lookout(self._worker, self._writer, opened.identity)
        self._closed = False

    @classmethod
    async def open(cls, state_dir: str, *, max_events: int) -> SqliteSpool:
        """Open (creating if needed) ``state_dir/spool.sqlite3``, or memory for ``":memory:"``.

        A missing directory is created with mode 0700, a missing file with
        mode 0600. ``state_dir/spool.lock`` is held (flock) until close, so a
        second daemon on the same directory is refused. Raises SpoolError
        naming the path and the cause when the directory or file cannot be
        used, the file is not a hipchatd spool, or another daemon holds it.
        A version 1 spool is migrated in place (one transaction).
        """
        opened = await trio.to_thread.run_sync(files.open_spool_file, state_dir)
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
    def writable(self) -> bool:
        """False after a failed commit or a refused event, until a round of commits works."""
        return self._writer.writable

    @property
    def buffered(self) -> int:
        """New entries submitted but not yet committed."""
        return self._writer.unflushed

    @property
    def transactions(self) -> int:
        """Write transactions committed so far (for tests and metrics)."""
        return self._writer.transactions

    def counts(self) -> dict[str, int]:
        """``{"pending": n, "dead": n}`` of committed entries, from counters (no I/O)."""
        return {"pending": self._writer.pending, "dead": self._writer.dead}

    def file_problem(self) -> str | None:
        """Why the database file is no longer this spool's, else None. One ``stat()``.

        A spool file deleted or replaced while the daemon runs leaves the
        daemon writing to a file no restart will find: nothing written since
        is durable. For ``/healthz``; the writer checks it too and logs
        ``spool.file_lost`` once.
        """
        return files.file_problem(self._path, self._identity)

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
        writer = self._writer
        if self._closed or writer.pending + writer.unflushed + count > self._max_events:
            return False
        if not count:
            return True
        first = self._next_id
        source, check = event.source, event.check
        entries = [
            Entry(first + k, accepted_at, document, source, check, target, 0, None)
            for k, target in enumerate(targets)
        ]
        writer.add((handle, entries))
        self._next_id = first + count
        return True

    def mark_delivered(self, ids: Iterable[int]) -> None:
        """HipChat confirmed these entries: delete them at the next commit."""
        self._writer.mark_delivered(ids)

    def mark_dead(self, ids: Iterable[int], reason: str, error: str | None) -> None:
        """Move these entries to ``dead`` at the next commit.

        ``error`` is HipChat's message; None keeps the entry's ``last_error``.
        """
        self._writer.mark_dead(ids, reason, error)

    def mark_attempt(self, ids: Iterable[int], error: str) -> None:
        """Record a failed attempt (attempts + 1, ``last_error``) at the next commit."""
        self._writer.mark_attempt(ids, error)

    async def load_pending(self) -> list[Entry]:
        """Every pending entry, in acceptance order. Call once at start, before ``run``.

        Entries an operator re-queued while the daemon was down are returned
        like the rest, with attempts and error reset and ``accepted_at`` now.
        """
        self._lookout.data_version, entries = await self._read(
            "the pending entries", partial(sql.load_pending, now=unix_now())
        )
        return entries

    async def load_documents(self, ids: Sequence[int]) -> dict[int, str]:
        """The documents of these pending entries; ids not pending are absent.

        Raises SpoolReadError when SQLite cannot read them.
        """
        return await self._read("event documents", partial(sql.load_documents, ids=list(ids)))

    async def list_dead(self) -> list[DeadEntry]:
        """Every dead-lettered entry, oldest id first."""
        return await self._read("the dead entries", sql.list_dead)

    async def _read(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._worker.call(fn)
        except sqlite3.Error as exc:
            raise SpoolReadError(
                f"cannot read {what} from the spool {self._path}: {sql.cause(exc)}"
            ) from exc

    async def wait_for_room(self) -> None:
        """Return once fewer than ``HIGH_WATER`` new entries wait for their commit.

        Readers call this between frames: when ingest outruns the disk, the
        kernel's socket buffers hold the excess instead of this process.
        """
        await self._writer.wait_for_room()

    async def flush(self) -> None:
        """Wait until nothing is buffered or being written (or the spool is closed).

        Needs the ``run`` task. Under steady load this may wait long: for tests and tools.
        """
        await self._writer.flush()

    async def poll_now(self) -> None:
        """Look at the file now, as every ``RETRY_POLL``; return once that look is done.

        The look hands re-queued entries to ``on_committed`` and checks the
        file (``file_problem``). Needs the ``run`` task; returns at once when
        the spool is closed. The operator commands run in this process ask
        for this look themselves (without waiting for it).
        """
        await self._lookout.look_now()

    async def run(
        self,
        on_committed: OnCommitted,
        *,
        on_refused: OnRefused | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Commit buffered work until cancelled; then flush what is left and close.

        After each commit, ``on_committed`` gets the new events, in acceptance
        order, each as ``(handle, entries)``: the handle given to ``submit``
        and all of that event's entries (ids set), synchronously in this task;
        an event's entries are always committed together. Entries
        ``hipchatd spool retry`` re-queued come as one ``(None, entries)``:
        within ``RETRY_POLL`` from another process, at once from this one.
        Marks commit before new entries, in their own transaction. New events
        that do not fit (``SQLITE_FULL``) are written in halves; an event that
        alone does not fit is refused: ``event.refused`` is logged,
        ``writable`` set False, and ``on_refused`` gets its ``(handle,
        entries)``, in acceptance order with the ``on_committed`` calls. Any
        other failed commit logs ``spool.write_failed``, sets ``writable``
        False and is retried every ``WRITE_RETRY`` with its work kept; a
        failure no retry can fix (a constraint or misuse: a bug) ends ``run``
        with SpoolWriteError. Every ``RETRY_POLL`` the file is checked
        (``file_problem``).

        On cancellation, a commit already running on the worker thread
        finishes first (SQLite cannot be stopped mid-transaction; at worst
        ``BUSY_TIMEOUT_MS``); then what is buffered is committed within
        ``SHUTDOWN_FLUSH`` (shielded) without calling ``on_committed``: those
        entries are delivered at the next start. Then the spool is closed.
        Past ``SHUTDOWN_FLUSH`` the worker thread is abandoned and
        ``spool.flush_incomplete`` logged.
        """
        if self._worker.conn is None:
            raise SpoolError(f"the spool {self._path} is closed")
        with self._lookout.watching():
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
        return SpoolWriteError(f"cannot commit to the spool {self._path}: {sql.cause(exc)}")

    async def _write_loop(self, on_committed: OnCommitted, on_refused: OnRefused | None) -> None:
        writer = self._writer
        next_poll = trio.current_time() + RETRY_POLL
        while True:
            await writer.wait_for_work(next_poll)
            if writer.has_work:
                await writer.wait_for_batch(COMMIT_DELAY)
                if not await writer.commit(on_committed, on_refused, abandon_on_cancel=False):
                    await trio.sleep(WRITE_RETRY)
            if self._lookout.asked or trio.current_time() >= next_poll:
                await self._lookout.look(on_committed)
                next_poll = trio.current_time() + RETRY_POLL

    async def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        writer, worker = self._writer, self._worker
        writer.closed = True
        conn, lock = worker.conn, self._lock
        with trio.move_on_after(SHUTDOWN_FLUSH, shield=True) as scope:
            while writer.has_work:
                if not await writer.commit(None, None, abandon_on_cancel=True):
                    await trio.sleep(WRITE_RETRY)
            await worker.call(partial(files.release, lock=lock), abandon_on_cancel=True)
        worker.conn = None
        writer.finish()
        self._lookout.close()
        if not scope.cancelled_caught:
            log.info("spool.closed", path=self._path, pending=writer.pending, dead=writer.dead)
            return
        log.error(
            "spool.flush_incomplete",
            path=self._path,
            entries=writer.unflushed,
            reason=f"not committed within {SHUTDOWN_FLUSH} s; these events were not accepted",
        )
        # An abandoned worker thread keeps its limiter token until it returns: while it runs
        # it owns the connection (and closes it, if it was the release), so leave both alone.
        if conn is not None and worker.limiter.borrowed_tokens == 0:
            files.release(conn, lock)
