"""The operator's SQLite spool: the :class:`~hipchatd.delivery.spool.store.SpoolAdmin`.

A second connection to the daemon's WAL database, safe while the daemon
runs (each command is one transaction; SQLite's busy timeout waits for the
daemon's). It never creates a spool. After a commit the daemon must notice
(a retry, a purge), it tells a daemon in this process at once; another
process's daemon notices within ``RETRY_POLL``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

from hipchatd.delivery.spool.sqlite import files, sql
from hipchatd.delivery.spool.sqlite.lookout import RETRY_POLL
from hipchatd.delivery.spool.store import (
    DeadEntry,
    PendingEntry,
    Requeued,
    SpoolError,
)

__all__ = ["SqliteAdmin"]

T = TypeVar("T")


class SqliteAdmin:
    """The operator commands' handle on a spool file. Create with ``SqliteAdmin.open``."""

    def __init__(self, path: str, conn: sqlite3.Connection) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = conn

    @classmethod
    def open(cls, state_dir: str) -> SqliteAdmin:
        """Open the spool a daemon made in ``state_dir``; never creates one.

        Raises SpoolError when there is none (or it is in memory, inside a
        daemon), it cannot be opened, or it has another schema version (the
        message says to start the daemon once to upgrade an older one).
        """
        path, conn = files.open_existing(state_dir)
        return cls(path, conn)

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    @property
    def pickup_within(self) -> float:
        """A running daemon hands re-queued entries out within this many seconds."""
        return RETRY_POLL

    def list_pending(self) -> list[PendingEntry]:
        """Every pending entry, oldest id first."""
        return self._do(sql.list_pending)

    def list_dead(self) -> list[DeadEntry]:
        """Every dead-lettered entry, oldest id first."""
        return self._do(sql.list_dead)

    def retry(self, ids: Sequence[int] | None) -> Requeued:
        """Move these dead entries (None: every one) back to ``pending``. All or nothing."""
        requeued = self._do(lambda conn: _retry(conn, ids))
        if requeued.ids:
            files.announce_change(self._path)
        return requeued

    def purge_dead(self) -> int:
        """Delete every dead-lettered entry and the documents left unused: how many."""
        purged = self._do(sql.purge_dead)
        files.announce_change(self._path)
        return purged

    def close(self) -> None:
        """Close the connection. Idempotent."""
        if self._conn is not None:
            sql.close(self._conn)
            self._conn = None

    def _do(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise SpoolError(f"{self._path}: the spool is closed")
        try:
            return fn(self._conn)
        except sqlite3.Error as exc:
            raise SpoolError(f"{self._path}: {exc}") from exc
        except SpoolError as exc:
            raise SpoolError(f"{self._path}: {exc}") from exc


def _retry(conn: sqlite3.Connection, ids: Sequence[int] | None) -> Requeued:
    with sql.transaction(conn):
        if ids is None:
            chosen = sql.dead_ids(conn)
        else:
            chosen = list(dict.fromkeys(ids))
            dead = sql.select_ids(conn, "dead", chosen)
            missing = [i for i in chosen if i not in dead]
            if missing:
                pending = sql.select_ids(conn, "pending", missing)
                return Requeued(
                    pending=tuple(i for i in missing if i in pending),
                    unknown=tuple(i for i in missing if i not in pending),
                )
        sql.requeue(conn, chosen)
    return Requeued(ids=tuple(chosen))
