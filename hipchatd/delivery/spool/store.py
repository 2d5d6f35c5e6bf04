"""The spool's interface: what the daemon and the operator commands need from a store.

Two protocols, one per kind of caller. :class:`Spool` is the daemon's side:
intake submits events, one ``run`` task commits them in groups and hands each
committed event back (``on_committed``), lanes mark entries delivered, failed
or dead. :class:`SpoolAdmin` is the operator's side (``hipchatd spool
list|retry|purge``), safe while a daemon runs on the same store. Callers use
these types only; a backend (SQLite, PostgreSQL) implements both and translates
its library's errors into :class:`SpoolError` and its subclasses. Every
name this module defines belongs to the interface; the package
(:mod:`hipchatd.delivery.spool`) exports them.

The contract every backend keeps:

- An event is accepted once its entries (one per target) are committed; they
  come back together through ``on_committed``, with the handle given to
  ``submit`` (matched by identity, never by position). An event the store
  cannot hold alone is refused through ``on_refused``, never half-stored.
- An entry leaves ``pending`` only by ``mark_delivered`` or ``mark_dead``;
  nothing else deletes it. A full spool refuses new events and keeps the oldest.
- Ids are acceptance order and never reused; a dead entry keeps its id when
  an operator re-queues it, and a running daemon hands it out again as
  ``(None, [entry])`` with attempts and error reset and ``accepted_at`` the
  time of pickup (so ``max_age`` starts over).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias

import trio

from hipchatd.delivery.routing import Target
from hipchatd.errors import HipchatdError
from hipchatd.sensu.events import Event


class SpoolError(HipchatdError):
    """The spool cannot be opened or used; the message names the path and the fix.

    No exception of a backend's library leaves the spool: each is raised as a
    SpoolError (or a subclass) ``from`` the original, so callers catch
    hipchatd's types only.
    """


class SpoolReadError(SpoolError):
    """Reading the spool back failed (``load_pending``, ``load_documents``, a listing).

    The message names the operation, the path and the backend's cause; the
    spool stays usable, so a caller may try again later.
    """


class SpoolWriteError(SpoolError):
    """A commit failed in a way retrying cannot fix (a constraint or misuse: a bug).

    Ends ``run``. Failures a retry may fix (a full disk, an I/O error, a lock)
    never raise: ``run`` logs them and retries.
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
class PendingEntry:
    """A pending delivery as an operator sees it: an Entry without its document."""

    id: int
    accepted_at: float
    source: str
    check: str
    target: Target
    attempts: int
    last_error: str | None


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


@dataclass(frozen=True, slots=True)
class Requeued:
    """What ``SpoolAdmin.retry`` did: all or nothing.

    When ``pending`` or ``unknown`` is not empty, nothing was re-queued.
    """

    #: the dead entries moved back to ``pending`` (all of them in id order, or as asked for).
    ids: tuple[int, ...] = ()
    #: asked for, but pending (not dead-lettered).
    pending: tuple[int, ...] = ()
    #: asked for, but neither pending nor dead-lettered.
    unknown: tuple[int, ...] = ()


#: One event's entries with the handle given to ``Spool.submit`` (None for entries no
#: ``submit`` call made: re-queued by ``hipchatd spool retry``). Commits hand these out,
#: so a caller matches what was committed (or refused) to what it submitted by identity.
EventEntries: TypeAlias = tuple[object, list[Entry]]
#: ``Spool.run``'s callback for each round of committed events, in acceptance order.
OnCommitted: TypeAlias = Callable[[list[EventEntries]], None]
#: ``Spool.run``'s callback for an event the store cannot hold (never accepted).
OnRefused: TypeAlias = Callable[[EventEntries], None]


class Spool(Protocol):
    """The daemon's handle on the spool: buffer now, commit in ``run``.

    ``submit`` and ``mark_*`` buffer and never block; ``run`` is the one task
    that commits. Use from one trio run.
    """

    @property
    def path(self) -> str:
        """Where the spool lives, for messages (never a secret)."""
        ...

    @property
    def closed(self) -> bool:
        """True once shutdown began; ``submit`` then refuses everything."""
        ...

    @property
    def writable(self) -> bool:
        """False after a failed commit or a refused event, until commits work again (/healthz)."""
        ...

    @property
    def degraded(self) -> str | None:
        """Why accepted events are held in a local fallback instead of the store, else None.

        For ``/healthz``: degraded is neither healthy nor failing (events are
        accepted and kept, delivery of some waits).
        """
        ...

    def counts(self) -> dict[str, int]:
        """``{"pending": n, "dead": n}`` of committed entries, without I/O."""
        ...

    def fallback_counts(self) -> dict[str, int]:
        """``{"held": n, "forwarded": n}``: entries in a local fallback now, and moved on since
        start (counted in ``pending`` too). Zeros for a store without one. Without I/O."""
        ...

    def file_problem(self) -> str | None:
        """Why entries committed from now on would not survive a restart, else None.

        For ``/healthz``: for example the spool's file was deleted or replaced
        under the running daemon. Cheap (no more than a ``stat()``).
        """
        ...

    def submit(
        self,
        event: Event,
        document: str,
        targets: Sequence[Target],
        accepted_at: float,
        handle: object = None,
    ) -> bool:
        """Buffer one entry per target for the next group commit. Never blocks.

        All or nothing: False, and nothing buffered, when the spool is full
        (committed plus uncommitted entries plus ``len(targets)`` would exceed
        its ``max_events``) or closed. The event is accepted only when
        ``on_committed`` hands back ``(handle, entries)``; ``on_refused`` gets
        the same pair if it cannot be stored. With no targets: True, and
        ``handle`` never comes back.
        """
        ...

    def mark_delivered(self, ids: Iterable[int]) -> None:
        """HipChat confirmed these entries: delete them at the next commit."""
        ...

    def mark_attempt(self, ids: Iterable[int], error: str) -> None:
        """Record a failed attempt (attempts + 1, ``last_error``) at the next commit."""
        ...

    def mark_dead(self, ids: Iterable[int], reason: str, error: str | None) -> None:
        """Move these entries to ``dead`` at the next commit.

        ``error`` is HipChat's message; None keeps the entry's ``last_error``.
        """
        ...

    async def load_pending(self) -> list[Entry]:
        """Every pending entry, in acceptance order. Call once at start, before ``run``.

        Entries an operator re-queued while the daemon was down come back like
        the rest, with attempts and error reset and ``accepted_at`` now.
        Raises SpoolReadError.
        """
        ...

    async def load_documents(self, ids: Sequence[int]) -> dict[int, str]:
        """The documents of these pending entries; ids not pending are absent.

        For lanes that kept only ids in memory. Raises SpoolReadError.
        """
        ...

    async def wait_for_room(self) -> None:
        """Return once the uncommitted backlog is below the store's high-water mark.

        Readers call this between frames: when ingest outruns the store, the
        kernel's socket buffers hold the excess instead of this process.
        """
        ...

    async def flush(self) -> None:
        """Wait until nothing is buffered or being written (or the spool is closed).

        Needs the ``run`` task; under steady load this may wait long: for tests and tools.
        """
        ...

    async def run(
        self,
        on_committed: OnCommitted,
        *,
        on_refused: OnRefused | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Commit buffered work until cancelled; then flush what is left and close.

        After each commit, ``on_committed`` gets the new events, in acceptance
        order, each as ``(handle, entries)``, synchronously in this task; it
        also gets entries an operator re-queued, as ``(None, entries)``. A
        store with a local fallback (PostgreSQL's, while the server cannot be
        reached) hands an event committed there back as ``(handle, [])``: it
        is accepted, and its entries come later as ``(None, entries)``, once
        they are in the store.
        ``on_refused`` gets an event that cannot be stored, in order with the
        ``on_committed`` calls. A failure no retry can fix raises
        SpoolWriteError (or SpoolReadError). On cancellation, what is buffered
        is committed within a bounded, shielded grace without calling
        ``on_committed`` (delivered at the next start), then the spool closes.
        """
        ...

    async def aclose(self) -> None:
        """Commit what is buffered (bounded, shielded) and close. Idempotent.

        For a spool whose ``run`` task was started, cancel that task instead.
        """
        ...

    def lane_leases(self) -> LaneLeases | None:
        """The leases that share lanes between instances, or None: this daemon owns every lane.

        None for a store only one daemon uses (SQLite); a shared store
        (PostgreSQL) returns its leases, and the daemon then sends only for
        the lanes it holds, reading their entries with ``LaneLeases.read``.
        """
        ...


def lane_of(target: Target) -> str:
    """The lane a target's entries queue in, across every instance: ``room:ops``, ``user:bob``."""
    return f"{target.kind}:{target.name}"


@dataclass(frozen=True, slots=True)
class Held:
    """What a lease round left this instance with."""

    #: the lanes this instance holds (renewed or claimed in this round).
    lanes: frozenset[str]
    #: of those, the lanes taken from an owner whose lease had expired (a takeover).
    taken_over: frozenset[str] = frozenset()


class LaneLeases(Protocol):
    """Lane ownership among the instances sharing one store (exactly one sender per lane).

    A lease is held for ``ttl`` seconds from the round that took or renewed
    it; ``round`` is called every ``renew_every`` seconds. Methods run I/O
    on a worker thread and raise SpoolError (the caller logs and retries).
    """

    @property
    def ttl(self) -> float:
        """Seconds a lease lasts after the round that took or renewed it."""
        ...

    @property
    def renew_every(self) -> float:
        """Seconds between rounds while nothing else wakes the caller."""
        ...

    async def round(self) -> Held:
        """Renew the leases held, give up idle lanes, claim a fair share of unowned ones.

        The answer is every lane held now: a lane another instance took
        meanwhile (this one's lease had expired) is missing from it.
        """
        ...

    async def read(self, after: dict[str, int]) -> list[Entry]:
        """Pending entries of these lanes with ids above each lane's mark, in id order.

        Entries an operator re-queued in these lanes come too, whatever
        their ids, with attempts and error reset (``requeued`` True).
        """
        ...

    async def wait(self, within: float) -> bool:
        """Wait at most ``within`` s for another instance's news: True when some came."""
        ...

    async def release(self) -> None:
        """Give up every lane (clean shutdown), tell the other instances, close. Never raises."""
        ...


class SpoolAdmin(Protocol):
    """The operator's handle on a spool (``hipchatd spool``), beside a running daemon.

    Synchronous: the operator commands run outside trio. Each method is one
    transaction and raises SpoolError (its message names the spool) when the
    store cannot do it. Close when done.
    """

    @property
    def path(self) -> str:
        """Where the spool lives, for messages (never a secret)."""
        ...

    @property
    def pickup_within(self) -> float:
        """Seconds within which a running daemon hands re-queued entries to its lanes."""
        ...

    def list_pending(self) -> list[PendingEntry]:
        """Every pending entry, oldest id first."""
        ...

    def list_dead(self) -> list[DeadEntry]:
        """Every dead-lettered entry, oldest id first."""
        ...

    def retry(self, ids: Sequence[int] | None) -> Requeued:
        """Move these dead entries (None: every one) back to ``pending``. All or nothing."""
        ...

    def purge_dead(self) -> int:
        """Delete every dead-lettered entry (and documents nothing uses any more): how many."""
        ...

    def close(self) -> None:
        """Release the connection. Idempotent."""
        ...
