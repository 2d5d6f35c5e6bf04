"""Connections to the PostgreSQL spool: opening them, the session, and the messages.

The DSN (it may hold a password) never leaves this module in a message:
every text built from a psycopg error is scrubbed of each form of the DSN
and its password (``SpoolSettings.secrets``), and the spool is named by a
label built from the parts libpq reports (user, host, port, database,
schema). A broken connection is replaced at the next call on the worker
thread (:class:`Session`). Several daemons may share a schema: lane leases
(:mod:`.leases`) keep one sender per room.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
import structlog
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.conninfo import make_conninfo

from hipchatd.config import SpoolSettings
from hipchatd.delivery.spool.store import SpoolError
from hipchatd.redaction import Redactor

__all__ = [
    "CONNECT_TIMEOUT",
    "Server",
    "Session",
    "Unreachable",
    "answers",
    "cause",
    "connect",
    "does_not_fit",
    "is_transient",
]

log = structlog.get_logger()

#: Seconds libpq waits to establish a connection before giving up (then the next retry).
CONNECT_TIMEOUT: Final = 10
#: TCP keepalives: probe after 10 s idle, every 5 s, give up after 3 misses, so a server
#: that vanished (power off, cut cable) is noticed in about 25 s instead of hours.
KEEPALIVES_IDLE: Final = 10
KEEPALIVES_INTERVAL: Final = 5
KEEPALIVES_COUNT: Final = 3
#: Milliseconds data may stay unacknowledged before the connection is dropped: a commit
#: sent to a server that vanished fails within this instead of hanging the writer.
TCP_USER_TIMEOUT_MS: Final = 30_000
APPLICATION_NAME: Final = "hipchatd"
#: Advisory-lock namespace (the first key of the pair; the second is the schema's hash).
#: Cannot collide with one-key locks other programs take: those use the 64-bit form.
LOCK_MIGRATE: Final = "hipchatd migrate"


@dataclass(frozen=True, slots=True)
class Server:
    """Where the spool lives: the DSN (hidden), the schema, and what may be printed."""

    settings: SpoolSettings = field(repr=False)
    #: ``postgresql://user@host:port/db, schema s``: never holds the password.
    label: str
    redactor: Redactor = field(repr=False)

    @classmethod
    def of(cls, settings: SpoolSettings) -> Server:
        """The server ``settings`` names; never connects. Raises SpoolError for a bad DSN."""
        redactor = Redactor(*settings.secrets())
        try:
            parts = psycopg.conninfo.conninfo_to_dict(settings.dsn.reveal())
        except psycopg.Error as exc:
            # libpq's message quotes the part it could not parse, which may be a piece of
            # the password: the cause stays in ``__cause__``, out of every printed line.
            raise SpoolError(
                "hipchatd.spool.dsn: libpq cannot parse it (value hidden); expected a libpq "
                "connection URI or key=value string"
            ) from exc
        return cls(settings, _label(parts, settings.schema), redactor)

    @property
    def schema(self) -> str:
        return self.settings.schema

    @property
    def channel(self) -> str:
        """The NOTIFY channel of this schema's spool (new entries, re-queued entries)."""
        return f"hipchatd.{self.settings.schema}"

    def cause(self, exc: BaseException) -> str:
        """The error as one line for an operator, without the DSN or its password."""
        return self.redactor.redact(cause(exc))


def _label(parts: dict[str, Any], schema: str) -> str:
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = str(parts.get("host") or parts.get("hostaddr") or "localhost")
    port = f":{parts['port']}" if parts.get("port") else ""
    database = f"/{parts['dbname']}" if parts.get("dbname") else ""
    return f"postgresql://{user}{host}{port}{database}, schema {schema}"


def _flat(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def cause(exc: BaseException) -> str:
    """psycopg's message on one line, with the SQLSTATE when the server sent one."""
    state = getattr(exc, "sqlstate", None)
    text = _flat(str(exc)) or type(exc).__name__
    return f"{text} (SQLSTATE {state})" if state else text


def is_transient(exc: Exception) -> bool:
    """A failure worth retrying: the server or the connection, not a bug of ours.

    psycopg raises OperationalError for a lost or refused connection, a server shutting
    down, a full disk, a deadlock or a serialization failure.
    """
    return isinstance(exc, psycopg.OperationalError) or does_not_fit(exc)


def does_not_fit(exc: Exception) -> bool:
    """The server cannot hold this write (disk full, a value it cannot store): pieces might."""
    return isinstance(
        exc,
        pg_errors.DiskFull
        | pg_errors.ProgramLimitExceeded
        | psycopg.DataError
        # Text that is not UTF-8 (a lone surrogate) fails before it is sent.
        | UnicodeEncodeError,
    )


def connect(server: Server) -> psycopg.Connection[Any]:
    """A new autocommit connection with the spool's schema first on ``search_path``. Blocks.

    Raises psycopg's error (the caller translates it).
    """
    conn = psycopg.connect(
        server.settings.dsn.reveal(),
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT,
        application_name=APPLICATION_NAME,
        tcp_user_timeout=TCP_USER_TIMEOUT_MS,
        keepalives=1,
        keepalives_idle=KEEPALIVES_IDLE,
        keepalives_interval=KEEPALIVES_INTERVAL,
        keepalives_count=KEEPALIVES_COUNT,
    )
    try:
        conn.execute("SELECT set_config('search_path', %s, false)", [f'"{server.schema}"'])
    except BaseException:
        conn.close()
        raise
    return conn


def answers(server: Server) -> bool:
    """True when a server answers at the DSN's address, whether or not it accepts the login.

    libpq's ``PQping``: a server that asked for a password, or refused the
    login with a reason (a wrong password, a database that does not exist),
    answers; no connection, a timeout, a name that does not resolve, or a
    server starting up or shutting down (``57P03``) do not. A connection
    failure carries no SQLSTATE in psycopg, so this is how the two are told
    apart in any language. Blocks (at most ``CONNECT_TIMEOUT`` per address).
    """
    conninfo = make_conninfo(server.settings.dsn.reveal(), connect_timeout=CONNECT_TIMEOUT)
    return pq.PGconn.ping(conninfo.encode()) not in (pq.Ping.NO_RESPONSE, pq.Ping.REJECT)


class Unreachable(SpoolError):
    """The spool's server could not be reached at start: nothing answered, or it is not
    taking sessions (starting up, shutting down). A server that refuses the login is not
    unreachable (SpoolError)."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        #: the error as one line, without the DSN or its password (for ``spool.degraded``).
        self.cause = cause


def cannot_open(server: Server, exc: BaseException, hint: str) -> SpoolError:
    """The one line an operator reads when the spool cannot be opened."""
    return SpoolError(
        f"cannot open the PostgreSQL spool {server.label}: {server.cause(exc)}; {hint}"
    )


#: What to check when the server cannot be reached or refuses us.
CONNECT_HINT: Final = (
    "check hipchatd.spool.dsn (or the hipchat_spool_dsn credential), the password "
    "(PGPASSWORD, ~/.pgpass) and that the server accepts connections"
)


class Session:
    """The connection of one worker thread, replaced at the next call after it broke."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._conn: psycopg.Connection[Any] | None = None

    def get(self) -> psycopg.Connection[Any]:
        """The live connection, connecting (again) if there is none. On the worker thread."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if conn is not None:
            conn.close()
            self._conn = None
            log.warning("spool.reconnecting", path=self.server.label)
        self._conn = connect(self.server)
        return self._conn

    def close(self) -> None:
        """Close the connection (its session's locks go with it). Idempotent; never raises."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
