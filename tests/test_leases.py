"""Lane leases: several daemons on one PostgreSQL schema, one sender per room.

Against the test session's real PostgreSQL server (``pg_schema``) and the
real emulator over loopback; the unit tests of the lease manager's own clock
use a fake of the :class:`~hipchatd.delivery.spool.LaneLeases` interface.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import trio
from trio.testing import MockClock

from hipchatd import app as app_module
from hipchatd.clock import unix_now
from hipchatd.delivery.hipchat import Outcome
from hipchatd.delivery.ownership import ROUND_GAP, SAFETY_MARGIN, LeaseManager
from hipchatd.delivery.routing import Target
from hipchatd.delivery.spool import Held, SpoolError, lane_of, open_admin, open_spool
from hipchatd.delivery.spool.postgresql.leases import LEASE_TTL, RENEW_EVERY, PgLeases
from hipchatd.delivery.tickets import tickets_for
from hipchatd.emulator import Emulator
from hipchatd.metrics import (
    EVENTS_ACCEPTED,
    LANES_OWNED,
    LEASE_RENEWALS_FAILED,
    LEASE_TAKEOVERS,
    NOTIFICATIONS,
    NOTIFICATIONS_FAILED,
    Metrics,
)
from tests.conftest import classic_event, make_config, represented, send_tcp, wait_until
from tests.logcapture import capture_logs
from tests.postgres import PgSchema
from tests.processes import STARTUP, wait_for
from tests.test_lanes import SENT, Harness, ScriptedClient
from tests.test_process import _event as process_event
from tests.test_spool import DEV, DOCUMENT, EVENT, OPS, other_event
from tests.test_spool_contract import postgresql_settings
from tests.test_spool_edges import running
from tests.test_spool_postgresql import PgCluster, _query, pg_cluster  # noqa: F401


def _event(name: str, room: str) -> dict[str, object]:
    return classic_event(name=name, output=f"{name} is down", hipchat={"room": room})


def _sent(app: app_module.App) -> float:
    return sum(app.metrics.value(NOTIFICATIONS, api_version=v) for v in ("v1", "v2"))


def _order(emulator: Emulator, room: str) -> list[str]:
    """Check names in the order the room's messages show them."""
    return [
        name
        for message in emulator.messages
        if message.room == room
        for name in re.findall(r"/(lease\w+)", message.message)
    ]


@dataclass(eq=False)
class Instance:
    """One in-process daemon on the shared schema, stoppable on its own."""

    app: app_module.App
    scope: trio.CancelScope
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def leases(self) -> PgLeases:
        leases = self.app.spool.lane_leases()
        assert isinstance(leases, PgLeases)
        return leases

    async def stop(self) -> None:
        self.scope.cancel()
        await self.done.wait()


@asynccontextmanager
async def instances(
    emulator: Emulator, schema: PgSchema
) -> AsyncIterator[Callable[[], Awaitable[Instance]]]:
    """Start daemons on ``schema`` one at a time (``await start()``); all stop on leaving."""
    started: list[Instance] = []
    async with trio.open_nursery() as nursery:

        async def start() -> Instance:
            config = make_config(emulator.url, spool=postgresql_settings(schema), room="sensu")
            scope = trio.CancelScope()
            done = trio.Event()

            async def run(task_status: trio.TaskStatus[app_module.App]) -> None:
                try:
                    with scope:
                        await app_module.run(config, task_status=task_status)
                finally:
                    done.set()

            app: app_module.App = await nursery.start(run)
            instance = Instance(app, scope, done)
            started.append(instance)
            return instance

        yield start
        nursery.cancel_scope.cancel()


def _owner_of(schema: PgSchema, lane: str) -> str | None:
    rows = _query(schema, "SELECT owner::text FROM leases WHERE lane = %s", lane)
    return str(rows[0][0]) if rows else None


# --- the interface ---------------------------------------------------------------------------


async def test_an_sqlite_spool_owns_every_lane(tmp_path: Path) -> None:
    """One daemon per SQLite file: no leases, every lane is this daemon's (as before)."""
    spool = await open_spool(str(tmp_path), max_events=10)
    try:
        assert spool.lane_leases() is None
    finally:
        await spool.aclose()


def test_a_lane_is_its_target_s_kind_and_name() -> None:
    assert lane_of(OPS) == "room:ops"
    assert lane_of(DEV) == "room:dev"


def test_entries_read_back_get_one_ticket_per_event() -> None:
    """Entries of one event (same acceptance time, source, check) share a ticket."""
    from hipchatd.delivery.spool import Entry

    def entry(i: int, check: str, at: float) -> Entry:
        return Entry(i, at, DOCUMENT, "web-1", check, OPS if i % 2 else DEV, 0, None)

    queued, events = tickets_for([entry(1, "a", 1.0), entry(2, "a", 1.0), entry(3, "b", 2.0)])
    assert events == 2
    assert [t.remaining for _, t, _ in queued] == [2, 2, 1]
    assert queued[0][1] is queued[1][1]
    assert all(event is None for _, _, event in queued)


# --- the SQL side ----------------------------------------------------------------------------


async def _commit(schema: PgSchema, *targets_by_check: tuple[str, list[Any]]) -> None:
    spool = await open_spool(":memory:", max_events=100, settings=postgresql_settings(schema))
    async with running(spool):
        for check, targets in targets_by_check:
            event, document = other_event(check)
            assert spool.submit(event, document, targets, unix_now())
        await spool.flush()


async def test_a_round_claims_a_fair_share_and_a_lane_has_one_owner(pg_schema: PgSchema) -> None:
    """Four lanes with work, two live instances: two each, never one lane twice."""
    rooms = [OPS, DEV, *(type(OPS)("room", name, True, "sensu", "html") for name in ("db", "qa"))]
    with trio.fail_after(30):
        await _commit(pg_schema)
        one = PgLeases(_server(pg_schema))
        two = PgLeases(_server(pg_schema))
        try:
            # Both instances are live (heartbeat rows) before either claims.
            await one.round()
            await two.round()
            await _commit(pg_schema, *((f"c{i}", [room]) for i, room in enumerate(rooms)))
            first = await one.round()
            second = await two.round()
            assert len(first.lanes) == 2
            assert len(second.lanes) == 2
            assert first.lanes | second.lanes == {lane_of(room) for room in rooms}
            # Renewing changes nothing; nobody took anything over.
            assert (await one.round()).lanes == first.lanes
            assert not first.taken_over
            assert not second.taken_over
        finally:
            await one.release()
            await two.release()
        assert _query(pg_schema, "SELECT count(*) FROM leases") == [(0,)]


async def test_an_expired_lease_is_taken_over_and_an_idle_lane_is_given_up(
    pg_schema: PgSchema,
) -> None:
    with trio.fail_after(30):
        await _commit(pg_schema, ("a", [OPS]))
        dead = PgLeases(_server(pg_schema))
        heir = PgLeases(_server(pg_schema))
        try:
            assert (await dead.round()).lanes == {"room:ops"}
            # The owner stops renewing; its lease runs out on the server's clock.
            _query(pg_schema, "UPDATE leases SET expires_at = now() - interval '1 s'")
            taken = await heir.round()
            assert taken.lanes == {"room:ops"}
            assert taken.taken_over == {"room:ops"}
            assert _owner_of(pg_schema, "room:ops") == str(heir.owner)
            # The old owner's next round finds the lane gone.
            assert (await dead.round()).lanes == frozenset()
            # Nothing pending any more: the lane is given up at the next round.
            _query(pg_schema, "DELETE FROM pending")
            assert (await heir.round()).lanes == frozenset()
        finally:
            await dead.release()
            await heir.release()


async def test_reads_return_a_lane_s_entries_above_its_mark_from_every_instance(
    pg_schema: PgSchema,
) -> None:
    with trio.fail_after(30):
        await _commit(pg_schema, ("a", [OPS]), ("b", [OPS, DEV]))
        await _commit(pg_schema, ("c", [OPS]))
        leases = PgLeases(_server(pg_schema))
        try:
            entries = await leases.read({"room:ops": 0})
            assert [e.check for e in entries] == ["a", "b", "c"]
            assert [e.id for e in entries] == sorted(e.id for e in entries)
            later = await leases.read({"room:ops": entries[1].id})
            assert [e.check for e in later] == ["c"]
        finally:
            await leases.release()


async def test_a_commit_serialises_on_its_lanes(pg_schema: PgSchema) -> None:
    """A commit to a lane waits while another transaction holds that lane's lock."""
    lock = "SELECT pg_advisory_xact_lock(hashtext('hipchatd lane ' || %s), hashtext('room:ops'))"
    with trio.fail_after(30):
        spool = await open_spool(
            ":memory:", max_events=100, settings=postgresql_settings(pg_schema)
        )
        with psycopg.connect(pg_schema.conninfo) as other:
            async with running(spool) as (committed, _):
                other.execute(lock, [pg_schema.schema])
                assert spool.submit(EVENT, DOCUMENT, [DEV], unix_now())
                await committed.wait_for(1)
                assert spool.submit(EVENT, DOCUMENT, [OPS], unix_now())
                await trio.sleep(0.5)
                # Held back by the commit in progress on room:ops; room:dev was not.
                assert len(committed.entries) == 1
                other.commit()
                [_, later] = await committed.wait_for(2)
        assert later.target == OPS


# --- several daemons, end to end ---------------------------------------------------------------


async def _send(instance: Instance, name: str, room: str = "ops") -> None:
    """Send one event to ``instance`` and wait until it is accepted (committed)."""
    metrics = instance.app.metrics
    before = metrics.value(EVENTS_ACCEPTED)
    await send_tcp(instance.app.tcp_addresses[0], json.dumps(_event(name, room)).encode())
    await wait_until(lambda: metrics.value(EVENTS_ACCEPTED) > before)


async def test_one_owner_delivers_what_every_instance_accepted_in_acceptance_order(
    emulator: Emulator, pg_schema: PgSchema
) -> None:
    names = [f"lease{i:02d}" for i in range(12)]
    with trio.fail_after(60):
        async with instances(emulator, pg_schema) as start:
            one, two = await start(), await start()
            for i, name in enumerate(names):
                await _send((one, two)[i % 2], name)
            await wait_until(lambda: represented(emulator, "ops") >= len(names))
            # Exactly one instance sent for the room, in the order the events were accepted.
            assert _order(emulator, "ops") == names
            assert sorted([_sent(one.app) > 0, _sent(two.app) > 0]) == [False, True]
            for instance in (one, two):
                assert instance.app.metrics.value(EVENTS_ACCEPTED) == len(names) / 2
                assert instance.app.metrics.value(LEASE_TAKEOVERS) == 0
            # Delivered: nothing pending, so the lane is given up at the owner's next round.
            await wait_until(lambda: _owner_of(pg_schema, "room:ops") is None, step=0.2)


async def _owned_by(schema: PgSchema, instance: Instance, lane: str = "room:ops") -> float:
    """Wait until ``instance`` holds ``lane``: the trio time it took."""
    started = trio.current_time()
    owner = str(instance.leases.owner)
    await wait_until(lambda: _owner_of(schema, lane) == owner, step=0.02)
    return trio.current_time() - started


@asynccontextmanager
async def _held_while_hipchat_is_down(
    emulator: Emulator, schema: PgSchema, *names: str
) -> AsyncIterator[tuple[Instance, Instance]]:
    """A first instance holds room:ops with ``names`` pending (HipChat down); then a second."""
    with trio.fail_after(60):
        async with instances(emulator, schema) as start:
            emulator.set_down(True)
            first = await start()
            for name in names:
                await _send(first, name)
            await _owned_by(schema, first)
            yield first, await start()


async def test_a_clean_stop_releases_and_another_instance_takes_over_at_once(
    emulator: Emulator, pg_schema: PgSchema
) -> None:
    """The release notifies: the other instance claims before its next scheduled round."""
    names = ("leasea", "leaseb", "leasec")
    async with _held_while_hipchat_is_down(emulator, pg_schema, *names) as (first, second):
        with capture_logs() as logs:
            await first.stop()
            took = await _owned_by(pg_schema, second)
        assert took < RENEW_EVERY
        assert [e["lanes"] for e in logs if e["event"] == "lease.released"] == [1]
        # Released, not taken over from an expired lease.
        assert second.app.metrics.value(LEASE_TAKEOVERS) == 0
        emulator.set_down(False)
        await wait_until(lambda: represented(emulator, "ops") >= len(names))
        assert _order(emulator, "ops") == list(names)


async def test_the_safety_poll_alone_takes_over_without_notifications(
    emulator: Emulator, pg_schema: PgSchema
) -> None:
    """An instance that hears no NOTIFY (missed, or while reconnecting) still takes over."""

    async def deaf(within: float) -> bool:
        await trio.sleep(within)
        return False

    async with _held_while_hipchat_is_down(emulator, pg_schema, "leasedeaf") as (first, second):
        second.leases.wait = deaf  # type: ignore[method-assign]
        await first.stop()
        # Its next round finds the lane free: at most one renewal period later.
        took = await _owned_by(pg_schema, second)
        assert took <= RENEW_EVERY + 2 * ROUND_GAP
        # The round's commit shows in the table before its task has adopted what it holds.
        await wait_until(lambda: second.app.metrics.value(LANES_OWNED) == 1)
        emulator.set_down(False)
        await wait_until(lambda: represented(emulator, "ops") >= 1)
        assert _order(emulator, "ops") == ["leasedeaf"]


async def test_an_entry_re_queued_by_the_operator_is_delivered_by_its_lane_s_owner(
    emulator: Emulator, pg_schema: PgSchema
) -> None:
    """``hipchatd spool retry`` on a cluster: whoever claims the lane reads the entry back."""
    emulator.auto_create_rooms = False
    with trio.fail_after(60):
        async with instances(emulator, pg_schema) as start:
            first, second = await start(), await start()
            await _send(first, "leaselater", room="later")
            dead = "SELECT count(*) FROM dead"
            await wait_until(lambda: _query(pg_schema, dead) == [(1,)], step=0.1)
            emulator.add_room("later")
            admin = open_admin("unused", settings=postgresql_settings(pg_schema))
            try:
                assert len(admin.retry(None).ids) == 1
            finally:
                admin.close()
            await wait_until(lambda: represented(emulator, "later") >= 1)
            assert _order(emulator, "later") == ["leaselater"]
            assert _sent(first.app) + _sent(second.app) == 1
            await wait_until(lambda: _query(pg_schema, "SELECT count(*) FROM pending") == [(0,)])


def _server(schema: PgSchema) -> Any:
    from hipchatd.delivery.spool.postgresql.connect import Server

    return Server.of(postgresql_settings(schema))


# --- the lease manager's own clock -----------------------------------------------------------


@dataclass(eq=False)
class FakeLeases:
    """LaneLeases that hold room:ops until ``failing``; then every round fails."""

    ttl: float = 10.0
    renew_every: float = 3.0
    failing: bool = False
    rounds: list[float] = field(default_factory=list)

    async def round(self) -> Held:
        self.rounds.append(trio.current_time())
        if self.failing:
            raise SpoolError("cannot renew the lane leases: the server is unreachable")
        return Held(frozenset({"room:ops"}))

    async def read(self, after: dict[str, int]) -> list[Any]:
        return []

    async def wait(self, within: float) -> bool:
        await trio.sleep(within)
        return False

    async def release(self) -> None:
        pass


@dataclass(eq=False)
class FakeDispatcher:
    forgotten: list[bool] = field(default_factory=list)

    def forget(self, lanes: Callable[[Any], bool]) -> None:
        self.forgotten.append(lanes(OPS))

    def enqueue(self, entries: Any) -> None:
        pass


async def test_an_owner_that_cannot_renew_stops_before_its_lease_could_expire(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    """The stop is the last good round's start + TTL - SAFETY_MARGIN, on the monotonic clock.

    The server set ``now() + ttl`` after that start, so nobody can claim the
    lane before this owner has stopped for SAFETY_MARGIN seconds.
    """
    leases, dispatcher, metrics = FakeLeases(), FakeDispatcher(), Metrics()
    manager = LeaseManager(leases, metrics)
    with capture_logs() as logs:
        await nursery.start(manager.run, dispatcher)
        assert manager.owns(OPS)
        assert not manager.owns(DEV)
        await trio.sleep(leases.renew_every + 0.1)
        last_good = leases.rounds[-1]
        leases.failing = True
        stop = last_good + leases.ttl - SAFETY_MARGIN
        await trio.sleep_until(stop - 0.01)
        assert manager.owns(OPS)
        assert dispatcher.forgotten == []
        await trio.sleep_until(stop + 0.01)
        assert not manager.owns(OPS)
        # The dispatcher dropped what it held of the lane at that moment.
        assert dispatcher.forgotten == [True]
    assert metrics.value(LEASE_RENEWALS_FAILED) >= 2
    assert metrics.value(LANES_OWNED) == 0
    assert [e["lanes"] for e in logs if e["event"] == "lease.expired"] == [1]
    # Renewed in time, the lane is held again (and read again from the queue).
    leases.failing = False
    await trio.sleep(leases.renew_every + 0.1)
    assert manager.owns(OPS)
    assert metrics.value(LANES_OWNED) == 1


# --- SIGKILL of the owner ----------------------------------------------------------------------


def test_a_killed_owner_s_rooms_are_taken_over_within_15_s_and_nothing_is_lost(
    pg_cluster: PgCluster,  # noqa: F811 (the fixture imported above)
) -> None:
    """Two daemons, one schema; SIGKILL the owner of the rooms mid-delivery: the other takes
    them over once their leases expire (<= 15 s), and delivers every accepted event."""
    # Messages stay in flight 5 s: nothing leaves the spool until the kill.
    emulator = pg_cluster.emulator("--latency", "5", "--auto-create-rooms")
    # Each instance keeps its own local spool (used while PostgreSQL is away).
    daemons = [
        pg_cluster.daemon(emulator, state_dir=str(pg_cluster.tmp_path / f"state-{i}"))
        for i in range(2)
    ]
    rooms = ["ops", "dev"]
    checks = [f"killed{i:02d}" for i in range(20)]
    for i, check in enumerate(checks[:2]):
        daemons[0].send(process_event(check, room=rooms[i]))
    wait_for("both rooms owned", lambda: _owners(pg_cluster.schema, rooms), STARTUP)
    for i, check in enumerate(checks[2:], start=2):
        daemons[i % 2].send(process_event(check, room=rooms[i % 2]))
    wait_for("every event accepted", lambda: pg_cluster.pending_now() == len(checks), STARTUP)
    # Kill the instance that holds room:ops (it may hold room:dev too).
    [victim] = [d for d in daemons if "room:ops" in _claimed(d)]
    heir = next(d for d in daemons if d is not victim)
    killed_at = time.monotonic()
    victim.signal(signal.SIGKILL)
    assert victim.child.wait_exit(10) == -signal.SIGKILL
    taken = heir.child.wait_logged("lease.taken_over", LEASE_TTL + 10)
    took = time.monotonic() - killed_at
    assert "room:ops" in taken["lanes"]
    assert took <= 15
    emulator.faults(latency=0)
    wait_for("every event delivered", lambda: emulator.checks_seen("killed") == set(checks), 60)
    wait_for("the spool emptied", lambda: pg_cluster.pending_now() == 0, 15)
    # At least once: only requests in flight at the kill may come twice.
    assert emulator.represented() >= len(checks)


def _owners(schema: PgSchema, rooms: list[str]) -> dict[str, str]:
    rows = _query(schema, "SELECT lane, owner::text FROM leases WHERE lane LIKE 'room:%'")
    owned = {lane.removeprefix("room:"): owner for lane, owner in rows}
    return owned if set(owned) == set(rooms) else {}


def _claimed(daemon: Any) -> set[str]:
    """The lanes ``daemon`` logged claiming."""
    return {
        lane
        for record in daemon.child.logs()
        if record["event"] == "lease.claimed"
        for lane in record["lanes"]
    }


async def test_a_lane_sends_only_within_its_lease_and_an_attempt_ends_with_it(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    """The dispatcher's gate: no attempt for a lane not held; none runs past the lease."""
    ends = trio.current_time() + 3.0

    def lease_left(target: Target) -> float:
        return max(0.0, ends - trio.current_time()) if target.name == "ops" else 0.0

    async def slow(target: Target, message: object) -> Outcome:
        await trio.sleep(60)
        return SENT

    harness = Harness(client=ScriptedClient(slow))
    harness.dispatcher._shared.lease_left = lease_left
    await nursery.start(harness.dispatcher.run)
    ops, dev = harness.enqueue("ops"), harness.enqueue("dev")
    timeouts = partial(harness.metrics.value, NOTIFICATIONS_FAILED, reason="timeout")
    await trio.sleep_until(ends - 0.1)
    assert [room for room, _, _ in harness.client.sent] == ["ops"]
    assert timeouts() == 0
    await trio.sleep_until(ends + 0.1)
    # Cut at the lease's end (the timeout is 10 s, HipChat would answer after 60 s).
    assert timeouts() == 1
    assert harness.spool.attempts == [ops]
    await trio.sleep(30)
    # Not held any more: nothing else is sent, for either room.
    assert [room for room, _, _ in harness.client.sent] == ["ops"]
    assert dev not in harness.spool.attempts
