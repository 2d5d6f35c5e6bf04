"""The event model: one immutable Event, whichever Sensu version sent it.

Pure data and Sensu's vocabulary (actions, message formats, severities).
:func:`hipchatd.sensu.events.parse_event` builds an Event from either shape
of Sensu's JSON, and re-exports this module's names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeVar

__all__ = [
    "DEFAULT_HANDLE_WHEN_OCCURRENCES",
    "DEFAULT_HANDLE_WHEN_RESET",
    "UNKNOWN_STATUS",
    "Action",
    "BySeverity",
    "Event",
    "HandleWhen",
    "MessageFormat",
    "Overrides",
    "Repeat",
    "Severity",
    "new_event",
    "severity",
]

Action = Literal["create", "resolve", "flapping"]
MessageFormat = Literal["html", "text"]
Severity = Literal["ok", "warning", "critical", "unknown"]


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BySeverity(Generic[T]):
    """One value per severity, as ``notify`` and ``mentions`` name them; None = not named."""

    ok: T | None = None
    warning: T | None = None
    critical: T | None = None
    unknown: T | None = None

    def get(self, severity: Severity) -> T | None:
        """The value named for ``severity``, or None."""
        if severity == "critical":
            return self.critical
        if severity == "warning":
            return self.warning
        if severity == "ok":
            return self.ok
        return self.unknown


@dataclass(frozen=True, slots=True)
class Overrides:
    """Per-check, per-client or per-contact HipChat attributes; ``None`` = not named."""

    room: tuple[str, ...] | None = None
    #: True/False, or by severity (a severity the map does not name: False).
    notify: bool | BySeverity[bool] | None = None
    username: str | None = None
    message_format: MessageFormat | None = None
    #: mention names by severity, e.g. critical -> "@all"; several space-separated.
    mentions: BySeverity[str] | None = None
    #: post a HipChat card with the message (API v2 rooms).
    card: bool | None = None
    #: a dashboard URL pattern (:mod:`hipchatd.sensu.links`).
    dashboard_url: str | None = None
    #: the name of a configured template (``hipchat.templates``).
    template: str | None = None
    #: honour the Classic ``occurrences``/``refresh`` check attributes (checks and clients).
    legacy_occurrences: bool | None = None


#: Enterprise ``handle_when`` defaults: notify from the first occurrence, remind every 30 min.
DEFAULT_HANDLE_WHEN_OCCURRENCES = 1
DEFAULT_HANDLE_WHEN_RESET = 1800
#: Sensu maps any status it does not know to "unknown"; 3 is that status.
UNKNOWN_STATUS: Final = 3

#: Sensu's severity of each status it names; every other status is "unknown".
_SEVERITIES: Final[dict[int, Severity]] = {0: "ok", 1: "warning", 2: "critical"}


@dataclass(frozen=True, slots=True)
class HandleWhen:
    """The check's ``handle_when`` attribute (Sensu Enterprise)."""

    occurrences: int = DEFAULT_HANDLE_WHEN_OCCURRENCES
    reset: int = DEFAULT_HANDLE_WHEN_RESET


@dataclass(frozen=True, slots=True)
class Repeat:
    """The Classic repeat attributes sensu-plugin's ``filter_repeated`` read from a check."""

    #: ``check.occurrences``: the threshold (Sensu Go: only from ``sensu.io.json_attributes``,
    #: since Go's own ``check.occurrences`` is a count).
    occurrences: int | None = None
    #: ``check.refresh``: seconds between repeated notifications.
    refresh: int | None = None
    #: the check carried ``handle_when``, which then decides instead.
    handle_when_given: bool = False


@dataclass(frozen=True, slots=True)
class Event:
    """One Sensu event, whichever version sent it."""

    #: the event ``id`` as sent; "" when absent (Go omits an empty id). Not an incident key.
    id: str
    flavor: Literal["classic", "go"]
    #: proxy ``check.source`` / ``check.proxy_entity_name`` if set, else client/entity name.
    source: str
    check: str
    status: int
    output: str
    notification: str | None
    playbook: str | None
    action: Action
    #: consecutive results with this status (Classic top-level, Go ``check.occurrences``).
    occurrences: int
    #: the highest ``occurrences`` of the incident; never below ``occurrences``.
    occurrences_watermark: int
    #: ``check.interval`` in seconds; None for cron checks or when absent.
    interval: int | None
    silenced: bool
    #: statuses, oldest first, including the current result.
    history: tuple[int, ...]
    #: Go namespace (``metadata.namespace`` or the entity's); None for Classic.
    namespace: str | None
    #: epoch seconds: the event's ``timestamp``, else ``check.executed``, else 0.0.
    timestamp: float
    #: ``check.handle`` (Go: the check or its json_attributes); False means "never handle".
    handle: bool
    handle_when: HandleWhen
    #: HipChat attributes named by the check (``check.hipchat``, ``hipchat_room``, annotations).
    check_overrides: Overrides
    #: HipChat attributes named by the client / entity.
    client_overrides: Overrides
    #: contact names from ``contact``/``contacts`` on the check, then the client, deduplicated.
    contacts: tuple[str, ...]
    #: the client (Classic ``client.name``) or entity (Go ``entity.metadata.name``) name,
    #: which ``source`` differs from for proxy checks.
    client: str = ""
    repeat: Repeat = Repeat()

    @property
    def legacy_occurrences(self) -> bool | None:
        """The check's, else the client's ``legacy_occurrences``; None if neither names it."""
        named = self.check_overrides.legacy_occurrences
        return named if named is not None else self.client_overrides.legacy_occurrences

    @property
    def incident_key(self) -> tuple[str, str, str]:
        """(namespace, source, check): Go ids change every event, so incidents key by this."""
        return (self.namespace or "", self.source, self.check)


class _Filling:
    """An Event's slots without its frozen ``__setattr__``: :func:`new_event` fills one."""

    __slots__ = Event.__slots__


def new_event(
    id: str,
    flavor: Literal["classic", "go"],
    source: str,
    check: str,
    status: int,
    output: str,
    notification: str | None,
    playbook: str | None,
    action: Action,
    occurrences: int,
    occurrences_watermark: int,
    interval: int | None,
    silenced: bool,
    history: tuple[int, ...],
    namespace: str | None,
    timestamp: float,
    handle: bool,
    handle_when: HandleWhen,
    check_overrides: Overrides,
    client_overrides: Overrides,
    contacts: tuple[str, ...],
    client: str,
    repeat: Repeat,
) -> Event:
    """``Event(...)`` of the same arguments: an equal, frozen Event, built without its ``__init__``.

    A frozen dataclass's ``__init__`` sets each of Event's 23 fields through
    ``object.__setattr__``; plain slot stores, then a class change between the
    two identical slot layouts, take a third of the time, and the parser
    builds an Event for every event received and every one read back.
    """
    # Any: mypy cannot see slots named by a tuple.
    event: Any = _Filling()
    event.id = id
    event.flavor = flavor
    event.source = source
    event.check = check
    event.status = status
    event.output = output
    event.notification = notification
    event.playbook = playbook
    event.action = action
    event.occurrences = occurrences
    event.occurrences_watermark = occurrences_watermark
    event.interval = interval
    event.silenced = silenced
    event.history = history
    event.namespace = namespace
    event.timestamp = timestamp
    event.handle = handle
    event.handle_when = handle_when
    event.check_overrides = check_overrides
    event.client_overrides = client_overrides
    event.contacts = contacts
    event.client = client
    event.repeat = repeat
    event.__class__ = Event
    made: Event = event
    return made


def severity(status: int) -> Severity:
    """Sensu's severity of a check status: 0 ok, 1 warning, 2 critical, anything else unknown."""
    return _SEVERITIES.get(status, "unknown")
