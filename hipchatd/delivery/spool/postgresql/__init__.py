"""The PostgreSQL spool backend: the only code that knows ``psycopg``.

:class:`PostgresSpool` (the daemon's side, :mod:`.daemon`) and
:class:`PostgresAdmin` (the operator commands, :mod:`.admin`) implement the
protocols of :mod:`hipchatd.delivery.spool.store` in one schema of a
PostgreSQL server (``hipchatd.spool``). Beneath them: :mod:`.connect`
(connections, the instance lock, messages without the DSN), :mod:`.schema`
(tables and migrations) and :mod:`.sql` (the statements, on a worker
thread); :mod:`.budgets` keeps HipChat's budget, shared by every instance.
psycopg 3 is called synchronously from worker threads, one connection per
thread, as the SQLite backend calls ``sqlite3``. Every
psycopg exception leaves as a SpoolError (BudgetStoreError in
:mod:`.budgets`) ``from`` it.

Imported only when the configuration chooses this backend: psycopg is the
optional extra ``hipchatd[postgresql]``.
"""

from hipchatd.config import SpoolSettings
from hipchatd.delivery.spool.postgresql.admin import PostgresAdmin, describe_store
from hipchatd.delivery.spool.postgresql.budgets import PostgresBudgetStore
from hipchatd.delivery.spool.postgresql.connect import Server
from hipchatd.delivery.spool.postgresql.daemon import COMMIT_DELAY, RETRY_POLL, PostgresSpool
from hipchatd.delivery.spool.postgresql.schema import SCHEMA_VERSION

__all__ = [
    "COMMIT_DELAY",
    "RETRY_POLL",
    "SCHEMA_VERSION",
    "PostgresAdmin",
    "PostgresBudgetStore",
    "PostgresSpool",
    "describe_store",
    "open_budget_store",
]


def open_budget_store(settings: SpoolSettings) -> PostgresBudgetStore:
    """The budget rows of the spool's schema; connects at first use."""
    return PostgresBudgetStore(Server.of(settings))
