"""The operator's PostgreSQL spool: the :class:`~hipchatd.delivery.spool.store.SpoolAdmin`.

A connection of its own, beside any running daemon (each command is one
transaction). It never creates the schema. A retry notifies the schema's
channel; a running daemon picks the entries up within ``RETRY_POLL``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg

from hipchatd.config import SpoolSettings
from hipchatd.delivery.spool.postgresql import connect, schema, sql
from hipchatd.delivery.spool.postgresql.connect import Server
from hipchatd.delivery.spool.postgresql.daemon import RETRY_POLL
from hipchatd.delivery.spool.store import DeadEntry, PendingEntry, Requeued, SpoolError

__all__ = ["PostgresAdmin", "describe_store"]

T = TypeVar("T")


class PostgresAdmin:
    """The operator commands' handle on a PostgreSQL spool. Create with ``PostgresAdmin.open``."""

    def __init__(self, server: Server, conn: psycopg.Connection[Any]) -> None:
        self._server = server
        self._conn: psycopg.Connection[Any] | None = conn

    @classmethod
    def open(cls, settings: SpoolSettings) -> PostgresAdmin:
        """Connect to the spool a daemon made; never creates one.

        Raises SpoolError when the server cannot be reached, the schema has
        no spool, or its version is not this hipchatd's.
        """
        server = Server.of(settings)
        conn = _connect(server)
        try:
            _check_version(conn, server)
        except BaseException:
            conn.close()
            raise
        return cls(server, conn)

    @property
    def path(self) -> str:
        """The server and schema (never the DSN or its password)."""
        return self._server.label

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
        return self._do(lambda conn: sql.retry(conn, ids, self._server.channel))

    def purge_dead(self) -> int:
        """Delete every dead-lettered entry and the documents left unused: how many."""
        return self._do(sql.purge_dead)

    def close(self) -> None:
        """Close the connection. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _do(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        if self._conn is None:
            raise SpoolError(f"{self.path}: the spool is closed")
        try:
            return fn(self._conn)
        except psycopg.Error as exc:
            raise SpoolError(f"{self.path}: {self._server.cause(exc)}") from exc
        except SpoolError as exc:
            raise SpoolError(f"{self.path}: {exc}") from exc


def describe_store(settings: SpoolSettings) -> str:
    """Connect and read the schema's version: a line for ``check-config --online``. Blocks.

    Raises SpoolError (one line, never the DSN) when the server cannot be
    reached or the schema cannot be used by this hipchatd.
    """
    server = Server.of(settings)
    with _connect(server) as conn:
        found = _schema_version(conn, server)
        info = conn.info
        release = f"PostgreSQL {info.server_version // 10000}.{info.server_version % 10000}"
    if found is None or found == 0:
        state = "no spool yet: the daemon creates it at start"
    elif found < schema.SCHEMA_VERSION:
        state = f"schema version {found}: the daemon migrates it at start"
    else:
        state = f"schema version {found}"
    return f"{server.label} ({release}): {state}"


def _connect(server: Server) -> psycopg.Connection[Any]:
    try:
        return connect.connect(server)
    except psycopg.Error as exc:
        raise connect.cannot_open(server, exc, connect.CONNECT_HINT) from exc


def _schema_version(conn: psycopg.Connection[Any], server: Server) -> int | None:
    try:
        found = schema.version(conn, server.schema)
    except psycopg.Error as exc:
        raise connect.cannot_open(server, exc, "check the role's privileges") from exc
    if found is not None and found > schema.SCHEMA_VERSION:
        raise SpoolError(
            f"the PostgreSQL spool {server.label} has schema version {found}, written by a newer "
            f"hipchatd (this one reads up to {schema.SCHEMA_VERSION}); upgrade hipchatd"
        )
    return found


def _check_version(conn: psycopg.Connection[Any], server: Server) -> None:
    found = _schema_version(conn, server)
    if not found:
        raise SpoolError(
            f"no spool in {server.label} (has the daemon run with this hipchatd.spool?)"
        )
    if found < schema.SCHEMA_VERSION:
        raise SpoolError(
            f"{server.label} was written by an older hipchatd (schema version {found}, this one "
            f"reads {schema.SCHEMA_VERSION}): start the daemon once to upgrade it in place, "
            "then run this again"
        )
