"""coalesce.render_batch: a target's pending events -> the fewest messages that show them all."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hipchatd.delivery import coalesce
from hipchatd.delivery.coalesce import NAME_CHARS, SUMMARY_CHARS, FirstMessage, render_batch
from hipchatd.delivery.render import MAX_MESSAGE_CHARS, Message, render
from hipchatd.delivery.routing import Target
from hipchatd.sensu.events import Event
from tests import factories

HTML = factories.make_target(notify=False)
TEXT = replace(HTML, message_format="text")
HEADER = re.compile(r"^(\d+) events: (.+)$")
ENTITY = re.compile(r"&(?:amp|lt|gt|quot|#x27);")
OUR_TAG = re.compile(r"<b>|</b>|<br>")


def make_event(**changes: Any) -> Event:
    """A Classic critical event of check web-01/check-disk."""
    return factories.make_event(
        **{"check": "check-disk", "output": "DISK CRITICAL - / at 97%", **changes}
    )


def ev(check: str, status: int = 2, action: str = "create", **changes: Any) -> Event:
    return make_event(check=check, status=status, action=action, **changes)


def lines_of(message: Message) -> list[str]:
    separator = "<br>" if message.message_format == "html" else "\n"
    return message.text.split(separator)


def assert_partition(batches: Sequence[tuple[Message, range]], count: int) -> None:
    """Ranges are contiguous, in order, non-empty, and cover 0..count-1 exactly once."""
    position = 0
    for _, span in batches:
        assert span.step == 1
        assert span.start == position
        assert span.stop > span.start
        position = span.stop
    assert position == count


# --- one event, no events ------------------------------------------------------------------


@pytest.mark.parametrize("target", [HTML, TEXT])
@pytest.mark.parametrize("api_version", ["v1", "v2"])
def test_one_event_is_the_normal_message(target: Target, api_version: Any) -> None:
    event = make_event(occurrences=3, playbook="https://wiki/disk")
    assert render_batch([event], target, api_version) == [
        (render(event, target, api_version), range(1))
    ]


def test_no_events_no_messages() -> None:
    assert render_batch([], HTML, "v2") == []


# --- the summary ---------------------------------------------------------------------------


def test_header_counts_events_by_status_word_worst_first_without_zeros() -> None:
    events = [
        ev("a", 0, "resolve"),
        *(ev(f"c{i}") for i in range(9)),
        ev("w1", 1),
        ev("w2", 1),
    ]
    [(message, span)] = render_batch(events, TEXT, "v2")
    assert span == range(12)
    assert lines_of(message)[0] == "12 events: 9 critical, 2 warning, 1 resolved"


def test_header_lists_every_status_word_in_fixed_order() -> None:
    events = [
        ev("ok", 0),
        ev("resolved", 0, "resolve"),
        ev("flapping", 1, "flapping"),
        ev("unknown", 3),
        ev("warning", 1),
        ev("critical", 2),
    ]
    [(message, _)] = render_batch(events, TEXT, "v2")
    assert lines_of(message)[0] == (
        "6 events: 1 critical, 1 unknown, 1 warning, 1 flapping, 1 resolved, 1 ok"
    )


def test_one_line_per_check_in_first_appearance_order_with_latest_state() -> None:
    events = [
        ev("disk", 1, output="DISK WARNING 85%"),
        ev("load", 2, output="LOAD 12"),
        ev("disk", 2, output="DISK CRITICAL 97%\nsecond line"),
        ev("mem", 1, output="MEM 90%"),
        ev("disk", 2, output="DISK CRITICAL 99%"),
        ev("load", 0, "resolve", output="LOAD 1"),
    ]
    [(message, _)] = render_batch(events, TEXT, "v2")
    assert lines_of(message) == [
        "6 events: 3 critical, 2 warning, 1 resolved",
        "CRITICAL web-01/disk: DISK CRITICAL 99% (3 updates)",
        "RESOLVED web-01/load: LOAD 1 (2 updates)",
        "WARNING web-01/mem: MEM 90%",
    ]


def test_checks_fold_by_namespace_source_and_check() -> None:
    events = [
        ev("disk", source="web-01"),
        ev("disk", source="web-02"),
        ev("disk", source="web-01"),
        ev("disk", flavor="go", namespace="prod", source="web-01"),
        ev("disk", flavor="go", namespace="default", source="web-01"),
    ]
    [(message, _)] = render_batch(events, TEXT, "v2")
    assert lines_of(message)[1:] == [
        "CRITICAL web-01/disk: DISK CRITICAL - / at 97% (2 updates)",
        "CRITICAL web-02/disk: DISK CRITICAL - / at 97%",
        "CRITICAL prod/web-01/disk: DISK CRITICAL - / at 97%",
        # Go's "default" namespace is shown as nothing, like render does.
        "CRITICAL web-01/disk: DISK CRITICAL - / at 97%",
    ]


def test_counts_past_nine_and_ninety_nine_are_spelled_in_full() -> None:
    events = [ev("disk", output=f"DISK {i}") for i in range(150)]
    events += [ev("load", 1, output="LOAD 9") for _ in range(10)]
    [(message, span)] = render_batch(events, TEXT, "v2")
    assert span == range(160)
    assert lines_of(message) == [
        "160 events: 150 critical, 10 warning",
        "CRITICAL web-01/disk: DISK 149 (150 updates)",
        "WARNING web-01/load: LOAD 9 (10 updates)",
    ]


def test_summary_prefers_the_notification_and_skips_blank_lines() -> None:
    events = [
        ev("a", notification="Disk is nearly full", output="DISK CRITICAL"),
        ev("b", notification="  \n", output="\n\n  first\r\nsecond"),
        ev("c", output=" \n "),
    ]
    [(message, _)] = render_batch(events, TEXT, "v2")
    assert lines_of(message)[1:] == [
        "CRITICAL web-01/a: Disk is nearly full",
        "CRITICAL web-01/b: first",
        "CRITICAL web-01/c",
    ]


def test_long_summary_and_names_are_cut_with_an_ellipsis() -> None:
    events = [ev("c" * 5000, output="x" * 100_000), ev("short", source="s\nource")]
    [(message, _)] = render_batch(events, TEXT, "v2")
    first, second = lines_of(message)[1:]
    assert first == f"CRITICAL web-01/{'c' * (NAME_CHARS - 1)}…: {'x' * (SUMMARY_CHARS - 1)}…"
    assert second.startswith("CRITICAL s ource/short")


def test_html_escapes_event_data_and_bolds_status_words() -> None:
    events = [
        ev("<script>", source='a&b"', output="<img src=x onerror=alert(1)> & 'q'"),
        ev("ok", 0, "resolve", output="fine"),
    ]
    [(message, _)] = render_batch(events, HTML, "v2")
    assert message.text == (
        "2 events: 1 critical, 1 resolved<br>"
        "<b>CRITICAL</b> a&amp;b&quot;/&lt;script&gt;: "
        "&lt;img src=x onerror=alert(1)&gt; &amp; &#x27;q&#x27;<br>"
        "<b>RESOLVED</b> web-01/ok: fine"
    )
    assert message.message_format == "html"


def test_html_cuts_by_rendered_length_and_never_inside_an_entity() -> None:
    events = [ev("a", output="&" * 1000), ev("b", output="<" * 1000)]
    [(message, _)] = render_batch(events, HTML, "v2")
    for line in lines_of(message)[1:]:
        summary = line.split(": ", 1)[1]
        assert len(summary) <= SUMMARY_CHARS
        assert summary.endswith("…")
        assert ENTITY.sub("", summary[:-1]) == ""


def test_text_format_is_plain() -> None:
    events = [ev("<b>", output="a & b"), ev("x")]
    [(message, _)] = render_batch(events, TEXT, "v2")
    assert lines_of(message)[1] == "CRITICAL web-01/<b>: a & b"
    assert message.message_format == "text"


# --- colour, notify, sender ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("present", "colour"),
    [
        ([(0, "resolve"), (1, "flapping"), (1, "create"), (3, "create"), (2, "create")], "red"),
        ([(0, "resolve"), (1, "flapping"), (1, "create"), (3, "create")], "gray"),
        ([(0, "resolve"), (1, "flapping"), (1, "create")], "yellow"),
        ([(0, "resolve"), (2, "flapping")], "purple"),
        ([(0, "resolve"), (0, "create")], "green"),
    ],
)
def test_colour_is_the_worst_status_present(present: list[tuple[int, str]], colour: str) -> None:
    events = [ev(f"c{i}", status, action) for i, (status, action) in enumerate(present)]
    [(message, _)] = render_batch(events, HTML, "v2")
    assert message.color == colour
    # Also when the worst event is folded under a later, milder state.
    folded = [replace(e, check="same") for e in reversed(events)]
    [(message, _)] = render_batch(folded, HTML, "v2")
    assert message.color == colour


def test_notify_if_any_event_would_notify() -> None:
    events = [ev("a"), ev("b")]
    [(quiet, _)] = render_batch(events, HTML, "v2")
    [(loud, _)] = render_batch(events, replace(HTML, notify=True), "v2")
    assert (quiet.notify, loud.notify) == (False, True)


@pytest.mark.parametrize("notify", [True, False])
def test_a_batch_notifies_as_its_events_would(notify: bool) -> None:
    """Events of a batch share their target, so the batch notifies as each of them would."""
    target = replace(HTML, notify=notify)
    events = [ev("a"), ev("loud"), ev("b")]
    [(message, _)] = render_batch(events, target, "v2")
    assert message.notify is notify
    assert {render(e, target, "v2").notify for e in events} == {notify}


@pytest.mark.parametrize(
    ("api_version", "username", "sender"),
    [("v2", "Sensu Monitoring", "Sensu Monitoring"), ("v1", "sensu@prod!", "sensuprod")],
)
def test_sender_and_format_follow_the_target(api_version: Any, username: str, sender: str) -> None:
    target = replace(TEXT, username=username)
    [(message, _)] = render_batch([ev("a"), ev("b")], target, api_version)
    assert message.sender == sender
    assert message.message_format == "text"


# --- packing -------------------------------------------------------------------------------


def test_storm_shape_100_events_over_10_checks_is_one_message() -> None:
    """A room's share of 2,000 events over 200 checks into 20 rooms."""
    events = [
        ev(f"check-{i % 10:02d}", status=(1, 2)[i % 2], source="app-server-17.example.com")
        for i in range(100)
    ]
    events = [replace(e, output=f"{e.check} failed: " + "detail " * 40) for e in events]
    for target in (HTML, TEXT):
        [(message, span)] = render_batch(events, target, "v2")
        assert span == range(100)
        assert len(message.text) <= MAX_MESSAGE_CHARS
        assert len(lines_of(message)) == 11
        assert lines_of(message)[1].endswith("(10 updates)")


def test_thousands_of_checks_with_huge_outputs_stay_under_the_limit() -> None:
    events = [
        ev(f"check-{i}", source="s" * 300, output="<&>" * 50_000, notification=None)
        for i in range(2000)
    ]
    batches = render_batch(events, HTML, "v2")
    assert_partition(batches, len(events))
    assert len(batches) > 1
    for message, span in batches:
        assert len(message.text) <= MAX_MESSAGE_CHARS
        if len(span) > 1:
            assert len(lines_of(message)) == len(span) + 1


def test_a_check_split_across_messages_shows_its_latest_state_in_each() -> None:
    noise = [ev(f"filler-{i}", output="y" * 300) for i in range(60)]
    events = [ev("disk", 1, output="first"), *noise, ev("disk", 2, output="last")]
    events[1:1] = [ev("disk", 2, output="second")]
    batches = render_batch(events, TEXT, "v2")
    assert len(batches) == 2
    (first, first_span), (second, second_span) = batches
    assert lines_of(first)[1] == "CRITICAL web-01/disk: second (2 updates)"
    assert second_span.stop == len(events)
    assert "CRITICAL web-01/disk: last" in lines_of(second)
    assert first_span.stop == second_span.start


def test_a_last_message_with_one_event_is_that_events_normal_message() -> None:
    events = [ev(f"c{i}", output="z" * 300) for i in range(41)]
    # Grow the batch until its final message holds exactly one event.
    while len(render_batch(events, TEXT, "v2")[-1][1]) != 1:
        events.append(ev(f"c{len(events)}", output="z" * 300))
    batches = render_batch(events, TEXT, "v2")
    assert len(batches) == 2
    last, span = batches[-1]
    assert last == render(events[span.start], TEXT, "v2")
    assert "z" * 300 in last.text


def test_2000_events_render_fast() -> None:
    events = [
        ev(f"check-{i % 200}", status=i % 4, source=f"host-{i % 37}", output=f"out {i} " * 30)
        for i in range(2000)
    ]
    started = time.perf_counter()
    batches = render_batch(events, HTML, "v2")
    elapsed = time.perf_counter() - started
    assert_partition(batches, 2000)
    # Generous: linear work takes milliseconds; re-rendering per added event takes seconds.
    assert elapsed < 1.0


# --- properties ----------------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="<>&\"' \n\rab", max_size=400),
    st.builds(lambda n, ch: ch * n, st.integers(0, 30_000), st.sampled_from("x&<\n ")),
)
events_strategy = st.builds(
    make_event,
    check=st.sampled_from(["disk", "load", "mem", "ntp", "<x>"]) | st.text(max_size=8),
    source=st.sampled_from(["web-01", "db&1"]) | st.text(max_size=600),
    status=st.integers(-1, 4),
    action=st.sampled_from(["create", "resolve", "flapping"]),
    output=texts,
    notification=st.none() | texts,
    flavor=st.sampled_from(["classic", "go"]),
    namespace=st.sampled_from([None, "default", "prod", "a/b"]),
)


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(events_strategy, max_size=120),
    fmt=st.sampled_from(["html", "text"]),
    notify=st.booleans(),
)
def test_batches_partition_the_events_and_respect_the_limit(
    events: list[Event], fmt: Any, notify: bool
) -> None:
    target = replace(HTML, message_format=fmt, notify=notify)
    batches = render_batch(events, target, "v2")
    assert_partition(batches, len(events))
    for index, (message, span) in enumerate(batches):
        assert 0 < len(message.text) <= MAX_MESSAGE_CHARS
        assert message.notify is notify
        assert message.message_format == fmt
        covered = events[span.start : span.stop]
        if len(covered) == 1:
            assert message == render(covered[0], target, "v2")
            continue
        header = HEADER.match(lines_of(message)[0])
        assert header is not None
        assert int(header.group(1)) == len(covered)
        counts = [int(part.split(" ")[0]) for part in header.group(2).split(", ")]
        assert sum(counts) == len(covered)
        checks = {e.incident_key for e in covered}
        assert len(lines_of(message)) == 1 + len(checks)
        if fmt == "html":
            leftover = OUR_TAG.sub("", ENTITY.sub("", message.text))
            assert not set("<>&") & set(leftover)
        if index + 1 < len(batches):
            # Greedy: one more event would not have fitted.
            grown = events[span.start : span.stop + 1]
            assert len(render_batch(grown, target, "v2")) == 2


def test_the_first_message_all_at_once_is_the_first_of_the_full_batch() -> None:
    events = [ev(f"check-{i}", output="x" * 900) for i in range(60)]
    full = render_batch(events, HTML, "v2")
    assert len(full) > 1
    first = FirstMessage(HTML, "v2")
    first.add(events)
    assert [(first.message(), first.span)] == full[:1]


@settings(max_examples=100, deadline=None)
@given(
    events=st.lists(events_strategy, min_size=1, max_size=60),
    cuts=st.lists(st.integers(0, 60), max_size=4),
    fmt=st.sampled_from(["html", "text"]),
)
def test_first_message_handed_events_in_chunks_is_the_first_of_the_batch(
    events: list[Event], cuts: list[int], fmt: Any
) -> None:
    target = replace(HTML, message_format=fmt)
    expected, span = render_batch(events, target, "v2")[0]
    first = FirstMessage(target, "v2")
    bounds = [0, *sorted(min(cut, len(events)) for cut in cuts), len(events)]
    taken = [first.add(events[a:b]) for a, b in itertools.pairwise(bounds)]
    assert (first.message(), first.span) == (expected, span)
    # Full exactly when an event did not fit, and then it takes no more.
    assert first.full is (span.stop < len(events))
    assert taken[-1] is not first.full
    if first.full:
        assert not first.add(events)
        assert first.span == span


def test_first_message_packs_each_event_once_and_needs_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[Event] = []
    real = coalesce._item

    def counted(event: Event, *args: Any) -> Any:
        made.append(event)
        return real(event, *args)

    monkeypatch.setattr(coalesce, "_item", counted)
    events = [ev(f"check-{i}", output="x" * 900) for i in range(80)]
    first = FirstMessage(HTML, "v2")
    with pytest.raises(ValueError, match="no events"):
        first.message()
    assert first.add(events[:4])
    assert first.add(events[4:8])
    assert not first.add(events[8:])
    assert not first.add(events)
    # The lines so far, and the one that did not fit: each made once.
    assert made == events[: first.span.stop + 1]
    assert first.message() == render_batch(events, HTML, "v2")[0][0]
    # A lone event is its normal message: no line is made for it.
    made.clear()
    lone = FirstMessage(HTML, "v2")
    assert lone.add(events[:1])
    assert (lone.message(), lone.span, lone.full) == (
        render(events[0], HTML, "v2"),
        range(1),
        False,
    )
    assert made == []


def test_first_message_room_is_what_lines_as_long_as_those_so_far_take() -> None:
    events = [ev(f"check-{i:03}", output="x" * 900) for i in range(200)]
    first = FirstMessage(HTML, "v2")
    assert first.room() == 1
    first.add(events[:10])
    guess = 10 + first.room()
    assert not first.add(events[10:])
    # One past the last that fits: enough to find the message full, no more.
    assert guess == first.span.stop + 1
    # Updates of one check fold into its line: the room is far larger.
    folded = FirstMessage(HTML, "v2")
    folded.add([ev("check-disk", output="x" * 900)] * 10)
    assert folded.room() > 5 * guess


# --- mentions --------------------------------------------------------------------------------

ZW = "\u200b"
LIVE_MENTION = re.compile(r"@(?=[\w.\-])")


def test_a_digest_for_a_target_with_mentions_is_text_with_them_first() -> None:
    target = replace(HTML, mention="@all")
    events = [ev("disk"), ev("load@all"), ev("disk", status=0, output="paging @here")]
    [(message, span)] = render_batch(events, target, "v2")
    assert span == range(3)
    assert message.message_format == "text"
    assert lines_of(message) == [
        "@all 3 events: 2 critical, 1 ok",
        f"OK web-01/disk: paging @{ZW}here (2 updates)",
        f"CRITICAL web-01/load@{ZW}all: DISK CRITICAL - / at 97%",
    ]


def test_a_text_digest_neutralises_without_mentions_and_html_is_left_alone() -> None:
    events = [ev("a", output="@all now"), ev("b")]
    [(text, _)] = render_batch(events, TEXT, "v2")
    assert lines_of(text)[1] == f"CRITICAL web-01/a: @{ZW}all now"
    [(html, _)] = render_batch(events, HTML, "v2")
    assert lines_of(html)[1] == "<b>CRITICAL</b> web-01/a: @all now"


def test_digests_with_mentions_and_at_signs_everywhere_stay_under_the_limit() -> None:
    target = replace(TEXT, mention=" ".join(f"@person{i}" for i in range(20)))
    events = [
        ev(f"@c{i}" * 40, source="@s" * 60, output="@a" * 300, status=i % 4) for i in range(2000)
    ]
    batches = render_batch(events, target, "v2")
    assert_partition(batches, len(events))
    assert len(batches) > 1
    for message, _ in batches:
        assert len(message.text) <= MAX_MESSAGE_CHARS
        assert message.text.startswith(target.mention + " ")
        assert LIVE_MENTION.search(message.text.removeprefix(target.mention + " ")) is None
