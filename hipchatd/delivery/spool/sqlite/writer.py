"""Group commit on SQLite: the :class:`~hipchatd.delivery.spool.group.Dialect` of this backend.

The buffer and its commits are backend-neutral (:mod:`hipchatd.delivery.spool.group`);
this module gives them SQLite's writes (:mod:`.sql`) and reads its errors: a
``SQLITE_FULL`` or ``SQLITE_TOOBIG`` batch is halved, a constraint or misuse
is a bug, anything else (I/O error, a lock held too long) is retried.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Final

from hipchatd.delivery.spool.group import HIGH_WATER, WRITE_RETRY, GroupCommit, Marks, Worker
from hipchatd.delivery.spool.sqlite import sql
from hipchatd.delivery.spool.store import EventEntries

__all__ = ["DIALECT", "HIGH_WATER", "WRITE_RETRY", "GroupCommit", "SqliteDialect", "Worker"]


class SqliteDialect:
    """SQLite's writes and errors, for group commit."""

    errors: tuple[type[Exception], ...] = (sqlite3.DatabaseError,)

    def write_events(
        self, conn: sqlite3.Connection, batch: list[EventEntries]
    ) -> tuple[int, list[EventEntries]]:
        # Looked up at each call: tests replace ``sql.write_batch``.
        return sql.write_batch(conn, batch=batch), batch

    def write_marks(
        self,
        conn: sqlite3.Connection,
        attempts: list[tuple[str, int]],
        dead: list[tuple[float, str, str | None, int]],
        delivered: list[int],
    ) -> tuple[int, int]:
        return sql.write_marks(conn, attempts=attempts, dead=dead, delivered=delivered)

    def write_round(
        self, conn: sqlite3.Connection, marks: Marks, batch: list[EventEntries]
    ) -> tuple[int, int, int, list[EventEntries]]:
        return *sql.write_round(conn, marks, batch), batch

    def is_transient(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.DatabaseError) and sql.is_transient(exc)

    def does_not_fit(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.DatabaseError) and sql.does_not_fit(exc)

    def log_keys(self, exc: Exception) -> dict[str, Any]:
        return {"sqlite_error": getattr(exc, "sqlite_errorname", None)}


#: The one SqliteDialect (it holds no state).
DIALECT: Final = SqliteDialect()
