"""HipChat's budget shared by every instance on one PostgreSQL spool.

HipChat counts per token and per room, not per process: two instances that
each believed they owned the whole budget would together get 429s. With a
PostgreSQL spool, :class:`SharedBudget` keeps :class:`RateBudget`'s local
policy (pacing, requests in flight, FIFO waiters, 429 pauses) and adds one
more condition before a request goes out: a unit of the token's row and one
of the room's row, consumed together and atomically in a
:class:`BudgetStore`. The instances together then never send more in a window
than the budget allows, whatever their number.

A store holds, per key, what is left and when the window ends:

- ``consume`` takes one unit of every key asked, or none: when a key has
  nothing left, the request waits until that key's window ends. A key
  without a live window starts one with its configured (or last reported)
  limit: 5 minutes for the token, 1 minute for a room.
- ``record`` writes what HipChat's headers said once an answer arrives.
  HipChat is the authority on its window and its count, but an answer is
  late by the time it is written: other instances may have consumed since.
  So within the row's window the lower of the two counts wins (an answer can
  lower ``remaining``, never raise it), except that a limit HipChat reports
  above the one the row was started with adds the difference, as a single
  instance's budget follows a reported limit (still never above what HipChat
  says is left); an answer whose reset is later than
  the row's names a window HipChat has opened since, and replaces the row; an
  answer whose window is over is ignored. A 429 sets ``remaining`` to 0
  until its reset (else until the row's, else for a whole window).

Pacing is shared as well: every PEERS_REFRESH seconds an instance counts the
instances on the store and paces the token's requests as one of them
(:meth:`RateBudget.share_pacing`), so N instances spread a window's budget as
one would, and a storm's events get the same time to fold into fewer messages.
The count comes before the local grant that needs it: counted after, each
instance would send a storm's first requests from a whole bucket (N buckets'
worth together) before its own share applied.

The token's key is a hash of the token (``rate:`` + SHA-256), never the
token; a room's key is ``flood:`` + a prefix of that hash + the room, since
rooms with one name on two HipChat servers are different rooms.

When the store cannot be reached (PostgreSQL down: the spool is local
then), the instance falls back to a :class:`LocalBudgetStore` holding its
fair share: what it last saw left divided by the number of instances it last
saw, until that window ends, then the limit divided by that number per
window. If every instance loses the server at once, they together stay
within the budget. The shared rows are used again at the first call that
reaches the server.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Final, Protocol, TypeVar

import structlog
import trio

from hipchatd.clock import unix_now
from hipchatd.config import HipChatSettings
from hipchatd.delivery.budget import RESET_MARGIN, RateBudget
from hipchatd.delivery.outcome import MAX_SERVER_WAIT, Outcome, OutcomeKind, RateInfo
from hipchatd.errors import HipchatdError

__all__ = [
    "FLOOD_WINDOW",
    "RATE_WINDOW",
    "BudgetStore",
    "BudgetStoreError",
    "LocalBudgetStore",
    "Report",
    "Row",
    "SharedBudget",
    "Want",
    "connect_store",
    "make_budget",
    "token_key",
]

log = structlog.get_logger()
_T = TypeVar("_T")

#: Seconds of HipChat's token window (500 requests per 5 minutes); never reported.
RATE_WINDOW: Final = 300.0
#: Seconds of HipChat's flood-control window (30 messages per minute per room).
FLOOD_WINDOW: Final = 60.0
#: Seconds within which two resets name one window (HipChat rounds its resets).
_SAME_WINDOW: Final = 1.0


class BudgetStoreError(HipchatdError):
    """The budget store cannot be reached or used now; the message says why, never a secret."""


@dataclass(frozen=True, slots=True)
class Want:
    """One unit of ``key``; a new window holds ``limit`` units for ``window`` seconds."""

    key: str
    limit: int
    window: float


@dataclass(frozen=True, slots=True)
class Row:
    """What a store holds for ``key``: units left until ``resets_at`` (a Unix time)."""

    key: str
    remaining: int
    resets_at: float


@dataclass(frozen=True, slots=True)
class Report:
    """What an answer said of ``key``: ``remaining`` until ``resets_at``.

    ``resets_at`` None (a 429 that named no time): the row's own window if
    it is live, else ``window`` seconds from now. ``raised``: how many units
    HipChat's reported limit is above the limit the request was granted
    under; the row's window gains them (never more than ``remaining``).
    """

    key: str
    remaining: int
    resets_at: float | None
    window: float
    raised: int = 0


class BudgetStore(Protocol):
    """Where the budget lives. Blocking: called on a worker thread, one call at a time."""

    def consume(self, wants: Sequence[Want], now: float) -> tuple[bool, tuple[Row, ...]]:
        """Take one unit of every wanted key, or none; atomic across every user of the store.

        ``now`` is the caller's Unix time (the clock HipChat's resets are read
        with), which decides which windows are over. Returns whether the units
        were taken, and each key's row after (``remaining`` <= 0 for a key that
        refused). Raises BudgetStoreError.
        """
        ...

    def record(self, reports: Sequence[Report], now: float) -> None:
        """Write what HipChat said (module docstring) at ``now``. Raises BudgetStoreError."""
        ...

    def peers(self) -> int:
        """How many instances share this store now (at least 1). Raises BudgetStoreError."""
        ...

    def close(self) -> None:
        """Release the store's connections. Idempotent; never raises."""
        ...


def token_key(token: str) -> str:
    """The store's key for a token: a hash, so the token itself is never stored."""
    return "rate:" + hashlib.sha256(b"hipchatd budget\0" + token.encode()).hexdigest()


def retry_at(rows: Iterable[Row], now: float) -> float:
    """When a refused consume may be asked again: the latest reset of an exhausted key."""
    return max((row.resets_at for row in rows if row.remaining <= 0), default=now)


class LocalBudgetStore:
    """A store in this process's memory, at ``1/share`` of each limit.

    ``seen`` are rows last read from the shared store: their windows keep
    going here, with ``remaining // share`` left.
    """

    def __init__(self, *, share: int = 1, seen: Iterable[Row] = ()) -> None:
        self._share = max(1, share)
        self._rows: dict[str, Row] = {
            row.key: Row(row.key, row.remaining // self._share, row.resets_at) for row in seen
        }

    def consume(self, wants: Sequence[Want], now: float) -> tuple[bool, tuple[Row, ...]]:
        rows = tuple(self._live(want, now) for want in wants)
        granted = all(row.remaining > 0 for row in rows)
        if granted:
            rows = tuple(Row(row.key, row.remaining - 1, row.resets_at) for row in rows)
            self._rows.update((row.key, row) for row in rows)
        return granted, rows

    def record(self, reports: Sequence[Report], now: float) -> None:
        for report in reports:
            row = self._rows.get(report.key)
            live = row is not None and row.resets_at > now
            resets_at = report.resets_at
            if resets_at is None:
                resets_at = row.resets_at if row is not None and live else now + report.window
            elif resets_at <= now:
                continue  # a window that is over already
            remaining = report.remaining // self._share
            if row is not None and live and resets_at <= row.resets_at + _SAME_WINDOW:
                remaining = min(remaining, row.remaining + report.raised // self._share)
            self._rows[report.key] = Row(report.key, remaining, resets_at)

    def peers(self) -> int:
        return 1

    def close(self) -> None:
        self._rows.clear()

    def _live(self, want: Want, now: float) -> Row:
        row = self._rows.get(want.key)
        if row is None or row.resets_at <= now:
            row = self._rows[want.key] = Row(
                want.key, max(1, want.limit // self._share), now + want.window
            )
        return row


#: Seconds between two counts of the instances sharing the store (for the fair share).
PEERS_REFRESH: Final = 30.0
#: Seconds between two tries of an unreachable store while the fair share holds: each try
#: may wait for a connection timeout, and a send waits for it.
STORE_RETRY: Final = 5.0
#: Keys whose last row is kept for a fallback; more are forgotten (rooms come from events).
_MAX_SEEN: Final = 4096


class SharedBudget(RateBudget):
    """A :class:`RateBudget` whose grants also consume a unit of a :class:`BudgetStore`.

    The local policy decides first (pacing, in flight, waiters); then one
    call on a worker thread consumes the token's and the room's units. A
    refusal gives the local grant back and waits for the reset named.
    Answers are written to the store by a system task, soon after
    :meth:`release`, so a 429 pauses every instance.
    """

    def __init__(
        self,
        store: BudgetStore,
        *,
        token: str,
        rate_limit: int = 100,
        flood_limit: int = 30,
    ) -> None:
        super().__init__(
            rate_limit=rate_limit,
            rate_window=RATE_WINDOW,
            flood_limit=flood_limit,
            flood_window=FLOOD_WINDOW,
        )
        self._store = store
        self._token_key = token_key(token)
        # Rooms of one name on two HipChat servers are two rooms: keyed under their token.
        self._room_prefix = f"flood:{self._token_key[5:21]}:"
        self._rate_limit = rate_limit
        self._flood_limit_seen = flood_limit
        self._reports: list[Report] = []
        self._flushing = False
        self._limiter = trio.CapacityLimiter(1)
        self._fallback: LocalBudgetStore | None = None
        self._peers = 1
        self._peers_at = -math.inf
        self._retry_store_at = -math.inf
        self._seen: dict[str, Row] = {}
        #: per key, the limit its last consume would start a window with.
        self._asked: dict[str, int] = {}

    async def acquire(self, key: str) -> None:
        """Wait until both this instance's policy and the shared budget allow a request.

        The instances are counted before the local grant when the count is due:
        a storm's first requests would otherwise draw on a whole bucket each.
        """
        if self._fallback is None and unix_now() - self._peers_at >= PEERS_REFRESH:
            peers = await self._call(partial(self._count_peers, unix_now()))
            if peers is not None:
                self.share_pacing(peers)
        while True:
            await super().acquire(key)
            try:
                now = unix_now()
                granted, rows = await self._call(partial(self._consume, self._wants(key), now))
            except BaseException:
                super().abandon(key)
                raise
            if granted:
                return
            super().abandon(key)
            wait = retry_at(rows, now) + RESET_MARGIN - unix_now()
            log.debug("budget.waited", key=key, seconds=round(wait, 3))
            await trio.sleep(min(max(wait, 0.0), MAX_SERVER_WAIT))

    def release(self, key: str, outcome: Outcome) -> None:
        """Settle locally, then write what HipChat said to the store (soon, off this task)."""
        super().release(key, outcome)
        reports = self._reports_of(key, outcome)
        if not reports:
            return
        self._reports.extend(reports)
        if not self._flushing:
            self._flushing = True
            trio.lowlevel.spawn_system_task(self._flush, name="budget.flush")

    @property
    def local(self) -> bool:
        """Whether the budget is this instance's fair share (the store is unreachable)."""
        return self._fallback is not None

    # --- internals ---

    def _wants(self, key: str) -> tuple[Want, Want]:
        wants = (
            Want(self._token_key, self._rate_limit, RATE_WINDOW),
            Want(self._room_prefix + key, self._flood_limit_seen, FLOOD_WINDOW),
        )
        if len(self._asked) >= _MAX_SEEN:
            self._asked.clear()
        self._asked.update((want.key, want.limit) for want in wants)
        return wants

    def _reports_of(self, key: str, outcome: Outcome) -> list[Report]:
        families = (
            (self._token_key, outcome.rate, RATE_WINDOW),
            (self._room_prefix + key, outcome.flood, FLOOD_WINDOW),
        )
        now = unix_now()
        reports: list[Report] = []
        for store_key, info, window in families:
            raised = 0
            if info is not None and info.limit is not None and info.limit >= 1:
                if store_key == self._token_key:
                    self._rate_limit = info.limit
                else:
                    self._flood_limit_seen = info.limit
                # The window may have started under a lower limit (the configured one, or
                # one HipChat reported before): HipChat's own limit holds from now on.
                raised = max(0, info.limit - self._asked.get(store_key, info.limit))
            report = _report(store_key, info, window, now, raised)
            if report is not None:
                reports.append(report)
        if outcome.kind is OutcomeKind.RATE_LIMITED:
            hit = [f for f in families if f[1] is not None and f[1].remaining == 0] or list(
                families
            )
            for store_key, info, window in hit:
                known = [
                    t
                    for t in (outcome.retry_at, info.reset if info is not None else None)
                    if t is not None and now < t <= now + MAX_SERVER_WAIT
                ]
                reports.append(Report(store_key, 0, max(known) if known else None, window))
        return reports

    async def _flush(self) -> None:
        # A system task: an exception here would end the daemon, so a bug is logged and the
        # reports are dropped (HipChat repeats what they said in its next answer).
        try:
            while self._reports:
                reports, self._reports = self._reports, []
                await self._call(partial(self._record, reports, unix_now()))
        except Exception:
            log.error("budget.record_failed", exc_info=True)
        finally:
            self._flushing = False

    async def _call(self, function: Callable[[], _T]) -> _T:
        async with self._limiter:
            return await trio.to_thread.run_sync(function)

    def _consume(self, wants: Sequence[Want], now: float) -> tuple[bool, tuple[Row, ...]]:
        if self._fallback is not None and now < self._retry_store_at:
            return self._fallback.consume(wants, now)
        try:
            granted, rows = self._store.consume(wants, now)
            if self._fallback is not None:
                self._fallback = None
                log.info("budget.restored")
        except BudgetStoreError as exc:
            return self._local(exc, now).consume(wants, now)
        if len(self._seen) >= _MAX_SEEN:
            self._seen.clear()
        self._seen.update((row.key, row) for row in rows)
        return granted, rows

    def _record(self, reports: Sequence[Report], now: float) -> None:
        if self._fallback is not None and now < self._retry_store_at:
            self._fallback.record(reports, now)
            return
        try:
            self._store.record(reports, now)
        except BudgetStoreError as exc:
            self._local(exc, now).record(reports, now)

    def _count_peers(self, now: float) -> int | None:
        """The instances on the store, if a count is still due (another caller may have counted).

        A store that cannot be reached keeps the last count; the next consume
        finds out and falls back.
        """
        if now - self._peers_at < PEERS_REFRESH:
            return None
        self._peers_at = now
        try:
            self._peers = self._store.peers()
        except BudgetStoreError:
            return None
        return self._peers

    def _local(self, exc: BudgetStoreError, now: float) -> LocalBudgetStore:
        self._retry_store_at = now + STORE_RETRY
        if self._fallback is None:
            self._fallback = LocalBudgetStore(share=self._peers, seen=self._seen.values())
            log.warning("budget.degraded", share=f"1/{self._peers}", error=str(exc))
        return self._fallback


def _report(
    key: str, info: RateInfo | None, window: float, now: float, raised: int
) -> Report | None:
    """What a header family says, if it says a count and a window that is on now."""
    if info is None or info.remaining is None or info.remaining < 0 or info.reset is None:
        return None
    if not now < info.reset <= now + MAX_SERVER_WAIT:
        return None
    return Report(key, info.remaining, info.reset, window, raised)


async def connect_store(store: BudgetStore | None) -> None:
    """Reach ``store`` once at start, so that the first send does not wait for a connection.

    A store that cannot be reached now is logged; the first send tries again.
    """
    if store is None:
        return
    try:
        await trio.to_thread.run_sync(store.peers)
    except BudgetStoreError as exc:
        log.warning("budget.unreachable", error=str(exc))


def make_budget(settings: HipChatSettings, store: BudgetStore | None) -> RateBudget:
    """The budget for ``settings``' token: shared through ``store``, or this process's own."""
    if store is None:
        return RateBudget(rate_limit=settings.rate_limit, flood_limit=settings.flood_limit)
    return SharedBudget(
        store,
        token=settings.api_token.reveal(),
        rate_limit=settings.rate_limit,
        flood_limit=settings.flood_limit,
    )
