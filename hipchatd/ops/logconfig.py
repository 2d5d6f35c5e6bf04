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
before the line is written; httpx and httpcore's stdlib logs go through the
same chain at WARNING. A secret is caught in the forms it takes on its way
out, not only as typed (:func:`hipchatd.redaction.secret_forms`).

A JSON line costs what the daemon can afford once per event: it is
written by :func:`hipchatd.jsontext.dumps` as bytes straight to the
stream's binary layer (structlog's ``BytesLogger``), and searched for the
secrets' forms once, as a whole (:func:`render_json`); only a line that
may hold one has its values redacted and is written again. The console
renderer (a TTY) gets values already redacted (:func:`redact_secrets`).
The daemon's trio run holds its JSON lines and writes them together when it
next waits for I/O (:class:`LineFlush`): one system call for a round's lines,
not two per line; a line waits at most one scheduling round.
"""

from __future__ import annotations

import functools
import io
import logging
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any, BinaryIO, TextIO, cast

import structlog
import trio

from hipchatd.config import Config, ProxyUrl
from hipchatd.jsontext import dumps
from hipchatd.redaction import REDACTED, Redactor, scrub, secret_forms

__all__ = [
    "REDACTED",
    "SECRETS",
    "LineFlush",
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


#: Value types a line writes as they are; a value of any other type is walked or turned to text.
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _scrub(value: Any) -> Any:
    if type(value) is str:
        return redact(value)
    if isinstance(value, dict):
        return {redact(k) if type(k) is str else k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    if isinstance(value, str | bytes | bytearray):
        return redact(_plain(value))
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


def _plain(value: Any) -> Any:
    """``value`` in JSON's types, as :func:`_scrub` leaves it but with nothing redacted.

    Containers are walked, bytes decoded (undecodable bytes escaped), a
    subclass of a JSON type written as its base type, anything else as its
    ``str()``; a key JSON cannot have becomes its ``str()``.
    """
    if type(value) in _SCALARS:
        return value
    if isinstance(value, dict):
        return {k if type(k) in _SCALARS else str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        return float.__float__(value)
    return str(value)


def _text(value: Any) -> str:
    # Only for a line whose values could not all be written as JSON.
    try:
        return str(value)
    except Exception:  # a line must never raise: name what could not be shown
        return f"<unprintable {type(value).__name__}>"


def render_json(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> bytes:
    """structlog renderer: the line as compact JSON (UTF-8 bytes), every registered secret redacted.

    The values are written as they are (see :func:`_plain` for those JSON
    has no type for) and the written line is searched for the secrets' forms
    once (:meth:`hipchatd.redaction.Redactor.in_json`); only a line that may
    hold one has its values redacted and is written again. Never raises: a
    line whose values cannot be written (one refers to itself, a ``str()``
    that raises) is written with each value as text.
    """
    try:
        for key, value in event_dict.items():
            if type(value) not in _SCALARS:
                event_dict[key] = _plain(value)
        line = dumps(event_dict)
    except Exception:  # a line must never raise: write each value as text instead
        event_dict = {str(key): _text(value) for key, value in event_dict.items()}
        line = dumps(event_dict)
    if SECRETS.in_json(line):
        line = dumps({redact(key): _scrub(value) for key, value in event_dict.items()})
    return line


def _render_json_text(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
    # The stdlib handler writes text: the same line, decoded (it is UTF-8 by construction).
    return render_json(logger, method_name, event_dict).decode()


def iso_utc(ns: int) -> str:
    """``ns`` nanoseconds since the epoch, written as structlog's ISO UTC ``TimeStamper`` writes it.

    ``2026-11-26T19:54:34.684077Z``: microseconds truncated, and left out
    when zero (as ``datetime.isoformat`` does).
    """
    seconds, micros = divmod(ns // 1000, 1_000_000)
    whole = _whole_second(seconds)
    return f"{whole}.{micros:06d}Z" if micros else f"{whole}Z"


# Lines come many to a second: each second is formatted once.
@functools.lru_cache(maxsize=2)
def _whole_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def stamp(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: ``timestamp``, as :func:`iso_utc` writes the time now."""
    event_dict["timestamp"] = iso_utc(time.time_ns())
    return event_dict


# Not this module's frame: the stack shown is the caller's.
_stack_info = structlog.processors.StackInfoRenderer(additional_ignores=[__name__])


def stack_and_exception(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the stack and the exception a line asks for, rendered.

    ``StackInfoRenderer`` for ``stack_info``, then ``format_exc_info`` for
    ``exc_info``; a line that asks for neither (nearly all) costs two lookups.
    """
    if "stack_info" in event_dict:
        event_dict = _stack_info(logger, method_name, event_dict)
    if "exc_info" in event_dict:
        event_dict = structlog.processors.format_exc_info(logger, method_name, event_dict)
    return event_dict


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        stamp,
        stack_and_exception,
    ]


class _TextSink:
    """A binary file for a stream of text only (a test's ``StringIO``): decodes each line."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def write(self, data: bytes) -> int:
        return self._out.write(data.decode())

    def flush(self) -> None:
        self._out.flush()


def _binary(out: TextIO) -> BinaryIO:
    """Where JSON lines go as bytes: under ``out``'s text layer, or through it."""
    buffer = getattr(out, "buffer", None)
    if buffer is None:
        return cast(BinaryIO, _TextSink(out))
    # What the text layer holds goes first.
    out.flush()
    return cast(BinaryIO, buffer)


#: Bytes of lines held for the next round's write at most: past it they are written at once.
_MAX_HELD = 64 * 1024


class _Lines(structlog.BytesLogger):
    """The one logger of every JSON line: written at once, or held for :class:`LineFlush`.

    Lines logged on the thread of a trio run that :class:`LineFlush`
    instruments are held and written together when the run next waits for
    I/O. A line's ``write`` and ``flush`` are system calls that let the
    spool's worker thread take the interpreter: a delivered message's dozens
    of ``event.delivered`` lines are one. Lines from any other thread, or
    outside that run, are written at once, after those held.
    """

    __slots__ = ("_held", "_size", "holder")

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file)
        self._held: list[bytes] = []
        self._size = 0
        #: the thread whose lines wait for :meth:`flush`; None: every line is written at once.
        self.holder: int | None = None

    def msg(self, message: bytes) -> None:
        with self._lock:
            self._held.append(message)
            self._size += len(message)
            if self.holder != threading.get_ident() or self._size >= _MAX_HELD:
                self._write_held()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg

    def flush(self) -> None:
        """Write the lines held, if any."""
        if self._held:
            with self._lock:
                if self._held:
                    self._write_held()

    def _write_held(self) -> None:
        held, self._held, self._size = self._held, [], 0
        held.append(b"")
        try:
            self._write(b"\n".join(held))
            self._flush()
        except BaseException:
            # A stream that fails: each later line is written, and fails, where it is logged.
            self.holder = None
            raise


#: The configured JSON logger; None on a console (its lines are written at once).
_LINES: _Lines | None = None


class LineFlush(trio.abc.Instrument):
    """For ``trio.run(..., instruments=[LineFlush()])``: the run's lines go out once per round.

    A line logged in the run waits at most until the tasks that run with it
    have run, when the run waits for I/O; the rest are written when the run ends.
    """

    def before_run(self) -> None:
        if _LINES is not None:
            _LINES.holder = threading.get_ident()

    def before_io_wait(self, timeout: float) -> None:
        if _LINES is not None:
            _LINES.flush()

    def after_run(self) -> None:
        if _LINES is not None:
            _LINES.holder = None
            _LINES.flush()


def _the(lines: _Lines, *args: Any) -> _Lines:
    return lines


class _StdlibHandler(logging.StreamHandler[TextIO]):
    """A stdlib line is written after the JSON lines held before it."""

    def emit(self, record: logging.LogRecord) -> None:
        if _LINES is not None:
            _LINES.flush()
        super().emit(record)


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
    numeric = logging.getLevelNamesMapping()[level.upper()]
    global _LINES
    if _LINES is not None:
        _LINES.flush()
    _LINES = None
    if json:
        # structlog's advice for throughput: cached filtering loggers, and
        # bytes from a fast serializer straight to the binary stream
        # (https://www.structlog.org/en/stable/performance.html).
        chain = _shared_processors()
        final: list[Any] = [render_json]
        stdlib_final: list[Any] = [_render_json_text]
        _LINES = _Lines(_binary(out))
        # One logger for every module: the lines held are one sequence.
        factory: Any = functools.partial(_the, _LINES)
    else:
        chain = [*_shared_processors(), redact_secrets]
        final = stdlib_final = [structlog.dev.ConsoleRenderer(colors=out.isatty())]
        factory = structlog.PrintLoggerFactory(file=out)
    structlog.configure(
        processors=[*chain, *final],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=cache,
    )
    handler = _StdlibHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *chain],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *stdlib_final],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    for name in ("httpx", "httpcore", "hpack"):
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
