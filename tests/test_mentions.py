"""Mentions and notify by severity: the rules, then end to end through the daemon and the emulator.

A target's mentions are sent first in a text message; every ``@`` in event
text that could start a mention gets a zero-width space after it, so check
output never pages a room; html is left alone; the 10,000-character limit
holds with both.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from hipchatd.delivery.mentions import (
    ZERO_WIDTH_SPACE,
    finish_text,
    mention_prefix,
    neutralize,
    neutralized_width,
    sent_format,
)
from hipchatd.delivery.render import MAX_MESSAGE_CHARS, render
from hipchatd.emulator import Emulator
from hipchatd.sensu.events import BySeverity
from tests.conftest import TOKEN, StartDaemon, load_fixture, send_tcp
from tests.factories import make_target, sample_event

ZW = ZERO_WIDTH_SPACE
#: An ``@`` HipChat could read as the start of a mention: not yet neutralised.
LIVE_MENTION = re.compile(r"@(?=[\w.\-])")
ALL = make_target(mention="@all")


# --- what counts as a mention ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "neutralized"),
    [
        ("@all", f"@{ZW}all"),
        ("@here please", f"@{ZW}here please"),
        ("ping @oncall, then @dba.", f"ping @{ZW}oncall, then @{ZW}dba."),
        # No word boundary is needed before the ``@``: e-mail-like text is neutralised too.
        ("mail root@example.com", f"mail root@{ZW}example.com"),
        # A mention name may start with a word character, "." or "-" (as the config accepts).
        ("@.x @-y @_z @9", f"@{ZW}.x @{ZW}-y @{ZW}_z @{ZW}9"),
        ("@élodie @Ωmega", f"@{ZW}élodie @{ZW}Ωmega"),
        # An ``@`` before anything else cannot start a mention.
        ("5 @ 10", "5 @ 10"),
        ("trailing @", "trailing @"),
        ("@@all", f"@@{ZW}all"),
        ("(@)", "(@)"),
        ("no at sign", "no at sign"),
    ],
)
def test_neutralize(text: str, neutralized: str) -> None:
    assert neutralize(text) == neutralized
    assert LIVE_MENTION.search(neutralize(text)) is None


@given(st.text(alphabet="@a.- \n\u200b", max_size=60))
@settings(max_examples=300)
def test_neutralize_is_idempotent_and_leaves_no_live_mention(text: str) -> None:
    once = neutralize(text)
    assert neutralize(once) == once
    assert LIVE_MENTION.search(once) is None
    # Only zero-width spaces were added, one per width the counter said.
    assert once.replace(ZW, "") == text.replace(ZW, "")
    assert len(once) == sum(neutralized_width(text, i) for i in range(len(text)))


def test_a_target_with_a_mention_is_sent_as_text() -> None:
    assert sent_format(make_target(message_format="html")) == "html"
    assert sent_format(make_target(message_format="text")) == "text"
    assert sent_format(make_target(message_format="html", mention="@all")) == "text"
    assert mention_prefix(make_target(mention="@all @oncall")) == "@all @oncall "
    assert mention_prefix(make_target()) == ""


# --- rendering ---------------------------------------------------------------------------------


def test_mentions_go_first_and_the_message_goes_as_text() -> None:
    message = render(sample_event(output="DISK CRITICAL - / at 97%"), ALL, "v2")
    assert message.message_format == "text"
    assert message.text == "@all CRITICAL sensu.test.local/testing: DISK CRITICAL - / at 97%"


def test_every_event_derived_mention_is_neutralised_in_text() -> None:
    event = sample_event(source="db@here", check="check@all", output="paging @all")
    event = replace(event, playbook="see @runbook")
    for target in (make_target(message_format="text"), make_target(mention="@oncall")):
        text = render(event, target, "v2").text
        body = text.removeprefix(mention_prefix(target))
        assert LIVE_MENTION.search(body) is None
        assert f"db@{ZW}here/check@{ZW}all: paging @{ZW}all" in body
        assert f"Playbook: see @{ZW}runbook" in body


def test_a_notification_is_neutralised_like_output() -> None:
    text = render(sample_event(notification="@here look"), ALL, "v2").text
    assert text == f"@all CRITICAL sensu.test.local/testing: @{ZW}here look"


def test_html_is_left_alone() -> None:
    message = render(sample_event(output="paging @all"), make_target(), "v2")
    assert message.message_format == "html"
    assert "paging @all" in message.text
    assert ZW not in message.text


@pytest.mark.parametrize("unit", ["@a", "@", "a@b ", "@@@@x\n"])
@pytest.mark.parametrize("mention", [None, "@all", " ".join(f"@person{i}" for i in range(20))])
def test_the_limit_holds_with_mentions_and_neutralised_output(
    unit: str, mention: str | None
) -> None:
    output = unit * (MAX_MESSAGE_CHARS // len(unit) * 3)
    target = make_target(message_format="text", mention=mention)
    text = render(sample_event(output=output), target, "v2").text
    assert len(text) <= MAX_MESSAGE_CHARS
    assert text.startswith(mention_prefix(target) + "CRITICAL ")
    assert "[output truncated: " in text
    assert LIVE_MENTION.search(text.removeprefix(mention_prefix(target))) is None


def test_an_output_that_fits_only_without_zero_width_spaces_is_cut() -> None:
    text_target = make_target(message_format="text")
    head = len("CRITICAL sensu.test.local/testing: ")
    # Fits exactly as typed; neutralising would add 1,000 characters.
    output = "@a" * 1000 + "x" * (MAX_MESSAGE_CHARS - head - 2000)
    harmless = render(sample_event(output=output.replace("@", "#")), text_target, "v2").text
    assert len(harmless) == MAX_MESSAGE_CHARS
    assert "truncated" not in harmless
    text = render(sample_event(output=output), text_target, "v2").text
    assert len(text) <= MAX_MESSAGE_CHARS
    assert "[output truncated: " in text
    assert LIVE_MENTION.search(text) is None


@given(
    output=st.text(alphabet="@a.-\n <&", max_size=12_000),
    source=st.text(alphabet="@a", min_size=1, max_size=700),
    mention=st.sampled_from([None, "@all", "@all @here @oncall"]),
    message_format=st.sampled_from(["html", "text"]),
)
@settings(max_examples=60)
def test_any_event_renders_within_the_limit_with_no_live_mention_in_text(
    output: str, source: str, mention: str | None, message_format: Any
) -> None:
    target = make_target(message_format=message_format, mention=mention)
    message = render(sample_event(output=output, source=source), target, "v2")
    assert len(message.text) <= MAX_MESSAGE_CHARS
    if message.message_format == "text":
        assert message.text.startswith(mention_prefix(target))
        assert LIVE_MENTION.search(message.text.removeprefix(mention_prefix(target))) is None


def test_finish_text_cuts_text_measured_without_the_mentions() -> None:
    """A template's text is measured without mentions or zero-width spaces: cut at the end."""
    text = "@x " * 4000
    finished = finish_text(text, make_target(mention="@all"), MAX_MESSAGE_CHARS)
    assert len(finished) == MAX_MESSAGE_CHARS
    assert finished.startswith(f"@all @{ZW}x @{ZW}x")
    assert finished.endswith("…")
    assert finish_text("<b>@all</b>", make_target(), MAX_MESSAGE_CHARS) == "<b>@all</b>"


# --- end to end: the daemon and the emulator -------------------------------------------------


async def history(emulator: Emulator, room: str = "sensu") -> list[dict[str, Any]]:
    """The room's history as HipChat's API returns it, oldest first."""
    async with httpx.AsyncClient() as client:
        answer = await client.get(
            f"{emulator.url}/v2/room/{room}/history/latest",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    assert answer.status_code == 200
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def critical(output: str | None = None) -> bytes:
    """The Classic critical reference event, with ``output`` replaced when given."""
    event = load_fixture("classic-critical.json")
    if output is not None:
        event["check"]["output"] = output
    return json.dumps(event).encode()


def warning() -> bytes:
    """The Sensu Go warning reference event, at its first occurrence (so no repeat filter)."""
    event = load_fixture("go-warning.json")
    event["check"]["occurrences"] = 1
    return json.dumps(event).encode()


async def deliver(app: Any, emulator: Emulator, *payloads: bytes) -> None:
    """Send each payload and wait until it is delivered, one at a time (no storm digest)."""
    for payload in payloads:
        count = len(emulator.messages)
        await send_tcp(app.tcp_addresses[0], payload)
        await emulator.wait_for_messages(count + 1)


async def test_mentions_page_only_critical_and_are_sent_as_text(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    with trio.fail_after(30):
        app = await start_daemon(mentions=BySeverity(critical="@all"), message_format="html")
        await deliver(app, emulator, critical(), warning())
        items = await history(emulator)
    paged, quiet = items
    assert paged["message_format"] == "text"
    assert paged["message"] == "@all CRITICAL sensu.test.local/testing: THIS IS AN ERROR"
    assert quiet["message_format"] == "html"
    assert quiet["message"].startswith("<b>WARNING</b> ")
    assert "@all" not in quiet["message"]


async def test_a_mention_in_check_output_arrives_neutralised(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    output = "disk full: paging @all, mail root@example.com"
    with trio.fail_after(30):
        app = await start_daemon(mentions=BySeverity(critical="@oncall"))
        await deliver(app, emulator, critical(output))
        [item] = await history(emulator)
    assert item["message_format"] == "text"
    assert item["message"] == (
        "@oncall CRITICAL sensu.test.local/testing: "
        "disk full: paging @\u200ball, mail root@\u200bexample.com"
    )


async def test_a_text_room_without_mentions_still_neutralises_output(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    with trio.fail_after(30):
        app = await start_daemon(message_format="text")
        await deliver(app, emulator, critical("@here the disk is full"))
        [item] = await history(emulator)
    assert item["message"] == "CRITICAL sensu.test.local/testing: @\u200bhere the disk is full"


async def test_a_long_output_full_of_at_signs_stays_within_the_limit(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    with trio.fail_after(30):
        app = await start_daemon(mentions=BySeverity(critical="@all @here"))
        await deliver(app, emulator, critical("@a" * 30_000))
        [item] = await history(emulator)
    assert len(item["message"]) <= MAX_MESSAGE_CHARS
    assert item["message"].startswith("@all @here CRITICAL sensu.test.local/testing: @\u200ba")
    assert "[output truncated: " in item["message"]


async def test_notify_by_severity_reaches_the_emulator(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    with trio.fail_after(30):
        app = await start_daemon(notify=BySeverity(critical=True, warning=False))
        await deliver(app, emulator, critical(), warning(), critical("again"))
    assert [(m.message.split()[0], m.notify) for m in emulator.messages] == [
        ("<b>CRITICAL</b>", True),
        ("<b>WARNING</b>", False),
        ("<b>CRITICAL</b>", True),
    ]
