"""Builders for the values the pure modules take: Event, HipChatSettings, Target.

Each returns a valid value with the fields a test names replaced, so a test
spells out only what it is about.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hipchatd.config import HipChatSettings, Secret
from hipchatd.delivery.routing import Target
from hipchatd.sensu.events import Event, HandleWhen, Overrides, Repeat

#: A minimal Classic event, as parse_event builds it: check_http on web-01 is critical.
EVENT = Event(
    id="",
    flavor="classic",
    source="web-01",
    check="check_http",
    status=2,
    output="down",
    notification=None,
    playbook=None,
    action="create",
    occurrences=1,
    occurrences_watermark=1,
    interval=60,
    silenced=False,
    history=(0, 2),
    namespace=None,
    timestamp=1700000000.0,
    handle=True,
    handle_when=HandleWhen(),
    check_overrides=Overrides(),
    client_overrides=Overrides(),
    contacts=(),
    client="web-01",
)

#: What parse_event makes of fixtures/classic-critical.json (test_events checks it).
CLASSIC_CRITICAL = replace(
    EVENT,
    id="f4a9453f-ac70-4e91-a601-a97ff31c589a",
    source="sensu.test.local",
    check="testing",
    output="THIS IS AN ERROR",
    interval=None,
    history=(2,),
    timestamp=1539273720.0,
    handle_when=HandleWhen(occurrences=1, reset=1800),
    client="sensu.test.local",
    # The sample's check carries sensu-plugin's ``refresh`` (and no ``occurrences``).
    repeat=Repeat(refresh=10),
)


def make_event(**overrides: Any) -> Event:
    """:data:`EVENT` with ``overrides``."""
    return replace(EVENT, **overrides)


def sample_event(**overrides: Any) -> Event:
    """:data:`CLASSIC_CRITICAL`, the reference sample, with ``overrides``."""
    return replace(CLASSIC_CRITICAL, **overrides)


def make_settings(**overrides: Any) -> HipChatSettings:
    """The ``hipchat`` settings with every default but ``overrides``, and a dummy token."""
    return HipChatSettings(api_token=Secret("t"), **overrides)


def make_target(**overrides: Any) -> Target:
    """A notifying html room target, ``ops`` as ``sensu``, with ``overrides``."""
    target = Target(kind="room", name="ops", notify=True, username="sensu", message_format="html")
    return replace(target, **overrides)
