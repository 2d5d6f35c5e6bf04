"""What the local fallback needs from the server: when it is unreachable, and the copy back.

A daemon on a PostgreSQL spool accepts into its local SQLite spool while the
server cannot be reached (:mod:`hipchatd.delivery.spool.fallback`). This
module says which failures mean "unreachable" (the connection, not the
data), probes the server on a connection of its own, and writes local
events into the shared tables under their local name ``(origin,
origin_id)``, so a copy repeated after a crash or a lost COMMIT stores
nothing twice.
"""

from __future__ import annotations

import uuid

import psycopg
from psycopg import errors as pg_errors

from hipchatd.delivery.spool.postgresql import connect, sql
from hipchatd.delivery.spool.postgresql.connect import Server, Session
from hipchatd.delivery.spool.store import EventEntries

__all__ = ["forward", "is_unreachable", "probe", "unreachable_at_login"]

#: SQLSTATEs of a server that is going away or not taking sessions: admin_shutdown,
#: crash_shutdown, cannot_connect_now (starting up or shutting down). Class 08 (connection
#: exceptions) is matched by prefix.
_GOING_AWAY = frozenset({"57P01", "57P02", "57P03"})


def is_unreachable(exc: BaseException) -> bool:
    """The server or the connection to it failed (not a write it refused): go local.

    Connection failures raised by libpq carry no SQLSTATE; a full disk, a
    deadlock or a value the server cannot store are not unreachability
    (going local for those would only move the problem to the forwarder).
    """
    if not isinstance(exc, psycopg.OperationalError) or connect.does_not_fit(exc):
        return False
    if isinstance(exc, pg_errors.TransactionRollback):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _GOING_AWAY


def unreachable_at_login(server: Server, exc: BaseException) -> bool:
    """A failed login means the server cannot be reached (start on the local spool).

    Not when it answered and refused: a wrong password, a database that
    does not exist, no privilege to connect. libpq reports either without
    a SQLSTATE, so a server is asked whether it answers at all
    (:func:`~.connect.answers`). Blocks.
    """
    if not isinstance(exc, psycopg.OperationalError) or exc.sqlstate is not None:
        return is_unreachable(exc)
    return not connect.answers(server)


def probe(server: Server) -> None:
    """Connect and run ``SELECT 1`` on a connection of its own. Blocks; raises psycopg's error."""
    with connect.connect(server) as conn:
        conn.execute("SELECT 1")


def forward(
    session: Session, batch: list[EventEntries], origin: uuid.UUID
) -> tuple[int, list[EventEntries]]:
    """Store local events (their local ids name them): (entries, the events with their ids).

    Events of ``origin`` already stored and still pending are read back, not
    written again.
    """
    uncertain = True
    return sql.write_events(session.get(), batch, origin, session.server.channel, uncertain)
