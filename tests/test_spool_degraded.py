"""A daemon on PostgreSQL that starts while the server is down, and marks kept while degraded.

``hipchatd serve`` started while its server does not answer runs on its local
SQLite spool in ``state_dir`` (one WARNING, ``/healthz`` degraded), creates
the schema once the server answers and delivers everything accepted
meanwhile, in each room's order. Marks (deliveries) made while degraded are
kept in the local spool, so a restart (or ``kill -9``) before they reach the
server does not send those entries again; until they are written, the
instance's lane leases hold and read nothing (:class:`GatedLeases`). The
PostgreSQL tests run on the test session's private server
(``tests/postgres.py``), stopped and started with
``PostgresServer.pause``/``resume``.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import trio
from structlog.testing import capture_logs
from trio.testing import MockClock

from hipchatd.config import SpoolSettings
from hipchatd.delivery.spool import open_spool
from hipchatd.delivery.spool.fallback import FallbackSpool
from hipchatd.delivery.spool.gated import GatedLeases
from hipchatd.delivery.spool.store import Entry, Held
from tests.postgres import PgSchema, PostgresServer
from tests.processes import REPO, STARTUP, child_env, wait_for
from tests.test_process import Cluster, _event
from tests.test_spool import DOCUMENT, EVENT, OPS, running
from tests.test_spool_contract import postgresql_settings
from tests.test_spool_fallback import _local, _query
from tests.test_spool_postgresql import PgCluster

#: The rooms the end-to-end events go to, in turn.
_ROOMS = ("ops", "dev", "db")


def _checks_by_room(messages: list[dict[str, Any]], prefix: str) -> dict[str, list[str]]:
    """Each room's check names starting with ``prefix``, in the order the room received them."""
    rooms: dict[str, list[str]] = {}
    for message in messages:
        seen = rooms.setdefault(message["room"] or "", [])
        for check in re.findall(rf"\b{re.escape(prefix)}\d\d\b", message["message"]):
            if check not in seen:
                seen.append(check)
    return rooms


# --- the daemon starts while PostgreSQL is down ------------------------------------------------


def test_serve_starts_on_its_local_spool_while_postgresql_is_down(
    pg_schema: PgSchema, pg_server: PostgresServer, tmp_path: Path
) -> None:
    """Started with the server stopped: one WARNING (``spool.degraded``), ``/healthz``
    degraded, events accepted into ``state_dir``; once the server is started the schema is
    created and every event is delivered, each room's in the order sent."""
    cluster = PgCluster(tmp_path, pg_schema)
    try:
        _started_while_down(cluster, pg_server)
    finally:
        cluster.close()


def _started_while_down(pg_cluster: PgCluster, pg_server: PostgresServer) -> None:
    prefix, count = "pgstart-", 12
    checks = [f"{prefix}{k:02d}" for k in range(count)]
    emulator = pg_cluster.emulator("--auto-create-rooms")
    pg_server.pause()
    try:
        daemon = pg_cluster.daemon(emulator, metrics={"host": "127.0.0.1", "port": 0})
        metrics = daemon.child.wait_logged("http.started")["addresses"][0]
        for k, check in enumerate(checks):
            daemon.send(_event(check, room=_ROOMS[k % len(_ROOMS)]))
        # Held in the local spool (the SQLite file an SQLite daemon would use).
        wait_for("every event held locally", lambda: Cluster.pending_now(pg_cluster) == 12, 30)
        health = httpx.get(f"http://{metrics}/healthz", timeout=10)
        # Beside the emulator's plain http:// (config.warning), the one line about the spool.
        loud = [
            r
            for r in daemon.child.logs()
            if r["level"] in {"warning", "error"} and r["event"] != "config.warning"
        ]
        assert emulator.messages() == []
    finally:
        pg_server.resume()
    wait_for(
        "every event delivered",
        lambda: sum(map(len, _checks_by_room(emulator.messages(), prefix).values())) == count,
        STARTUP,
    )
    caught_up = daemon.child.wait_logged("spool.caught_up")
    wait_for("the spool emptied", lambda: pg_cluster.pending_now() == 0, 15)
    healthy = httpx.get(f"http://{metrics}/healthz", timeout=10)
    assert [r["event"] for r in loud] == ["spool.degraded"]
    assert "Connection refused" in loud[0]["error"]
    assert loud[0]["reason"].startswith("PostgreSQL cannot be reached at start")
    assert health.status_code == 200
    assert health.json()["status"] == "degraded"
    assert healthy.json() == {"status": "ok"}
    (opened,) = daemon.child.logged("spool.opened")
    assert opened["created"] is True
    assert caught_up["forwarded"] == count
    by_room = _checks_by_room(emulator.messages(), prefix)
    assert sorted(c for found in by_room.values() for c in found) == checks
    for found in by_room.values():
        assert found == sorted(found)
    assert Cluster.pending_now(pg_cluster) == 0
    assert not [r for r in daemon.child.logs() if r["level"] == "error"]
    assert pg_cluster.schema.password not in daemon.child.output


# --- marks kept while degraded -----------------------------------------------------------------


async def _delivered_while_down(
    state_dir: str, settings: SpoolSettings, pg_server: PostgresServer
) -> int:
    """Accept one event (on the server), stop the server, mark it delivered, close: the id.

    The server is still stopped when this returns.
    """
    spool = await open_spool(state_dir, max_events=100, settings=settings)
    async with running(spool) as committed:
        spool.submit(EVENT, DOCUMENT, [OPS], 1000.0, "sent")
        (entry,) = await committed.wait_for(1)
        await trio.to_thread.run_sync(pg_server.pause)
        spool.mark_delivered([entry.id])
        await spool.flush()
        assert spool.degraded is not None
    return entry.id


async def test_marks_made_while_degraded_survive_a_restart_while_the_server_is_down(
    pg_schema: PgSchema, pg_server: PostgresServer, tmp_path: Path
) -> None:
    """A delivery marked while the server was down is kept in the local spool; the spool
    restarted before the server is back opens degraded, leases nothing, and once the
    server answers writes the mark before any lane could read that entry again."""
    state_dir = tmp_path / "state"
    settings = postgresql_settings(pg_schema)
    with trio.fail_after(90), capture_logs() as logs:
        try:
            await _delivered_while_down(str(state_dir), settings, pg_server)
            assert _local(state_dir, "SELECT kind FROM local_marks") == [("delivered",)]
            reopened = await open_spool(str(state_dir), max_events=100, settings=settings)
        finally:
            await trio.to_thread.run_sync(pg_server.resume)
        assert isinstance(reopened, FallbackSpool)
        assert reopened.degraded is not None
        leases = reopened.lane_leases()
        # Not ready: the mark still waits here, so no lane is held and nothing is read.
        assert await leases.round() == Held(frozenset())
        assert await leases.read({"room:ops": 0}) == []
        async with running(reopened):
            while reopened.degraded is not None:
                await trio.sleep(0.02)
            assert reopened.ready
            assert await leases.read({"room:ops": 0}) == []
            assert reopened.counts() == {"pending": 0, "dead": 0}
            await leases.release()
    assert _query(pg_schema, "SELECT count(*) FROM pending") == [(0,)]
    assert _local(state_dir, "SELECT count(*) FROM local_marks") == [(0,)]
    assert [e["event"] for e in logs if e["event"].startswith("spool.")].count(
        "spool.caught_up"
    ) == 1


_KEPT_THEN_KILLED = """
import json, os, sys
import trio
from hipchatd.config import Secret, SpoolSettings
from hipchatd.delivery.routing import Target
from hipchatd.delivery.spool import open_spool
from hipchatd.sensu.events import parse_event

async def main(state_dir):
    settings = SpoolSettings(
        "postgresql", Secret(os.environ["SPOOL_DSN"]), os.environ["SPOOL_SCHEMA"]
    )
    with open("tests/fixtures/classic-critical.json") as fixture:
        document = fixture.read()
    ops = Target(kind="room", name="ops", notify=True, username="sensu", message_format="html")
    spool = await open_spool(state_dir, max_events=100, settings=settings)
    committed = []
    async with trio.open_nursery() as nursery:
        await nursery.start(spool.run, committed.extend)
        spool.submit(parse_event(json.loads(document)), document, [ops], 1000.0, "sent")
        while not committed:
            await trio.sleep(0.01)
        (_, (entry,)), = committed
        print("said:", entry.id, flush=True)
        # The parent stops the server, then says so.
        await trio.to_thread.run_sync(sys.stdin.readline)
        spool.mark_delivered([entry.id])
        await spool.flush()
        print("said:", "degraded" if spool.degraded else "not degraded", flush=True)
        await trio.sleep_forever()

trio.run(main, sys.argv[1])
"""


def test_a_mark_kept_locally_survives_kill_9(
    pg_schema: PgSchema, pg_server: PostgresServer, tmp_path: Path
) -> None:
    """Delivered while the server was down, then ``kill -9``: the next start writes the
    mark before it reads the server, so that entry is not pending (not sent again)."""
    state_dir = tmp_path / "state"
    with subprocess.Popen(
        [sys.executable, "-c", _KEPT_THEN_KILLED, str(state_dir)],
        cwd=REPO,
        env={**child_env(), "SPOOL_DSN": pg_schema.conninfo, "SPOOL_SCHEMA": pg_schema.schema},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as child:
        output, entry_id, state = _kill_9_once_degraded(child, pg_server)
    assert state == "degraded", output
    assert pg_schema.password not in output
    assert _local(state_dir, "SELECT kind, entry_id FROM local_marks") == [("delivered", entry_id)]
    assert _query(pg_schema, "SELECT id FROM pending") == [(entry_id,)]
    entries = trio.run(_reopened_pending, str(state_dir), postgresql_settings(pg_schema))
    assert entries == []
    assert _query(pg_schema, "SELECT count(*) FROM pending") == [(0,)]
    assert _local(state_dir, "SELECT count(*) FROM local_marks") == [(0,)]


def _kill_9_once_degraded(
    child: subprocess.Popen[str], pg_server: PostgresServer
) -> tuple[str, int, str]:
    """Read the child's entry id, stop the server, let it mark, SIGKILL it, start the server.

    (the child's output, the entry's id, what it said after marking).
    """
    assert child.stdin is not None
    assert child.stdout is not None
    stdout = child.stdout
    lines: list[str] = []

    def said() -> str:
        """The child's next ``said:`` line (its log lines go to the same pipe)."""
        for line in stdout:
            lines.append(line)
            if line.startswith("said: "):
                return line.removeprefix("said: ").strip()
        return ""

    try:
        entry_id = int(said())
        pg_server.pause()
        try:
            child.stdin.write("stopped\n")
            child.stdin.flush()
            state = said()
            child.send_signal(signal.SIGKILL)
            assert child.wait(10) == -signal.SIGKILL
        finally:
            pg_server.resume()
    finally:
        child.kill()
        child.wait()
    return "".join(lines) + stdout.read(), entry_id, state


async def _reopened_pending(state_dir: str, settings: SpoolSettings) -> list[Any]:
    with trio.fail_after(60):
        spool = await open_spool(state_dir, max_events=100, settings=settings)
        try:
            assert spool.degraded is None
            return await spool.load_pending()
        finally:
            await spool.aclose()


class _Leases:
    """A LaneLeases that records its calls."""

    ttl = 10.0
    renew_every = 3.0

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def round(self) -> Held:
        self.calls.append("round")
        return Held(frozenset({"room:ops"}))

    async def read(self, after: dict[str, int]) -> list[Entry]:
        self.calls.append("read")
        return []

    async def wait(self, within: float) -> bool:
        self.calls.append("wait")
        return True

    async def release(self) -> None:
        self.calls.append("release")


async def test_gated_leases_hold_and_read_nothing_until_ready(autojump_clock: MockClock) -> None:
    """Not ready: a round holds no lane, a read finds nothing, a wait (before the store is
    open) just waits, and a release has nothing to do; then every call goes through."""
    inner, ready, opened = _Leases(), False, False
    gated = GatedLeases(inner, ready=lambda: ready, opened=lambda: opened)
    assert (gated.ttl, gated.renew_every) == (10.0, 3.0)
    assert gated.inner is inner
    assert await gated.round() == Held(frozenset())
    assert await gated.read({"room:ops": 0}) == []
    before = trio.current_time()
    assert await gated.wait(0.5) is False
    assert trio.current_time() - before == 0.5
    await gated.release()
    assert inner.calls == []
    opened = True
    assert await gated.wait(0.5) is True
    assert await gated.round() == Held(frozenset())
    ready = True
    assert await gated.round() == Held(frozenset({"room:ops"}))
    assert await gated.read({"room:ops": 0}) == []
    await gated.release()
    assert inner.calls == ["wait", "round", "read", "release"]
