"""Storm messages: a target's pending events -> the fewest messages that show them all. Pure.

While a room cannot send (its last message is in flight, or the rate budget
says wait), its events pile up; :func:`render_batch` turns them into
messages that go out in acceptance order. One event is the normal
:func:`hipchatd.render.render` message. Several become a summary (html;
text is the same without tags, lines joined by newlines)::

    12 events: 9 critical, 2 warning, 1 resolved<br>
    <b>CRITICAL</b> web-01/check-disk: DISK CRITICAL - / at 97% (4 updates)<br>
    <b>RESOLVED</b> prod/db-02/check-load: LOAD OK<br>
    ...

* The header counts events (not checks) by status word, worst first:
  critical, unknown, warning, flapping, resolved, ok; zeros are left out.
* One line per check (the incident: namespace, source, check), in order of
  first appearance, showing its latest state: status word, then the first
  line of the notification (else the output) cut to ``SUMMARY_CHARS``.
  "(N updates)" says N events of that check were folded into the line.
* A Sensu Go namespace other than "default" prefixes the name,
  ``namespace/source/check`` (Sensu Go names cannot contain "/", so this
  reads unambiguously); each of the three is cut to ``NAME_CHARS``.
* Colour: the worst status among the message's events, red (critical) >
  gray (unknown) > yellow (warning) > purple (flapping) > green.
  ``notify`` if any event's own message would notify.

Each message covers a contiguous slice of the events, so packing is greedy
in acceptance order: a new message starts when the next event would push
the current one past ``MAX_MESSAGE_CHARS``. A check whose events span two
messages appears in both, with its latest state within each. A message that
ends up covering a single event is that event's normal message. Event text
is HTML-escaped in html mode, and lengths are those of the final text.
Work is linear in the number of events: lines are sized arithmetically as
events are added and built once per message.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

from hipchatd.config import ApiVersion
from hipchatd.events import Event
from hipchatd.render import MAX_MESSAGE_CHARS, Message, color, render, sender_name, status_word
from hipchatd.routing import Target

__all__ = ["NAME_CHARS", "STATUS_ORDER", "SUMMARY_CHARS", "render_batch"]

#: Rendered characters of a line's summary: a chat line stays a line, and a
#: message holds 40 or more checks even when every summary is this long.
SUMMARY_CHARS = 200
#: Rendered characters of each name part (namespace, source, check) in a line.
NAME_CHARS = 100
#: Header order of the status words, worst first (the colour precedence).
STATUS_ORDER = ("CRITICAL", "UNKNOWN", "WARNING", "FLAPPING", "RESOLVED", "OK")

#: Colour precedence; a colour render.color() might add later ranks last.
_COLOR_RANK = {"red": 0, "gray": 1, "yellow": 2, "purple": 3, "green": 4}
_ELLIPSIS = "…"
_HTML_BREAK = "<br>"
_WORD_INDEX = {word: index for index, word in enumerate(STATUS_ORDER)}
#: Finds where text starts without copying a megabyte of output to strip it.
_NON_SPACE = re.compile(r"\S")


@dataclass(frozen=True, slots=True)
class _Item:
    """What a line needs of one event, rendered once."""

    key: tuple[str, str, str]
    word: str
    #: ``<b>WORD</b>`` or ``WORD``
    head: str
    #: ``[namespace/]source/check``, escaped and cut
    name: str
    #: first line of the notification or output, escaped and cut; may be ""
    summary: str
    color: str


class _Line:
    __slots__ = ("count", "item", "length")

    def __init__(self, item: _Item, length: int) -> None:
        self.item = item
        self.count = 1
        self.length = length


class _Pack:
    """The message being filled: its lines, its counts and its exact length."""

    def __init__(self, start: int, separator: int) -> None:
        self.start = start
        self.stop = start
        self.lines: dict[tuple[str, str, str], _Line] = {}
        self.counts = [0] * len(STATUS_ORDER)
        self.lines_length = 0
        self.separator = separator

    def length_with(self, item: _Item) -> int:
        """The message's length if ``item`` were added."""
        counts = list(self.counts)
        counts[_WORD_INDEX[item.word]] += 1
        total = len(_header(self.stop - self.start + 1, counts))
        line = self.lines.get(item.key)
        if line is None:
            return total + self.lines_length + self.separator + _line_length(item, 1)
        delta = _line_length(item, line.count + 1) - line.length
        return total + self.lines_length + delta

    def add(self, item: _Item) -> None:
        self.counts[_WORD_INDEX[item.word]] += 1
        self.stop += 1
        line = self.lines.get(item.key)
        if line is None:
            length = _line_length(item, 1)
            self.lines[item.key] = _Line(item, length)
            self.lines_length += self.separator + length
            return
        line.item = item
        line.count += 1
        length = _line_length(item, line.count)
        self.lines_length += length - line.length
        line.length = length


def render_batch(
    events: Sequence[Event], target: Target, api_version: ApiVersion
) -> list[tuple[Message, range]]:
    """The messages for ``events`` (one target's, in acceptance order), each with its slice.

    The ranges are contiguous, in order, and cover every index exactly once;
    every message is at most MAX_MESSAGE_CHARS characters. One event gives
    exactly ``render(event, target, api_version)``; no events, no messages.
    """
    if len(events) == 1:
        return [(render(events[0], target, api_version), range(1))]
    as_html = target.message_format == "html"
    separator = len(_HTML_BREAK) if as_html else 1
    packs: list[_Pack] = []
    pack = _Pack(0, separator)
    items: list[_Item] = []
    for index, event in enumerate(events):
        item = _item(event, as_html)
        items.append(item)
        if pack.stop > pack.start and pack.length_with(item) > MAX_MESSAGE_CHARS:
            packs.append(pack)
            pack = _Pack(index, separator)
        pack.add(item)
    if pack.stop > pack.start:
        packs.append(pack)
    sender = sender_name(target.username, api_version)
    return [(_message(p, events, items, target, api_version, sender), _span(p)) for p in packs]


def _span(pack: _Pack) -> range:
    return range(pack.start, pack.stop)


def _message(
    pack: _Pack,
    events: Sequence[Event],
    items: Sequence[_Item],
    target: Target,
    api_version: ApiVersion,
    sender: str,
) -> Message:
    covered = events[pack.start : pack.stop]
    if len(covered) == 1:
        return render(covered[0], target, api_version)
    as_html = target.message_format == "html"
    lines = [_header(len(covered), pack.counts)]
    lines.extend(_line_text(line.item, line.count) for line in pack.lines.values())
    worst = min(
        (items[i].color for i in range(pack.start, pack.stop)),
        key=lambda c: _COLOR_RANK.get(c, len(_COLOR_RANK)),
    )
    return Message(
        text=(_HTML_BREAK if as_html else "\n").join(lines),
        color=worst,
        # Per event, so an event-level notify override would count.
        notify=any(render(event, target, api_version).notify for event in covered),
        message_format=target.message_format,
        sender=sender,
    )


def _header(total: int, counts: Sequence[int]) -> str:
    parts = [f"{n} {word.lower()}" for word, n in zip(STATUS_ORDER, counts, strict=True) if n]
    return f"{total} events: {', '.join(parts)}"


def _updates(count: int) -> str:
    return f" ({count} updates)" if count > 1 else ""


def _line_length(item: _Item, count: int) -> int:
    length = len(item.head) + 1 + len(item.name) + len(_updates(count))
    if item.summary:
        length += 2 + len(item.summary)
    return length


def _line_text(item: _Item, count: int) -> str:
    summary = f": {item.summary}" if item.summary else ""
    return f"{item.head} {item.name}{summary}{_updates(count)}"


def _item(event: Event, as_html: bool) -> _Item:
    word = status_word(event)
    parts = [event.source, event.check]
    if event.flavor == "go" and event.namespace and event.namespace != "default":
        parts.insert(0, event.namespace)
    name = "/".join(_clip(_one_line(part[: NAME_CHARS + 1]), NAME_CHARS, as_html) for part in parts)
    notification = event.notification
    body = notification if notification and _NON_SPACE.search(notification) else event.output
    return _Item(
        key=event.incident_key,
        word=word,
        head=f"<b>{word}</b>" if as_html else word,
        name=name,
        summary=_clip(_first_line(body), SUMMARY_CHARS, as_html),
        color=color(event),
    )


def _first_line(body: str) -> str:
    """The first non-blank line of ``body``, reading at most SUMMARY_CHARS + 1 characters of it."""
    start = _NON_SPACE.search(body)
    if start is None:
        return ""
    head = body[start.start() : start.start() + SUMMARY_CHARS + 1]
    for end, ch in enumerate(head):
        if ch in "\r\n":
            return head[:end].rstrip()
    return head


def _one_line(value: str) -> str:
    return value.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def _escape(value: str, as_html: bool) -> str:
    return html.escape(value, quote=True) if as_html else value


def _clip(value: str, cap: int, as_html: bool) -> str:
    """``value`` rendered, cut with an ellipsis to at most ``cap`` characters.

    Cuts fall between source characters, never inside an HTML entity. Callers
    pass at most ``cap + 1`` characters: more could not fit anyway.
    """
    rendered = _escape(value, as_html)
    if len(rendered) <= cap:
        return rendered
    room = cap - len(_ELLIPSIS)
    used = 0
    for end, ch in enumerate(value):
        used += len(_escape(ch, as_html))
        if used > room:
            return _escape(value[:end], as_html) + _ELLIPSIS
    return rendered  # unreachable: the whole value renders longer than room
