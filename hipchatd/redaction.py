"""Secret redaction: one marker, one set of forms, one object per owner. Pure.

A :class:`Redactor` holds the secrets (the HipChat API token) that must never
be printed and replaces each of them, in every form it takes on its way out
(:func:`secret_forms`), with :data:`REDACTED`. The log processor uses the
daemon's redactor (``hipchatd.ops.logconfig``), and looks for the forms in a
rendered JSON line first (:meth:`Redactor.in_json`), so a line that holds
none costs one search instead of one per value; the HipChat client's error texts,
and through them the spool's ``last_error``, use :func:`scrub` with the token
they were sent with. Every module that prints a secret-bearing text goes
through here, so the marker is spelled one way everywhere.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

from hipchatd import jsontext

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "Redactor", "scrub", "secret_forms"]

#: Replaces a secret wherever it shows up: log values, error texts, printed lines.
REDACTED = "[REDACTED]"

#: Secrets shorter than this are not scrubbed: replacing "a" everywhere would
#: mangle every line, and no real HipChat token is that short.
MIN_SECRET_LENGTH = 4

_PERCENT = re.compile(r"%[0-9A-F]{2}")


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
    if len(value) < MIN_SECRET_LENGTH:
        return ()
    forms = {value, *_quoted(value), *_percent_encoded(value)}
    forms.update(quoted for form in list(forms) for quoted in _quoted(form))
    kept = (form for form in forms if len(form) >= MIN_SECRET_LENGTH)
    return _longest_first(kept)


class Redactor:
    """Replaces every form of every added secret with :data:`REDACTED`.

    Each owner (a daemon's log chain, a test) has its own, so secrets added
    for one never change what another prints; :meth:`reset` forgets them all.
    """

    __slots__ = ("_forms", "_in_json", "_pattern")

    def __init__(self, *secrets: str) -> None:
        self._forms: tuple[str, ...] = ()
        #: ``_forms`` as one pattern; None while there are none.
        self._pattern: re.Pattern[str] | None = None
        #: ``_forms`` as they read inside a JSON string, as one pattern on UTF-8 bytes.
        self._in_json: re.Pattern[bytes] | None = None
        for secret in secrets:
            self.add(secret)

    def __bool__(self) -> bool:
        """Whether there is anything to redact (a secret of at least the minimum length)."""
        return self._pattern is not None

    def add(self, secret: str) -> None:
        """Make ``secret``, in each of its :func:`secret_forms`, unprintable from now on."""
        self._forms = _longest_first(set(self._forms).union(secret_forms(secret)))
        self._pattern = _compile(self._forms)
        in_json = _compile(
            _longest_first({text for form in self._forms for text in _in_json(form)})
        )
        self._in_json = None if in_json is None else re.compile(in_json.pattern.encode())

    def reset(self) -> None:
        """Forget every secret added so far."""
        self._forms = ()
        self._pattern = None
        self._in_json = None

    def redact(self, text: str) -> str:
        """Return ``text`` with every form of every added secret replaced."""
        return text if self._pattern is None else self._pattern.sub(REDACTED, text)

    def in_json(self, line: bytes) -> bool:
        """Whether a JSON text :func:`hipchatd.jsontext.dumps` wrote may hold a form of a secret.

        JSON escapes a string one character at a time, so a string that
        holds a form holds it escaped once written: where no escaped form
        shows up in ``line``, :meth:`redact` would change none of the strings
        it was written from. A hit may be a false one (a key, or a form
        across two values): the caller redacts the values and writes again.
        """
        return self._in_json is not None and self._in_json.search(line) is not None


def scrub(text: str, secret: str) -> str:
    """Return ``text`` with every form of ``secret`` (see :func:`secret_forms`) replaced."""
    return _redactor_for(secret).redact(text)


@functools.lru_cache(maxsize=8)
def _redactor_for(secret: str) -> Redactor:
    # A client scrubs every error with the same token: compile its pattern once.
    return Redactor(secret)


def _longest_first(forms: Iterable[str]) -> tuple[str, ...]:
    # Longest first: a form that contains another must win the alternation.
    return tuple(sorted(forms, key=lambda form: (-len(form), form)))


def _quoted(value: str) -> set[str]:
    return {
        repr(value)[1:-1],
        repr(value.encode("utf-8", "backslashreplace"))[2:-1],
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
    }


def _in_json(form: str) -> set[str]:
    # As msgspec escapes it, and as json does when msgspec refuses the line
    # (a lone surrogate anywhere in it), written out as jsontext does.
    return {
        jsontext.dumps(form)[1:-1].decode(),
        json.dumps(form, ensure_ascii=False)[1:-1].encode("utf-8", "backslashreplace").decode(),
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
