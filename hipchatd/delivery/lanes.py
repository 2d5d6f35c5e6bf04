"""Delivery: one lane per target, durable, paced by HipChat's budget, coalescing.

Every accepted event is in the spool, one entry per target. Entries wait in the lane of
their target (a room, or a user), in acceptance order. A lane has at most one message in
flight; while it cannot send (its previous message is in flight, the rate budget says wait,
or a retry is due later), its entries accumulate, and when it can send again they go out
together in the fewest messages (:mod:`hipchatd.delivery.coalesce`). So per target, messages
go out in acceptance order and a resolve never overtakes the alert it resolves.

Outcomes: a 2xx removes the entries from the spool. A transient failure (rate limit, 5xx,
transport error, timeout) retries the lane after the time HipChat named, or after an
exponential backoff with full jitter. A permanent failure (400, 401, 403, 404) moves the
entries to the dead-letter table at once.

Expiry has its own timer. Every wait of a lane (for its retry time, for the rate budget, for
a free connection) runs under a deadline at its oldest entry's ``accepted_at + max_age``;
when it passes, the entries older than ``max_age`` are dead-lettered as ``expired`` and the
lane waits again for the rest. So ``max_age`` holds even while HipChat names a wait hours
away, and a reload that changes ``max_age`` moves the deadlines of waiting lanes too.

A lane lives only while it has work: once it has had no entries, no retry due and nothing in
flight for ``LANE_IDLE`` seconds, its task ends and the lane is dropped, so rooms named once
in event data cost nothing later. A later entry for the same target starts a fresh lane.

Each attempt runs inside ``trio.move_on_after(timeout)``; a CapacityLimiter bounds
concurrent requests (and matches the HTTP pool). An attempt is also a fault boundary: an
unexpected exception in it (a bug) is logged with its traceback and counted
(:func:`hipchatd.boundary.caught`), its budget grant is given back, and the lane backs off
and retries like after a transient failure; the lane and every other lane go on.
"""

from __future__ import annotations

import contextvars
import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import structlog
import trio
from structlog.contextvars import bind_contextvars, unbind_contextvars

from hipchatd.boundary import caught
from hipchatd.clock import unix_now
from hipchatd.config import HipChatSettings
from hipchatd.delivery.budget import RateBudget
from hipchatd.delivery.coalesce import FirstMessage
from hipchatd.delivery.hipchat import HipChatClient, Outcome, OutcomeKind
from hipchatd.delivery.routing import Target
from hipchatd.delivery.spool import Entry, Spool, SpoolReadError
from hipchatd.delivery.templated import Shaping
from hipchatd.delivery.tickets import Ticket
from hipchatd.errors import EventError
from hipchatd.jsontext import loads
from hipchatd.metrics import Metrics
from hipchatd.sensu.events import Event, parse_event

__all__ = ["LANE_IDLE", "STUCK_SLACK", "Dispatcher", "Lane", "Ticket", "backoff_delay"]

log = structlog.get_logger()

#: Retry backoff: first delay up to 1 s, doubling, never more than 60 s (full jitter).
BACKOFF_BASE = 1.0
BACKOFF_FACTOR = 2.0
BACKOFF_CAP = 60.0
#: Entries rendered for one attempt at most: bounds the work of one send after a long outage.
MAX_BATCH = 2000
#: Entries first considered for one message while the lane has not yet filled one; more
#: are read while one message still holds them all, as many as its room looks to take.
FIRST_CHUNK = 128
#: Entries read past what the lane's last full message held: one to find the next one full,
#: one for a line a little longer. A spilled entry read and not sent is read again later.
FIT_SLACK = 2
#: Seconds an empty lane waits for its target's next entry before its task ends and
#: the lane is dropped: a burst to one room keeps its lane, while rooms named once in
#: event data (about 4 KB of task and lane each) are held only this long.
LANE_IDLE = 5.0
#: Seconds before a lane whose lease is not held looks again (in a cluster of instances).
NOT_HELD_RETRY = 1.0
#: Seconds past ``max_age`` plus one attempt's timeout an entry may stay pending
#: before ``/healthz`` calls delivery stuck: covers a fault back-off (at most
#: BACKOFF_CAP), so only a lane that no longer runs its timers gets there.
STUCK_SLACK = BACKOFF_CAP + 30.0


def backoff_delay(failures: int, rng: random.Random) -> float:
    """Full-jitter exponential backoff for the ``failures``-th consecutive failure."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * BACKOFF_FACTOR ** max(0, failures - 1))
    return rng.uniform(0.0, ceiling)


@dataclass(slots=True, eq=False)
class _Pending:
    id: int
    accepted_at: float
    ticket: Ticket
    #: None once spilled: read back from the spool when its turn comes.
    event: Event | None
    attempts: int = 0
    last_error: str | None = None


@dataclass(eq=False)
class _Shared:
    """What every lane of one dispatcher uses, and the counts the dispatcher reads."""

    settings: Callable[[], HipChatSettings]
    client: Callable[[], HipChatClient]
    spool: Spool
    #: A reload that changes the token or the limits replaces it.
    budget: RateBudget
    metrics: Metrics
    max_age: float
    rng: random.Random
    limiter: trio.CapacityLimiter
    #: Entries held with their parsed event; past ``memory_events`` they are spilled.
    in_memory: int = 0
    #: Attempts between their budget grant and their outcome.
    in_flight: int = 0
    #: Set by ``Dispatcher.drain``: no new attempt starts.
    stopping: bool = False
    #: Set once stopping and no attempt is in flight.
    idle: trio.Event = field(default_factory=trio.Event)
    #: Seconds this instance may still send for a target (a cluster's lane lease; else inf):
    #: no attempt starts at 0, and none runs past it.
    lease_left: Callable[[Target], float] = field(default=lambda target: math.inf)


@dataclass(slots=True, eq=False)
class _Grant:
    """A rate-budget grant, settled exactly once: released after a request, else abandoned."""

    key: str
    budget: RateBudget | None = None

    def release(self, outcome: Outcome) -> None:
        budget, self.budget = self.budget, None
        if budget is not None:
            budget.release(self.key, outcome)

    def abandon(self) -> None:
        budget, self.budget = self.budget, None
        if budget is not None:
            budget.abandon(self.key)


@dataclass(slots=True, eq=False)
class Lane:
    """One target's entries in acceptance order, and the task that sends them, one at a time."""

    target: Target
    #: The rate budget's key: the budget is shared per room or user.
    key: str
    _shared: _Shared
    items: deque[_Pending] = field(default_factory=deque)
    wake: trio.Event = field(default_factory=trio.Event)
    failures: int = 0
    #: Unix time before which the lane does not send (a retry is due then).
    retry_at: float = 0.0
    #: The scope of the wait in progress, whose deadline is the oldest entry's expiry.
    waiting: trio.CancelScope | None = None
    #: That deadline passed: the oldest entry is expired, whatever float rounding says.
    expiry_due: bool = False
    #: Entries the last full message held (0: none yet): about what the next one reads back.
    fits: int = 0

    def add(self, pending: _Pending) -> None:
        """Queue one committed entry behind the others. Never blocks."""
        self.items.append(pending)
        self.wake.set()

    def move_expiry(self) -> None:
        """Move the deadline of the wait in progress to the oldest entry's (new) expiry."""
        if self.waiting is not None and self.items:
            self.waiting.deadline = self._expiry_deadline()

    async def run(self) -> None:
        """Send the lane's entries until it has been idle LANE_IDLE seconds, then return.

        An attempt binds its first event's ``event_id`` for every line logged
        while it runs (the client's too); the next step starts without it.
        """
        while await self._wait_for_entries():
            grant = _Grant(self.key)
            try:
                await self._step(grant)
                continue
            except Exception:
                # A bug in one attempt: loud, counted, retried like a transient failure.
                caught(self._shared.metrics, "lane", room=self.target.name)
                delay = self._back_off()
            finally:
                # A grant neither released nor abandoned (a bug, a cancellation) goes back.
                grant.abandon()
                unbind_contextvars("event_id")
            # Not under the expiry deadline: if expiring itself failed, it would fail again at once.
            await trio.sleep(delay)

    async def _wait_for_entries(self) -> bool:
        """Wait until the lane has entries to send; False once it has been idle too long.

        Only a lane with no entries, no retry due and nothing in flight is
        given up (its failure count goes with it). Between the last look at
        its entries and its dispatcher dropping it there is no checkpoint, so
        an entry enqueued meanwhile either found this lane or finds none and
        starts a new one: never a lane whose task has ended.
        """
        shared = self._shared
        while not self.items or shared.stopping:
            self.wake = trio.Event()
            if shared.stopping:
                await self.wake.wait()
                continue
            idle = max(0.0, self.retry_at - unix_now()) + LANE_IDLE
            with trio.move_on_after(idle):
                await self.wake.wait()
            if not self.items and not shared.stopping:
                return False
        return True

    async def _step(self, grant: _Grant) -> None:
        """Expire what is due, wait for the retry time and the budget, make one attempt.

        Returns early, to be called again, when an expiry deadline ends a wait.
        """
        shared = self._shared
        self._expire()
        if not self.items:
            return
        # A reload may replace the budget; this attempt settles with the one it used.
        with self._until_expiry() as waiting:
            delay = self.retry_at - unix_now()
            if delay > 0:
                # New events keep arriving meanwhile; they go out with the retry.
                await trio.sleep(delay)
            budget = shared.budget
            await budget.acquire(self.key)
            grant.budget = budget
        if waiting.cancelled_caught:
            return
        if shared.stopping or shared.lease_left(self.target) <= 0:
            grant.abandon()
            if not shared.stopping:
                # Not held (its owner drops its entries at once, or holds it again): look later.
                await trio.sleep(NOT_HELD_RETRY)
            return
        shared.in_flight += 1
        try:
            await self._attempt(grant)
        finally:
            shared.in_flight -= 1
            if shared.stopping and not shared.in_flight:
                shared.idle.set()

    def _expiry_deadline(self) -> float:
        """The trio time at which the lane's oldest entry is older than ``max_age``."""
        return trio.current_time() + (self.items[0].accepted_at + self._shared.max_age - unix_now())

    @contextmanager
    def _until_expiry(self) -> Iterator[trio.CancelScope]:
        """A scope for one wait of the lane, cancelled when its oldest entry expires.

        ``move_expiry`` moves its deadline when ``max_age`` changes.
        """
        with trio.CancelScope(deadline=self._expiry_deadline()) as scope:
            self.waiting = scope
            try:
                yield scope
            finally:
                self.waiting = None
        self.expiry_due = scope.cancelled_caught

    async def _attempt(self, grant: _Grant) -> None:
        shared = self._shared
        settings = shared.settings()
        limit = min(len(self.items), MAX_BATCH)
        # As many as the last full message held, and a little more to find this one full.
        size = min(limit, self.fits + FIT_SLACK if self.fits else FIRST_CHUNK)
        batch: list[_Pending] = []
        shaping = Shaping.of(settings, self.target)
        first = FirstMessage(self.target, settings.api_version, shaping)
        while True:
            # Read back (and parse) only as many spilled entries as the first
            # message can hold: grow the batch while one message covers it all.
            # Each event is packed once, however many reads it takes.
            more = [self.items[i] for i in range(len(batch), size)]
            try:
                loaded = await _read_back(shared.spool, more)
                await shaping.read(shared.spool, [p.id for p in more])
            except SpoolReadError as exc:
                # The spool could not be read back: like a failed request, try later.
                grant.abandon()
                delay = self._back_off()
                log.error(
                    "spool.read_failed", room=self.target.name, error=str(exc), retry_in=delay
                )
                return
            if shared.lease_left(self.target) <= 0:
                # The lane went to another instance meanwhile (``Dispatcher.forget``).
                grant.abandon()
                return
            broken = [p for p, e in zip(more, loaded, strict=True) if e is None]
            if broken:
                # A spool entry that no longer parses cannot be rendered: dead-letter it.
                self._dead(broken, "unreadable", "spooled event no longer parses")
                grant.abandon()
                return
            batch.extend(more)
            if not first.add(e for e in loaded if e is not None):
                self.fits = first.span.stop
                break
            if size >= limit:
                break
            size = min(limit, size + first.room())
        message = first.message()
        covered = batch[: first.span.stop]
        bind_contextvars(event_id=covered[0].ticket.event_id)
        with self._until_expiry() as waiting:
            await shared.limiter.acquire()
        if waiting.cancelled_caught:
            grant.abandon()
            return
        started = trio.current_time()
        outcome: Outcome | None = None
        try:
            with trio.move_on_after(min(settings.timeout, shared.lease_left(self.target))) as scope:
                outcome = await shared.client().send(self.target, message)
            if scope.cancelled_caught:
                outcome = Outcome.timeout(settings.timeout)
        finally:
            shared.limiter.release()
            grant.release(outcome or Outcome(OutcomeKind.TRANSPORT_ERROR, error="cancelled"))
        assert outcome is not None
        ms = round((trio.current_time() - started) * 1000, 1)
        self._settle(covered, outcome, settings, ms)

    def _back_off(self, named: float | None = None) -> float:
        """Count a failure; retry at ``named`` (Unix time) if ahead, else after a backoff."""
        self.failures += 1
        now = unix_now()
        if named is not None and named > now:
            delay = named - now
        else:
            delay = backoff_delay(self.failures, self._shared.rng)
        self.retry_at = now + delay
        return delay

    def _forget(self, done: Sequence[_Pending]) -> None:
        # ``done`` is a prefix of the lane except for unreadable entries.
        items = self.items
        if len(items) >= len(done) and all(items[i] is p for i, p in enumerate(done)):
            for _ in done:
                items.popleft()
        else:
            ids = {p.id for p in done}
            self.items = deque(p for p in items if p.id not in ids)
        self._shared.in_memory -= sum(1 for p in done if p.event is not None)

    def _settle(
        self, covered: Sequence[_Pending], outcome: Outcome, settings: HipChatSettings, ms: float
    ) -> None:
        shared = self._shared
        metrics = shared.metrics
        ids = [p.id for p in covered]
        if outcome.rate is not None and outcome.rate.remaining is not None:
            metrics.ratelimit_remaining.set(outcome.rate.remaining)
        if outcome.kind is OutcomeKind.SENT:
            shared.spool.mark_delivered(ids)
            self._forget(covered)
            self.failures = 0
            self.retry_at = 0.0
            now = unix_now()
            metrics.sent[settings.api_version].inc()
            for p in covered:
                metrics.notification_latency.observe(max(0.0, now - p.accepted_at))
                p.ticket.finish(self.target.name, None, p.attempts + 1, now)
            if len(covered) > 1:
                log.info("delivery.coalesced", room=self.target.name, events=len(covered), ms=ms)
            return
        metrics.failed[outcome.kind.value].inc()
        error = outcome.error or outcome.kind.value
        fields = {
            "room": self.target.name,
            "outcome": outcome.kind.value,
            "status": outcome.status,
            "error": outcome.error,
            "events": len(covered),
        }
        if outcome.kind.transient:
            delay = self._back_off(outcome.retry_at)
            shared.spool.mark_attempt(ids, error)
            for p in covered:
                p.attempts += 1
                p.last_error = error
            log.warning("delivery.failed", **fields, retry_in=round(delay, 3), ms=ms)
            return
        event_ids = [p.ticket.event_id for p in covered[:20]]
        log.error("delivery.dead_lettered", **fields, event_ids=event_ids, reason="permanent")
        # HipChat refused a request: that was an attempt, and the dead letter counts it.
        shared.spool.mark_attempt(ids, error)
        self._dead(covered, "permanent", error, outcome=outcome.kind.value)

    def _dead(
        self, items: Sequence[_Pending], reason: str, error: str | None, outcome: str | None = None
    ) -> None:
        self._shared.spool.mark_dead([p.id for p in items], reason, error)
        self._forget(items)
        for p in items:
            p.ticket.finish(self.target.name, outcome or reason, p.attempts + 1)

    def _expire(self) -> None:
        max_age = self._shared.max_age
        cutoff = unix_now() - max_age
        if self.expiry_due and self.items:
            cutoff = max(cutoff, self.items[0].accepted_at)
        self.expiry_due = False
        expired: list[_Pending] = []
        for p in self.items:
            if p.accepted_at > cutoff:
                break
            expired.append(p)
        if expired:
            log.error(
                "delivery.dead_lettered",
                room=self.target.name,
                reason="expired",
                max_age=max_age,
                events=len(expired),
                event_ids=[p.ticket.event_id for p in expired[:20]],
                error=expired[-1].last_error,
            )
            self._dead(expired, "expired", expired[-1].last_error)


async def _read_back(spool: Spool, batch: Sequence[_Pending]) -> list[Event | None]:
    """``batch``'s events, the spilled read back (or SpoolReadError); None where unreadable."""
    spilled = [p.id for p in batch if p.event is None]
    documents = await spool.load_documents(spilled) if spilled else {}
    events: list[Event | None] = []
    for p in batch:
        if p.event is not None:
            events.append(p.event)
            continue
        try:
            event = parse_event(loads(documents[p.id]))
        except (KeyError, ValueError, EventError):
            events.append(None)
            continue
        if not p.ticket.event_id:
            p.ticket.event_id = event.id
        events.append(event)
    return events


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
        lease_left: Callable[[Target], float] | None = None,
    ) -> None:
        limiter = trio.CapacityLimiter(concurrency)
        rng = rng if rng is not None else random.Random()
        self._shared = _Shared(settings, client, spool, budget, metrics, max_age, rng, limiter)
        if lease_left is not None:
            # Lanes of a cluster: entries come only for lanes held, attempts only while held.
            self._shared.lease_left = lease_left
        self._memory_events = memory_events
        self._lanes: dict[Target, Lane] = {}
        self._nursery: trio.Nursery | None = None
        #: The context lanes start in: the run task's, never that of the task enqueuing.
        self._context = contextvars.Context()

    @property
    def budget(self) -> RateBudget:
        """The rate budget the next attempts draw from (``reconfigure`` may replace it)."""
        return self._shared.budget

    def reconfigure(self, *, max_age: float, budget: RateBudget | None = None) -> None:
        """Apply a reloaded ``max_age`` and, for a new token or new limits, a new budget.

        Settings and client are read per attempt; lanes waiting now move
        their expiry deadlines to the new ``max_age`` at once.
        """
        self._shared.max_age = max_age
        if budget is not None:
            self._shared.budget = budget
        for lane in self._lanes.values():
            lane.move_expiry()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the lanes until cancelled; cancelling leaves undelivered entries in the spool."""
        self._context = contextvars.copy_context()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def enqueue(self, entries: Iterable[tuple[Entry, Ticket, Event | None]]) -> None:
        """Hand committed spool entries to their lanes. Never blocks."""
        shared = self._shared
        for entry, ticket, event in entries:
            if event is not None and shared.in_memory >= self._memory_events:
                # Spilled: the spool has the document; the id comes back with it
                # (kept while another target of the same event may still need it).
                event = None
                if ticket.remaining == 1:
                    ticket.event_id = ""
            if event is not None:
                shared.in_memory += 1
            pending = _Pending(
                entry.id, entry.accepted_at, ticket, event, entry.attempts, entry.last_error
            )
            self._lane(entry.target).add(pending)

    def forget(self, lanes: Callable[[Target], bool]) -> None:
        """Drop the entries of the lanes whose target ``lanes`` names: another instance sends them.

        An attempt in flight ends as it ends (its outcome is still recorded).
        """
        for lane in self._lanes.values():
            if lanes(lane.target) and lane.items:
                for p in lane.items:
                    if p.event is not None:
                        # Counted here, not again when an attempt in flight settles.
                        self._shared.in_memory -= 1
                        p.event = None
                lane.items.clear()
                lane.wake.set()

    async def drain(self) -> None:
        """Start no new attempt; return once no attempt is in flight.

        The caller bounds this with its shutdown grace; what is not delivered
        stays in the spool.
        """
        shared = self._shared
        shared.stopping = True
        for lane in self._lanes.values():
            lane.wake.set()
        if shared.in_flight:
            await shared.idle.wait()

    def stuck(self) -> str | None:
        """Why delivery looks stuck, for ``/healthz``; None while every lane keeps time.

        Expiry has its own timer, so a running lane gives up its oldest entry
        at ``max_age``, or once the attempt in flight then has ended. An entry
        pending ``STUCK_SLACK`` seconds past that means a lane no longer runs.
        O(lanes), and lanes are reaped when idle.
        """
        shared = self._shared
        if shared.stopping:
            return None
        now = unix_now()
        bound = shared.max_age + shared.settings().timeout + STUCK_SLACK
        for lane in self._lanes.values():
            if lane.items and now - lane.items[0].accepted_at > bound:
                age = now - lane.items[0].accepted_at
                return (
                    f"delivery stuck: an entry for {lane.target.name} has been pending"
                    f" {age:.0f} s (max_age {shared.max_age:g} s)"
                )
        return None

    def _lane(self, target: Target) -> Lane:
        # One lane per distinct target (room plus its settings), so a batch is
        # rendered with the settings of every event in it; the budget is
        # shared per room or user.
        lane = self._lanes.get(target)
        if lane is None:
            if self._nursery is None:
                raise RuntimeError("dispatcher is not running")
            key = target.name if target.kind == "room" else f"user:{target.name}"
            lane = self._lanes[target] = Lane(target, key, self._shared)
            # Whichever task enqueues (the spool's, or recovery's) lends the lane
            # nothing of its log context: a spawned task would otherwise copy it.
            self._context.run(self._nursery.start_soon, self._run_lane, lane)
        return lane

    async def _run_lane(self, lane: Lane) -> None:
        await lane.run()
        # No checkpoint since the lane last found itself empty (see Lane._wait_for_entries).
        del self._lanes[lane.target]
