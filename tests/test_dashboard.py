"""Dashboard links in the built-in layout: the rules, then end to end through the emulator."""

from __future__ import annotations

import json

import trio

from hipchatd.delivery.coalesce import render_batch
from hipchatd.delivery.render import render
from hipchatd.emulator import Emulator
from tests.conftest import StartDaemon, load_fixture, send_tcp
from tests.factories import make_target, sample_event

GO_UI = "https://sensu.example.com/c/~/n/{namespace}/events/{source}/{check}"
UCHIWA = "https://uchiwa.example.com/#/client/dc1/{source}?check={check}&x=1"


def last_line(text: str, separator: str) -> str:
    return text.rsplit(separator, 1)[-1]


def test_html_shows_the_link_after_the_playbook() -> None:
    event = sample_event(source="web 01/eu", check="disk#root", playbook="https://wiki/disk")
    text = render(event, make_target(dashboard_url=GO_UI), "v2").text
    assert last_line(text, "<br>") == (
        '<a href="https://wiki/disk">Playbook</a> · <a href="https://sensu.example.com'
        '/c/~/n/default/events/web%2001%2Feu/disk%23root">Dashboard</a>'
    )


def test_text_shows_the_url() -> None:
    event = sample_event(source="web-01", check="check?x")
    for target in (
        make_target(dashboard_url=UCHIWA, message_format="text"),
        make_target(dashboard_url=UCHIWA, mention="@all"),
    ):
        text = render(event, target, "v2").text
        assert last_line(text, "\n") == (
            "Dashboard: https://uchiwa.example.com/#/client/dc1/web-01?check=check%3Fx&x=1"
        )


def test_the_href_is_escaped() -> None:
    text = render(sample_event(), make_target(dashboard_url=UCHIWA), "v2").text
    assert 'check=testing&amp;x=1">Dashboard</a>' in text


def test_no_pattern_no_link() -> None:
    assert "Dashboard" not in render(sample_event(), make_target(), "v2").text


def test_a_link_too_long_to_work_is_left_out() -> None:
    event = sample_event(source="é" * 1000)  # 6 characters each once percent-encoded
    for message_format in ("html", "text"):
        target = make_target(dashboard_url=GO_UI, message_format=message_format)
        assert "Dashboard" not in render(event, target, "v2").text


def test_a_digest_shows_no_link() -> None:
    events = [sample_event(check=f"c{i}") for i in range(3)]
    [(message, _)] = render_batch(events, make_target(dashboard_url=GO_UI), "v2")
    assert "Dashboard" not in message.text
    assert "sensu.example.com" not in message.text


async def test_a_link_that_needs_percent_encoding_arrives_in_the_room(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    classic = load_fixture("classic-critical.json")
    classic["client"]["name"] = "web 01/eu"
    classic["check"]["name"] = "disk#root?full"
    go = load_fixture("go-warning.json")
    go["check"]["occurrences"] = 1
    with trio.fail_after(30):
        app = await start_daemon(dashboard_url=GO_UI)
        for number, event in enumerate((classic, go)):
            await send_tcp(app.tcp_addresses[0], json.dumps(event).encode())
            await emulator.wait_for_messages(number + 1)
    first, second = (m.message for m in emulator.messages)
    assert first.endswith(
        '<a href="https://sensu.example.com/c/~/n/default/events/'
        'web%2001%2Feu/disk%23root%3Ffull">Dashboard</a>'
    )
    namespace, entity, check = (
        go["metadata"]["namespace"],
        go["entity"]["metadata"]["name"],
        go["check"]["metadata"]["name"],
    )
    assert f'href="https://sensu.example.com/c/~/n/{namespace}/events/{entity}/{check}"' in second
