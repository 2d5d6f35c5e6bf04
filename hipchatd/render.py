"""Event -> HipChat message text, colour and sender. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from hipchatd.config import ApiVersion, MessageFormat
from hipchatd.events import Event
from hipchatd.routing import Target

__all__ = ["MAX_MESSAGE_CHARS", "Message", "render", "sender_name"]

#: HipChat rejects longer messages with 400 (v1 and v2).
MAX_MESSAGE_CHARS = 10_000


@dataclass(frozen=True, slots=True)
class Message:
    """A notification ready to post."""

    text: str
    color: str
    notify: bool
    message_format: MessageFormat
    #: the ``from`` field, already reduced to what the API version accepts.
    sender: str


def sender_name(username: str, api_version: ApiVersion) -> str:
    """v1: 1-15 characters of ``[A-Za-z0-9 _-]``; v2: cut to 64 characters."""
    raise NotImplementedError


def render(event: Event, target: Target, api_version: ApiVersion) -> Message:
    """Render one event for one target, never longer than MAX_MESSAGE_CHARS."""
    raise NotImplementedError
