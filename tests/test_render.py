"""render: Event -> HipChat message text, colour, notify and sender."""

from __future__ import annotations

import html
import re
from dataclasses import replace
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hipchatd.delivery.render import (
    MAX_MESSAGE_CHARS,
    Message,
    clip,
    color,
    one_line,
    render,
    sender_name,
    status_word,
)
from hipchatd.sensu.events import Event
from tests.factories import make_target, sample_event

#: what a correct html message may contain: our tags, escaped text, valid entities.
ENTITY = re.compile(r"&(?:amp|lt|gt|quot|#x27);")
OUR_TAG = re.compile(r'<b>|</b>|<br>|<a href="[^"<>]*">|</a>')
MARKER = re.compile(r"… \[(output|notification) truncated: (\d+) more characters\]")


def make_go_event(**changes: Any) -> Event:
    return sample_event(**{"flavor": "go", "namespace": "default", **changes})


TEXT = make_target(message_format="text")


def html_of(event: Event) -> str:
    return render(event, make_target(), "v2").text


def text_of(event: Event) -> str:
    return render(event, TEXT, "v2").text


class TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.data: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_endtag(self, tag: str) -> None:
        self.tags.append(("/" + tag, []))

    def handle_data(self, data: str) -> None:
        self.data.append(data)


def parse_html(text: str) -> TagCollector:
    parser = TagCollector()
    parser.feed(text)
    parser.close()
    return parser


def assert_well_formed_html(text: str) -> None:
    """Only our tags, only valid entities: no cut inside ``&amp;`` or ``<br>``."""
    leftover = OUR_TAG.sub("", ENTITY.sub("", text))
    assert "&" not in leftover
    assert "<" not in leftover
    assert ">" not in leftover
    for tag, attrs in parse_html(text).tags:
        assert tag in {"b", "/b", "br", "a", "/a"}
        assert all(name == "href" for name, _ in attrs)


# --- status word, colour, severity -------------------------------------------------


@pytest.mark.parametrize(
    ("action", "status", "word", "colour"),
    [
        ("create", 0, "OK", "green"),
        ("create", 1, "WARNING", "yellow"),
        ("create", 2, "CRITICAL", "red"),
        ("create", 3, "UNKNOWN", "gray"),
        ("create", 127, "UNKNOWN", "gray"),
        ("create", -1, "UNKNOWN", "gray"),
        ("resolve", 0, "RESOLVED", "green"),
        ("flapping", 0, "FLAPPING", "purple"),
        ("flapping", 1, "FLAPPING", "purple"),
        ("flapping", 2, "FLAPPING", "purple"),
    ],
)
def test_status_word_and_colour(action: str, status: int, word: str, colour: str) -> None:
    event = sample_event(action=action, status=status)
    assert status_word(event) == word
    assert color(event) == colour
    message = render(event, make_target(), "v2")
    assert message.color == colour
    assert message.text.startswith(f"<b>{word}</b> sensu.test.local/testing")
    assert text_of(event).startswith(f"{word} sensu.test.local/testing")


# --- layout ------------------------------------------------------------------------


def test_classic_critical_layout() -> None:
    event = sample_event()
    assert html_of(event) == "<b>CRITICAL</b> sensu.test.local/testing: THIS IS AN ERROR"
    assert text_of(event) == "CRITICAL sensu.test.local/testing: THIS IS AN ERROR"


def test_full_layout_html_and_text() -> None:
    event = make_go_event(
        source="web-01",
        check="check-disk",
        status=1,
        output="DISK WARNING - / at 91%\n/var at 80%\n",
        occurrences=3,
        playbook="https://wiki.example.com/disk",
        namespace="prod",
    )
    assert html_of(event) == (
        "<b>WARNING</b> web-01/check-disk: DISK WARNING - / at 91%<br>/var at 80%<br>"
        'occurrences: 3 · <a href="https://wiki.example.com/disk">Playbook</a> · namespace: prod'
    )
    assert text_of(event) == (
        "WARNING web-01/check-disk: DISK WARNING - / at 91%\n/var at 80%\n"
        "occurrences: 3 · Playbook: https://wiki.example.com/disk · namespace: prod"
    )


def test_message_carries_target_settings_and_sender() -> None:
    target = make_target(notify=False, username="Sensu Enterprise!", message_format="text")
    message = render(sample_event(), target, "v1")
    assert message == Message(
        text="CRITICAL sensu.test.local/testing: THIS IS AN ERROR",
        color="red",
        notify=False,
        message_format="text",
        sender="Sensu Enterpris",
    )
    assert render(sample_event(), make_target(notify=True), "v2").notify is True


def test_notification_replaces_output() -> None:
    event = sample_event(notification="Disk is nearly full", output="DISK CRITICAL")
    assert html_of(event) == "<b>CRITICAL</b> sensu.test.local/testing: Disk is nearly full"
    assert "DISK CRITICAL" not in text_of(event)


@pytest.mark.parametrize("notification", [None, "", "  \n"])
def test_empty_notification_falls_back_to_output(notification: str | None) -> None:
    event = sample_event(notification=notification, output="DISK CRITICAL")
    assert text_of(event) == "CRITICAL sensu.test.local/testing: DISK CRITICAL"


def test_output_trailing_whitespace_stripped() -> None:
    event = sample_event(output="THIS IS AN ERROR \n\n\t ")
    assert html_of(event) == "<b>CRITICAL</b> sensu.test.local/testing: THIS IS AN ERROR"


def test_empty_output_has_no_colon() -> None:
    event = sample_event(output="", occurrences=2)
    assert html_of(event) == "<b>CRITICAL</b> sensu.test.local/testing<br>occurrences: 2"
    assert text_of(sample_event(output=" \n")) == "CRITICAL sensu.test.local/testing"


@pytest.mark.parametrize(("occurrences", "shown"), [(0, False), (1, False), (2, True), (423, True)])
def test_occurrences_only_above_one(occurrences: int, shown: bool) -> None:
    text = text_of(sample_event(occurrences=occurrences))
    assert (f"\noccurrences: {occurrences}" in text) is shown
    assert ("occurrences" in text) is shown


@pytest.mark.parametrize(
    "url", ["https://wiki.example.com/x", "http://wiki/x?a=1", "HTTPS://Wiki.Example.com/X"]
)
def test_playbook_url_is_a_link(url: str) -> None:
    event = sample_event(playbook=url)
    assert html_of(event).endswith(f'<br><a href="{url}">Playbook</a>')
    assert text_of(event).endswith(f"\nPlaybook: {url}")


@pytest.mark.parametrize(
    "playbook",
    ["See the runbook in the ops binder", "javascript:alert(1)", "ftp://files/x", "https://", "/x"],
)
def test_playbook_not_a_web_url_is_text(playbook: str) -> None:
    event = sample_event(playbook=playbook)
    text = html_of(event)
    assert "<a" not in text
    assert text.endswith("<br>Playbook: " + html.escape(playbook))
    assert text_of(event).endswith("\nPlaybook: " + playbook)


@pytest.mark.parametrize("playbook", [None, "", "   "])
def test_no_playbook(playbook: str | None) -> None:
    assert "Playbook" not in html_of(sample_event(playbook=playbook))


def test_playbook_url_attribute_escaped() -> None:
    url = "https://wiki/x?a=1&b=\"2\"&c='3'><script>alert(1)</script>"
    text = html_of(sample_event(playbook=url))
    assert text.endswith(
        '<a href="https://wiki/x?a=1&amp;b=&quot;2&quot;&amp;c=&#x27;3&#x27;&gt;'
        '&lt;script&gt;alert(1)&lt;/script&gt;">Playbook</a>'
    )
    assert_well_formed_html(text)
    anchors = [attrs for tag, attrs in parse_html(text).tags if tag == "a"]
    assert anchors == [[("href", url)]]


@pytest.mark.parametrize(
    ("flavor", "namespace", "shown"),
    [
        ("go", "prod", True),
        ("go", "default", False),
        ("go", None, False),
        ("go", "", False),
        ("classic", "prod", False),
    ],
)
def test_namespace_only_for_go_non_default(flavor: str, namespace: str | None, shown: bool) -> None:
    text = text_of(sample_event(flavor=flavor, namespace=namespace))
    assert ("namespace: prod" in text) is shown
    assert ("namespace" in text) is shown


# --- escaping and newlines ---------------------------------------------------------

NASTY = "<script>alert('x' & \"y\")</script>"
NASTY_ESCAPED = "&lt;script&gt;alert(&#x27;x&#x27; &amp; &quot;y&quot;)&lt;/script&gt;"


@pytest.mark.parametrize("field", ["source", "check", "output", "notification", "playbook"])
def test_html_escapes_every_event_field(field: str) -> None:
    text = html_of(sample_event(**{field: NASTY}))
    assert NASTY_ESCAPED in text
    assert "<script>" not in text
    assert_well_formed_html(text)
    assert "".join(parse_html(text).data).count(NASTY) == 1


def test_html_escapes_namespace() -> None:
    text = html_of(make_go_event(namespace=NASTY))
    assert text.endswith("<br>namespace: " + NASTY_ESCAPED)
    assert_well_formed_html(text)


def test_text_mode_does_not_escape() -> None:
    event = make_go_event(
        source=NASTY, check="a&b", output=NASTY, playbook="<b>see</b>", namespace="<ns>"
    )
    text = text_of(event)
    assert text == (f"CRITICAL {NASTY}/a&b: {NASTY}\nPlaybook: <b>see</b> · namespace: <ns>")
    assert "&amp;" not in text


def test_output_newlines_become_br_after_escaping() -> None:
    event = sample_event(output="line <1>\r\nline 2\rline 3\n\nline 5")
    assert html_of(event) == (
        "<b>CRITICAL</b> sensu.test.local/testing: line &lt;1&gt;<br>line 2<br>line 3<br><br>line 5"
    )
    assert text_of(event).endswith(": line <1>\nline 2\nline 3\n\nline 5")


def test_header_fields_stay_on_the_first_line() -> None:
    event = sample_event(source="web\n01", check="disk\r\ncheck")
    assert html_of(event) == "<b>CRITICAL</b> web 01/disk check: THIS IS AN ERROR"
    assert text_of(event).splitlines()[0] == "CRITICAL web 01/disk check: THIS IS AN ERROR"


# --- the 10,000-character limit ----------------------------------------------------


def rendered(event: Event, as_html: bool) -> str:
    return html_of(event) if as_html else text_of(event)


def room_for_output(event: Event, as_html: bool) -> int:
    """How many plain characters of output fit exactly at the limit."""
    return MAX_MESSAGE_CHARS - len(rendered(replace(event, output="x"), as_html)) + 1


def check_marker(text: str, body: str, *, as_html: bool = True, kind: str = "output") -> None:
    """The marker is present and the kept part plus the dropped count is the whole body."""
    match = MARKER.search(text)
    assert match is not None
    assert match.group(1) == kind
    prefix = text[: match.start()].split(": ", 1)[1]
    kept = html.unescape(prefix.replace("<br>", "\n")) if as_html else prefix
    assert body.startswith(kept)
    assert len(kept) + int(match.group(2)) == len(body)


@pytest.mark.parametrize("as_html", [True, False])
def test_exactly_at_limit_is_not_cut(as_html: bool) -> None:
    event = sample_event(occurrences=5, playbook="https://wiki/x")
    body = "y" * room_for_output(event, as_html)
    text = rendered(replace(event, output=body), as_html)
    assert len(text) == MAX_MESSAGE_CHARS
    assert "truncated" not in text
    assert body in text


@pytest.mark.parametrize("as_html", [True, False])
def test_one_over_limit_is_cut_with_marker(as_html: bool) -> None:
    event = sample_event(occurrences=5, playbook="https://wiki/x")
    body = "y" * (room_for_output(event, as_html) + 1)
    text = rendered(replace(event, output=body), as_html)
    assert len(text) <= MAX_MESSAGE_CHARS
    check_marker(text, body, as_html=as_html)
    # the cut takes output only: header and footer are intact
    assert text.startswith("<b>CRITICAL</b> sensu.test.local/testing: y" if as_html else "CRIT")
    footer = '<a href="https://wiki/x">Playbook</a>' if as_html else "Playbook: https://wiki/x"
    assert text.endswith("occurrences: 5 · " + footer)


def test_one_megabyte_output() -> None:
    body = ("0123456789abcdef<&>\n" * 52_429)[: 1024 * 1024]
    event = make_go_event(output=body, occurrences=7, namespace="prod")
    for as_html in (True, False):
        text = rendered(event, as_html)
        assert len(text) <= MAX_MESSAGE_CHARS
        assert len(text) > MAX_MESSAGE_CHARS - 100  # the room is used, not wasted
        check_marker(text, body, as_html=as_html)
        assert text.endswith("occurrences: 7 · namespace: prod")
        if as_html:
            assert_well_formed_html(text)


@pytest.mark.parametrize("char", ["&", "'", '"', "<", "\n"])
def test_output_that_expands_on_escaping(char: str) -> None:
    # 3,000 ampersands fit before escaping and are 15,000 characters after it
    body = "a" + char * 3_000 + "z"
    text = html_of(sample_event(output=body))
    assert len(text) <= MAX_MESSAGE_CHARS
    assert_well_formed_html(text)
    check_marker(text, body)


@pytest.mark.parametrize("offset", range(6))
def test_cut_never_splits_an_entity(offset: int) -> None:
    # shift the cut point over every position inside "&amp;" and "<br>"
    body = "b" * offset + "&\n" * 5_000
    text = html_of(sample_event(output=body))
    assert len(text) <= MAX_MESSAGE_CHARS
    assert_well_formed_html(text)
    before_marker = text[: MARKER.search(text).start()]  # type: ignore[union-attr]
    assert re.search(r"(&amp;|<br>)$", before_marker)


def test_notification_cut_with_its_own_marker() -> None:
    body = "n" * 20_000
    text = html_of(sample_event(notification=body))
    assert len(text) <= MAX_MESSAGE_CHARS
    check_marker(text, body, kind="notification")


@pytest.mark.parametrize("as_html", [True, False])
def test_huge_header_fields_are_cut_too(as_html: bool) -> None:
    event = make_go_event(
        source="s" * 50_000,
        check="&" * 50_000,
        namespace="'" * 50_000,
        playbook="https://wiki/" + "p" * 50_000,
        notification="<" * 50_000,
        occurrences=10**40,
    )
    text = rendered(event, as_html)
    assert len(text) <= MAX_MESSAGE_CHARS
    assert text.startswith("<b>CRITICAL</b> sss" if as_html else "CRITICAL sss")
    assert "… [notification truncated: " in text
    assert "namespace: " in text
    assert "Playbook: https://wiki/ppp" in text  # too long for a link: shown as clipped text
    if as_html:
        assert_well_formed_html(text)
        assert "sss…/&amp;&amp;" in text
        assert "&amp;&amp;…: &lt;&lt;" in text
        assert text.count("&lt;") > 1_000  # the body still gets most of the room


def test_huge_check_name_alone_leaves_room_for_output() -> None:
    event = sample_event(check="c" * 20_000, output="the actual error")
    text = html_of(event)
    assert len(text) <= MAX_MESSAGE_CHARS
    assert text.endswith("c…: the actual error")


# --- sender ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "expected"),
    [
        ("sensu", "sensu"),
        ("Sensu Enterprise", "Sensu Enterpris"),
        ("Zürich-Alerts", "Zrich-Alerts"),
        ("ops.bot@example!", "opsbotexample"),
        ("  under_score-ok  ", "under_score-ok"),
        ("monitoring bot alerts", "monitoring bot"),
        ("a" * 40, "a" * 15),
        ("", "sensu"),
        ("   ", "sensu"),
        ("!!!", "sensu"),
        ("日本語", "sensu"),
    ],
)
def test_sender_name_v1(username: str, expected: str) -> None:
    name = sender_name(username, "v1")
    assert name == expected
    assert 1 <= len(name) <= 15
    assert re.fullmatch(r"[A-Za-z0-9_-](?:[A-Za-z0-9 _-]*[A-Za-z0-9_-])?", name)


@pytest.mark.parametrize(
    ("username", "expected"),
    [
        ("sensu", "sensu"),
        ("Sensu Enterprise (prod)!", "Sensu Enterprise (prod)!"),
        ("é" * 80, "é" * 64),
        ("x" * 65, "x" * 64),
        ("", ""),
    ],
)
def test_sender_name_v2_cuts_characters_not_bytes(username: str, expected: str) -> None:
    assert sender_name(username, "v2") == expected


# --- properties --------------------------------------------------------------------

any_text = st.text(st.characters(codec="utf-8"), max_size=40)
repeats = st.integers(min_value=1, max_value=2_000)


@settings(max_examples=300, deadline=None)
@given(
    output=any_text,
    times=repeats,
    source=any_text,
    check=any_text,
    notification=st.none() | any_text,
    playbook=st.none() | any_text | any_text.map(lambda s: "https://h/" + s),
    namespace=any_text,
    occurrences=st.integers(min_value=0, max_value=10**6),
    name_times=st.integers(min_value=1, max_value=400),
)
def test_property_limit_and_only_our_tags(
    output: str,
    times: int,
    source: str,
    check: str,
    notification: str | None,
    playbook: str | None,
    namespace: str,
    occurrences: int,
    name_times: int,
) -> None:
    event = make_go_event(
        output=output * times,
        source=source * name_times,
        check=check,
        notification=notification,
        playbook=playbook,
        namespace=namespace,
        occurrences=occurrences,
    )
    message = render(event, make_target(), "v2")
    assert 1 <= len(message.text) <= MAX_MESSAGE_CHARS
    assert_well_formed_html(message.text)
    assert len(text_of(event)) <= MAX_MESSAGE_CHARS


@settings(max_examples=200, deadline=None)
@given(output=any_text.filter(lambda s: s.strip()))
def test_property_short_output_round_trips(output: str) -> None:
    text = html_of(sample_event(output=output))
    body = text.split(": ", 1)[1]
    expected = output.replace("\r\n", "\n").replace("\r", "\n").rstrip().lstrip("\n")
    assert html.unescape(body.replace("<br>", "\n")) == expected


@given(username=st.text(max_size=60))
def test_property_sender_name(username: str) -> None:
    v1 = sender_name(username, "v1")
    assert 1 <= len(v1) <= 15
    assert re.fullmatch(r"[A-Za-z0-9 _-]+", v1)
    assert sender_name(username, "v2") == username[:64]


# --- the text helpers render and coalesce share ---------------------------------------


def test_one_line_turns_every_line_break_into_a_space() -> None:
    assert one_line("a\r\nb\rc\nd") == "a b c d"


@pytest.mark.parametrize(
    ("value", "cap", "as_html", "clipped"),
    [
        ("abc", 3, False, "abc"),
        ("abcd", 3, False, "ab…"),
        ("a<b", 6, True, "a&lt;b"),
        ("a<b", 5, True, "a…"),  # never inside "&lt;"
        ("x" * 1_000_000, 4, True, "xxx…"),
    ],
)
def test_clip_renders_and_cuts_between_source_characters(
    value: str, cap: int, as_html: bool, clipped: str
) -> None:
    assert clip(value, cap, as_html) == clipped


# --- text neutralises mentions; html is untouched ------------------------------------------


@pytest.mark.parametrize("cap", [1, 2, 3, 4, 9, 10, 50])
def test_clip_neutralises_in_text_and_counts_the_zero_width_spaces(cap: int) -> None:
    clipped = clip("@a" * 20, cap, False)
    assert len(clipped) <= cap
    assert re.search(r"@(?=[\w.\-])", clipped) is None
    assert clip("@all", 10, False) == "@\u200ball"
    assert clip("@all", 10, True) == "@all"


def test_a_message_has_no_card_unless_given_one() -> None:
    message = Message(text="x", color="red", notify=False, message_format="text", sender="s")
    assert message.card is None
    assert render(sample_event(), make_target(), "v2").card is None
