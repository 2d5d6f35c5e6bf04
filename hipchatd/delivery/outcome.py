"""What one attempt to post to HipChat achieved, read from HipChat's answer.

Pure and synchronous: the client (:mod:`hipchatd.delivery.hipchat`, the only
code that knows httpx) hands over the status, the headers and HipChat's error
text; :func:`classify` makes the :class:`Outcome` the budget and the lanes
act on. :class:`~hipchatd.reasons.OutcomeKind` sits on the bottom floor, so the
metrics take their failure labels from the same enum.

HipChat reports two limits in header families of three (``-Limit``,
``-Remaining``, ``-Reset`` as a Unix time): ``X-Ratelimit-*`` per token and
``X-FloodControl-*`` per room or user
(https://developer.atlassian.com/server/hipchat/hipchat-rest-api-rate-limits/).

A wait the server names (``Retry-After``, ``X-Ratelimit-Reset``,
``X-FloodControl-Reset``) is never believed beyond :data:`MAX_SERVER_WAIT`.
Such a wait, a limit of 0, a remaining count above the limit, and a malformed
or negative value are protocol errors: reported to the caller's
:data:`ProtocolWarn`, and the whole header family (or the ``Retry-After``) is
ignored, so the budget counts the request itself over its configured window
and a retry waits the normal backoff.
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC

from hipchatd.reasons import OutcomeKind

__all__ = [
    "FLOOD_PREFIX",
    "MAX_SERVER_WAIT",
    "RATE_PREFIX",
    "Outcome",
    "OutcomeKind",
    "ProtocolWarn",
    "RateInfo",
    "classify",
    "header",
    "parse_rate_info",
    "parse_retry_after",
]

#: Seconds at most that any wait a server names is believed (Retry-After, a
#: reset header). HipChat's windows are 5 minutes for the token's rate limit and
#: 1 minute for flood control, so a wait that ends within 6 minutes covers every
#: real one; a later one is a protocol error, never a stalled room.
MAX_SERVER_WAIT = 360.0
#: Header prefixes of the two rate-limit families (matched case-insensitively).
RATE_PREFIX = "X-Ratelimit"
FLOOD_PREFIX = "X-FloodControl"

# v1 answers a rate-limited call with 403 (not 429), and so did the v2 beta;
# the only known wording is "You have exceeded the rate limit.".
_RATE_LIMIT_TEXT = re.compile(r"rate[ _-]?limit", re.IGNORECASE)
_DECIMAL = re.compile(r"\d+(?:\.\d+)?")


@dataclass(frozen=True, slots=True)
class RateInfo:
    """One rate-limit header family: limit, remaining, reset (absolute Unix time)."""

    limit: int | None
    remaining: int | None
    reset: float | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt achieved."""

    kind: OutcomeKind
    #: HTTP status, None when no response arrived.
    status: int | None = None
    #: HipChat's own error message, or the transport error's description.
    error: str | None = None
    #: ``X-Ratelimit-*`` (per token).
    rate: RateInfo | None = None
    #: ``X-FloodControl-*`` (per room or user).
    flood: RateInfo | None = None
    #: absolute Unix time HipChat asked us to come back (Retry-After or a reset header).
    #: Set only for transient kinds; may lie in the past when clocks disagree.
    retry_at: float | None = None

    @classmethod
    def timeout(cls, seconds: float) -> Outcome:
        """The outcome a caller records when its cancel scope ended the attempt."""
        return cls(OutcomeKind.TIMEOUT, error=f"no answer from HipChat within {seconds:g} s")


def parse_rate_info(headers: Mapping[str, str], prefix: str) -> RateInfo | None:
    """Read ``{prefix}-Limit``, ``-Remaining`` and ``-Reset``, header names in any case.

    ``Reset`` is an absolute Unix time, integer or float (``1366037820``,
    ``1412564640.0``). A value that does not parse becomes None; the function
    never raises. Returns None when none of the three headers is present.
    """
    limit = header(headers, f"{prefix}-Limit")
    remaining = header(headers, f"{prefix}-Remaining")
    reset = header(headers, f"{prefix}-Reset")
    if limit is None and remaining is None and reset is None:
        return None
    return RateInfo(limit=_count(limit), remaining=_count(remaining), reset=_decimal(reset))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as an absolute Unix time: delay seconds from ``now``, or an HTTP-date.

    Delay seconds may carry a fraction. Garbage, negative values and dates
    without a year-month-day-time become None; the function never raises.
    """
    if value is None:
        return None
    value = value.strip()
    seconds = _decimal(value)
    if seconds is not None:
        return now + seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are GMT; "-0000" parses as naive.
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


#: Told of a protocol error: (header, its value, the problem, what was done instead).
ProtocolWarn = Callable[[str, str, str, str], None]


def _ignore_protocol_error(header: str, value: str, problem: str, instead: str) -> None:
    pass


def classify(
    status: int,
    headers: Mapping[str, str],
    error: str,
    *,
    now: float,
    warn: ProtocolWarn = _ignore_protocol_error,
) -> Outcome:
    """The Outcome of HipChat's answer: ``status``, its ``headers`` and its ``error`` text.

    ``error`` is what a failed answer says (HipChat's message, else the status
    line and body), already cleaned of the token; a 2xx answer ignores it.
    ``now`` (Unix time) anchors Retry-After delay seconds. A header that breaks
    the protocol is ignored and reported to ``warn``. Never raises.
    """
    rate = _checked_rate_info(headers, RATE_PREFIX, now, warn)
    flood = _checked_rate_info(headers, FLOOD_PREFIX, now, warn)
    if 200 <= status < 300:
        return Outcome(OutcomeKind.SENT, status=status, rate=rate, flood=flood)
    kind = _kind(status, error)
    retry_at = None
    if kind.transient:
        retry_at = _checked_retry_after(headers, now, warn)
        if retry_at is None and kind is OutcomeKind.RATE_LIMITED:
            retry_at = _reset_at(rate, flood)
        if retry_at is not None:
            retry_at = min(retry_at, now + MAX_SERVER_WAIT)
    return Outcome(kind, status=status, error=error, rate=rate, flood=flood, retry_at=retry_at)


def _checked_rate_info(
    headers: Mapping[str, str], prefix: str, now: float, warn: ProtocolWarn
) -> RateInfo | None:
    """parse_rate_info, or None (and a warning) when the family breaks the protocol."""
    info = parse_rate_info(headers, prefix)
    if info is None:
        return None
    names = {field: f"{prefix}-{field.capitalize()}" for field in ("limit", "remaining", "reset")}
    instead = f"ignored the {prefix}-* headers; counted the request against the configured budget"
    values = {field: header(headers, name) for field, name in names.items()}
    problems: list[tuple[str, str]] = []
    for field, parsed in (("limit", info.limit), ("remaining", info.remaining)):
        if values[field] is not None and parsed is None:
            problems.append((field, "not a non-negative integer"))
    if values["reset"] is not None and info.reset is None:
        problems.append(("reset", "not a Unix time"))
    if info.limit == 0:
        problems.append(("limit", "a limit of 0 allows no request ever"))
    elif info.limit is not None and info.remaining is not None and info.remaining > info.limit:
        problems.append(("remaining", f"more than the limit of {info.limit}"))
    if info.reset is not None and info.reset > now + MAX_SERVER_WAIT:
        ahead = min(info.reset - now, 1e18)  # a finite number of seconds to print
        problems.append(
            ("reset", f"{math.ceil(ahead)} s ahead, more than the {MAX_SERVER_WAIT:g} s believed")
        )
    for field, problem in problems:
        warn(names[field], values[field] or "", problem, instead)
    return None if problems else info


def _checked_retry_after(
    headers: Mapping[str, str], now: float, warn: ProtocolWarn
) -> float | None:
    """parse_retry_after, or None (and a warning) when the value breaks the protocol."""
    value = header(headers, "Retry-After")
    if value is None:
        return None
    at = parse_retry_after(value, now)
    instead = "ignored Retry-After; retried after the normal backoff"
    if at is None:
        warn("Retry-After", value, "neither non-negative delay seconds nor an HTTP-date", instead)
    elif not at <= now + MAX_SERVER_WAIT:
        problem = f"more than the {MAX_SERVER_WAIT:g} s believed"
        warn("Retry-After", value, problem, instead)
        return None
    return at


def _kind(status: int, error: str) -> OutcomeKind:
    if status == 429 or (status == 403 and _RATE_LIMIT_TEXT.search(error)):
        return OutcomeKind.RATE_LIMITED
    if status == 401:
        return OutcomeKind.UNAUTHORIZED
    if status == 403:
        return OutcomeKind.FORBIDDEN
    if status == 404:
        return OutcomeKind.NOT_FOUND
    if 500 <= status < 600:
        return OutcomeKind.SERVER_ERROR
    # Other 4xx, and 3xx (redirects are not followed: server_url is wrong).
    return OutcomeKind.BAD_REQUEST


def _reset_at(rate: RateInfo | None, flood: RateInfo | None) -> float | None:
    # The exhausted family decides; flood control first, it is the narrower one.
    for info in (flood, rate):
        if info is not None and info.remaining == 0 and info.reset is not None:
            return info.reset
    resets = [info.reset for info in (flood, rate) if info is not None and info.reset is not None]
    return max(resets, default=None)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name`` in any case, or None; for a plain dict as for httpx's."""
    # httpx.Headers is case-insensitive already; a plain dict (tests, callers) is not.
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def _count(value: str | None) -> int | None:
    number = _decimal(value)
    if number is None or not number.is_integer():
        return None
    return int(number)


def _decimal(value: str | None) -> float | None:
    # A strict pattern: float() would also take "nan", "inf", "-1" and "1_0".
    if value is None or not _DECIMAL.fullmatch(value := value.strip()):
        return None
    return float(value)
