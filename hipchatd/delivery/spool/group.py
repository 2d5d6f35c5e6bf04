"""Group commit: what the daemon buffers, written in few transactions on one worker thread.

Backend-neutral: a backend hands :class:`GroupCommit` its connection (in a
:class:`Worker`) and a :class:`Dialect` (its writes and how to read its
library's errors). ``submit`` and the marks only buffer. The spool's ``run``
task calls ``commit`` when work is waiting: the marks (delivered, dead,
attempts) and the new events, at most ``BATCH`` entries of them, commit in
one transaction on one trip to the worker thread (each trip must win the GIL
back from a busy event loop, and each commit is a WAL append or a server
round trip). When that does not fit (SQLite's ``SQLITE_FULL``, PostgreSQL's
disk full or a value it cannot hold), the marks commit first, in their own
transaction (they free space, and new events that cannot be written never
hold them back), then the new events, halved until their pieces fit; an
event that alone cannot be written is refused (it was never accepted). Any
other failure keeps the work for the next try, so a dialect's writes must be
safe to repeat after a failure whose commit may have happened (a connection
lost during COMMIT).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from typing import Any, Final, Generic, Protocol, TypeVar

import structlog
import trio

from hipchatd.clock import unix_now
from hipchatd.delivery.spool.store import EventEntries, OnCommitted, OnRefused, SpoolError

__all__ = ["BATCH", "HIGH_WATER", "WRITE_RETRY", "Dialect", "GroupCommit", "Marks", "Worker"]

log = structlog.get_logger()

T = TypeVar("T")
C = TypeVar("C")
C_contra = TypeVar("C_contra", contravariant=True)

#: Buffered items (new entries + marks) that start a commit without waiting for the commit
#: delay; also the most new entries one transaction takes.
BATCH: Final = 1024
#: New entries waiting for their commit before readers pause (about 6 MB of 3 KB events).
HIGH_WATER: Final = 2 * BATCH
#: Seconds before a failed commit is tried again (disk full, I/O error, lock held too long,
#: the database server unreachable).
WRITE_RETRY: Final = 1.0


@dataclass(frozen=True, slots=True)
class Marks:
    """The marks one commit writes, in the order they were made."""

    #: (error, id)
    attempts: list[tuple[str, int]]
    #: (dead_at, reason, error, id)
    dead: list[tuple[float, str, str | None, int]]
    delivered: list[int]


class Dialect(Protocol[C_contra]):
    """What group commit needs from a backend: its writes, and how to read its errors.

    The writes run on the worker thread with the connection; each is one
    transaction, rolled back when it raises.
    """

    #: the library's errors that a failed write raises (others are bugs and propagate).
    errors: tuple[type[Exception], ...]

    def write_events(
        self, conn: C_contra, batch: list[EventEntries]
    ) -> tuple[int, list[EventEntries]]:
        """Insert these new events: (entries written, the events as committed, ids final)."""
        ...

    def write_marks(
        self,
        conn: C_contra,
        attempts: list[tuple[str, int]],
        dead: list[tuple[float, str, str | None, int]],
        delivered: list[int],
    ) -> tuple[int, int]:
        """Attempts, dead-letter moves and deliveries: (removed from pending, moved to dead)."""
        ...

    def write_round(
        self, conn: C_contra, marks: Marks, batch: list[EventEntries]
    ) -> tuple[int, int, int, list[EventEntries]]:
        """``write_marks`` and ``write_events`` in one transaction: (removed from pending,
        moved to dead, entries written, the events as committed)."""
        ...

    def is_transient(self, exc: Exception) -> bool:
        """A failure worth retrying (full disk, I/O error, lock, lost server), not a bug."""
        ...

    def does_not_fit(self, exc: Exception) -> bool:
        """The write does not fit (full disk, a value too large): smaller pieces might."""
        ...

    def log_keys(self, exc: Exception) -> dict[str, Any]:
        """The library's error code, as log keys (``sqlite_error``, ``sqlstate``)."""
        ...


class Worker(Generic[C]):
    """The connection, and the one worker thread at a time that uses it."""

    def __init__(self, conn: C, path: str) -> None:
        self.conn: C | None = conn
        self.path = path
        self.limiter = trio.CapacityLimiter(1)

    async def call(self, fn: Callable[[C], T], abandon_on_cancel: bool = False) -> T:
        """``fn(connection)`` on a worker thread. Raises SpoolError once closed."""
        conn = self.conn
        if conn is None:
            raise SpoolError(f"the spool {self.path} is closed")
        return await trio.to_thread.run_sync(
            fn, conn, limiter=self.limiter, abandon_on_cancel=abandon_on_cancel
        )


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

    def prepend(self, older: _Batch) -> None:
        """``older``'s marks and new events before these."""
        self.prepend_marks(older)
        self.prepend_events(older.events)

    def cut(self, most: int) -> list[EventEntries]:
        """Keep whole events up to ``most`` entries (at least one event); the rest, removed."""
        if self.entries <= most:
            return []
        taken = entries = 0
        for _, event in self.events:
            if taken and entries + len(event) > most:
                break
            taken += 1
            entries += len(event)
        rest = self.events[taken:]
        del self.events[taken:]
        self.entries = entries
        return rest


class GroupCommit(Generic[C]):
    """The buffer, its commits, and the counters they keep (no I/O outside ``commit``)."""

    def __init__(self, worker: Worker[C], dialect: Dialect[C], *, pending: int, dead: int) -> None:
        self._worker = worker
        self._dialect = dialect
        self._path = worker.path
        self._buffer = _Batch()
        #: committed entries, from the counts at open plus each commit.
        self.pending = pending
        self.dead = dead
        #: new entries buffered or being committed: they count against max_events.
        self.unflushed = 0
        #: write transactions committed so far (for tests and metrics).
        self.transactions = 0
        #: False after a failed commit or a refused event, True again after the next round of
        #: commits without a failure (for /healthz).
        self.writable = True
        #: set once shutdown began: the waits below return.
        self.closed = False
        self._work = trio.Event()
        self._full = trio.Event()
        #: set with ``_work``, or by ``nudge``: wakes ``wait_for_work``.
        self._alarm = trio.Event()
        self._in_flight = False
        #: set (and replaced) after every commit attempt and at close, for ``flush``.
        self._progress = trio.Event()

    @property
    def has_work(self) -> bool:
        """Something is buffered for the next commit."""
        return self._work.is_set()

    def add(self, event: EventEntries) -> None:
        """Buffer one new event's entries (ids already set)."""
        count = len(event[1])
        buffer = self._buffer
        buffer.events.append(event)
        buffer.entries += count
        self.unflushed += count
        # Once work waits, the loop no longer waits for the alarm: only a full batch wakes it.
        if not self._work.is_set() or buffer.entries + buffer.marks >= BATCH:
            self._wake()

    def mark_delivered(self, ids: Iterable[int]) -> None:
        self._buffer.delivered.extend(ids)
        self._wake()

    def mark_dead(self, ids: Iterable[int], reason: str, error: str | None) -> None:
        dead_at = unix_now()
        self._buffer.dead.extend((dead_at, reason, error, i) for i in ids)
        self._wake()

    def mark_attempt(self, ids: Iterable[int], error: str) -> None:
        self._buffer.attempts.extend((error, i) for i in ids)
        self._wake()

    def _wake(self) -> None:
        self._work.set()
        self._alarm.set()
        if len(self._buffer) >= BATCH:
            self._full.set()

    def nudge(self) -> None:
        """Wake ``wait_for_work`` with nothing to commit (something else is due)."""
        self._alarm.set()

    async def wait_for_work(self, deadline: float) -> None:
        """Return once work is buffered, when nudged, or at ``deadline`` (trio time)."""
        if self._work.is_set():
            return
        with trio.move_on_at(deadline):
            await self._alarm.wait()
        self._alarm = trio.Event()

    async def wait_for_batch(self, delay: float) -> None:
        """Give more work ``delay`` seconds to gather, unless a full batch is waiting."""
        if len(self._buffer) < BATCH:
            with trio.move_on_after(delay):
                await self._full.wait()

    async def wait_for_room(self) -> None:
        """Return once fewer than ``HIGH_WATER`` new entries wait for their commit."""
        while not self.closed and self.unflushed >= HIGH_WATER:
            await self._progress.wait()

    async def flush(self) -> None:
        """Wait until nothing is buffered or being written (or shutdown began)."""
        while not self.closed and (self._work.is_set() or self._in_flight):
            await self._progress.wait()

    def finish(self) -> None:
        """Shutdown is over: release every waiter."""
        self.closed = True
        self._progress.set()

    async def commit(
        self,
        on_committed: OnCommitted | None,
        on_refused: OnRefused | None,
        *,
        abandon_on_cancel: bool,
    ) -> bool:
        """Write the buffer: its marks and new events in one transaction, or (when they do not
        fit together) its marks, then its new events. False on failure.

        Raises the dialect's error for a failure no retry can fix (its work kept).
        """
        batch, self._buffer = self._buffer, _Batch()
        self._work = trio.Event()
        self._full = trio.Event()
        # The buffered work set the alarm too: without this the loop makes an idle pass.
        self._alarm = trio.Event()
        # A burst becomes several transactions (whole events each): commit latency and WAL size
        # stay bounded, and measured throughput is the same as one huge transaction.
        rest = batch.cut(BATCH)
        if rest:
            self._buffer.prepend_events(rest)
            self._wake()
        if not batch:
            return True
        self._in_flight = True
        try:
            together = None
            if batch.marks and batch.events:
                together = await self._write_together(batch, on_committed, abandon_on_cancel)
            if together is None:
                marked = await self._write_marks(batch, abandon_on_cancel)
                written = await self._write_events(
                    batch.events, on_committed, on_refused, abandon_on_cancel
                )
            else:
                marked = written = together
        finally:
            self._in_flight = False
            self._progress.set()
            self._progress = trio.Event()
        if marked and written and not self.writable:
            self.writable = True
            log.info("spool.write_recovered", path=self._path, items=len(batch))
        return marked and written

    async def _write_together(
        self, batch: _Batch, on_committed: OnCommitted | None, abandon_on_cancel: bool
    ) -> bool | None:
        """Commit the marks and new events of ``batch`` in one transaction; False when that
        failed (the work kept), None when they do not fit together (the caller splits them)."""
        dialect = self._dialect
        marks = Marks(batch.attempts, batch.dead, batch.delivered)
        write = partial(dialect.write_round, marks=marks, batch=batch.events)
        try:
            removed, dead, inserted, committed = await self._worker.call(write, abandon_on_cancel)
        except BaseException as exc:
            if isinstance(exc, dialect.errors) and dialect.does_not_fit(exc):
                return None
            # Cancelled, abandoned, or a failure: both kept for the next try.
            self._buffer.prepend(batch)
            self._work.set()
            if not isinstance(exc, dialect.errors) or not dialect.is_transient(exc):
                raise
            self._write_failed(exc, entries=batch.entries, items=len(batch))
            return False
        self.transactions += 1
        self.unflushed -= batch.entries
        self.pending += inserted - removed
        self.dead += dead
        if on_committed is not None:
            on_committed(committed)
        return True

    async def _write_marks(self, batch: _Batch, abandon_on_cancel: bool) -> bool:
        """Commit the marks of ``batch`` in one transaction; on failure keep them for later.

        When they do not fit, the deliveries are committed alone: they only delete, so they
        fit and free room. Cancellation (or a bug) also keeps the events of ``batch``, which
        are not written yet.
        """
        if not batch.marks:
            return True
        dialect = self._dialect
        write = partial(
            dialect.write_marks,
            attempts=batch.attempts,
            dead=batch.dead,
            delivered=batch.delivered,
        )
        try:
            removed, dead = await self._worker.call(write, abandon_on_cancel)
        except dialect.errors as exc:
            self._buffer.prepend_marks(batch)
            self._work.set()
            if not dialect.is_transient(exc):
                self._buffer.prepend_events(batch.events)
                raise
            self._write_failed(exc, entries=0, items=batch.marks)
            if dialect.does_not_fit(exc) and batch.delivered and (batch.attempts or batch.dead):
                deliveries = _Batch(delivered=self._buffer.delivered[: len(batch.delivered)])
                del self._buffer.delivered[: len(batch.delivered)]
                try:
                    await self._write_marks(deliveries, abandon_on_cancel)
                except BaseException:
                    self._buffer.prepend_events(batch.events)
                    raise
            return False
        except BaseException:
            self._buffer.prepend(batch)
            self._work.set()
            raise
        self.transactions += 1
        self.pending -= removed
        self.dead += dead
        return True

    async def _write_events(
        self,
        events: list[EventEntries],
        on_committed: OnCommitted | None,
        on_refused: OnRefused | None,
        abandon_on_cancel: bool,
    ) -> bool:
        """Commit ``events``, halving pieces that do not fit; refuse an event that alone does not.

        Any other failure keeps what is not written yet for the next try.
        """
        # A stack of pieces, the next to write last: acceptance order is kept.
        dialect = self._dialect
        pieces = [events] if events else []
        refused = False
        while pieces:
            piece = pieces.pop()
            try:
                inserted, committed = await self._worker.call(
                    partial(dialect.write_events, batch=piece), abandon_on_cancel
                )
            except dialect.errors as exc:
                if dialect.does_not_fit(exc):
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
                if not dialect.is_transient(exc):
                    raise
                self._write_failed(exc, entries=sum(len(e) for _, e in piece), items=len(piece))
                return False
            except BaseException:
                # Cancelled before the thread started, or abandoned: keep the events.
                self._buffer.prepend_events([*piece, *chain.from_iterable(reversed(pieces))])
                self._work.set()
                raise
            self.transactions += 1
            self.unflushed -= sum(len(entries) for _, entries in piece)
            self.pending += inserted
            if on_committed is not None:
                on_committed(committed)
        return not refused

    def _refuse(self, event: EventEntries, exc: Exception, on_refused: OnRefused | None) -> None:
        entries = event[1]
        self.unflushed -= len(entries)
        self.writable = False
        first = entries[0]
        log.error(
            "event.refused",
            reason="the spool cannot store it",
            error=str(exc),
            **self._dialect.log_keys(exc),
            path=self._path,
            source=first.source,
            check=first.check,
            targets=len(entries),
            nbytes=len(first.document.encode(errors="replace")),
        )
        if on_refused is not None:
            on_refused(event)

    def _write_failed(self, exc: Exception, *, entries: int, items: int) -> None:
        log.error(
            "spool.write_failed",
            path=self._path,
            error=str(exc),
            **self._dialect.log_keys(exc),
            entries=entries,
            items=items,
            retry_in=WRITE_RETRY,
        )
        self.writable = False
