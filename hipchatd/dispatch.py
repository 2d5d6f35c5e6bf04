"""Fan-out: each accepted event becomes a task, one delivery per target.

``submit`` is synchronous and never waits, so the socket side never waits on
HipChat. Every attempt runs inside ``trio.move_on_after(timeout)``: the
integration's hard stop. A CapacityLimiter bounds concurrent requests (and
matches the HTTP pool).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog
import trio

from hipchatd.config import HipChatSettings
from hipchatd.events import Event
from hipchatd.hipchat import HipChatClient, Outcome, OutcomeKind
from hipchatd.metrics import Metrics
from hipchatd.render import render
from hipchatd.routing import Target

__all__ = ["Delivery", "Dispatcher", "Job"]

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class Job:
    """One accepted event and where it goes."""

    event: Event
    targets: tuple[Target, ...]
    #: trio time at acceptance.
    accepted_at: float


@dataclass(frozen=True, slots=True)
class Delivery:
    """The result for one target."""

    target: Target
    outcome: Outcome


class Dispatcher:
    """Owns the delivery nursery; ``submit`` from any task of the same run."""

    def __init__(
        self,
        settings: Callable[[], HipChatSettings],
        client: Callable[[], HipChatClient],
        metrics: Metrics,
        *,
        queue_size: int,
        concurrency: int,
    ) -> None:
        self._settings = settings
        self._client = client
        self._metrics = metrics
        self._queue_size = queue_size
        self._limiter = trio.CapacityLimiter(concurrency)
        self._nursery: trio.Nursery | None = None
        self.pending = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run deliveries until cancelled; cancelling abandons in-flight attempts."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def submit(self, job: Job) -> bool:
        """Queue ``job``; False (and an ERROR log) when ``queue_size`` events are pending."""
        if self._nursery is None:
            raise RuntimeError("dispatcher is not running")
        if self.pending >= self._queue_size:
            self._metrics.events_rejected.labels(reason="queue_full").inc()
            log.error(
                "event.refused",
                event_id=job.event.id,
                source=job.event.source,
                check=job.event.check,
                reason="delivery queue full",
                queue_size=self._queue_size,
            )
            return False
        self.pending += 1
        self._metrics.events_accepted.inc()
        self._nursery.start_soon(self._deliver_event, job)
        return True

    async def _deliver_event(self, job: Job) -> None:
        results: list[Delivery] = []
        try:
            async with trio.open_nursery() as nursery:
                for target in job.targets:
                    nursery.start_soon(self._deliver_one, job, target, results)
        finally:
            self.pending -= 1
        failed = [d for d in results if d.outcome.kind is not OutcomeKind.SENT]
        ms = round((trio.current_time() - job.accepted_at) * 1000, 1)
        summary = log.info if not failed else log.error
        summary(
            "event.delivered" if not failed else "event.failed",
            event_id=job.event.id,
            source=job.event.source,
            check=job.event.check,
            rooms=[d.target.name for d in results],
            outcome="sent"
            if not failed
            else ",".join(sorted({d.outcome.kind.value for d in failed})),
            ms=ms,
        )

    async def _deliver_one(self, job: Job, target: Target, results: list[Delivery]) -> None:
        settings = self._settings()
        message = render(job.event, target, settings.api_version)
        client = self._client()
        async with self._limiter:
            with trio.move_on_after(settings.timeout) as scope:
                outcome = await client.send(target, message)
            if scope.cancelled_caught:
                outcome = Outcome(
                    OutcomeKind.TIMEOUT, error=f"no answer within timeout={settings.timeout:g} s"
                )
        results.append(Delivery(target, outcome))
        if outcome.kind is OutcomeKind.SENT:
            self._metrics.notifications.labels(api_version=settings.api_version).inc()
            self._metrics.notification_latency.observe(trio.current_time() - job.accepted_at)
        else:
            self._metrics.notifications_failed.labels(reason=outcome.kind.value).inc()
            log.warning(
                "delivery.failed",
                event_id=job.event.id,
                room=target.name,
                outcome=outcome.kind.value,
                status=outcome.status,
                error=outcome.error,
            )
        if outcome.rate is not None and outcome.rate.remaining is not None:
            self._metrics.ratelimit_remaining.set(outcome.rate.remaining)
