"""Frames in, documents to the sink: rejections counted and logged, a fault boundary per frame.

Shared by the listeners and the intake: :func:`reject` (one counter, one
rate-limited WARNING line per piece of input not used), :class:`Frames`
(what a connection's decoder cuts, handed on frame by frame), and
:func:`log_context` (the context variables a connection and an event are
bound in, for every line logged meanwhile).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any

from structlog.contextvars import bind_contextvars

from hipchatd import boundary
from hipchatd.ingest.peers import warn_limited
from hipchatd.metrics import Metrics
from hipchatd.reasons import RejectReason
from hipchatd.sensu.framing import Decoder, Document, Rejected

__all__ = ["Frames", "Sink", "handle_frames", "log_context", "reject"]

#: sink(document, peer, transport): queue the document; must not block.
Sink = Callable[[Document, str, str], None]


def log_context(key: str) -> ContextVar[Any]:
    """The context variable :func:`structlog.contextvars.bind_contextvars` binds ``key`` in.

    ``var.set(value)`` and ``var.reset(token)`` are what ``bind_contextvars``
    and ``reset_contextvars`` do for one key, without their work per call (a
    mapping of tokens, a name formatted and looked up per key): for what is
    bound once per connection or per event.
    """
    token = bind_contextvars(**{key: None})[key]
    var = token.var
    var.reset(token)
    return var


def reject(
    metrics: Metrics,
    key: RejectReason,
    *,
    peer: str,
    transport: str,
    nbytes: int,
    reason: str,
    **extra: Any,
) -> None:
    """Count and log one piece of input that is not used: one counter, one WARNING line.

    ``key`` is the counter's label; ``reason`` says the same in words for the log.

    The line is written only while the peer host's share of the log lasts
    (:class:`hipchatd.ingest.peers.RejectLog`); the counter counts every rejection.
    """
    metrics.rejected[key].inc()
    warn_limited(
        metrics,
        "input.rejected",
        peer=peer,
        transport=transport,
        nbytes=nbytes,
        reason=reason,
        **extra,
    )


def handle_frames(
    frames: Sequence[Document | Rejected],
    sink: Sink,
    metrics: Metrics,
    peer: str,
    transport: str,
) -> None:
    """Hand each document to ``sink`` and reject the rest (:class:`Frames`)."""
    if not frames:
        return
    handle = Frames(sink, metrics, peer, transport)
    try:
        for frame in frames:
            handle(frame)
    finally:
        handle.count()


class Frames:
    """Takes the frames of one connection or datagram: documents to ``sink``, the rest rejected.

    Each frame is a fault boundary: an exception out of ``sink`` is a bug:
    it is reported once (ERROR with the traceback,
    ``hipchatd_internal_errors_total{where="frame"}``), that frame is
    dropped, and the following frames are handled as usual.
    """

    __slots__ = ("handed", "metrics", "peer", "sink", "transport")

    def __init__(self, sink: Sink, metrics: Metrics, peer: str, transport: str) -> None:
        self.sink = sink
        self.metrics = metrics
        self.peer = peer
        self.transport = transport
        #: frames taken since the last :meth:`count`.
        self.handed = 0

    def __call__(self, frame: Document | Rejected) -> None:
        self.handed += 1
        if isinstance(frame, Document):
            try:
                self.sink(frame, self.peer, self.transport)
            except Exception:
                boundary.caught(
                    self.metrics, "frame", transport=self.transport, nbytes=frame.nbytes
                )
        else:
            reject(
                self.metrics,
                frame.kind,
                peer=self.peer,
                transport=self.transport,
                nbytes=frame.nbytes,
                reason=frame.reason,
                preview=frame.preview,
            )

    def feed(self, decoder: Decoder, data: bytes) -> int:
        """Decode ``data``, each frame handed on as it is cut; how many frames it held.

        Raises what :meth:`Decoder.feed_each` raises; the frames before are counted.
        """
        try:
            decoder.feed_each(data, self)
        finally:
            handed = self.count()
        return handed

    def count(self) -> int:
        """Count the frames taken since the last call as received; how many they were."""
        handed = self.handed
        if handed:
            # One addition per chunk: a stream brings dozens per receive.
            self.metrics.received[self.transport].inc(handed)
            self.handed = 0
        return handed
