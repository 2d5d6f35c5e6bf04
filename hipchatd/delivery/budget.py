"""HipChat's rate budget: when the next request may go out.

HipChat limits each token to a number of requests per window (500 per 5
minutes on HipChat Cloud, 100 for HipChat Server user tokens) and each room
or user to 30 messages per minute (flood control). It reports both on every
response: ``X-Ratelimit-Limit/-Remaining/-Reset`` for the token and
``X-FloodControl-*`` for the recipient, resets as absolute Unix times that
may be integers or floats (docs/hipchat-api.md §6). :class:`RateBudget` keeps one
*family* for the token and one per key (a room name, or ``"user:<id>"``),
and a request may go out only when both its families allow it.

Policy: in each family both of these must allow the request.

(a) The hard limit. Never more requests in a window than the known
    remaining, counting our requests still in flight against it. Before any
    header, the configured limit applies over a window that starts at our
    first request. A header's remaining counts this request, and perhaps some
    of our concurrent ones, perhaps not; so what may still be sent is the
    remaining minus every other request in flight (conservative: one already
    counted is subtracted twice until its own answer arrives). Answers come
    back out of order, so within one window (one reset time) the highest
    count reported wins, and a reset more than ``SAME_WINDOW_SLACK`` later
    than the known one starts a new window. A request that got no headers
    (timeout, transport error, v1) is assumed counted. When nothing is left,
    wait for the reset plus ``RESET_MARGIN``, since resets are rounded up and
    clocks disagree a little. A RATE_LIMITED outcome proves the window full:
    remaining is 0 until ``retry_at`` (else the family's reported reset),
    and at least ``MIN_RATE_LIMITED_PAUSE`` away.

(b) Pacing. A token bucket of capacity ``max(1, limit // 4)``, refilled at
    ``limit / window`` per second, starting full. A storm's first messages
    (one to each of up to 25 rooms on a 100-request token) go out at once;
    the rest of the window's budget is spread over the window instead of
    being spent in its first seconds, which leaves time for events to pile up
    and be coalesced into fewer, fuller messages.

A header's limit replaces the configured one (the bucket gains or loses the
capacity difference); new keys start with the last flood limit reported.

No family can get stuck. :mod:`hipchatd.delivery.hipchat` drops a header family that
breaks the protocol before it gets here, and this module does not trust
what is left either: a limit below 1 is ignored (the last good one holds), a
negative remaining counts as absent and one above the limit as nothing
spent, and a reset or a 429's wait is never believed further than
``MAX_SERVER_WAIT`` ahead (a reset beyond it counts as absent; a wait beyond
it is cut to it). So every block ends within ``MAX_SERVER_WAIT`` plus
``RESET_MARGIN`` of the answer that set it.

Waiting: token grants go to waiters in FIFO order, skipping waiters whose own
key cannot send yet, so a room held back by flood control never delays
another room. With limits effectively off (a reported limit of 1,000,000),
``acquire`` takes a fast path that neither sleeps nor queues, O(1) per
request.

All times are Unix times from :func:`hipchatd.clock.unix_now` (the headers'
clock), and waits are trio deadlines derived from them, so tests run on
trio's ``MockClock``.
"""

from __future__ import annotations

import math
from itertools import count

import trio

from hipchatd.clock import unix_now
from hipchatd.delivery.outcome import MAX_SERVER_WAIT, Outcome, OutcomeKind, RateInfo

__all__ = [
    "BURST_DIVISOR",
    "MIN_RATE_LIMITED_PAUSE",
    "RESET_MARGIN",
    "SAME_WINDOW_SLACK",
    "RateBudget",
]

#: Seconds after a reset before its window counts as over: HipChat rounds resets
#: up to whole seconds, and its clock and ours may differ a little.
RESET_MARGIN = 0.5
#: Seconds a 429 blocks its family at least, when the time it names has passed
#: already (our clock ahead of HipChat's): otherwise every retry meets another 429.
MIN_RATE_LIMITED_PAUSE = 1.0
#: Seconds within which two resets name the same window (one server may write
#: a reset as an integer and as a float; windows are a minute or more apart).
SAME_WINDOW_SLACK = 1.0
#: The pacing bucket holds limit // BURST_DIVISOR requests: a quarter of a window.
BURST_DIVISOR = 4
#: Key families are swept for idle ones when their number reaches this, or
#: twice what the previous sweep left (amortised O(1) per new key).
_MIN_SWEEP = 64
#: Float slack for the bucket: a refill computed to land on 1.0 may land just below.
_EPSILON = 1e-9


class _Family:
    """One limit: the token's or one key's. Hard window and pacing bucket."""

    __slots__ = (
        "blocked_until",
        "in_flight",
        "informed",
        "limit",
        "provisional",
        "reset",
        "share",
        "stamp",
        "tokens",
        "used",
        "waiting",
        "window",
    )

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        #: requests counted in the current window, in-flight ones excluded.
        self.used = 0
        #: granted and not yet released.
        self.in_flight = 0
        #: Unix time the current window ends; None while no window is open.
        self.reset: float | None = None
        #: ``reset`` came from a header (else it is our own estimate).
        self.informed = False
        #: ``reset`` was estimated at a grant; the first answer moves it later.
        self.provisional = False
        #: no grant before this Unix time (a 429 said so).
        self.blocked_until = -math.inf
        #: instances pacing their requests against this limit together (see share_pacing).
        self.share = 1
        self.tokens = float(self.capacity)
        self.stamp = -math.inf
        #: waiters on this family (keys only), so a sweep keeps it.
        self.waiting = 0

    @property
    def capacity(self) -> int:
        return max(1, self.limit // BURST_DIVISOR // self.share)

    @property
    def refill_rate(self) -> float:
        return max(self.limit, 1) / self.window / self.share

    def _advance(self, now: float) -> None:
        if self.reset is not None and now >= self.reset + RESET_MARGIN:
            self.used = 0
            self.reset = None
            self.informed = self.provisional = False
            # A reported limit of 0 would stop us for good, since only an answer
            # can raise it: allow one request per window to ask again.
            self.limit = max(self.limit, 1)
        if now > self.stamp:
            if self.tokens < self.capacity:
                gained = (now - self.stamp) * self.refill_rate
                self.tokens = min(float(self.capacity), self.tokens + gained)
            self.stamp = now

    def ready_at(self, now: float) -> float:
        """The earliest Unix time this family allows a request; math.inf if only a release can."""
        self._advance(now)
        at = max(now, self.blocked_until)
        if self.limit - self.used - self.in_flight < 1:
            # The next window frees the limit (at least 1) less what is in flight.
            if self.reset is None or max(self.limit, 1) - self.in_flight < 1:
                return math.inf
            at = max(at, self.reset + RESET_MARGIN)
        if self.tokens < 1 - _EPSILON:
            at = max(at, now + (1 - self.tokens) / self.refill_rate)
        return at

    def ready(self, now: float) -> bool:
        # The fast path: a cheap test first, the general one only when it fails.
        if (
            self.tokens >= 1
            and now >= self.blocked_until
            and self.limit - self.used - self.in_flight >= 1
            and (self.reset is None or now < self.reset + RESET_MARGIN)
        ):
            return True
        return self.ready_at(now) <= now

    def take(self, now: float) -> None:
        self._advance(now)
        if self.reset is None:
            self.reset = now + self.window
            self.provisional = True
        self.in_flight += 1
        self.tokens = max(0.0, self.tokens - 1)

    def refund(self, now: float) -> None:
        self._advance(now)
        self.in_flight = max(0, self.in_flight - 1)
        self.tokens = min(float(self.capacity), self.tokens + 1)

    def set_limit(self, limit: int, now: float) -> None:
        self._advance(now)
        if limit < 1:
            return  # would allow nothing, ever: keep the last limit that made sense
        before = self.capacity
        self.limit = limit
        self.tokens = min(float(self.capacity), self.tokens + max(0, self.capacity - before))

    def settle(self, info: RateInfo | None, now: float) -> None:
        """Count one finished request, correcting the window from ``info`` when it has a count."""
        self._advance(now)
        self.in_flight = max(0, self.in_flight - 1)
        if info is not None and info.limit is not None and info.limit != self.limit:
            self.set_limit(info.limit, now)
        remaining = info.remaining if info is not None else None
        if remaining is not None and remaining < 0:
            remaining = None
        reset = info.reset if info is not None else None
        if reset is not None and not reset <= now + MAX_SERVER_WAIT:
            reset = None  # no window of HipChat's is that long
        if remaining is None:
            # No count reported: assume the server counted it. It did so by now,
            # so its window ends by now + window; a grant-time estimate could be early.
            if self.reset is None or self.provisional:
                self.reset = now + self.window
                self.provisional = False
            self.used += 1
            return
        reported = max(0, self.limit - remaining)
        if reset is None:
            if self.reset is None or self.provisional:
                self.reset = now + self.window
                self.provisional = False
            self.used = max(self.used, reported)
            return
        if reset + RESET_MARGIN <= now:
            return  # a window that is over already
        if self.reset is None or not self.informed:
            self.used = max(self.used, reported)
            self.reset = reset
            self.informed, self.provisional = True, False
        elif reset > self.reset + SAME_WINDOW_SLACK:
            self.used, self.reset = reported, reset  # HipChat opened a new window
        elif reset >= self.reset - SAME_WINDOW_SLACK:
            self.used = max(self.used, reported)
            self.reset = max(self.reset, reset)
        # else: the answer of a request counted in an earlier window

    def exhaust(self, until: float | None, now: float) -> None:
        """Remaining is 0 until ``until`` (None: the known reset, else a whole window)."""
        self._advance(now)
        if until is None or not until <= now + MAX_SERVER_WAIT:
            until = self.reset if self.reset is not None else now + self.window
        until = min(max(until, now + MIN_RATE_LIMITED_PAUSE), now + MAX_SERVER_WAIT)
        self.blocked_until = max(self.blocked_until, until + RESET_MARGIN)
        self.reset = until
        self.used = max(self.used, self.limit)
        self.informed, self.provisional = True, False

    def idle(self, now: float, limit: int) -> bool:
        """Whether this family is as good as a new one with ``limit``."""
        self._advance(now)
        return (
            self.waiting == 0
            and self.in_flight == 0
            and self.reset is None
            and now >= self.blocked_until
            and self.limit == limit
            and self.tokens >= self.capacity
        )


class _Waiter:
    __slots__ = ("family", "granted", "wake")

    def __init__(self, family: _Family) -> None:
        self.family = family
        self.granted = False
        self.wake = trio.Event()


class RateBudget:
    """The token's budget and each key's flood budget; one per HipChat token.

    Every :meth:`acquire` must be paired with exactly one :meth:`release`
    (the request was attempted) or :meth:`abandon` (it was not), also when
    the caller is cancelled in between.
    """

    def __init__(
        self,
        *,
        rate_limit: int = 100,
        rate_window: float = 300.0,
        flood_limit: int = 30,
        flood_window: float = 60.0,
    ) -> None:
        """Budgets assumed until HipChat reports its own; the windows are never reported.

        Raises ValueError for a limit below 1 or a window that is not positive.
        """
        if rate_limit < 1 or flood_limit < 1:
            raise ValueError("rate_limit and flood_limit must be >= 1")
        if not (rate_window > 0 and flood_window > 0):
            raise ValueError("rate_window and flood_window must be > 0")
        self._token = _Family(rate_limit, rate_window)
        self._flood_limit = flood_limit
        self._flood_window = flood_window
        self._keys: dict[str, _Family] = {}
        self._waiters: dict[int, _Waiter] = {}
        self._ids = count()
        self._sweep_at = _MIN_SWEEP

    async def acquire(self, key: str) -> None:
        """Wait until a request to ``key`` may be sent, then count it as in flight.

        ``key`` is a room name or ``"user:<id>"``. Grants of the token budget
        go in FIFO order among waiters whose key allows sending. A checkpoint
        even when no wait is needed. Cancellation-safe: a waiter cancelled
        before its grant leaves no trace, and a grant that races the
        cancellation is given back.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        now = unix_now()
        family = self._family(key, now)
        if not self._waiters and self._token.ready(now) and family.ready(now):
            self._take(family, now)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        waiter = _Waiter(family)
        ident = next(self._ids)
        self._waiters[ident] = waiter
        family.waiting += 1
        waited = False
        try:
            while not waiter.granted:
                at = self._ready_at(family, now)
                if at <= now:
                    self._pump(now)
                    if waiter.granted:
                        break
                    at = self._ready_at(family, now)
                waiter.wake = trio.Event()
                with trio.move_on_at(trio.current_time() + (at - now)):
                    waited = True
                    await waiter.wake.wait()
                now = unix_now()
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
        except BaseException:
            if waiter.granted:
                self._give_back(family)
            raise
        finally:
            self._waiters.pop(ident, None)
            family.waiting -= 1

    def release(self, key: str, outcome: Outcome) -> None:
        """The request to ``key`` finished with ``outcome``; correct the budget.

        Any outcome, also TIMEOUT and TRANSPORT_ERROR without headers (then
        the request is assumed counted). ``outcome.rate`` corrects the token,
        ``outcome.flood`` the key; a RATE_LIMITED outcome empties the
        exhausted family (both when neither header says which) until
        ``outcome.retry_at`` or its reported reset.
        """
        now = unix_now()
        family = self._family(key, now)
        self._token.settle(outcome.rate, now)
        family.settle(outcome.flood, now)
        if outcome.flood is not None and outcome.flood.limit is not None:
            # New keys start from this; 0 would block them before their first answer.
            self._flood_limit = max(1, outcome.flood.limit)
        if outcome.kind is OutcomeKind.RATE_LIMITED:
            self._rate_limited(family, outcome, now)
        self._changed(now)

    def abandon(self, key: str) -> None:
        """A grant for ``key`` was not used: no request went out. Gives it back whole."""
        self._give_back(self._family(key, unix_now()))

    def wait_hint(self, key: str) -> float:
        """Seconds until ``key`` could send (0 if now), for logs and status.

        Ignores waiters ahead in the queue. math.inf when only the answer of a
        request in flight can free budget.
        """
        now = unix_now()
        family = self._keys.get(key) or _Family(self._flood_limit, self._flood_window)
        return max(0.0, self._ready_at(family, now) - now)

    def share_pacing(self, instances: int) -> None:
        """Pace the token's requests as one of ``instances`` that share its budget.

        Each instance's bucket then holds and refills ``1/instances`` of what one
        alone would, so together they spread a window's requests as one would,
        leaving a storm's events the same time to fold into fewer messages.
        The hard window (``limit``) is not divided: the shared store enforces it.
        """
        family = self._token
        family.share = max(1, instances)
        family.tokens = min(family.tokens, float(family.capacity))

    def snapshot(self) -> dict[str, float | int | None]:
        """The token budget for metrics: limit, remaining (in-flight excluded), reset, queue."""
        now = unix_now()
        token = self._token
        token.ready_at(now)
        return {
            "rate_limit": token.limit,
            "rate_remaining": max(0, token.limit - token.used - token.in_flight),
            "rate_reset": token.reset,
            "rate_in_flight": token.in_flight,
            "rate_tokens": round(token.tokens, 3),
            "waiters": len(self._waiters),
            "keys": len(self._keys),
        }

    # --- internals ---

    def _family(self, key: str, now: float) -> _Family:
        family = self._keys.get(key)
        if family is None:
            if len(self._keys) >= self._sweep_at:
                self._sweep(now)
            family = self._keys[key] = _Family(self._flood_limit, self._flood_window)
        return family

    def _sweep(self, now: float) -> None:
        # Rooms come from event data, so keys are unbounded over a daemon's life.
        for key in [k for k, f in self._keys.items() if f.idle(now, self._flood_limit)]:
            del self._keys[key]
        self._sweep_at = max(_MIN_SWEEP, 2 * len(self._keys))

    def _ready_at(self, family: _Family, now: float) -> float:
        return max(self._token.ready_at(now), family.ready_at(now))

    def _take(self, family: _Family, now: float) -> None:
        self._token.take(now)
        family.take(now)

    def _give_back(self, family: _Family) -> None:
        now = unix_now()
        self._token.refund(now)
        family.refund(now)
        self._changed(now)

    def _rate_limited(self, family: _Family, outcome: Outcome, now: float) -> None:
        hit: list[tuple[_Family, RateInfo | None]] = [
            (fam, info)
            for fam, info in ((self._token, outcome.rate), (family, outcome.flood))
            if info is not None and info.remaining == 0
        ]
        if not hit:
            hit = [(self._token, None), (family, None)]
        for fam, info in hit:
            own = info.reset if info is not None else None
            known = [
                t for t in (outcome.retry_at, own) if t is not None and t <= now + MAX_SERVER_WAIT
            ]
            fam.exhaust(max(known) if known else None, now)

    def _pump(self, now: float) -> None:
        """Grant waiters in FIFO order while the token allows, skipping blocked keys."""
        if not self._waiters or not self._token.ready(now):
            return
        for ident, waiter in list(self._waiters.items()):
            if not waiter.family.ready(now):
                continue
            self._take(waiter.family, now)
            waiter.granted = True
            del self._waiters[ident]
            waiter.wake.set()
            if not self._token.ready(now):
                return

    def _changed(self, now: float) -> None:
        """Budget came back or moved: grant what can go now, let the rest re-plan."""
        self._pump(now)
        for waiter in self._waiters.values():
            waiter.wake.set()
