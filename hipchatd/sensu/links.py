"""Dashboard links and @mentions: the two message keys whose values have a grammar. Pure.

A dashboard URL pattern is an http(s) URL with ``{placeholder}`` fields,
each replaced by the event's value, percent-encoded as one URL component
(so a ``/`` or ``#`` in a check name cannot change the link's shape)::

    https://sensu.example.com/c/~/n/{namespace}/events/{source}/{check}
    https://uchiwa.example.com/#/client/dc1/{source}?check={check}

Placeholders: ``source`` (the proxy source, else the client or entity),
``check``, ``namespace`` (Sensu Go; "default" for Classic events) and
``client`` (the client or entity name, even for a proxy check). ``{{`` and
``}}`` stand for literal braces.

A mention is ``@`` and a HipChat mention name (``@all``, ``@here``,
``@oncall``); several are separated by spaces.
"""

from __future__ import annotations

import re
from string import Formatter
from typing import Final
from urllib.parse import quote, urlsplit

from hipchatd.sensu.model import Event

__all__ = [
    "DASHBOARD_PLACEHOLDERS",
    "MAX_DASHBOARD_CHARS",
    "dashboard_link",
    "dashboard_problem",
    "is_web_url",
    "mention_problem",
]

#: The fields a dashboard pattern may name.
DASHBOARD_PLACEHOLDERS: Final = ("source", "check", "namespace", "client")
#: Characters of a pattern: about the longest URL browsers handle everywhere.
MAX_DASHBOARD_CHARS: Final = 2_000
#: The namespace a Classic event (which has none) fills in: Sensu Go's default.
_CLASSIC_NAMESPACE: Final = "default"
#: One mention: ``@`` then a HipChat mention name (letters, digits, ``_ . -``; at most 50).
_MENTION: Final = re.compile(r"@[\w.\-]{1,50}")
#: Mentions one value may hold: a handful of people or groups, not a roll call.
MAX_MENTIONS: Final = 20


def dashboard_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a usable dashboard URL pattern, or None when it is."""
    if len(pattern) > MAX_DASHBOARD_CHARS:
        return f"{len(pattern)} characters; at most {MAX_DASHBOARD_CHARS}"
    if not pattern.isprintable() or any(ch.isspace() for ch in pattern):
        return "a URL cannot hold whitespace or control characters"
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in Formatter().parse(pattern)
            if name is not None
        ]
    except ValueError as exc:
        return f"unbalanced braces ({exc}); write {{{{ and }}}} for literal braces"
    for name, spec, conversion in fields:
        if name not in DASHBOARD_PLACEHOLDERS:
            known = ", ".join(f"{{{p}}}" for p in DASHBOARD_PLACEHOLDERS)
            shown = name[:40] or "(empty)"
            return f"unknown placeholder {{{shown}}}; known: {known}"
        if spec or conversion:
            return f"placeholder {{{name}}} takes no format spec or conversion"
    if not is_web_url(_expand(pattern, dict.fromkeys(DASHBOARD_PLACEHOLDERS, "x"))):
        return "expected an http(s) URL with a host"
    return None


def is_web_url(value: str) -> bool:
    """Whether ``value`` is a printable http(s) URL with a host."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc) and value.isprintable()


def dashboard_link(pattern: str, event: Event) -> str:
    """``pattern`` (which :func:`dashboard_problem` accepts) filled in for ``event``."""
    values = {
        "source": event.source,
        "check": event.check,
        "namespace": event.namespace or _CLASSIC_NAMESPACE,
        "client": event.client or event.source,
    }
    return _expand(pattern, {name: quote(value, safe="") for name, value in values.items()})


def _expand(pattern: str, values: dict[str, str]) -> str:
    return "".join(
        literal + (values[name] if name is not None else "")
        for literal, name, _, _ in Formatter().parse(pattern)
    )


def mention_problem(value: str) -> str | None:
    """Why ``value`` is not one or more space-separated mentions, or None when it is."""
    words = value.split()
    if not words:
        return "no mention in it"
    if len(words) > MAX_MENTIONS:
        return f"{len(words)} mentions; at most {MAX_MENTIONS}"
    for word in words:
        if not _MENTION.fullmatch(word):
            return f"{word[:60]!r} is not a mention; expected @ and a mention name, e.g. @all"
    return None
