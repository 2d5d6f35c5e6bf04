"""structlog setup and secret redaction.

Configured once, before ``trio.run``: JSON lines when stdout is not a TTY,
console rendering on a TTY. Library modules only call
``structlog.get_logger()``. Every registered secret is replaced by
``[REDACTED]`` in every value of every log line, exception text included,
before a renderer sees it; httpx and httpcore's stdlib logs go through the
same chain at WARNING. A secret is caught in the forms it takes on its way
out, not only as typed (:func:`secret_forms`).
"""

from __future__ import annotations

import functools
import io
import json
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

import structlog

__all__ = [
    "REDACTED",
    "configure",
    "redact",
    "redact_secrets",
    "register_secret",
    "scrub",
    "secret_forms",
]

REDACTED = "[REDACTED]"

#: Secrets shorter than this are not scrubbed: replacing "a" everywhere would
#: mangle every line, and no real HipChat token is that short.
_MIN_SECRET_LENGTH = 4

_PERCENT = re.compile(r"%[0-9A-F]{2}")
#: Every form of every registered secret, longest first (see :func:`secret_forms`).
_secrets: tuple[str, ...] = ()
#: ``_secrets`` as one pattern; None while there are none.
_pattern: re.Pattern[str] | None = None


@functools.lru_cache(maxsize=8)
def secret_forms(value: str) -> tuple[str, ...]:
    """The texts ``value`` may appear as in a log line or error, longest first.

    As typed (so also inside ``Bearer <value>``), and as escaped on its way
    out: ``repr`` of the string and of its UTF-8 bytes (``b'Bearer tok\\n'``
    in an httpx error), JSON string escapes (``ensure_ascii`` on and off),
    percent-encoding as a path segment or a form value, and the string
    escapes applied once more to each of those (an error quoting an error).
    Redaction matches the hex digits of percent-encoding in either case.
    Forms shorter than the minimum secret length are left out; none at all
    for a ``value`` shorter than that.
    """
    if len(value) < _MIN_SECRET_LENGTH:
        return ()
    forms = {value, *_quoted(value), *_percent_encoded(value)}
    forms.update(quoted for form in list(forms) for quoted in _quoted(form))
    kept = (form for form in forms if len(form) >= _MIN_SECRET_LENGTH)
    return tuple(sorted(kept, key=lambda form: (-len(form), form)))


def _quoted(value: str) -> set[str]:
    return {
        repr(value)[1:-1],
        repr(value.encode("utf-8", "backslashreplace"))[2:-1],
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
    }


def _percent_encoded(value: str) -> set[str]:
    # surrogatepass: a lone surrogate must not make redaction itself raise.
    return {
        quote(value, safe="", errors="surrogatepass"),
        quote(value, errors="surrogatepass"),
        quote_plus(value, errors="surrogatepass"),
    }


def _compile(forms: tuple[str, ...]) -> re.Pattern[str] | None:
    if not forms:
        return None
    alternatives = []
    for form in forms:
        pieces = _PERCENT.split(form)
        escapes = [f"%(?i:{m[0][1:]})" for m in _PERCENT.finditer(form)]
        parts = [re.escape(pieces[0])]
        for escape, piece in zip(escapes, pieces[1:], strict=True):
            parts += [escape, re.escape(piece)]
        alternatives.append("".join(parts))
    return re.compile("|".join(alternatives))


@functools.lru_cache(maxsize=8)
def _pattern_for(value: str) -> re.Pattern[str] | None:
    return _compile(secret_forms(value))


def scrub(text: str, value: str, replacement: str = REDACTED) -> str:
    """Return ``text`` with every form of ``value`` (see :func:`secret_forms`) replaced."""
    pattern = _pattern_for(value)
    return text if pattern is None else pattern.sub(replacement, text)


def register_secret(value: str) -> None:
    """Make ``value``, in each of its :func:`secret_forms`, unprintable in every log line."""
    global _secrets, _pattern
    forms = set(_secrets).union(secret_forms(value))
    _secrets = tuple(sorted(forms, key=lambda form: (-len(form), form)))
    _pattern = _compile(_secrets)


def redact(text: str) -> str:
    """Return ``text`` with every form of every registered secret replaced."""
    return text if _pattern is None else _pattern.sub(REDACTED, text)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    if isinstance(value, bytes | bytearray):
        return redact(bytes(value).decode("utf-8", "backslashreplace"))
    if isinstance(value, int | float | bool) or value is None:
        return value
    # Anything else is rendered with str()/repr() later; scrub that text now.
    return redact(str(value))


def redact_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: scrub registered secrets from every value."""
    if not _secrets:
        return event_dict
    for key, value in event_dict.items():
        event_dict[key] = _scrub(value)
    return event_dict


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]


def configure(
    level: str = "info",
    *,
    json: bool | None = None,
    stream: TextIO | None = None,
    cache: bool = True,
) -> None:
    """Configure structlog (and stdlib logging for httpx/httpcore) once.

    ``json=None`` picks JSON lines unless ``stream`` is a TTY. ``cache=False``
    keeps loggers reconfigurable (tests).
    """
    out = stream if stream is not None else sys.stdout
    if isinstance(out, io.TextIOWrapper):
        # A log line must never raise: text the stream cannot encode (a lone
        # surrogate from input, anything on an ASCII locale) is written escaped.
        out.reconfigure(errors="backslashreplace")
    if json is None:
        json = not out.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*_shared_processors(), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=cache,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                *_shared_processors(),
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    for name in ("httpx", "httpcore", "hpack"):
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
