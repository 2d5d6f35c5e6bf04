"""One event -> a HipChat ``application`` card (docs/hipchat-api.md §4.2). Pure.

A card shows one object with its attributes; HipChat clients that can show
cards show it instead of the message, the others show the message, which is
always sent with it (§4.1)::

    [icon] CRITICAL web-01/check-disk                        (title, a link)
           DISK CRITICAL - / at 97%                           (description)
           Status: [CRITICAL]  Occurrences: 3  Source: web-01  Check: check-disk ...

* ``title``: the status word and ``source/check``, one line.
* ``description``: the notification, else the output, as ``text`` (so
  ``<script>`` in output is shown, never interpreted); left out when empty.
* ``attributes``: Status (a lozenge by status), Occurrences, Source, Check,
  Client (a proxy check's client), Namespace (Sensu Go, when not
  "default"), Playbook (a link when it is an http(s) URL).
* ``url``: the dashboard link, else the playbook when it is an http(s) URL.
* ``icon``: the icon ``hipchat.card_icons`` names for the status, if any
  (HipChat clients fetch it by URL, so it must be one they can reach: an
  offline HipChat Server's users cannot load a public CDN's images).
* ``id``: a UUID derived from the event (its id, incident, status, action,
  occurrences and timestamp): the same event sent again (a retry) carries
  the same id, the next event of the check another.

Every field is cut to HipChat's limits whatever the event holds: the title
to 500 characters, the description to 1,000, attribute labels to 50 (ours
are fixed words), attribute values to :data:`ATTRIBUTE_VALUE_MAX`; control
characters and lone surrogates become U+FFFD, and a URL too long to be
useful is left out rather than cut. A card holds no HTML, so the card
HTML rules (only ``a``, ``b``, ``i``, ``strong``, ``span``: §4.2) hold
trivially. Storm digests carry no card: a card shows one object, and a
digest's lines are many checks.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Final

from hipchatd.sensu.events import Event
from hipchatd.sensu.links import is_web_url

__all__ = [
    "ATTRIBUTE_LABEL_MAX",
    "ATTRIBUTE_VALUE_MAX",
    "CARD_DESCRIPTION_MAX",
    "CARD_TITLE_MAX",
    "CARD_URL_MAX",
    "LOZENGES",
    "build_card",
]

#: §4.2: a title is 1 to 500 characters.
CARD_TITLE_MAX: Final = 500
#: §4.2: a description's value is 1 to 1,000 characters.
CARD_DESCRIPTION_MAX: Final = 1_000
#: §4.2: an attribute's label is 1 to 50 characters.
ATTRIBUTE_LABEL_MAX: Final = 50
#: Characters of an attribute's value: HipChat states no limit, and a card's
#: attribute row is a glance, not a page (Sensu names are far shorter).
ATTRIBUTE_VALUE_MAX: Final = 100
#: Characters of a URL the card links: about the longest browsers handle everywhere.
CARD_URL_MAX: Final = 2_000

#: Attribute value styles by status word. HipChat draws AUI lozenges
#: (https://aui.atlassian.com/aui/7.8/docs/lozenges.html): success green,
#: error red, moved yellow, current blue, plain ``lozenge`` gray. A flapping
#: check's state keeps changing: blue, "in progress".
LOZENGES: Final[dict[str, str]] = {
    "CRITICAL": "lozenge-error",
    "WARNING": "lozenge-moved",
    "UNKNOWN": "lozenge",
    "OK": "lozenge-success",
    "RESOLVED": "lozenge-success",
    "FLAPPING": "lozenge-current",
}

#: The namespace a card id is derived in (a fixed, random UUID: ids are hipchatd's own).
_ID_NAMESPACE: Final = uuid.UUID("6f0c3d2e-8a51-4d0b-9a57-3c1f2b8e4d71")
_ELLIPSIS: Final = "…"
#: C0 and C1 controls (a line break or tab is handled before) and lone surrogates.
_UNPRINTABLE: Final = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_LINE_BREAK: Final = re.compile(r"\r\n|[\r\n\t]")
_DEFAULT_NAMESPACE: Final = "default"


def build_card(event: Event, word: str, link: str | None, icon: str | None) -> dict[str, Any]:
    """The card for ``event``: ``word`` is its status word, ``link`` its dashboard link,
    ``icon`` the URL of its icon (None: no icon)."""
    card: dict[str, Any] = {
        "style": "application",
        "format": "medium",
        "id": card_id(event),
        "title": _one_line(f"{word} {event.source}/{event.check}", CARD_TITLE_MAX),
    }
    description = _description(event)
    if description:
        card["description"] = {"value": description, "format": "text"}
    url = _url(link, event.playbook)
    if url is not None:
        card["url"] = url
    if icon is not None:
        card["icon"] = {"url": icon}
    card["attributes"] = _attributes(event, word)
    return card


def card_id(event: Event) -> str:
    """A UUID naming this event's card: equal for the same event, different for the next."""
    key = [
        event.id,
        event.namespace or "",
        event.source,
        event.check,
        event.status,
        event.action,
        event.occurrences,
        repr(event.timestamp),
    ]
    # json.dumps escapes to ASCII, so even a lone surrogate is a valid name.
    return str(uuid.uuid5(_ID_NAMESPACE, json.dumps(key)))


def _description(event: Event) -> str:
    notification = event.notification
    body = notification if notification and notification.strip() else event.output
    # Read no more than the description can show, however long the output.
    head = body[: CARD_DESCRIPTION_MAX * 2].replace("\r\n", "\n").replace("\r", "\n")
    text = _UNPRINTABLE.sub("\ufffd", head.replace("\t", " ")).strip()
    if len(body) > len(head) or len(text) > CARD_DESCRIPTION_MAX:
        text = text[: CARD_DESCRIPTION_MAX - len(_ELLIPSIS)].rstrip() + _ELLIPSIS
    return text


def _url(link: str | None, playbook: str | None) -> str | None:
    for candidate in (link, playbook.strip() if playbook else None):
        if candidate and len(candidate) <= CARD_URL_MAX and is_web_url(candidate):
            return candidate
    return None


def _attributes(event: Event, word: str) -> list[dict[str, Any]]:
    attributes = [_attribute("Status", word, style=LOZENGES[word])]
    attributes.append(_attribute("Occurrences", str(event.occurrences)))
    attributes.append(_attribute("Source", event.source))
    attributes.append(_attribute("Check", event.check))
    if event.client and event.client != event.source:
        attributes.append(_attribute("Client", event.client))
    if event.flavor == "go" and event.namespace and event.namespace != _DEFAULT_NAMESPACE:
        attributes.append(_attribute("Namespace", event.namespace))
    playbook = event.playbook.strip() if event.playbook else ""
    if playbook:
        url = playbook if len(playbook) <= CARD_URL_MAX and is_web_url(playbook) else None
        attributes.append(_attribute("Playbook", playbook, url=url))
    # An attribute whose value is blank (an empty name) would break the 1-character minimum.
    return [a for a in attributes if a["value"]["label"]]


def _attribute(
    label: str, value: str, *, style: str | None = None, url: str | None = None
) -> dict[str, Any]:
    shown: dict[str, Any] = {"label": _one_line(value, ATTRIBUTE_VALUE_MAX)}
    if url is not None:
        shown["url"] = url
    if style is not None:
        shown["style"] = style
    return {"label": label[:ATTRIBUTE_LABEL_MAX], "value": shown}


def _one_line(value: str, cap: int) -> str:
    """``value`` on one line, unprintables replaced, stripped, at most ``cap`` characters."""
    # Read no more than twice the cap: a megabyte name costs no more than a short one,
    # and stripping cannot take a longer value below the cut unnoticed.
    head = value[: cap * 2]
    text = _UNPRINTABLE.sub("\ufffd", _LINE_BREAK.sub(" ", head)).strip()
    if len(value) > len(head) or len(text) > cap:
        text = text[: cap - len(_ELLIPSIS)].rstrip() + _ELLIPSIS
    return text
