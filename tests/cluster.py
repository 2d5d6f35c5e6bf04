"""Several ``hipchatd serve`` processes on one PostgreSQL schema, the emulator, a sender, counters.

The tests of a cluster (and the benchmark's cluster scenarios) start every
piece as its own process through :class:`bench.procs.Children`: each
instance has its own TCP port, ``state_dir`` and ``/metrics`` port, and all
share one spool schema; the emulator enforces HipChat's budgets. The
:class:`Sender` spreads events over the instances as Sensu backends would
(one connection per event), each event a check of its own named after its
room and its sequence number in that room, so the emulator's room history
says which events arrived, how often and in what order.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import Children, Daemon, Emulator
from tests.conftest import load_fixture

TOKEN = "cluster-token-5e6f7a8b9c0d"
#: HipChat's budgets (docs/hipchat-api.md §6) are per 5 minutes per token and per minute per
#: room; the emulator's windows have those lengths, so a test's whole run fits in one window
#: and these small limits keep it to seconds while the budget keeps HipChat's shape.
RATE_LIMIT = 60
FLOOD_LIMIT = 30
#: Check names the sender gives its events: ``cl-<room index>-<sequence in that room>``.
_CHECK = re.compile(r"\bcl-(\d{2})-(\d{5})\b")


def room_name(index: int) -> str:
    return f"cluster-{index:02d}"


@dataclass(frozen=True, slots=True)
class Sent:
    """One event the sender handed to an instance (the instance closed the connection)."""

    room: int
    seq: int
    instance: int
    at: float


@dataclass(frozen=True, slots=True)
class Arrival:
    """One event shown in a message the emulator accepted."""

    room: int
    seq: int
    at: float


def event(room: int, seq: int) -> dict[str, Any]:
    """A critical Classic event of check ``cl-RR-SSSSS``, routed to room ``room``."""
    document = load_fixture("classic-critical.json")
    check = f"cl-{room:02d}-{seq:05d}"
    document["check"].update(
        name=check, output=f"{check} output", hipchat={"room": room_name(room)}
    )
    document["client"]["name"] = "web-1"
    document["id"] = f"web-1-{check}"
    return document


class Sender:
    """Sends events to the instances in turn, one connection per event, as Sensu does.

    Each send waits for the instance to close the connection (it closes once it
    has read the event), so the events one instance receives reach its accept path
    in the order they were sent. Sequence numbers count per room in send order.
    """

    def __init__(self, instances: Sequence[Daemon], rooms: int) -> None:
        self.instances = list(instances)
        self.rooms = rooms
        self.sent: list[Sent] = []
        self._next_seq = [0] * rooms
        self._turn = 0

    def send(self, count: int, to: Sequence[int] | None = None) -> list[Sent]:
        """``count`` events, rooms in turn, spread over the instances ``to`` (default: all)."""
        targets = list(range(len(self.instances))) if to is None else list(to)
        done: list[Sent] = []
        for _ in range(count):
            room = self._turn % self.rooms
            instance = targets[self._turn % len(targets)]
            self._turn += 1
            seq = self._next_seq[room]
            self._next_seq[room] += 1
            self._deliver(self.instances[instance], event(room, seq))
            done.append(Sent(room, seq, instance, time.time()))
        self.sent.extend(done)
        return done

    @staticmethod
    def _deliver(instance: Daemon, document: dict[str, Any]) -> None:
        with socket.create_connection(("127.0.0.1", instance.tcp_port), timeout=10) as sock:
            sock.sendall(json.dumps(document).encode())
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass

    def sent_to(self, instance: int) -> int:
        return sum(1 for s in self.sent if s.instance == instance)


def arrivals(messages: Sequence[dict[str, Any]]) -> list[Arrival]:
    """Every event the messages show, in the order the emulator accepted them.

    A storm summary lists one line per check in acceptance order, and every
    event here is a check of its own, so the lines give each event's place (a line
    names its check twice: in the name and in the output).
    """
    out: list[Arrival] = []
    for message in sorted(messages, key=lambda m: m["date"]):
        for room, seq in dict.fromkeys(_CHECK.findall(message["message"])):
            out.append(Arrival(int(room), int(seq), message["date"]))
    return out


@dataclass
class Delivery:
    """What the emulator's room history says about the events sent."""

    sent: Sequence[Sent]
    shown: Sequence[Arrival]
    #: (room, seq) -> how many times it arrived
    copies: dict[tuple[int, int], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for arrival in self.shown:
            key = (arrival.room, arrival.seq)
            self.copies[key] = self.copies.get(key, 0) + 1

    def missing(self) -> set[tuple[int, int]]:
        return {(s.room, s.seq) for s in self.sent} - set(self.copies)

    def duplicated(self) -> set[tuple[int, int]]:
        return {key for key, n in self.copies.items() if n > 1}

    def first_order(self, room: int) -> list[int]:
        """The room's sequence numbers in the order of their first arrival."""
        seen: dict[int, None] = {}
        for arrival in self.shown:
            if arrival.room == room:
                seen.setdefault(arrival.seq)
        return list(seen)

    def order_problems(self, groups: Sequence[Sequence[Sent]] = ()) -> list[str]:
        """Per room: events one instance received arrive in the order it received them, and
        every event of an earlier group (all committed before the next group was sent)
        arrives before any event of a later group. First arrivals count (a copy
        re-sent after a takeover arrives again later)."""
        problems: list[str] = []
        instance_of = {(s.room, s.seq): s.instance for s in self.sent}
        group_of = {(s.room, s.seq): i for i, group in enumerate(groups) for s in group}
        for room in range(max((s.room for s in self.sent), default=-1) + 1):
            order = self.first_order(room)
            last: dict[int, int] = {}
            for seq in order:
                instance = instance_of.get((room, seq))
                if instance is None:
                    problems.append(f"room {room}: event {seq} was never sent")
                    continue
                if last.get(instance, -1) > seq:
                    problems.append(
                        f"room {room}: event {seq} (instance {instance}) after {last[instance]}"
                    )
                last[instance] = max(last.get(instance, -1), seq)
            marks = [group_of[(room, seq)] for seq in order if (room, seq) in group_of]
            if marks != sorted(marks):
                problems.append(f"room {room}: groups out of order {marks}")
        return problems


@dataclass
class Cluster:
    """The emulator and N instances on one spool schema, all children of ``children``."""

    children: Children
    emulator: Emulator
    instances: list[Daemon]

    def messages(self) -> list[dict[str, Any]]:
        return self.emulator.messages()

    def statuses(self) -> dict[str, int]:
        """The emulator's API answers by status code, and ``total``."""
        return self.emulator.counts()

    def accepted(self, instance: int) -> float:
        """``hipchatd_events_accepted_total`` of one instance (events committed by it)."""
        samples = self.instances[instance].metrics() or {}
        return samples.get("hipchatd_events_accepted_total", 0.0)


def spool_settings(dsn: str, schema: str) -> dict[str, Any]:
    return {"spool": {"backend": "postgresql", "dsn": dsn, "schema": schema}}


def start_cluster(
    children: Children,
    count: int,
    settings: dict[str, Any],
    *,
    rate_limit: int = RATE_LIMIT,
    flood_limit: int = FLOOD_LIMIT,
) -> Cluster:
    """The emulator with HipChat's budgets (``rate_limit`` per 5 min, ``flood_limit`` per
    room per minute) and ``count`` instances configured with the same limits and
    ``settings`` (e.g. :func:`spool_settings`), started one after the other."""
    emulator = children.emulator(
        "emulator", token=TOKEN, rate_limit=rate_limit, flood_limit=flood_limit, rooms=[]
    )
    hipchat = {"rate_limit": rate_limit, "flood_limit": flood_limit}
    instances = [
        children.daemon(f"instance-{i}", emulator=emulator, hipchat=hipchat, settings=settings)
        for i in range(count)
    ]
    return Cluster(children, emulator, instances)


def running(workdir: Path) -> Iterator[Children]:
    """Children whose processes are all stopped (SIGTERM, then SIGKILL) afterwards."""
    children = Children(workdir)
    try:
        yield children
    finally:
        children.close()
