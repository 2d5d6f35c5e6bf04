"""The daemon's SQLite spool: the :class:`~hipchatd.delivery.spool.store.Spool` on one file.

Writes are grouped (:mod:`..group`, :mod:`.writer`): ``submit`` and the ``mark_*`` calls
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
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from functools import partial
from typing import Final, TypeVar

import structlog
import trio

from hipchatd.clock import unix_now
from hipchatd.delivery.spool.buffered import SHUTDOWN_FLUSH, BufferedSpool
from hipchatd.delivery.spool.sqlite import files, sql
from hipchatd.delivery.spool.sqlite.lookout import RETRY_POLL, Lookout
from hipchatd.delivery.spool.sqlite.writer import DIALECT, GroupCommit, Worker
from hipchatd.delivery.spool.store import (
    DeadEntry,
    Entry,
    OnCommitted,
    SpoolReadError,
    SpoolWriteError,
)

__all__ = ["COMMIT_DELAY", "SHUTDOWN_FLUSH", "SqliteSpool"]

log = structlog.get_logger()

T = TypeVar("T")

#: Seconds a group commit waits for more work: far below HipChat latency, many events per commit.
#: Each commit hands its events to the lanes, and a free lane sends what it holds at once, so
#: shorter rounds mean smaller messages: measured at ~2,000 events/s to one room, 2 ms made
#: 6.3 HipChat messages per 100 events (CPU and rate budget spent), 5 ms 4.4.
COMMIT_DELAY: Final = 0.005


class SqliteSpool(BufferedSpool[sqlite3.Connection]):
    """The daemon's spool in one SQLite file (or memory). Create with ``await SqliteSpool.open``.

    ``submit`` and ``mark_*`` buffer and never block; ``run`` is the task that
    commits. Use from one trio run.

    In ``run``: re-queued entries come within ``RETRY_POLL`` from another
    process, at once from this one, and every ``RETRY_POLL`` the file is
    checked (``file_problem``). New events that do not fit are those SQLite
    calls full (``SQLITE_FULL``, ``SQLITE_TOOBIG``); a failure no retry can
    fix is a constraint or misuse (a bug). On cancellation a commit already
    running finishes first: SQLite cannot be stopped mid-transaction (at
    worst ``BUSY_TIMEOUT_MS``).
    """

    commit_delay = COMMIT_DELAY
    poll_every = RETRY_POLL
    library_errors = (sqlite3.Error,)

    def __init__(self, opened: files.Opened, *, max_events: int) -> None:
        worker = Worker(opened.conn, opened.path)
        writer = GroupCommit(worker, DIALECT, pending=opened.pending, dead=opened.dead)
        super().__init__(worker, writer, max_events=max_events, next_id=opened.next_id)
        self._lock = opened.lock
        #: (st_dev, st_ino) of the database file at open; None in memory.
        self._identity = opened.identity
        self._lookout = Lookout(self._worker, self._writer, opened.identity)

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

    def file_problem(self) -> str | None:
        """Why the database file is no longer this spool's, else None. One ``stat()``.

        A spool file deleted or replaced while the daemon runs leaves the
        daemon writing to a file no restart will find: nothing written since
        is durable. For ``/healthz``; the writer checks it too and logs
        ``spool.file_lost`` once.
        """
        return files.file_problem(self._path, self._identity)

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

    async def poll_now(self) -> None:
        """Look at the file now, as every ``RETRY_POLL``; return once that look is done.

        The look hands re-queued entries to ``on_committed`` and checks the
        file (``file_problem``). Needs the ``run`` task; returns at once when
        the spool is closed. The operator commands run in this process ask
        for this look themselves (without waiting for it).
        """
        await self._lookout.look_now()

    def _watching(self) -> AbstractContextManager[None]:
        return self._lookout.watching()

    def _write_error(self, exc: Exception) -> SpoolWriteError:
        assert isinstance(exc, sqlite3.Error)
        return SpoolWriteError(f"cannot commit to the spool {self._path}: {sql.cause(exc)}")

    def _look_asked(self) -> bool:
        return self._lookout.asked

    async def _look(self, on_committed: OnCommitted) -> None:
        await self._lookout.look(on_committed)

    def _release(self) -> Callable[[sqlite3.Connection], None]:
        return partial(files.release, lock=self._lock)

    def _after_close(self) -> None:
        self._lookout.close()
