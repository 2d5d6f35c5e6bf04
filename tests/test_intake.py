"""The intake's contract: a document in; the spool's commit callbacks hand events to the lanes.

:class:`hipchatd.ingest.intake.Intake` between a recording spool and a
recording dispatcher, without an event loop: what ``accept`` submits,
what ``committed``, ``refused`` and ``recover`` hand on, and the context
each line is logged in (on trio's clock: ``accept`` reads it). The whole
path runs end to end in ``test_daemon.py``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

import structlog
import trio
import trio.testing

from hipchatd.delivery.lanes import Ticket
from hipchatd.delivery.routing import Target
from hipchatd.delivery.spool import Entry
from hipchatd.ingest.intake import Intake
from hipchatd.ingest.skiplog import MIN_PERIOD
from hipchatd.metrics import Metrics
from hipchatd.sensu.events import Event
from hipchatd.sensu.framing import Document
from hipchatd.sensu.model import DEFAULT_HANDLE_WHEN_RESET
from tests.conftest import classic_event, make_config
from tests.factories import make_target
from tests.logcapture import capture_logs

PEER = "192.0.2.10:40000"


class RecordingSpool:
    """``submit`` as the spool's: all or nothing against ``room`` entries; records each call."""

    def __init__(self, room: int = 1000) -> None:
        self.room = room
        self.closed = False
        self.submitted: list[tuple[Event, str, tuple[Target, ...], object]] = []

    def submit(
        self, event: Event, text: str, targets: Sequence[Target], at: float, handle: object
    ) -> bool:
        if self.closed or len(targets) > self.room:
            return False
        self.room -= len(targets)
        self.submitted.append((event, text, tuple(targets), handle))
        return True

    def committed(self) -> list[tuple[object, list[Entry]]]:
        """What a group commit hands ``Intake.committed``: each handle with its entries."""
        out = []
        next_id = 1
        for event, document, targets, handle in self.submitted:
            entries = [
                Entry(next_id + k, 1.0, document, event.source, event.check, target, 0, None)
                for k, target in enumerate(targets)
            ]
            next_id += len(entries)
            out.append((handle, entries))
        return out


class RecordingDispatcher:
    def __init__(self) -> None:
        self.enqueued: list[tuple[Entry, Ticket, Event | None]] = []

    def enqueue(self, entries: Iterable[tuple[Entry, Ticket, Event | None]]) -> None:
        self.enqueued.extend(entries)


def _intake(
    spool: RecordingSpool | None = None, **settings: Any
) -> tuple[Intake, RecordingSpool, RecordingDispatcher, Metrics]:
    config = make_config("http://127.0.0.1:9", **settings)
    spool = spool or RecordingSpool()
    dispatcher = RecordingDispatcher()
    metrics = Metrics()
    intake = Intake(lambda: config, metrics, spool, dispatcher)  # type: ignore[arg-type]
    return intake, spool, dispatcher, metrics


def _document(value: Any) -> Document:
    text = json.dumps(value)
    return Document(value, len(text), text)


def _event(name: str, event_id: str, rooms: list[str] | None = None) -> dict[str, Any]:
    event = classic_event(name=name)
    if rooms is not None:
        event["check"]["hipchat"] = {"room": rooms}
    event["id"] = event_id
    return event


async def test_an_accepted_event_reaches_the_lanes_only_once_committed() -> None:
    intake, spool, dispatcher, metrics = _intake()
    intake.accept(_document(_event("disk", "evt-1", ["ops", "dev"])), PEER, "tcp")
    [(event, document, targets, _)] = spool.submitted
    assert event.id == "evt-1"
    assert json.loads(document)["id"] == "evt-1"
    assert [t.name for t in targets] == ["ops", "dev"]
    assert dispatcher.enqueued == []
    assert metrics.value("hipchatd_events_accepted_total") == 0
    intake.committed(spool.committed())
    assert [(entry.target.name, event.id) for entry, _, event in dispatcher.enqueued if event] == [
        ("ops", "evt-1"),
        ("dev", "evt-1"),
    ]
    tickets = {id(ticket) for _, ticket, _ in dispatcher.enqueued}
    assert len(tickets) == 1  # one summary line for the event, across both rooms
    ticket = dispatcher.enqueued[0][1]
    assert (ticket.event_id, ticket.check, ticket.remaining) == ("evt-1", "disk", 2)
    assert metrics.value("hipchatd_events_accepted_total") == 1


async def test_entries_requeued_by_an_operator_are_not_counted_as_accepted() -> None:
    """``hipchatd spool retry`` moves entries back: they come without a handle of ours."""
    intake, _, dispatcher, metrics = _intake()
    target = make_target(name="ops")
    entry = Entry(7, 1.0, "{}", "web-01", "disk", target, 3, "boom", requeued=True)
    intake.committed([(None, [entry])])
    [(queued, ticket, event)] = dispatcher.enqueued
    assert queued is entry
    assert event is None
    assert (ticket.event_id, ticket.source, ticket.remaining) == ("", "web-01", 1)
    assert metrics.value("hipchatd_events_accepted_total") == 0


async def test_a_commit_counts_each_of_its_events_accepted_once() -> None:
    """Several events in one commit, an operator's re-queued entries among them."""
    intake, spool, dispatcher, metrics = _intake()
    for n in range(3):
        intake.accept(_document(_event("disk", f"evt-{n}", ["ops", "dev"])), PEER, "tcp")
    requeued = Entry(9, 1.0, "{}", "web-01", "disk", make_target(name="ops"), 3, "boom")
    intake.committed([*spool.committed(), (None, [requeued])])
    assert metrics.value("hipchatd_events_accepted_total") == 3
    assert len(dispatcher.enqueued) == 7
    intake.committed([(None, [requeued])])
    assert metrics.value("hipchatd_events_accepted_total") == 3


async def test_an_event_the_spool_cannot_store_is_counted_as_refused() -> None:
    intake, spool, _, metrics = _intake()
    intake.accept(_document(_event("disk", "evt-1")), PEER, "tcp")
    [pair] = spool.committed()
    intake.refused(pair)
    assert metrics.value("hipchatd_events_rejected_total", reason="spool_full") == 1
    assert metrics.value("hipchatd_events_accepted_total") == 0


async def test_recovery_groups_entries_into_one_ticket_per_event() -> None:
    intake, _, dispatcher, _ = _intake()
    ops, dev = make_target(name="ops"), make_target(name="dev")
    entries = [
        Entry(1, 10.0, "{}", "web-01", "disk", ops, 0, None),
        Entry(2, 10.0, "{}", "web-01", "disk", dev, 0, None),
        Entry(3, 11.0, "{}", "web-01", "disk", ops, 1, "503"),
    ]
    with capture_logs() as logs:
        intake.recover(entries)
    tickets = [ticket for _, ticket, _ in dispatcher.enqueued]
    assert tickets[0] is tickets[1] is not tickets[2]
    assert [t.remaining for t in (tickets[0], tickets[2])] == [2, 1]
    assert [event for _, _, event in dispatcher.enqueued] == [None] * 3
    [line] = logs
    assert (line["event"], line["entries"], line["events"]) == ("spool.recovered", 3, 2)


async def test_lines_about_an_event_name_it_and_its_connection_and_then_stop_naming_it() -> None:
    """``accept`` binds the event's id, source and check while it runs, in the caller's context."""
    intake, _, _, metrics = _intake(max_targets_per_event=1)
    with capture_logs() as logs, structlog.contextvars.bound_contextvars(peer=PEER, conn_id=5):
        intake.accept(_document(_event("disk", "evt-9", ["ops", "dev"])), PEER, "tcp")
        intake.accept(_document({"not": "an event"}), PEER, "tcp")
        after = structlog.contextvars.get_contextvars()
    refused, rejected = logs
    assert refused["event"] == "event.targets_refused"
    assert (refused["event_id"], refused["source"], refused["check"]) == (
        "evt-9",
        "sensu.test.local",
        "disk",
    )
    assert (refused["peer"], refused["conn_id"]) == (PEER, 5)
    assert (refused["targets"], refused["refused"]) == (2, 1)
    # The next document on the same connection is not that event.
    assert rejected["event"] == "input.rejected"
    assert (rejected["peer"], rejected["conn_id"]) == (PEER, 5)
    assert not {"event_id", "source", "check"} & rejected.keys()
    assert after == {"peer": PEER, "conn_id": 5}
    assert metrics.value("hipchatd_events_rejected_total", reason="not_event") == 1


async def test_a_full_spool_refuses_loudly_and_a_closed_one_quietly() -> None:
    full = RecordingSpool(room=0)
    intake, _, _, metrics = _intake(full)
    with capture_logs() as logs:
        intake.accept(_document(_event("disk", "evt-1")), PEER, "tcp")
        full.closed = True
        intake.accept(_document(_event("disk", "evt-2")), PEER, "tcp")
    assert [(line["log_level"], line["reason"], line["event_id"]) for line in logs] == [
        ("error", "spool full", "evt-1"),
        ("warning", "shutting down", "evt-2"),
    ]
    assert logs[0]["max_spool_events"] == make_config("").daemon.max_spool_events
    assert metrics.value("hipchatd_events_rejected_total", reason="spool_full") == 1


async def test_the_running_configuration_is_read_for_each_document() -> None:
    """A reload replaces the configuration; the next document is routed by the new one."""
    config = make_config("http://127.0.0.1:9", room="before")
    spool, dispatcher = RecordingSpool(), RecordingDispatcher()
    intake = Intake(lambda: config, Metrics(), spool, dispatcher)  # type: ignore[arg-type]
    intake.accept(_document(_event("disk", "evt-1")), PEER, "tcp")
    config = dataclasses.replace(
        config, hipchat=dataclasses.replace(config.hipchat, room=("after",))
    )
    intake.accept(_document(_event("disk", "evt-2")), PEER, "tcp")
    assert [targets[0].name for _, _, targets, _ in spool.submitted] == ["before", "after"]


def _ok(name: str, **check: Any) -> Document:
    """A Classic OK result that is not a resolve: skipped as ``status_ok``."""
    return _document(classic_event(name=name, status=0, **check))


async def test_a_skipped_event_is_logged_at_info_once_per_check_per_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Between two INFO lines of a check its skips are DEBUG lines; the next one counts them."""
    intake, spool, _, metrics = _intake()
    with capture_logs() as logs:
        for _ in range(3):
            intake.accept(_ok("disk"), PEER, "tcp")
        intake.accept(_ok("load"), PEER, "tcp")
        await trio.sleep(DEFAULT_HANDLE_WHEN_RESET - 1)
        intake.accept(_ok("disk"), PEER, "tcp")
        await trio.sleep(1)
        intake.accept(_ok("disk"), PEER, "tcp")
    skipped = [line for line in logs if line["event"] == "event.skipped"]
    assert [
        (line["log_level"], line["check"], line.get("skipped_since_last")) for line in skipped
    ] == [
        ("info", "disk", 0),
        ("debug", "disk", None),
        ("debug", "disk", None),
        ("info", "load", 0),
        ("debug", "disk", None),
        ("info", "disk", 3),
    ]
    first = skipped[0]
    assert (first["reason"], first["status"], first["action"], first["occurrences"]) == (
        "status_ok",
        0,
        "create",
        1,
    )
    assert (first["period"], first["source"]) == (DEFAULT_HANDLE_WHEN_RESET, "sensu.test.local")
    assert metrics.value("hipchatd_events_skipped_total", reason="status_ok") == 6
    assert spool.submitted == []


async def test_the_skip_log_period_is_the_checks_reset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    intake, _, _, _ = _intake()
    with capture_logs() as logs:
        intake.accept(_ok("disk", handle_when={"reset": 300}), PEER, "tcp")
        await trio.sleep(299)
        intake.accept(_ok("disk", handle_when={"reset": 300}), PEER, "tcp")
        await trio.sleep(1)
        intake.accept(_ok("disk", handle_when={"reset": 300}), PEER, "tcp")
        # reset 0: every result is a reminder, but a check's skip lines stay a minute apart.
        intake.accept(_ok("ntp", handle_when={"reset": 0}), PEER, "tcp")
        await trio.sleep(MIN_PERIOD - 1)
        intake.accept(_ok("ntp", handle_when={"reset": 0}), PEER, "tcp")
    levels = [(line["check"], line["log_level"], line.get("period")) for line in logs]
    assert levels == [
        ("disk", "info", 300),
        ("disk", "debug", None),
        ("disk", "info", 300),
        ("ntp", "info", MIN_PERIOD),
        ("ntp", "debug", None),
    ]
