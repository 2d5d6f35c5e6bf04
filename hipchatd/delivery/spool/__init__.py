"""The spool: accepted events, durable until HipChat confirms them.

An event counts as accepted once its entries (one per target) are committed
here. An entry leaves ``pending`` only when HipChat confirms delivery
(``mark_delivered``) or when it is moved to ``dead`` with a reason
(``mark_dead``). Nothing else deletes a pending entry: a full spool refuses
new events and keeps the oldest.

The daemon and the operator commands know the spool through the interface
in :mod:`.store` (the :class:`Spool` and :class:`SpoolAdmin` protocols and
their data types); :func:`open_spool` and :func:`open_admin` choose the
backend from ``hipchatd.spool``: embedded SQLite (:mod:`.sqlite`, the
default) or a PostgreSQL server (:mod:`.postgresql`, imported only when
chosen: psycopg is the optional extra ``hipchatd[postgresql]``).
"""

from __future__ import annotations

from types import ModuleType

from hipchatd.config import SpoolSettings
from hipchatd.delivery.shared_budget import BudgetStore
from hipchatd.delivery.spool.sqlite import SqliteAdmin, SqliteSpool
from hipchatd.delivery.spool.store import (
    DeadEntry,
    Entry,
    EventEntries,
    Held,
    LaneLeases,
    OnCommitted,
    OnRefused,
    PendingEntry,
    Requeued,
    Spool,
    SpoolAdmin,
    SpoolError,
    SpoolReadError,
    SpoolWriteError,
    lane_of,
)

__all__ = [
    "SQLITE",
    "DeadEntry",
    "Entry",
    "EventEntries",
    "Held",
    "LaneLeases",
    "OnCommitted",
    "OnRefused",
    "PendingEntry",
    "Requeued",
    "Spool",
    "SpoolAdmin",
    "SpoolError",
    "SpoolReadError",
    "SpoolWriteError",
    "describe_store",
    "lane_of",
    "open_admin",
    "open_budget_store",
    "open_spool",
]


#: The SQLite backend in ``state_dir``: the default.
SQLITE = SpoolSettings()


async def open_spool(state_dir: str, *, max_events: int, settings: SpoolSettings = SQLITE) -> Spool:
    """Open the daemon's spool: ``settings.backend`` chooses where.

    SQLite: in ``state_dir`` (``":memory:"``: in memory, not kept).
    PostgreSQL: in ``settings.schema`` of the server ``settings.dsn`` names,
    created or migrated there, with the SQLite file in ``state_dir`` as the
    local fallback while the server is unreachable, from the start if it
    does not answer then (:mod:`.fallback`).
    At most ``max_events`` entries are pending at once. Raises SpoolError
    naming the path (or the server, never its DSN), the cause and the fix.
    """
    if settings.backend == "postgresql":
        _postgresql()
        from hipchatd.delivery.spool.fallback import FallbackSpool

        spool: Spool = await FallbackSpool.open_with_fallback(
            settings, state_dir, max_events=max_events
        )
        return spool
    return await SqliteSpool.open(state_dir, max_events=max_events)


def open_admin(state_dir: str, settings: SpoolSettings = SQLITE) -> SpoolAdmin:
    """Open the spool for the operator commands; never creates one.

    Raises SpoolError (the message says what to do) when there is no spool there.
    """
    if settings.backend == "postgresql":
        admin: SpoolAdmin = _postgresql().PostgresAdmin.open(settings)
        return admin
    return SqliteAdmin.open(state_dir)


def open_budget_store(settings: SpoolSettings) -> BudgetStore | None:
    """Where HipChat's budget is shared with other instances: the PostgreSQL spool's schema.

    None for SQLite (one instance: the budget stays in this process). Never
    connects; raises SpoolError for a DSN libpq cannot parse.
    """
    if settings.backend != "postgresql":
        return None
    store: BudgetStore = _postgresql().open_budget_store(settings)
    return store


def describe_store(settings: SpoolSettings) -> str | None:
    """For ``check-config --online``: the spool's server and schema version, if on a server.

    None for SQLite (nothing to reach). Blocks; raises SpoolError when the
    server cannot be reached or its schema cannot be used by this hipchatd.
    """
    if settings.backend != "postgresql":
        return None
    found: str = _postgresql().describe_store(settings)
    return found


def _postgresql() -> ModuleType:
    """The PostgreSQL backend, imported on first use (psycopg is an optional extra)."""
    try:
        from hipchatd.delivery.spool import postgresql
    except ImportError as exc:
        raise SpoolError(
            f'hipchatd.spool.backend is "postgresql" but psycopg cannot be imported ({exc}); '
            "install it with: pip install 'hipchatd[postgresql]'"
        ) from exc
    return postgresql
