"""Describing a configuration value in a problem line without leaking it.

A value is quoted as JSON, cut short, with its type; a secret is named by
its type alone (:func:`a_type`).
"""

from __future__ import annotations

import json

from hipchatd.sensu.readers import json_type

#: A key path in the merged document, e.g. ``("hipchatd", "tcp", "port")``.
KeyPath = tuple[str, ...]


#: Characters of a bad value quoted in a problem line: room for a long path, not a pasted PEM.
_MAX_SHOWN = 200


def type_name(value: object) -> str:
    """The JSON name of a decoded value's type; "list" for an array, as the rules say it."""
    name = json_type(value)
    return "list" if name == "array" else name


def a_type(value: object) -> str:
    """The value's JSON type with an article ("a string", "an object", "null"); never the value."""
    name = type_name(value)
    if name == "null":
        return name
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def describe(value: object) -> str:
    """``"ten" (string)``: the value as JSON, cut short, and its type."""
    text = json.dumps(value, ensure_ascii=False)
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 1] + "…"
    return text if value is None else f"{text} ({type_name(value)})"


def dotted(path: KeyPath) -> str:
    """``hipchatd.tcp.port``: a key path as a problem line names it."""
    return ".".join(path)
