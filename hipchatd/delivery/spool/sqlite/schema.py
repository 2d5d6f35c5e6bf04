"""The spool's tables, and the migrations that bring an older file up to date.

Schema (``PRAGMA user_version`` = ``SCHEMA_VERSION``)::

    documents(id INTEGER PRIMARY KEY, entries, document)
    pending(id INTEGER PRIMARY KEY AUTOINCREMENT, accepted_at, source, check_name,
            target, attempts, last_error, requeued, document_id)
    dead(id INTEGER PRIMARY KEY, accepted_at, dead_at, source, check_name, target,
         attempts, reason, error, document_id)

``target`` is the Target as a JSON object. The event document is stored once
per event however many targets it has: ``documents.id`` is the id of the
event's first entry, and its ``entries`` (one per target) have the ids
``id .. id + entries - 1`` (ids are handed out consecutively per event and
never reused), each with ``document_id`` = ``documents.id``. So whether a
document is still needed is two primary-key range probes (one into
``pending``, one into ``dead``), and a document is deleted in the
transaction that removes its last entry. ``id`` is acceptance order, so a
dead entry keeps its id when ``hipchatd spool retry`` moves it back.
Version 1 (a copy of the document in every entry) is migrated in place, in
one transaction, when the daemon opens it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from typing import Final

import structlog

from hipchatd.delivery.spool.sqlite.sql import INSERT_DOCUMENTS, transaction

__all__ = ["SCHEMA_VERSION", "SchemaMismatch", "migrate", "open_counts", "version"]

log = structlog.get_logger()

SCHEMA_VERSION: Final = 2

#: The current schema, for a new spool file.
_SCHEMA: Final[tuple[str, ...]] = (
    """CREATE TABLE documents (
        id INTEGER PRIMARY KEY,
        entries INTEGER NOT NULL,
        document TEXT NOT NULL
    )""",
    """CREATE TABLE pending (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        accepted_at REAL NOT NULL,
        source TEXT NOT NULL,
        check_name TEXT NOT NULL,
        target TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        requeued INTEGER NOT NULL DEFAULT 0,
        document_id INTEGER NOT NULL
    )""",
    # Partial: empty in normal operation, so it costs nothing per insert.
    "CREATE INDEX pending_requeued ON pending (id) WHERE requeued = 1",
    """CREATE TABLE dead (
        id INTEGER PRIMARY KEY,
        accepted_at REAL NOT NULL,
        dead_at REAL NOT NULL,
        source TEXT NOT NULL,
        check_name TEXT NOT NULL,
        target TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        reason TEXT NOT NULL,
        error TEXT,
        document_id INTEGER NOT NULL
    )""",
    # count(*) walks this small index instead of every row.
    "CREATE INDEX dead_dead_at ON dead (dead_at)",
)


class SchemaMismatch(Exception):
    """The file is an SQLite database this hipchatd cannot use as its spool.

    The message says why and what to do, ending where the caller adds the
    way to point hipchatd elsewhere.
    """


def version(conn: sqlite3.Connection) -> int:
    """The file's schema version (0: no hipchatd schema yet)."""
    found: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return found


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Create the schema in a new file, or bring an older one up to date: one transaction.

    Raises SchemaMismatch for a newer schema or a database that is not a spool.
    """
    with transaction(conn):
        found = version(conn)
        if found > SCHEMA_VERSION:
            raise SchemaMismatch(
                f"it has schema version {found}, written by a newer hipchatd (this one "
                f"reads up to {SCHEMA_VERSION}); upgrade hipchatd"
            )
        if found == 0:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise SchemaMismatch(
                    "it is an SQLite database but not a hipchatd spool; move it away"
                )
            for statement in _SCHEMA:
                conn.execute(statement)
        else:
            for step in range(found + 1, SCHEMA_VERSION + 1):
                _MIGRATIONS[step](conn)
        if found != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    if 0 < found < SCHEMA_VERSION:
        log.info("spool.migrated", path=path, from_version=found, to_version=SCHEMA_VERSION)


def open_counts(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """(next id, pending, dead). Counting pending reads every row, once per start."""
    last_id = conn.execute(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'pending'), 0),"
        " coalesce((SELECT max(id) FROM pending), 0), coalesce((SELECT max(id) FROM dead), 0))"
    ).fetchone()[0]
    pending = conn.execute("SELECT count(*) FROM pending").fetchone()[0]
    dead = conn.execute("SELECT count(*) FROM dead").fetchone()[0]
    return int(last_id) + 1, int(pending), int(dead)


def _to_version_2(conn: sqlite3.Connection) -> None:
    """Version 1 kept a copy of the event document in every entry: keep one per event.

    An event's entries have consecutive ids, so each run of consecutive entries (pending
    and dead, by id) with the same document becomes one document whose id is the run's
    first id, and its range holds no other entry.
    """
    (sequence,) = conn.execute(
        "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'pending'"
    ).fetchone()
    conn.execute("DROP INDEX pending_requeued")
    conn.execute("DROP INDEX dead_dead_at")
    conn.execute("ALTER TABLE pending RENAME TO pending_v1")
    conn.execute("ALTER TABLE dead RENAME TO dead_v1")
    for statement in _SCHEMA:
        conn.execute(statement)
    rows = conn.execute(
        "SELECT id, document FROM pending_v1 UNION ALL SELECT id, document FROM dead_v1 ORDER BY id"
    )
    # Streamed: one document in memory at a time (the sorted rows are SQLite's copy).
    conn.executemany(INSERT_DOCUMENTS, _runs_of_documents(rows))
    owner = "(SELECT max(d.id) FROM documents d WHERE d.id <= old.id)"
    conn.execute(
        "INSERT INTO pending (id, accepted_at, source, check_name, target, attempts,"
        " last_error, requeued, document_id)"
        " SELECT id, accepted_at, source, check_name, target, attempts, last_error, requeued,"
        f" {owner} FROM pending_v1 AS old"
    )
    conn.execute(
        "INSERT INTO dead (id, accepted_at, dead_at, source, check_name, target, attempts,"
        " reason, error, document_id)"
        " SELECT id, accepted_at, dead_at, source, check_name, target, attempts, reason, error,"
        f" {owner} FROM dead_v1 AS old"
    )
    conn.execute("DROP TABLE pending_v1")
    conn.execute("DROP TABLE dead_v1")
    # Ids are never reused: keep the highest one ever handed out.
    conn.execute("DELETE FROM sqlite_sequence WHERE name = 'pending'")
    conn.execute(
        "INSERT INTO sqlite_sequence (name, seq)"
        " SELECT 'pending', max(?, coalesce((SELECT max(id) FROM pending), 0))",
        (sequence,),
    )


def _runs_of_documents(rows: Iterable[tuple[int, str]]) -> Iterator[tuple[int, int, str]]:
    """(first id, entries, document) per run of consecutive rows with the same document."""
    first = last = 0
    current: str | None = None
    for id_, document in rows:
        if document != current:
            if current is not None:
                yield first, last - first + 1, current
            first, current = id_, document
        last = id_
    if current is not None:
        yield first, last - first + 1, current


#: Schema version -> the step that brings the version before it there (inside the transaction).
_MIGRATIONS: Final[dict[int, Callable[[sqlite3.Connection], None]]] = {2: _to_version_2}
