"""route: which rooms (or user), with which notify / username / message_format."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from hipchatd.config import HipChatSettings
from hipchatd.delivery.routing import Router, Target, route, unknown_contacts
from hipchatd.sensu.events import BySeverity, Event, MessageFormat, Overrides, parse_event
from tests.factories import make_event, make_settings

FIXTURES = Path(__file__).parent / "fixtures"

NO_CONTACTS: dict[str, Overrides] = {}


def room(
    name: str, notify: bool = False, username: str = "sensu", fmt: MessageFormat = "html"
) -> Target:
    return Target(kind="room", name=name, notify=notify, username=username, message_format=fmt)


def names(targets: tuple[Target, ...]) -> list[str]:
    return [target.name for target in targets]


# --- rooms: the most specific source that names one ------------------------------------------


def test_default_room_from_settings() -> None:
    assert route(make_event(), make_settings(), NO_CONTACTS) == (room("sensu"),)


def test_settings_rooms_in_order_deduplicated() -> None:
    targets = route(make_event(), make_settings(room=("ops", "web", "ops")), NO_CONTACTS)
    assert names(targets) == ["ops", "web"]


def test_settings_without_rooms_route_nowhere() -> None:
    assert route(make_event(), make_settings(room=()), NO_CONTACTS) == ()


CONTACTS = {
    "dba": Overrides(room=("db-oncall", "ops"), notify=True, username="dba-bot"),
    "ops": Overrides(room=("ops", "noc"), message_format="text"),
    "web": Overrides(room=("web-team",)),
    "quiet": Overrides(notify=False),  # names no room
}


@pytest.mark.parametrize(
    ("check_room", "client_room", "contacts", "expected"),
    [
        (("c1", "c2"), ("k1",), ("dba",), ["c1", "c2"]),
        (None, ("k1", "k2"), ("dba",), ["k1", "k2"]),
        (None, None, ("dba",), ["db-oncall", "ops"]),
        (None, None, ("ops", "dba"), ["ops", "noc", "db-oncall"]),
        (None, None, ("dba", "ops", "web"), ["db-oncall", "ops", "noc", "web-team"]),
        (None, None, ("quiet",), ["sensu"]),
        (None, None, ("nobody",), ["sensu"]),
        (None, None, ("nobody", "web"), ["web-team"]),
        (None, None, (), ["sensu"]),
        ((), None, (), ["sensu"]),  # an empty room list names nothing
        (("c1", "c1"), None, (), ["c1"]),
    ],
)
def test_room_precedence(
    check_room: tuple[str, ...] | None,
    client_room: tuple[str, ...] | None,
    contacts: tuple[str, ...],
    expected: list[str],
) -> None:
    routed = make_event(
        check_overrides=Overrides(room=check_room),
        client_overrides=Overrides(room=client_room),
        contacts=contacts,
    )
    targets = route(routed, make_settings(), CONTACTS)
    assert names(targets) == expected
    assert {target.kind for target in targets} == {"room"}


# --- per-key overrides -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "client", "expected"),
    [
        (Overrides(), Overrides(), (False, "sensu", "html")),
        (Overrides(notify=True), Overrides(notify=False), (True, "sensu", "html")),
        (Overrides(), Overrides(notify=True), (True, "sensu", "html")),
        (Overrides(notify=False), Overrides(notify=True), (False, "sensu", "html")),
        (Overrides(username="chk"), Overrides(username="cli"), (False, "chk", "html")),
        (Overrides(), Overrides(username="cli"), (False, "cli", "html")),
        (Overrides(message_format="text"), Overrides(), (False, "sensu", "text")),
        (
            Overrides(notify=True),
            Overrides(username="cli", message_format="text", notify=False),
            (True, "cli", "text"),
        ),
    ],
)
def test_per_key_precedence_check_then_client_then_settings(
    check: Overrides, client: Overrides, expected: tuple[bool, str, str]
) -> None:
    for room_source in ("check", "client", "settings"):
        check_room = ("r",) if room_source == "check" else None
        client_room = ("r",) if room_source == "client" else None
        routed = make_event(
            check_overrides=dataclasses.replace(check, room=check_room),
            client_overrides=dataclasses.replace(client, room=client_room),
        )
        (target,) = route(routed, make_settings(room=("r",)), NO_CONTACTS)
        assert (target.notify, target.username, target.message_format) == expected


def test_settings_values_are_the_fallback() -> None:
    s = make_settings(notify=True, username="Sensu Enterprise", message_format="text")
    assert route(make_event(), s, NO_CONTACTS) == (room("sensu", True, "Sensu Enterprise", "text"),)


def test_contact_overrides_apply_to_that_contacts_rooms() -> None:
    routed = make_event(contacts=("dba", "ops"))
    assert route(routed, make_settings(), CONTACTS) == (
        room("db-oncall", notify=True, username="dba-bot"),
        room("ops", notify=True, username="dba-bot"),  # first named by dba: dba's overrides
        room("noc", fmt="text"),
    )


def test_check_and_client_keys_beat_contact_keys() -> None:
    routed = make_event(
        contacts=("dba",),
        check_overrides=Overrides(notify=False),
        client_overrides=Overrides(username="client-bot", notify=True),
    )
    assert route(routed, make_settings(), CONTACTS) == (
        room("db-oncall", notify=False, username="client-bot"),
        room("ops", notify=False, username="client-bot"),
    )


def test_contact_keys_do_not_apply_when_the_room_comes_from_elsewhere() -> None:
    routed = make_event(contacts=("dba",), client_overrides=Overrides(room=("k",)))
    assert route(routed, make_settings(), CONTACTS) == (room("k"),)


def test_contacts_without_rooms_do_not_change_the_default_room() -> None:
    routed = make_event(contacts=("quiet",))
    assert route(routed, make_settings(notify=True), CONTACTS) == (room("sensu", notify=True),)


# --- user ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"check_overrides": Overrides(room=("c",))},
        {"client_overrides": Overrides(room=("k",))},
        {"contacts": ("dba",)},
    ],
)
def test_user_replaces_every_room(changes: dict[str, Any]) -> None:
    targets = route(make_event(**changes), make_settings(user="oncall@example.com"), CONTACTS)
    assert targets == (
        Target(
            kind="user",
            name="oncall@example.com",
            notify=False,
            username="sensu",
            message_format="html",
        ),
    )


def test_user_target_takes_check_and_client_keys() -> None:
    routed = make_event(
        check_overrides=Overrides(notify=True),
        client_overrides=Overrides(username="cli", message_format="text"),
    )
    (target,) = route(routed, make_settings(user="42"), NO_CONTACTS)
    assert target == Target("user", "42", notify=True, username="cli", message_format="text")


# --- unknown contacts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("contacts", "expected"),
    [
        ((), ()),
        (("dba", "ops"), ()),
        (("dba", "nobody", "ghost"), ("nobody", "ghost")),
    ],
)
def test_unknown_contacts(contacts: tuple[str, ...], expected: tuple[str, ...]) -> None:
    assert unknown_contacts(make_event(contacts=contacts), CONTACTS) == expected


# --- fixtures, end to end --------------------------------------------------------------------


def fixture(name: str) -> Event:
    return parse_event(json.loads((FIXTURES / name).read_text(encoding="utf-8")))


def test_classic_hipchat_fixture_routes_to_check_rooms() -> None:
    targets = route(fixture("classic-hipchat.json"), make_settings(), CONTACTS)
    assert targets == (
        room("db-oncall", notify=True, fmt="text"),
        room("ops", notify=True, fmt="text"),
    )


def test_classic_hipchat_fixture_without_check_rooms_uses_client_rooms() -> None:
    parsed = fixture("classic-hipchat.json")
    routed = dataclasses.replace(parsed, check_overrides=Overrides(notify=True))
    assert names(route(routed, make_settings(), CONTACTS)) == ["dba", "ops"]


def test_go_annotations_fixture() -> None:
    targets = route(fixture("go-annotations.json"), make_settings(), NO_CONTACTS)
    assert targets == (
        room("payments", notify=True, username="Sensu Go", fmt="text"),
        room("ops", notify=True, username="Sensu Go", fmt="text"),
    )


def test_go_warning_fixture_ignores_slack_annotations() -> None:
    assert route(fixture("go-warning.json"), make_settings(room=("ops",)), NO_CONTACTS) == (
        room("ops"),
    )


# --- Router: route for a stream of events -----------------------------------------------------

ROUTER_EVENTS = [
    make_event(),
    make_event(status=1),
    make_event(status=2),
    make_event(status=3),
    make_event(status=0, action="resolve"),
    make_event(check_overrides=Overrides(room=("c1", "c2"))),
    make_event(client_overrides=Overrides(room=("k1",), notify=True)),
    make_event(check_overrides=Overrides(username="check-bot")),
    make_event(client_overrides=Overrides(mentions=BySeverity(critical="@all")), status=2),
    make_event(check_overrides=Overrides(legacy_occurrences=True)),
    make_event(contacts=("dba", "ops")),
    make_event(contacts=("quiet",)),
    make_event(contacts=("nobody",)),
]
ROUTER_SETTINGS = [
    make_settings(),
    make_settings(room=("ops", "web"), notify=BySeverity(critical=True), username="Sensu"),
    make_settings(user="oncall@example.com"),
    make_settings(room=()),
]


@pytest.mark.parametrize("settings", ROUTER_SETTINGS)
def test_router_routes_every_event_as_route_does(settings: HipChatSettings) -> None:
    router = Router()
    # Twice over, in both orders: what one event leaves behind never changes another's targets.
    for event in [*ROUTER_EVENTS, *reversed(ROUTER_EVENTS), *ROUTER_EVENTS]:
        assert router.route(event, settings, CONTACTS) == route(event, settings, CONTACTS)


def test_router_shares_the_targets_of_events_that_name_no_routing() -> None:
    router = Router()
    settings = make_settings(room=("ops", "web"))
    first = router.route(make_event(id="a"), settings, CONTACTS)
    assert router.route(make_event(id="b"), settings, CONTACTS) is first
    # Naming only legacy_occurrences changes nothing routing reads.
    legacy = make_event(check_overrides=Overrides(legacy_occurrences=False))
    assert router.route(legacy, settings, CONTACTS) is first
    assert router.route(make_event(status=1), settings, CONTACTS) is not first
    assert router.route(make_event(contacts=("nobody",)), settings, CONTACTS) is not first


def test_router_routes_again_with_new_settings() -> None:
    router = Router()
    assert names(router.route(make_event(), make_settings(room=("old",)), CONTACTS)) == ["old"]
    assert names(router.route(make_event(), make_settings(room=("new",)), CONTACTS)) == ["new"]
