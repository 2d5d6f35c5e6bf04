"""cards: one event -> a HipChat application card within HipChat's card rules.

Each card is checked against the rules docs/hipchat-api.md §4.2 states
(:func:`card_problems` is an independent reading of them), for the reference
events, every status, and hostile events; then end to end, a card accepted
by the emulator.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from hipchatd.delivery.cards import (
    ATTRIBUTE_VALUE_MAX,
    LOZENGES,
    build_card,
    card_id,
)
from hipchatd.delivery.coalesce import render_batch
from hipchatd.delivery.render import render, status_word
from hipchatd.delivery.templated import Shaping
from hipchatd.emulator import Emulator
from hipchatd.sensu.events import Event
from tests.conftest import StartDaemon, load_fixture, send_tcp
from tests.factories import make_settings, make_target, sample_event

# --- HipChat's card rules (docs/hipchat-api.md §4.2) -------------------------------------------

STYLES = {"file", "image", "application", "link", "media"}
FORMATS = {"compact", "medium"}
#: The lozenge styles an attribute value may take.
LOZENGE_STYLES = {
    "lozenge-success",
    "lozenge-error",
    "lozenge-current",
    "lozenge-complete",
    "lozenge-moved",
    "lozenge",
}
#: HTML in a card may use only these tags.
CARD_TAGS = {"a", "b", "i", "strong", "span"}
_TAG = re.compile(r"</?([A-Za-z][^\s/>]*)")


def _string(value: Any, low: int = 0, high: int | None = None) -> bool:
    return isinstance(value, str) and low <= len(value) and (high is None or len(value) <= high)


def _icon_problems(icon: Any, where: str) -> list[str]:
    if isinstance(icon, str):
        return []
    if isinstance(icon, dict) and _string(icon.get("url"), 1):
        return [] if _string(icon.get("url@2x", "x"), 1) else [f"{where}.url@2x"]
    return [where]


def card_problems(card: Any) -> list[str]:
    """Every way ``card`` breaks the §4.2 rules; [] for a valid card."""
    if not isinstance(card, dict):
        return ["card is not an object"]
    problems = []
    if card.get("style") not in STYLES:
        problems.append("style")
    if not _string(card.get("title"), 1, 500):
        problems.append("title")
    if not _string(card.get("id"), 1):
        problems.append("id")
    if "format" in card and card["format"] not in FORMATS:
        problems.append("format")
    if "description" in card:
        description = card["description"]
        if isinstance(description, dict):
            if not _string(description.get("value"), 1, 1000):
                problems.append("description.value")
            if description.get("format") not in ("html", "text"):
                problems.append("description.format")
            elif description["format"] == "html":
                tags = {m.group(1).lower() for m in _TAG.finditer(description["value"])}
                problems.extend(f"description tag {t}" for t in tags - CARD_TAGS)
        elif not _string(description, 1, 1000):
            problems.append("description")
    if "url" in card and not _string(card["url"]):
        problems.append("url")
    if "icon" in card:
        problems.extend(_icon_problems(card["icon"], "icon"))
    for index, attribute in enumerate(card.get("attributes", [])):
        where = f"attributes[{index}]"
        if not isinstance(attribute, dict) or not isinstance(attribute.get("value"), dict):
            problems.append(where)
            continue
        if "label" in attribute and not _string(attribute["label"], 1, 50):
            problems.append(f"{where}.label")
        value = attribute["value"]
        if not _string(value.get("label"), 1):
            problems.append(f"{where}.value.label")
        if "url" in value and not _string(value["url"]):
            problems.append(f"{where}.value.url")
        if "style" in value and value["style"] not in LOZENGE_STYLES:
            problems.append(f"{where}.value.style")
        if "icon" in value:
            problems.extend(_icon_problems(value["icon"], f"{where}.value.icon"))
    return problems


def test_the_rules_reader_catches_broken_cards() -> None:
    good = {"style": "application", "title": "t", "id": "1"}
    assert card_problems(good) == []
    assert card_problems({**good, "title": "x" * 501}) == ["title"]
    assert card_problems({**good, "description": {"value": "<p>x</p>", "format": "html"}}) == [
        "description tag p"
    ]
    bad_style = {"label": "S", "value": {"label": "x", "style": "red"}}
    assert card_problems({**good, "attributes": [bad_style]}) == ["attributes[0].value.style"]


# --- the card --------------------------------------------------------------------------------


#: Icons as an operator might configure them (``hipchat.card_icons``).
ICONS = {
    word: f"https://icons.example.com/{word.lower()}.png"
    for word in ("CRITICAL", "WARNING", "UNKNOWN", "OK", "RESOLVED", "FLAPPING")
}


def card_of(event: Event, link: str | None = None) -> dict[str, Any]:
    word = status_word(event)
    return build_card(event, word, link, ICONS[word])


def attributes(card: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["label"]: a["value"] for a in card["attributes"]}


def test_the_card_of_the_classic_reference_event() -> None:
    event = sample_event(occurrences=3, playbook="https://wiki.example.com/disk")
    card = card_of(event)
    assert card == {
        "style": "application",
        "format": "medium",
        "id": card_id(event),
        "title": "CRITICAL sensu.test.local/testing",
        "description": {"value": "THIS IS AN ERROR", "format": "text"},
        "url": "https://wiki.example.com/disk",
        "icon": {"url": ICONS["CRITICAL"]},
        "attributes": [
            {"label": "Status", "value": {"label": "CRITICAL", "style": "lozenge-error"}},
            {"label": "Occurrences", "value": {"label": "3"}},
            {"label": "Source", "value": {"label": "sensu.test.local"}},
            {"label": "Check", "value": {"label": "testing"}},
            {
                "label": "Playbook",
                "value": {
                    "label": "https://wiki.example.com/disk",
                    "url": "https://wiki.example.com/disk",
                },
            },
        ],
    }
    assert card_problems(card) == []


@pytest.mark.parametrize(
    ("changes", "word", "lozenge"),
    [
        ({"status": 2}, "CRITICAL", "lozenge-error"),
        ({"status": 1}, "WARNING", "lozenge-moved"),
        ({"status": 3}, "UNKNOWN", "lozenge"),
        ({"status": 0}, "OK", "lozenge-success"),
        ({"status": 0, "action": "resolve"}, "RESOLVED", "lozenge-success"),
        ({"status": 2, "action": "flapping"}, "FLAPPING", "lozenge-current"),
    ],
)
def test_status_lozenge_and_icon(changes: dict[str, Any], word: str, lozenge: str) -> None:
    card = card_of(sample_event(**changes))
    assert card["title"].startswith(word + " ")
    assert attributes(card)["Status"] == {"label": word, "style": lozenge}
    assert card["icon"] == {"url": ICONS[word]}
    assert LOZENGES[word] == lozenge
    assert card_problems(card) == []


def test_a_card_without_a_configured_icon_has_none() -> None:
    event = sample_event()
    card = build_card(event, status_word(event), None, None)
    assert "icon" not in card
    assert card_problems(card) == []


def test_card_icons_reach_the_card_by_status_word_through_render() -> None:
    settings = make_settings(card=True, card_icons={"critical": "https://i.example/red.png"})
    target = make_target(card=True)
    shaping = Shaping.of(settings, target)
    ((critical, _),) = render_batch([sample_event()], target, "v2", shaping=shaping)
    ((warning, _),) = render_batch([sample_event(status=1)], target, "v2", shaping=shaping)
    assert critical.card is not None
    assert critical.card["icon"] == {"url": "https://i.example/red.png"}
    assert warning.card is not None
    assert "icon" not in warning.card


def test_go_events_show_namespace_and_a_proxy_checks_client() -> None:
    event = sample_event(flavor="go", namespace="prod", source="switch-7", client="poller-1")
    shown = attributes(card_of(event))
    assert shown["Namespace"] == {"label": "prod"}
    assert shown["Client"] == {"label": "poller-1"}
    plain = attributes(card_of(sample_event(flavor="go", namespace="default")))
    assert "Namespace" not in plain
    assert "Client" not in plain


def test_the_link_is_the_dashboard_else_an_http_playbook() -> None:
    dashboard = "https://sensu.example.com/c/~/n/default/events/a/b"
    assert card_of(sample_event(playbook="https://wiki/x"), dashboard)["url"] == dashboard
    assert card_of(sample_event(playbook="https://wiki/x"))["url"] == "https://wiki/x"
    plain = card_of(sample_event(playbook="call the DBA"))
    assert "url" not in plain
    assert attributes(plain)["Playbook"] == {"label": "call the DBA"}
    assert "url" not in card_of(sample_event(), "https://x/" + "a" * 3000)


def test_the_notification_is_the_description_when_there_is_one() -> None:
    card = card_of(sample_event(notification="Disk almost full"))
    assert card["description"] == {"value": "Disk almost full", "format": "text"}
    assert "description" not in card_of(sample_event(output="  \n "))


def test_the_id_names_one_event() -> None:
    event = sample_event()
    assert card_id(event) == card_id(replace(event))
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", card_id(event)
    )
    others = {
        card_id(replace(event, occurrences=2)),
        card_id(replace(event, status=0, action="resolve")),
        card_id(replace(event, id="another")),
        card_id(replace(event, timestamp=event.timestamp + 60)),
        card_id(replace(event, source="other")),
    }
    assert card_id(event) not in others
    assert len(others) == 5


def test_a_hostile_event_still_makes_a_valid_card() -> None:
    event = sample_event(
        source="s" * 5000,
        check="c\x00\x1b[31m\r\n" * 300,
        output="<script>alert(1)</script>\x07\n" * 100_000,
        playbook="javascript:alert(1)" + "x" * 10_000,
        occurrences=2**63,
        flavor="go",
        namespace="n\u202e" * 1000,
    )
    card = card_of(event)
    assert card_problems(card) == []
    assert len(card["title"]) == 500
    assert card["title"].endswith("…")
    description = card["description"]
    assert description["format"] == "text"
    assert description["value"].startswith("<script>alert(1)</script>\ufffd\n")
    assert 990 <= len(description["value"]) <= 1000
    assert description["value"].endswith("…")
    assert "url" not in card
    for value in attributes(card).values():
        assert len(value["label"]) <= ATTRIBUTE_VALUE_MAX
        assert not re.search("[\x00-\x1f\x7f]", value["label"])


#: Any event fields, hostile ones included.
EVENT_CHANGES = st.fixed_dictionaries(
    {
        "source": st.text(min_size=1, max_size=800),
        "check": st.text(min_size=1, max_size=800),
        "output": st.text(max_size=3000),
        "notification": st.none() | st.text(max_size=1500),
        "playbook": st.none() | st.text(max_size=300),
        "namespace": st.none() | st.text(max_size=200),
        "status": st.integers(-5, 300),
        "action": st.sampled_from(["create", "resolve", "flapping"]),
    }
)


@given(
    changes=EVENT_CHANGES,
    link=st.none() | st.text(max_size=100).map(lambda s: "https://d.example/" + s),
)
@settings(max_examples=150)
def test_any_event_makes_a_valid_card(changes: dict[str, Any], link: str | None) -> None:
    flavor = "go" if changes["namespace"] is not None else "classic"
    event = sample_event(flavor=flavor, **changes)
    card = card_of(event, link)
    assert card_problems(card) == []
    json.dumps(card, ensure_ascii=False).encode()  # encodable as the request body


# --- where cards go --------------------------------------------------------------------------


def test_render_attaches_a_card_only_when_the_target_asks() -> None:
    event = sample_event()
    assert render(event, make_target(), "v2").card is None
    card = render(event, make_target(card=True), "v2").card
    assert card == build_card(event, "CRITICAL", None, None)
    link = "https://sensu.example.com/events/{source}/{check}"
    linked = render(event, make_target(card=True, dashboard_url=link), "v2").card
    assert linked is not None
    assert linked["url"] == "https://sensu.example.com/events/sensu.test.local/testing"


def test_a_digest_carries_no_card() -> None:
    events = [sample_event(check=f"c{i}") for i in range(3)]
    [(message, span)] = render_batch(events, make_target(card=True), "v2")
    assert span == range(3)
    assert message.card is None
    [(single, _)] = render_batch(events[:1], make_target(card=True), "v2")
    assert single.card is not None


# --- end to end ------------------------------------------------------------------------------


async def test_cards_are_accepted_by_the_emulator(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    go = load_fixture("go-warning.json")
    go["check"]["occurrences"] = 1
    hostile = load_fixture("classic-critical.json")
    hostile["client"]["name"] = "web-" + "x" * 700
    hostile["check"]["output"] = "<script>alert('@all')</script>\n" * 5000
    with trio.fail_after(30):
        app = await start_daemon(
            card=True,
            dashboard_url="https://sensu.example.com/c/~/n/{namespace}/events/{source}",
            card_icons={"critical": "https://icons.example.com/red.png"},
        )
        for number, event in enumerate((load_fixture("classic-critical.json"), go, hostile)):
            await send_tcp(app.tcp_addresses[0], json.dumps(event).encode())
            await emulator.wait_for_messages(number + 1)
    assert emulator.count_status(400) == 0
    assert emulator.count_status(204) == 3
    # The emulator keeps each card as sent: the configured icon for critical only.
    cards = [m.card for m in emulator.messages]
    assert [c["title"].split(" ", 1)[0] for c in cards] == ["CRITICAL", "WARNING", "CRITICAL"]
    assert [c.get("icon") for c in cards] == [
        {"url": "https://icons.example.com/red.png"},
        None,
        {"url": "https://icons.example.com/red.png"},
    ]
    # The message goes with the card, for clients that cannot show cards.
    assert [m.message.split(" ", 1)[0] for m in emulator.messages] == [
        "<b>CRITICAL</b>",
        "<b>WARNING</b>",
        "<b>CRITICAL</b>",
    ]
