"""HipChat's budget in the spool's schema: one row per token and per room, shared by every instance.

:class:`PostgresBudgetStore` implements
:class:`hipchatd.delivery.shared_budget.BudgetStore` on the table
``budgets(key, remaining, resets_at, updated_at)``. A consume is one
transaction of two statements sent in one round trip (psycopg's pipeline
mode): the first starts a window for each key that has none (or whose window
is over) and locks both rows, in key order so two consumes never wait on each
other in a cycle (``INSERT ... ON CONFLICT DO UPDATE`` locks a conflicting row
even where its ``WHERE`` leaves it unchanged); the second takes a unit of each
row only if every row has one left. Row locks, not advisory locks: they end
with the transaction, also when the connection breaks. Windows are judged by
the caller's Unix time (the clock HipChat's resets are read with), not the
server's, so every comparison uses one clock.

Connections are this module's own (not the spool's), named
``hipchatd budget <schema>`` so that :meth:`PostgresBudgetStore.peers` can
count the instances sharing the schema in ``pg_stat_activity``. Every
psycopg error leaves as a BudgetStoreError ``from`` it, without the DSN.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Final

import psycopg
import structlog

from hipchatd.delivery.shared_budget import BudgetStoreError, Report, Row, Want
from hipchatd.delivery.spool.postgresql.connect import Server, connect

__all__ = ["PostgresBudgetStore"]

log = structlog.get_logger()

#: Seconds within which a reported reset names the row's window (HipChat rounds its resets
#: up to whole seconds; windows are a minute or more apart).
SAME_WINDOW_SLACK: Final = 1.0
#: PostgreSQL keeps the first 63 bytes of an application_name (NAMEDATALEN - 1).
_NAME_BYTES: Final = 63

_SEED: Final = """
INSERT INTO budgets AS b (key, remaining, resets_at, updated_at)
SELECT k, l, to_timestamp(%s::float8 + w), now()
FROM unnest(%s::text[], %s::int[], %s::float8[]) AS t(k, l, w)
ORDER BY k
ON CONFLICT (key) DO UPDATE
SET remaining = excluded.remaining, resets_at = excluded.resets_at, updated_at = now()
WHERE b.resets_at <= to_timestamp(%s::float8)
"""

_TAKE: Final = """
WITH found AS (SELECT key, remaining, resets_at FROM budgets WHERE key = ANY(%(keys)s::text[])),
verdict AS (SELECT count(*) = %(count)s AND bool_and(remaining > 0) AS granted FROM found),
taken AS (
    UPDATE budgets b SET remaining = b.remaining - 1, updated_at = now()
    FROM verdict WHERE verdict.granted AND b.key = ANY(%(keys)s::text[])
    RETURNING b.key, b.remaining
)
SELECT (SELECT granted FROM verdict), f.key, coalesce(t.remaining, f.remaining),
       extract(epoch FROM f.resets_at)::float8
FROM found f LEFT JOIN taken t USING (key)
"""

# HipChat is the authority, but its answer is late: within the row's window it may lower
# what is left, never raise it, except by the units its limit is above the one the request
# was granted under (the row started with a lower limit); a later reset is a window HipChat
# opened since.
_RECORD: Final = """
INSERT INTO budgets AS b (key, remaining, resets_at, updated_at)
VALUES (%(key)s, %(remaining)s,
        coalesce(to_timestamp(%(at)s::float8), to_timestamp(%(now)s::float8 + %(window)s)), now())
ON CONFLICT (key) DO UPDATE SET
    remaining = CASE
        WHEN b.resets_at <= to_timestamp(%(now)s::float8) THEN excluded.remaining
        WHEN %(at)s::float8 IS NULL THEN 0
        WHEN excluded.resets_at > b.resets_at + make_interval(secs => %(slack)s)
            THEN excluded.remaining
        ELSE least(b.remaining + %(raised)s, excluded.remaining)
    END,
    resets_at = CASE
        WHEN %(at)s::float8 IS NULL AND b.resets_at > to_timestamp(%(now)s::float8)
            THEN b.resets_at
        ELSE excluded.resets_at
    END,
    updated_at = now()
"""

_PEERS: Final = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = %s
"""


class PostgresBudgetStore:
    """The budget rows of one schema. Blocking; its one connection serves one call at a time.

    A reload may leave two budgets on one store for a while (the old one
    settling its last requests): a lock keeps their transactions apart.
    """

    def __init__(self, server: Server) -> None:
        self._server = server
        name = f"hipchatd budget {server.schema}".encode()[:_NAME_BYTES]
        self._name = name.decode(errors="ignore")
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    def consume(self, wants: Sequence[Want], now: float) -> tuple[bool, tuple[Row, ...]]:
        keys = [want.key for want in wants]
        try:
            with self._lock:
                found = self._consume(keys, wants, now)
        except psycopg.Error as exc:
            raise self._failed("consume", exc) from exc
        granted = bool(found and found[0][0])
        return granted, tuple(Row(key, int(left), float(at)) for _, key, left, at in found)

    def _consume(self, keys: list[str], wants: Sequence[Want], now: float) -> list[Any]:
        conn = self._connection()
        with conn.pipeline(), conn.transaction():
            limits = [want.limit for want in wants]
            windows = [float(want.window) for want in wants]
            conn.execute(_SEED, [now, keys, limits, windows, now])
            cursor = conn.execute(_TAKE, {"keys": keys, "count": len(set(keys))})
        return cursor.fetchall()

    def record(self, reports: Sequence[Report], now: float) -> None:
        params = [
            {
                "key": report.key,
                "remaining": max(0, report.remaining),
                "at": report.resets_at,
                "window": float(report.window),
                "raised": max(0, report.raised),
                "slack": SAME_WINDOW_SLACK,
                "now": now,
            }
            for report in reports
            # A window that is over already says nothing.
            if report.resets_at is None or report.resets_at > now
        ]
        if not params:
            return
        try:
            with self._lock:
                conn = self._connection()
                with conn.transaction(), conn.cursor() as cursor:
                    cursor.executemany(_RECORD, params)
        except psycopg.Error as exc:
            raise self._failed("record", exc) from exc

    def peers(self) -> int:
        try:
            with self._lock:
                row = self._connection().execute(_PEERS, [self._name]).fetchone()
        except psycopg.Error as exc:
            raise self._failed("count the instances of", exc) from exc
        return max(1, int(row[0]) if row else 1)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self.close()
        conn = connect(self._server)
        try:
            conn.execute("SELECT set_config('application_name', %s, false)", [self._name])
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _failed(self, action: str, exc: psycopg.Error) -> BudgetStoreError:
        return BudgetStoreError(
            f"cannot {action} the shared budget in {self._server.label}: {self._server.cause(exc)}"
        )
