"""How a spool stores a Target: a JSON object, the same text in every backend. Pure.

Keys added after a spool was written are optional: a target without them
encodes without them, and a stored target without them decodes to the
defaults, so spools written by an older hipchatd read unchanged.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from hipchatd.delivery.routing import Target
from hipchatd.delivery.spool.store import SpoolError

__all__ = ["decode_target", "encode_target"]


#: Target keys stored only when set: a target without them reads back the same,
#: and a spool written before they existed reads as targets without them.
_OPTIONAL_TARGET_KEYS = ("mention", "card", "dashboard_url", "template")


@lru_cache(maxsize=4096)
def encode_target(target: Target) -> str:
    """``target`` as a compact JSON object (optional keys only when set)."""
    data: dict[str, Any] = {
        "kind": target.kind,
        "name": target.name,
        "notify": target.notify,
        "username": target.username,
        "message_format": target.message_format,
    }
    for key in _OPTIONAL_TARGET_KEYS:
        value = getattr(target, key)
        if value:
            data[key] = value
    return json.dumps(data, separators=(",", ":"))


@lru_cache(maxsize=4096)
def decode_target(text: str) -> Target:
    """The Target ``encode_target`` wrote (absent optional keys: defaults).

    Raises SpoolError for a text that is not one.
    """
    try:
        data = json.loads(text)
        kind, name, notify = data["kind"], data["name"], data["notify"]
        username, message_format = data["username"], data["message_format"]
        mention, card = data.get("mention"), data.get("card", False)
        dashboard_url, template = data.get("dashboard_url"), data.get("template")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SpoolError(f"unreadable target in the spool: {text[:200]!r}") from exc
    if (
        kind not in ("room", "user")
        or message_format not in ("html", "text")
        or not isinstance(name, str)
        or not isinstance(notify, bool)
        or not isinstance(username, str)
        or not isinstance(card, bool)
        or not all(isinstance(v, str | None) for v in (mention, dashboard_url, template))
    ):
        raise SpoolError(f"unreadable target in the spool: {text[:200]!r}")
    return Target(
        kind=kind,
        name=name,
        notify=notify,
        username=username,
        message_format=message_format,
        mention=mention,
        card=card,
        dashboard_url=dashboard_url,
        template=template,
    )
