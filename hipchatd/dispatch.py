"""Delivery: one lane per target, durable, paced by HipChat's budget, coalescing.

Every accepted event is in the spool, one entry per target. Entries wait in
the lane of their target (a room, or a user), in acceptance order. A lane
has at most one message in flight; while it cannot send (its previous
message is in flight, the rate budget says wait, or a retry is due later),
its entries accumulate, and when it can send again they go out together in
the fewest messages (:mod:`hipchatd.coalesce`). So per target, messages go
out in acceptance order and a resolve never overtakes the alert it
resolves.

Outcomes: a 2xx removes the entries from the spool. A transient failure
(rate limit, 5xx, transport error, timeout) retries the lane after the time
HipChat named, or after an exponential backoff with full jitter. A
permanent failure (400, 401, 403, 404) moves the entries to the
dead-letter table at once. Entries older than ``max_age`` are dead-lettered
as ``expired``.

Each attempt runs inside ``trio.move_on_after(timeout)``; a CapacityLimiter
bounds concurrent requests (and matches the HTTP pool).
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import structlog
import trio

from hipchatd.budget import RateBudget
from hipchatd.clock import unix_now
from hipchatd.coalesce import render_batch
from hipchatd.config import HipChatSettings
from hipchatd.errors import EventError
from hipchatd.events import Event, parse_event
from hipchatd.hipchat import HipChatClient, Outcome, OutcomeKind
from hipchatd.metrics import Metrics
from hipchatd.routing import Target
from hipchatd.spool import Entry, Spool

__all__ = ["Dispatcher", "Ticket", "backoff_delay"]

log = structlog.get_logger()

#: Retry backoff: first delay up to 1 s, doubling, never more than 60 s (full jitter).
BACKOFF_BASE = 1.0
BACKOFF_FACTOR = 2.0
BACKOFF_CAP = 60.0
#: Entries rendered for one attempt at most: bounds the work of one send after a long outage.
MAX_BATCH = 2000
#: Entries first considered for one message; doubled while one message still holds them all.
FIRST_CHUNK = 128


def backoff_delay(failures: int, rng: random.Random) -> float:
    """Full-jitter exponential backoff for the ``failures``-th consecutive failure."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * BACKOFF_FACTOR ** max(0, failures - 1))
    return rng.uniform(0.0, ceiling)


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


@dataclass(slots=True, eq=False)
class _Pending:
    id: int
    accepted_at: float
    ticket: Ticket
    #: None once spilled: read back from the spool when its turn comes.
    event: Event | None
    attempts: int = 0
    last_error: str | None = None


@dataclass(slots=True, eq=False)
class _Lane:
    target: Target
    items: deque[_Pending] = field(default_factory=deque)
    wake: trio.Event = field(default_factory=trio.Event)
    failures: int = 0
    #: Unix time before which the lane does not send (a retry is due then).
    retry_at: float = 0.0


def _target_key(target: Target) -> str:
    return target.name if target.kind == "room" else f"user:{target.name}"


class Dispatcher:
    """Owns the lanes; ``enqueue`` committed entries from any task of the same run."""

    def __init__(
        self,
        settings: Callable[[], HipChatSettings],
        client: Callable[[], HipChatClient],
        spool: Spool,
        budget: RateBudget,
        metrics: Metrics,
        *,
        concurrency: int,
        max_age: float,
        memory_events: int,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._client = client
        self._spool = spool
        self._budget = budget
        self._metrics = metrics
        self._max_age = max_age
        self._memory_events = memory_events
        self._rng = rng if rng is not None else random.Random()
        self._limiter = trio.CapacityLimiter(concurrency)
        self._lanes: dict[Target, _Lane] = {}
        self._nursery: trio.Nursery | None = None
        self._in_memory = 0
        self._in_flight = 0
        self._stopping = False
        self._idle = trio.Event()

    def reconfigure(self, *, max_age: float, budget: RateBudget | None = None) -> None:
        """Apply a reloaded ``max_age`` and, for a new token or new limits, a new budget.

        Settings and client are read per attempt.
        """
        self._max_age = max_age
        if budget is not None:
            self._budget = budget

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the lanes until cancelled; cancelling leaves undelivered entries in the spool."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def enqueue(self, entries: Iterable[tuple[Entry, Ticket, Event | None]]) -> None:
        """Hand committed spool entries to their lanes. Never blocks."""
        for entry, ticket, event in entries:
            if event is not None and self._in_memory >= self._memory_events:
                # Spilled: the spool has the document; the id comes back with it
                # (kept while another target of the same event may still need it).
                event = None
                if ticket.remaining == 1:
                    ticket.event_id = ""
            if event is not None:
                self._in_memory += 1
            pending = _Pending(
                entry.id, entry.accepted_at, ticket, event, entry.attempts, entry.last_error
            )
            lane = self._lane(entry.target)
            lane.items.append(pending)
            lane.wake.set()

    async def drain(self) -> None:
        """Start no new attempt; return once no attempt is in flight.

        The caller bounds this with its shutdown grace; what is not delivered
        stays in the spool.
        """
        self._stopping = True
        for lane in self._lanes.values():
            lane.wake.set()
        if self._in_flight:
            await self._idle.wait()

    def _lane(self, target: Target) -> _Lane:
        # One lane per distinct target (room plus its settings), so a batch is
        # rendered with the settings of every event in it; the budget is
        # shared per room or user.
        lane = self._lanes.get(target)
        if lane is None:
            if self._nursery is None:
                raise RuntimeError("dispatcher is not running")
            lane = self._lanes[target] = _Lane(target)
            self._nursery.start_soon(self._run_lane, _target_key(target), lane)
        return lane

    async def _run_lane(self, key: str, lane: _Lane) -> None:
        while True:
            while not lane.items or self._stopping:
                lane.wake = trio.Event()
                await lane.wake.wait()
            delay = lane.retry_at - unix_now()
            if delay > 0:
                # New events keep arriving meanwhile; they go out with the retry.
                await trio.sleep(delay)
            self._expire(lane)
            if not lane.items:
                continue
            # A reload may replace the budget; this attempt settles with the one it used.
            budget = self._budget
            await budget.acquire(key)
            if self._stopping:
                budget.abandon(key)
                continue
            self._in_flight += 1
            try:
                await self._attempt(key, lane, budget)
            finally:
                self._in_flight -= 1
                if self._stopping and not self._in_flight:
                    self._idle.set()

    async def _attempt(self, key: str, lane: _Lane, budget: RateBudget) -> None:
        settings = self._settings()
        limit = min(len(lane.items), MAX_BATCH)
        size = min(limit, FIRST_CHUNK)
        batch: list[_Pending] = []
        events: list[Event] = []
        while True:
            # Read back (and parse) only as many spilled entries as the first
            # message can hold: grow the batch while one message covers it all.
            more = [lane.items[i] for i in range(len(batch), size)]
            try:
                loaded = await self._events_for(more)
            except sqlite3.DatabaseError as exc:
                # The spool could not be read back: like a failed request, try later.
                budget.abandon(key)
                lane.failures += 1
                delay = backoff_delay(lane.failures, self._rng)
                lane.retry_at = unix_now() + delay
                log.error(
                    "spool.read_failed", room=lane.target.name, error=str(exc), retry_in=delay
                )
                return
            broken = [p for p, e in zip(more, loaded, strict=True) if e is None]
            if broken:
                # A spool entry that no longer parses cannot be rendered: dead-letter it.
                self._dead(lane, broken, "unreadable", "spooled event no longer parses")
                budget.abandon(key)
                return
            batch.extend(more)
            events.extend(e for e in loaded if e is not None)
            messages = render_batch(events, lane.target, settings.api_version, first_only=True)
            message, span = messages[0]
            if span.stop < len(batch) or size >= limit:
                break
            size = min(limit, size * 2)
        covered = batch[span.start : span.stop]
        started = trio.current_time()
        outcome: Outcome | None = None
        try:
            async with self._limiter:
                with trio.move_on_after(settings.timeout) as scope:
                    outcome = await self._client().send(lane.target, message)
                if scope.cancelled_caught:
                    outcome = Outcome.timeout(settings.timeout)
        finally:
            budget.release(key, outcome or Outcome(OutcomeKind.TRANSPORT_ERROR, error="cancelled"))
        assert outcome is not None
        ms = round((trio.current_time() - started) * 1000, 1)
        self._settle(lane, covered, outcome, settings, ms)

    async def _events_for(self, batch: Sequence[_Pending]) -> list[Event | None]:
        spilled = [p.id for p in batch if p.event is None]
        documents = await self._spool.load_documents(spilled) if spilled else {}
        events: list[Event | None] = []
        for p in batch:
            if p.event is not None:
                events.append(p.event)
                continue
            try:
                event = parse_event(json.loads(documents[p.id]))
            except (KeyError, ValueError, EventError):
                events.append(None)
                continue
            if not p.ticket.event_id:
                p.ticket.event_id = event.id
            events.append(event)
        return events

    def _forget(self, lane: _Lane, done: Sequence[_Pending]) -> None:
        # ``done`` is a prefix of the lane except for unreadable entries.
        items = lane.items
        if all(items[i] is p for i, p in enumerate(done)):
            for _ in done:
                items.popleft()
        else:
            ids = {p.id for p in done}
            lane.items = deque(p for p in items if p.id not in ids)
        self._in_memory -= sum(1 for p in done if p.event is not None)

    def _settle(
        self,
        lane: _Lane,
        covered: Sequence[_Pending],
        outcome: Outcome,
        settings: HipChatSettings,
        ms: float,
    ) -> None:
        ids = [p.id for p in covered]
        if outcome.rate is not None and outcome.rate.remaining is not None:
            self._metrics.ratelimit_remaining.set(outcome.rate.remaining)
        if outcome.kind is OutcomeKind.SENT:
            self._spool.mark_delivered(ids)
            self._forget(lane, covered)
            lane.failures = 0
            lane.retry_at = 0.0
            now = unix_now()
            self._metrics.notifications.labels(api_version=settings.api_version).inc()
            for p in covered:
                self._metrics.notification_latency.observe(max(0.0, now - p.accepted_at))
                self._finish(p, lane.target, None, p.attempts + 1)
            if len(covered) > 1:
                log.info(
                    "delivery.coalesced",
                    room=lane.target.name,
                    events=len(covered),
                    ms=ms,
                )
            return
        self._metrics.notifications_failed.labels(reason=outcome.kind.value).inc()
        if outcome.kind.transient:
            lane.failures += 1
            now = unix_now()
            if outcome.retry_at is not None and outcome.retry_at > now:
                delay = outcome.retry_at - now
            else:
                delay = backoff_delay(lane.failures, self._rng)
            lane.retry_at = now + delay
            error = outcome.error or outcome.kind.value
            self._spool.mark_attempt(ids, error)
            for p in covered:
                p.attempts += 1
                p.last_error = error
            log.warning(
                "delivery.failed",
                room=lane.target.name,
                outcome=outcome.kind.value,
                status=outcome.status,
                error=outcome.error,
                events=len(covered),
                event_id=covered[0].ticket.event_id,
                retry_in=round(delay, 3),
                ms=ms,
            )
            return
        error = outcome.error or outcome.kind.value
        log.error(
            "delivery.dead_lettered",
            room=lane.target.name,
            outcome=outcome.kind.value,
            status=outcome.status,
            error=outcome.error,
            events=len(covered),
            event_ids=[p.ticket.event_id for p in covered[:20]],
            reason="permanent",
        )
        # HipChat refused a request: that was an attempt, and the dead letter counts it.
        self._spool.mark_attempt(ids, error)
        self._dead(lane, covered, "permanent", error, outcome=outcome.kind.value)

    def _dead(
        self,
        lane: _Lane,
        items: Sequence[_Pending],
        reason: str,
        error: str | None,
        *,
        outcome: str | None = None,
    ) -> None:
        self._spool.mark_dead([p.id for p in items], reason, error)
        self._forget(lane, items)
        for p in items:
            self._finish(p, lane.target, outcome or reason, p.attempts + 1)

    def _expire(self, lane: _Lane) -> None:
        cutoff = unix_now() - self._max_age
        expired: list[_Pending] = []
        for p in lane.items:
            if p.accepted_at >= cutoff:
                break
            expired.append(p)
        if expired:
            log.error(
                "delivery.dead_lettered",
                room=lane.target.name,
                reason="expired",
                max_age=self._max_age,
                events=len(expired),
                event_ids=[p.ticket.event_id for p in expired[:20]],
                error=expired[-1].last_error,
            )
            self._dead(lane, expired, "expired", expired[-1].last_error)

    def _finish(self, p: _Pending, target: Target, failure: str | None, attempts: int) -> None:
        ticket = p.ticket
        if ticket.rooms is None:
            ticket.rooms = []
        ticket.rooms.append(target.name)
        ticket.attempts = max(ticket.attempts, attempts)
        if failure is not None:
            if ticket.failures is None:
                ticket.failures = []
            ticket.failures.append(failure)
        ticket.remaining -= 1
        if ticket.remaining > 0:
            return
        fields: dict[str, object] = {
            "event_id": ticket.event_id,
            "source": ticket.source,
            "check": ticket.check,
            "rooms": ticket.rooms,
            "ms": round((unix_now() - ticket.accepted_at) * 1000, 1),
        }
        if ticket.attempts > 1:
            fields["attempts"] = ticket.attempts
        if ticket.failures:
            log.error("event.failed", outcome=",".join(sorted(set(ticket.failures))), **fields)
        else:
            log.info("event.delivered", outcome="sent", **fields)
