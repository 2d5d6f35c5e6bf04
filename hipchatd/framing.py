"""Bytes -> JSON documents: read-to-EOF, NDJSON / concatenated JSON, length-prefixed.

Sans-IO and synchronous: the server feeds received chunks in and gets
documents out. A chunk boundary anywhere gives the same documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hipchatd.config import Framing
from hipchatd.errors import FrameTooLarge

__all__ = ["Decoder", "Document", "FrameTooLarge", "Rejected", "preview"]


@dataclass(frozen=True, slots=True)
class Document:
    """One decoded JSON value and the number of bytes it came from."""

    value: Any
    nbytes: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame that is not JSON text: why, its size, and an escaped, truncated preview."""

    reason: str
    nbytes: int
    preview: str


def preview(data: bytes, limit: int = 120) -> str:
    """An escaped, truncated, log-safe rendering of ``data``."""
    raise NotImplementedError


class Decoder:
    """Incremental decoder for one connection or datagram.

    ``mode``: ``auto`` (the first byte decides: 0x00 -> length-prefixed,
    anything else -> JSON text), ``eof`` (the whole stream is one document),
    ``newline`` (one document per line), ``length`` (4-byte big-endian length
    then that many bytes).
    """

    def __init__(self, mode: Framing, max_frame_bytes: int) -> None:
        raise NotImplementedError

    def feed(self, data: bytes) -> list[Document | Rejected]:
        """Consume a chunk; return the frames it completed.

        Raises FrameTooLarge when a frame grows past ``max_frame_bytes``; the
        caller closes the connection. The decoder is unusable afterwards.
        """
        raise NotImplementedError

    def close(self) -> list[Document | Rejected]:
        """The peer closed: return what the remaining bytes hold."""
        raise NotImplementedError
