"""PostgreSQL down is not an outage: the local SQLite spool in ``state_dir`` and forwarding.

While the test session's private server is stopped (``PostgresServer.pause``,
``pg_ctl stop -m fast``), a spool on it keeps accepting into
``state_dir/spool.sqlite3``, reports degraded, and once the server is back
forwards those entries in acceptance order, under their local name
``(origin, origin_id)``: a forward cut short by ``kill -9`` stores nothing
twice. End to end: the real daemon and the real emulator over loopback,
every event sent during the outage delivered, per-room order kept.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from hipchatd.config import Listen, SpoolSettings
from hipchatd.delivery.spool import open_spool
from hipchatd.delivery.spool.fallback import FallbackSpool
from hipchatd.delivery.spool.postgresql import forward
from hipchatd.emulator.server import Emulator
from hipchatd.ops import spool_admin
from tests.conftest import StartDaemon, classic_event, send_tcp
from tests.postgres import PgSchema, PostgresServer
from tests.processes import REPO, child_env
from tests.test_spool import DEV, DOCUMENT, EVENT, ONCALL, OPS, running
from tests.test_spool_contract import postgresql_settings

#: Targets of the events sent during an outage, in the order they are sent.
_TARGETS = [[OPS], [DEV, ONCALL], [OPS], [DEV], [OPS, DEV]]


def _entries(events: int) -> int:
    """Entries of the first ``events`` events _hold_locally submits."""
    return sum(len(_TARGETS[k % len(_TARGETS)]) for k in range(events))


def _query(schema: PgSchema, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(schema.conninfo) as conn:
        return conn.execute(query).fetchall()


def _local(state_dir: Path, query: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(state_dir / "spool.sqlite3")
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def _in_lane_order(entries: list[Any]) -> dict[str, list[float]]:
    """Each lane's ``accepted_at`` values, in the order of the entries' ids."""
    lanes: dict[str, list[float]] = {}
    for entry in sorted(entries, key=lambda e: e.id):
        lanes.setdefault(entry.target.name, []).append(entry.accepted_at)
    return lanes


async def _hold_locally(spool: FallbackSpool, handles: list[str], first: float) -> None:
    """Submit one event per handle (targets from _TARGETS) and wait until all are held."""
    entries = 0
    for k, handle in enumerate(handles):
        targets = _TARGETS[k % len(_TARGETS)]
        assert spool.submit(EVENT, DOCUMENT, targets, first + k, handle)
        entries += len(targets)
    while spool.fallback_counts()["held"] < entries:
        await trio.sleep(0.02)


async def _held_by_an_earlier_run(
    state_dir: str, settings: SpoolSettings, pg_server: PostgresServer, events: int
) -> None:
    """A spool that accepted ``events`` events locally while the server was down, then closed
    (the server is back when this returns)."""
    spool = await open_spool(state_dir, max_events=100, settings=settings)
    assert isinstance(spool, FallbackSpool)
    async with running(spool):
        await trio.to_thread.run_sync(pg_server.pause)
        try:
            await _hold_locally(spool, [f"e{k}" for k in range(events)], 1000.0)
        finally:
            await trio.to_thread.run_sync(pg_server.resume)


async def test_events_sent_while_the_server_is_down_are_held_locally_then_forwarded(
    pg_schema: PgSchema, pg_server: PostgresServer, tmp_path: Path
) -> None:
    """Accepted into the local file at once (writable, degraded): each handed back with its
    handle and no entries, none handed to the lanes until the server is back; then
    forwarded in acceptance order (as ``(None, entries)``), the marks made meanwhile
    written; logged once each."""
    state_dir = tmp_path / "state"
    with trio.fail_after(90), capture_logs() as logs:
        spool = await open_spool(
            str(state_dir), max_events=100, settings=postgresql_settings(pg_schema)
        )
        assert isinstance(spool, FallbackSpool)
        async with running(spool) as committed:
            spool.submit(EVENT, DOCUMENT, [OPS], 1000.0, "before")
            (before,) = await committed.wait_for(1)
            assert spool.degraded is None
            await trio.to_thread.run_sync(pg_server.pause)
            try:
                spool.mark_delivered([before.id])
                handles = [f"during-{k}" for k in range(10)]
                await _hold_locally(spool, handles, 2000.0)
                assert spool.writable
                assert spool.degraded is not None
                assert spool.degraded.startswith("local spool only: PostgreSQL ")
                assert str(state_dir / "spool.sqlite3") in spool.degraded
                held = spool.fallback_counts()["held"]
                assert held == _entries(10)
                assert spool.counts()["pending"] == 1 + held
                assert [h for h, _ in committed.events] == ["before", *handles]
                assert len(committed.entries) == 1
                assert _local(state_dir, "SELECT count(*) FROM pending") == [(held,)]
            finally:
                await trio.to_thread.run_sync(pg_server.resume)
            await committed.wait_for(1 + held)
            while spool.degraded is not None:
                await trio.sleep(0.02)
            spool.submit(EVENT, DOCUMENT, [DEV], 3000.0, "after")
            await committed.wait_for(2 + held)
            await spool.flush()
            assert spool.fallback_counts() == {"held": 0, "forwarded": held}
    reported = [(h, len(es)) for h, es in committed.events]
    forwarded_events = [(None, len(_TARGETS[k % len(_TARGETS)])) for k in range(10)]
    assert reported == [("before", 1), *((h, 0) for h in handles), *forwarded_events, ("after", 1)]
    forwarded = [e for h, es in committed.events if h is None for e in es]
    # Server ids in acceptance order, each lane's entries in the order they were accepted.
    assert [e.id for e in forwarded] == sorted(e.id for e in forwarded)
    for times in _in_lane_order(forwarded).values():
        assert times == sorted(times)
    assert _local(state_dir, "SELECT count(*) FROM pending") == [(0,)]
    # "before" was delivered during the outage: its mark was kept, then written.
    assert _query(pg_schema, "SELECT count(*) FROM pending") == [(held + 1,)]
    (degraded,) = _events(logs, "spool.degraded")
    assert degraded["error"]
    (caught_up,) = _events(logs, "spool.caught_up")
    assert caught_up["forwarded"] == held
    assert caught_up["seconds"] > 0
    assert not _events(logs, "spool.write_failed")


async def test_a_restart_forwards_what_an_earlier_run_held_before_reading_the_server(
    pg_schema: PgSchema,
    pg_server: PostgresServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Stopped while degraded: ``hipchatd spool list`` shows what is held locally; the next
    start forwards it while it opens, so ``load_pending`` finds it on the server, in
    acceptance order."""
    state_dir = str(tmp_path / "state")
    settings = postgresql_settings(pg_schema)
    with trio.fail_after(90), capture_logs() as logs:
        await _held_by_an_earlier_run(state_dir, settings, pg_server, 6)
        assert _local(Path(state_dir), "SELECT count(*) FROM pending") == [(_entries(6),)]
        capsys.readouterr()
        listing = argparse.Namespace(spool_command="list", dead=False)
        assert await trio.to_thread.run_sync(spool_admin.run, listing, state_dir, settings) == 0
        listed = capsys.readouterr().out.splitlines()
        reopened = await open_spool(state_dir, max_events=100, settings=settings)
        assert reopened.degraded is None
        entries = await reopened.load_pending()
        await reopened.aclose()
    assert [e.accepted_at for e in entries] == sorted(e.accepted_at for e in entries)
    assert len(entries) == _entries(6)
    assert _local(Path(state_dir), "SELECT count(*) FROM pending") == [(0,)]
    assert [e["forwarded"] for e in _events(logs, "spool.caught_up")] == [_entries(6)]
    assert listed[0] == "no pending events"
    assert listed[2].startswith(f"held in the local spool {state_dir}/spool.sqlite3 until")
    assert listed[3].startswith("ID ")
    assert len(listed) == 4 + _entries(6)


async def test_a_forward_the_server_refuses_keeps_the_entries_held_and_is_tried_again(
    pg_schema: PgSchema,
    pg_server: PostgresServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A forwarded batch the server refuses (not unreachability): logged as an error, the
    spool opens degraded and keeps accepting; the next try after a probe forwards it."""
    state_dir = str(tmp_path / "state")
    settings = postgresql_settings(pg_schema)
    copy = forward.forward
    refusals = 0

    def refused_once(*args: Any) -> Any:
        nonlocal refusals
        if not refusals:
            refusals += 1
            raise psycopg.DataError("value out of range")
        return copy(*args)

    with trio.fail_after(90), capture_logs() as logs:
        await _held_by_an_earlier_run(state_dir, settings, pg_server, 3)
        monkeypatch.setattr(forward, "forward", refused_once)
        spool = await open_spool(state_dir, max_events=100, settings=settings)
        assert spool.degraded is not None
        assert spool.fallback_counts()["held"] == _entries(3)
        async with running(spool) as committed:
            assert spool.submit(EVENT, DOCUMENT, [OPS], 5000.0, "meanwhile")
            await committed.wait_for(_entries(4))
            while spool.degraded is not None:
                await trio.sleep(0.02)
    (failed,) = _events(logs, "spool.forward_failed")
    assert failed["log_level"] == "error"
    assert "value out of range" in failed["error"]
    reported = [(h, len(es)) for h, es in committed.events]
    # Accepted at its local commit; forwarded after the earlier run's three, with no handle.
    earlier = [(None, len(targets)) for targets in _TARGETS[:3]]
    assert reported == [("meanwhile", 0), *earlier, (None, 1)]
    assert _query(pg_schema, "SELECT count(*) FROM pending") == [(_entries(4),)]


_CRASH_MID_FORWARD = """
import functools, os, signal, sys
import trio
from hipchatd.config import Secret, SpoolSettings
from hipchatd.delivery.spool import fallback, open_spool

def killed(self, ids):
    # Copied to the server, not yet deleted here: the worst moment to die.
    os.kill(os.getpid(), signal.SIGKILL)

fallback.FallbackDialect._delete_local = killed
settings = SpoolSettings("postgresql", Secret(os.environ["SPOOL_DSN"]), os.environ["SPOOL_SCHEMA"])
trio.run(functools.partial(open_spool, sys.argv[1], max_events=100, settings=settings))
"""


async def test_kill_9_mid_forward_stores_nothing_twice(
    pg_schema: PgSchema, pg_server: PostgresServer, tmp_path: Path
) -> None:
    """A process killed after its forward committed on the server, before the local delete:
    the next start finds those events by ``(origin, origin_id)`` and stores none again."""
    state_dir = str(tmp_path / "state")
    settings = postgresql_settings(pg_schema)
    with trio.fail_after(90):
        await _held_by_an_earlier_run(state_dir, settings, pg_server, 5)
    crashed = await trio.run_process(
        [sys.executable, "-c", _CRASH_MID_FORWARD, state_dir],
        cwd=REPO,
        env={**child_env(), "SPOOL_DSN": pg_schema.conninfo, "SPOOL_SCHEMA": pg_schema.schema},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    output = (crashed.stdout + crashed.stderr).decode(errors="replace")
    assert crashed.returncode == -signal.SIGKILL, output
    assert pg_schema.password not in output
    # Copied, and still held locally.
    assert _query(pg_schema, "SELECT count(*) FROM pending") == [(_entries(5),)]
    assert _local(Path(state_dir), "SELECT count(*) FROM pending") == [(_entries(5),)]
    with trio.fail_after(60):
        reopened = await open_spool(state_dir, max_events=100, settings=settings)
        entries = await reopened.load_pending()
        await reopened.aclose()
    assert len(entries) == _entries(5)
    assert _query(pg_schema, "SELECT count(*) FROM pending") == [(_entries(5),)]
    assert _query(pg_schema, "SELECT count(*) FROM documents") == [(5,)]
    assert _local(Path(state_dir), "SELECT count(*) FROM pending") == [(0,)]


def test_only_an_unreachable_server_sends_commits_to_the_local_spool() -> None:
    """A refused or lost connection and a server shutting down go local; a write the server
    refuses (full disk, a value it cannot store, a deadlock) does not."""
    assert forward.is_unreachable(psycopg.OperationalError("connection refused"))
    assert forward.is_unreachable(psycopg.errors.AdminShutdown("terminating connection"))
    assert forward.is_unreachable(psycopg.errors.ConnectionFailure("gone"))
    assert not forward.is_unreachable(psycopg.errors.DiskFull("no space"))
    assert not forward.is_unreachable(psycopg.errors.DeadlockDetected("deadlock"))
    assert not forward.is_unreachable(psycopg.errors.ProgramLimitExceeded("too big"))
    assert not forward.is_unreachable(psycopg.DataError("bad value"))
    assert not forward.is_unreachable(psycopg.errors.InsufficientPrivilege("denied"))
    assert not forward.is_unreachable(ValueError("not psycopg"))


# --- end to end: the real daemon and the real emulator -----------------------------------------


def _samples(text: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def _checks_by_room(emulator: Emulator, prefix: str) -> dict[str, list[str]]:
    """Each room's check names starting with ``prefix``, in the order the room received them."""
    rooms: dict[str, list[str]] = {}
    for message in emulator.messages:
        found = re.findall(rf"\b{re.escape(prefix)}\d\d\b", message.message)
        seen = rooms.setdefault(message.room or "", [])
        seen.extend(check for check in dict.fromkeys(found) if check not in seen)
    return rooms


async def test_the_daemon_accepts_while_postgresql_is_down_and_delivers_once_it_is_back(
    start_daemon: StartDaemon,
    emulator: Emulator,
    pg_schema: PgSchema,
    pg_server: PostgresServer,
    tmp_path: Path,
) -> None:
    """Events sent to the daemon while its server is stopped: accepted into the local spool
    (``/healthz`` 200 degraded, the local gauge counts them, and so does the accepted
    counter, at once), none sent meanwhile; once the server is back every one is delivered,
    in each room's order, counted accepted once, and the health is ok again."""
    rooms = ["ops", "dev", "sensu"]
    with trio.fail_after(120), capture_logs() as logs:
        app = await start_daemon(
            state_dir=str(tmp_path / "state"),
            spool=postgresql_settings(pg_schema),
            metrics=Listen("127.0.0.1", 0),
        )
        url = f"http://{app.metrics_addresses[0]}"
        async with httpx.AsyncClient(timeout=10) as client:
            address = app.tcp_addresses[0]
            await send_tcp(address, json.dumps(_event("pgdown-00", "ops")).encode())
            await emulator.wait_for_messages(1)
            healthy = await client.get(f"{url}/healthz")
            await trio.to_thread.run_sync(pg_server.pause)
            try:
                for k in range(1, 16):
                    event = _event(f"pgdown-{k:02d}", rooms[k % len(rooms)])
                    await send_tcp(address, json.dumps(event).encode())
                while app.spool.fallback_counts()["held"] < 15:
                    await trio.sleep(0.02)
                degraded = await client.get(f"{url}/healthz")
                during = _samples((await client.get(f"{url}/metrics")).text)
                await trio.sleep(0.5)
                sent_during = len(emulator.messages)
            finally:
                await trio.to_thread.run_sync(pg_server.resume)
            while sum(len(c) for c in _checks_by_room(emulator, "pgdown-").values()) < 16:
                await emulator.wait_for_messages(len(emulator.messages) + 1)
            while app.spool.degraded is not None or app.spool.counts()["pending"]:
                await trio.sleep(0.05)
            recovered = await client.get(f"{url}/healthz")
            after = _samples((await client.get(f"{url}/metrics")).text)
    assert healthy.json() == {"status": "ok"}
    assert degraded.status_code == 200
    assert degraded.json()["status"] == "degraded"
    assert degraded.json()["reason"].startswith("local spool only: PostgreSQL ")
    assert during["hipchatd_spool_local_entries"] == 15
    assert during["hipchatd_events_accepted_total"] == 16
    assert after["hipchatd_events_accepted_total"] == 16
    assert sent_during == 1
    assert recovered.json() == {"status": "ok"}
    assert after["hipchatd_spool_local_entries"] == 0
    assert after["hipchatd_spool_forwarded_entries_total"] == 15
    by_room = _checks_by_room(emulator, "pgdown-")
    assert sorted(c for checks in by_room.values() for c in checks) == [
        f"pgdown-{k:02d}" for k in range(16)
    ]
    for checks in by_room.values():
        assert checks == sorted(checks)
    assert len(_events(logs, "spool.degraded")) == 1
    assert len(_events(logs, "spool.caught_up")) == 1
    assert pg_schema.password not in json.dumps(logs, default=str)


async def test_a_daemon_on_sqlite_has_no_fallback(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    """The SQLite daemon: never degraded, nothing held or forwarded (the metrics read 0)."""
    with trio.fail_after(20):
        app = await start_daemon(metrics=Listen("127.0.0.1", 0))
        async with httpx.AsyncClient(timeout=10) as client:
            await send_tcp(app.tcp_addresses[0], json.dumps(_event("lite-00", "ops")).encode())
            await emulator.wait_for_messages(1)
            health = await client.get(f"http://{app.metrics_addresses[0]}/healthz")
            metrics = _samples(
                (await client.get(f"http://{app.metrics_addresses[0]}/metrics")).text
            )
    assert app.spool.degraded is None
    assert app.spool.fallback_counts() == {"held": 0, "forwarded": 0}
    assert health.json() == {"status": "ok"}
    assert metrics["hipchatd_spool_local_entries"] == 0
    assert metrics["hipchatd_spool_forwarded_entries_total"] == 0


def _event(check: str, room: str) -> dict[str, Any]:
    event = classic_event(name=check, output=f"{check} failed", hipchat={"room": room})
    event["id"] = f"web-1-{check}"
    return event
