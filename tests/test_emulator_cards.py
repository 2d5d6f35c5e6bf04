"""The emulator's HipChat cards: the card rules, their 400s, and what an accepted card leaves.

End-to-end tests post to the real emulator on a loopback port with httpx and
read the card back through the emulator's object, its room history and its
``/_emulator/messages``; the pure parts (the schema walk, the HTML rule, the
nesting bound) are tested without a socket.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from hipchatd.emulator import Emulator, Reject, echo_line
from hipchatd.emulator.cards import (
    CARD_ATTRIBUTES_MAX,
    CARD_HTML_TAGS,
    CARD_SCHEMA,
    LOZENGE_STYLES,
    disallowed_tag,
)
from hipchatd.emulator.validation import BODY_NESTING_MAX, check_schema, parse_v2_body
from tests.conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}

#: An application card using every field the card rules know.
APPLICATION_CARD: dict[str, Any] = {
    "style": "application",
    "format": "medium",
    "id": "sensu-web01-check_disk",
    "title": "CRITICAL: web01/check_disk",
    "url": "https://uchiwa.example.com/#/client/dc/web01?check=check_disk",
    "date": 1_453_867_674_631,
    "description": {
        "value": '<b>DISK CRITICAL</b> - <span style="color: red">/var 97%</span> '
        '<a href="https://runbooks.example.com/disk">runbook</a> <i>a < b</i>',
        "format": "html",
    },
    "thumbnail": {
        "url": "https://example.com/t.png",
        "url@2x": "https://example.com/t@2x.png",
        "width": 64,
        "height": 64.5,
    },
    "activity": {
        "html": "<strong>web01</strong> check_disk went <B>CRITICAL</B>",
        "icon": {"url": "https://example.com/i.png", "url@2x": "https://example.com/i@2x.png"},
    },
    "attributes": [
        {"label": "status", "value": {"label": "critical", "style": "lozenge-error"}},
        {"label": "occurrences", "value": {"label": "3"}},
        {
            "label": "source",
            "value": {
                "label": "web01",
                "url": "https://uchiwa.example.com/#/client/dc/web01",
                "icon": "https://example.com/host.png",
            },
        },
        {"value": {"label": "unlabelled", "icon": {"url": "https://example.com/u.png"}}},
    ],
    "icon": {"url": "https://example.com/critical.png", "url@2x": "https://example.com/c2.png"},
}

#: The alternatives of a card ``icon``, as a type error for one carries them.
ICON_TYPES = CARD_SCHEMA["properties"]["icon"]["type"]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as http:
        yield http


def card_with(**fields: Any) -> dict[str, Any]:
    """A minimal valid card with ``fields`` set (a value of None removes the field)."""
    card: dict[str, Any] = {"style": "application", "title": "CRITICAL", "id": "c1"}
    for name, value in fields.items():
        if value is None:
            card.pop(name, None)
        else:
            card[name] = value
    return card


async def post_card(client: httpx.AsyncClient, emulator: Emulator, card: Any) -> httpx.Response:
    body = {"message": "CRITICAL: web01/check_disk", "card": card}
    return await client.post(f"{emulator.url}/v2/room/sensu/notification", json=body, headers=AUTH)


def pretty(error: dict[str, Any]) -> str:
    """The v2 error body as HipChat printed it: 2-space indent, sorted keys."""
    return json.dumps({"error": error}, indent=2, sort_keys=True)


# --- an accepted card -------------------------------------------------------


async def test_an_application_card_is_accepted_and_read_back_everywhere(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    """The card is kept as sent: on the message, in room history and in /_emulator/messages."""
    sent = copy.deepcopy(APPLICATION_CARD)
    with trio.fail_after(10):
        response = await post_card(client, emulator, sent)
        history = await client.get(f"{emulator.url}/v2/room/sensu/history/latest", headers=AUTH)
        control = await client.get(f"{emulator.url}/_emulator/messages")
    assert response.status_code == 204
    [message] = emulator.messages
    assert message.card == APPLICATION_CARD
    assert message.message == "CRITICAL: web01/check_disk"
    [item] = history.json()["items"]
    assert item["type"] == "notification"
    assert item["card"] == APPLICATION_CARD
    assert item["message"] == "CRITICAL: web01/check_disk"
    [recorded] = control.json()
    assert recorded["card"] == APPLICATION_CARD
    assert echo_line(message).endswith("(yellow, card)")


async def test_a_notification_without_a_card_has_none(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    """``card: null`` is no card; history items then have no ``card`` key."""
    with trio.fail_after(10):
        response = await post_card(client, emulator, None)
        history = await client.get(f"{emulator.url}/v2/room/sensu/history/latest", headers=AUTH)
    assert response.status_code == 204
    assert emulator.messages[0].card is None
    assert "card" not in history.json()["items"][0]


@pytest.mark.parametrize(
    "card",
    [
        pytest.param(card_with(style="link", url="https://example.com"), id="link"),
        pytest.param(card_with(style="file", title="t" * 500), id="title-500"),
        pytest.param(card_with(format="compact", description="plain <div> text"), id="text-plain"),
        pytest.param(
            card_with(description={"value": "<div>not html</div>" + "x" * 981, "format": "text"}),
            id="text-description-1000",
        ),
        pytest.param(card_with(icon="https://example.com/i.png"), id="icon-string"),
        pytest.param(card_with(icon={"url": "https://x", "extra": 1}), id="icon-extra-key"),
        pytest.param(card_with(thumbnail={"url": "u" * 250}), id="thumbnail-250"),
        pytest.param(
            card_with(attributes=[{"label": "l" * 50, "value": {"label": "v"}}]), id="label-50"
        ),
    ]
    + [
        pytest.param(card_with(attributes=[{"value": {"label": "v", "style": style}}]), id=style)
        for style in LOZENGE_STYLES
    ]
    + [
        pytest.param(
            card_with(attributes=[{"value": {"label": "v"}}] * CARD_ATTRIBUTES_MAX),
            id="attributes-at-the-bound",
        ),
        pytest.param(card_with(unknown={"kept": True}), id="unknown-field"),
    ],
)
async def test_cards_within_the_rules_are_accepted(
    emulator: Emulator, client: httpx.AsyncClient, card: dict[str, Any]
) -> None:
    with trio.fail_after(10):
        response = await post_card(client, emulator, card)
    assert response.status_code == 204, response.text
    assert emulator.messages[0].card == card


# --- each rule refused, in HipChat's error shape ----------------------------


@pytest.mark.parametrize(
    ("card", "error"),
    [
        pytest.param(
            "a card",
            {
                "code": 400,
                "expected_type": "object",
                "field": "card",
                "message": "Value u'a card' for field 'card' is not of type 'object'",
                "type": "Bad Request",
                "validation": "type",
                "value": "a card",
            },
            id="card-not-an-object",
        ),
        pytest.param(
            card_with(style=None),
            {
                "code": 400,
                "field": "card.style",
                "message": "Required field 'card.style' is missing",
                "type": "Bad Request",
                "validation": "required",
            },
            id="style-missing",
        ),
        pytest.param(
            card_with(style="Application"),
            {
                "code": 400,
                "field": "card.style",
                "message": "Value u'Application' for field 'card.style' is not in the "
                "enumeration: ['file', 'image', 'application', 'link', 'media']",
                "options": ["file", "image", "application", "link", "media"],
                "type": "Bad Request",
            },
            id="style-enum",
        ),
        pytest.param(
            card_with(id=12345),
            {
                "code": 400,
                "expected_type": "string",
                "field": "card.id",
                "message": "Value 12345 for field 'card.id' is not of type 'string'",
                "type": "Bad Request",
                "validation": "type",
                "value": 12345,
            },
            id="id-number",
        ),
        pytest.param(
            card_with(attributes=[{"value": {"label": "v"}}] * 2 + [{"label": "l" * 51}]),
            {
                "code": 400,
                "field": "card.attributes[2].label",
                "maxLength": 50,
                "message": f"Length of value u'{'l' * 51}' for field 'card.attributes[2].label' "
                "must be less than or equal to 50",
                "type": "Bad Request",
                "validation": "maxLength",
                "value": "l" * 51,
            },
            id="attribute-label-51",
        ),
        pytest.param(
            card_with(icon=7),
            {
                "code": 400,
                "expected_type": ICON_TYPES,
                "field": "card.icon",
                "message": f"Value 7 for field 'card.icon' is not of type {ICON_TYPES!r}",
                "type": "Bad Request",
                "validation": "type",
                "value": 7,
            },
            id="icon-union",
        ),
        pytest.param(
            card_with(attributes=[{"value": {"label": "v"}}] * (CARD_ATTRIBUTES_MAX + 1)),
            {
                "code": 400,
                "field": "card.attributes",
                "maxItems": CARD_ATTRIBUTES_MAX,
                "message": f"Field 'card.attributes' has {CARD_ATTRIBUTES_MAX + 1} items; "
                f"at most {CARD_ATTRIBUTES_MAX} are accepted",
                "type": "Bad Request",
                "validation": "maxItems",
            },
            id="attributes-over-the-bound",
        ),
        pytest.param(
            card_with(activity={"html": "<div>web01</div>"}),
            {
                "code": 400,
                "field": "card.activity.html",
                "message": "Value u'<div>web01</div>' for field 'card.activity.html' uses the "
                "tag <div>; HTML in a card may use only a, b, i, span, strong",
                "options": ["a", "b", "i", "span", "strong"],
                "type": "Bad Request",
                "validation": "html",
                "value": "<div>web01</div>",
            },
            id="activity-html-div",
        ),
    ],
)
async def test_bad_cards_get_the_exact_pretty_sorted_body(
    emulator: Emulator, client: httpx.AsyncClient, card: Any, error: dict[str, Any]
) -> None:
    with trio.fail_after(10):
        response = await post_card(client, emulator, card)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.text == pretty(error)
    assert emulator.messages == []


def _description_types() -> Any:
    return CARD_SCHEMA["properties"]["description"]["type"]


@pytest.mark.parametrize(
    ("card", "field", "validation"),
    [
        (card_with(title=None), "card.title", "required"),
        (card_with(title=""), "card.title", "minLength"),
        (card_with(title="t" * 501), "card.title", "maxLength"),
        (card_with(title=["CRITICAL"]), "card.title", "type"),
        (card_with(id=None), "card.id", "required"),
        (card_with(id=""), "card.id", "minLength"),
        (card_with(style=3), "card.style", None),  # an enumeration error has no `validation`
        (card_with(format="html"), "card.format", None),  # hipchat-rb#189's card
        (card_with(description=""), "card.description", "minLength"),
        (card_with(description="d" * 1001), "card.description", "maxLength"),
        (card_with(description=["d"]), "card.description", "type"),
        (card_with(description={"format": "text"}), "card.description.value", "required"),
        (card_with(description={"value": "d"}), "card.description.format", "required"),
        (
            card_with(description={"value": "d", "format": "markdown"}),
            "card.description.format",
            None,
        ),
        (
            card_with(description={"value": "d" * 1001, "format": "text"}),
            "card.description.value",
            "maxLength",
        ),
        (
            card_with(description={"value": "", "format": "text"}),
            "card.description.value",
            "minLength",
        ),
        (card_with(url=5), "card.url", "type"),
        (card_with(date="2016-01-27"), "card.date", "type"),
        (card_with(date=1.5), "card.date", "type"),
        (card_with(date=True), "card.date", "type"),
        (card_with(thumbnail="https://x"), "card.thumbnail", "type"),
        (card_with(thumbnail={"width": 1}), "card.thumbnail.url", "required"),
        (card_with(thumbnail={"url": ""}), "card.thumbnail.url", "minLength"),
        (card_with(thumbnail={"url": "u" * 251}), "card.thumbnail.url", "maxLength"),
        (
            card_with(thumbnail={"url": "u", "url@2x": "u" * 251}),
            "card.thumbnail.url@2x",
            "maxLength",
        ),
        (card_with(thumbnail={"url": "u", "width": "wide"}), "card.thumbnail.width", "type"),
        (card_with(thumbnail={"url": "u", "height": False}), "card.thumbnail.height", "type"),
        (card_with(activity={}), "card.activity.html", "required"),
        (card_with(activity={"html": ""}), "card.activity.html", "minLength"),
        (card_with(activity={"html": "x", "icon": 7}), "card.activity.icon", "type"),
        (card_with(activity={"html": "x", "icon": {}}), "card.activity.icon.url", "required"),
        (card_with(attributes={"label": "x"}), "card.attributes", "type"),
        (card_with(attributes=["status"]), "card.attributes[0]", "type"),
        (card_with(attributes=[{"label": "status"}]), "card.attributes[0].value", "required"),
        (
            card_with(attributes=[{"label": "", "value": {}}]),
            "card.attributes[0].label",
            "minLength",
        ),
        (card_with(attributes=[{"value": {}}]), "card.attributes[0].value.label", "required"),
        (
            card_with(attributes=[{"value": {"label": ""}}]),
            "card.attributes[0].value.label",
            "minLength",
        ),
        (
            card_with(attributes=[{"value": {"label": "v", "url": 1}}]),
            "card.attributes[0].value.url",
            "type",
        ),
        (
            card_with(attributes=[{"value": {"label": "v", "style": "lozenge-purple"}}]),
            "card.attributes[0].value.style",
            None,
        ),
        (
            card_with(attributes=[{"value": {"label": "v", "icon": {"url@2x": "u"}}}]),
            "card.attributes[0].value.icon.url",
            "required",
        ),
        (card_with(icon={}), "card.icon.url", "required"),
        (card_with(icon={"url": ""}), "card.icon.url", "minLength"),
        (card_with(icon={"url": "u", "url@2x": ""}), "card.icon.url@2x", "minLength"),
    ],
)
async def test_each_card_rule_is_refused_with_its_field(
    emulator: Emulator,
    client: httpx.AsyncClient,
    card: dict[str, Any],
    field: str,
    validation: str | None,
) -> None:
    """Every rule answers HipChat's 400 shape naming the card path; nothing is recorded."""
    with trio.fail_after(10):
        response = await post_card(client, emulator, card)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["type"], error["field"]) == (400, "Bad Request", field)
    assert error.get("validation") == validation
    assert field in error["message"]
    assert list(json.loads(response.text)["error"]) == sorted(error)
    assert emulator.messages == []


async def test_a_union_field_of_no_listed_type_carries_the_schema_fragment(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    """A description that is neither a string nor an object: expected_type lists both shapes."""
    with trio.fail_after(10):
        response = await post_card(client, emulator, card_with(description=42))
    error = response.json()["error"]
    assert error["expected_type"] == _description_types()
    assert [alternative["type"] for alternative in error["expected_type"]] == ["string", "object"]
    assert error["value"] == 42
    assert emulator.messages == []


# --- HTML inside a card -----------------------------------------------------


@pytest.mark.parametrize(
    ("card", "field", "tag"),
    [
        (card_with(description={"value": "<div>x</div>", "format": "html"}), "description", "div"),
        (card_with(description={"value": "a<br/>b", "format": "html"}), "description", "br"),
        (card_with(description={"value": "<IMG src=x>", "format": "html"}), "description", "img"),
        (card_with(activity={"html": "<script>alert(1)</script>"}), "activity", "script"),
        (card_with(activity={"html": "<b>ok</b> <em>no</em>"}), "activity", "em"),
        (card_with(activity={"html": "<b>ok</b></p>"}), "activity", "p"),
        (card_with(activity={"html": "<p>x</p>", "format": "text"}), "activity", "p"),
    ],
)
async def test_card_html_beyond_the_allowed_tags_is_refused(
    emulator: Emulator, client: httpx.AsyncClient, card: dict[str, Any], field: str, tag: str
) -> None:
    with trio.fail_after(10):
        response = await post_card(client, emulator, card)
    assert response.status_code == 400
    error = response.json()["error"]
    expected_field = "card.description.value" if field == "description" else "card.activity.html"
    assert (error["field"], error["validation"]) == (expected_field, "html")
    assert f"<{tag}>" in error["message"]
    assert error["options"] == sorted(CARD_HTML_TAGS)
    assert emulator.messages == []


@pytest.mark.parametrize(
    ("html", "tag"),
    [
        ("plain text", None),
        ('<a href="https://x">x</a> <b>b</b> <i>i</i> <strong>s</strong> <span>s</span>', None),
        ("<A HREF='x'>x</A> <SPAN style='color: red'>s</SPAN>", None),
        ("a < b and 1<2", None),  # "<" before a space or a digit is text
        ("< div>", None),
        ("<!-- a comment -->", None),
        ("<b>x</b><div>", "div"),
        ("c<d", "d"),  # before a letter "<" opens a tag, as a browser reads it
        ("<img src=x/>", "img"),
        ("<br/>", "br"),
        ("</table>", "table"),
        ("<svg/onload=alert(1)>", "svg"),
        ("<bold>", "bold"),
    ],
)
def test_disallowed_tag(html: str, tag: str | None) -> None:
    assert disallowed_tag(html) == tag


# --- bounded work -----------------------------------------------------------


async def test_a_card_of_100000_attributes_is_refused_on_its_length(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    """Refused on the count, without reading an attribute; the answer does not echo them."""
    card = card_with(attributes=[0] * 100_000)  # not even objects: never looked at
    with trio.fail_after(10):
        response = await post_card(client, emulator, card)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["field"], error["validation"], error["maxItems"]) == (
        "card.attributes",
        "maxItems",
        CARD_ATTRIBUTES_MAX,
    )
    assert "value" not in error
    assert len(response.content) < 1_000
    assert emulator.messages == []


def _nested(depth: int) -> Any:
    value: Any = "junk"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [BODY_NESTING_MAX, 200, 100_000])
async def test_deeply_nested_junk_in_a_card_is_refused_before_it_is_read(
    emulator: Emulator, client: httpx.AsyncClient, depth: int
) -> None:
    """Junk nested past the bound is refused as such, even in a card missing its title.

    100,000 levels is past the JSON parser's own recursion limit: still a 400.
    """
    # Written as text: json.dumps itself cannot nest 100,000 deep.
    body = '{"message": "m", "card": {"style": "link", "id": "c", "icon": '
    body += "[" * depth + "]" * depth + "}}"
    headers = {**AUTH, "Content-Type": "application/json"}
    with trio.fail_after(10):
        response = await client.post(
            f"{emulator.url}/v2/room/sensu/notification", content=body, headers=headers
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"] == f"The request body nests more than {BODY_NESTING_MAX} levels"
    assert emulator.messages == []


def test_body_nesting_bound() -> None:
    """The body itself is level 1: BODY_NESTING_MAX levels pass, one more is refused."""
    deepest = json.dumps({"x": _nested(BODY_NESTING_MAX - 1)}).encode()
    assert parse_v2_body("application/json", deepest, parse_form=False)
    deeper = json.dumps({"x": _nested(BODY_NESTING_MAX)}).encode()
    with pytest.raises(Reject) as refused:
        parse_v2_body("application/json", deeper, parse_form=False)
    assert refused.value.error.status == 400
    wide = json.dumps({"x": [[1]] * 50_000}).encode()  # wide but shallow: accepted
    assert len(parse_v2_body("application/json", wide, parse_form=False)["x"]) == 50_000


def test_check_schema_walks_the_schema_not_the_value() -> None:
    """Unknown keys are never walked: junk under them is not the card's business."""
    card = card_with(extra={"deep": _nested(20)}, attributes=[{"value": {"label": "v"}}])
    check_schema(CARD_SCHEMA, card, "card")
    with pytest.raises(Reject) as refused:
        check_schema(CARD_SCHEMA, card_with(id=None), "payload.card")
    assert refused.value.error.extra["field"] == "payload.card.id"


# --- v1 has no cards --------------------------------------------------------


async def test_v1_ignores_a_card_parameter(emulator: Emulator, client: httpx.AsyncClient) -> None:
    """v1 rooms/message defines no card: the parameter is ignored like any unknown one."""
    form = {
        "room_id": "sensu",
        "from": "Sensu",
        "message": "disk full",
        "card": json.dumps(APPLICATION_CARD),
    }
    with trio.fail_after(10):
        response = await client.post(
            f"{emulator.url}/v1/rooms/message", params={"auth_token": TOKEN}, data=form
        )
        history = await client.get(f"{emulator.url}/v2/room/sensu/history/latest", headers=AUTH)
    assert response.status_code == 200
    [message] = emulator.messages
    assert (message.api_version, message.message, message.card) == ("v1", "disk full", None)
    assert "card" not in history.json()["items"][0]
