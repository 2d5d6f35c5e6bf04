"""The private PostgreSQL server of the tests: it runs, isolates tests, guards its password,
and refuses to be silently skipped in CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import postgres
import psycopg
import pytest
from postgres import PgSchema, PostgresServer, fresh_schema

TESTS = Path(__file__).parent


def test_server_is_postgresql_15_on_loopback(pg_schema: PgSchema) -> None:
    """The test role reaches a PostgreSQL 15 server over TCP on 127.0.0.1."""
    with psycopg.connect(pg_schema.conninfo) as conn:
        version, schema, address = conn.execute(
            "SELECT version(), current_schema(), inet_server_addr()::text"
        ).fetchone() or (None, None, None)
        assert str(version).startswith("PostgreSQL 15."), version
        assert conn.info.server_version // 10000 == 15
        assert schema == pg_schema.schema
        assert address in {"127.0.0.1", "127.0.0.1/32"}


def test_schemas_are_isolated_and_dropped(pg_server: PostgresServer) -> None:
    """Two schemas see only their own tables; each is gone after its block, even with a
    session of the test role left open (holding a lock) inside it."""
    with fresh_schema(pg_server) as one, fresh_schema(pg_server) as two:
        assert one.schema != two.schema
        with psycopg.connect(one.conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE entries (n int)")
            conn.execute("INSERT INTO entries VALUES (1)")
        with (
            psycopg.connect(two.conninfo, autocommit=True) as conn,
            pytest.raises(psycopg.errors.UndefinedTable),
        ):
            conn.execute("SELECT n FROM entries")
        leaked = psycopg.connect(one.conninfo)
        leaked.execute("LOCK TABLE entries IN ACCESS EXCLUSIVE MODE")
    leaked.close()
    with psycopg.connect(pg_server.admin_conninfo(postgres.TEST_DB)) as admin:
        left = admin.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name IN (%s, %s)",
            (one.schema, two.schema),
        ).fetchone()
    assert left == (0,)


def test_password_is_required(pg_server: PostgresServer, tmp_path: Path) -> None:
    """Over TCP the test role needs its password: none or a wrong one is refused."""
    no_passfile = str(tmp_path / "no-pgpass")
    for password in ("", "wrong-password"):
        conninfo = psycopg.conninfo.make_conninfo(
            pg_server.conninfo(), password=password, passfile=no_passfile
        )
        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(conninfo).close()
        assert "password" in str(refused.value)
        assert pg_server.password not in str(refused.value)


def test_password_is_never_printed(
    pg_schema: PgSchema, pg_server: PostgresServer, capfd: pytest.CaptureFixture[str]
) -> None:
    """The password stays out of reprs, the server's log and the test output."""
    assert pg_server.password in pg_schema.conninfo
    assert pg_server.password not in repr(pg_schema)
    assert pg_server.password not in pg_server.log.read_text()
    out, err = capfd.readouterr()
    assert pg_server.password not in out + err


def test_missing_binaries_name_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A bin dir without initdb/pg_ctl is refused with a message naming postgresql-15."""
    monkeypatch.setenv(postgres.BINDIR_ENV, str(tmp_path))
    with pytest.raises(postgres.PostgresUnavailable, match="install Debian's postgresql-15"):
        postgres.find_bindir()


def _run_pytest(
    tmp_path: Path, body: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """pytest in a child, on one test file using the fixtures, with ``env`` added."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_needs_pg.py").write_text(
        "from postgres import pg_schema, pg_server  # noqa: F401\n\n\n" + body
    )
    child_env = {
        k: v
        for k, v in os.environ.items()
        if k not in {postgres.REQUIRE_ENV, postgres.BINDIR_ENV, "PYTEST_ADDOPTS"}
    }
    child_env.update(PYTHONPATH=str(TESTS), **env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rsf", *args],
        cwd=tmp_path,
        env=child_env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _run_needing_postgres(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    body = "def test_needs(pg_schema):\n    pass\n"
    bogus = {postgres.BINDIR_ENV: str(tmp_path / "no-bin")}
    return _run_pytest(tmp_path, body, "-p", "no:xdist", **bogus, **env)


def test_servers_stop_when_tests_fail(tmp_path: Path) -> None:
    """Under xdist each worker gets a server of its own (own port, own directory), and each
    is stopped and removed when the session ends, although its test failed."""
    body = (
        "import os\n\n\n"
        "def test_fails(pg_schema, pg_server):\n"
        f"    with open({str(tmp_path / 'servers')!r}, 'a') as seen:\n"
        "        pid = (pg_server.data / 'postmaster.pid').read_text().split()[0]\n"
        "        print(pg_server.root, pg_server.port, pid, file=seen)\n"
        "    raise AssertionError('this test fails on purpose')\n"
    )
    done = _run_pytest(tmp_path, body, "-n", "2", "--dist", "each")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 failed" in done.stdout
    servers = [line.split() for line in (tmp_path / "servers").read_text().splitlines()]
    assert len(servers) == 2
    assert len({root for root, _, _ in servers}) == len({port for _, port, _ in servers}) == 2
    for root, _, pid in servers:
        assert not Path(root).exists()
        assert _exited(int(pid))


def _exited(pid: int) -> bool:
    """No such process, or only a zombie its parent has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}


def test_missing_server_skips_by_default(tmp_path: Path) -> None:
    """Without the require switch, a test needing PostgreSQL skips and names the package."""
    done = _run_needing_postgres(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped" in done.stdout
    assert "postgresql-15" in done.stdout


def test_missing_server_fails_when_required(tmp_path: Path) -> None:
    """With HIPCHATD_REQUIRE_POSTGRES=1 (as .ci/run sets), the same test fails instead."""
    done = _run_needing_postgres(tmp_path, **{postgres.REQUIRE_ENV: "1"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "skipped" not in done.stdout
    assert "postgresql-15" in done.stdout
    assert postgres.REQUIRE_ENV in done.stdout
