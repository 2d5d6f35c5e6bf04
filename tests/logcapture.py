"""structlog's ``capture_logs``, with the keys bound in contextvars merged in as the daemon does.

The daemon binds ``peer``, ``conn_id`` and ``event_id`` with
:mod:`structlog.contextvars`, and its processor chain merges them into each
line (:func:`hipchatd.ops.logconfig.configure`). structlog's own
``capture_logs`` drops every configured processor, so a test asserting on
those keys captures through this one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from structlog.typing import EventDict

__all__ = ["capture_logs"]


@contextmanager
def capture_logs() -> Iterator[list[EventDict]]:
    """Capture every log line, bound context included, into the yielded list."""
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        yield logs
