"""The PostgreSQL spool's tables, created and migrated by hipchatd in the configured schema.

Version 1 (``migrations`` records each version applied, by which hipchatd)::

    documents(id, origin, origin_id, entries, document)   one row per event
    pending(id, lane, accepted_at, source, check_name, target, attempts,
            last_error, requeued, document_id)            one row per target
    dead(id, lane, accepted_at, dead_at, source, check_name, target,
         attempts, reason, error, document_id)
    leases(lane, owner, expires_at)                       empty until lanes are leased
    budgets(key, remaining, resets_at, updated_at)        empty until the budget is shared

Entry ids come from the sequence ``entry_ids`` inside the commit that
stores them, so they are acceptance order across every instance writing to
the schema and are never reused. ``lane`` (``room:NAME`` or ``user:NAME``)
with ``id`` orders a room's entries: the index ``(lane, id)`` is what an
instance owning a lane reads. ``document_id`` is the id of the event's
first entry; a document is deleted in the transaction that removes its last
entry. ``(origin, origin_id)`` names an event by the process that accepted
it (a random id per open spool) and its id there, so writing an event twice
(a commit retried after the connection broke during COMMIT) stores it once.

Several instances may start at once: migration runs in one transaction
under a transaction-level advisory lock, so the second waits and then finds
the schema current.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import psycopg
import structlog
from psycopg import sql

from hipchatd import __version__
from hipchatd.delivery.spool.postgresql.connect import LOCK_MIGRATE

__all__ = ["SCHEMA_VERSION", "SchemaMismatch", "migrate", "version"]

log = structlog.get_logger()

SCHEMA_VERSION: Final = 1
#: Milliseconds migration waits for a lock (another instance migrating, a long transaction on
#: the tables) before the start fails with a message, instead of hanging.
MIGRATION_LOCK_TIMEOUT_MS: Final = 60_000

#: Version 1, each statement with ``{s}`` for the schema.
_VERSION_1: Final[tuple[str, ...]] = (
    """CREATE TABLE {s}.migrations (
        version integer PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now(),
        hipchatd text NOT NULL
    )""",
    "CREATE SEQUENCE {s}.entry_ids AS bigint",
    """CREATE TABLE {s}.documents (
        id bigint PRIMARY KEY,
        origin uuid NOT NULL,
        origin_id bigint NOT NULL,
        entries integer NOT NULL,
        document text NOT NULL,
        UNIQUE (origin, origin_id)
    )""",
    """CREATE TABLE {s}.pending (
        id bigint PRIMARY KEY,
        lane text NOT NULL,
        accepted_at double precision NOT NULL,
        source text NOT NULL,
        check_name text NOT NULL,
        target text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        last_error text,
        requeued boolean NOT NULL DEFAULT false,
        document_id bigint NOT NULL
    )""",
    # A lane's entries in acceptance order: what the lane's owner reads.
    "CREATE INDEX pending_lane ON {s}.pending (lane, id)",
    "CREATE INDEX pending_document ON {s}.pending (document_id)",
    # Partial: empty in normal operation, so it costs nothing per insert.
    "CREATE INDEX pending_requeued ON {s}.pending (id) WHERE requeued",
    """CREATE TABLE {s}.dead (
        id bigint PRIMARY KEY,
        lane text NOT NULL,
        accepted_at double precision NOT NULL,
        dead_at double precision NOT NULL,
        source text NOT NULL,
        check_name text NOT NULL,
        target text NOT NULL,
        attempts integer NOT NULL,
        reason text NOT NULL,
        error text,
        document_id bigint NOT NULL
    )""",
    "CREATE INDEX dead_document ON {s}.dead (document_id)",
    """CREATE TABLE {s}.leases (
        lane text PRIMARY KEY,
        owner uuid NOT NULL,
        expires_at timestamptz NOT NULL
    )""",
    """CREATE TABLE {s}.budgets (
        key text PRIMARY KEY,
        remaining integer NOT NULL,
        resets_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )""",
)


class SchemaMismatch(Exception):
    """The schema holds something this hipchatd cannot use as its spool; the message says why."""


def version(conn: psycopg.Connection[Any], schema: str) -> int | None:
    """The spool's schema version: None without the schema, 0 without hipchatd's tables."""
    row = conn.execute(
        "SELECT to_regclass(quote_ident(%s) || '.migrations') IS NOT NULL"
        " FROM pg_namespace WHERE nspname = %s",
        [schema, schema],
    ).fetchone()
    if row is None:
        return None
    if not row[0]:
        return 0
    query = sql.SQL("SELECT coalesce(max(version), 0) FROM {}.migrations").format(
        sql.Identifier(schema)
    )
    found = conn.execute(query).fetchone()
    return int(found[0]) if found else 0


def migrate(conn: psycopg.Connection[Any], schema: str, label: str) -> int:
    """Create the schema and its tables, or bring them up to date: one transaction.

    Returns the version found (0: created now). Raises SchemaMismatch for a
    newer schema, or a schema that holds other tables.
    """
    with conn.transaction():
        conn.execute(
            "SELECT set_config('lock_timeout', %s, true)", [f"{MIGRATION_LOCK_TIMEOUT_MS}ms"]
        )
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))", [LOCK_MIGRATE, schema]
        )
        found = version(conn, schema)
        if found is None:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            found = 0
        if found > SCHEMA_VERSION:
            raise SchemaMismatch(
                f"it has schema version {found}, written by a newer hipchatd (this one "
                f"reads up to {SCHEMA_VERSION}); upgrade hipchatd"
            )
        if found == 0 and _has_relations(conn, schema):
            raise SchemaMismatch(
                f"schema {schema} holds tables that are not a hipchatd spool; "
                "choose another hipchatd.spool.schema"
            )
        for step in range(found + 1, SCHEMA_VERSION + 1):
            _MIGRATIONS[step](conn, schema)
            conn.execute(
                sql.SQL("INSERT INTO {}.migrations (version, hipchatd) VALUES (%s, %s)").format(
                    sql.Identifier(schema)
                ),
                [step, __version__],
            )
    if found < SCHEMA_VERSION:
        log.info("spool.migrated", path=label, from_version=found, to_version=SCHEMA_VERSION)
    return found


def _has_relations(conn: psycopg.Connection[Any], schema: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s)",
        [schema],
    ).fetchone()
    return bool(row and row[0])


def _to_version_1(conn: psycopg.Connection[Any], schema: str) -> None:
    for statement in _VERSION_1:
        conn.execute(sql.SQL(statement).format(s=sql.Identifier(schema)))


#: Schema version -> the step that brings the version before it there (inside the transaction).
_MIGRATIONS: Final[dict[int, Callable[[psycopg.Connection[Any], str], None]]] = {1: _to_version_1}
