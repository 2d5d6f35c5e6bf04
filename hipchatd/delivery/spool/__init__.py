"""The spool: accepted events, durable until HipChat confirms them.

An event counts as accepted once its entries (one per target) are committed
here. An entry leaves ``pending`` only when HipChat confirms delivery
(``mark_delivered``) or when it is moved to ``dead`` with a reason
(``mark_dead``). Nothing else deletes a pending entry: a full spool refuses
new events and keeps the oldest.

The daemon and the operator commands know the spool through the interface
in :mod:`.store` (the :class:`Spool` and :class:`SpoolAdmin` protocols and
their data types); :func:`open_spool` and :func:`open_admin` choose the
backend. The one backend today is embedded SQLite (:mod:`.sqlite`).
"""

from hipchatd.delivery.spool.sqlite import SqliteAdmin, SqliteSpool
from hipchatd.delivery.spool.store import (
    DeadEntry,
    Entry,
    EventEntries,
    OnCommitted,
    OnRefused,
    PendingEntry,
    Requeued,
    Spool,
    SpoolAdmin,
    SpoolError,
    SpoolReadError,
    SpoolWriteError,
)

__all__ = [
    "DeadEntry",
    "Entry",
    "EventEntries",
    "OnCommitted",
    "OnRefused",
    "PendingEntry",
    "Requeued",
    "Spool",
    "SpoolAdmin",
    "SpoolError",
    "SpoolReadError",
    "SpoolWriteError",
    "open_admin",
    "open_spool",
]


async def open_spool(state_dir: str, *, max_events: int) -> Spool:
    """Open the daemon's spool in ``state_dir`` (``":memory:"``: in memory, not kept).

    At most ``max_events`` entries are pending at once. Raises SpoolError
    naming the path, the cause and the fix.
    """
    return await SqliteSpool.open(state_dir, max_events=max_events)


def open_admin(state_dir: str) -> SpoolAdmin:
    """Open the spool in ``state_dir`` for the operator commands; never creates one.

    Raises SpoolError (the message says what to do) when there is no spool there.
    """
    return SqliteAdmin.open(state_dir)
