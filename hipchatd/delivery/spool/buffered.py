"""The daemon's side of every backend: buffer in ``submit`` and the marks, commit in ``run``.

:class:`BufferedSpool` keeps what the :class:`~hipchatd.delivery.spool.store.Spool`
protocol promises about buffering (all-or-nothing ``submit`` against
``max_events``, the marks, back-pressure, ``flush``), the commit loop and the
bounded shutdown; a backend adds opening, reading and its periodic look
(:meth:`BufferedSpool._look`: re-queued entries, the file or the server).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import fields
from typing import Any, Final, Generic, TypeVar

import structlog
import trio

from hipchatd.delivery.routing import Target
from hipchatd.delivery.spool.group import WRITE_RETRY, GroupCommit, Worker
from hipchatd.delivery.spool.store import (
    Entry,
    LaneLeases,
    OnCommitted,
    OnRefused,
    SpoolError,
    SpoolWriteError,
)
from hipchatd.sensu.events import Event

__all__ = ["SHUTDOWN_FLUSH", "BufferedSpool", "new_entries"]

log = structlog.get_logger()

C = TypeVar("C")

#: Seconds a cancelled ``run`` (or ``aclose``) may spend committing what is buffered.
SHUTDOWN_FLUSH: Final = 2.0

#: The setter of each of Entry's slots, in field order: ``new_entries`` fills a new Entry
#: through these (measured 0.6 us per entry) rather than the frozen dataclass's ``__init__``,
#: which goes through ``object.__setattr__`` once per field (1.4 us). A field added to Entry
#: makes the unpacking in ``new_entries`` fail, never leaves a slot unset.
_SLOT_SETTERS: Final[tuple[Callable[[Entry, Any], None], ...]] = tuple(
    getattr(Entry, field.name).__set__ for field in fields(Entry)
)


def new_entries(
    first: int,
    accepted_at: float,
    document: str,
    source: str,
    check: str,
    targets: Sequence[Target],
) -> list[Entry]:
    """``Entry(first + k, accepted_at, document, source, check, target, 0, None)`` for the
    k-th target (not re-queued)."""
    (
        set_id,
        set_accepted_at,
        set_document,
        set_source,
        set_check,
        set_target,
        set_attempts,
        set_last_error,
        set_requeued,
    ) = _SLOT_SETTERS
    new = Entry.__new__
    entries = []
    for number, target in enumerate(targets, first):
        entry = new(Entry)
        set_id(entry, number)
        set_accepted_at(entry, accepted_at)
        set_document(entry, document)
        set_source(entry, source)
        set_check(entry, check)
        set_target(entry, target)
        set_attempts(entry, 0)
        set_last_error(entry, None)
        set_requeued(entry, False)
        entries.append(entry)
    return entries


class BufferedSpool(Generic[C]):
    """Buffering, group commit and shutdown over one backend's worker connection."""

    #: Seconds a group commit waits for more work (each backend says why its value).
    commit_delay: float = 0.002
    #: Seconds between the backend's looks (``_look``).
    poll_every: float = 2.0
    #: The library's errors that end ``run`` (or ``aclose``) as SpoolWriteError.
    library_errors: tuple[type[Exception], ...] = ()

    def __init__(
        self, worker: Worker[C], writer: GroupCommit[C], *, max_events: int, next_id: int
    ) -> None:
        self._worker = worker
        self._writer = writer
        self._path = worker.path
        self._max_events = max_events
        #: the id of the next submitted entry.
        self._next_id = next_id
        self._closed = False

    @property
    def path(self) -> str:
        """Where the spool lives, for messages (never a secret)."""
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
    def degraded(self) -> str | None:
        """None: the store itself keeps what is committed (no fallback)."""
        return None

    def fallback_counts(self) -> dict[str, int]:
        """Zeros: no local fallback."""
        return {"held": 0, "forwarded": 0}

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

    def submit(
        self,
        event: Event,
        document: str,
        targets: Sequence[Target],
        accepted_at: float,
        handle: object = None,
    ) -> bool:
        """Buffer one entry per target, numbered from this process's counter. Never blocks.

        Refused (False, nothing buffered) once closed, or when committed plus
        buffered entries would pass ``max_events`` with these; the caller logs
        the refusal. :meth:`Spool.submit <hipchatd.delivery.spool.Spool.submit>`
        says when the event counts as accepted.
        """
        count = len(targets)
        writer = self._writer
        if self._closed or writer.pending + writer.unflushed + count > self._max_events:
            return False
        if not count:
            return True
        first = self._next_id
        writer.add(
            (handle, new_entries(first, accepted_at, document, event.source, event.check, targets))
        )
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

    async def wait_for_room(self) -> None:
        """Return once fewer than ``HIGH_WATER`` new entries wait for their commit.

        Readers call this between frames: when ingest outruns the store, the
        kernel's socket buffers hold the excess instead of this process.
        """
        await self._writer.wait_for_room()

    async def flush(self) -> None:
        """Wait until nothing is buffered or being written (or the spool is closed).

        Needs the ``run`` task. Under steady load this may wait long: for tests and tools.
        """
        await self._writer.flush()

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
        ``hipchatd spool retry`` re-queued come as one ``(None, entries)``
        (at the backend's next look). Marks commit with the new entries, in
        one transaction; when the two do not fit together, the marks commit
        first, in their own. New events that do not fit are written in
        halves; an event that alone does not fit is refused: ``event.refused``
        is logged, ``writable`` set False, and ``on_refused`` gets its
        ``(handle, entries)``, in acceptance order with the ``on_committed``
        calls. Any other failed commit logs ``spool.write_failed``, sets
        ``writable`` False and is retried every ``WRITE_RETRY`` with its work
        kept; a failure no retry can fix (a bug, or one only an operator can
        fix) ends ``run`` with SpoolWriteError.

        On cancellation, a commit already running on the worker thread
        finishes first; then what is buffered is committed within
        ``SHUTDOWN_FLUSH`` (shielded) without calling ``on_committed``: those
        entries are delivered at the next start. Then the spool is closed.
        Past ``SHUTDOWN_FLUSH`` the worker thread is abandoned and
        ``spool.flush_incomplete`` logged. Each backend's class says what its
        failures are.
        """
        if self._worker.conn is None:
            raise SpoolError(f"the spool {self._path} is closed")
        with self._watching():
            task_status.started()
            try:
                try:
                    await self._write_loop(on_committed, on_refused)
                finally:
                    await self._shutdown()
            except self.library_errors as exc:
                raise self._write_error(exc) from exc

    async def aclose(self) -> None:
        """Commit what is buffered (within ``SHUTDOWN_FLUSH``, shielded) and close.

        Idempotent. For a spool whose ``run`` task was started, cancel that
        task instead: it closes the spool on its way out.
        """
        try:
            await self._shutdown()
        except self.library_errors as exc:
            raise self._write_error(exc) from exc

    def lane_leases(self) -> LaneLeases | None:
        """None: a store one daemon uses alone, so this daemon owns every lane."""
        return None

    # --- for the backends ------------------------------------------------------------------

    def _watching(self) -> AbstractContextManager[None]:
        """Entered around ``run`` (in its trio run)."""
        return nullcontext()

    def _write_error(self, exc: Exception) -> SpoolWriteError:
        """The SpoolWriteError that ends ``run`` for ``exc`` (one of ``library_errors``)."""
        raise NotImplementedError

    def _look_asked(self) -> bool:
        """A look is wanted before the next ``poll_every``."""
        return False

    async def _look(self, on_committed: OnCommitted) -> None:
        """The backend's periodic look, in the writer's task (re-queued entries, ...)."""

    def _release(self) -> Callable[[C], None]:
        """What closes the connection (and releases its locks), on the worker thread."""
        raise NotImplementedError

    def _after_close(self) -> None:
        """Called once the connection is closed (or abandoned)."""

    async def _write_loop(self, on_committed: OnCommitted, on_refused: OnRefused | None) -> None:
        writer = self._writer
        next_poll = trio.current_time() + self.poll_every
        while True:
            await writer.wait_for_work(next_poll)
            if writer.has_work:
                await writer.wait_for_batch(self.commit_delay)
                if not await writer.commit(on_committed, on_refused, abandon_on_cancel=False):
                    await trio.sleep(WRITE_RETRY)
            if self._look_asked() or trio.current_time() >= next_poll:
                await self._look(on_committed)
                next_poll = trio.current_time() + self.poll_every

    async def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        writer, worker = self._writer, self._worker
        writer.closed = True
        conn, release = worker.conn, self._release()
        with trio.move_on_after(SHUTDOWN_FLUSH, shield=True) as scope:
            while writer.has_work:
                if not await writer.commit(None, None, abandon_on_cancel=True):
                    await trio.sleep(WRITE_RETRY)
            await worker.call(release, abandon_on_cancel=True)
        worker.conn = None
        writer.finish()
        self._after_close()
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
            release(conn)
