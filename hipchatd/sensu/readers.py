"""Lenient readers of decoded Sensu JSON, shared by the Classic and Go parsers.

A required value that is missing or of the wrong type raises EventError
naming its key path (:func:`required_object`, :func:`required_name`,
:func:`required_int`). Every other reader never raises: missing, null or of
the wrong type means the default, because HipChat attributes carried by an
event are event data, not configuration. Every string an Event holds passes
through :func:`utf8`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeGuard, TypeVar

from hipchatd.errors import EventError
from hipchatd.sensu.links import dashboard_problem, mention_problem
from hipchatd.sensu.model import (
    DEFAULT_HANDLE_WHEN_OCCURRENCES,
    DEFAULT_HANDLE_WHEN_RESET,
    BySeverity,
    HandleWhen,
    MessageFormat,
    Overrides,
    Repeat,
    Severity,
)

_FORMATS: Final[tuple[MessageFormat, ...]] = ("html", "text")
_SEVERITY_KEYS: Final[tuple[Severity, ...]] = ("ok", "warning", "critical", "unknown")
_MISSING: Final = object()
#: The types json gives for everything but an object: none is a Mapping.
_JSON_NON_OBJECTS: Final = frozenset({type(None), bool, int, float, str, list})
T = TypeVar("T")
#: Shared: it is frozen, and most checks and entities name no HipChat attributes.
NO_OVERRIDES: Final = Overrides()
#: Every key :func:`attribute_overrides` and :func:`attribute_contacts` read: an object
#: with none of them names no HipChat attributes and no contacts.
ATTRIBUTE_KEYS: Final = frozenset({"hipchat", "hipchat_room", "contact", "contacts"})
#: A lone UTF-16 surrogate: JSON's ``\ud800``-``\udfff`` escapes decode to one, and no
#: UTF-8 encoder (log output, SQLite, HTTP) accepts it.
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
#: Characters of the longest room or contact name an event may give: twice HipChat's
#: 50-character limit on room names. A longer string never names a room, and as a URL
#: path segment it could not even be sent.
MAX_NAME_CHARS: Final = 100

#: Shared: it is frozen, and most checks have no ``handle_when``.
DEFAULT_HANDLE_WHEN: Final = HandleWhen()
#: Shared: most checks carry no repeat attributes.
_NO_REPEAT: Final = Repeat()


# --- Classic-style attributes (both flavours) ------------------------------------------------


def attribute_overrides(attrs: Mapping[str, Any]) -> Overrides:
    """The ``hipchat`` object, with the community plugin's ``hipchat_room`` as a room fallback."""
    hipchat = attrs.get("hipchat")
    legacy_room = attrs.get("hipchat_room")
    if hipchat is None and legacy_room is None:
        return NO_OVERRIDES
    if not is_mapping(hipchat):
        return Overrides(room=read_names(legacy_room))
    room = read_names(hipchat.get("room"))
    card = hipchat.get("card")
    legacy = hipchat.get("legacy_occurrences")
    template = read_names(hipchat.get("template"))
    return Overrides(
        room=room if room is not None else read_names(legacy_room),
        notify=read_notify(hipchat.get("notify")),
        username=text_or_none(hipchat.get("username")),
        message_format=read_message_format(hipchat.get("message_format")),
        mentions=read_mentions(hipchat.get("mentions")),
        card=card if isinstance(card, bool) else None,
        dashboard_url=read_dashboard_url(hipchat.get("dashboard_url")),
        template=template[0] if template is not None and len(template) == 1 else None,
        legacy_occurrences=legacy if isinstance(legacy, bool) else None,
    )


def read_notify(value: object) -> bool | BySeverity[bool] | None:
    """``notify``: true/false, or an object of severities -> true/false (bad entries ignored)."""
    if isinstance(value, bool):
        return value
    return _by_severity(value, lambda v: v if isinstance(v, bool) else None)


def read_mentions(value: object) -> BySeverity[str] | None:
    """``mentions``: an object of severities -> "@name ..." (or a list of them)."""
    return _by_severity(value, _mention_text)


def read_dashboard_url(value: object) -> str | None:
    """A dashboard URL pattern (:mod:`hipchatd.sensu.links`); anything else counts as absent."""
    if isinstance(value, str) and dashboard_problem(value) is None:
        return value
    return None


def read_repeat(check: Mapping[str, Any], extra: Mapping[str, Any] | None) -> Repeat:
    """The Classic repeat attributes: ``occurrences`` and ``refresh`` from ``extra`` if given
    (a Go check's ``sensu.io.json_attributes``), else from the check itself."""
    attrs = check if extra is None else extra
    occurrences = _count(attrs.get("occurrences"))
    refresh = _count(attrs.get("refresh"))
    handle_when_given = is_mapping(check.get("handle_when")) or (
        extra is not None and is_mapping(extra.get("handle_when"))
    )
    if occurrences is None and refresh is None and not handle_when_given:
        return _NO_REPEAT
    return Repeat(
        occurrences=occurrences if occurrences is not None and occurrences >= 1 else None,
        refresh=refresh,
        handle_when_given=handle_when_given,
    )


def _count(value: object) -> int | None:
    """A non-negative integer, also written as a string of digits, as sensu-plugin's
    ``to_i`` read check attributes (``"occurrences": "3"``); None otherwise."""
    if is_int(value):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10:
        return int(value)
    return None


def _mention_text(value: object) -> str | None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        value = " ".join(value)
    if isinstance(value, str) and mention_problem(value) is None:
        return " ".join(value.split())
    return None


def _by_severity(value: object, read: Callable[[object], T | None]) -> BySeverity[T] | None:
    if not is_mapping(value):
        return None
    found = {key: read(value.get(key)) for key in _SEVERITY_KEYS if key in value}
    named = {key: item for key, item in found.items() if item is not None}
    return BySeverity(**named) if named else None


def attribute_contacts(attrs: Mapping[str, Any]) -> tuple[str, ...]:
    contact = attrs.get("contact")
    contacts = attrs.get("contacts")
    if contact is None and contacts is None:
        return ()
    return (read_names(contact) or ()) + (read_names(contacts) or ())


def read_handle_when(value: object) -> HandleWhen:
    """``value`` read key by key if it is an object; bad keys keep their default."""
    if not is_mapping(value):
        return DEFAULT_HANDLE_WHEN
    occurrences = value.get("occurrences")
    reset = value.get("reset")
    return HandleWhen(
        occurrences=occurrences
        if is_int(occurrences) and occurrences >= 1
        else DEFAULT_HANDLE_WHEN_OCCURRENCES,
        reset=reset if is_int(reset) and reset >= 0 else DEFAULT_HANDLE_WHEN_RESET,
    )


def read_message_format(value: object) -> MessageFormat | None:
    if isinstance(value, str):
        lowered = value.strip().lower()
        for fmt in _FORMATS:
            if lowered == fmt:
                return fmt
    return None


def read_names(value: object) -> tuple[str, ...] | None:
    """A string or a list of strings, stripped and deduplicated; None if it names nothing.

    Integers are accepted as strings: HipChat room ids are numbers. A name
    longer than MAX_NAME_CHARS is ignored like any other bad value.
    """
    if value is None:
        return None
    if type(value) is str:
        name = utf8(value.strip())
        return (name,) if name and len(name) <= MAX_NAME_CHARS else None
    items = value if isinstance(value, list) else [value]
    names = [utf8(str(item).strip()) for item in items if isinstance(item, str) or is_int(item)]
    kept = unique(name for name in names if name and len(name) <= MAX_NAME_CHARS)
    return kept or None


# --- small readers ---------------------------------------------------------------------------


def is_mapping(value: object) -> TypeGuard[Mapping[Any, Any]]:
    """A JSON object: decoded JSON gives a dict, or another JSON type, which skip the ABC check."""
    kind = type(value)
    return kind is dict or (kind not in _JSON_NON_OBJECTS and isinstance(value, Mapping))


def required_object(
    parent: Mapping[str, Any], key: str, path: str, flavor: str
) -> Mapping[str, Any]:
    value = parent.get(key, _MISSING)
    if type(value) is dict or is_mapping(value):
        return value
    raise _wrong(flavor, path, "an object", value)


def required_name(parent: Mapping[str, Any], key: str, path: str, flavor: str) -> str:
    value = parent.get(key, _MISSING)
    if not isinstance(value, str) or not value:
        raise _wrong(flavor, path, "a non-empty string", value)
    return value if value.isascii() else utf8(value)


def required_int(parent: Mapping[str, Any], key: str, path: str, flavor: str) -> int:
    value = parent.get(key, _MISSING)
    if not is_int(value):
        raise _wrong(flavor, path, "an integer", value)
    return value


def _wrong(flavor: str, path: str, expected: str, value: object) -> EventError:
    if value is _MISSING:
        return EventError(f"{flavor} event: {path} is missing (expected {expected})")
    got = "an empty string" if value == "" else json_type(value)
    return EventError(f"{flavor} event: {path}: expected {expected}, got {got}")


def is_int(value: object) -> TypeGuard[int]:
    """A JSON integer: ``bool`` is an ``int`` subclass in Python, and not one."""
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def occurrence_count(value: object) -> int:
    """An occurrence count: a non-negative integer, else 1 (sensu-plugin's default)."""
    return value if is_int(value) and value >= 0 else 1


def watermark(value: object, occurrences: int) -> int:
    # Go before 5.9 sent a broken watermark (0); it can never be below the current run.
    if is_int(value):
        return max(value, occurrences)
    return occurrences


def interval_seconds(value: object) -> int | None:
    return value if is_int(value) and value > 0 else None


def first_timestamp(*candidates: object) -> float:
    for value in candidates:
        # JSON gives exactly int or float, checked first; ``bool`` is an ``int``, and no time.
        if not (
            type(value) is float
            or type(value) is int
            or (isinstance(value, int | float) and not isinstance(value, bool))
        ):
            continue
        try:
            number = float(value)
        except OverflowError:  # an integer JSON allows but no clock reaches
            continue
        if math.isfinite(number):
            return number
    return 0.0


def string_or_empty(value: object) -> str:
    if isinstance(value, str):
        return value if value.isascii() else utf8(value)
    return ""


def text_or_none(value: object) -> str | None:
    """A non-empty string, else None."""
    if isinstance(value, str) and value:
        return value if value.isascii() else utf8(value)
    return None


def utf8(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD, as Go's encoding/json decodes it.

    Every string an Event holds goes through here, so logging, the spool
    and HipChat never meet a character UTF-8 cannot encode.
    """
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__
