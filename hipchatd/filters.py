"""Which events are notified: the Sensu Enterprise integration's semantics. Pure."""

from __future__ import annotations

from hipchatd.config import HipChatSettings
from hipchatd.events import Event

__all__ = ["skip_reason"]


def skip_reason(event: Event, settings: HipChatSettings) -> str | None:
    """Return why ``event`` is not notified (a short snake_case reason), or None to notify."""
    raise NotImplementedError
