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

__all__ = ["dumps", "loads"]

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse one JSON text, as :func:`json.loads` would (and with its errors)."""
    try:
        return _decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        pass
    if isinstance(data, memoryview):
        data = bytes(data)
    return json.loads(data)


def dumps(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes (``separators=(",", ":")``, non-ASCII kept as is).

    JSON has no ``NaN`` or infinities: a float that is one is written as ``null``.
    """
    try:
        return _encode(value)
    except (TypeError, ValueError, msgspec.EncodeError):
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8", "backslashreplace")
