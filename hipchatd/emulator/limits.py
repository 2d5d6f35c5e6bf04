"""HipChat's rate limit and flood control: fixed windows, refusals, and their headers.

The token limit (docs/hipchat-api.md §6) counts every authenticated request to a known endpoint,
including ones answered 400 or 404 (unknown room) and ``auth_test``; auth
failures, unknown paths, 405, 406 and injected ``fail_next`` answers do not
count. Flood control is per room (per user for private messages) and also
applies to v1 ``rooms/message``; it counts only messages that passed
validation *[inferred]*. Exceeding either answers 429 on v2, 403 on v1.

Every v2 response carries ``X-Ratelimit-Limit/Remaining/Reset``;
message-sending endpoints also carry ``X-FloodControl-*``; v1 sends
``X-RateLimit-*`` (§6). Reset values are absolute Unix times from
:func:`hipchatd.clock.unix_now`, rounded up to an integer unless
``float_reset``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import trio

from hipchatd.clock import unix_now
from hipchatd.emulator.validation import Reject
from hipchatd.emulator.wire import Api, ApiError
from hipchatd.http11 import Response

V2_RATE_LIMITED = "Rate Limit exceeded"  # §11 q12
V1_RATE_LIMITED = (
    "You have exceeded the rate limit. See https://www.hipchat.com/docs/api/rate_limiting"  # §6.1
)


@dataclass(frozen=True, slots=True)
class Quota:
    """A window's state after a request: limit, remaining, reset (trio time)."""

    limit: int
    remaining: int
    reset: float


@dataclass(slots=True)
class FixedWindow:
    """A fixed window of ``length`` seconds opened by the first request after expiry.

    The limit is passed on each call so a change of limit applies at once.
    """

    length: float
    start: float | None = None
    used: int = 0

    def _expired(self, now: float) -> bool:
        return self.start is None or now >= self.start + self.length

    def peek(self, limit: int, now: float) -> Quota:
        """The state without counting a request; an expired window reads as fresh."""
        if self.start is None or self._expired(now):
            return Quota(limit, limit, now + self.length)
        return Quota(limit, max(0, limit - self.used), self.start + self.length)

    def take(self, limit: int, now: float) -> Quota | None:
        """Count one request; None (and nothing counted) when the window is full."""
        if self.start is None or self._expired(now):
            self.start, self.used = now, 0
        if self.used >= limit:
            return None
        self.used += 1
        return Quota(limit, limit - self.used, self.start + self.length)


@dataclass(slots=True)
class Call:
    """Per-request state that decides the error shape and the rate-limit headers."""

    api: Api
    fmt: Literal["json", "xml"] = "json"
    #: the token that passed authentication
    token: str | None = None
    #: whatever token the client sent, valid or not: redacted from recorded paths
    presented: str | None = None
    rate: Quota | None = None
    flood_key: tuple[str, str] | None = None
    flood: Quota | None = None


class Limiter:
    """The per-token and per-recipient windows, their limits, and the headers they show."""

    def __init__(
        self,
        *,
        rate_limit: int,
        rate_window: float,
        flood_limit: int,
        flood_window: float,
        float_reset: bool,
    ) -> None:
        if rate_limit < 0 or flood_limit < 0:
            raise ValueError("rate_limit and flood_limit must be >= 0")
        if rate_window <= 0 or flood_window <= 0:
            raise ValueError("rate_window and flood_window must be > 0")
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.flood_limit = flood_limit
        self.flood_window = flood_window
        self.float_reset = float_reset
        self._rate_windows: dict[str, FixedWindow] = {}
        self._flood_windows: dict[tuple[str, str], FixedWindow] = {}

    def set_limits(self, *, rate_limit: int | None = None, flood_limit: int | None = None) -> None:
        """Change the per-token and per-recipient limits; counts so far are kept."""
        if rate_limit is not None:
            if rate_limit < 0:
                raise ValueError("rate_limit must be >= 0")
            self.rate_limit = rate_limit
        if flood_limit is not None:
            if flood_limit < 0:
                raise ValueError("flood_limit must be >= 0")
            self.flood_limit = flood_limit

    def clear(self) -> None:
        """Forget every count (the limits stay)."""
        self._rate_windows.clear()
        self._flood_windows.clear()

    def take_rate(self, call: Call) -> None:
        """Count one request against ``call.token``; raise Reject when its window is full."""
        assert call.token is not None
        window = self._rate_windows.setdefault(call.token, FixedWindow(self.rate_window))
        call.rate = window.take(self.rate_limit, trio.current_time())
        if call.rate is None:
            raise _rate_limited(call)

    def take_flood(self, call: Call, key: tuple[str, str]) -> None:
        """Count one message to ``key`` (a room or a user); raise Reject when flooded."""
        call.flood_key = key
        window = self._flood_windows.setdefault(key, FixedWindow(self.flood_window))
        call.flood = window.take(self.flood_limit, trio.current_time())
        if call.flood is None:
            raise _rate_limited(call)

    def decorate(self, call: Call, response: Response) -> None:
        """Add the rate-limit headers (and flood-control ones, for a message) to ``response``."""
        now = trio.current_time()
        rate = call.rate
        if rate is None:
            window = self._rate_windows.get(call.token) if call.token else None
            rate = (window or FixedWindow(self.rate_window)).peek(self.rate_limit, now)
        prefix = "X-RateLimit" if call.api == "v1" else "X-Ratelimit"
        response.headers.extend(self._quota_headers(prefix, rate, now))
        if call.flood_key is not None:
            flood = call.flood
            if flood is None:
                window = self._flood_windows.get(call.flood_key) or FixedWindow(self.flood_window)
                flood = window.peek(self.flood_limit, now)
            response.headers.extend(self._quota_headers("X-FloodControl", flood, now))

    def _quota_headers(self, prefix: str, quota: Quota, now: float) -> list[tuple[str, str]]:
        reset = unix_now() + (quota.reset - now)
        # Integer resets round up, so a client sleeping until the reset is never early.
        reset_text = repr(round(reset, 3)) if self.float_reset else str(math.ceil(reset))
        return [
            (f"{prefix}-Limit", str(quota.limit)),
            (f"{prefix}-Remaining", str(quota.remaining)),
            (f"{prefix}-Reset", reset_text),
        ]


def _rate_limited(call: Call) -> Reject:
    if call.api == "v1":
        return Reject(ApiError(403, V1_RATE_LIMITED))
    return Reject(ApiError(429, V2_RATE_LIMITED))
