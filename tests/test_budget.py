"""budget.RateBudget: pacing, hard limits from headers, 429 correction, fairness, cancellation.

Unit tests run on trio's autojump clock with hand-made outcomes; two tests
drive real requests through the emulator with its limits on.
"""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from hipchatd.clock import unix_now
from hipchatd.config import HipChatSettings, Secret
from hipchatd.delivery import budget as budget_module
from hipchatd.delivery.budget import RESET_MARGIN, RateBudget
from hipchatd.delivery.hipchat import (
    MAX_SERVER_WAIT,
    HipChatClient,
    Outcome,
    OutcomeKind,
    RateInfo,
    make_http_client,
)
from hipchatd.delivery.render import Message
from hipchatd.delivery.routing import Target
from hipchatd.emulator import Emulator

#: Absolute ceiling on the trio clock for one test.
CEILING = 4 * 3600
TOKEN = "budget-test-token-0123456789"
#: Limits that never bind.
HUGE = 1_000_000

SENT = Outcome(OutcomeKind.SENT, status=204)
Clock = trio.testing.MockClock


def sent(rate: RateInfo | None = None, flood: RateInfo | None = None) -> Outcome:
    return Outcome(OutcomeKind.SENT, status=204, rate=rate, flood=flood)


def info(limit: int, remaining: int, reset_in: float) -> RateInfo:
    """A header family as HipChat reports it, with the reset ``reset_in`` s from now."""
    return RateInfo(limit=limit, remaining=remaining, reset=unix_now() + reset_in)


async def send_all(budget: RateBudget, keys: list[str], outcome: Outcome = SENT) -> list[float]:
    """Acquire and release for each key in turn; the trio times of the grants."""
    times = []
    for key in keys:
        await budget.acquire(key)
        times.append(trio.current_time())
        budget.release(key, outcome)
    return times


async def granted_within(budget: RateBudget, key: str, seconds: float = 0.001) -> bool:
    """Whether ``acquire(key)`` returns within ``seconds`` (by default: without waiting)."""
    with trio.move_on_after(seconds):
        await budget.acquire(key)
        return True
    return False


# --- pacing --------------------------------------------------------------------------------


async def test_token_burst_then_paced_at_limit_per_window(autojump_clock: Clock) -> None:
    budget = RateBudget(rate_limit=100, rate_window=300, flood_limit=HUGE)
    with trio.fail_after(CEILING):
        times = await send_all(budget, [f"room-{i % 20}" for i in range(40)])
    # A quarter of the window's budget at once: the first message to 25 rooms...
    assert times[:25] == [0.0] * 25
    # ...then one request per 300/100 s.
    assert times[25:] == pytest.approx([3.0 * k for k in range(1, 16)])


async def test_one_of_three_instances_paces_a_third_of_the_token_budget(
    autojump_clock: Clock,
) -> None:
    budget = RateBudget(rate_limit=100, rate_window=300, flood_limit=HUGE)
    budget.share_pacing(3)
    with trio.fail_after(CEILING):
        times = await send_all(budget, [f"room-{i % 20}" for i in range(14)])
    # A third of the quarter-window burst (100 // 4 // 3 = 8) at once...
    assert times[:8] == [0.0] * 8
    # ...then one request per 3 x 300/100 s: three such instances pace as one would.
    assert times[8:] == pytest.approx([9.0 * k for k in range(1, 7)])


async def test_room_burst_then_paced_at_flood_limit(autojump_clock: Clock) -> None:
    budget = RateBudget(rate_limit=HUGE, flood_limit=30, flood_window=60)
    with trio.fail_after(CEILING):
        times = await send_all(budget, ["ops"] * 12)
    assert times[:7] == [0.0] * 7  # 30 // 4
    assert times[7:] == pytest.approx([2.0, 4.0, 6.0, 8.0, 10.0])


async def test_no_wait_at_all_when_limits_are_huge(
    autojump_clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_waiting(*args: object) -> None:
        raise AssertionError("acquire left its fast path")

    budget = RateBudget(rate_limit=HUGE, flood_limit=HUGE)
    monkeypatch.setattr(budget_module, "_Waiter", no_waiting)
    headers = sent(info(HUGE, HUGE - 1, 300), info(HUGE, HUGE - 1, 60))

    async def lane(key: str) -> None:
        for _ in range(500):
            await budget.acquire(key)
            await trio.lowlevel.checkpoint()
            budget.release(key, headers)

    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(lane, f"room-{i}")
    assert trio.current_time() == 0.0


async def test_a_reported_huge_limit_lifts_the_conservative_defaults(autojump_clock: Clock) -> None:
    budget = RateBudget()  # 100 per 300 s until told otherwise
    with trio.fail_after(CEILING):
        await budget.acquire("ops")
        budget.release("ops", sent(info(HUGE, HUGE - 1, 300), info(HUGE, HUGE - 1, 60)))
        await send_all(budget, [f"room-{i % 50}" for i in range(5000)])
    assert trio.current_time() == 0.0
    assert budget.snapshot()["rate_limit"] == HUGE


# --- the hard limit ------------------------------------------------------------------------


async def test_before_headers_the_configured_limit_holds_over_a_window_from_the_first_request(
    autojump_clock: Clock,
) -> None:
    budget = RateBudget(rate_limit=8, rate_window=80, flood_limit=HUGE)
    with trio.fail_after(CEILING):
        times = await send_all(budget, ["ops"] * 9)
    # Burst of 2, one per 10 s, and the 9th waits for the window to end.
    assert times == pytest.approx([0, 0, 10, 20, 30, 40, 50, 60, 80 + RESET_MARGIN])


async def test_remaining_zero_blocks_until_the_reset(autojump_clock: Clock) -> None:
    budget = RateBudget(rate_limit=500)
    with trio.fail_after(CEILING):
        await budget.acquire("ops")
        budget.release("ops", sent(rate=info(500, 0, 42)))
        assert budget.wait_hint("dev") == pytest.approx(42 + RESET_MARGIN)
        await budget.acquire("dev")
    assert trio.current_time() == pytest.approx(42 + RESET_MARGIN)
    assert budget.snapshot()["rate_remaining"] == 499


async def test_float_reset_headers(autojump_clock: Clock) -> None:
    budget = RateBudget()
    with trio.fail_after(CEILING):
        await budget.acquire("ops")
        budget.release("ops", sent(flood=info(30, 0, 12.345)))
        await budget.acquire("ops")
    assert trio.current_time() == pytest.approx(12.345 + RESET_MARGIN)


async def test_remaining_counts_other_requests_in_flight(autojump_clock: Clock) -> None:
    budget = RateBudget(rate_limit=400, flood_limit=HUGE)  # pacing allows 100 at once
    with trio.fail_after(CEILING):
        for i in range(5):
            await budget.acquire(f"r{i}")
        # HipChat counted this one and one other: 8 left, of which 4 are ours in flight.
        budget.release("r0", sent(rate=info(400, 8, 300)))
        for i in range(4):
            assert await granted_within(budget, f"s{i}")
        assert not await granted_within(budget, "x", 1)
        # r1 was the "one other": now it is counted and no longer in flight, so
        # exactly one more may go. Its older count must not make it two.
        budget.release("r1", sent(rate=info(400, 9, 300)))
        assert await granted_within(budget, "x")
        assert not await granted_within(budget, "y", 1)


async def test_a_later_reset_opens_a_new_window(autojump_clock: Clock) -> None:
    budget = RateBudget(rate_limit=10, flood_limit=HUGE)
    with trio.fail_after(CEILING):
        for key in ("a", "b", "d"):
            await budget.acquire(key)
        budget.release("a", sent(rate=info(10, 0, 100)))
        assert not await granted_within(budget, "c", 50)
        # b was counted after HipChat opened its next window (it ends at 400).
        budget.release("b", sent(rate=info(10, 9, 350)))
        assert await granted_within(budget, "c")
        assert budget.snapshot()["rate_remaining"] == 7  # 1 counted, c and d in flight
        # A late answer counted in the old window (it ends at 100) changes nothing.
        budget.release("d", sent(rate=info(10, 0, 50)))
        assert budget.snapshot()["rate_remaining"] == 8


async def test_a_count_without_a_reset_holds_for_a_window(autojump_clock: Clock) -> None:
    budget = RateBudget(rate_limit=500, rate_window=300)
    with trio.fail_after(CEILING):
        await budget.acquire("ops")
        await trio.sleep(7)
        budget.release("ops", sent(rate=RateInfo(limit=500, remaining=0, reset=None)))
        await budget.acquire("ops")
    assert trio.current_time() == pytest.approx(7 + 300 + RESET_MARGIN)


async def test_answers_without_headers_count_as_spent(autojump_clock: Clock) -> None:
    budget = RateBudget(rate_limit=8, rate_window=8000, flood_limit=HUGE)
    with trio.fail_after(CEILING):
        times = await send_all(
            budget, ["ops"] * 3, Outcome(OutcomeKind.TIMEOUT, error="no answer within 10 s")
        )
    assert times == pytest.approx([0, 0, 1000])
    assert budget.snapshot()["rate_remaining"] == 5


# --- 429 -----------------------------------------------------------------------------------


async def test_a_429_blocks_until_retry_at(autojump_clock: Clock) -> None:
    budget = RateBudget(rate_limit=500)
    with trio.fail_after(CEILING):
        await budget.acquire("ops")
        limited = Outcome(
            OutcomeKind.RATE_LIMITED,
            status=429,
            error="Rate Limit exceeded",
            retry_at=unix_now() + 30,
        )
        budget.release("ops", limited)
        assert budget.snapshot()["rate_remaining"] == 0
        await budget.acquire("dev")
    assert trio.current_time() == pytest.approx(30 + RESET_MARGIN)


async def test_a_429_with_a_past_retry_at_still_pauses(autojump_clock: Clock) -> None:
    budget = RateBudget()
    with trio.fail_after(CEILING):
        await budget.acquire("ops")
        limited = Outcome(OutcomeKind.RATE_LIMITED, status=429, retry_at=unix_now() - 5)
        budget.release("ops", limited)
        await budget.acquire("ops")
    assert trio.current_time() == pytest.approx(1.0 + RESET_MARGIN)


async def test_a_bare_429_blocks_the_token_for_its_window(autojump_clock: Clock) -> None:
    budget = RateBudget(rate_limit=100, rate_window=300, flood_limit=30, flood_window=60)
    with trio.fail_after(CEILING):
        await budget.acquire("ops")
        budget.release("ops", Outcome(OutcomeKind.RATE_LIMITED, status=403))  # v1, no headers
        assert budget.wait_hint("ops") == pytest.approx(300 + RESET_MARGIN)
        assert budget.wait_hint("dev") == pytest.approx(300 + RESET_MARGIN)
        await budget.acquire("dev")
    assert trio.current_time() == pytest.approx(300 + RESET_MARGIN)


async def test_a_flood_429_blocks_only_its_room(autojump_clock: Clock) -> None:
    budget = RateBudget(rate_limit=500)
    with trio.fail_after(CEILING):
        await budget.acquire("ops")
        flood = info(30, 0, 60)
        budget.release(
            "ops",
            Outcome(
                OutcomeKind.RATE_LIMITED,
                status=429,
                rate=info(500, 400, 300),
                flood=flood,
                retry_at=flood.reset,
            ),
        )
        await budget.acquire("dev")
        assert trio.current_time() == 0.0
        budget.release("dev", SENT)
        await budget.acquire("ops")
    assert trio.current_time() == pytest.approx(60 + RESET_MARGIN)


async def test_a_token_429_uses_the_token_reset(autojump_clock: Clock) -> None:
    budget = RateBudget(rate_limit=100)
    with trio.fail_after(CEILING):
        await budget.acquire("ops")
        rate = info(100, 0, 200)
        budget.release(
            "ops", Outcome(OutcomeKind.RATE_LIMITED, status=429, rate=rate, retry_at=rate.reset)
        )
        await budget.acquire("dev")
    assert trio.current_time() == pytest.approx(200 + RESET_MARGIN)


# --- fairness and independence -------------------------------------------------------------


async def test_a_flood_blocked_room_does_not_delay_another(autojump_clock: Clock) -> None:
    budget = RateBudget(rate_limit=500)
    grants: dict[str, float] = {}

    async def take(key: str) -> None:
        await budget.acquire(key)
        grants[key] = trio.current_time()

    with trio.fail_after(CEILING):
        await budget.acquire("ops")
        budget.release("ops", sent(flood=info(30, 0, 60)))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(take, "ops")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(take, "dev")
    assert grants == {"dev": 0.0, "ops": pytest.approx(60 + RESET_MARGIN)}


async def test_token_grants_are_fifo_among_rooms_that_may_send(autojump_clock: Clock) -> None:
    # Capacity 1 and one request per 10 s: every waiter is granted on its own tick.
    budget = RateBudget(rate_limit=7, rate_window=70, flood_limit=HUGE)
    order: list[tuple[str, float]] = []

    async def take(key: str) -> None:
        await budget.acquire(key)
        order.append((key, trio.current_time()))
        budget.release(key, SENT)

    with trio.fail_after(CEILING):
        await budget.acquire("first")
        budget.release("first", sent(flood=info(HUGE, 0, 25)))  # "first" is held until 25.5
        async with trio.open_nursery() as nursery:
            for key in ("first", "a", "b", "c"):
                nursery.start_soon(take, key)
                await trio.testing.wait_all_tasks_blocked()
    # "first" queued first but could not send at 10 or 20; it keeps its place at 30.
    assert order == [("a", 10.0), ("b", 20.0), ("first", 30.0), ("c", 40.0)]


async def test_a_cancelled_waiter_leaves_no_trace(autojump_clock: Clock) -> None:
    budget = RateBudget(rate_limit=7, rate_window=70, flood_limit=HUGE)
    grants: dict[str, float] = {}

    async def take(key: str) -> None:
        await budget.acquire(key)
        grants[key] = trio.current_time()

    with trio.fail_after(CEILING):
        await budget.acquire("x")
        budget.release("x", SENT)
        with trio.move_on_after(5):
            await budget.acquire("gone")
        snapshot = budget.snapshot()
        assert (snapshot["waiters"], snapshot["rate_in_flight"]) == (0, 0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(take, "next")
    assert grants == {"next": pytest.approx(10.0)}


async def test_a_grant_racing_cancellation_is_given_back(autojump_clock: Clock) -> None:
    budget = RateBudget(rate_limit=100, flood_limit=HUGE)
    results: dict[str, object] = {}

    async def take(key: str, scope: trio.CancelScope) -> None:
        with scope:
            await budget.acquire(key)
            results[key] = trio.current_time()
            return
        results[key] = "cancelled"

    with trio.fail_after(CEILING):
        for i in range(3):
            await budget.acquire(f"busy-{i}")
        budget.release("busy-0", sent(rate=info(100, 97, 300)))
        budget.release("busy-1", sent(rate=info(100, 0, 300)))  # the window is full
        loser, winner = trio.CancelScope(), trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(take, "loser", loser)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(take, "winner", winner)
            await trio.testing.wait_all_tasks_blocked()
            # Cancelled first, then granted in the same step, before it could run.
            loser.cancel()
            budget.release("busy-2", sent(rate=info(100, 98, 330)))  # a new window
    assert results == {"loser": "cancelled", "winner": 0.0}
    snapshot = budget.snapshot()
    assert snapshot["rate_in_flight"] == 1
    assert snapshot["waiters"] == 0


async def test_abandon_gives_a_grant_back(autojump_clock: Clock) -> None:
    budget = RateBudget(rate_limit=4, rate_window=400, flood_limit=HUGE)  # capacity 1
    with trio.fail_after(CEILING):
        await budget.acquire("ops")
        budget.abandon("ops")
        await budget.acquire("ops")
    assert trio.current_time() == 0.0
    assert budget.snapshot()["rate_in_flight"] == 1


async def test_wait_hint_and_snapshot(autojump_clock: Clock) -> None:
    budget = RateBudget(rate_limit=4, rate_window=400, flood_limit=HUGE)
    assert budget.wait_hint("ops") == 0.0
    with trio.fail_after(CEILING):
        await budget.acquire("ops")
    assert budget.wait_hint("ops") == pytest.approx(100.0)
    snapshot = budget.snapshot()
    assert snapshot["rate_limit"] == 4
    assert snapshot["rate_remaining"] == 3
    assert snapshot["rate_in_flight"] == 1
    reset = snapshot["rate_reset"]
    assert isinstance(reset, float)
    assert reset == pytest.approx(unix_now() + 400)
    # Only the answer of the one request allowed can free the budget.
    tiny = RateBudget(rate_limit=1, flood_limit=HUGE)
    with trio.fail_after(CEILING):
        await tiny.acquire("ops")
    assert tiny.wait_hint("ops") == math.inf


async def test_a_reported_zero_limit_still_allows_one_request_per_window(
    autojump_clock: Clock,
) -> None:
    budget = RateBudget(flood_limit=HUGE)
    with trio.fail_after(CEILING):
        await budget.acquire("ops")
        budget.release("ops", sent(rate=info(0, 0, 300)))
        await budget.acquire("ops")
        assert trio.current_time() == pytest.approx(300 + RESET_MARGIN)
        budget.release("ops", sent(rate=info(100, 99, 300)))
        await budget.acquire("ops")
    assert trio.current_time() == pytest.approx(300 + RESET_MARGIN)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="rate_limit"):
        RateBudget(rate_limit=0)
    with pytest.raises(ValueError, match="window"):
        RateBudget(flood_window=0)


async def test_idle_rooms_are_forgotten(autojump_clock: Clock) -> None:
    budget = RateBudget(rate_limit=HUGE, flood_limit=HUGE)
    with trio.fail_after(CEILING):
        await send_all(budget, [f"room-{i}" for i in range(1000)])
        await trio.sleep(120)
        await send_all(budget, [f"new-{i}" for i in range(100)])
    keys = budget.snapshot()["keys"]
    assert isinstance(keys, int)
    assert keys < 200


# --- against the emulator ------------------------------------------------------------------


def message(i: int) -> Message:
    return Message(text=f"event {i}", color="red", notify=False, message_format="text", sender="s")


def room(name: str) -> Target:
    return Target(kind="room", name=name, notify=False, username="sensu", message_format="text")


async def drive(
    nursery: trio.Nursery, emu: Emulator, budget: RateBudget, plan: dict[str, int], workers: int
) -> list[float]:
    """Send plan[room] messages per room, ``workers`` concurrent senders per room."""
    url = await nursery.start(emu.serve, "127.0.0.1")
    settings = HipChatSettings(
        api_token=Secret(TOKEN), server_url=url, rate_limit=100, flood_limit=30
    )
    finished: list[float] = []
    async with make_http_client(settings, 16) as http:
        client = HipChatClient(settings, http)

        async def worker(name: str, count: int) -> None:
            for i in range(count):
                await budget.acquire(name)
                outcome: Outcome | None = None
                try:
                    with trio.move_on_after(10) as scope:
                        outcome = await client.send(room(name), message(i))
                    if scope.cancelled_caught:
                        outcome = Outcome.timeout(10)
                finally:
                    budget.release(name, outcome or Outcome.timeout(10))
                assert outcome is not None
                assert outcome.kind is OutcomeKind.SENT, outcome
                finished.append(trio.current_time())

        async with trio.open_nursery() as senders:
            for name, count in plan.items():
                for _ in range(workers):
                    senders.start_soon(worker, name, count // workers)
    return finished


async def test_emulator_token_limit_300_sends_zero_429s(
    nursery: trio.Nursery, autojump_clock: Clock
) -> None:
    emu = Emulator(tokens=[TOKEN], rooms=(), auto_create_rooms=True, rate_limit=100, flood_limit=30)
    budget = RateBudget(rate_limit=100, flood_limit=30)
    with trio.fail_after(CEILING):
        finished = await drive(nursery, emu, budget, {f"room-{i}": 60 for i in range(5)}, 2)
    assert len(finished) == 300
    assert emu.count_status(429) == 0
    assert len(emu.messages) == 300
    # 300 requests need three 300 s windows; pacing must not waste much of them.
    assert 600 <= max(finished) <= 3 * 300 + 10
    assert sum(1 for t in finished if t < 300) >= 95


async def test_emulator_flood_limit_zero_429s(nursery: trio.Nursery, autojump_clock: Clock) -> None:
    emu = Emulator(
        tokens=[TOKEN], rooms=("ops",), rate_limit=HUGE, flood_limit=30, float_reset=True
    )
    budget = RateBudget(rate_limit=100, flood_limit=30)
    with trio.fail_after(CEILING):
        finished = await drive(nursery, emu, budget, {"ops": 90}, 3)
    assert emu.count_status(429) == 0
    assert len(emu.messages) == 90
    assert 120 <= max(finished) <= 3 * 60 + 10
    assert sum(1 for t in finished if t < 60) >= 28


# --- absurd numbers: no family ever gets stuck --------------------------------------------

#: The longest any block may last after the answer that set it.
LONGEST = MAX_SERVER_WAIT + RESET_MARGIN


def flood_429(flood: RateInfo | None, retry_at: float | None = None) -> Outcome:
    return Outcome(OutcomeKind.RATE_LIMITED, status=429, flood=flood, retry_at=retry_at)


@pytest.mark.parametrize(
    "outcome",
    [
        pytest.param(lambda: sent(rate=info(0, 0, 1e10)), id="rate limit 0, reset far"),
        pytest.param(lambda: sent(flood=info(0, 0, 1e10)), id="flood limit 0, reset far"),
        pytest.param(lambda: sent(rate=info(100, 0, 1e10)), id="rate reset far"),
        pytest.param(lambda: sent(flood=info(30, 0, math.inf)), id="flood reset infinite"),
        pytest.param(lambda: sent(rate=info(-5, -5, 60)), id="negative numbers"),
        pytest.param(lambda: sent(rate=info(100, 10**9, 60)), id="remaining above the limit"),
        pytest.param(lambda: sent(rate=info(100, 0, -1e10)), id="reset long past"),
        pytest.param(lambda: flood_429(None, unix_now() + 1e10), id="429 retry_at far"),
        pytest.param(lambda: flood_429(info(30, 0, 1e10)), id="429 flood reset far"),
        pytest.param(lambda: flood_429(info(0, 0, 1e10), math.inf), id="429 all absurd"),
        pytest.param(
            lambda: Outcome(OutcomeKind.RATE_LIMITED, rate=info(0, 0, 1e12)), id="429 rate 0"
        ),
    ],
)
async def test_no_answer_blocks_a_family_beyond_the_clamp(
    autojump_clock: Clock, outcome: object
) -> None:
    budget = RateBudget(rate_limit=100, flood_limit=30)
    make = outcome
    assert callable(make)
    with trio.fail_after(CEILING):
        for _ in range(3):
            await budget.acquire("ops")
            started = trio.current_time()
            budget.release("ops", make())
            await budget.acquire("ops")
            assert trio.current_time() - started <= LONGEST
            budget.release("ops", SENT)
            assert budget.wait_hint("ops") <= LONGEST


async def test_a_zero_limit_keeps_the_last_good_one(autojump_clock: Clock) -> None:
    budget = RateBudget(rate_limit=100, flood_limit=HUGE)
    with trio.fail_after(CEILING):
        await budget.acquire("ops")
        budget.release("ops", sent(rate=info(0, 50, 300)))
    assert budget.snapshot()["rate_limit"] == 100


async def test_a_new_room_after_a_zero_flood_limit_can_send_at_once(autojump_clock: Clock) -> None:
    budget = RateBudget(rate_limit=HUGE, flood_limit=30)
    with trio.fail_after(CEILING):
        await budget.acquire("ops")
        budget.release("ops", sent(flood=info(0, 0, 60)))
        assert await granted_within(budget, "dev")
