"""Bytes -> JSON documents: read-to-EOF, NDJSON / concatenated JSON, length-prefixed.

Sans-IO and synchronous: the server feeds received chunks in and gets
documents out. A chunk boundary anywhere gives the same documents.

Sensu writes one compact JSON event per connection with no delimiter and then
closes (Classic ``lib/sensu/server/handle.rb``, Go
``backend/pipeline/handler/legacy.go``), so the default ``auto`` mode treats the
stream as JSON text: a document is complete when its outermost bracket closes,
whatever follows. That also covers NDJSON, ``{..}{..}`` and pretty-printed JSON.

How JSON text is split, and why it stays O(n):

* Fast path. Between documents, a line that is one whole document (Sensu's
  one event per connection, an NDJSON line) is parsed from its bytes by
  msgspec (:func:`hipchatd.jsontext.loads_utf8`, with json's answers): a line
  that starts with ``{`` or ``[`` and, but for whitespace, ends with ``}`` or
  ``]``, and parses. Anything else (two documents on one line, pretty-printed
  JSON, invalid text) goes to the C JSON parser (``raw_decode``), which finds
  each document's end and its value in one pass. A 3 KB event that arrives in
  one chunk costs one UTF-8 decode and one parse. A last line that the chunk
  cuts is left to the slow path at once, without a parse that would fail.
  The fast path may start at most twice the chunk's size per ``feed``, and
  reads what it starts a few times at most (a line that msgspec and json
  refuse is read again by the C parser), so a chunk full of invalid
  documents cannot make it quadratic.
* Slow path. When the parser gives up (the document is cut by the chunk
  boundary, or is invalid), a bracket scanner takes over for that document. It
  keeps its state across ``feed`` calls (depth, inside-string, and a position
  that is never rescanned) and hops with compiled regexes: outside strings it
  skips whole strings and everything but brackets in one match, so Python code
  runs once per bracket, never per byte. When the depth returns to 0 the
  frame is parsed.

Both paths cut frames at the same byte, and every frame is decoded by the same
rules, so the result does not depend on where the chunks were split.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from hipchatd.errors import FrameTooLarge
from hipchatd.jsontext import loads_utf8
from hipchatd.reasons import RejectReason

__all__ = ["Decoder", "Document", "Emit", "FrameTooLarge", "Framing", "Rejected", "preview"]

#: How a TCP stream is cut into frames (the ``hipchatd.framing`` setting).
Framing = Literal["auto", "eof", "newline", "length"]


@dataclass(frozen=True, slots=True)
class Document:
    """One decoded JSON value, the number of bytes it came from, and its JSON text."""

    value: Any
    nbytes: int
    #: the frame as received (decoded UTF-8): what the spool keeps, without re-encoding.
    text: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame that is not JSON text: why, its size, and an escaped, truncated preview.

    ``kind`` is the metric label (``invalid_json``, ``not_utf8``, ``truncated``);
    ``reason`` is the same in words for the log: what, and where in the frame.
    """

    kind: RejectReason
    reason: str
    nbytes: int
    preview: str


#: Takes each frame a :class:`Decoder` completes (:meth:`Decoder.feed_each`).
Emit = Callable[[Document | Rejected], object]


#: The four JSON whitespace characters (RFC 8259 §2); only these separate documents.
_JSON_WS: Final = b" \t\r\n"
_NON_WS: Final = re.compile(rb"[^ \t\r\n]")
_NON_WS_TEXT: Final = re.compile(r"[^ \t\r\n]")
# Outside strings: everything but brackets and quotes, and whole closed strings,
# in one match. It stops at a bracket, at the quote of a string the buffer does
# not yet close, or at the end. UTF-8 continuation bytes are never ASCII, so a
# chunk boundary inside a character cannot fake a bracket or a quote.
_OUTSIDE: Final = re.compile(rb'(?:[^{}\[\]"]++|"(?:[^"\\]++|\\.)*+")*+', re.DOTALL)
# Inside a string: stops at the closing quote, at the end, or before a lone
# trailing backslash (its escaped byte has not arrived yet).
_INSIDE: Final = re.compile(rb'(?:[^"\\]++|\\.)*+', re.DOTALL)
_OPEN_BRACE, _OPEN_BRACKET, _QUOTE = 0x7B, 0x5B, 0x22
_OPENERS: Final = b"{["
_CLOSERS: Final = b"}]"

#: Bytes in a length prefix: unsigned 32-bit big-endian.
_PREFIX_BYTES: Final = 4

_MODES: Final = frozenset({"auto", "eof", "newline", "length"})
# Scanner states in JSON text mode.
_BETWEEN, _CONTAINER, _SCALAR = 0, 1, 2
# Lifecycle.
_OPEN, _CLOSED, _FAILED = 0, 1, 2

_raw_decode = json.JSONDecoder().raw_decode

_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def preview(data: bytes | str, limit: int = 120) -> str:
    """An escaped, truncated, log-safe rendering of ``data``; never raises.

    Bytes: the first ``limit`` bytes are decoded as UTF-8 with invalid bytes
    shown as ``\\xNN``. Text: the first ``limit`` characters. Every
    non-printable character (newlines, controls, line separators, lone
    surrogates) is escaped, so the result never breaks a log line and always
    encodes as UTF-8. When ``data`` is longer, ``…(+N bytes)`` (or
    ``characters``) says how much was cut.
    """
    if isinstance(data, str):
        text, unit = data[:limit], "characters"
    else:
        text, unit = data[:limit].decode("utf-8", "backslashreplace"), "bytes"
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else _escape(ch) for ch in text)
    if len(data) > limit:
        text += f"…(+{len(data) - limit} {unit})"
    return text


def _escape(ch: str) -> str:
    named = _ESCAPES.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _reject(kind: RejectReason, reason: str, frame: bytes | bytearray) -> Rejected:
    data = bytes(frame)
    return Rejected(kind, reason, len(data), preview(data))


def _decode(frame: bytes | bytearray) -> Document | Rejected:
    """One complete frame -> a Document, or a Rejected saying why not."""
    try:
        text = frame.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _reject(
            RejectReason.NOT_UTF8, f"not UTF-8: {exc.reason} at offset {exc.start}", frame
        )
    try:
        value = loads_utf8(frame, text)
    except json.JSONDecodeError as exc:
        return _reject(
            RejectReason.INVALID_JSON,
            f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            frame,
        )
    except ValueError as exc:  # e.g. an integer over sys.get_int_max_str_digits()
        return _reject(RejectReason.INVALID_JSON, f"invalid JSON: {exc}", frame)
    except RecursionError:
        return _reject(RejectReason.INVALID_JSON, "invalid JSON: nested too deeply", frame)
    return Document(value, len(frame), text)


class Decoder:
    """Incremental decoder for one connection or datagram.

    ``mode``: ``auto`` (the first byte decides: 0x00 -> length-prefixed,
    anything else -> JSON text), ``eof`` (the whole stream is one document),
    ``newline`` (one document per line), ``length`` (4-byte big-endian length
    then that many bytes).

    JSON text is what Sensu sends: one document, or several back to back
    (NDJSON, concatenated, pretty-printed). A document ends when its outermost
    bracket closes. Text that does not start with ``{`` or ``[`` (a bare
    scalar, ``only_check_output`` text, a stray ``}``) runs to the end of its
    line and becomes a Document if it parses, else a Rejected; decoding then
    resumes on the next line.

    ``nbytes`` counts the frame's own bytes: not the separating whitespace, the
    line terminator, or a length prefix. Empty and whitespace-only input gives
    no frames in every mode. A frame over ``max_frame_bytes`` raises
    :class:`FrameTooLarge`, whether it completed within one chunk or not.
    Once ``close()`` has returned or ``FrameTooLarge`` was raised, every
    method raises ``RuntimeError``.
    """

    __slots__ = ("_buf", "_lifecycle", "_limit", "_mode", "_pos", "_text")

    def __init__(self, mode: Framing, max_frame_bytes: int) -> None:
        if mode not in _MODES:
            raise ValueError(f"unknown framing mode {mode!r}")
        # "" = auto, not decided yet; "json" = auto, decided for JSON text.
        self._mode: str = "" if mode == "auto" else mode
        self._limit = max_frame_bytes
        self._lifecycle = _OPEN
        # eof, newline and length frames; JSON text keeps its own buffer.
        self._buf = bytearray()
        # newline: the bytes before _buf[_pos] hold no newline.
        self._pos = 0
        #: the JSON text cutter, made once the mode is JSON text.
        self._text: _JsonText | None = None

    def feed(self, data: bytes) -> list[Document | Rejected]:
        """Consume a chunk; return the frames it completed.

        Raises FrameTooLarge when a frame grows past ``max_frame_bytes``, with
        the frames completed before it in the exception's ``frames``; the
        caller handles those and closes the connection. The decoder is
        unusable afterwards.
        """
        out: list[Document | Rejected] = []
        try:
            self.feed_each(data, out.append)
        except FrameTooLarge as exc:
            # Frames the chunk completed before the oversized one are good input.
            exc.frames = out
            raise
        return out

    def feed_each(self, data: bytes, emit: Emit) -> None:
        """Consume a chunk; hand each frame it completes to ``emit`` as soon as it is cut.

        What :meth:`feed` returns, one frame at a time, before the next is
        decoded: a reader that handles each frame in ``emit`` never holds a
        chunk's decoded documents at once (a chunk of a stream holds dozens,
        and the cyclic garbage collector would move them all to its older
        generations). ``emit`` must not raise, nor use this decoder.

        Raises FrameTooLarge as :meth:`feed` does; the frames before the
        oversized one were emitted, and its ``frames`` is empty.
        """
        self._check_open()
        if not data:
            return
        mode = self._mode
        if not mode:
            # A length prefix below 16 MiB starts with 0x00; JSON text never does.
            mode = self._mode = "length" if data[0] == 0 else "json"
        try:
            if mode == "json":
                text = self._text
                if text is None:
                    text = self._text = _JsonText(self._limit)
                text.feed(data, emit)
            elif mode == "length":
                self._feed_length(data, emit)
            elif mode == "newline":
                self._feed_newline(data, emit)
            else:
                self._feed_eof(data)
        except FrameTooLarge:
            self._lifecycle = _FAILED
            self._buf = bytearray()
            self._text = None
            raise

    def close(self) -> list[Document | Rejected]:
        """The peer closed: return what the remaining bytes hold.

        An unfinished frame becomes a Rejected (JSON text, length-prefixed) or
        a last Document (eof, newline, a bare scalar line) if it parses.
        """
        self._check_open()
        self._lifecycle = _CLOSED
        if self._text is not None:
            text, self._text = self._text, None
            return text.close()
        buf, self._buf = self._buf, bytearray()
        mode = self._mode
        if mode == "length":
            return _close_length(buf)
        if _NON_WS.search(buf) is None:
            return []
        if mode == "newline":
            return [_decode(buf[:-1] if buf.endswith(b"\r") else buf)]
        return [_decode(buf)]

    def _check_open(self) -> None:
        if self._lifecycle == _FAILED:
            raise RuntimeError("decoder is unusable after FrameTooLarge")
        if self._lifecycle == _CLOSED:
            raise RuntimeError("decoder is closed")

    # -- eof, newline, length ------------------------------------------------

    def _feed_eof(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > self._limit:
            raise FrameTooLarge(len(self._buf), self._limit)

    def _feed_newline(self, data: bytes, emit: Emit) -> None:
        buf = self._buf
        buf += data
        limit = self._limit
        start = 0
        # Bytes before _pos were searched for a newline by an earlier feed.
        pos = self._pos
        while (nl := buf.find(b"\n", pos)) >= 0:
            if nl - start > limit:
                raise FrameTooLarge(nl - start, limit)
            end = nl - 1 if nl > start and buf[nl - 1] == 0x0D else nl
            if _NON_WS.search(buf, start, end) is not None:
                emit(_decode(buf[start:end]))
            start = pos = nl + 1
        if len(buf) - start > limit:
            raise FrameTooLarge(len(buf) - start, limit)
        del buf[:start]
        self._pos = len(buf)

    def _feed_length(self, data: bytes, emit: Emit) -> None:
        buf = self._buf
        buf += data
        limit = self._limit
        off, n = 0, len(buf)
        while n - off >= _PREFIX_BYTES:
            size = int.from_bytes(buf[off : off + _PREFIX_BYTES], "big")
            if size > limit:
                raise FrameTooLarge(size, limit)
            end = off + _PREFIX_BYTES + size
            if end > n:
                break
            if size:
                emit(_decode(buf[off + _PREFIX_BYTES : end]))
            else:
                emit(Rejected(RejectReason.TRUNCATED, "empty frame", 0, ""))
            off = end
        del buf[:off]


class _JsonText:
    """The JSON text cutter: Sensu's framing, fast path and slow path (module docstring).

    Fed the chunks of one stream once its mode is JSON text; :meth:`close`
    ends the stream. Raises FrameTooLarge as :class:`Decoder` documents;
    the Decoder then drops it.
    """

    __slots__ = ("_buf", "_depth", "_in_string", "_limit", "_pos", "_start", "_state")

    def __init__(self, max_frame_bytes: int) -> None:
        self._limit = max_frame_bytes
        self._buf = bytearray()
        # The current frame starts at _buf[_start]; scanning resumes at _pos.
        self._start = 0
        self._pos = 0
        self._state = _BETWEEN
        self._depth = 0
        self._in_string = False

    def feed(self, data: bytes, emit: Emit) -> None:
        """Consume a chunk; hand each frame it completes to ``emit``, in order."""
        # The fast path may read at most this many bytes in this call (module docstring).
        budget = 2 * len(data)
        buf = self._buf
        if not buf and self._state == _BETWEEN:
            # Nothing pending: parse straight from the chunk and keep only the rest.
            m = _NON_WS.search(data)
            if m is None:
                return
            budget -= len(data) - m.start()
            stop = self._fast(data, m.start(), emit)
            if stop == len(data):
                return
            buf += memoryview(data)[stop:]
            self._begin(0)
        else:
            buf += data
        self._scan(emit, budget)

    def _begin(self, start: int) -> None:
        """Start the slow path on a frame whose first byte is ``_buf[start]``."""
        self._start = start
        if self._buf[start] in (_OPEN_BRACE, _OPEN_BRACKET):
            self._state = _CONTAINER
            self._depth = 1
            self._in_string = False
            self._pos = start + 1
        else:
            self._state = _SCALAR
            self._pos = start

    def _fast(self, src: bytes | bytearray, start: int, emit: Emit) -> int:
        """Parse whole frames from ``src[start:]``: whole-document lines, then the C parser.

        ``src[start]`` is not whitespace. Returns the offset of the first frame
        it could not finish (the slow path takes it from there), or ``len(src)``.
        """
        limit = self._limit
        n = len(src)
        pos = start
        while src[pos] in _OPENERS:
            nl = src.find(b"\n", pos)
            if nl < 0:
                nl = n
            # A line that is one document ends, but for whitespace, with its closing bracket.
            frame = src[pos:nl].rstrip(_JSON_WS)
            if frame[-1] not in _CLOSERS:
                if nl == n:
                    # Cut by the chunk boundary (or not JSON): the slow path reads it once.
                    return pos
                break
            try:
                text = frame.decode("utf-8")
                value = loads_utf8(frame, text)
            except (ValueError, RecursionError):
                # Not one document: the C parser says where it ends, or the slow path why not.
                break
            size = len(frame)
            if size > limit:
                raise FrameTooLarge(size, limit)
            emit(Document(value, size, text))
            # Only whitespace lies between the frame and its newline: the next line is next.
            pos = nl + 1
            if pos >= n:
                return n
            if src[pos] not in _OPENERS:
                m = _NON_WS.search(src, pos)
                if m is None:
                    return n
                pos = m.start()
        return self._parse(src, pos, emit)

    def _parse(self, src: bytes | bytearray, start: int, emit: Emit) -> int:
        """Parse whole frames from ``src[start:]`` with the C parser; returns as :meth:`_fast`."""
        limit = self._limit
        stop_byte = len(src)
        try:
            text = src[start:].decode("utf-8")
        except UnicodeDecodeError as exc:
            # Parse the valid prefix; the slow path rejects the frame holding the bad byte.
            stop_byte = start + exc.start
            text = src[start:stop_byte].decode("utf-8")
        ascii_only = text.isascii()
        byte = start
        idx = 0
        while (m := _NON_WS_TEXT.search(text, idx)) is not None:
            byte += m.start() - idx  # whitespace is ASCII: one byte per character
            idx = m.start()
            if text[idx] in "{[":
                try:
                    value, end = _raw_decode(text, idx)
                except (ValueError, RecursionError):
                    return byte
                size = end - idx if ascii_only else len(text[idx:end].encode())
                if size > limit:
                    raise FrameTooLarge(size, limit)
                emit(Document(value, size, text[idx:end]))
                byte += size
                idx = end
            else:
                nl = text.find("\n", idx)
                if nl < 0:
                    return byte
                line = text[idx:nl].encode()
                if len(line) > limit:
                    raise FrameTooLarge(len(line), limit)
                emit(_decode(line.rstrip(_JSON_WS)))
                byte += len(line) + 1
                idx = nl + 1
        return stop_byte

    def _scan(self, emit: Emit, budget: int) -> None:
        """The slow path over ``_buf``, resuming from the saved scanner state."""
        buf = self._buf
        n = len(buf)
        limit = self._limit
        state, start, pos = self._state, self._start, self._pos
        depth, in_string = self._depth, self._in_string
        while True:
            if state == _BETWEEN:
                m = _NON_WS.search(buf, pos)
                if m is None:
                    start = pos = n
                    break
                start = m.start()
                if n - start <= budget:
                    budget -= n - start
                    start = self._fast(buf, start, emit)
                    if start == n:
                        pos = n
                        break
                self._begin(start)
                state, pos, depth, in_string = self._state, self._pos, self._depth, False
            elif state == _CONTAINER:
                if in_string:
                    m = _INSIDE.match(buf, pos)
                    assert m is not None  # the pattern matches the empty string
                    end = m.end()
                    if end >= n or buf[end] != _QUOTE:
                        pos = end
                        if n - start > limit:
                            raise FrameTooLarge(n - start, limit)
                        break
                    in_string = False
                    pos = end + 1
                m = _OUTSIDE.match(buf, pos)
                assert m is not None  # the pattern matches the empty string
                end = m.end()
                if end >= n:
                    pos = n
                    if n - start > limit:
                        raise FrameTooLarge(n - start, limit)
                    break
                pos = end + 1
                byte = buf[end]
                if byte == _QUOTE:
                    in_string = True
                elif byte in (_OPEN_BRACE, _OPEN_BRACKET):
                    depth += 1
                else:
                    depth -= 1
                    if depth == 0:
                        if pos - start > limit:
                            raise FrameTooLarge(pos - start, limit)
                        emit(_decode(buf[start:pos]))
                        state = _BETWEEN
            else:
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    pos = n
                    if n - start > limit:
                        raise FrameTooLarge(n - start, limit)
                    break
                if nl - start > limit:
                    raise FrameTooLarge(nl - start, limit)
                emit(_decode(buf[start:nl].rstrip(_JSON_WS)))
                state = _BETWEEN
                pos = nl + 1
        # Drop consumed bytes: bytearray deletes from the front without moving the rest.
        del buf[:start]
        self._state, self._start, self._pos = state, 0, pos - start
        self._depth, self._in_string = depth, in_string

    def close(self) -> list[Document | Rejected]:
        """The stream ended: an unfinished frame is a Rejected, or a Document if a bare scalar."""
        buf, self._buf = self._buf, bytearray()
        state = self._state
        if state == _SCALAR:
            return [_decode(buf.rstrip(_JSON_WS))]
        if state == _CONTAINER:
            where = " inside a string" if self._in_string else ""
            return [
                _reject(
                    RejectReason.TRUNCATED,
                    f"incomplete JSON at end of stream: {self._depth} unclosed bracket(s){where}",
                    buf,
                )
            ]
        return []


def _close_length(buf: bytearray) -> list[Document | Rejected]:
    n = len(buf)
    if n == 0:
        return []
    if n < _PREFIX_BYTES:
        return [
            _reject(
                RejectReason.TRUNCATED,
                f"truncated length prefix: got {n} of {_PREFIX_BYTES} bytes",
                buf,
            )
        ]
    size = int.from_bytes(buf[:_PREFIX_BYTES], "big")
    payload = buf[_PREFIX_BYTES:]
    return [
        _reject(
            RejectReason.TRUNCATED,
            f"truncated length-prefixed frame: got {len(payload)} of {size} bytes",
            payload,
        )
    ]
