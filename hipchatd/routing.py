"""Which rooms (or user) an event goes to, with which per-target settings. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from hipchatd.config import HipChatSettings, MessageFormat, Overrides
from hipchatd.events import Event

__all__ = ["Target", "route"]


@dataclass(frozen=True, slots=True)
class Target:
    """One recipient of one notification."""

    kind: Literal["room", "user"]
    #: room id or name, or user id / e-mail.
    name: str
    notify: bool
    username: str
    message_format: MessageFormat


def route(
    event: Event, settings: HipChatSettings, contacts: Mapping[str, Overrides]
) -> tuple[Target, ...]:
    """Return the targets for ``event``, deduplicated, in a stable order."""
    raise NotImplementedError
