"""The SQLite spool backend: the only code that knows ``sqlite3``.

:class:`SqliteSpool` (the daemon's side, :mod:`.daemon`) and
:class:`SqliteAdmin` (the operator commands, :mod:`.admin`) implement the
protocols of :mod:`hipchatd.delivery.spool.store` on one file,
``state_dir/spool.sqlite3`` (or memory, for ``":memory:"``). Beneath them:
:mod:`.files` (opening, the lock, messages), :mod:`.schema` (tables and
migrations), :mod:`.sql` (the statements, on a worker thread),
:mod:`.writer` (SQLite's side of group commit) and :mod:`.lookout` (what other connections
changed). Every ``sqlite3`` exception leaves as a SpoolError ``from`` it.
"""

from hipchatd.delivery.spool.sqlite.admin import SqliteAdmin
from hipchatd.delivery.spool.sqlite.daemon import SHUTDOWN_FLUSH, SqliteSpool
from hipchatd.delivery.spool.sqlite.files import SPOOL_FILE
from hipchatd.delivery.spool.sqlite.lookout import RETRY_POLL
from hipchatd.delivery.spool.sqlite.schema import SCHEMA_VERSION
from hipchatd.delivery.spool.sqlite.sql import BATCH
from hipchatd.delivery.spool.sqlite.writer import WRITE_RETRY

__all__ = [
    "BATCH",
    "RETRY_POLL",
    "SCHEMA_VERSION",
    "SHUTDOWN_FLUSH",
    "SPOOL_FILE",
    "WRITE_RETRY",
    "SqliteAdmin",
    "SqliteSpool",
]
