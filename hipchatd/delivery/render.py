"""Event -> HipChat message text, colour and sender. Pure.

One message per event and target. The layout (html; text is the same
without tags, with real newlines)::

    <b>CRITICAL</b> web-01/check-disk: DISK CRITICAL - / at 97%<br>
    more output lines...<br>
    occurrences: 3 · <a href="https://wiki/disk">Playbook</a> · <a href="…">Dashboard</a>

The first line stays scannable in a chat room: status word, ``source/check``
and the first line of the notification or output. The last line (only when
there is something to say) carries the occurrence count (> 1), the playbook,
the target's dashboard link (its ``dashboard_url`` filled in for the event;
in text, "Dashboard: URL") and, for Sensu Go, a non-default namespace.

A text message has each ``@`` that could page a room neutralised, and a
target's mentions go first (:mod:`hipchatd.delivery.mentions`); a target
with mentions is always sent as text. A target with ``card`` gets a HipChat
card too (:mod:`hipchatd.delivery.cards`); the client sends it where the API
takes one.

Every event-derived string is HTML-escaped in html mode: unescaped event
output once let content be injected into HipChat rooms (travis-ci/travis-ci#5422).
The length limit is applied to the final text, after escaping and ``<br>``
conversion, because that conversion alone has pushed other notifiers over
HipChat's limit (YelpArchive/elastalert#1636, prometheus/alertmanager#1495).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hipchatd.config import ApiVersion
from hipchatd.config.templates import TemplateSet
from hipchatd.delivery.cards import build_card
from hipchatd.delivery.mentions import (
    finish_text,
    mention_prefix,
    neutralize,
    neutralized_width,
    sent_format,
)
from hipchatd.delivery.routing import Target
from hipchatd.delivery.templated import Document, templated_text
from hipchatd.sensu.events import Event, MessageFormat, Severity, severity
from hipchatd.sensu.links import dashboard_link, is_web_url

__all__ = [
    "MAX_MESSAGE_CHARS",
    "Message",
    "clip",
    "color",
    "one_line",
    "render",
    "sender_name",
    "status_word",
]

#: HipChat rejects longer messages with 400 (v1 and v2).
MAX_MESSAGE_CHARS = 10_000

#: v1 ``from``: HipChat's error says "between 1 and 15 characters" (docs/hipchat-api.md §11 q2).
V1_SENDER_MAX_CHARS = 15
#: v2 ``from``: 0-64 characters in the later API documentation (0-25 in 2015).
V2_SENDER_MAX_CHARS = 64
#: v1 ``from`` may hold letters, digits, ``-``, ``_`` and spaces (docs/hipchat-api.md §3.1).
_V1_SENDER_DROP = re.compile(r"[^A-Za-z0-9 _-]+")
#: the integration's default ``username``; used when nothing printable is left for v1.
DEFAULT_SENDER = "sensu"

#: Rendered characters for each of source, check and namespace. Sensu names are
#: short; this only bounds pathological ones so the output always keeps most of the room.
_MAX_NAME_CHARS = 500
#: Rendered characters for the playbook (about the longest URL browsers handle everywhere).
_MAX_PLAYBOOK_CHARS = 2_000
#: Rendered characters of the dashboard link, for the same reason; a longer one is left out.
_MAX_DASHBOARD_CHARS = 2_000
#: Rendered characters for the occurrence count (a 64-bit counter has at most 20 digits).
_MAX_COUNT_CHARS = 20

_ELLIPSIS = "…"
_SEPARATOR = " · "
_HTML_BREAK = "<br>"

_STATUS_WORDS: dict[Severity, str] = {
    "ok": "OK",
    "warning": "WARNING",
    "critical": "CRITICAL",
    "unknown": "UNKNOWN",
}
#: Colours as the community handlers use them, with unknown gray like the Sensu
#: in-process extension; HipChat accepts lowercase names only (docs/hipchat-api.md §4.1).
#: https://github.com/sensu/sensu-community-plugins/blob/73a39dc/extensions/handlers/hipchat.rb
_SEVERITY_COLORS: dict[Severity, str] = {
    "ok": "green",
    "warning": "yellow",
    "critical": "red",
    "unknown": "gray",
}

#: Rendered width of each character html mode changes; every other character is 1.
_HTML_WIDTHS: dict[str, int] = {ch: len(html.escape(ch, quote=True)) for ch in "&<>\"'"}
_HTML_WIDTHS["\n"] = len(_HTML_BREAK)


@dataclass(frozen=True, slots=True)
class Message:
    """A notification ready to post."""

    text: str
    color: str
    notify: bool
    message_format: MessageFormat
    #: the ``from`` field, already reduced to what the API version accepts.
    sender: str
    #: a HipChat card (docs/hipchat-api.md §4.2) when the target asked for one; the
    #: client sends it only where the API takes it (v2 room notifications).
    card: Mapping[str, Any] | None = None


def status_word(event: Event) -> str:
    """The message's leading word: RESOLVED, FLAPPING, or OK/WARNING/CRITICAL/UNKNOWN."""
    if event.action == "resolve":
        return "RESOLVED"
    if event.action == "flapping":
        return "FLAPPING"
    return _STATUS_WORDS[severity(event.status)]


def color(event: Event) -> str:
    """HipChat colour: resolve green, flapping purple (whatever the status), else by severity."""
    if event.action == "resolve":
        return "green"
    if event.action == "flapping":
        return "purple"
    return _SEVERITY_COLORS[severity(event.status)]


def sender_name(username: str, api_version: ApiVersion) -> str:
    """Reduce ``username`` to a ``from`` value the API version accepts.

    v1: keep only ``[A-Za-z0-9 _-]``, strip, cut to 15 characters; "sensu"
    if nothing is left (v1 requires 1-15 characters). v2: cut to 64
    characters (not bytes), the limit of the later API documentation.
    """
    if api_version == "v1":
        kept = _V1_SENDER_DROP.sub("", username).strip()[:V1_SENDER_MAX_CHARS].rstrip()
        return kept or DEFAULT_SENDER
    return username[:V2_SENDER_MAX_CHARS]


def render(
    event: Event,
    target: Target,
    api_version: ApiVersion,
    *,
    templates: TemplateSet | None = None,
    document: Document = None,
    card_icons: Mapping[str, str] | None = None,
) -> Message:
    """Render one event for one target, never longer than MAX_MESSAGE_CHARS.

    With ``templates``, the target's template renders the text (``document``,
    the event as Sensu sent it, is its ``event``); without one, or when it
    fails, the built-in layout does (:mod:`hipchatd.delivery.templated`).

    The body (notification, else output) is cut first, with a visible
    "… [output truncated: N more characters]" marker; pathological source,
    check, namespace or playbook values are cut to fixed caps so the limit
    always holds. Cuts fall between source characters, so never inside an
    HTML entity, a ``<br>`` or a neutralised ``@``; the room for the
    target's mentions is reserved before the body is cut. ``card_icons``
    (status word in lower case -> URL) gives a card its icon.
    """
    if templates is not None:
        limit = MAX_MESSAGE_CHARS - len(mention_prefix(target))
        word = status_word(event)
        shaped = templated_text(event, target, templates, document, word=word, limit=limit)
        if shaped is not None:
            return _message(shaped, event, target, api_version, card_icons)

    as_html = sent_format(target) == "html"
    esc: Callable[[str], str] = _escape_html if as_html else neutralize

    word = status_word(event)
    source = clip(one_line(event.source), _MAX_NAME_CHARS, as_html)
    check = clip(one_line(event.check), _MAX_NAME_CHARS, as_html)
    head = f"<b>{word}</b> " if as_html else f"{word} "
    head += f"{source}/{check}"

    details: list[str] = []
    if event.occurrences > 1:
        details.append(f"occurrences: {clip(str(event.occurrences), _MAX_COUNT_CHARS, as_html)}")
    if event.playbook and event.playbook.strip():
        details.append(_playbook(event.playbook.strip(), as_html))
    dashboard = _dashboard(_dashboard_link(event, target), as_html)
    if dashboard:
        details.append(dashboard)
    if event.flavor == "go" and event.namespace and event.namespace != "default":
        namespace = clip(one_line(event.namespace), _MAX_NAME_CHARS, as_html)
        details.append(f"namespace: {namespace}")
    newline = _HTML_BREAK if as_html else "\n"
    tail = newline + _SEPARATOR.join(details) if details else ""

    if event.notification and event.notification.strip():
        kind, body = "notification", event.notification
    else:
        kind, body = "output", event.output
    body = _normalize_newlines(body).rstrip().lstrip("\n")
    if not body:
        return _message(head + tail, event, target, api_version, card_icons)

    head += ": "
    room = MAX_MESSAGE_CHARS - len(mention_prefix(target)) - len(head) - len(tail)
    if _rendered_len_at_least(body, room + 1, as_html):
        # Reserve the longest marker this body could need; the real one is never longer.
        marker_room = len(_truncation_marker(kind, len(body)))
        keep = _fit_prefix(body, room - marker_room, as_html)
        rendered = esc(body[:keep]) + _truncation_marker(kind, len(body) - keep)
    else:
        rendered = esc(body)
    return _message(head + rendered + tail, event, target, api_version, card_icons)


def _message(
    text: str,
    event: Event,
    target: Target,
    api_version: ApiVersion,
    card_icons: Mapping[str, str] | None,
) -> Message:
    card = None
    if target.card:
        word = status_word(event)
        icon = card_icons.get(word.lower()) if card_icons else None
        card = build_card(event, word, _dashboard_link(event, target), icon)
    return Message(
        text=finish_text(text, target, MAX_MESSAGE_CHARS),
        color=color(event),
        notify=target.notify,
        message_format=sent_format(target),
        sender=sender_name(target.username, api_version),
        card=card,
    )


def _dashboard_link(event: Event, target: Target) -> str | None:
    """The target's dashboard pattern filled in for ``event``, or None without one."""
    if target.dashboard_url is None:
        return None
    return dashboard_link(target.dashboard_url, event)


def _dashboard(link: str | None, as_html: bool) -> str | None:
    """The tail's dashboard item; None without a link or past the cap (a cut URL is broken)."""
    if link is None:
        return None
    if as_html:
        href = html.escape(link, quote=True)
        return f'<a href="{href}">Dashboard</a>' if len(href) <= _MAX_DASHBOARD_CHARS else None
    shown = neutralize(link)
    return f"Dashboard: {shown}" if len(shown) <= _MAX_DASHBOARD_CHARS else None


def _playbook(playbook: str, as_html: bool) -> str:
    if as_html and is_web_url(playbook):
        href = html.escape(playbook, quote=True)
        # A cut URL is a broken link: past the cap it is shown as clipped text instead.
        if len(href) <= _MAX_PLAYBOOK_CHARS:
            return f'<a href="{href}">Playbook</a>'
    return "Playbook: " + clip(one_line(playbook), _MAX_PLAYBOOK_CHARS, as_html)


def _truncation_marker(kind: str, dropped: int) -> str:
    return f"{_ELLIPSIS} [{kind} truncated: {dropped} more characters]"


def _normalize_newlines(value: str) -> str:
    return value.replace("\r\n", "\n").replace("\r", "\n")


def one_line(value: str) -> str:
    """``value`` on one line: each line break (``\\r\\n``, ``\\r`` or ``\\n``) becomes a space."""
    return _normalize_newlines(value).replace("\n", " ")


def _escape_html(value: str) -> str:
    return html.escape(value, quote=True).replace("\n", _HTML_BREAK)


def _render_piece(value: str, as_html: bool) -> str:
    """``value`` as the message shows it: escaped in html, neutralised in text."""
    return _escape_html(value) if as_html else neutralize(value)


def _rendered_len_at_least(value: str, limit: int, as_html: bool) -> bool:
    """Whether ``value`` renders to ``limit`` characters or more, looking at most ``limit``."""
    if len(value) >= limit:
        return True  # every character renders to at least one
    return len(_render_piece(value, as_html)) >= limit


def _fit_prefix(value: str, budget: int, as_html: bool) -> int:
    """Length of the longest prefix of ``value`` whose rendering fits ``budget``.

    Reads at most ``budget`` characters, since each renders to at least one,
    so a megabyte of output costs no more than a short one.
    """
    if budget <= 0:
        return 0
    window = value[:budget]
    if not as_html:
        if "@" not in window:
            return len(window)
        # An ``@`` counts with its zero-width space whenever the next character
        # of ``value`` would earn it one: at most one character too cautious.
        used = 0
        for index in range(len(window)):
            used += neutralized_width(value, index)
            if used > budget:
                return index
        return len(window)
    used = 0
    for index, ch in enumerate(window):
        used += _HTML_WIDTHS.get(ch, 1)
        if used > budget:
            return index
    return len(window)


def clip(value: str, cap: int, as_html: bool) -> str:
    """Render ``value`` (escaped in html, neutralised in text), cut with an ellipsis so the
    result is at most ``cap`` characters.

    Cuts fall between source characters, never inside an HTML entity, and at
    most ``cap`` characters of ``value`` are read, so a megabyte costs no more
    than a short text.
    """
    if len(value) <= cap:
        # Every character renders to at least one: only a value this short may fit whole.
        rendered = _render_piece(value, as_html)
        if len(rendered) <= cap:
            return rendered
    keep = _fit_prefix(value, cap - len(_ELLIPSIS), as_html)
    return _render_piece(value[:keep], as_html) + _ELLIPSIS
