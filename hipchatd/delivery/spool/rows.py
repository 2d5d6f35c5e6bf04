"""Rows as every backend stores them: a Target as a JSON object, entries from columns. Pure.

Target keys added after a spool was written are optional: a target without
them encodes without them, and a stored target without them decodes to the
defaults, so spools written by an older hipchatd read unchanged. The row
readers take the columns in the order each names, from any backend.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from hipchatd.delivery.routing import Target
from hipchatd.delivery.spool.store import DeadEntry, Entry, PendingEntry, SpoolError

__all__ = ["dead_entries", "decode_target", "encode_target", "entries", "pending_entries"]


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


def entries(
    rows: Iterable[Sequence[Any]], documents: Mapping[int, str], *, requeued: bool = False
) -> list[Entry]:
    """Entries from ``(id, accepted_at, document_id, source, check_name, target, attempts,
    last_error)`` rows, each with its event's document from ``documents`` (shared)."""
    return [
        Entry(
            id_,
            accepted_at,
            # A missing document reads as unparsable: the lane dead-letters it as "unreadable".
            documents.get(document_id, ""),
            source,
            check,
            decode_target(target),
            attempts,
            last_error,
            requeued,
        )
        for id_, accepted_at, document_id, source, check, target, attempts, last_error in rows
    ]


def pending_entries(rows: Iterable[Sequence[Any]]) -> list[PendingEntry]:
    """From ``(id, accepted_at, source, check_name, target, attempts, last_error)`` rows."""
    return [
        PendingEntry(id_, accepted, source, check, decode_target(target), n, error)
        for id_, accepted, source, check, target, n, error in rows
    ]


def dead_entries(rows: Iterable[Sequence[Any]]) -> list[DeadEntry]:
    """From ``(id, accepted_at, dead_at, source, check_name, target, attempts, reason,
    error)`` rows."""
    return [
        DeadEntry(id_, accepted, dead_at, source, check, decode_target(target), n, reason, error)
        for id_, accepted, dead_at, source, check, target, n, reason, error in rows
    ]
