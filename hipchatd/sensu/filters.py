"""Which events are notified: the Sensu Enterprise integration's semantics. Pure.

The rules run in this order and the first that applies names the reason:

1. ``handle_disabled``: the check says ``handle: false``.
2. ``status_ok``: status 0 that is not a resolve. Sensu Go sends every OK
   result, and Classic sends ``type: metric`` results whatever their status.
3. ``severity``: the handler's ``severities`` (Sensu 1.9 ``filter.rb``). A
   resolve is judged by the severities seen since the last OK.
4. ``silenced``: a silenced event, unless ``handle_silenced`` is set.
5. ``handle_when`` (the Enterprise default filter), with the open
   ``occurrences`` filter extension's arithmetic: ``below_occurrences``,
   ``repeat_suppressed``, or for a resolve ``not_announced``. With
   ``legacy_occurrences`` on and no ``handle_when`` on the check, sensu-plugin's
   ``filter_repeated`` (:func:`repeat_reason`) decides instead, with the same
   two reasons (a Sensu Go resolve by its incident's count, the watermark);
   a check that carries ``handle_when`` is judged by ``handle_when``.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Final, Protocol

from hipchatd.reasons import SkipReason
from hipchatd.sensu.events import Action, Event, severity

__all__ = [
    "DEFAULT_INTERVAL",
    "LEGACY_INTERVAL",
    "LEGACY_OCCURRENCES",
    "LEGACY_REFRESH",
    "SKIP_REASONS",
    "handle_when_reason",
    "legacy_applies",
    "reminder_period",
    "repeat_reason",
    "severity",
    "skip_reason",
]

#: Seconds assumed between results when a check has no interval (cron checks, or absent):
#: the ``occurrences`` filter extension's default.
DEFAULT_INTERVAL: Final = 60

#: sensu-plugin's ``filter_repeated`` defaults: the first occurrence notifies, a result is
#: assumed every 30 s, and reminders go out every 1800 s.
LEGACY_OCCURRENCES: Final = 1
LEGACY_INTERVAL: Final = 30
LEGACY_REFRESH: Final = 1800

#: Every reason ``skip_reason`` returns, in rule order (e.g. to pre-create counters at 0).
SKIP_REASONS: Final = tuple(SkipReason)


class FilterSettings(Protocol):
    """The settings the filters read (``HipChatSettings`` has them)."""

    @property
    def severities(self) -> Set[str]: ...

    @property
    def handle_silenced(self) -> bool: ...

    @property
    def legacy_occurrences(self) -> bool: ...


def skip_reason(event: Event, settings: FilterSettings) -> SkipReason | None:
    """Return why ``event`` is not notified (a short snake_case reason), or None to notify.

    The reasons are those of SKIP_REASONS; see the module docstring for the order.
    """
    if not event.handle:
        return SkipReason.HANDLE_DISABLED
    if event.status == 0 and event.action != "resolve":
        return SkipReason.STATUS_OK
    if not _severity_listed(event, settings.severities):
        return SkipReason.SEVERITY
    if event.silenced and not settings.handle_silenced:
        return SkipReason.SILENCED
    if legacy_applies(event, settings):
        return repeat_reason(
            action=event.action,
            occurrences=_carried_occurrences(event),
            threshold=event.repeat.occurrences,
            interval=event.interval,
            refresh=event.repeat.refresh,
        )
    return handle_when_reason(
        action=event.action,
        occurrences=event.occurrences,
        watermark=event.occurrences_watermark,
        threshold=event.handle_when.occurrences,
        reset=event.handle_when.reset,
        interval=event.interval,
    )


def _severity_listed(event: Event, severities: Set[str]) -> bool:
    """Sensu 1.9's ``severities`` rule.

    A non-resolve passes when the current status's severity is listed. A
    resolve walks the history backwards from the entry *before* the current
    one, stopping at the first 0, and passes when any status on that walk
    has a listed severity ("any severity since the last OK").

    Deviation: with fewer than two history entries there is nothing to walk
    and Sensu would drop the resolve; hipchatd passes it, because it cannot
    tell, and a lost resolve leaves a room believing an incident is open.
    """
    if event.action != "resolve":
        return severity(event.status) in severities
    if len(event.history) < 2:
        return True
    for status in reversed(event.history[:-1]):
        if status == 0:
            return False
        if severity(status) in severities:
            return True
    return False


def handle_when_reason(
    *,
    action: Action,
    occurrences: int,
    watermark: int,
    threshold: int,
    reset: int,
    interval: int | None,
) -> SkipReason | None:
    """The ``handle_when`` decision: a skip reason, or None to notify.

    Sensu Enterprise does not publish its arithmetic; this is that of the open
    ``occurrences`` filter extension (sensu-extensions-occurrences) with
    ``R = reset``. With ``N = threshold``, ``n = occurrences``, ``w =
    watermark``, ``I = interval`` (DEFAULT_INTERVAL when None) and
    ``k = R // I``:

    - a resolve notifies only if the incident was announced, ``w >= N``,
      else ``not_announced``;
    - ``create`` / ``flapping`` with ``n < N``: ``below_occurrences``;
    - with ``n > N``: notify only when ``k == 0`` or ``(n - N) % k == 0``,
      else ``repeat_suppressed``; so ``reset`` shorter than the interval
      (``k == 0``) notifies every result.

    Worked example (N=3, I=60, R=1800, so k=30): notifications go out at
    n = 3, 33, 63, …, and the resolve is sent only if the incident reached 3.
    """
    if action == "resolve":
        return None if watermark >= threshold else SkipReason.NOT_ANNOUNCED
    if occurrences < threshold:
        return SkipReason.BELOW_OCCURRENCES
    period = reset // (interval if interval is not None and interval > 0 else DEFAULT_INTERVAL)
    if occurrences > threshold and period != 0 and (occurrences - threshold) % period != 0:
        return SkipReason.REPEAT_SUPPRESSED
    return None


def legacy_applies(event: Event, settings: FilterSettings) -> bool:
    """Whether sensu-plugin's ``filter_repeated`` judges ``event`` instead of ``handle_when``.

    It does when ``legacy_occurrences`` is on (the check's, else the client's,
    else the ``hipchat`` setting) and the check carries no ``handle_when``:
    a check that names ``handle_when`` asks for it, and gets it.
    """
    named = event.legacy_occurrences
    enabled = settings.legacy_occurrences if named is None else named
    return enabled and not event.repeat.handle_when_given


def _carried_occurrences(event: Event) -> int:
    """The ``n`` sensu-plugin judges: a Classic resolve carries its incident's count over.

    A Sensu Go resolve counts its OK results instead (1 on the first), so its
    incident's count is its watermark.
    """
    if event.flavor == "go" and event.action == "resolve":
        return event.occurrences_watermark
    return event.occurrences


def reminder_period(event: Event, settings: FilterSettings) -> int:
    """Seconds between two reminders of ``event``'s check.

    Its ``handle_when.reset``, or where :func:`legacy_applies`, its
    ``refresh`` (LEGACY_REFRESH when it names none). The skip log writes one
    line per check per this period.
    """
    if legacy_applies(event, settings):
        refresh = event.repeat.refresh
        return LEGACY_REFRESH if refresh is None else refresh
    return event.handle_when.reset


def repeat_reason(
    *,
    action: Action,
    occurrences: int,
    threshold: int | None,
    interval: int | None,
    refresh: int | None,
) -> SkipReason | None:
    """sensu-plugin's ``filter_repeated`` decision: a skip reason, or None to notify.

    The repeat filter of the Ruby handlers built on sensu-plugin
    (``sensu-plugins-hipchat`` among them), ``Sensu::Handler#filter_repeated`` in
    https://github.com/sensu-plugins/sensu-plugin/blob/master/lib/sensu-handler.rb.
    With ``n = occurrences``, ``N = threshold`` (the check's ``occurrences``,
    LEGACY_OCCURRENCES when None), ``I = interval`` (LEGACY_INTERVAL when None),
    ``R = refresh`` (LEGACY_REFRESH when None) and ``k = R // I`` (Ruby's
    ``refresh.fdiv(interval).to_i``):

    - ``n < N``: ``below_occurrences``, whatever the action; a Classic resolve
      carries its incident's ``n``, so the resolve of an incident that never
      reached ``N`` is dropped too;
    - ``create`` with ``n > N``: notify only when ``k == 0`` or
      ``(n - N) % k == 0``, else ``repeat_suppressed``;
    - everything else notifies: ``n == N``, and ``flapping`` and ``resolve``
      from ``N`` on (the repeat rule is for ``create`` only).

    Worked example (N=3, I=60, R=1800, so k=30): ``create`` notifies at
    n = 3, 33, 63, …; n = 1 and 2 are ``below_occurrences``; ``flapping``
    notifies at every n from 3; a resolve carrying n = 2 is dropped. With
    Classic's usual ``refresh`` of a few seconds (shorter than I), ``k == 0``:
    every result from ``N`` on notifies.
    """
    threshold = LEGACY_OCCURRENCES if threshold is None else threshold
    if occurrences < threshold:
        return SkipReason.BELOW_OCCURRENCES
    if action != "create" or occurrences == threshold:
        return None
    # Ruby truncates the quotient towards zero: for any signs its size is |R| // |I|,
    # and (n - N) % k == 0 does not depend on the sign of k. An interval of 0 (Ruby
    # raises FloatDomainError: the handler fails) counts as none.
    period = abs(LEGACY_REFRESH if refresh is None else refresh) // abs(interval or LEGACY_INTERVAL)
    if period != 0 and (occurrences - threshold) % period != 0:
        return SkipReason.REPEAT_SUPPRESSED
    return None
