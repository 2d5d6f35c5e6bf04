"""hipchatd instances on one PostgreSQL schema, end to end, each a process of its own.

The emulator enforces HipChat's budgets (per token per 5 minutes, per room per
minute, small limits so a run takes seconds); the sender spreads events over
the instances; the emulator's room history says what arrived. What is checked
everywhere: every accepted event delivered (counted by its unique check
name), per-room order, no 429, the requests within the token's budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.procs import Children, wait_for
from tests import cluster
from tests.cluster import RATE_LIMIT, Cluster, Delivery, Sender
from tests.postgres import PgSchema

#: Seconds an emulator answer takes: messages are in flight long enough for events to pile
#: up behind them (a storm) and for a process to die with a request in flight.
LATENCY = 0.3
ROOMS = 4


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    yield from cluster.running(tmp_path)


def drained(group: Cluster, sender: Sender) -> Delivery:
    """Wait until every event sent has arrived; what arrived."""

    def done() -> Delivery | None:
        delivery = Delivery(sender.sent, cluster.arrivals(group.messages()))
        return None if delivery.missing() else delivery

    return wait_for("every event delivered", done, 60, step=0.2)


def test_one_instance_on_postgresql_delivers_a_storm_in_order_within_budget(
    children: Children, pg_schema: PgSchema
) -> None:
    """The single-instance baseline of the cluster tests: a storm to several rooms on one
    instance with its spool in PostgreSQL: all delivered once, in order, 0 x 429."""
    group = cluster.start_cluster(
        children, 1, cluster.spool_settings(pg_schema.conninfo, pg_schema.schema)
    )
    group.emulator.faults(latency=LATENCY)
    sender = Sender(group.instances, ROOMS)
    sender.send(120)
    delivery = drained(group, sender)

    assert delivery.duplicated() == set()
    assert delivery.order_problems() == []
    statuses = group.statuses()
    assert statuses.get("429", 0) == 0, statuses
    # Storms fold into summaries: far fewer requests than events, within the budget.
    assert statuses["total"] <= RATE_LIMIT, statuses
    assert group.accepted(0) == 120


def _message(at: float, *events: tuple[int, int]) -> dict[str, object]:
    lines = [f"cl-{room:02d}-{seq:05d}: cl-{room:02d}-{seq:05d} output" for room, seq in events]
    return {"date": at, "message": "<br>".join(lines)}


def test_the_room_history_says_what_is_missing_repeated_and_out_of_order() -> None:
    """The harness's own reading: events by their check names, first arrivals, per-instance
    order, groups committed one after the other."""
    sent = [cluster.Sent(0, seq, seq % 2, 0.0) for seq in range(5)]
    first, second = sent[:3], sent[3:]
    shown = cluster.arrivals(
        [_message(2.0, (0, 3), (0, 2)), _message(1.0, (0, 0), (0, 1)), _message(3.0, (0, 1))]
    )
    assert [(a.seq, a.at) for a in shown] == [(0, 1.0), (1, 1.0), (3, 2.0), (2, 2.0), (1, 3.0)]
    delivery = Delivery(sent, shown)
    assert delivery.missing() == {(0, 4)}
    assert delivery.duplicated() == {(0, 1)}
    assert delivery.first_order(0) == [0, 1, 3, 2]
    # 2 went to the same instance as 0 (even): fine; 3 before 2 breaks the groups only.
    assert delivery.order_problems() == []
    assert delivery.order_problems([first, second]) == ["room 0: groups out of order [0, 0, 1, 0]"]
    # 3 and 1 went to instance 1: 1 arriving after 3 is out of that instance's order.
    late = Delivery(sent, cluster.arrivals([_message(1.0, (0, 3), (0, 1))]))
    assert late.order_problems() == ["room 0: event 1 (instance 1) after 3"]
