"""Which rooms (or user) an event goes to, with which per-target settings. Pure.

Rooms come from the most specific source that names one, and only that source:

1. the check (``check.hipchat.room``, ``check.hipchat_room``, or the Go
   check annotation ``sensu.io/plugins/hipchat/config/room``);
2. the client / entity, likewise;
3. the event's contacts (Enterprise contact routing): the rooms of every
   named contact whose ``hipchat`` overrides name one, in contact order;
4. the integration's ``room`` setting.

The check comes before the client, as Enterprise ranks check attributes and
sensu-plugin-sdk ranks check annotations; the community plugin did the
opposite for ``hipchat_room``.

Each other key (``notify``, ``username``, ``message_format``, ``mentions``,
``card``, ``dashboard_url``, ``template``) is resolved per target from the
most specific source that names it: the check, the client, then, for a room
a contact supplied, that contact, then the settings. The source that names
``notify`` or ``mentions`` by severity decides for every severity: a
severity its map leaves out means no notify, no mention. An event's
severity is its status's (a resolve's is "ok").

When ``user`` is set (an API v2 setting; the configuration rejects it for
v1), the one target is that user and no room is notified, as in the
Enterprise integration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from hipchatd.config import HipChatSettings
from hipchatd.sensu.events import BySeverity, Event, MessageFormat, Overrides, Severity, severity

__all__ = ["Router", "Target", "route", "unknown_contacts"]


@dataclass(frozen=True, slots=True)
class Target:
    """One recipient of one notification."""

    kind: Literal["room", "user"]
    #: room id or name, or user id / e-mail.
    name: str
    notify: bool
    username: str
    message_format: MessageFormat
    #: the mentions for this event's severity ("@all @oncall"); the message goes as text.
    mention: str | None = None
    #: post a HipChat card too (API v2 rooms only; others ignore it).
    card: bool = False
    #: the dashboard URL pattern (:mod:`hipchatd.sensu.links`), or None.
    dashboard_url: str | None = None
    #: the name of a configured template; None: the default template, else the built-in layout.
    template: str | None = None


def route(
    event: Event, settings: HipChatSettings, contacts: Mapping[str, Overrides]
) -> tuple[Target, ...]:
    """Return the targets for ``event``, deduplicated, in a stable order.

    Rooms are deduplicated by exact name, first occurrence wins (with its
    overrides). Contact names ``contacts`` does not define are ignored; see
    ``unknown_contacts``. Empty only when the settings name no room.
    """
    layers = (event.check_overrides, event.client_overrides)
    level = severity(event.status)
    if settings.user:
        return (_target("user", settings.user, layers, settings, level),)
    for overrides in layers:
        if overrides.room:
            return _rooms(((room, layers) for room in overrides.room), settings, level)
    contact_rooms = [
        (room, (*layers, contact))
        for contact in _known(event, contacts)
        for room in contact.room or ()
    ]
    if contact_rooms:
        return _rooms(contact_rooms, settings, level)
    return _rooms(((room, layers) for room in settings.room), settings, level)


class Router:
    """:func:`route` for a stream of events: the same targets, computed once where they can be.

    Most events name no routing of their own: no rooms, no per-target keys,
    no contacts. Their targets depend only on the settings and the event's
    severity, so they are computed once per severity and shared (the tuple
    and its frozen targets) until the settings object changes (a reload
    replaces it). Every other event is routed by :func:`route` as it comes.
    """

    def __init__(self) -> None:
        self._settings: HipChatSettings | None = None
        self._routes: dict[Severity, tuple[Target, ...]] = {}
        #: the last override layer found to name nothing: readers share one such object.
        self._plain = Overrides()

    def route(
        self, event: Event, settings: HipChatSettings, contacts: Mapping[str, Overrides]
    ) -> tuple[Target, ...]:
        """What :func:`route` returns for these arguments."""
        if event.contacts or not (
            self._names_nothing(event.check_overrides)
            and self._names_nothing(event.client_overrides)
        ):
            return route(event, settings, contacts)
        if settings is not self._settings:
            self._settings = settings
            self._routes = {}
        level = severity(event.status)
        targets = self._routes.get(level)
        if targets is None:
            targets = self._routes[level] = route(event, settings, contacts)
        return targets

    def _names_nothing(self, overrides: Overrides) -> bool:
        """Whether ``overrides`` names nothing routing reads (its legacy_occurrences aside)."""
        if overrides is self._plain:
            return True
        if overrides != Overrides(legacy_occurrences=overrides.legacy_occurrences):
            return False
        self._plain = overrides
        return True


def unknown_contacts(event: Event, contacts: Mapping[str, Overrides]) -> tuple[str, ...]:
    """The contact names ``event`` gives that ``contacts`` lacks, for the caller to log."""
    return tuple(name for name in event.contacts if name not in contacts)


def _known(event: Event, contacts: Mapping[str, Overrides]) -> list[Overrides]:
    return [contacts[name] for name in event.contacts if name in contacts]


def _rooms(
    candidates: Iterable[tuple[str, Sequence[Overrides]]],
    settings: HipChatSettings,
    level: Severity,
) -> tuple[Target, ...]:
    targets: dict[str, Target] = {}
    for room, layers in candidates:
        if room not in targets:
            targets[room] = _target("room", room, layers, settings, level)
    return tuple(targets.values())


def _target(
    kind: Literal["room", "user"],
    name: str,
    layers: Sequence[Overrides],
    settings: HipChatSettings,
    level: Severity,
) -> Target:
    """A target whose keys come from the first layer that names them, else the settings."""
    notify = next((o.notify for o in layers if o.notify is not None), settings.notify)
    username = next((o.username for o in layers if o.username is not None), settings.username)
    message_format = next(
        (o.message_format for o in layers if o.message_format is not None),
        settings.message_format,
    )
    mentions = next((o.mentions for o in layers if o.mentions is not None), settings.mentions)
    card = next((o.card for o in layers if o.card is not None), settings.card)
    dashboard_url = next(
        (o.dashboard_url for o in layers if o.dashboard_url is not None), settings.dashboard_url
    )
    template = next((o.template for o in layers if o.template is not None), None)
    return Target(
        kind=kind,
        name=name,
        notify=(notify.get(level) or False) if isinstance(notify, BySeverity) else notify,
        username=username,
        message_format=message_format,
        mention=mentions.get(level) if mentions is not None else None,
        card=card,
        dashboard_url=dashboard_url,
        template=template,
    )
