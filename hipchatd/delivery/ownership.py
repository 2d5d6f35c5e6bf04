"""Lane ownership among instances sharing one spool: send only for the lanes held.

With a spool several instances share (PostgreSQL), each lane (a room, a
user) has one owner at a time, through a lease the spool keeps
(:class:`~hipchatd.delivery.spool.LaneLeases`). The :class:`LeaseManager`
holds this instance's leases: every ``renew_every`` seconds a round renews
them, gives up lanes with nothing pending and claims a fair share of lanes
with pending entries and no live owner. The owner reads its lanes' entries
from the shared queue, whichever instance accepted them, by id above the
last it read, and hands them to the dispatcher: so per-lane acceptance
order, one message in flight per lane and coalescing hold across the
cluster. Entries this instance accepts for a lane held elsewhere are left to
that lane's owner.

An owner that cannot renew stops before its lease could expire on the
server: a round that succeeds sets the local stop to its start plus the TTL
less ``SAFETY_MARGIN`` on the monotonic clock (the server set ``now() +
ttl`` later than that start), and the dispatcher starts no attempt for a
lane past it and cuts an attempt in flight short there. So two instances
never send for one lane at once; a lane taken over is read again from the
queue, and the entries whose request was in flight at the old owner are
sent again (at least once).

Wake-ups: another instance's commit, release or re-queue notifies the
spool's channel; the manager then reads its lanes and runs a round (at most
every ``ROUND_GAP``). A notification missed (NOTIFY reaches only the
sessions listening when it is sent) is covered by the round every
``renew_every`` seconds, each followed by a read: the safety poll.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import structlog
import trio

from hipchatd.delivery.lanes import Dispatcher
from hipchatd.delivery.routing import Target
from hipchatd.delivery.spool import Held, LaneLeases, SpoolError, lane_of
from hipchatd.delivery.tickets import Queued, tickets_for
from hipchatd.metrics import Metrics

__all__ = ["LISTEN_WAIT", "ROUND_GAP", "SAFETY_MARGIN", "LeaseManager"]

log = structlog.get_logger()

#: Seconds before the server could expire its lease that an owner stops starting attempts:
#: the round trip of the round that set it, and clocks that do not run at exactly one rate.
SAFETY_MARGIN: Final = 2.0

#: Seconds at least between rounds asked for by notifications (a storm notifies every
#: commit, and a round reads every lane with pending entries).
ROUND_GAP: Final = 0.5

#: Seconds of one wait on the listening connection (a stop waits at most this for it), and
#: before listening again after the server could not be reached.
LISTEN_WAIT, LISTEN_RETRY = 0.5, 1.0

#: Seconds a clean stop gives the release of every lease (the others then take over at once).
RELEASE_GRACE: Final = 2.0


class LeaseManager:
    """This instance's lane leases, and the reads that feed its lanes from the shared queue.

    ``lease_left`` is the dispatcher's gate; ``enqueue`` takes intake's committed
    entries (a :class:`~hipchatd.delivery.tickets.Feed`) only as a hint to read.
    """

    def __init__(self, leases: LaneLeases, metrics: Metrics) -> None:
        self._leases = leases
        self._metrics = metrics
        self._dispatcher: Dispatcher | None = None
        #: the lanes held after the last round that succeeded.
        self._held: frozenset[str] = frozenset()
        #: trio time (monotonic) after which no attempt starts for the lanes held.
        self._until = 0.0
        #: per lane held, the highest id handed to the dispatcher.
        self._after: dict[str, int] = {}
        self._wake = trio.Event()
        self._round_asked = True
        self._read_asked = False

    @property
    def held(self) -> frozenset[str]:
        """The lanes held (``room:NAME``, ``user:NAME``), whether or not still safe to send for."""
        return self._held

    def owns(self, target: Target) -> bool:
        """True while this instance may start sending to ``target``."""
        return self.lease_left(target) > 0

    def lease_left(self, target: Target) -> float:
        """Seconds this instance may still send to ``target`` (0 when its lane is not held).

        The dispatcher starts no attempt at 0 and ends one in flight when it
        gets there, so a request of this instance is not in flight when
        another may take the lane over (HipChat may still act on a request
        whose answer came too late: at least once).
        """
        if lane_of(target) not in self._held:
            return 0.0
        return max(0.0, self._until - trio.current_time())

    def enqueue(self, entries: Iterable[Queued]) -> None:
        """Entries committed here: the owner of their lane reads them from the queue."""
        for entry, _, _ in entries:
            if lane_of(entry.target) in self._held:
                self._read_asked = True
            else:
                self._round_asked = True
        self._wake.set()

    async def run(
        self,
        dispatcher: Dispatcher,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Hold leases and feed ``dispatcher`` until cancelled; then release them all."""
        self._dispatcher = dispatcher
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._listen)
                await self._round()
                task_status.started()
                await self._loop()
        finally:
            lanes, self._held = self._held, frozenset()
            self._drop(lanes)
            with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_GRACE):
                await self._leases.release()

    async def _loop(self) -> None:
        last_round = trio.current_time()
        while True:
            self._wake = trio.Event()
            self._check_expiry()
            gap = ROUND_GAP if self._round_asked else self._leases.renew_every
            next_round = last_round + gap
            if trio.current_time() >= next_round:
                await self._round()
                last_round = trio.current_time()
            elif self._read_asked:
                self._read_asked = False
                await self._read()
            else:
                deadline = next_round if not self._held else min(next_round, self._until)
                with trio.move_on_at(deadline):
                    await self._wake.wait()

    async def _round(self) -> None:
        started = trio.current_time()
        self._round_asked = False
        try:
            held = await self._leases.round()
        except SpoolError as exc:
            self._metrics.lease_renewals_failed.inc()
            log.error(
                "lease.renew_failed",
                error=str(exc),
                lanes=len(self._held),
                stop_in=round(max(0.0, self._until - trio.current_time()), 1),
            )
            return
        self._until = started + self._leases.ttl - SAFETY_MARGIN
        self._adopt(held)
        # Every round is also the safety poll of the reads.
        self._read_asked = True

    def _adopt(self, held: Held) -> None:
        gone = self._held - held.lanes
        gained = held.lanes - self._held
        self._held = held.lanes
        self._drop(gone)
        for lane in gained:
            self._after[lane] = 0
        if held.taken_over:
            self._metrics.lease_takeovers.inc(len(held.taken_over))
            log.warning("lease.taken_over", lanes=sorted(held.taken_over)[:20])
        if gained:
            log.info("lease.claimed", lanes=sorted(gained)[:20], claimed=len(gained))
        self._metrics.lanes_owned.set(len(held.lanes))

    def _drop(self, lanes: frozenset[str]) -> None:
        """Stop feeding these lanes; the dispatcher forgets what it holds of them."""
        if not lanes:
            return
        for lane in lanes:
            self._after.pop(lane, None)
        if self._dispatcher is not None:
            self._dispatcher.forget(lambda target: lane_of(target) in lanes)

    def _check_expiry(self) -> None:
        if self._held and trio.current_time() >= self._until:
            lost, self._held = self._held, frozenset()
            self._drop(lost)
            self._metrics.lanes_owned.set(0)
            log.error(
                "lease.expired",
                lanes=len(lost),
                error="the leases could not be renewed: sending stopped for their lanes",
            )

    async def _read(self) -> None:
        if not self._after or self._dispatcher is None:
            return
        try:
            entries = await self._leases.read(dict(self._after))
        except SpoolError as exc:
            log.error("lease.read_failed", error=str(exc))
            return
        self._check_expiry()
        mine = [e for e in entries if lane_of(e.target) in self._after]
        for entry in mine:
            lane = lane_of(entry.target)
            self._after[lane] = max(self._after[lane], entry.id)
        if mine:
            batch, _ = tickets_for(mine)
            self._dispatcher.enqueue(batch)

    async def _listen(self) -> None:
        failing = False
        while True:
            try:
                news = await self._leases.wait(LISTEN_WAIT)
            except SpoolError as exc:
                if not failing:
                    log.warning("lease.listen_failed", error=str(exc), retry_in=LISTEN_RETRY)
                failing = True
                await trio.sleep(LISTEN_RETRY)
                continue
            failing = False
            if news:
                self._read_asked = self._round_asked = True
                self._wake.set()
