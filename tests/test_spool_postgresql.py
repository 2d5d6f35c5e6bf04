"""The PostgreSQL spool backend: what the contract does not say (``test_spool_contract.py``).

Migrations (from nothing, by two processes at once, a newer schema), one
daemon per schema, the DSN and its password never printed, a server that
refuses the login at start (one line; one that does not answer is told
apart), a connection lost mid-run (the batch is retried, never reported twice
nor lost), the operator commands and ``check-config --online``, and end to
end: the real daemon on PostgreSQL with the real emulator, ``kill -9`` and
restart, nothing accepted lost. Every test runs on the test session's
private server (``tests/postgres.py``), in a schema of its own.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from structlog.testing import capture_logs

from hipchatd import cli
from hipchatd.config import Secret, SpoolSettings, load_config
from hipchatd.delivery.spool import SpoolError, open_admin, open_spool
from hipchatd.delivery.spool.postgresql import SCHEMA_VERSION, PostgresSpool, sql
from hipchatd.delivery.spool.postgresql import schema as pg_schema_module
from hipchatd.delivery.spool.postgresql.connect import Unreachable
from hipchatd.delivery.spool.postgresql.leases import LEASE_TTL
from hipchatd.ops import logconfig
from tests.postgres import PgSchema, PostgresServer
from tests.processes import HIPCHATD, REPO, STARTUP, Child, child_env, wait_for
from tests.test_process import TOKEN, Cluster, Daemon, Emulator, kill_9_mid_delivery
from tests.test_spool import DEV, DOCUMENT, EVENT, ONCALL, OPS, other_event
from tests.test_spool_contract import postgresql_settings
from tests.test_spool_edges import running

TABLES = {"migrations", "documents", "pending", "dead", "leases", "budgets"}


def _tables(schema: PgSchema, name: str | None = None) -> set[str]:
    with psycopg.connect(schema.conninfo) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", [name or schema.schema]
        )
        return {table for (table,) in rows}


def _query(schema: PgSchema, query: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(schema.conninfo) as conn:
        cursor = conn.execute(query, params or None)
        return cursor.fetchall() if cursor.description else []


# --- migrations --------------------------------------------------------------------------------


async def test_the_first_start_creates_the_schema_and_records_its_version(
    pg_schema: PgSchema,
) -> None:
    """From nothing: the schema, its tables (leases and budgets empty) and one migration row."""
    fresh = f"{pg_schema.schema}_new"
    settings = SpoolSettings("postgresql", Secret(pg_schema.conninfo), fresh)
    try:
        with trio.fail_after(30), capture_logs() as logs:
            spool = await open_spool(":memory:", max_events=10, settings=settings)
            await spool.aclose()
            again = await open_spool(":memory:", max_events=10, settings=settings)
            await again.aclose()
        assert _tables(pg_schema, fresh) == TABLES
        rows = _query(pg_schema, f"SELECT version, hipchatd FROM {fresh}.migrations")
        assert [version for version, _ in rows] == [SCHEMA_VERSION]
        assert _query(pg_schema, f"SELECT count(*) FROM {fresh}.leases") == [(0,)]
        # Migrated once; the second start found it current.
        migrated = [e for e in logs if e["event"] == "spool.migrated"]
        assert [(e["from_version"], e["to_version"]) for e in migrated] == [(0, SCHEMA_VERSION)]
        opened = [e for e in logs if e["event"] == "spool.opened"]
        assert [e["created"] for e in opened] == [True, False]
        assert pg_schema.password not in repr(logs)
    finally:
        _query(pg_schema, f"DROP SCHEMA IF EXISTS {fresh} CASCADE")


_MIGRATE = """
import sys
from hipchatd.config import Secret, SpoolSettings, load_config
from hipchatd.delivery.spool.postgresql import connect, schema
server = connect.Server.of(SpoolSettings("postgresql", Secret(sys.argv[1]), sys.argv[2]))
conn = connect.connect(server)
print("found", schema.migrate(conn, server.schema, server.label), flush=True)
"""


def test_two_processes_migrating_at_once_create_the_schema_once(
    pg_schema: PgSchema, pg_server: PostgresServer
) -> None:
    """The migration lock: the second waits for the first, then finds the schema current."""
    with psycopg.connect(pg_schema.conninfo, autocommit=True) as holder:
        # Hold the migration lock so both children are surely waiting on it together.
        holder.execute(
            "SELECT pg_advisory_lock(hashtext('hipchatd migrate'), hashtext(%s))",
            [pg_schema.schema],
        )
        children = [
            subprocess.Popen(
                [HIPCHATD[0], "-c", _MIGRATE, pg_schema.conninfo, pg_schema.schema],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=REPO,
                env=child_env(),
            )
            for _ in range(2)
        ]
        wait_for(
            "both children wait for the migration lock",
            lambda: _waiting_for_lock(pg_server) == 2,
            STARTUP,
        )
        holder.execute(
            "SELECT pg_advisory_unlock(hashtext('hipchatd migrate'), hashtext(%s))",
            [pg_schema.schema],
        )
        outputs = [child.communicate(timeout=60)[0] for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    assert sorted(out.split()[-1] for out in outputs) == ["0", str(SCHEMA_VERSION)]
    assert _tables(pg_schema) == TABLES
    assert _query(pg_schema, "SELECT version FROM migrations") == [(SCHEMA_VERSION,)]


def _waiting_for_lock(server: PostgresServer) -> int:
    with psycopg.connect(server.admin_conninfo()) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()
    return int(row[0]) if row else 0


async def test_a_migration_lock_held_too_long_fails_the_start_with_what_to_do(
    pg_schema: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_schema_module, "MIGRATION_LOCK_TIMEOUT_MS", 200)
    with psycopg.connect(pg_schema.conninfo, autocommit=True) as holder:
        holder.execute(
            "SELECT pg_advisory_lock(hashtext('hipchatd migrate'), hashtext(%s))",
            [pg_schema.schema],
        )
        with trio.fail_after(30), pytest.raises(SpoolError) as raised:
            await open_spool(":memory:", max_events=10, settings=postgresql_settings(pg_schema))
    assert "lock timeout" in str(raised.value)
    assert "waited 0.2 s for a lock on the schema; end the session holding it" in str(raised.value)


async def test_a_newer_schema_or_a_foreign_one_is_refused_with_what_to_do(
    pg_schema: PgSchema,
) -> None:
    settings = postgresql_settings(pg_schema)
    with trio.fail_after(30):
        spool = await open_spool(":memory:", max_events=10, settings=settings)
        await spool.aclose()
        _query(pg_schema, "INSERT INTO migrations (version, hipchatd) VALUES (99, 'x')")
        with pytest.raises(SpoolError) as newer:
            await open_spool(":memory:", max_events=10, settings=settings)
        with pytest.raises(SpoolError) as admin:
            open_admin("unused", settings)
    assert "schema version 99, written by a newer hipchatd" in str(newer.value)
    assert f"this one reads up to {SCHEMA_VERSION}); upgrade hipchatd" in str(newer.value)
    assert "schema version 99" in str(admin.value)
    assert "upgrade hipchatd" in str(admin.value)

    foreign = SpoolSettings("postgresql", Secret(pg_schema.conninfo), "public")
    _query(pg_schema, "CREATE TABLE public.someone_elses (x int)")
    try:
        with trio.fail_after(30), pytest.raises(SpoolError) as raised:
            await open_spool(":memory:", max_events=10, settings=foreign)
    finally:
        _query(pg_schema, "DROP TABLE public.someone_elses")
    assert "schema public holds tables that are not a hipchatd spool" in str(raised.value)
    assert "choose another hipchatd.spool.schema" in str(raised.value)


async def test_the_operator_commands_never_create_a_spool(pg_schema: PgSchema) -> None:
    with pytest.raises(SpoolError) as raised:
        open_admin("unused", postgresql_settings(pg_schema))
    assert "no spool in postgresql://hipchatd_test@127.0.0.1:" in str(raised.value)
    assert _tables(pg_schema) == set()


# --- several daemons per schema; the secret ----------------------------------------------------


async def test_several_daemons_open_one_schema_each_with_its_own_leases(
    pg_schema: PgSchema,
) -> None:
    """No instance lock: a second daemon opens the same schema; each has its own lease owner."""
    settings = postgresql_settings(pg_schema)
    with trio.fail_after(30):
        first = await open_spool(":memory:", max_events=10, settings=settings)
        second = await open_spool(":memory:", max_events=10, settings=settings)
        try:
            one, two = first.lane_leases(), second.lane_leases()
            assert one is not None
            assert two is not None
            assert one is first.lane_leases()
            assert one.ttl == LEASE_TTL
            assert one.renew_every < one.ttl / 2
        finally:
            for spool in (first, second):
                leases = spool.lane_leases()
                assert leases is not None
                await leases.release()
                await spool.aclose()


def _config(
    path: Path, spool: dict[str, Any], hipchat: dict[str, Any] | None = None, **daemon: Any
) -> Path:
    path.write_text(
        json.dumps(
            {
                "hipchat": {"api_token": TOKEN, "room": "sensu", **(hipchat or {})},
                "hipchatd": {"spool": spool, **daemon},
            }
        )
    )
    return path


def test_the_dsn_and_its_password_are_never_printed(
    pg_schema: PgSchema, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not by check-config (offline, online, a wrong password), nor by ``spool list``."""
    password = pg_schema.password
    good = {"backend": "postgresql", "dsn": pg_schema.conninfo, "schema": pg_schema.schema}
    wrong = {**good, "dsn": pg_schema.conninfo.replace(password, password[::-1])}
    bad_port = {**good, "dsn": f"postgresql://hipchatd_test:{password}@127.0.0.1:99999/db"}
    settings = postgresql_settings(pg_schema)
    assert password not in repr(settings)
    assert password not in str(settings.dsn)
    try:
        assert cli.main(["check-config", "-c", str(_config(tmp_path / "a.json", good))]) == 0
        assert cli.main(["check-config", "-c", str(_config(tmp_path / "b.json", bad_port))]) == 2
        assert cli.main(["spool", "list", "-c", str(tmp_path / "a.json")]) == 1
        assert cli.main(["spool", "list", "-c", str(_config(tmp_path / "c.json", wrong))]) == 1
    finally:
        logconfig.reset_secrets()
    out = capsys.readouterr()
    text = out.out + out.err
    assert password not in text
    assert password[::-1] not in text
    assert "hipchatd.spool.dsn: got a string (value hidden): the URI does not parse" in text
    assert "no spool in postgresql://hipchatd_test@127.0.0.1:" in text
    assert 'password authentication failed for user "hipchatd_test"' in text


async def test_a_dsn_libpq_cannot_parse_is_refused_without_quoting_it() -> None:
    """libpq quotes what it could not parse, perhaps a piece of the password: not shown."""
    settings = SpoolSettings("postgresql", Secret("host=db password=two words"), "hipchatd")
    with pytest.raises(SpoolError) as raised:
        await open_spool(":memory:", max_events=10, settings=settings)
    assert str(raised.value) == (
        "hipchatd.spool.dsn: libpq cannot parse it (value hidden); expected a libpq connection"
        " URI or key=value string"
    )


def test_a_dsn_from_the_systemd_credential(pg_schema: PgSchema, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "hipchat_spool_dsn").write_text(pg_schema.conninfo + "\n")
    config = _config(tmp_path / "a.json", {"backend": "postgresql", "schema": pg_schema.schema})
    result = load_config([str(config)], {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert result.config.daemon.spool.dsn == Secret(pg_schema.conninfo)
    assert result.warnings == ()


# --- failures at start and while running -------------------------------------------------------


@pytest.mark.parametrize(
    ("wrong", "problem"),
    [
        ("password", 'password authentication failed for user "hipchatd_test"'),
        ("database", 'database "no_such_db" does not exist'),
    ],
)
def test_a_server_refusing_the_login_at_start_is_one_clear_line(
    pg_schema: PgSchema, pg_server: PostgresServer, tmp_path: Path, wrong: str, problem: str
) -> None:
    """A server that answers and refuses (a wrong password, no such database): the daemon
    exits 1 with one ERROR line naming the server and the problem, never the DSN or the
    password, and never starts on its local spool."""
    password = pg_schema.password
    user, database = "hipchatd_test", "hipchatd_test"
    given = password[::-1] if wrong == "password" else password
    if wrong == "database":
        database = "no_such_db"
    dsn = f"postgresql://{user}:{given}@127.0.0.1:{pg_server.port}/{database}"
    config = _config(
        tmp_path / "refused.json",
        {"backend": "postgresql", "dsn": dsn},
        tcp={"host": "127.0.0.1", "port": 0},
        udp=None,
        state_dir=str(tmp_path / "state"),
    )
    child = Child("serve", "--config", str(config))
    try:
        assert child.wait_exit(STARTUP) == 1
    finally:
        child.close()
    logs = child.logs()
    errors = [record for record in logs if record.get("level") == "error"]
    assert [record["event"] for record in errors] == ["spool.unavailable"]
    [error] = errors
    assert error["error"].startswith(
        f"cannot open the PostgreSQL spool postgresql://{user}@127.0.0.1:{pg_server.port}/"
        f"{database}, schema hipchatd: "
    )
    assert problem in error["error"]
    assert "check hipchatd.spool.dsn" in error["error"]
    assert "\n" not in error["error"]
    assert not [record for record in logs if record["event"] == "spool.degraded"]
    assert password not in child.output
    assert password[::-1] not in child.output


async def test_a_server_that_does_not_answer_is_unreachable_not_refused(
    pg_schema: PgSchema,
) -> None:
    """Nothing listening: the plain spool still fails to open, with one line naming the
    server, the cause and what to check; it is told apart as Unreachable (the daemon's
    spool then starts on its local spool)."""
    with socket_closed_port() as port:
        dsn = f"postgresql://hipchatd_test:{pg_schema.password}@127.0.0.1:{port}/hipchatd_test"
        settings = SpoolSettings("postgresql", Secret(dsn), "hipchatd")
        with pytest.raises(Unreachable) as raised:
            await PostgresSpool.open(settings, max_events=10)
    message = str(raised.value)
    assert message.startswith(
        f"cannot open the PostgreSQL spool postgresql://hipchatd_test@127.0.0.1:{port}/"
        "hipchatd_test, schema hipchatd: "
    )
    assert "Connection refused" in message
    assert "check hipchatd.spool.dsn" in message
    assert "\n" not in message
    assert "Connection refused" in raised.value.cause
    assert pg_schema.password not in message + raised.value.cause


class socket_closed_port:
    """A loopback port nothing listens on, while inside."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        port: int = self._sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def _terminate_daemon_sessions(server: PostgresServer) -> int:
    with psycopg.connect(server.admin_conninfo()) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'hipchatd'"
        ).fetchall()
    return len(rows)


async def test_a_connection_lost_mid_run_is_replaced_and_nothing_is_lost(
    pg_schema: PgSchema, pg_server: PostgresServer
) -> None:
    """The server ends the daemon's session: the next commit fails, is logged, and is retried
    on a new connection; the event is reported accepted once, after it committed."""
    settings = postgresql_settings(pg_schema)
    with trio.fail_after(60), capture_logs() as logs:
        spool = await PostgresSpool.open(settings, max_events=100)
        async with running(spool) as (committed, refused):
            spool.submit(EVENT, DOCUMENT, [OPS], 1000.0, "first")
            await committed.wait_for(1)
            assert await trio.to_thread.run_sync(_terminate_daemon_sessions, pg_server) == 1
            spool.submit(EVENT, DOCUMENT, [DEV, ONCALL], 1001.0, "second")
            await committed.wait_for(3)
            await spool.flush()
            assert spool.writable
            assert spool.counts() == {"pending": 3, "dead": 0}
    failed = [e for e in logs if e["event"] == "spool.write_failed"]
    assert failed
    assert failed[0]["sqlstate"] in {None, "57P01"}
    assert [e for e in logs if e["event"] == "spool.write_recovered"]
    assert [handle for handle, _ in committed.events] == ["first", "second"]
    assert refused.events == []
    assert _query(pg_schema, "SELECT count(*) FROM pending") == [(3,)]
    assert _query(pg_schema, "SELECT count(*) FROM documents") == [(2,)]


async def test_a_stopped_server_holds_events_back_until_it_is_back(
    pg_schema: PgSchema, pg_server: PostgresServer
) -> None:
    """While the server is down, commits fail (logged, retried, ``writable`` False) and no
    event is reported accepted; once it is back, they commit and nothing is lost."""
    settings = postgresql_settings(pg_schema)
    with trio.fail_after(90), capture_logs() as logs:
        spool = await PostgresSpool.open(settings, max_events=100)
        async with running(spool) as (committed, refused):
            spool.submit(EVENT, DOCUMENT, [OPS], 1000.0, "before")
            await committed.wait_for(1)
            await trio.to_thread.run_sync(pg_server.pause)
            try:
                spool.submit(EVENT, DOCUMENT, [DEV, ONCALL], 1001.0, "during")
                while len([e for e in logs if e["event"] == "spool.write_failed"]) < 2:
                    await trio.sleep(0.05)
                assert not spool.writable
                assert [handle for handle, _ in committed.events] == ["before"]
            finally:
                await trio.to_thread.run_sync(pg_server.resume)
            await committed.wait_for(3)
            await spool.flush()
            assert spool.writable
    assert [handle for handle, _ in committed.events] == ["before", "during"]
    assert refused.events == []
    assert _query(pg_schema, "SELECT count(*) FROM pending") == [(3,)]
    assert [e for e in logs if e["event"] == "spool.write_recovered"]


def _lose_first_reply(monkeypatch: pytest.MonkeyPatch, write: str) -> list[int]:
    """``sql.<write>`` commits, but its first call loses the connection before the reply.

    The answer counts the calls (one item).
    """
    real = getattr(sql, write)
    calls = [0]

    def reply_lost(conn: psycopg.Connection[Any], *args: Any) -> Any:
        calls[0] += 1
        written = real(conn, *args)
        if calls[0] == 1:
            conn.close()
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return written

    monkeypatch.setattr(sql, write, reply_lost)
    return calls


async def test_a_commit_whose_reply_was_lost_is_not_stored_twice(
    pg_schema: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection breaks after COMMIT reached the server: the retry finds the events stored
    and hands them out with the ids they got there, once."""
    calls = _lose_first_reply(monkeypatch, "write_events")
    settings = postgresql_settings(pg_schema)
    with trio.fail_after(60):
        spool = await open_spool(":memory:", max_events=100, settings=settings)
        async with running(spool) as (committed, _):
            spool.submit(EVENT, DOCUMENT, [OPS, DEV], 1000.0, "only")
            entries = await committed.wait_for(2)
            await spool.flush()
            assert spool.counts() == {"pending": 2, "dead": 0}
    assert calls == [2]
    # Accepted at once into the local spool (the failure looks like a lost server), its
    # entries handed out once forwarded, under the name the lost commit gave them.
    assert [(handle, len(found)) for handle, found in committed.events] == [("only", 0), (None, 2)]
    stored = _query(pg_schema, "SELECT id FROM pending ORDER BY id")
    assert [e.id for e in entries] == [i for (i,) in stored]
    assert _query(pg_schema, "SELECT count(*) FROM documents") == [(1,)]


async def test_marks_and_events_of_one_round_commit_once_even_when_the_reply_is_lost(
    pg_schema: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deletes and dead letters ride in the transaction of the next events (one commit on the
    server); when its reply is lost, the retry finds the events stored and stores nothing twice."""
    calls = _lose_first_reply(monkeypatch, "write_round")
    settings = postgresql_settings(pg_schema)
    with trio.fail_after(60):
        spool = await PostgresSpool.open(settings, max_events=100)
        async with running(spool) as (committed, _):
            spool.submit(EVENT, DOCUMENT, [OPS, DEV, ONCALL], 1000.0, "first")
            delivered, kept, dead = await committed.wait_for(3)
            before = spool.transactions
            spool.mark_delivered([delivered.id])
            spool.mark_dead([dead.id], "permanent", "Room not found")
            spool.submit(EVENT, DOCUMENT, [OPS, DEV], 1001.0, "second")
            entries = await committed.wait_for(5)
            await spool.flush()
            # The lost commit is not counted: the retry is the one transaction of the round.
            assert spool.transactions == before + 1
    assert calls == [2]
    assert [handle for handle, _ in committed.events] == ["first", "second"]
    stored = _query(pg_schema, "SELECT id FROM pending ORDER BY id")
    assert [i for (i,) in stored] == [kept.id, entries[3].id, entries[4].id]
    assert _query(pg_schema, "SELECT id, reason FROM dead") == [(dead.id, "permanent")]
    assert _query(pg_schema, "SELECT count(*) FROM documents") == [(2,)]


async def test_text_postgresql_cannot_hold_is_kept_or_refused_alone(pg_schema: PgSchema) -> None:
    """NUL (which PostgreSQL text cannot hold) is stored as U+FFFD; an event whose text cannot
    be encoded at all (a lone surrogate, which the readers never let through) is refused alone,
    and the events around it are accepted."""
    nul, nul_doc = other_event("disk\x00check")
    surrogate, surrogate_doc = other_event("disk")
    surrogate = dataclasses.replace(surrogate, check="bad\ud800")
    settings = postgresql_settings(pg_schema)
    with trio.fail_after(30), capture_logs() as logs:
        spool = await open_spool(":memory:", max_events=100, settings=settings)
        async with running(spool) as (committed, refused):
            spool.submit(nul, nul_doc, [OPS], 1000.0, "nul")
            spool.submit(surrogate, surrogate_doc, [OPS], 1001.0, "surrogate")
            spool.submit(EVENT, DOCUMENT, [DEV], 1002.0, "plain")
            await committed.wait_for(2)
            spool.mark_attempt([committed.entries[0].id], "HTTP 500: bad\x00 \udc80 reply")
            await spool.flush()
    assert [handle for handle, _ in committed.events] == ["nul", "plain"]
    assert refused.handles == ["surrogate"]
    assert [e["check"] for e in logs if e["event"] == "event.refused"] == ["bad\ud800"]
    rows = _query(pg_schema, "SELECT check_name, last_error FROM pending ORDER BY id")
    assert rows == [("disk\ufffdcheck", "HTTP 500: bad\ufffd ? reply"), ("testing", None)]


async def test_entries_are_keyed_by_lane_and_each_commit_notifies(pg_schema: PgSchema) -> None:
    """Each entry records its lane (``room:NAME``), its document is stored once, and a commit
    of new entries notifies the schema's channel (for instances that will listen)."""
    settings = postgresql_settings(pg_schema)
    channel = f"hipchatd.{pg_schema.schema}"
    with psycopg.connect(pg_schema.conninfo, autocommit=True) as listener:
        listener.execute(f'LISTEN "{channel}"')
        with trio.fail_after(30):
            spool = await open_spool(":memory:", max_events=100, settings=settings)
            assert isinstance(spool, PostgresSpool)
            async with running(spool) as (committed, _):
                spool.submit(EVENT, DOCUMENT, [OPS, DEV], 1000.0)
                spool.submit(EVENT, DOCUMENT, [OPS], 1001.0)
                await committed.wait_for(3)
            heard = await trio.to_thread.run_sync(
                lambda: list(listener.notifies(timeout=5, stop_after=1))
            )
    assert [(n.channel, n.payload) for n in heard] == [(channel, "pending")]
    rows = _query(pg_schema, "SELECT lane, id FROM pending ORDER BY lane, id")
    assert [lane for lane, _ in rows] == [
        f"room:{DEV.name}",
        f"room:{OPS.name}",
        f"room:{OPS.name}",
    ]
    assert _query(pg_schema, "SELECT count(*) FROM documents") == [(2,)]


@pytest.mark.parametrize("where", ["PGPASSWORD", "PGPASSFILE"])
def test_the_password_may_come_from_libpq_s_environment(
    pg_schema: PgSchema, tmp_path: Path, where: str
) -> None:
    """A DSN without a password: libpq finds it in PGPASSWORD or a password file."""
    dsn = pg_schema.conninfo.replace(f"password={pg_schema.password}", "")
    assert pg_schema.password not in dsn
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:*:hipchatd_test:hipchatd_test:{pg_schema.password}\n")
    passfile.chmod(0o600)
    env = {where: pg_schema.password if where == "PGPASSWORD" else str(passfile)}
    spool = {"backend": "postgresql", "dsn": dsn, "schema": pg_schema.schema}
    with socket_closed_port() as port:
        config = _config(tmp_path / "a.json", spool, {"server_url": f"http://127.0.0.1:{port}"})
    result = subprocess.run(
        [*HIPCHATD, "check-config", "--online", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**child_env(), **env},
        timeout=60,
        check=False,
    )
    first = result.stdout.splitlines()[0]
    assert first.startswith("ok: spool postgresql://hipchatd_test@127.0.0.1:"), result.stdout
    assert pg_schema.password not in result.stdout + result.stderr


def test_check_config_online_reports_the_spool_and_its_version(
    pg_schema: PgSchema, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = {"backend": "postgresql", "dsn": pg_schema.conninfo, "schema": pg_schema.schema}
    with socket_closed_port() as port:
        # HipChat refuses the connection here: only the spool's line matters.
        hipchat = {"server_url": f"http://127.0.0.1:{port}"}
        config = _config(tmp_path / "a.json", good, hipchat)
    try:
        cli.main(["check-config", "--online", "-c", str(config)])
        first = capsys.readouterr().out.splitlines()[0]
        trio.run(_open_and_close, postgresql_settings(pg_schema))
        capsys.readouterr()
        cli.main(["check-config", "--online", "-c", str(config)])
        second = capsys.readouterr().out.splitlines()[0]
        _query(pg_schema, "UPDATE migrations SET version = 7")
        assert cli.main(["check-config", "--online", "-c", str(config)]) == 1
        third = capsys.readouterr().out.splitlines()[0]
    finally:
        logconfig.reset_secrets()
    label = "postgresql://hipchatd_test@127.0.0.1:"
    assert first.startswith(f"ok: spool {label}")
    assert first.endswith("no spool yet: the daemon creates it at start")
    assert "(PostgreSQL 15." in first
    assert second.endswith(f"): schema version {SCHEMA_VERSION}")
    assert third.startswith(f"error: spool: the PostgreSQL spool {label}")
    assert "schema version 7, written by a newer hipchatd" in third


async def _open_and_close(settings: SpoolSettings) -> None:
    spool = await open_spool(":memory:", max_events=10, settings=settings)
    await spool.aclose()


# --- end to end: the real daemon on PostgreSQL -------------------------------------------------


class PgCluster(Cluster):
    """The process tests' cluster, with its daemons' spool in a PostgreSQL schema."""

    def __init__(self, tmp_path: Path, schema: PgSchema) -> None:
        super().__init__(tmp_path)
        self.schema = schema
        self.spool_config = {
            "backend": "postgresql",
            "dsn": schema.conninfo,
            "schema": schema.schema,
        }

    def daemon(self, emulator: Emulator, **settings: object) -> Daemon:
        return super().daemon(emulator, spool=self.spool_config, **settings)

    def sending(self, daemon: Daemon) -> None:
        """The rooms' lanes are claimed at the first round after their first entries."""
        claimed = daemon.child.wait_logged("lease.claimed")
        assert claimed["claimed"] == 3

    def recovered(self, daemon: Daemon, entries: int) -> None:
        """A new instance takes the killed one's lanes once their leases expired (<= 15 s)."""
        taken = daemon.child.wait_logged("lease.taken_over", STARTUP + LEASE_TTL + 5)
        assert taken["lanes"] == ["room:db", "room:dev", "room:ops"]

    def spool_options(self) -> list[str]:
        path = _config(self.tmp_path / "spool-command.json", self.spool_config)
        return ["--config", str(path)]

    def pending_now(self, table: str = "pending") -> int:
        rows = _query(self.schema, f"SELECT count(*) FROM {table}")
        return int(rows[0][0]) if rows else 0


@pytest.fixture
def pg_cluster(tmp_path: Path, pg_schema: PgSchema) -> Iterator[PgCluster]:
    running_cluster = PgCluster(tmp_path, pg_schema)
    try:
        yield running_cluster
    finally:
        running_cluster.close()


def test_kill_9_on_postgresql_loses_nothing(pg_cluster: PgCluster) -> None:
    """The daemon on PostgreSQL, SIGKILL mid-delivery; the restarted one delivers every event."""
    kill_9_mid_delivery(pg_cluster, "pgkill-")
    # Each document went with its event's last entry.
    assert pg_cluster.pending_now("documents") == 0
    for child in pg_cluster.children:
        assert pg_cluster.schema.password not in child.output
