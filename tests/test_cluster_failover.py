"""Three hipchatd instances on one PostgreSQL schema: one killed mid-storm, the server
stopped under load, a token budget they share.

Each instance, the emulator and the sender are processes of their own (see
``tests/cluster.py``); what arrives is read from the emulator's room history.
"""

from __future__ import annotations

import signal
import time

import psycopg

from bench.procs import Children, wait_for
from tests import cluster
from tests.cluster import RATE_LIMIT, Cluster, Delivery, Sender
from tests.postgres import PgSchema, PostgresServer
from tests.test_cluster import children, drained, postgresql_stopped_under_load  # noqa: F401

#: Seconds an emulator answer takes during the kill: long enough that the killed instance
#: has a request in flight in each room it owns.
LATENCY = 1.0
ROOMS = 6
#: A lease lives 10 s and a free lane is taken at the next poll (docs/design.md).
TAKEOVER = 15.0
#: Seconds after which every live instance has renewed its leases (every 3 s), and before
#: a dead one's could expire (10 s after its last renewal).
RENEWED_WITHIN = 4.5


def _leases(schema: PgSchema) -> dict[str, tuple[str, object]]:
    """Room lane -> (owner, expires_at), as the shared ``leases`` table says now."""
    with psycopg.connect(schema.conninfo) as conn:
        rows = conn.execute(
            "SELECT lane, owner, expires_at FROM leases WHERE starts_with(lane, 'room:')"
        ).fetchall()
    return {str(lane): (str(owner), expires) for lane, owner, expires in rows}


def _owned(group: Cluster, instance: int) -> float:
    """The lanes an instance owns, from its ``/metrics``."""
    samples = group.instances[instance].metrics() or {}
    return sum(v for k, v in samples.items() if "owned" in k and "{" not in k)


def _all_committed(group: Cluster, sender: Sender, instances: range) -> bool:
    return all(group.accepted(i) == sender.sent_to(i) for i in instances)


def test_three_instances_lose_nothing_when_one_is_killed_mid_storm(
    children: Children,  # noqa: F811
    pg_schema: PgSchema,
) -> None:
    """Three instances, one schema, a storm to six rooms sent to all three; the instance
    owning the most lanes is ``kill -9``'d with requests in flight while the storm
    goes on at the other two. Every accepted event arrives (copies only of those in
    flight), per-room order holds, 0 x 429, the requests stay within the token's
    budget, and the dead instance's rooms are delivered again within 15 s."""
    group = cluster.start_cluster(
        children, 3, cluster.spool_settings(pg_schema.conninfo, pg_schema.schema)
    )
    group.emulator.faults(latency=LATENCY)
    sender = Sender(group.instances, ROOMS)
    first = sender.send(90)
    wait_for("the first wave committed", lambda: _all_committed(group, sender, range(3)), 30)
    wait_for("every room leased", lambda: len(_leases(pg_schema)) == ROOMS, 30)
    victim = max(range(3), key=lambda i: _owned(group, i))
    assert _owned(group, victim) > 0
    dead = group.instances[victim]
    killed_at = time.time()
    dead.popen.send_signal(signal.SIGKILL)
    dead.popen.wait(10)
    # Its requests in flight still get their answers after LATENCY; the rest go at once, so
    # the takeover below is the time to the new owner's delivery, not to an answer's delay.
    group.emulator.faults(latency=0)
    leases = _leases(pg_schema)
    survivors = [i for i in range(3) if i != victim]
    second = sender.send(90, to=survivors)
    # The live instances renew their leases every 3 s and a lease lives 10 s: after 4.5 s,
    # the rows nobody renewed are the dead instance's, and none has expired yet.
    time.sleep(max(0.0, killed_at + RENEWED_WITHIN - time.time()))
    now = _leases(pg_schema)
    dead_lanes = {lane for lane, row in leases.items() if now.get(lane) == row}
    assert dead_lanes, (leases, now)
    assert len({leases[lane][0] for lane in dead_lanes}) == 1, (leases, now)
    dead_rooms = {int(lane.rsplit("-", 1)[1]) for lane in dead_lanes}
    wait_for("the second wave committed", lambda: _all_committed(group, sender, survivors), 30)
    delivery = drained(group, sender)

    # Every event accepted (committed by some instance) arrived.
    assert delivery.missing() == set()
    # Per room: each instance's events in the order it received them, and the whole first
    # wave (committed before the second was sent) before the second.
    assert delivery.order_problems([first, second]) == []
    # Copies only of what was in flight at the kill: in the dead instance's rooms, of events
    # that first arrived by the answer to its last request.
    in_flight_until = killed_at + LATENCY + 0.5
    first_at = {}
    for arrival in delivery.shown:
        first_at.setdefault((arrival.room, arrival.seq), arrival.at)
    for room, seq in delivery.duplicated():
        assert room in dead_rooms, (room, seq)
        assert first_at[(room, seq)] <= in_flight_until, (room, seq)
    # Takeover: from the kill to the first delivery in each dead room by its new owner.
    takeovers = {
        room: min(a.at for a in delivery.shown if a.room == room and a.at > in_flight_until)
        - killed_at
        for room in dead_rooms
    }
    assert max(takeovers.values()) <= TAKEOVER, takeovers
    statuses = group.statuses()
    assert statuses.get("429", 0) == 0, statuses
    assert statuses["total"] <= RATE_LIMIT, statuses
    print(f"takeover s by room: {takeovers}; requests {statuses}")


def test_postgresql_stopped_under_load_loses_nothing(
    children: Children,  # noqa: F811
    pg_server: PostgresServer,
    pg_schema: PgSchema,
) -> None:
    """PostgreSQL stopped for 15 s while events keep arriving at three instances: each keeps
    accepting into its local spool (``/healthz`` degraded), forwards on reconnect, and
    every event sent meanwhile arrives, in per-instance order."""
    postgresql_stopped_under_load(children, pg_server, pg_schema, 3)


def _pending(schema: PgSchema) -> int:
    with psycopg.connect(schema.conninfo) as conn:
        row = conn.execute("SELECT count(*) FROM pending").fetchone()
    return int(row[0]) if row else 0


#: A token budget the storm below needs several times over.
TIGHT_RATE_LIMIT = 10


def test_three_instances_together_never_exceed_the_token_budget(
    children: Children,  # noqa: F811
    pg_schema: PgSchema,
) -> None:
    """A storm to six rooms over three instances with a token budget of 10 requests per
    5 minutes: together they send at most 10 requests, no 429, and wait for HipChat's
    reset with the rest still spooled (nothing dropped)."""
    group = cluster.start_cluster(
        children,
        3,
        cluster.spool_settings(pg_schema.conninfo, pg_schema.schema),
        rate_limit=TIGHT_RATE_LIMIT,
    )
    group.emulator.faults(latency=0.3)
    sender = Sender(group.instances, ROOMS)
    sender.send(90)
    wait_for("every event committed", lambda: _all_committed(group, sender, range(3)), 30)
    # Until the budget is spent, or nothing was sent for 5 s (the instances pace what is left).
    group.emulator.wait_delivered(TIGHT_RATE_LIMIT, cap=60, quiet=5)
    time.sleep(3.0)  # any request over the budget would be on its way by now
    statuses = group.statuses()
    assert statuses.get("429", 0) == 0, statuses
    assert statuses["total"] <= TIGHT_RATE_LIMIT, statuses
    delivery = Delivery(sender.sent, cluster.arrivals(group.messages()))
    assert delivery.duplicated() == set()
    assert delivery.order_problems() == []
    # What was not sent waits in the shared queue for the reset.
    assert _pending(pg_schema) > 0
