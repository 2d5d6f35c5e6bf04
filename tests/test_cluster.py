"""hipchatd instances on one PostgreSQL schema, end to end, each a process of its own.

The emulator enforces HipChat's budgets (per token per 5 minutes, per room per
minute, small limits so a run takes seconds); the sender spreads events over
the instances; the emulator's room history says what arrived. What is checked
everywhere: every accepted event delivered (counted by its unique check
name), per-room order, no 429, the requests within the token's budget.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.procs import Children, wait_for
from tests import cluster
from tests.cluster import RATE_LIMIT, Cluster, Delivery, Sender
from tests.postgres import PgSchema, PostgresServer, fresh_schema

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


def all_committed(group: Cluster, sender: Sender) -> bool:
    """Every event sent so far shows as accepted (committed) on the instance it went to."""
    return all(group.accepted(i) == sender.sent_to(i) for i in range(len(group.instances)))


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


#: A storm the token's pacing bounds: its budget (a quarter of it at once, the rest spread
#: over the 5-minute window) allows fewer messages than the rooms could send while events
#: arrive, so the count of requests is what pacing and coalescing make of it.
STORM_EVENTS, STORM_ROOMS, STORM_RATE_LIMIT = 360, 6, 120
#: The storm arrives in waves of this many events, one every STORM_GAP s (about 3 s in all):
#: long enough for the rooms to spend the burst while events keep coming.
STORM_WAVE, STORM_GAP = 30, 0.25
#: Requests three instances may use beyond one on the same storm: each paces its requests
#: as one of three (a third of the burst, rounded down, and a third of the refill), so
#: their last few requests fall a little apart from one instance's.
STORM_SLACK = 3


def storm_requests(workdir: Path, pg_server: PostgresServer, instances: int) -> dict[str, int]:
    """The same storm on ``instances`` instances on a schema of their own: the emulator's
    answers by status once every event has arrived, once, in per-room order."""
    workdir.mkdir()
    with fresh_schema(pg_server) as schema:
        children = Children(workdir)
        try:
            group = cluster.start_cluster(
                children,
                instances,
                cluster.spool_settings(schema.conninfo, schema.schema),
                rate_limit=STORM_RATE_LIMIT,
            )
            group.emulator.faults(latency=LATENCY)
            sender = Sender(group.instances, STORM_ROOMS)
            for _ in range(STORM_EVENTS // STORM_WAVE):
                sender.send(STORM_WAVE)
                time.sleep(STORM_GAP)
            delivery = drained(group, sender)
            assert delivery.duplicated() == set()
            assert delivery.order_problems() == []
            return group.statuses()
        finally:
            children.close()


def test_three_instances_send_a_storm_in_no_more_requests_than_one(
    tmp_path: Path, pg_server: PostgresServer
) -> None:
    """Three instances on one schema fold a storm as one instance does: they pace the
    token's requests together as one would, so they send no more requests (within
    ``STORM_SLACK``), and none gets a 429."""
    one = storm_requests(tmp_path / "one", pg_server, 1)
    three = storm_requests(tmp_path / "three", pg_server, 3)

    assert one.get("429", 0) == 0, one
    assert three.get("429", 0) == 0, three
    # The storm is one the pacing bounds: more events than requests, a burst spent whole.
    assert STORM_RATE_LIMIT // 4 < one["total"] < STORM_EVENTS, one
    assert three["total"] <= one["total"] + STORM_SLACK, (one, three)


def _health(group: Cluster, instance: int) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{group.instances[instance].metrics_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _held_locally(group: Cluster, instance: int) -> float:
    """Entries the instance holds in its local spool (accepted, not yet forwarded)."""
    samples = group.instances[instance].metrics() or {}
    return samples.get("hipchatd_spool_local_entries", 0.0)


def _to(sent: list[cluster.Sent], instance: int) -> list[cluster.Sent]:
    return [s for s in sent if s.instance == instance]


#: Seconds PostgreSQL stays down under load: longer than a lane lease's 10 s life, so every
#: lease lapses and is taken again on reconnect, as after a minute (nothing in hipchatd
#: counts an outage's length beyond that); events keep arriving throughout.
PG_DOWN = 15.0


def postgresql_stopped_under_load(
    children: Children, pg_server: PostgresServer, pg_schema: PgSchema, instances: int
) -> None:
    """PostgreSQL stopped for ``PG_DOWN`` s while events keep arriving at ``instances``
    instances: each keeps accepting into its local spool (``/healthz`` degraded),
    forwards on reconnect (``spool.caught_up``), and every event sent meanwhile arrives,
    each instance's in the order it received them; nothing is left locally."""
    group = cluster.start_cluster(
        children, instances, cluster.spool_settings(pg_schema.conninfo, pg_schema.schema)
    )
    group.emulator.faults(latency=LATENCY)
    sender = Sender(group.instances, ROOMS)
    before = sender.send(60)
    wait_for("the first wave committed", lambda: all_committed(group, sender), 30)
    pg_server.pause()
    stopped_at = time.monotonic()
    try:
        during: list[cluster.Sent] = []
        while time.monotonic() - stopped_at < PG_DOWN:
            during += sender.send(6)
            time.sleep(0.2)
        wait_for(
            "every instance accepted into its local spool",
            lambda: all(_held_locally(group, i) == len(_to(during, i)) for i in range(instances)),
            30,
        )
        for i in range(instances):
            assert _health(group, i)[1]["status"] == "degraded"
    finally:
        pg_server.resume()
    after = sender.send(60)
    delivery = drained(group, sender)
    assert delivery.missing() == set()
    assert delivery.order_problems([before, during + after]) == []
    for i in range(instances):
        assert group.instances[i].log_lines("spool.degraded") == 1
        assert group.instances[i].log_lines("spool.caught_up") == 1
        assert _health(group, i) == (200, {"status": "ok"})
        assert _held_locally(group, i) == 0
    statuses = group.statuses()
    assert statuses.get("429", 0) == 0, statuses
    assert len(during) > 0
    assert len(after) == 60


def test_postgresql_stopped_under_load_loses_nothing_on_one_instance(
    children: Children, pg_server: PostgresServer, pg_schema: PgSchema
) -> None:
    """PostgreSQL stopped for 15 s under load: the instance accepts into its local spool,
    reports degraded, forwards on reconnect; every event arrives, in order."""
    postgresql_stopped_under_load(children, pg_server, pg_schema, 1)


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
