"""The dispatcher's lanes: reaped when idle, expiry on its own timer, a fault boundary per attempt.

Narrow tests of :class:`hipchatd.delivery.lanes.Dispatcher` on trio's mock clock,
with a recording spool and a scripted client in place of SQLite and HipChat;
and one child-process test that measures the daemon's peak RSS for 20,000
distinct rooms against the real emulator.
"""

from __future__ import annotations

import json
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trio.testing

from hipchatd.clock import unix_now
from hipchatd.delivery import lanes
from hipchatd.delivery.budget import RateBudget
from hipchatd.delivery.hipchat import Outcome, OutcomeKind
from hipchatd.delivery.lanes import LANE_IDLE, STUCK_SLACK, Dispatcher, Ticket
from hipchatd.delivery.render import Message
from hipchatd.delivery.routing import Target
from hipchatd.delivery.spool import Entry, SpoolReadError
from hipchatd.emulator import Emulator
from hipchatd.metrics import Metrics
from hipchatd.sensu.events import Event
from tests.conftest import classic_event, send_tcp, wait_until
from tests.factories import make_event, make_settings, make_target
from tests.logcapture import capture_logs
from tests.processes import STARTUP, Child

SENT = Outcome(OutcomeKind.SENT, status=204)
#: Limits HipChat reports as "off": the budget's fast path, so only the lanes are measured.
NO_LIMIT = 1_000_000


class RecordingSpool:
    """The spool calls a lane makes, with the trio time of each."""

    def __init__(self) -> None:
        self.delivered: list[tuple[int, float]] = []
        self.dead: list[tuple[int, str, float]] = []
        self.attempts: list[int] = []
        #: set to make reading back a spilled document hang.
        self.hang_reads = False
        #: reads of spilled documents that fail (SpoolReadError) before they work again.
        self.failing_reads = 0

    def mark_delivered(self, ids: Iterable[int]) -> None:
        now = trio.current_time()
        self.delivered.extend((i, now) for i in ids)

    def mark_dead(self, ids: Iterable[int], reason: str, error: str | None) -> None:
        now = trio.current_time()
        self.dead.extend((i, reason, now) for i in ids)

    def mark_attempt(self, ids: Iterable[int], error: str) -> None:
        self.attempts.extend(ids)

    async def load_documents(self, ids: Sequence[int]) -> dict[int, str]:
        if self.hang_reads:
            await trio.sleep_forever()
        if self.failing_reads:
            self.failing_reads -= 1
            raise SpoolReadError("cannot read event documents from the spool: disk I/O error")
        return {i: json.dumps(classic_event()) for i in ids}


Script = Callable[[Target, Message], Awaitable[Outcome]]


class ScriptedClient:
    """A HipChat client whose answers a test scripts; records what was sent and when."""

    def __init__(self, script: Script | None = None) -> None:
        self.sent: list[tuple[str, str, float]] = []
        self.script = script

    async def send(self, target: Target, message: Message) -> Outcome:
        await trio.lowlevel.checkpoint()
        self.sent.append((target.name, message.text, trio.current_time()))
        if self.script is not None:
            return await self.script(target, message)
        return SENT


class BlockedBudget(RateBudget):
    """A budget whose ``acquire`` waits until ``opened`` is set; counts grants settled."""

    def __init__(self) -> None:
        super().__init__(rate_limit=NO_LIMIT, flood_limit=NO_LIMIT)
        self.opened = trio.Event()
        self.granted = 0
        self.settled = 0

    async def acquire(self, key: str) -> None:
        await self.opened.wait()
        await super().acquire(key)
        self.granted += 1

    def release(self, key: str, outcome: Outcome) -> None:
        self.settled += 1
        super().release(key, outcome)

    def abandon(self, key: str) -> None:
        self.settled += 1
        super().abandon(key)


class Harness:
    """A running Dispatcher and the fakes around it."""

    def __init__(
        self,
        *,
        client: ScriptedClient | None = None,
        budget: RateBudget | None = None,
        max_age: float = 3600.0,
        memory_events: int = 100_000,
    ) -> None:
        self.spool = RecordingSpool()
        self.client = client or ScriptedClient()
        self.budget = budget or RateBudget(rate_limit=NO_LIMIT, flood_limit=NO_LIMIT)
        self.metrics = Metrics()
        self.settings = make_settings(timeout=10.0)
        self.dispatcher = Dispatcher(
            lambda: self.settings,
            lambda: self.client,  # type: ignore[arg-type,return-value]
            self.spool,  # type: ignore[arg-type]
            self.budget,
            self.metrics,
            concurrency=4,
            max_age=max_age,
            memory_events=memory_events,
            rng=random.Random(8),
        )
        self._ids = 0

    def enqueue(self, room: str, check: str = "disk") -> int:
        """One accepted event for ``room``, accepted now; returns its spool id."""
        self._ids += 1
        now = unix_now()
        target = make_target(name=room)
        entry = Entry(self._ids, now, "", "web-01", check, target, 0, None)
        ticket = Ticket(f"ev-{self._ids}", "web-01", check, now, 1)
        event: Event = make_event(id=f"ev-{self._ids}", check=check)
        self.dispatcher.enqueue([(entry, ticket, event)])
        return self._ids

    @property
    def lanes(self) -> int:
        return len(self.dispatcher._lanes)

    @property
    def lane_tasks(self) -> int:
        nursery = self.dispatcher._nursery
        assert nursery is not None
        return len(nursery.child_tasks)

    def internal_errors(self) -> float:
        return self.metrics.value("hipchatd_internal_errors_total", where="lane")


@pytest.fixture
def quick_clock() -> trio.testing.MockClock:
    """trio's mock clock, jumping as soon as every task waits (no spool thread here)."""
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
async def start(nursery: trio.Nursery) -> Callable[..., Awaitable[Harness]]:
    async def start(**kwargs: Any) -> Harness:
        harness = Harness(**kwargs)
        await nursery.start(harness.dispatcher.run)
        return harness

    return start


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await trio.sleep(0.1)


# --- lanes reaped when idle ---


async def test_twenty_thousand_rooms_leave_no_lane_and_no_task(
    start: Callable[..., Awaitable[Harness]], quick_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600):
        h = await start()
        for i in range(20_000):
            h.enqueue(f"room-{i}")
        await _until(lambda: len(h.spool.delivered) == 20_000)
        assert h.lanes > 0  # delivered, not yet idle for LANE_IDLE
        await trio.sleep(LANE_IDLE + 1)
        assert h.lanes == 0
        assert h.lane_tasks == 0
        # A room seen before gets a fresh lane and is delivered as usual.
        h.enqueue("room-7")
        await _until(lambda: len(h.spool.delivered) == 20_001)
        assert h.lanes == 1
    assert [name for name, _, _ in h.client.sent].count("room-7") == 2


async def test_the_rate_budget_sweeps_the_families_of_twenty_thousand_rooms(
    quick_clock: trio.testing.MockClock,
) -> None:
    """What the lanes leave behind in the budget: idle families go at the next sweep."""
    budget = RateBudget(rate_limit=NO_LIMIT, flood_limit=30)
    for i in range(20_000):
        key = f"room-{i}"
        await budget.acquire(key)
        budget.release(key, SENT)
    assert budget.snapshot()["keys"] == 20_000
    # Each family holds its flood window (60 s) open; after that they are idle.
    await trio.sleep(61)
    # New rooms keep coming, 100 a second: every sweep drops the idle families.
    for i in range(20_000, 20_000 + 20_000):
        key = f"room-{i}"
        await budget.acquire(key)
        budget.release(key, SENT)
        if i % 100 == 99:
            await trio.sleep(1)
    # Not every family ever seen: those of the last flood window, at most twice over.
    keys = budget.snapshot()["keys"]
    assert isinstance(keys, int)
    assert keys <= 2 * 6_100 + 64


@pytest.mark.parametrize("when", ["before_reap", "after_reap"])
async def test_an_entry_enqueued_as_its_lane_is_reaped_is_delivered_in_order(
    start: Callable[..., Awaitable[Harness]], mock_clock: trio.testing.MockClock, when: str
) -> None:
    """Enqueue at the instant the idle interval ends: before the lane looked, or just after.

    The clock moves only when the test jumps it, so both orders are exact.
    """
    h = await start()
    first = h.enqueue("ops", check="first")
    await trio.testing.wait_all_tasks_blocked()
    assert [i for i, _ in h.spool.delivered] == [first]
    lane = h.dispatcher._lanes[make_target(name="ops")]
    # The lane waits out LANE_IDLE; jump to exactly its end.
    mock_clock.jump(LANE_IDLE)
    if when == "after_reap":
        await trio.testing.wait_all_tasks_blocked()
        assert h.lanes == 0
        assert h.lane_tasks == 0
    second = h.enqueue("ops", check="second")
    third = h.enqueue("ops", check="third")
    await trio.testing.wait_all_tasks_blocked()
    assert [i for i, _ in h.spool.delivered] == [first, second, third]
    sent = [message for _, message, _ in h.client.sent]
    assert "first" in sent[0]
    assert sent[1].index("second") < sent[1].index("third")
    assert h.lanes == 1
    assert h.lane_tasks == 1
    if when == "before_reap":
        # The entries found the lane alive: the same lane, not a second one.
        assert h.dispatcher._lanes[make_target(name="ops")] is lane
    # And the lane that took them is reaped in its turn.
    mock_clock.jump(LANE_IDLE)
    await trio.testing.wait_all_tasks_blocked()
    assert h.lanes == 0
    assert h.lane_tasks == 0


async def test_a_lane_keeps_its_retry_while_a_retry_is_due(
    start: Callable[..., Awaitable[Harness]], quick_clock: trio.testing.MockClock
) -> None:
    """A lane whose entries expired but whose retry is still due is not dropped before it."""

    async def unavailable(target: Target, message: Message) -> Outcome:
        return Outcome(OutcomeKind.SERVER_ERROR, status=503, retry_at=unix_now() + 600)

    client = ScriptedClient(unavailable)
    with trio.fail_after(3600):
        h = await start(client=client, max_age=60.0)
        h.enqueue("ops")
        await _until(lambda: len(h.spool.dead) == 1)
        assert h.lanes == 1
        await trio.sleep_until(580)
        assert h.lanes == 1  # the retry (at 600 s) is still due: HipChat asked for it
        client.script = None
        h.enqueue("ops", check="after")
        await _until(lambda: len(h.spool.delivered) == 1)
        # Sent at the retry time HipChat named, not at once.
        assert client.sent[-1][2] >= 600
        await trio.sleep(LANE_IDLE + 1)
        assert h.lanes == 0


# --- expiry on its own timer ---


async def test_max_age_fires_while_the_retry_is_ten_hours_away(
    start: Callable[..., Awaitable[Harness]], quick_clock: trio.testing.MockClock
) -> None:
    ten_hours = 36_000.0

    async def come_back_later(target: Target, message: Message) -> Outcome:
        return Outcome(OutcomeKind.SERVER_ERROR, status=503, retry_at=unix_now() + ten_hours)

    client = ScriptedClient(come_back_later)
    with trio.fail_after(2 * ten_hours), capture_logs() as logs:
        h = await start(client=client, max_age=300.0)
        t0 = trio.current_time()
        stale = h.enqueue("ops", check="stale")
        await _until(lambda: len(h.spool.dead) == 1)
        [(dead_id, reason, dead_at)] = h.spool.dead
        assert (dead_id, reason) == (stale, "expired")
        assert t0 + 300 <= dead_at <= t0 + 301
        # A later entry waits for the same retry and goes out when it is due.
        client.script = None
        await trio.sleep_until(t0 + ten_hours - 100)
        fresh = h.enqueue("ops", check="fresh")
        await _until(lambda: len(h.spool.delivered) == 1)
    [(delivered_id, delivered_at)] = h.spool.delivered
    assert delivered_id == fresh
    assert t0 + ten_hours <= delivered_at <= t0 + ten_hours + 1
    [expired] = [e for e in logs if e["event"] == "delivery.dead_lettered"]
    assert expired["reason"] == "expired"
    assert expired["log_level"] == "error"
    assert expired["max_age"] == 300.0
    # Expiry runs between attempts: the failed attempt's event_id is not left bound.
    assert expired["event_ids"] == [f"ev-{stale}"]
    assert "event_id" not in expired
    failed = [e for e in logs if e["event"] == "delivery.failed"]
    assert failed
    assert failed[0]["event_id"] == f"ev-{stale}"


async def test_max_age_fires_while_the_budget_never_grants(
    start: Callable[..., Awaitable[Harness]], quick_clock: trio.testing.MockClock
) -> None:
    budget = BlockedBudget()
    with trio.fail_after(3600):
        h = await start(budget=budget, max_age=300.0)
        t0 = trio.current_time()
        stale = h.enqueue("ops", check="stale")
        await trio.sleep(200)
        younger = h.enqueue("ops", check="younger")
        await _until(lambda: len(h.spool.dead) == 1)
        [(dead_id, _, dead_at)] = h.spool.dead
        assert dead_id == stale
        assert t0 + 300 <= dead_at <= t0 + 301
        await _until(lambda: len(h.spool.dead) == 2)
        assert h.spool.dead[1][0] == younger
        assert t0 + 500 <= h.spool.dead[1][2] <= t0 + 501
        later = h.enqueue("ops", check="later")
        await trio.sleep(100)
        budget.opened.set()
        await _until(lambda: len(h.spool.delivered) == 1)
    assert h.spool.delivered[0][0] == later
    assert h.client.sent[0][2] <= t0 + 601 + 1
    # Every grant was settled once, and none was given while cancelled.
    assert budget.granted == budget.settled == 1
    assert budget.snapshot()["rate_in_flight"] == 0


async def test_a_reload_that_lowers_max_age_reaches_a_waiting_lane(
    start: Callable[..., Awaitable[Harness]], quick_clock: trio.testing.MockClock
) -> None:
    async def come_back_later(target: Target, message: Message) -> Outcome:
        return Outcome(OutcomeKind.SERVER_ERROR, status=503, retry_at=unix_now() + 36_000)

    with trio.fail_after(3600):
        h = await start(client=ScriptedClient(come_back_later), max_age=3600.0)
        t0 = trio.current_time()
        h.enqueue("ops", check="first")
        h.enqueue("dev", check="second")
        await trio.sleep(100)
        h.dispatcher.reconfigure(max_age=300.0)
        await _until(lambda: len(h.spool.dead) == 2)
        assert all(t0 + 300 <= at <= t0 + 301 for _, _, at in h.spool.dead)
        # Lowered below an entry's age: it goes at once.
        h.enqueue("ops", check="third")
        await trio.sleep(200)
        h.dispatcher.reconfigure(max_age=60.0)
        await _until(lambda: len(h.spool.dead) == 3)
        assert h.spool.dead[2][2] <= t0 + 500 + 1


async def test_healthz_reports_a_lane_that_no_longer_keeps_time(
    start: Callable[..., Awaitable[Harness]], quick_clock: trio.testing.MockClock
) -> None:
    """A lane stuck outside its timers (here: a spool read that never returns) fails /healthz."""
    with trio.fail_after(3600):
        h = await start(max_age=300.0, memory_events=0)
        h.spool.hang_reads = True
        t0 = trio.current_time()
        h.enqueue("ops")
        bound = 300.0 + h.settings.timeout + STUCK_SLACK
        await trio.sleep_until(t0 + bound - 1)
        assert h.dispatcher.stuck() is None
        await trio.sleep_until(t0 + bound + 1)
        reason = h.dispatcher.stuck()
    assert reason is not None
    assert "delivery stuck" in reason
    assert "ops" in reason


async def test_healthz_is_green_while_hipchat_is_down(
    start: Callable[..., Awaitable[Harness]], quick_clock: trio.testing.MockClock
) -> None:
    """An unreachable HipChat is not a stuck daemon: entries expire on time, /healthz stays 200."""

    async def down(target: Target, message: Message) -> Outcome:
        return Outcome(OutcomeKind.TRANSPORT_ERROR, error="connection refused")

    with trio.fail_after(7200):
        h = await start(client=ScriptedClient(down), max_age=300.0)
        for minute in range(60):
            h.enqueue("ops", check=f"check-{minute}")
            await trio.sleep(60)
            assert h.dispatcher.stuck() is None
    assert len(h.spool.dead) >= 50


# --- the fault boundary of one attempt ---


async def test_an_exception_in_send_is_caught_counted_and_retried(
    start: Callable[..., Awaitable[Harness]], quick_clock: trio.testing.MockClock
) -> None:
    calls = 0

    async def broken_once(target: Target, message: Message) -> Outcome:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the client")
        return SENT

    with trio.fail_after(600), capture_logs() as logs:
        h = await start(client=ScriptedClient(broken_once))
        entry = h.enqueue("ops")
        h.enqueue("dev")  # another lane, unaffected
        await _until(lambda: len(h.spool.delivered) == 2)
    assert sorted(i for i, _ in h.spool.delivered) == [entry, entry + 1]
    assert h.internal_errors() == 1.0
    [caught] = [e for e in logs if e["event"] == "internal_error.caught"]
    assert caught["where"] == "lane"
    assert caught["room"] in {"ops", "dev"}
    # The bug was in an attempt: its line names the event being sent.
    assert caught["event_id"] == {"ops": f"ev-{entry}", "dev": f"ev-{entry + 1}"}[caught["room"]]
    assert caught["log_level"] == "error"
    assert caught["exc_info"] is True
    # The grant was given back, and the lane did not die.
    assert h.budget.snapshot()["rate_in_flight"] == 0
    assert h.lane_tasks == 2


async def test_an_exception_before_sending_gives_the_grant_back(
    start: Callable[..., Awaitable[Harness]],
    quick_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0

    class RenderOnceBroken(lanes.FirstMessage):
        def message(self) -> Message:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ValueError("a bug in rendering")
            return super().message()

    monkeypatch.setattr(lanes, "FirstMessage", RenderOnceBroken)
    budget = BlockedBudget()
    budget.opened.set()
    with trio.fail_after(600), capture_logs() as logs:
        h = await start(budget=budget)
        entry = h.enqueue("ops")
        await _until(lambda: len(h.spool.delivered) == 1)
    assert h.spool.delivered[0][0] == entry
    assert h.internal_errors() == 1.0
    assert len(h.client.sent) == 1
    assert budget.granted == budget.settled == 2
    assert budget.snapshot()["rate_in_flight"] == 0
    assert [e["event"] for e in logs].count("internal_error.caught") == 1


async def test_a_lane_that_keeps_failing_backs_off_and_the_others_go_on(
    start: Callable[..., Awaitable[Harness]], quick_clock: trio.testing.MockClock
) -> None:
    async def ops_is_broken(target: Target, message: Message) -> Outcome:
        if target.name == "ops":
            raise KeyError("a bug only this room's messages hit")
        return SENT

    with trio.fail_after(600), capture_logs():
        h = await start(client=ScriptedClient(ops_is_broken))
        h.enqueue("ops")
        await trio.sleep(300)
        h.enqueue("dev")
        await _until(lambda: len(h.spool.delivered) == 1)
    errors = h.internal_errors()
    # Backed off (1 s doubling to 60 s), not a tight loop of tracebacks.
    assert 3 <= errors <= 20
    assert len([n for n, _, _ in h.client.sent if n == "ops"]) == errors


async def test_a_spool_that_cannot_be_read_back_is_retried_later(
    start: Callable[..., Awaitable[Harness]], quick_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600), capture_logs() as logs:
        # No event kept in memory: every delivery reads its document back from the spool.
        h = await start(memory_events=0)
        h.spool.failing_reads = 2
        entry = h.enqueue("ops")
        await _until(lambda: len(h.spool.delivered) == 1)
    assert [i for i, _ in h.spool.delivered] == [entry]
    failed = [e for e in logs if e["event"] == "spool.read_failed"]
    assert len(failed) == 2
    assert failed[0]["room"] == "ops"
    assert failed[0]["log_level"] == "error"
    assert "disk I/O error" in failed[0]["error"]
    assert failed[1]["retry_in"] > failed[0]["retry_in"] > 0
    # An expected failure at the edge, not a bug: no internal error, nothing dead-lettered.
    assert h.internal_errors() == 0.0
    assert h.spool.dead == []


# --- what each line names ---


async def test_an_attempts_lines_carry_its_event_id_and_nothing_of_the_enqueuer(
    start: Callable[..., Awaitable[Harness]], quick_clock: trio.testing.MockClock
) -> None:
    """Bound per attempt, the client's lines too; a lane starts in no connection's context."""
    answers = [Outcome(OutcomeKind.SERVER_ERROR, status=503), SENT, SENT]

    async def answer_in_turn(target: Target, message: Message) -> Outcome:
        # What hipchat.py logs while sending (a protocol warning, say) gets the id too.
        structlog.get_logger().warning("client.line")
        return answers.pop(0)

    with trio.fail_after(600), capture_logs() as logs:
        h = await start(client=ScriptedClient(answer_in_turn))
        # Enqueued from a task with a connection's context: the lane must not inherit it.
        with structlog.contextvars.bound_contextvars(
            peer="192.0.2.1:5000", conn_id=7, event_id="stale"
        ):
            first = h.enqueue("ops")
        await _until(lambda: len(h.spool.delivered) == 1)
        second = h.enqueue("ops", check="later")
        await _until(lambda: len(h.spool.delivered) == 2)
    client_lines = [e for e in logs if e["event"] == "client.line"]
    assert [e["event_id"] for e in client_lines] == [f"ev-{first}", f"ev-{first}", f"ev-{second}"]
    [failed] = [e for e in logs if e["event"] == "delivery.failed"]
    assert failed["event_id"] == f"ev-{first}"
    delivered = [e for e in logs if e["event"] == "event.delivered"]
    assert [e["event_id"] for e in delivered] == [f"ev-{first}", f"ev-{second}"]
    assert not [e for e in logs if "peer" in e or "conn_id" in e]


# --- the daemon's memory for rooms named once ---

#: Distinct rooms the daemon delivers to in the memory test, in waves of WAVE.
ROOMS = 20_000
#: Events a second at most, in batches of BATCH, and never more than AHEAD batches
#: beyond what was delivered: lanes stay for idleness, not for a backlog, on a fast
#: machine as on a loaded one (where the daemon delivers to new rooms more slowly).
RATE = 500
BATCH = 150
AHEAD = 2
#: Peak RSS growth allowed for them (MB). Lanes kept for good cost about 5 KB each,
#: 20,000 of them about 100 MB; lanes of the last LANE_IDLE seconds stay far below.
GROWTH_BOUND_MB = 50


def test_peak_rss_for_twenty_thousand_rooms_named_once(tmp_path: Path) -> None:
    def delivered(line: str) -> bool:
        return '"event":"event.delivered"' in line

    token = "lanes-token-5e6f7a8b"
    children: list[Child] = []
    try:
        emulator = Child(
            "emulator",
            "--port",
            "0",
            "--token",
            token,
            "--auto-create-rooms",
            "--rate-limit",
            str(NO_LIMIT),
            "--flood-limit",
            str(NO_LIMIT),
        )
        children.append(emulator)
        line = emulator.wait_line(lambda text: "emulator listening on" in text)
        url = line.split("listening on ", 1)[1].split(";", 1)[0].strip()
        config = {
            "hipchat": {
                "api_token": token,
                "server_url": url,
                "room": "sensu",
                "rate_limit": NO_LIMIT,
                "flood_limit": NO_LIMIT,
            },
            "hipchatd": {
                "tcp": {"host": "127.0.0.1", "port": 0},
                "udp": None,
                "state_dir": str(tmp_path),
            },
        }
        path = tmp_path / "hipchatd.json"
        path.write_text(json.dumps(config))
        daemon = Child("serve", "--config", str(path))
        children.append(daemon)
        started = daemon.wait_logged("daemon.started")
        host, port = started["tcp"][0].rsplit(":", 1)
        baseline = daemon.memory()["peak_mb"]
        # As a steady stream of rooms named once arrives (Sensu writes one event
        # per connection; here a batch per connection, to spare the test's CPU).
        for start in range(0, ROOMS, BATCH):
            next_batch = time.monotonic() + BATCH / RATE
            events = []
            for i in range(start, start + BATCH):
                event = classic_event(name="disk", hipchat={"room": f"room-{i}"})
                event["id"] = f"ev-{i}"
                events.append(json.dumps(event))
            with socket.create_connection((host, int(port)), timeout=30) as sock:
                sock.sendall("\n".join(events).encode())
            daemon.wait_lines(delivered, start + BATCH - AHEAD * BATCH, timeout=STARTUP * 4)
            time.sleep(max(0.0, next_batch - time.monotonic()))
        daemon.wait_lines(delivered, ROOMS, timeout=STARTUP * 4)
        peak = daemon.memory()["peak_mb"]
        assert daemon.popen.poll() is None
        print(f"peak RSS {baseline:.1f} MB at start, {peak:.1f} MB after {ROOMS} rooms")
        assert peak - baseline < GROWTH_BOUND_MB, (baseline, peak)
    finally:
        for child in children:
            child.close()


async def test_healthz_of_the_daemon_says_when_delivery_is_stuck(
    start_daemon: Callable[..., Awaitable[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await start_daemon()
    assert app.health() == (True, "ok")
    reason = "delivery stuck: an entry for ops has been pending 3700 s (max_age 3600 s)"
    monkeypatch.setattr(app.dispatcher, "stuck", lambda: reason)
    assert app.health() == (False, reason)


async def test_a_rate_limited_room_dead_letters_at_max_age_not_when_the_window_ends(
    start_daemon: Callable[..., Awaitable[Any]],
    emulator: Emulator,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The real daemon and emulator: a token out of budget for its 5-minute window."""
    emulator.set_limits(rate_limit=0)
    with trio.fail_after(900), capture_logs() as logs:
        app = await start_daemon(max_age=100.0)
        t0 = trio.current_time()
        await send_tcp(app.tcp_addresses[0], json.dumps(_room_event("stale", "ops")).encode())
        await wait_until(lambda: app.spool.counts()["dead"] == 1, step=0.5)
        dead_at = trio.current_time()
        assert t0 + 100 <= dead_at <= t0 + 102
        assert emulator.messages == []
        # The window ends at t0 + 300: an event sent meanwhile goes out then.
        emulator.set_limits(rate_limit=100)
        await trio.sleep_until(t0 + 250)
        await send_tcp(app.tcp_addresses[0], json.dumps(_room_event("fresh", "ops")).encode())
        await emulator.wait_for_messages(1)
        delivered_at = trio.current_time()
        await wait_until(lambda: app.spool.counts()["pending"] == 0)
    assert t0 + 299 <= delivered_at <= t0 + 303
    assert "fresh" in emulator.messages[0].message
    assert emulator.count_status(429) >= 1
    [expired] = [e for e in logs if e["event"] == "delivery.dead_lettered"]
    assert expired["reason"] == "expired"
    assert app.spool.counts() == {"pending": 0, "dead": 1}


def _room_event(check: str, room: str) -> dict[str, Any]:
    event = classic_event(name=check, output=f"{check} output", hipchat={"room": room})
    event["id"] = f"web-1-{check}"
    return event
