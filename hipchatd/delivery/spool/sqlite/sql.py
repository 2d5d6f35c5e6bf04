"""The spool's SQL, run on a worker thread: each function owns the connection while it runs.

Nothing here touches trio: the daemon's writer and reader call these through
``trio.to_thread.run_sync`` (one at a time), the operator commands call them
directly. Writes are few statements per batch (multi-row INSERTs, DELETEs by
runs of consecutive ids), because each statement must win the GIL back from
a busy event loop.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any, Final

import structlog

from hipchatd.delivery.routing import Target
from hipchatd.delivery.spool import rows as stored
from hipchatd.delivery.spool.group import BATCH, Marks
from hipchatd.delivery.spool.rows import encode_target as _encode_target
from hipchatd.delivery.spool.store import (
    DeadEntry,
    Entry,
    EventEntries,
    PendingEntry,
)

__all__ = [
    "BATCH",
    "INSERT_DOCUMENTS",
    "cause",
    "close",
    "data_version",
    "dead_ids",
    "does_not_fit",
    "is_transient",
    "list_dead",
    "list_pending",
    "load_documents",
    "load_pending",
    "pick_up",
    "purge_dead",
    "requeue",
    "select_ids",
    "transaction",
    "write_batch",
    "write_marks",
    "write_round",
]

log = structlog.get_logger()

#: The stored form of a target (tests read it back through this module).
_decode_target = stored.decode_target

#: Parameters per ``IN (...)``: below SQLite's historical 999-variable limit.
_CHUNK: Final = 500

_ENTRY_COLUMNS: Final = (
    "id, accepted_at, document_id, source, check_name, target, attempts, last_error"
)
# OR ROLLBACK: a failed insert ends its whole transaction, as every failed write here does
# anyway. Without it SQLite keeps a statement journal to undo a multi-row INSERT alone, and
# past 64 KiB (a few 3 KB events) that journal is a temporary file, created and deleted in
# /var/tmp at every commit (https://www.sqlite.org/tempfiles.html, "Statement Journal
# Files"): measured, about 40% of the worker thread's CPU per entry.
INSERT_DOCUMENTS: Final = (
    "INSERT OR ROLLBACK INTO documents (id, entries, document) VALUES (?, ?, ?)"
)
_INSERT_ENTRIES: Final = (
    "INSERT OR ROLLBACK INTO pending (id, accepted_at, source, check_name, target, document_id)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_ATTEMPT: Final = "UPDATE pending SET attempts = attempts + 1, last_error = ? WHERE id = ?"
_TO_DEAD: Final = (
    "INSERT INTO dead (id, accepted_at, dead_at, source, check_name, target, attempts,"
    " reason, error, document_id)"
    " SELECT id, accepted_at, ?, source, check_name, target, attempts, ?,"
    " coalesce(?, last_error), document_id FROM pending WHERE id = ?"
)
#: One run of consecutive ids: delivery confirms in acceptance order, so a batch of
#: deliveries is usually a single run, deleted by one statement.
_DELETE_RUN: Final = "DELETE FROM pending WHERE id BETWEEN ? AND ?"
#: An entry of document d has an id in d .. d + entries - 1: no index on document_id needed.
_UNUSED: Final = (
    "NOT EXISTS (SELECT 1 FROM pending WHERE pending.id"
    " BETWEEN documents.id AND documents.id + documents.entries - 1)"
    " AND NOT EXISTS (SELECT 1 FROM dead WHERE dead.id"
    " BETWEEN documents.id AND documents.id + documents.entries - 1)"
)
#: The documents a run of removed ids (first, last) may have held: from the one holding
#: ``first`` up to ``last``, deleted when no entry is left in their range.
_DELETE_UNUSED_DOCUMENTS: Final = (
    "DELETE FROM documents WHERE id BETWEEN"
    " (SELECT max(id) FROM documents WHERE id <= ?1) AND ?2 AND " + _UNUSED
)
#: Runs of ids above which a batch of removals goes by ``IN (...)`` lists instead: several
#: rooms confirm at their own pace, so their entries (interleaved ids) make many short runs,
#: and two statements per run cost more than two per list (measured: 2.5x per entry).
_FEW_RUNS: Final = 4
_REQUEUED: Final = f"SELECT {_ENTRY_COLUMNS} FROM pending WHERE requeued = 1 ORDER BY id"
_RESET_REQUEUED: Final = (
    "UPDATE pending SET requeued = 0, attempts = 0, last_error = NULL, accepted_at = ?"
    " WHERE requeued = 1"
)
#: SQLite result codes for "this does not fit": the disk or the file's size limit is
#: full, or one value exceeds SQLite's length limit. Smaller pieces may still fit.
_DOES_NOT_FIT: Final = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_TOOBIG})


def cause(exc: sqlite3.Error) -> str:
    """SQLite's message, with its error name when it has one (``disk I/O error (SQLITE_IOERR)``)."""
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else str(exc) or type(exc).__name__


def is_transient(exc: sqlite3.DatabaseError) -> bool:
    """A failure worth retrying (full disk, I/O error, lock) rather than a bug of ours."""
    return not isinstance(
        exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.InterfaceError
    )


def does_not_fit(exc: sqlite3.DatabaseError) -> bool:
    """SQLite said the write does not fit (full disk or file limit): smaller pieces might."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _DOES_NOT_FIT


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` .. ``COMMIT``; rolled back when the block raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            # The error that got us here is the one to report; a failing ROLLBACK adds nothing
            # (SQLite rolls back on close anyway).
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def close(conn: sqlite3.Connection) -> None:
    """Close ``conn``; a failure is logged, not raised (everything was committed before)."""
    try:
        conn.close()
    except sqlite3.Error as exc:
        # Closing only checkpoints the WAL, which the next open does anyway.
        log.warning("spool.close_failed", error=str(exc))


# --- targets and entries ---------------------------------------------------------------------


def _entries(conn: sqlite3.Connection, rows: Iterable[Sequence[Any]]) -> list[Entry]:
    """Entries from ``_ENTRY_COLUMNS`` rows, each event's document read once and shared."""
    found = list(rows)
    return stored.entries(found, _documents(conn, sorted({row[2] for row in found})))


def _documents(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, str]:
    documents: dict[int, str] = {}
    for chunk, marks in _chunks(ids):
        documents.update(
            conn.execute(f"SELECT id, document FROM documents WHERE id IN ({marks})", chunk)
        )
    return documents


def _chunks(ids: Sequence[int], *, padded: bool = False) -> Iterator[tuple[list[int], str]]:
    """``ids`` in pieces an ``IN (...)`` takes, each with its ``?,?,...``.

    ``padded``: each piece repeats its last id up to a power of two, so that few statement
    texts exist (the connection's statement cache keeps them); an id twice in ``IN`` is once.
    """
    for start in range(0, len(ids), _CHUNK):
        chunk = list(ids[start : start + _CHUNK])
        if padded:
            chunk += chunk[-1:] * ((1 << (len(chunk) - 1).bit_length()) - len(chunk))
        yield chunk, ",".join("?" * len(chunk))


# --- the daemon's writes ---------------------------------------------------------------------


def write_batch(conn: sqlite3.Connection, batch: list[EventEntries]) -> int:
    """Insert these new events (each document once, then one entry per target): entries written."""
    with transaction(conn):
        return _insert_events(conn, batch)


def write_round(
    conn: sqlite3.Connection, marks: Marks, batch: list[EventEntries]
) -> tuple[int, int, int]:
    """``write_marks`` and ``write_batch`` in one transaction: (removed, moved to dead, written)."""
    with transaction(conn):
        removed, moved = _apply_marks(conn, marks)
        return removed, moved, _insert_events(conn, batch)


def _insert_events(conn: sqlite3.Connection, batch: list[EventEntries]) -> int:
    # Every statement releases the GIL while SQLite works and must win it back from a busy
    # event loop (up to sys.getswitchinterval(), 5 ms, each time): so a whole batch is a few
    # statements, never one per row. Beside a busy thread, one per row managed 400 entries/s.
    # The values are gathered flat in one pass, with the GIL held. Routing hands events of
    # one severity the same Target objects, so consecutive entries mostly share one: its
    # text is looked up once per run of the same object (hashing a Target is a Python call).
    # Measured: 0.45 us per entry instead of 0.95.
    documents: list[Any] = []
    values: list[Any] = []
    add_document, add_entry = documents.extend, values.extend
    target: Target | None = None
    text = ""
    for _, event in batch:
        first = event[0]
        document_id = first.id
        add_document((document_id, len(event), first.document))
        for entry in event:
            if entry.target is not target:
                target = entry.target
                text = _encode_target(target)
            add_entry((entry.id, entry.accepted_at, entry.source, entry.check, text, document_id))
    _insert_rows(conn, INSERT_DOCUMENTS, 3, documents)
    return _insert_rows(conn, _INSERT_ENTRIES, 6, values)


def _insert_rows(conn: sqlite3.Connection, insert: str, columns: int, values: list[Any]) -> int:
    """Rows of ``columns`` flat ``values`` through multi-row ``insert`` statements (a power of
    two rows each)."""
    if not values:
        return 0
    most = max(1, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // columns)
    sizes = _insert_sizes(len(values) // columns, most)
    if len(sizes) == 1:
        return conn.execute(_insert_sql(insert, columns, sizes[0]), values).rowcount
    inserted = start = 0
    for count in sizes:
        stop = start + count * columns
        inserted += conn.execute(_insert_sql(insert, columns, count), values[start:stop]).rowcount
        start = stop
    return inserted


def _insert_sizes(count: int, most: int) -> list[int]:
    """Rows per INSERT for ``count`` entries, each a power of two up to ``most`` and BATCH.

    The largest size first, then the binary digits of the rest: at most eleven statement
    texts ever exist (the connection's statement cache keeps them all), and a trickle of a
    few entries costs a few statements.
    """
    size = 1 << (min(most, BATCH).bit_length() - 1)
    sizes = [size] * (count // size)
    rest = count % size
    while rest:
        size //= 2
        if rest >= size:
            sizes.append(size)
            rest -= size
    return sizes


@lru_cache(maxsize=32)
def _insert_sql(insert: str, columns: int, rows: int) -> str:
    return insert + f", ({', '.join('?' * columns)})" * (rows - 1)


def write_marks(
    conn: sqlite3.Connection,
    attempts: list[tuple[str, int]],
    dead: list[tuple[float, str, str | None, int]],
    delivered: list[int],
) -> tuple[int, int]:
    """Attempts ``(error, id)``, dead-letter moves ``(dead_at, reason, error, id)`` and
    deliveries, in one transaction; documents left unused go. (removed, moved to dead)."""
    with transaction(conn):
        return _apply_marks(conn, Marks(attempts, dead, delivered))


def _apply_marks(conn: sqlite3.Connection, marks: Marks) -> tuple[int, int]:
    attempts, dead, delivered = marks.attempts, marks.dead, marks.delivered
    removed = moved = 0
    if attempts:
        conn.executemany(_ATTEMPT, attempts)
    if dead:
        moved = conn.executemany(_TO_DEAD, dead).rowcount
    if dead or delivered:
        gone = sorted({*delivered, *(d[3] for d in dead)})
        runs = _runs(gone)
        if len(runs) <= _FEW_RUNS:
            removed = conn.executemany(_DELETE_RUN, runs).rowcount
            conn.executemany(_DELETE_UNUSED_DOCUMENTS, runs)
        else:
            removed = _delete_listed(conn, gone)
    return removed, moved


def _delete_listed(conn: sqlite3.Connection, ids: list[int]) -> int:
    """Delete these pending entries by ``IN (...)`` lists, and the documents left unused."""
    removed = 0
    for chunk, marks in _chunks(ids, padded=True):
        removed += conn.execute(f"DELETE FROM pending WHERE id IN ({marks})", chunk).rowcount
        # The document of entry x is the last one at or below x (ids are handed out per event).
        owners = ", ".join(["(?)"] * len(chunk))
        conn.execute(
            "DELETE FROM documents WHERE id IN (SELECT (SELECT max(d.id) FROM documents d"
            f" WHERE d.id <= gone.column1) FROM (VALUES {owners}) AS gone) AND {_UNUSED}",
            chunk,
        )
    return removed


def _runs(ids: list[int]) -> list[tuple[int, int]]:
    """Sorted, distinct ``ids`` as the (first, last) of each run of consecutive ids."""
    if ids[-1] - ids[0] == len(ids) - 1:
        return [(ids[0], ids[-1])]
    breaks = [k for k in range(1, len(ids)) if ids[k] != ids[k - 1] + 1]
    starts = [0, *breaks]
    ends = [*breaks, len(ids)]
    return [(ids[a], ids[b - 1]) for a, b in zip(starts, ends, strict=True)]


# --- the daemon's reads ----------------------------------------------------------------------


def data_version(conn: sqlite3.Connection) -> int:
    """Changes when another connection commits to the file (SQLite's ``PRAGMA data_version``)."""
    version: int = conn.execute("PRAGMA data_version").fetchone()[0]
    return version


def load_pending(conn: sqlite3.Connection, now: float) -> tuple[int, list[Entry]]:
    """(data version, every pending entry); re-queued ones are reset to ``now`` first."""
    # Read before the transaction: a commit in between is seen now and again at the next poll
    # (which then finds nothing), never missed.
    version = data_version(conn)
    with transaction(conn):
        conn.execute(_RESET_REQUEUED, (now,))
        rows = conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM pending ORDER BY id")
        return version, _entries(conn, rows)


def load_documents(conn: sqlite3.Connection, ids: list[int]) -> dict[int, str]:
    """Entry id -> document for the pending ones among ``ids``; each document read once."""
    references: dict[int, int] = {}
    for chunk, marks in _chunks(ids):
        references.update(
            conn.execute(f"SELECT id, document_id FROM pending WHERE id IN ({marks})", chunk)
        )
    documents = _documents(conn, sorted(set(references.values())))
    return {i: documents[d] for i, d in references.items() if d in documents}


def pick_up(
    conn: sqlite3.Connection, now: float, last_version: int | None
) -> tuple[int, list[Entry], int | None]:
    """Re-queued entries and the dead count, when another connection committed since last time."""
    version = data_version(conn)
    if version == last_version:
        return version, [], None
    with transaction(conn):
        entries = _entries(conn, conn.execute(_REQUEUED))
        if entries:
            conn.execute(_RESET_REQUEUED, (now,))
        dead: int = conn.execute("SELECT count(*) FROM dead").fetchone()[0]
    fresh = [
        Entry(e.id, now, e.document, e.source, e.check, e.target, 0, None, requeued=True)
        for e in entries
    ]
    return version, fresh, dead


# --- the operator's reads and writes ---------------------------------------------------------


def list_dead(conn: sqlite3.Connection) -> list[DeadEntry]:
    """Every dead entry, oldest id first."""
    rows = conn.execute(
        "SELECT id, accepted_at, dead_at, source, check_name, target, attempts, reason, error"
        " FROM dead ORDER BY id"
    )
    return stored.dead_entries(rows)


def list_pending(conn: sqlite3.Connection) -> list[PendingEntry]:
    """Every pending entry without its document, oldest id first."""
    rows = conn.execute(
        "SELECT id, accepted_at, source, check_name, target, attempts, last_error"
        " FROM pending ORDER BY id"
    )
    return stored.pending_entries(rows)


def dead_ids(conn: sqlite3.Connection) -> list[int]:
    """The ids of every dead entry, in order."""
    return [i for (i,) in conn.execute("SELECT id FROM dead ORDER BY id")]


def select_ids(conn: sqlite3.Connection, table: str, ids: Sequence[int]) -> set[int]:
    """Those of ``ids`` that ``table`` (``pending`` or ``dead``) holds."""
    found: set[int] = set()
    for chunk, marks in _chunks(ids):
        rows = conn.execute(f"SELECT id FROM {table} WHERE id IN ({marks})", chunk)
        found.update(i for (i,) in rows)
    return found


def requeue(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    """Move these dead entries back to ``pending``, marked for the daemon's pickup."""
    for chunk, marks in _chunks(ids):
        conn.execute(
            "INSERT INTO pending (id, accepted_at, source, check_name, target, attempts,"
            " last_error, requeued, document_id)"
            " SELECT id, accepted_at, source, check_name, target, attempts, error, 1,"
            f" document_id FROM dead WHERE id IN ({marks})",
            chunk,
        )
        conn.execute(f"DELETE FROM dead WHERE id IN ({marks})", chunk)


def purge_dead(conn: sqlite3.Connection) -> int:
    """Delete every dead entry and the documents nothing uses any more: entries deleted."""
    with transaction(conn):
        purged: int = conn.execute("DELETE FROM dead").rowcount
        conn.execute(f"DELETE FROM documents WHERE {_UNUSED}")
    return purged
