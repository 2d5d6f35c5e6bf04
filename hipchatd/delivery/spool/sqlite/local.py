"""The spool file as a local fallback: what forwarding to a server needs from it. Blocks.

A daemon whose spool is on a PostgreSQL server keeps accepting into
``state_dir/spool.sqlite3`` while the server cannot be reached, and later
forwards those entries, oldest first, and deletes them here. Forwarding names
each event by ``(origin, local id of its first entry)``: ``origin`` is a
random UUID kept in the file (table ``local_origin``, made on first use), so
a file deleted and made again (its ids start over) never reuses a name. An
event whose write to the server failed in a way that may have committed
keeps the name it had there (table ``local_names``), so forwarding finds it
if it did. Marks (delivered, attempts, dead) of entries on the server made
while it could not be reached are kept in table ``local_marks``, with the
server they belong to, until they are written there: a restart meanwhile
does not send those entries again. The tables are outside the spool's
versioned schema: a file with them reads the same to every hipchatd, and
SQLite daemons never look at them.
"""

from __future__ import annotations

import sqlite3
import uuid
from itertools import groupby
from typing import Final, TypeAlias

from hipchatd.delivery.spool import rows as stored
from hipchatd.delivery.spool.sqlite.sql import transaction
from hipchatd.delivery.spool.store import Entry

__all__ = [
    "Marks",
    "Name",
    "drop_marks",
    "forget",
    "keep_marks",
    "marks",
    "marks_held",
    "name",
    "oldest",
    "origin",
]

#: How the server knows an event: (origin, id of its first entry there).
Name: TypeAlias = tuple[uuid.UUID, int]
#: Marks as group commit writes them: attempts ``(error, id)``, dead ``(dead_at, reason,
#: error, id)``, delivered ids.
Marks: TypeAlias = tuple[list[tuple[str, int]], list[tuple[float, str, str | None, int]], list[int]]

_TABLES: Final = (
    "CREATE TABLE IF NOT EXISTS local_origin (origin TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS local_names (document_id INTEGER PRIMARY KEY,"
    " origin TEXT NOT NULL, origin_id INTEGER NOT NULL)",
    # kind: 'attempt' (error), 'dead' (at, reason, error) or 'delivered'; server: its label.
    "CREATE TABLE IF NOT EXISTS local_marks (seq INTEGER PRIMARY KEY, server TEXT NOT NULL,"
    " kind TEXT NOT NULL, entry_id INTEGER NOT NULL, at REAL, reason TEXT, error TEXT)",
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


def keep_marks(conn: sqlite3.Connection, server: str, found: Marks) -> int:
    """Keep marks of entries on ``server`` (its label) until written there: how many."""
    attempts, dead, delivered = found
    rows: list[tuple[str, str, int, float | None, str | None, str | None]] = [
        (server, "attempt", entry_id, None, None, error) for error, entry_id in attempts
    ]
    rows += [(server, "dead", entry_id, at, why, error) for at, why, error, entry_id in dead]
    rows += [(server, "delivered", entry_id, None, None, None) for entry_id in delivered]
    with transaction(conn):
        conn.executemany(
            "INSERT INTO local_marks (server, kind, entry_id, at, reason, error)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
    return len(rows)


def marks_held(conn: sqlite3.Connection) -> int:
    """Marks kept here, for every server."""
    return int(conn.execute("SELECT count(*) FROM local_marks").fetchone()[0])


def marks(conn: sqlite3.Connection, server: str) -> tuple[Marks, int, int]:
    """The marks kept for ``server``, in the order made; the last ``seq`` read; how many
    were kept for another server (a DSN changed since: never written anywhere)."""
    rows = conn.execute(
        "SELECT seq, server, kind, entry_id, at, reason, error FROM local_marks ORDER BY seq"
    ).fetchall()
    attempts: list[tuple[str, int]] = []
    dead: list[tuple[float, str, str | None, int]] = []
    delivered: list[int] = []
    foreign = 0
    for _, kept_for, kind, entry_id, at, reason, error in rows:
        if kept_for != server:
            foreign += 1
        elif kind == "attempt":
            attempts.append((error or "", entry_id))
        elif kind == "dead":
            dead.append((at, reason, error, entry_id))
        else:
            delivered.append(entry_id)
    return (attempts, dead, delivered), rows[-1][0] if rows else 0, foreign


def drop_marks(conn: sqlite3.Connection, last: int) -> None:
    """Forget the marks up to ``seq`` ``last`` (written to their server, or foreign)."""
    with transaction(conn):
        conn.execute("DELETE FROM local_marks WHERE seq <= ?", (last,))
