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
