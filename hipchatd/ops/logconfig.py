"""structlog setup and secret redaction.

Configured once, before ``trio.run``: JSON lines when stdout is not a TTY,
console rendering on a TTY. Library modules only call
``structlog.get_logger()``.

What a line is about is bound once with :mod:`structlog.contextvars`, in
the task that handles it, not passed to each call: ``peer`` and ``conn_id``
for a connection or a datagram (:mod:`hipchatd.ingest.listeners`);
``event_id`` (with ``source`` and ``check``) for an event while it is
accepted (:mod:`hipchatd.ingest.intake`), and ``event_id`` while an
attempt delivers it (:mod:`hipchatd.delivery.lanes`). ``merge_contextvars`` adds them to every
line, stdlib ones included; a key passed to the call wins. trio copies the
context into each task it starts, so a binding reaches the tasks started
under it and ends with its own.

Every registered secret is replaced by
``[REDACTED]`` in every value of every log line, exception text included,
before a renderer sees it; httpx and httpcore's stdlib logs go through the
same chain at WARNING. A secret is caught in the forms it takes on its way
out, not only as typed (:func:`hipchatd.redaction.secret_forms`).
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from hipchatd.config import Config, ProxyUrl
from hipchatd.redaction import REDACTED, Redactor, scrub, secret_forms

__all__ = [
    "REDACTED",
    "SECRETS",
    "configure",
    "redact",
    "redact_secrets",
    "register_config_secrets",
    "register_secret",
    "reset_secrets",
    "scrub",
    "secret_forms",
]

#: The secrets this process never logs. One per process because structlog's
#: configuration is too; tests start clean with :func:`reset_secrets`.
SECRETS = Redactor()


def register_secret(value: str) -> None:
    """Make ``value``, in each of its :func:`secret_forms`, unprintable in every log line."""
    SECRETS.add(value)


def register_config_secrets(config: Config) -> None:
    """Register every secret ``config`` holds: the API token, the spool's DSN and its
    password, and the proxy's credentials (as written and percent-decoded)."""
    register_secret(config.hipchat.api_token.reveal())
    for secret in config.daemon.spool.secrets():
        register_secret(secret)
    proxy = config.hipchat.proxy
    if isinstance(proxy, ProxyUrl) and proxy.credentials is not None:
        register_secret(proxy.credentials.reveal())
        auth = proxy.auth()
        if auth is not None and auth[1]:
            register_secret(auth[1])


def reset_secrets() -> None:
    """Forget every registered secret (a test's, before the next one starts)."""
    SECRETS.reset()


def redact(text: str) -> str:
    """Return ``text`` with every form of every registered secret replaced."""
    return SECRETS.redact(text)


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
    if not SECRETS:
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
