"""Which skipped events are logged at INFO: one line per check per reminder period.

"I sent an event and nothing happened" needs an answer at the default log
level, but a check that keeps failing is skipped on most results (every
repeat between two reminders), and Sensu Go sends every OK result: a line
per skip would drown the log. So :class:`SkipLog` lets through one INFO line
per check (its incident key: namespace, source, check) per period, the
check's reminder period (``handle_when.reset``, or ``refresh`` under
``legacy_occurrences``); that line carries how many of the check's skips
were not shown since its previous one. The other skips are logged at DEBUG.

Whatever the network sends, the limiter stays small:

- it tracks at most :data:`MAX_CHECKS_TRACKED` checks, each under a 16-byte
  digest of its key (a check name can be as long as a frame); the check
  skipped least recently is forgotten first, with its count;
- all checks together get :data:`LINES_PER_WINDOW` INFO lines per
  :data:`WINDOW`, so a flood of distinct checks cannot become a flood of
  lines; what that budget holds back is reported by :meth:`SkipLog.flush`
  as one ``event.skipped_suppressed`` line per window.

The counters (``hipchatd_events_skipped_total``) are kept by the caller and
count every skip. ``admit`` and ``flush`` are given the time, so tests
can step it; only ``run``, the task that reports on time, reads the clock.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

import structlog
import trio

from hipchatd.clock import unix_now

__all__ = [
    "LINES_PER_WINDOW",
    "MAX_CHECKS_TRACKED",
    "MIN_PERIOD",
    "WINDOW",
    "SkipLog",
    "check_key",
]

log = structlog.get_logger()

#: Checks tracked at once: room for a large Sensu Go install, which sends every OK
#: result; about 210 bytes each, digest included (``tracemalloc``), so 3.4 MB when full.
MAX_CHECKS_TRACKED: Final = 16_384
#: Seconds between two INFO lines of one check at least: a ``reset`` of 0 still is one.
MIN_PERIOD: Final = 60
#: Seconds per window of the shared line budget: a flood's size shows once a minute.
WINDOW: Final = 60.0
#: INFO skip lines per window from all checks together: many checks cannot add up to a flood.
LINES_PER_WINDOW: Final = 100
#: Bytes of a check's digest: collisions between real checks are out of reach.
_DIGEST_BYTES: Final = 16


def check_key(incident_key: tuple[str, str, str]) -> bytes:
    """The fixed-size key a check is tracked under: a digest of (namespace, source, check).

    ``repr`` of the tuple is unambiguous whatever the names hold (separators,
    lone surrogates), so two different checks never share the digested text.
    """
    text = repr(incident_key).encode("utf-8", "backslashreplace")
    return hashlib.blake2b(text, digest_size=_DIGEST_BYTES).digest()


@dataclass(slots=True)
class _Check:
    #: when the check's last INFO line was written; None before the first.
    logged_at: float | None = None
    #: skips of the check since that line that were not logged at INFO.
    skipped: int = 0


@dataclass(slots=True)
class SkipLog:
    """Decides which skipped events get an INFO line; see the module docstring.

    ``admit`` and ``flush`` take times on one clock, :func:`hipchatd.clock.unix_now`,
    the clock ``run`` reads.
    """

    max_checks: int = MAX_CHECKS_TRACKED
    lines_per_window: int = LINES_PER_WINDOW
    window: float = WINDOW
    min_period: int = MIN_PERIOD
    #: least recently skipped first.
    _checks: OrderedDict[bytes, _Check] = field(default_factory=OrderedDict, init=False)
    _window_start: float = field(default=-float("inf"), init=False)
    #: INFO lines written in the current window.
    _lines: int = field(default=0, init=False)
    #: lines the budget held back in the current window, then in ended ones not yet reported.
    _suppressed: int = field(default=0, init=False)
    _unreported: int = field(default=0, init=False)

    def __len__(self) -> int:
        """Checks tracked now."""
        return len(self._checks)

    def admit(self, key: bytes, period: float, now: float) -> int | None:
        """Whether this skip of the check ``key`` gets an INFO line, counting it either way.

        Returns None for a DEBUG line, or, for an INFO line, how many skips
        of the check were not shown since its previous INFO line. ``period``
        is the check's reminder period in seconds (raised to ``min_period``).
        """
        self._roll(now)
        check = self._checks.get(key)
        if check is None:
            if len(self._checks) >= self.max_checks:
                self._checks.popitem(last=False)
            check = self._checks[key] = _Check()
        else:
            self._checks.move_to_end(key)
        if check.logged_at is not None and now < check.logged_at + max(period, self.min_period):
            check.skipped += 1
            return None
        if self._lines >= self.lines_per_window:
            check.skipped += 1
            self._suppressed += 1
            return None
        self._lines += 1
        shown, check.skipped, check.logged_at = check.skipped, 0, now
        return shown

    def flush(self, now: float) -> None:
        """Report what the line budget held back in windows that have ended, in one line."""
        self._roll(now)
        if not self._unreported:
            return
        log.info("event.skipped_suppressed", suppressed=self._unreported, window=self.window)
        self._unreported = 0

    def _roll(self, now: float) -> None:
        if now < self._window_start + self.window:
            return
        self._window_start = now
        self._lines = 0
        self._unreported += self._suppressed
        self._suppressed = 0

    async def run(self) -> None:
        """Report held-back lines within a sixth of a window of its end, in no event's context."""
        while True:
            await trio.sleep(self.window / 6)
            self.flush(unix_now())
