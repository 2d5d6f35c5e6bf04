"""Delivery: one lane per target, durable, paced by HipChat's budget, coalescing.

Every accepted event is in the spool, one entry per target. Entries wait in
the lane of their target (a room, or a user), in acceptance order. A lane
has at most one message in flight; while it cannot send (its previous
message is in flight, the rate budget says wait, or a retry is due later),
its entries accumulate, and when it can send again they go out together in
the fewest messages (:mod:`hipchatd.delivery.coalesce`). So per target, messages go
out in acceptance order and a resolve never overtakes the alert it
resolves.

Outcomes: a 2xx removes the entries from the spool. A transient failure
(rate limit, 5xx, transport error, timeout) retries the lane after the time
HipChat named, or after an exponential backoff with full jitter. A
permanent failure (400, 401, 403, 404) moves the entries to the
dead-letter table at once.

Expiry has its own timer. Every wait of a lane (for its retry time, for the
rate budget, for a free connection) runs under a deadline at its oldest
entry's ``accepted_at + max_age``; when it passes, the entries older than
``max_age`` are dead-lettered as ``expired`` and the lane waits again for the
rest. So ``max_age`` holds even while HipChat names a wait hours away, and a
reload that changes ``max_age`` moves the deadlines of waiting lanes too.

A lane lives only while it has work: once it has had no entries, no retry
due and nothing in flight for ``LANE_IDLE`` seconds, its task ends and the
lane is dropped, so rooms named once in event data cost nothing later. A
later entry for the same target starts a fresh lane.

Each attempt runs inside ``trio.move_on_after(timeout)``; a CapacityLimiter
bounds concurrent requests (and matches the HTTP pool). An attempt is also a
fault boundary: an unexpected exception in it (a bug) is logged with its
traceback and counted (:func:`hipchatd.boundary.caught`), its budget grant
is given back, and the lane backs off and retries like after a transient
failure; the lane and every other lane go on.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import structlog
import trio

from hipchatd.boundary import caught
from hipchatd.clock import unix_now
from hipchatd.config import HipChatSettings
from hipchatd.delivery.budget import RateBudget
from hipchatd.delivery.coalesce import render_batch
from hipchatd.delivery.hipchat import HipChatClient, Outcome, OutcomeKind
from hipchatd.delivery.routing import Target
from hipchatd.delivery.spool import Entry, Spool, SpoolReadError
from hipchatd.errors import EventError
from hipchatd.metrics import Metrics
from hipchatd.sensu.events import Event, parse_event

__all__ = ["LANE_IDLE", "STUCK_SLACK", "Dispatcher", "Ticket", "backoff_delay"]

log = structlog.get_logger()

#: Retry backoff: first delay up to 1 s, doubling, never more than 60 s (full jitter).
BACKOFF_BASE = 1.0
BACKOFF_FACTOR = 2.0
BACKOFF_CAP = 60.0
#: Entries rendered for one attempt at most: bounds the work of one send after a long outage.
MAX_BATCH = 2000
#: Entries first considered for one message; doubled while one message still holds them all.
FIRST_CHUNK = 128
#: Seconds an empty lane waits for its target's next entry before its task ends and
#: the lane is dropped: a burst to one room keeps its lane, while rooms named once in
#: event data (about 4 KB of task and lane each) are held only this long.
LANE_IDLE = 5.0
#: Seconds past ``max_age`` plus one attempt's timeout an entry may stay pending
#: before ``/healthz`` calls delivery stuck: covers a fault back-off (at most
#: BACKOFF_CAP), so only a lane that no longer runs its timers gets there.
STUCK_SLACK = BACKOFF_CAP + 30.0


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
    #: The scope of the wait in progress, whose deadline is the oldest entry's expiry.
    waiting: trio.CancelScope | None = None
    #: That deadline passed: the oldest entry is expired, whatever float rounding says.
    expiry_due: bool = False


class _Grant:
    """A rate-budget grant, settled exactly once: released after a request, else abandoned."""

    __slots__ = ("budget", "key")

    def __init__(self, key: str) -> None:
        self.key = key
        self.budget: RateBudget | None = None

    def release(self, outcome: Outcome) -> None:
        budget, self.budget = self.budget, None
        if budget is not None:
            budget.release(self.key, outcome)

    def abandon(self) -> None:
        budget, self.budget = self.budget, None
        if budget is not None:
            budget.abandon(self.key)


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

        Settings and client are read per attempt; lanes waiting now move
        their expiry deadlines to the new ``max_age`` at once.
        """
        self._max_age = max_age
        if budget is not None:
            self._budget = budget
        for lane in self._lanes.values():
            if lane.waiting is not None and lane.items:
                lane.waiting.deadline = self._expiry_deadline(lane)

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

    def stuck(self) -> str | None:
        """Why delivery looks stuck, for ``/healthz``; None while every lane keeps time.

        Expiry has its own timer, so a running lane gives up its oldest entry
        at ``max_age``, or once the attempt in flight then has ended. An entry
        pending ``STUCK_SLACK`` seconds past that means a lane no longer runs.
        O(lanes), and lanes are reaped when idle.
        """
        if self._stopping:
            return None
        now = unix_now()
        bound = self._max_age + self._settings().timeout + STUCK_SLACK
        for lane in self._lanes.values():
            if lane.items and now - lane.items[0].accepted_at > bound:
                age = now - lane.items[0].accepted_at
                return (
                    f"delivery stuck: an entry for {lane.target.name} has been pending"
                    f" {age:.0f} s (max_age {self._max_age:g} s)"
                )
        return None

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
        while await self._wait_for_entries(lane):
            grant = _Grant(key)
            try:
                await self._step(key, lane, grant)
                continue
            except Exception:
                # A bug in one attempt: loud, counted, retried like a transient failure.
                caught(self._metrics, "lane", room=lane.target.name)
                lane.failures += 1
                delay = backoff_delay(lane.failures, self._rng)
                lane.retry_at = unix_now() + delay
            finally:
                # A grant neither released nor abandoned (a bug, a cancellation) goes back.
                grant.abandon()
            # Not under the expiry deadline: if expiring itself failed, it would fail again at once.
            await trio.sleep(delay)

    async def _wait_for_entries(self, lane: _Lane) -> bool:
        """Wait until the lane has entries to send; False once it was dropped for idleness.

        Only a lane with no entries, no retry due and nothing in flight is
        dropped (its failure count goes with it). Between the last look at
        its entries and its removal there is no checkpoint, so an entry
        enqueued meanwhile either found this lane or finds none and starts a
        new one: never a lane whose task has ended.
        """
        while not lane.items or self._stopping:
            lane.wake = trio.Event()
            if self._stopping:
                await lane.wake.wait()
                continue
            idle = max(0.0, lane.retry_at - unix_now()) + LANE_IDLE
            with trio.move_on_after(idle):
                await lane.wake.wait()
            if not lane.items and not self._stopping:
                del self._lanes[lane.target]
                return False
        return True

    async def _step(self, key: str, lane: _Lane, grant: _Grant) -> None:
        """Expire what is due, wait for the retry time and the budget, make one attempt.

        Returns early, to be called again, when an expiry deadline ends a wait.
        """
        self._expire(lane)
        if not lane.items:
            return
        # A reload may replace the budget; this attempt settles with the one it used.
        with self._until_expiry(lane) as waiting:
            delay = lane.retry_at - unix_now()
            if delay > 0:
                # New events keep arriving meanwhile; they go out with the retry.
                await trio.sleep(delay)
            budget = self._budget
            await budget.acquire(key)
            grant.budget = budget
        if waiting.cancelled_caught:
            return
        if self._stopping:
            grant.abandon()
            return
        self._in_flight += 1
        try:
            await self._attempt(lane, grant)
        finally:
            self._in_flight -= 1
            if self._stopping and not self._in_flight:
                self._idle.set()

    def _expiry_deadline(self, lane: _Lane) -> float:
        """The trio time at which the lane's oldest entry is older than ``max_age``."""
        return trio.current_time() + (lane.items[0].accepted_at + self._max_age - unix_now())

    @contextmanager
    def _until_expiry(self, lane: _Lane) -> Iterator[trio.CancelScope]:
        """A scope for one wait of the lane, cancelled when its oldest entry expires.

        ``reconfigure`` moves its deadline when ``max_age`` changes.
        """
        with trio.CancelScope(deadline=self._expiry_deadline(lane)) as scope:
            lane.waiting = scope
            try:
                yield scope
            finally:
                lane.waiting = None
        lane.expiry_due = scope.cancelled_caught

    async def _attempt(self, lane: _Lane, grant: _Grant) -> None:
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
            except SpoolReadError as exc:
                # The spool could not be read back: like a failed request, try later.
                grant.abandon()
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
                grant.abandon()
                return
            batch.extend(more)
            events.extend(e for e in loaded if e is not None)
            messages = render_batch(events, lane.target, settings.api_version, first_only=True)
            message, span = messages[0]
            if span.stop < len(batch) or size >= limit:
                break
            size = min(limit, size * 2)
        covered = batch[span.start : span.stop]
        with self._until_expiry(lane) as waiting:
            await self._limiter.acquire()
        if waiting.cancelled_caught:
            grant.abandon()
            return
        started = trio.current_time()
        outcome: Outcome | None = None
        try:
            with trio.move_on_after(settings.timeout) as scope:
                outcome = await self._client().send(lane.target, message)
            if scope.cancelled_caught:
                outcome = Outcome.timeout(settings.timeout)
        finally:
            self._limiter.release()
            grant.release(outcome or Outcome(OutcomeKind.TRANSPORT_ERROR, error="cancelled"))
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
        if lane.expiry_due and lane.items:
            cutoff = max(cutoff, lane.items[0].accepted_at)
        lane.expiry_due = False
        expired: list[_Pending] = []
        for p in lane.items:
            if p.accepted_at > cutoff:
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
