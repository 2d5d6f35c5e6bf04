"""What the emulator records: accepted messages, answered requests, the console echo."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from hipchatd.emulator.wire import Json

#: Longest echo line, in characters; longer texts are cut with "...".
ECHO_MAX = 200


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message the emulator accepted.

    ``kind`` is ``"notification"`` (v2 notification, v1 rooms/message),
    ``"room_message"`` (v2 send_message) or ``"user_message"`` (v2 private
    message). ``sender`` is the ``from`` label, empty when absent or ignored;
    ``color`` is None for the kinds that have none.
    """

    kind: str
    api_version: str
    room_id: int | None
    room: str | None
    user: str | None
    sender: str
    message: str
    color: str | None
    notify: bool
    message_format: str
    date: float
    #: The message id, as shown in room history and accepted by ``attach_to``.
    id: str = ""
    #: A v2 notification's card as sent (docs/hipchat-api.md §4.2), else None; history shows it.
    card: dict[str, Json] | None = None


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One answered API request: the raw path (no query string), status, trio time."""

    method: str
    path: str
    status: int
    time: float


_BREAK_TAG = re.compile(r"<(?:br|hr|/p|/div|/li|/tr)\b[^>]*>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def echo_line(message: ReceivedMessage) -> str:
    """The one-line console summary of an accepted message; HTML tags are stripped."""
    where = f"[room {message.room}]" if message.room is not None else f"[user {message.user}]"
    text = message.message
    if message.message_format == "html":
        text = html.unescape(_TAG.sub("", _BREAK_TAG.sub(" ", text)))
    text = _SPACE.sub(" ", text).strip()
    if len(text) > ECHO_MAX:
        text = text[: ECHO_MAX - 3] + "..."
    who = f"{message.sender}: " if message.sender else ""
    flags = [message.color] if message.color else []
    if message.notify:
        flags.append("notify")
    if message.card is not None:
        flags.append("card")
    tail = f" ({', '.join(flags)})" if flags else ""
    return f"{where} {who}{text}{tail}"
