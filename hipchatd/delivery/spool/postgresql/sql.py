"""The PostgreSQL spool's statements, run on a worker thread with the session's connection.

Nothing here touches trio. Each write is one transaction of a few
statements whatever the batch size (rows travel as arrays through
``unnest``), because each round trip costs a network hop and a wake-up of
the worker thread. Every commit that adds or re-queues entries notifies the
schema's channel, so other instances can wake instead of polling.
PostgreSQL text cannot hold NUL: it becomes U+FFFD in the columns hipchatd
fills from events or errors (the document keeps the event as JSON, where NUL
is always escaped); an error text's lone surrogates become ``?`` (events'
strings have none: the readers replace them).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Final

import psycopg
from psycopg.pq import TransactionStatus

from hipchatd.delivery.routing import Target
from hipchatd.delivery.spool import rows as stored
from hipchatd.delivery.spool.group import Marks
from hipchatd.delivery.spool.rows import encode_target
from hipchatd.delivery.spool.store import DeadEntry, Entry, EventEntries, PendingEntry, Requeued

__all__ = [
    "count",
    "list_dead",
    "list_pending",
    "load_documents",
    "load_pending",
    "pick_up",
    "purge_dead",
    "read_lanes",
    "retry",
    "write_events",
    "write_marks",
    "write_round",
]

_ENTRY_COLUMNS: Final = (
    "id, accepted_at, document_id, source, check_name, target, attempts, last_error"
)
_UNUSED: Final = (
    "NOT EXISTS (SELECT 1 FROM pending p WHERE p.document_id = d.id)"
    " AND NOT EXISTS (SELECT 1 FROM dead x WHERE x.document_id = d.id)"
)


def lane(target: Target) -> str:
    """The lane a target's entries queue in, across every instance: ``room:ops``."""
    return f"{target.kind}:{target.name}"


def _text(value: str) -> str:
    return value.replace("\x00", "\ufffd")


def _error_text(value: str) -> str:
    """An error or reason as PostgreSQL text: without NUL, and lone surrogates as ``?``."""
    return _text(value).encode("utf-8", "replace").decode("utf-8")


def _notify(conn: psycopg.Connection[Any], channel: str, what: str) -> None:
    conn.execute("SELECT pg_notify(%s, %s)", [channel, what])


# --- the daemon's writes ---------------------------------------------------------------------


def write_events(
    conn: psycopg.Connection[Any],
    batch: list[EventEntries],
    origin: uuid.UUID,
    channel: str,
    uncertain: bool,
) -> tuple[int, list[EventEntries]]:
    """Store these events (each document once): (entries stored, the events with their ids).

    Each event's entries are numbered from ``entry_ids`` in this transaction
    (the ids ``submit`` gave them are this process's: they name the event as
    ``origin_id``). With ``uncertain`` (an earlier try of some of these may
    have committed), the events already stored are read back instead of
    written again.
    """
    with _transaction(conn):
        stored: dict[int, list[tuple[int, int]]] = {}
        if uncertain:
            stored = _stored(conn, origin, [entries[0].id for _, entries in batch])
        count = sum(len(entries) for _, entries in batch if entries[0].id not in stored)
        _lock_lanes(conn, batch)
        rows = conn.execute(
            "SELECT nextval('entry_ids') FROM generate_series(1, %s)", [count]
        ).fetchall()
        ids = iter(sorted(i for (i,) in rows))
        committed: list[EventEntries] = []
        documents: list[tuple[int, int, int, str]] = []
        pending: list[tuple[Any, ...]] = []
        for handle, entries in batch:
            first = entries[0]
            if first.id in stored:
                renumbered = [
                    dataclasses.replace(e, id=i)
                    for e, (i, _) in zip(entries, stored[first.id], strict=False)
                ]
                committed.append((handle, renumbered))
                continue
            renumbered = [dataclasses.replace(e, id=next(ids)) for e in entries]
            document_id = renumbered[0].id
            documents.append((document_id, first.id, len(entries), first.document))
            pending += [
                (
                    e.id,
                    lane(e.target),
                    e.accepted_at,
                    _text(e.source),
                    _text(e.check),
                    encode_target(e.target),
                    document_id,
                )
                for e in renumbered
            ]
            committed.append((handle, renumbered))
        if documents:
            ids_, origin_ids, counts, texts = zip(*documents, strict=True)
            conn.execute(
                "INSERT INTO documents (id, origin, origin_id, entries, document)"
                " SELECT d.id, %s, d.origin_id, d.entries, d.document FROM unnest("
                "%b::bigint[], %b::bigint[], %b::integer[], %b::text[])"
                " AS d(id, origin_id, entries, document)",
                [origin, list(ids_), list(origin_ids), list(counts), list(texts)],
            )
            columns = [list(column) for column in zip(*pending, strict=True)]
            conn.execute(
                "INSERT INTO pending (id, lane, accepted_at, source, check_name, target,"
                " document_id) SELECT * FROM unnest(%b::bigint[], %b::text[],"
                " %b::double precision[], %b::text[], %b::text[], %b::text[], %b::bigint[])",
                columns,
            )
            _notify(conn, channel, "pending")
    return sum(len(entries) for _, entries in committed), committed


def write_round(
    conn: psycopg.Connection[Any],
    marks: Marks,
    batch: list[EventEntries],
    origin: uuid.UUID,
    channel: str,
    uncertain: bool,
) -> tuple[int, int, int, list[EventEntries]]:
    """``write_marks`` and ``write_events`` in one transaction (one COMMIT, one WAL flush on
    the server): (removed from pending, moved to dead, entries stored, the events with ids)."""
    with conn.transaction():
        removed, moved = write_marks(conn, marks.attempts, marks.dead, marks.delivered)
        return removed, moved, *write_events(conn, batch, origin, channel, uncertain)


def _transaction(conn: psycopg.Connection[Any]) -> AbstractContextManager[Any]:
    """A transaction of its own, or inside ``write_round``'s a part of it (no SAVEPOINT:
    a failure rolls back the whole round, and each SAVEPOINT would cost a round trip)."""
    if conn.info.transaction_status == TransactionStatus.INTRANS:
        return nullcontext()
    return conn.transaction()


def _lock_lanes(conn: psycopg.Connection[Any], batch: list[EventEntries]) -> None:
    """Serialise the commits to each lane of ``batch`` until this transaction ends.

    Taken before ids are drawn, so within a lane id order is commit order
    and a reader of ``id > last`` never misses an earlier entry; taken in
    the order of the lock keys, so two commits never wait on each other.
    """
    lanes = sorted({lane(e.target) for _, entries in batch for e in entries})
    conn.execute(
        "SELECT count(pg_advisory_xact_lock(hashtext('hipchatd lane ' || current_schema()), k))"
        " FROM (SELECT DISTINCT hashtext(l) AS k FROM unnest(%b::text[]) AS l ORDER BY k) AS s",
        [lanes],
    )


def _stored(
    conn: psycopg.Connection[Any], origin: uuid.UUID, origin_ids: list[int]
) -> dict[int, list[tuple[int, int]]]:
    """origin_id -> [(entry id, document id)] of the events of ``origin`` already stored."""
    rows = conn.execute(
        "SELECT d.origin_id, p.id, d.id FROM documents d JOIN pending p ON p.document_id = d.id"
        " WHERE d.origin = %s AND d.origin_id = ANY(%b) ORDER BY p.id",
        [origin, origin_ids],
    )
    found: dict[int, list[tuple[int, int]]] = {}
    for origin_id, entry_id, document_id in rows:
        found.setdefault(origin_id, []).append((entry_id, document_id))
    return found


def write_marks(
    conn: psycopg.Connection[Any],
    attempts: list[tuple[str, int]],
    dead: list[tuple[float, str, str | None, int]],
    delivered: list[int],
) -> tuple[int, int]:
    """Attempts ``(error, id)``, dead-letter moves ``(dead_at, reason, error, id)`` and
    deliveries, in one transaction; documents left unused go. (removed, moved to dead)."""
    removed = moved = 0
    with _transaction(conn):
        if attempts:
            tries = Counter(i for _, i in attempts)
            last = {i: _error_text(error) for error, i in attempts}
            conn.execute(
                "UPDATE pending p SET attempts = p.attempts + m.n, last_error = m.error"
                " FROM unnest(%b::bigint[], %b::integer[], %b::text[]) AS m(id, n, error)"
                " WHERE p.id = m.id",
                [list(last), [tries[i] for i in last], list(last.values())],
            )
        if dead:
            chosen = {d[3]: d for d in dead}
            at, reasons, errors, ids = zip(*chosen.values(), strict=True)
            moved = conn.execute(
                "INSERT INTO dead (id, lane, accepted_at, dead_at, source, check_name, target,"
                " attempts, reason, error, document_id)"
                " SELECT p.id, p.lane, p.accepted_at, m.dead_at, p.source, p.check_name,"
                " p.target, p.attempts, m.reason, coalesce(m.error, p.last_error), p.document_id"
                " FROM pending p JOIN unnest(%b::bigint[], %b::double precision[], %b::text[],"
                " %b::text[]) AS m(id, dead_at, reason, error) ON p.id = m.id",
                [
                    list(ids),
                    list(at),
                    [_error_text(r) for r in reasons],
                    [None if e is None else _error_text(e) for e in errors],
                ],
            ).rowcount
        if dead or delivered:
            gone = sorted({*delivered, *(d[3] for d in dead)})
            documents = [
                d
                for (d,) in conn.execute(
                    "DELETE FROM pending WHERE id = ANY(%b) RETURNING document_id", [gone]
                )
            ]
            removed = len(documents)
            _delete_unused(conn, sorted(set(documents)))
    return removed, moved


def _delete_unused(conn: psycopg.Connection[Any], documents: list[int]) -> None:
    if documents:
        conn.execute(f"DELETE FROM documents d WHERE d.id = ANY(%b) AND {_UNUSED}", [documents])


# --- the daemon's reads ----------------------------------------------------------------------


def count(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """(pending, dead). Counting pending reads every row, once per start."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pending), (SELECT count(*) FROM dead)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _entries(
    conn: psycopg.Connection[Any], rows: Iterable[Sequence[Any]], requeued: bool
) -> list[Entry]:
    """Entries from ``_ENTRY_COLUMNS`` rows, each event's document read once and shared."""
    found = list(rows)
    documents = _documents(conn, sorted({row[2] for row in found}))
    return stored.entries(found, documents, requeued=requeued)


def _documents(conn: psycopg.Connection[Any], ids: Sequence[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = conn.execute("SELECT id, document FROM documents WHERE id = ANY(%b)", [list(ids)])
    return dict(rows.fetchall())


_RESET_REQUEUED: Final = (
    "UPDATE pending SET requeued = false, attempts = 0, last_error = NULL, accepted_at = %s"
    " WHERE requeued"
)


def load_pending(conn: psycopg.Connection[Any], now: float) -> list[Entry]:
    """Every pending entry, in id order; re-queued ones are reset to ``now`` first."""
    with conn.transaction():
        conn.execute(_RESET_REQUEUED, [now])
        rows = conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM pending ORDER BY id")
        return _entries(conn, rows, requeued=False)


def load_documents(conn: psycopg.Connection[Any], ids: list[int]) -> dict[int, str]:
    """Entry id -> document for the pending ones among ``ids``; each document read once."""
    rows = conn.execute(
        "SELECT p.id, d.document FROM pending p JOIN documents d ON d.id = p.document_id"
        " WHERE p.id = ANY(%b)",
        [ids],
    )
    return dict(rows.fetchall())


def pick_up(conn: psycopg.Connection[Any], now: float) -> tuple[list[Entry], int]:
    """(entries an operator re-queued, reset to ``now``; the dead count)."""
    with conn.transaction():
        rows = conn.execute(_RESET_REQUEUED + f" RETURNING {_ENTRY_COLUMNS}", [now]).fetchall()
        entries = _entries(conn, sorted(rows), requeued=True)
        row = conn.execute("SELECT count(*) FROM dead").fetchone()
    return entries, int(row[0]) if row else 0


def read_lanes(conn: psycopg.Connection[Any], after: dict[str, int], now: float) -> list[Entry]:
    """Pending entries of these lanes with ids above each lane's mark, in id order.

    Entries re-queued in these lanes come too (their ids are old), reset to ``now`` first.
    """
    if not after:
        return []
    lanes = list(after)
    with conn.transaction():
        requeued = [
            i
            for (i,) in conn.execute(
                "UPDATE pending SET requeued = false, attempts = 0, last_error = NULL,"
                " accepted_at = %b WHERE requeued AND lane = ANY(%b) RETURNING id",
                [now, lanes],
            )
        ]
        rows = conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM pending p JOIN unnest(%b::text[], %b::bigint[])"
            " AS l(lane, mark) ON p.lane = l.lane WHERE p.id > l.mark OR p.id = ANY(%b)"
            " ORDER BY p.id",
            [lanes, [after[name] for name in lanes], requeued],
        )
        return _entries(conn, rows, requeued=False)


# --- the operator's reads and writes ---------------------------------------------------------


def list_pending(conn: psycopg.Connection[Any]) -> list[PendingEntry]:
    """Every pending entry without its document, oldest id first."""
    rows = conn.execute(
        "SELECT id, accepted_at, source, check_name, target, attempts, last_error"
        " FROM pending ORDER BY id"
    )
    return stored.pending_entries(rows)


def list_dead(conn: psycopg.Connection[Any]) -> list[DeadEntry]:
    """Every dead entry, oldest id first."""
    rows = conn.execute(
        "SELECT id, accepted_at, dead_at, source, check_name, target, attempts, reason, error"
        " FROM dead ORDER BY id"
    )
    return stored.dead_entries(rows)


def retry(conn: psycopg.Connection[Any], ids: Sequence[int] | None, channel: str) -> Requeued:
    """Move these dead entries (None: all) back to ``pending`` for pickup. All or nothing."""
    with conn.transaction():
        if ids is None:
            chosen = [i for (i,) in conn.execute("SELECT id FROM dead ORDER BY id FOR UPDATE")]
        else:
            chosen = list(dict.fromkeys(ids))
            rows = conn.execute(
                "SELECT m.id, EXISTS (SELECT 1 FROM dead WHERE dead.id = m.id),"
                " EXISTS (SELECT 1 FROM pending WHERE pending.id = m.id)"
                " FROM unnest(%b::bigint[]) WITH ORDINALITY AS m(id, n) ORDER BY m.n",
                [chosen],
            ).fetchall()
            pending = tuple(i for i, is_dead, is_pending in rows if not is_dead and is_pending)
            unknown = tuple(i for i, is_dead, is_pending in rows if not is_dead and not is_pending)
            if pending or unknown:
                return Requeued(pending=pending, unknown=unknown)
        if chosen:
            conn.execute(
                "INSERT INTO pending (id, lane, accepted_at, source, check_name, target,"
                " attempts, last_error, requeued, document_id)"
                " SELECT id, lane, accepted_at, source, check_name, target, attempts, error,"
                " true, document_id FROM dead WHERE id = ANY(%b)",
                [chosen],
            )
            conn.execute("DELETE FROM dead WHERE id = ANY(%b)", [chosen])
            _notify(conn, channel, "requeued")
    return Requeued(ids=tuple(chosen))


def purge_dead(conn: psycopg.Connection[Any]) -> int:
    """Delete every dead entry and the documents nothing uses any more: entries deleted."""
    with conn.transaction():
        rows = conn.execute("DELETE FROM dead RETURNING document_id").fetchall()
        _delete_unused(conn, sorted({d for (d,) in rows}))
    return len(rows)
