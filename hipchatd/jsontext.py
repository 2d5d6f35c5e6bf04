"""JSON text on the hot path: msgspec's speed, the json module's answers.

The one owner of msgspec. :func:`loads` gives exactly what :func:`json.loads`
gives, or raises exactly what it raises: msgspec parses first (integers of
any size stay integers, as in :mod:`json`), and whatever it refuses
(``NaN`` and ``Infinity``, numbers beyond a double, lone surrogates in
``\\u`` escapes, nesting past its recursion limit, invalid text) is handed
to :mod:`json`, which either accepts it as it always has or raises its own
error, with its own message naming the line and column. :func:`dumps`
writes compact UTF-8 JSON; what msgspec cannot write (lone surrogates, keys
that are not strings) is written by :mod:`json`.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

__all__ = ["dumps", "loads", "loads_utf8"]

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse one JSON text, as :func:`json.loads` would (and with its errors)."""
    try:
        return _decode(data)
    # msgspec raises its own UnicodeDecodeError on bytes that are not UTF-8: json names
    # the byte, or reads the bytes as json.detect_encoding() says.
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        pass
    if isinstance(data, memoryview):
        data = bytes(data)
    return json.loads(data)


def loads_utf8(data: bytes | bytearray, text: str) -> Any:
    """Parse ``text``, read from ``data``, its UTF-8 encoding: :func:`json.loads` of ``text``.

    For a caller that holds both, as a decoder of received frames does: msgspec
    reads the bytes (a non-ASCII ``text`` is not encoded again), and whatever it
    refuses is parsed by :mod:`json` from ``text``, with json's answer or error.
    Unlike ``json.loads(data)``, the bytes are never read as another encoding
    (a UTF-8 byte order mark, or a NUL byte among the first four, makes json
    guess UTF-16 or UTF-32).
    """
    try:
        return _decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        pass
    return json.loads(text)


def dumps(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes (``separators=(",", ":")``, non-ASCII kept as is).

    JSON has no ``NaN`` or infinities: a float that is one is written as ``null``.
    """
    try:
        return _encode(value)
    except (TypeError, ValueError, msgspec.EncodeError):
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8", "backslashreplace")
