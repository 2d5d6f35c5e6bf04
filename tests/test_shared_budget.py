"""HipChat's budget shared by several instances (``hipchatd.delivery.shared_budget``).

The store contract runs against both stores (the process's own, and the
budget rows of a PostgreSQL schema on the test session's private server):
seeding from the configured limits, atomic consumes, answers that lower but
never raise, a 429 that empties a row. On PostgreSQL: clients on one schema
hammered from threads never consume more than the limit, the token is never
stored, a 429 pauses every client, and a store that cannot be reached leaves
an instance its fair share. End to end: two daemons on one schema deliver a
storm to the real emulator with HipChat's limits, 0 x 429.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import psycopg
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from hipchatd import app as app_module
from hipchatd.delivery.budget import RateBudget
from hipchatd.delivery.outcome import Outcome, OutcomeKind, RateInfo
from hipchatd.delivery.shared_budget import (
    BudgetStore,
    BudgetStoreError,
    LocalBudgetStore,
    Report,
    Row,
    SharedBudget,
    Want,
    connect_store,
    make_budget,
    token_key,
)
from hipchatd.delivery.spool import open_budget_store
from hipchatd.delivery.spool.postgresql import PostgresBudgetStore
from hipchatd.delivery.spool.postgresql.connect import Server
from hipchatd.delivery.spool.postgresql.schema import migrate
from hipchatd.emulator import Emulator
from tests.conftest import TOKEN, classic_event, make_config, represented, send_tcp, wait_until
from tests.postgres import PgSchema, PostgresServer, fresh_schema
from tests.test_spool_contract import postgresql_settings

NOW = 1_800_000_000.0
TOKEN_WANT = Want(token_key(TOKEN), 5, 300.0)
ROOM_WANT = Want("flood:x:ops", 3, 60.0)


def _migrated(schema: PgSchema) -> Server:
    server = Server.of(postgresql_settings(schema))
    with psycopg.connect(schema.conninfo, autocommit=True) as conn:
        migrate(conn, schema.schema, server.label)
    return server


@pytest.fixture(params=["local", "postgresql"])
def make_store(request: pytest.FixtureRequest) -> Iterator[Callable[[], BudgetStore]]:
    """Clients of one store: each call is another instance's client of the same rows."""
    if request.param == "local":
        shared = LocalBudgetStore()
        yield lambda: shared
        return
    server = _migrated(request.getfixturevalue("pg_schema"))
    stores: list[PostgresBudgetStore] = []

    def make() -> BudgetStore:
        stores.append(PostgresBudgetStore(server))
        return stores[-1]

    yield make
    for store in stores:
        store.close()


def _left(rows: Sequence[Row]) -> dict[str, int]:
    return {row.key: row.remaining for row in rows}


# --- the contract, on both stores -------------------------------------------------------------


def test_a_first_consume_seeds_each_key_from_its_configured_limit(
    make_store: Callable[[], BudgetStore],
) -> None:
    store = make_store()
    granted, rows = store.consume([TOKEN_WANT, ROOM_WANT], NOW)
    assert granted
    assert _left(rows) == {TOKEN_WANT.key: 4, ROOM_WANT.key: 2}
    resets = {row.key: row.resets_at for row in rows}
    assert resets == {TOKEN_WANT.key: NOW + 300, ROOM_WANT.key: NOW + 60}


def test_a_consume_takes_both_units_or_none(make_store: Callable[[], BudgetStore]) -> None:
    store = make_store()
    for _ in range(3):
        assert store.consume([TOKEN_WANT, ROOM_WANT], NOW)[0]
    granted, rows = store.consume([TOKEN_WANT, ROOM_WANT], NOW + 1)
    assert not granted
    # The room refused, so the token kept its unit.
    assert _left(rows) == {TOKEN_WANT.key: 2, ROOM_WANT.key: 0}
    # Another room still may; after the room's minute, the room may again.
    assert store.consume([TOKEN_WANT, Want("flood:x:dev", 3, 60.0)], NOW + 1)[0]
    granted, rows = store.consume([TOKEN_WANT, ROOM_WANT], NOW + 60)
    assert granted
    assert _left(rows) == {TOKEN_WANT.key: 0, ROOM_WANT.key: 2}


def test_an_answer_lowers_what_is_left_and_never_raises_it(
    make_store: Callable[[], BudgetStore],
) -> None:
    store = make_store()
    store.consume([TOKEN_WANT], NOW)  # 4 left
    # Late: HipChat counted only this one, and others consumed since.
    store.record([Report(TOKEN_WANT.key, 4, NOW + 300.4, 300.0)], NOW + 1)
    store.consume([TOKEN_WANT], NOW + 1)
    store.consume([TOKEN_WANT], NOW + 1)  # 2 left
    store.record([Report(TOKEN_WANT.key, 3, NOW + 300, 300.0)], NOW + 2)
    assert _left(store.consume([TOKEN_WANT], NOW + 2)[1]) == {TOKEN_WANT.key: 1}
    # Another client of the token spent more than we know: HipChat says so.
    store.record([Report(TOKEN_WANT.key, 0, NOW + 300, 300.0)], NOW + 3)
    granted, rows = store.consume([TOKEN_WANT], NOW + 3)
    assert not granted
    assert rows[0].resets_at == pytest.approx(NOW + 300)


def test_a_later_reset_is_a_new_window_and_an_earlier_one_is_hipchat_s_clock(
    make_store: Callable[[], BudgetStore],
) -> None:
    store = make_store()
    for _ in range(5):
        store.consume([TOKEN_WANT], NOW)
    # HipChat's window began before ours (another client): it ends earlier, and what
    # is left stays what we know.
    store.record([Report(TOKEN_WANT.key, 3, NOW + 100, 300.0)], NOW + 1)
    granted, rows = store.consume([TOKEN_WANT], NOW + 1)
    assert (granted, rows[0].resets_at) == (False, pytest.approx(NOW + 100))
    # A window that is over already says nothing.
    store.record([Report(TOKEN_WANT.key, 5, NOW + 0.5, 300.0)], NOW + 1)
    assert not store.consume([TOKEN_WANT], NOW + 1)[0]
    # A reset past the row's: HipChat opened a new window since; its count replaces ours.
    store.record([Report(TOKEN_WANT.key, 4, NOW + 390, 300.0)], NOW + 99)
    granted, rows = store.consume([TOKEN_WANT], NOW + 99)
    assert granted
    assert (rows[0].remaining, rows[0].resets_at) == (3, pytest.approx(NOW + 390))


def test_a_429_empties_the_row_until_its_reset_or_the_row_s(
    make_store: Callable[[], BudgetStore],
) -> None:
    store = make_store()
    store.consume([TOKEN_WANT, ROOM_WANT], NOW)
    store.record([Report(ROOM_WANT.key, 0, None, 60.0)], NOW + 1)  # no time named
    granted, rows = store.consume([TOKEN_WANT, ROOM_WANT], NOW + 2)
    assert not granted
    assert {r.key: r.resets_at for r in rows}[ROOM_WANT.key] == pytest.approx(NOW + 60)
    store.record([Report(TOKEN_WANT.key, 0, NOW + 200, 300.0)], NOW + 2)
    assert not store.consume([TOKEN_WANT, Want("flood:x:dev", 3, 60.0)], NOW + 150)[0]
    # A 429 of a key nobody has used yet: a whole window.
    store.record([Report("flood:x:new", 0, None, 60.0)], NOW + 2)
    assert not store.consume([Want("flood:x:new", 3, 60.0)], NOW + 61)[0]
    assert store.consume([Want("flood:x:new", 3, 60.0)], NOW + 62)[0]


def test_a_higher_limit_hipchat_reports_raises_the_row_up_to_what_it_says_is_left(
    make_store: Callable[[], BudgetStore],
) -> None:
    store = make_store()
    for _ in range(5):
        assert store.consume([TOKEN_WANT], NOW)[0]
    assert not store.consume([TOKEN_WANT], NOW + 1)[0]
    # HipChat's limit is 100, not the 5 the window started with: it counted the 5.
    store.record([Report(TOKEN_WANT.key, 95, NOW + 300, 300.0, raised=95)], NOW + 1)
    granted, rows = store.consume([TOKEN_WANT], NOW + 1)
    assert (granted, _left(rows)) == (True, {TOKEN_WANT.key: 94})
    # Another instance learns the same limit: never more than HipChat says is left.
    store.record([Report(TOKEN_WANT.key, 90, NOW + 300, 300.0, raised=95)], NOW + 2)
    assert _left(store.consume([TOKEN_WANT], NOW + 2)[1]) == {TOKEN_WANT.key: 89}


def test_a_fair_share_divides_the_limits_and_what_was_left() -> None:
    store = LocalBudgetStore(share=3, seen=[Row(TOKEN_WANT.key, 7, NOW + 10)])
    grants = sum(store.consume([TOKEN_WANT, ROOM_WANT], NOW)[0] for _ in range(5))
    # 7 // 3 left of the token's window; the room's 3 // 3 = 1 per minute.
    assert grants == 1
    assert sum(store.consume([TOKEN_WANT], NOW)[0] for _ in range(5)) == 1
    assert sum(store.consume([TOKEN_WANT], NOW + 10)[0] for _ in range(5)) == 1  # 5 // 3


# --- PostgreSQL -------------------------------------------------------------------------------


def _hammer(stores: Sequence[BudgetStore], threads_each: int, tries: int) -> int:
    granted = 0
    lock = threading.Lock()
    start = threading.Barrier(len(stores) * threads_each)

    def run(store: BudgetStore) -> None:
        nonlocal granted
        start.wait()
        for i in range(tries):
            room = Want(f"flood:x:room-{i % 4}", 1000, 60.0)
            if store.consume([Want(TOKEN_WANT.key, 50, 300.0), room], time.time())[0]:
                with lock:
                    granted += 1

    workers = [
        threading.Thread(target=run, args=(store,)) for store in stores for _ in range(threads_each)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return granted


@pytest.mark.parametrize("clients", [2, 3])
def test_clients_on_one_schema_never_consume_more_than_the_limit(
    pg_schema: PgSchema, clients: int
) -> None:
    server = _migrated(pg_schema)
    stores = [PostgresBudgetStore(server) for _ in range(clients)]
    try:
        granted = _hammer(stores, threads_each=3, tries=30)
    finally:
        for store in stores:
            store.close()
    assert granted == 50
    with psycopg.connect(pg_schema.conninfo) as conn:
        (left,) = conn.execute(
            "SELECT remaining FROM budgets WHERE key = %s", [TOKEN_WANT.key]
        ).fetchone() or (None,)
    assert left == 0


def test_the_token_is_never_stored_only_its_hash(pg_schema: PgSchema) -> None:
    server = _migrated(pg_schema)
    store = PostgresBudgetStore(server)
    budget = SharedBudget(store, token=TOKEN, rate_limit=10, flood_limit=5)

    async def main() -> None:
        await budget.acquire("ops")
        budget.release("ops", Outcome(OutcomeKind.SENT))

    try:
        trio.run(main)
    finally:
        store.close()
    with psycopg.connect(pg_schema.conninfo) as conn:
        keys = [key for (key,) in conn.execute("SELECT key FROM budgets ORDER BY key")]
    assert keys == sorted([token_key(TOKEN), f"flood:{token_key(TOKEN)[5:21]}:ops"])
    assert not any(TOKEN in key for key in keys)
    assert len(token_key(TOKEN)) == len("rate:") + 64


def _answered(budget: SharedBudget, key: str, outcome: Outcome) -> None:
    """One request to ``key`` granted and answered with ``outcome``, its answer in the store."""

    async def main() -> None:
        await budget.acquire(key)
        budget.release(key, outcome)
        # The answer reaches the store from a system task, soon.
        while budget._flushing:
            await trio.sleep(0.01)

    trio.run(main)


def test_a_429_at_one_instance_pauses_every_instance(pg_schema: PgSchema) -> None:
    server = _migrated(pg_schema)
    one, other = PostgresBudgetStore(server), PostgresBudgetStore(server)
    reset = time.time() + 120
    limited = Outcome(OutcomeKind.RATE_LIMITED, rate=RateInfo(limit=500, remaining=0, reset=reset))
    budget = SharedBudget(one, token=TOKEN, rate_limit=500, flood_limit=30)
    try:
        _answered(budget, "ops", limited)
        room = Want(f"flood:{token_key(TOKEN)[5:21]}:dev", 30, 60.0)
        granted, rows = other.consume([Want(token_key(TOKEN), 500, 300.0), room], time.time())
    finally:
        one.close()
        other.close()
    assert not granted
    assert max(row.resets_at for row in rows if row.remaining <= 0) == pytest.approx(reset)


def test_the_shared_rows_follow_the_limits_hipchat_reports(pg_schema: PgSchema) -> None:
    """Configured for 2 requests, told by HipChat it allows 100 (and 30 per room): the
    rows of the windows on now follow, so another instance is granted more than 2."""
    server = _migrated(pg_schema)
    one, other = PostgresBudgetStore(server), PostgresBudgetStore(server)
    now = time.time()
    answer = Outcome(
        OutcomeKind.SENT,
        rate=RateInfo(limit=100, remaining=99, reset=now + 300),
        flood=RateInfo(limit=30, remaining=29, reset=now + 60),
    )
    budget = SharedBudget(one, token=TOKEN, rate_limit=2, flood_limit=2)
    wants = [
        Want(token_key(TOKEN), 2, 300.0),
        Want(f"flood:{token_key(TOKEN)[5:21]}:ops", 2, 60.0),
    ]
    try:
        _answered(budget, "ops", answer)
        grants = [other.consume(wants, time.time()) for _ in range(10)]
    finally:
        one.close()
        other.close()
    assert all(granted for granted, _ in grants)
    assert _left(grants[-1][1]) == {wants[0].key: 89, wants[1].key: 19}


async def test_the_instances_are_counted_before_the_first_grant(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A storm's first requests draw on this instance's share of the burst, not a whole
    bucket: 48 // 4 // 3 = 4 at once, then one every 300 / 48 * 3 = 18.75 s."""
    budget = SharedBudget(_Unreachable(peers=3), token=TOKEN, rate_limit=48, flood_limit=300)
    start = trio.current_time()
    waited: list[float] = []
    for i in range(6):
        await budget.acquire(f"room-{i}")
        waited.append(trio.current_time() - start)
        budget.release(f"room-{i}", Outcome(OutcomeKind.SENT))
    assert waited[:4] == [0.0] * 4
    assert waited[4] == pytest.approx(18.75, abs=0.5)
    assert waited[5] == pytest.approx(37.5, abs=0.5)


class _Unreachable:
    """A store whose server went away after it counted ``peers`` instances."""

    def __init__(self, peers: int) -> None:
        self.down = False
        self._peers = peers
        self._rows = LocalBudgetStore()

    def consume(self, wants: Sequence[Want], now: float) -> tuple[bool, tuple[Row, ...]]:
        if self.down:
            raise BudgetStoreError("cannot consume the shared budget: connection refused")
        return self._rows.consume(wants, now)

    def record(self, reports: Sequence[Report], now: float) -> None:
        if self.down:
            raise BudgetStoreError("cannot record the shared budget: connection refused")

    def peers(self) -> int:
        return self._peers

    def close(self) -> None:
        pass


async def test_an_unreachable_store_leaves_this_instance_its_fair_share(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = _Unreachable(peers=3)
    budget = SharedBudget(store, token=TOKEN, rate_limit=30, flood_limit=300)
    granted = 0

    async def send(room: str) -> None:
        nonlocal granted
        await budget.acquire(room)
        granted += 1
        budget.release(room, Outcome(OutcomeKind.SENT))

    await send("ops")  # 29 left in the shared row
    store.down = True
    with capture_logs() as logs:
        with trio.move_on_after(250):
            for i in range(100):
                await send(f"room-{i}")
    # 29 // 3 of the window that was on; none more before it ends.
    assert granted == 1 + 9
    assert budget.local
    assert [e["share"] for e in logs if e["event"] == "budget.degraded"] == ["1/3"]
    store.down = False
    with capture_logs() as logs:
        await send("ops")
    assert not budget.local
    assert [e["event"] for e in logs if e["event"].startswith("budget.")] == ["budget.restored"]


async def test_the_store_is_reached_at_start_and_an_unreachable_one_only_logged(
    pg_schema: PgSchema,
) -> None:
    store = PostgresBudgetStore(_migrated(pg_schema))
    try:
        await connect_store(store)
        with psycopg.connect(pg_schema.conninfo) as conn:
            names = [
                name for (name,) in conn.execute("SELECT application_name FROM pg_stat_activity")
            ]
        assert f"hipchatd budget {pg_schema.schema}" in names
    finally:
        store.close()
    unreachable = _Unreachable(peers=1)
    unreachable.peers = _refuse  # type: ignore[method-assign]
    with capture_logs() as logs:
        await connect_store(unreachable)
        await connect_store(None)
    assert [e["event"] for e in logs] == ["budget.unreachable"]
    assert "connection refused" in logs[0]["error"]


def _refuse() -> int:
    raise BudgetStoreError("cannot count the instances of the shared budget: connection refused")


def test_sqlite_keeps_the_budget_in_the_process_and_a_store_shares_it() -> None:
    config = make_config("http://127.0.0.1:1", rate_limit=7)
    assert open_budget_store(config.daemon.spool) is None
    assert type(make_budget(config.hipchat, None)) is RateBudget
    shared = make_budget(config.hipchat, LocalBudgetStore())
    assert isinstance(shared, SharedBudget)


def test_peers_counts_the_instances_on_the_schema(pg_server: PostgresServer) -> None:
    with fresh_schema(pg_server) as schema:
        server = _migrated(schema)
        stores = [PostgresBudgetStore(server) for _ in range(3)]
        try:
            for store in stores:
                store.consume([TOKEN_WANT], time.time())
            assert [store.peers() for store in stores] == [3, 3, 3]
        finally:
            for store in stores:
                store.close()


# --- end to end -------------------------------------------------------------------------------


def _windows(times: Sequence[float], window: float) -> list[int]:
    """Requests per window of the emulator: a window opens at the first request after the last."""
    counts: list[int] = []
    ends = -1.0
    for at in sorted(times):
        if at >= ends:
            counts.append(0)
            ends = at + window
        counts[-1] += 1
    return counts


async def test_two_daemons_on_one_schema_share_hipchat_s_budget(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    pg_schema: PgSchema,
) -> None:
    """Two daemons, 40 rooms, an event per room every 5 s for 3 minutes; HipChat's limits."""
    rooms = [f"team-{r}" for r in range(40)]
    emulator = Emulator(
        tokens=[TOKEN], rooms=rooms, rate_limit=100, flood_limit=30, auto_create_rooms=False
    )
    await nursery.start(emulator.serve, "127.0.0.1", 0)
    spool = postgresql_settings(pg_schema)
    config = make_config(emulator.url, rate_limit=100, flood_limit=30, spool=spool)
    sent = 0
    with trio.fail_after(3600), capture_logs():
        apps = [await nursery.start(app_module.run, config) for _ in range(2)]
        assert all(isinstance(app.dispatcher.budget, SharedBudget) for app in apps)
        for wave in range(36):
            for r, room in enumerate(rooms):
                event = _event(f"check-{wave}-{r}", 2, room)
                await send_tcp(apps[(wave + r) % 2].tcp_addresses[0], event)
                sent += 1
            await trio.sleep(5)
        await wait_until(lambda: represented(emulator) >= sent, step=1.0)
        for app in apps:
            await wait_until(lambda app=app: app.spool.counts()["pending"] == 0)
    assert emulator.count_status(429) == 0
    assert represented(emulator) == sent == 1440
    per_window = _windows([r.time for r in emulator.requests], 300.0)
    assert all(count <= 100 for count in per_window)
    # The storm wanted more than a window allows: the first was spent whole, by both.
    assert per_window[0] == 100
    sent_by = [app.metrics.value("hipchatd_notifications_total", api_version="v2") for app in apps]
    assert sum(sent_by) == len(emulator.requests)
    assert min(sent_by) >= 30


def _event(check: str, status: int, room: str) -> bytes:
    event = classic_event(
        name=check, status=status, output=f"{check} output", hipchat={"room": room}
    )
    event["id"] = f"web-1-{check}-{status}"
    return json.dumps(event).encode()
