"""The spool file as a local fallback: what forwarding to a server needs from it. Blocks.

A daemon whose spool is on a PostgreSQL server keeps accepting into
``state_dir/spool.sqlite3`` while the server cannot be reached, and later
forwards those entries, oldest first, and deletes them here. Forwarding names
each event by ``(origin, local id of its first entry)``: ``origin`` is a
random UUID kept in the file (table ``local_origin``, made on first use), so
a file deleted and made again (its ids start over) never reuses a name. An
event whose write to the server failed in a way that may have committed
keeps the name it had there (table ``local_names``), so forwarding finds it
if it did. The tables are outside the spool's versioned schema: a file with
them reads the same to every hipchatd, and SQLite daemons never look at them.
"""

from __future__ import annotations

import sqlite3
import uuid
from itertools import groupby
from typing import Final, TypeAlias

from hipchatd.delivery.spool import rows as stored
from hipchatd.delivery.spool.sqlite.sql import transaction
from hipchatd.delivery.spool.store import Entry

__all__ = ["Name", "forget", "name", "oldest", "origin"]

#: How the server knows an event: (origin, id of its first entry there).
Name: TypeAlias = tuple[uuid.UUID, int]

_TABLES: Final = (
    "CREATE TABLE IF NOT EXISTS local_origin (origin TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS local_names (document_id INTEGER PRIMARY KEY,"
    " origin TEXT NOT NULL, origin_id INTEGER NOT NULL)",
)
_OLDEST: Final = (
    "SELECT p.id, p.accepted_at, p.document_id, p.source, p.check_name, p.target,"
    " p.attempts, p.last_error, d.document, n.origin, n.origin_id FROM pending p"
    " LEFT JOIN documents d ON d.id = p.document_id"
    " LEFT JOIN local_names n ON n.document_id = p.document_id WHERE p.document_id IN"
    " (SELECT DISTINCT document_id FROM pending ORDER BY document_id LIMIT ?)"
    " ORDER BY p.id"
)


def origin(conn: sqlite3.Connection) -> uuid.UUID:
    """The file's forwarding origin, made (one transaction) the first time it is asked for."""
    with transaction(conn):
        for statement in _TABLES:
            conn.execute(statement)
        row = conn.execute("SELECT origin FROM local_origin").fetchone()
        if row is not None:
            return uuid.UUID(row[0])
        made = uuid.uuid4()
        conn.execute("INSERT INTO local_origin (origin) VALUES (?)", (str(made),))
        return made


def oldest(conn: sqlite3.Connection, events: int) -> list[tuple[list[Entry], Name | None]]:
    """The oldest ``events`` events: each one's pending entries, and its name on the server.

    Acceptance order: an event's entries have consecutive ids from its
    ``document_id``, so ordering events by it orders them as accepted.
    """
    rows = conn.execute(_OLDEST, (events,)).fetchall()
    documents = {row[2]: row[8] or "" for row in rows}
    found = stored.entries((row[:8] for row in rows), documents)
    result: list[tuple[list[Entry], Name | None]] = []
    for _, group in groupby(zip(rows, found, strict=True), key=lambda pair: pair[0][2]):
        pairs = list(group)
        row = pairs[0][0]
        named = None if row[9] is None else (uuid.UUID(row[9]), int(row[10]))
        result.append(([entry for _, entry in pairs], named))
    return result


def name(conn: sqlite3.Connection, names: list[tuple[int, Name]]) -> None:
    """Remember ``(document_id, name on the server)`` of events just committed here."""
    with transaction(conn):
        conn.executemany(
            "INSERT OR REPLACE INTO local_names (document_id, origin, origin_id) VALUES (?, ?, ?)",
            [(document, str(origin), origin_id) for document, (origin, origin_id) in names],
        )


def forget(conn: sqlite3.Connection, documents: list[int]) -> None:
    """Drop the names of these (forwarded) events."""
    with transaction(conn):
        conn.executemany("DELETE FROM local_names WHERE document_id = ?", [(d,) for d in documents])
