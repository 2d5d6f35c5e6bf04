"""Storm messages: a target's pending events -> the fewest messages that show them all. Pure.

While a room cannot send (its last message is in flight, or the rate budget
says wait), its events pile up; :func:`render_batch` turns them into
messages that go out in acceptance order. One event is the normal
:func:`hipchatd.delivery.render.render` message. Several become a summary (html;
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
* Mentions: a lane's events share one target, so a summary whose target
  carries a mention is sent as text with the mentions first, and its event
  text is neutralised like a single event's (:mod:`hipchatd.delivery.mentions`).
  A summary carries no card and no dashboard link: a card shows one object,
  and a link per line would make the lines long.

With ``digest_template`` configured, a several-event message is that
template's output instead (:mod:`hipchatd.delivery.templated`), for the same
slice and colour.

Each message covers a contiguous slice of the events, so packing is greedy
in acceptance order: a new message starts when the next event would push
the current one past ``MAX_MESSAGE_CHARS``. A check whose events span two
messages appears in both, with its latest state within each. A message that
ends up covering a single event is that event's normal message. Event text
is HTML-escaped in html mode, and lengths are those of the final text.
Work is linear in the number of events: the header and the lines are sized
arithmetically as events are added and built once per message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from hipchatd.config import ApiVersion
from hipchatd.delivery.mentions import finish_text, mention_prefix, sent_format
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
from hipchatd.delivery.routing import Target
from hipchatd.delivery.templated import Shaping, digest_text
from hipchatd.sensu.events import Event

__all__ = ["NAME_CHARS", "STATUS_ORDER", "SUMMARY_CHARS", "FirstMessage", "render_batch"]

#: Rendered characters of a line's summary: a chat line stays a line, and a
#: message holds 40 or more checks even when every summary is this long.
SUMMARY_CHARS = 200
#: Rendered characters of each name part (namespace, source, check) in a line.
NAME_CHARS = 100
#: Header order of the status words, worst first (the colour precedence).
STATUS_ORDER = ("CRITICAL", "UNKNOWN", "WARNING", "FLAPPING", "RESOLVED", "OK")

#: Colour precedence; a colour render.color() might add later ranks last.
_COLOR_RANK = {"red": 0, "gray": 1, "yellow": 2, "purple": 3, "green": 4}
_HTML_BREAK = "<br>"
_WORD_INDEX = {word: index for index, word in enumerate(STATUS_ORDER)}
#: Numbers whose count gains a digit when one is added (9 -> 10, 99 -> 100, ...).
_DIGIT_GROWTH = frozenset(10**n - 1 for n in range(1, 20))
#: " (N updates)" without the digits of N.
_UPDATES_CHARS = len(" ( updates)")
#: Finds where text starts without copying a megabyte of output to strip it.
_NON_SPACE = re.compile(r"\S")
#: The first non-blank line's text up to a line break, one character past SUMMARY_CHARS at
#: most: one C-level search, without copying a megabyte of output.
_FIRST_LINE = re.compile(rf"\S[^\r\n]{{0,{SUMMARY_CHARS}}}")


class _Item(NamedTuple):
    """What a line needs of one event, rendered once.

    A named tuple: made once per event in a storm, it is built in C, where a
    frozen dataclass sets each field through ``object.__setattr__``.
    """

    key: tuple[str, str, str]
    #: index of the status word in STATUS_ORDER
    word: int
    #: ``<b>WORD</b>`` or ``WORD``
    head: str
    #: ``[namespace/]source/check``, escaped and cut
    name: str
    #: first line of the notification or output, escaped and cut; may be ""
    summary: str
    color: str
    #: the line's length without " (N updates)"
    length: int


class _Line:
    __slots__ = ("count", "item", "length")

    def __init__(self, item: _Item) -> None:
        self.item = item
        self.count = 1
        self.length = item.length


class _Pack:
    """The message being filled: its lines, counts, colour and exact length, kept as it grows."""

    __slots__ = (
        "color",
        "counts",
        "header_length",
        "kinds",
        "length",
        "limit",
        "lines",
        "rank",
        "separator",
        "start",
        "stop",
    )

    def __init__(self, start: int, separator: int, limit: int = MAX_MESSAGE_CHARS) -> None:
        self.start = start
        #: characters the text may take: MAX_MESSAGE_CHARS less the target's mention prefix
        self.limit = limit
        self.stop = start
        self.lines: dict[tuple[str, str, str], _Line] = {}
        self.counts = [0] * len(STATUS_ORDER)
        #: status words with a non-zero count
        self.kinds = 0
        #: ``len(_header(...))``; "0 events: " while empty
        self.header_length = _EMPTY_HEADER_CHARS
        #: the whole message: the header, then separator and text per line
        self.length = self.header_length
        self.separator = separator
        #: the worst colour so far; the rank starts above any colour's, for the first to set it
        self.color = ""
        self.rank = len(_COLOR_RANK) + 1

    def add(self, item: _Item) -> bool:
        """Add ``item``, unless it would push a non-empty message past its limit."""
        count = self.counts[item.word]
        header = self.header_length + (self.stop - self.start in _DIGIT_GROWTH)
        if count:
            header += count in _DIGIT_GROWTH
        else:
            # "1 word", after ", " unless it is the first.
            header += len(STATUS_ORDER[item.word]) + 2 + (2 if self.kinds else 0)
        line = self.lines.get(item.key)
        if line is None:
            line_length = item.length
            length = self.length + header - self.header_length + self.separator + line_length
        else:
            line_length = item.length + _updates_chars(line.count + 1)
            length = self.length + header - self.header_length + line_length - line.length
        if length > self.limit and self.stop > self.start:
            return False
        self.stop += 1
        self.counts[item.word] = count + 1
        self.kinds += not count
        self.header_length = header
        self.length = length
        if line is None:
            self.lines[item.key] = _Line(item)
        else:
            line.item = item
            line.count += 1
            line.length = line_length
        rank = _COLOR_RANK.get(item.color, len(_COLOR_RANK))
        if rank < self.rank:
            self.rank, self.color = rank, item.color
        return True


def render_batch(
    events: Sequence[Event],
    target: Target,
    api_version: ApiVersion,
    *,
    shaping: Shaping | None = None,
) -> list[tuple[Message, range]]:
    """The messages for ``events`` (one target's, in acceptance order), each with its slice.

    The ranges are contiguous, in order, and cover every index exactly once;
    every message is at most MAX_MESSAGE_CHARS characters. One event gives
    exactly ``render(event, target, api_version)``; no events, no messages.
    A lane sends one message at a time: :class:`FirstMessage` packs the first
    as the events come.

    With ``shaping``, its templates and documents (each event as Sensu sent
    it, by index) go to ``render``, and a message of several events uses
    ``digest_template`` when set (the slices stay the built-in summary's).
    """
    if len(events) == 1:
        return [(_render_one(events, 0, target, api_version, shaping), range(1))]
    as_html = sent_format(target) == "html"
    separator = len(_HTML_BREAK) if as_html else 1
    limit = MAX_MESSAGE_CHARS - len(mention_prefix(target))
    packs: list[_Pack] = []
    pack = _Pack(0, separator, limit)
    # Name parts repeat across a storm (the same hosts, the same checks): cut each once.
    names: dict[str, str] = {}
    for index, event in enumerate(events):
        item = _item(event, as_html, names)
        if not pack.add(item):
            packs.append(pack)
            pack = _Pack(index, separator, limit)
            pack.add(item)
    if pack.stop > pack.start:
        packs.append(pack)
    sender = sender_name(target.username, api_version)
    return [(_message(p, events, target, api_version, sender, shaping), _span(p)) for p in packs]


class FirstMessage:
    """The first message of a target's pending events, packed as they are handed over.

    A lane reads spilled events back in chunks until its next message is
    full; each event is made a summary line once, however many chunks it
    takes, and the text is built once, by :meth:`message`. Handed the same
    events in any chunks, it gives ``render_batch(events, ...)[0]``.
    A lone event is its normal message: its line is made only once another comes.
    """

    __slots__ = ("_api_version", "_as_html", "_events", "_names", "_pack", "_shaping", "_target")

    def __init__(
        self, target: Target, api_version: ApiVersion, shaping: Shaping | None = None
    ) -> None:
        self._target = target
        self._api_version = api_version
        self._shaping = shaping
        self._as_html = sent_format(target) == "html"
        separator = len(_HTML_BREAK) if self._as_html else 1
        self._pack = _Pack(0, separator, MAX_MESSAGE_CHARS - len(mention_prefix(target)))
        self._events: list[Event] = []
        # Name parts repeat across a storm (the same hosts, the same checks): cut each once.
        self._names: dict[str, str] = {}

    @property
    def full(self) -> bool:
        """An event handed over did not fit: the message takes no more."""
        handed = len(self._events)
        return handed > 1 and self._pack.stop < handed

    @property
    def span(self) -> range:
        """The indexes (in the order handed over) of the events the message shows."""
        return range(1) if len(self._events) == 1 else _span(self._pack)

    def _pack_lone(self) -> None:
        """Make the line of the first event, handed over alone so far."""
        if self._pack.stop == 0 and self._events:
            self._pack.add(_item(self._events[0], self._as_html, self._names))

    def room(self) -> int:
        """About how many more events the message takes (at least one), judged by those so far.

        Exact for events whose lines are as long as the average so far; many
        events folded into few lines make it large.
        """
        self._pack_lone()
        pack = self._pack
        packed = pack.stop - pack.start
        if not packed:
            return 1
        per_event = max(1.0, (pack.length - pack.header_length) / packed)
        return int((pack.limit - pack.length) / per_event) + 1

    def add(self, events: Iterable[Event]) -> bool:
        """Pack ``events`` after those handed over before; False once the message is full."""
        if self.full:
            return False
        pack, handed = self._pack, self._events
        for event in events:
            handed.append(event)
            if len(handed) == 1:
                continue
            self._pack_lone()
            if not pack.add(_item(event, self._as_html, self._names)):
                return False
        return True

    def message(self) -> Message:
        """The message for :attr:`span`; at least one event must have been handed over."""
        if not self._events:
            raise ValueError("no events to render")
        if len(self._events) == 1:
            return _render_one(self._events, 0, self._target, self._api_version, self._shaping)
        sender = sender_name(self._target.username, self._api_version)
        return _message(
            self._pack, self._events, self._target, self._api_version, sender, self._shaping
        )


def _span(pack: _Pack) -> range:
    return range(pack.start, pack.stop)


def _message(
    pack: _Pack,
    events: Sequence[Event],
    target: Target,
    api_version: ApiVersion,
    sender: str,
    shaping: Shaping | None,
) -> Message:
    covered = events[pack.start : pack.stop]
    if len(covered) == 1:
        return _render_one(events, pack.start, target, api_version, shaping)
    message_format = sent_format(target)
    text = _digest(events, _span(pack), target, shaping)
    if text is None:
        lines = [_header(len(covered), pack.counts)]
        lines.extend(_line_text(line.item, line.count) for line in pack.lines.values())
        text = (_HTML_BREAK if message_format == "html" else "\n").join(lines)
    return Message(
        text=finish_text(text, target, MAX_MESSAGE_CHARS),
        color=pack.color,
        # Every event of a batch shares its target (lanes are per target), so
        # "any folded event would notify" is the target's own notify.
        notify=target.notify,
        message_format=message_format,
        sender=sender,
    )


def _header(total: int, counts: Sequence[int]) -> str:
    parts = [f"{n} {word.lower()}" for word, n in zip(STATUS_ORDER, counts, strict=True) if n]
    return f"{total} events: {', '.join(parts)}"


#: ``len(_header(0, ...))`` with every count 0: where an empty message's length starts.
_EMPTY_HEADER_CHARS = len(_header(0, [0] * len(STATUS_ORDER)))


def _updates(count: int) -> str:
    return f" ({count} updates)" if count > 1 else ""


def _updates_chars(count: int) -> int:
    """``len(_updates(count))`` for a count above one."""
    return _UPDATES_CHARS + len(str(count))


def _line_text(item: _Item, count: int) -> str:
    summary = f": {item.summary}" if item.summary else ""
    return f"{item.head} {item.name}{summary}{_updates(count)}"


def _item(event: Event, as_html: bool, names: dict[str, str]) -> _Item:
    word = status_word(event)
    name = f"{_name_part(event.source, as_html, names)}/{_name_part(event.check, as_html, names)}"
    namespace = event.namespace
    if event.flavor == "go" and namespace and namespace != "default":
        name = f"{_name_part(namespace, as_html, names)}/{name}"
    notification = event.notification
    body = notification if notification and _NON_SPACE.search(notification) else event.output
    summary = clip(_first_line(body), SUMMARY_CHARS, as_html)
    head = f"<b>{word}</b>" if as_html else word
    # "HEAD NAME" then ": SUMMARY" when there is one.
    length = len(head) + 1 + len(name) + (len(summary) + 2 if summary else 0)
    return _Item(event.incident_key, _WORD_INDEX[word], head, name, summary, color(event), length)


def _name_part(value: str, as_html: bool, names: dict[str, str]) -> str:
    """``value`` as a line shows it, from ``names`` (what is already cut, by source text)."""
    # Cut before the lookup: a pathological name costs no more than a short one.
    value = value[: NAME_CHARS + 1]
    part = names.get(value)
    if part is None:
        part = names[value] = clip(one_line(value), NAME_CHARS, as_html)
    return part


def _first_line(body: str) -> str:
    """The first non-blank line of ``body``, reading at most SUMMARY_CHARS + 1 characters of it."""
    found = _FIRST_LINE.search(body)
    if found is None:
        return ""
    line = found.group()
    # Stopped by a line break (not by the length cap or the end): drop the spaces before it.
    if len(line) <= SUMMARY_CHARS and found.end() < len(body):
        return line.rstrip()
    return line


def _render_one(
    events: Sequence[Event],
    index: int,
    target: Target,
    api_version: ApiVersion,
    shaping: Shaping | None,
) -> Message:
    if shaping is None:
        return render(events[index], target, api_version)
    documents = shaping.documents
    document = documents[index] if documents else None
    return render(
        events[index],
        target,
        api_version,
        templates=shaping.templates,
        document=document,
        card_icons=shaping.card_icons,
    )


def _digest(
    events: Sequence[Event], span: range, target: Target, shaping: Shaping | None
) -> str | None:
    """The digest template's text for ``events[span]``; None: the built-in summary."""
    if shaping is None or shaping.templates.digest is None:
        return None
    covered = events[span.start : span.stop]
    documents = shaping.documents[span.start : span.stop] if shaping.documents else None
    words = [status_word(event) for event in covered]
    limit = MAX_MESSAGE_CHARS - len(mention_prefix(target))
    return digest_text(covered, documents, words, target, shaping.templates, limit=limit)
