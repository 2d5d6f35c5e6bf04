"""Sensu Classic 1.x and Sensu Go (``core/v2``) events -> one immutable Event.

Pure and synchronous: no I/O, no trio. The shape decides the flavour:
Classic has top-level ``client`` and ``action``; Go has ``entity`` and
``check.metadata.name`` and no ``action``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from hipchatd.config import Overrides
from hipchatd.errors import EventError

__all__ = ["Event", "EventError", "HandleWhen", "parse_event"]

Action = Literal["create", "resolve", "flapping"]

#: Enterprise ``handle_when`` defaults: notify from the first occurrence, remind every 30 min.
DEFAULT_HANDLE_WHEN_OCCURRENCES = 1
DEFAULT_HANDLE_WHEN_RESET = 1800


@dataclass(frozen=True, slots=True)
class HandleWhen:
    """The check's ``handle_when`` attribute (Sensu Enterprise)."""

    occurrences: int = DEFAULT_HANDLE_WHEN_OCCURRENCES
    reset: int = DEFAULT_HANDLE_WHEN_RESET


@dataclass(frozen=True, slots=True)
class Event:
    """One Sensu event, whichever version sent it."""

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
    occurrences_watermark: int
    #: ``check.interval`` in seconds; None for cron checks or when absent.
    interval: int | None
    silenced: bool
    #: statuses, oldest first, including the current result.
    history: tuple[int, ...]
    #: Go namespace (``metadata.namespace`` or the entity's); None for Classic.
    namespace: str | None
    timestamp: float
    #: ``check.handle`` (Classic); False means "never handle".
    handle: bool
    handle_when: HandleWhen
    #: HipChat attributes named by the check (``check.hipchat``, ``hipchat_room``, annotations).
    check_overrides: Overrides
    #: HipChat attributes named by the client / entity.
    client_overrides: Overrides
    #: contact names from ``contact``/``contacts`` on the check, then the client, deduplicated.
    contacts: tuple[str, ...]

    @property
    def incident_key(self) -> tuple[str, str, str]:
        """(namespace, source, check): Go ids change every event, so incidents key by this."""
        return (self.namespace or "", self.source, self.check)


def parse_event(document: Any) -> Event:
    """Build an Event from a decoded JSON document.

    Raises EventError with a specific message (what is missing or of the
    wrong type, at which key) when the document is not a Sensu event.
    """
    raise NotImplementedError
