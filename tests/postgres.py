"""A private PostgreSQL 15 server for the tests, one per test session (per xdist worker).

The server runs from Debian's ``postgresql-15`` binaries (``initdb``, ``pg_ctl``)
in a temporary directory on a free loopback port, with its unix socket in that
directory. PostgreSQL refuses to run as root, so when the tests run as root the
directory belongs to the ``postgres`` system user and every server command runs
through ``runuser -u postgres --``.

Two roles: a superuser reached only over the private unix socket (trust, socket
mode 0700), which creates and drops things; and ``hipchatd_test``, which logs in
over TCP on 127.0.0.1 with a random password (scram-sha-256), as hipchatd would.
Each test gets its own schema, owned by ``hipchatd_test`` and dropped afterwards.

Where the binaries (or the ``postgres`` user, as root) are missing, the
fixtures skip with a message naming the package; with
``HIPCHATD_REQUIRE_POSTGRES=1`` (``.ci/run`` sets it) they fail instead, so CI
never passes without having run them. ``HIPCHATD_PG_BINDIR`` points at another
directory of binaries.
"""

from __future__ import annotations

import atexit
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = [
    "BINDIR_ENV",
    "DURABLE_OPTIONS",
    "PACKAGE",
    "REQUIRE_ENV",
    "PgSchema",
    "PostgresServer",
    "PostgresUnavailable",
    "find_bindir",
    "fresh_schema",
    "pg_schema",
    "pg_server",
    "refuse",
]

#: The Debian package that installs the binaries, named in every skip and failure.
PACKAGE = "postgresql-15"
#: Where ``postgresql-15`` puts them (``dpkg -L postgresql-15 | grep bin/``).
DEFAULT_BINDIR = Path("/usr/lib/postgresql/15/bin")
BINDIR_ENV = "HIPCHATD_PG_BINDIR"
#: "1" turns a missing server into a failure instead of a skip.
REQUIRE_ENV = "HIPCHATD_REQUIRE_POSTGRES"
#: The system user that owns the server when the tests run as root.
SERVER_USER = "postgres"
#: The role and database the tests (and hipchatd under test) log in as.
TEST_ROLE = "hipchatd_test"
TEST_DB = "hipchatd_test"
ADMIN_ROLE = "hipchatd_admin"
#: Seconds pg_ctl waits for the server to accept connections (a loaded 2-core box).
START_WAIT = 60
#: Seconds stop waits for the postmaster to exit after pg_ctl returned, polling every STOP_POLL.
STOP_WAIT = 30.0
STOP_POLL = 0.01
#: Tries with a fresh port, for when another process takes the free port first.
START_TRIES = 3
#: Settings for a throwaway server: durability off (the data dies with the test
#: session), connections from loopback only, nothing that could log a statement.
SERVER_OPTIONS = (
    "listen_addresses=127.0.0.1",
    "unix_socket_permissions=0700",
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "log_statement=none",
    "max_connections=50",
)
#: The same server made durable, as production runs it (the benchmark measures with it):
#: every commit waits for its WAL flush.
DURABLE_OPTIONS = tuple(
    o
    for o in SERVER_OPTIONS
    if o.partition("=")[0] not in {"fsync", "synchronous_commit", "full_page_writes"}
)


class PostgresUnavailable(Exception):
    """The binaries or the system user a private server needs are missing."""


def refuse(reason: str) -> None:
    """Skip the test with ``reason``, or fail it when ``HIPCHATD_REQUIRE_POSTGRES=1``."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1 makes this a failure)", pytrace=False)
    pytest.skip(reason)


def find_bindir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``; PostgresUnavailable names the package."""
    bindir = Path(os.environ.get(BINDIR_ENV) or DEFAULT_BINDIR)
    missing = [name for name in ("initdb", "pg_ctl") if not os.access(bindir / name, os.X_OK)]
    if missing:
        raise PostgresUnavailable(
            f"PostgreSQL server binaries {', '.join(missing)} not found in {bindir}: "
            f"install Debian's {PACKAGE} package (apt-get install {PACKAGE}) "
            f"or set {BINDIR_ENV}"
        )
    return bindir


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_exited(pid: int) -> None:
    """Wait until ``pid`` has exited: pg_ctl's --wait ends when the pid file goes, a moment
    before the postmaster itself is gone."""
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in {"Z", "X"}:
            return
        time.sleep(STOP_POLL)


@dataclass(frozen=True, slots=True)
class PgSchema:
    """One test's schema: ``conninfo`` logs in as the test role with it first on the search path.

    ``repr`` leaves the password out; ``conninfo`` holds it.
    """

    conninfo: str = field(repr=False)
    schema: str
    password: str = field(repr=False)


class PostgresServer:
    """One private server: :meth:`start` it, then :meth:`stop` (idempotent, also at exit)."""

    def __init__(self, bindir: Path, options: Sequence[str] = SERVER_OPTIONS) -> None:
        self.bindir = bindir
        self.options = tuple(options)
        self.as_user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self.as_user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise PostgresUnavailable(
                    f"PostgreSQL refuses to run as root and there is no {SERVER_USER!r} "
                    f"system user: install Debian's {PACKAGE} package"
                ) from None
        self.root = Path(tempfile.mkdtemp(prefix="hipchatd-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self.password = secrets.token_urlsafe(24)
        self.started_after = 0.0
        self._removed = False
        atexit.register(self.stop)
        if self.as_user is not None:
            os.chown(self.root, self.as_user.pw_uid, self.as_user.pw_gid)

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        launcher: Sequence[str] = ()
        if self.as_user is not None:
            launcher = ("runuser", "-u", SERVER_USER, "--")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return subprocess.run(
            [*launcher, *argv], cwd=self.root, env=env, capture_output=True, text=True, check=False
        )

    def _check(self, what: str, done: subprocess.CompletedProcess[str]) -> None:
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{what} exited {done.returncode}: {done.stderr.strip()[-2000:]}\n{log}"
            )

    def start(self) -> None:
        """initdb, start on a free port, wait until it accepts connections, create the test role.

        Raises RuntimeError (with the server's log) when the server does not come up.
        """
        begun = time.monotonic()
        self._check(
            "initdb",
            self._run(
                str(self.bindir / "initdb"),
                "--pgdata",
                str(self.data),
                "--username",
                ADMIN_ROLE,
                # The superuser comes in over the 0700 socket only; TCP needs a password.
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ),
        )
        for attempt in range(START_TRIES):
            self.port = _free_port()
            done = self._pg_ctl_start()
            if done.returncode == 0:
                break
            if attempt == START_TRIES - 1:
                self._check("pg_ctl start", done)
        self._create_test_role()
        self.started_after = time.monotonic() - begun

    def _pg_ctl_start(self) -> subprocess.CompletedProcess[str]:
        options = " ".join(
            [f"-p {self.port}", f"-k {self.root}", *(f"-c {o}" for o in self.options)]
        )
        return self._run(
            str(self.bindir / "pg_ctl"),
            "start",
            "--pgdata",
            str(self.data),
            "--log",
            str(self.log),
            "--wait",
            f"--timeout={START_WAIT}",
            "--silent",
            "-o",
            options,
        )

    def pause(self) -> None:
        """Stop the server (fast: sessions are ended), keeping its data and port for resume."""
        self._check(
            "pg_ctl stop",
            self._run(
                str(self.bindir / "pg_ctl"),
                "stop",
                "--pgdata",
                str(self.data),
                "-m",
                "fast",
                "--wait",
                "--silent",
            ),
        )

    def resume(self) -> None:
        """Start the paused server again on the same port."""
        self._check("pg_ctl start", self._pg_ctl_start())

    def admin_conninfo(self, dbname: str = "postgres") -> str:
        """The superuser over the private unix socket (no password)."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(host=str(self.root), port=self.port, user=ADMIN_ROLE, dbname=dbname)

    def conninfo(self, **extra: str) -> str:
        """The test role over TCP on loopback, with its password."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            host="127.0.0.1",
            port=self.port,
            user=TEST_ROLE,
            password=self.password,
            dbname=TEST_DB,
            **extra,
        )

    def _create_test_role(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.admin_conninfo(), autocommit=True) as conn:
            # CREATE ROLE takes no bind parameters: the password goes in as a quoted literal.
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(TEST_ROLE), sql.Literal(self.password)
                )
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(TEST_DB), sql.Identifier(TEST_ROLE)
                )
            )

    def create_schema(self) -> PgSchema:
        """A fresh schema owned by the test role, and a conninfo that uses it."""
        import psycopg
        from psycopg import sql

        name = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(self.admin_conninfo(TEST_DB), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                    sql.Identifier(name), sql.Identifier(TEST_ROLE)
                )
            )
        conninfo = self.conninfo(options=f"-c search_path={name}")
        return PgSchema(conninfo=conninfo, schema=name, password=self.password)

    def drop_schema(self, name: str) -> None:
        """Drop a test's schema with everything in it, ending its sessions first."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.admin_conninfo(TEST_DB), autocommit=True) as conn:
            # A worker runs one test at a time: every session of the test role is that test's,
            # and one left open (holding a lock) would block the DROP.
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (TEST_ROLE,),
            )
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))

    def stop(self) -> None:
        """Stop the server (fast, then immediate) and remove its directory. Safe to call twice."""
        # postmaster.pid also covers a server that came up after pg_ctl gave up waiting.
        pidfile = self.data / "postmaster.pid"
        if not self._removed and pidfile.exists():
            postmaster = int(pidfile.read_text().split()[0])
            pg_ctl = (str(self.bindir / "pg_ctl"), "stop", "--pgdata", str(self.data), "-m")
            if self._run(*pg_ctl, "fast", "--wait").returncode != 0:
                self._run(*pg_ctl, "immediate")
            _wait_exited(postmaster)
        if not self._removed:
            self._removed = True
            shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.stop)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """This session's (this xdist worker's) private server, started on first use."""
    try:
        server = PostgresServer(find_bindir())
    except PostgresUnavailable as exc:
        refuse(str(exc))
        raise AssertionError("unreachable") from exc
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextmanager
def fresh_schema(server: PostgresServer) -> Iterator[PgSchema]:
    """A schema of its own on ``server``, dropped (with its sessions ended) on exit."""
    schema = server.create_schema()
    try:
        yield schema
    finally:
        server.drop_schema(schema.schema)


@pytest.fixture
def pg_schema(pg_server: PostgresServer) -> Iterator[PgSchema]:
    """A schema of this test's own on the private server, dropped when the test ends."""
    with fresh_schema(pg_server) as schema:
        yield schema
