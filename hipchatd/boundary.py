"""Fault boundaries: one unit of outside input can never take the daemon down.

A frame, a datagram, a connection and a lane attempt are each handled inside
a boundary. Expected failures are outcomes long before they reach it; an
exception that does reach it is a bug. Bugs stay loud: :func:`caught` logs
it once at ERROR with its traceback and counts it in
``hipchatd_internal_errors_total{where}``, and the caller rejects or retries
that one unit and goes on serving everything else. Only the daemon's own
supervision code lets an exception end the process.
"""

from __future__ import annotations

from typing import Any

import structlog

from hipchatd.metrics import Metrics

__all__ = ["caught"]

log = structlog.get_logger()


def caught(metrics: Metrics, where: str, **fields: Any) -> None:
    """Report the exception being handled: one ERROR line with its traceback, one count.

    Call it from an ``except Exception`` block of a fault boundary; ``where``
    is one of ``metrics.INTERNAL_ERROR_PLACES``.
    """
    metrics.internal_errors[where].inc()
    log.error("internal_error.caught", where=where, exc_info=True, **fields)
