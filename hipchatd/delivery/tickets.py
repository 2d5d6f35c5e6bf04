"""Tickets: one accepted event across its targets, for the one line that says how it ended.

Every target's lane finishes its entry with the event's ticket; the last
one logs ``event.delivered`` or ``event.failed``. Entries read back from the
spool (at start, or by a lane's owner from the shared queue) have no ticket
from intake: :func:`tickets_for` makes one per event.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias

import structlog

from hipchatd.clock import unix_now
from hipchatd.delivery.spool import Entry
from hipchatd.sensu.events import Event

__all__ = ["Feed", "Queued", "Ticket", "tickets_for"]

log = structlog.get_logger()


@dataclass(slots=True, eq=False)
class Ticket:
    """One accepted event across its targets, for its one summary line."""

    event_id: str
    source: str
    check: str
    accepted_at: float
    remaining: int
    #: filled as targets finish; None until then (100,000 pending tickets add up).
    rooms: list[str] | None = None
    failures: list[str] | None = None
    attempts: int = 1

    def finish(
        self, room: str, failure: str | None, attempts: int, now: float | None = None
    ) -> None:
        """One target is done (``failure`` None: sent); the last one logs the event's summary.

        ``now``: the Unix time it was done, when the caller has it (one attempt
        finishes many events at once); else the time now.
        """
        if self.rooms is None:
            self.rooms = []
        self.rooms.append(room)
        self.attempts = max(self.attempts, attempts)
        if failure is not None:
            if self.failures is None:
                self.failures = []
            self.failures.append(failure)
        self.remaining -= 1
        if self.remaining > 0:
            return
        # Named here, not bound: one attempt can finish several events.
        fields: dict[str, object] = {
            "event_id": self.event_id,
            "source": self.source,
            "check": self.check,
            "rooms": self.rooms,
            "ms": round(((unix_now() if now is None else now) - self.accepted_at) * 1000, 1),
        }
        if self.attempts > 1:
            fields["attempts"] = self.attempts
        if self.failures:
            log.error("event.failed", outcome=",".join(sorted(set(self.failures))), **fields)
        else:
            log.info("event.delivered", outcome="sent", **fields)


#: A committed entry on its way to its lane: its ticket, and its parsed event when held.
Queued: TypeAlias = tuple[Entry, Ticket, Event | None]


class Feed(Protocol):
    """Where committed entries go: the dispatcher, or the lane owner's reads in a cluster."""

    def enqueue(self, entries: Iterable[Queued]) -> None:
        """Hand committed entries on, in acceptance order. Never blocks."""
        ...


def tickets_for(entries: Sequence[Entry]) -> tuple[list[Queued], int]:
    """Entries read back from the spool with one ticket per event: (queued, events).

    An event's entries share its acceptance time, source and check.
    """
    tickets: dict[tuple[float, str, str], Ticket] = {}
    batch: list[Queued] = []
    for entry in entries:
        key = (entry.accepted_at, entry.source, entry.check)
        ticket = tickets.get(key)
        if ticket is None:
            ticket = tickets[key] = Ticket("", entry.source, entry.check, entry.accepted_at, 0)
        ticket.remaining += 1
        batch.append((entry, ticket, None))
    return batch, len(tickets)
