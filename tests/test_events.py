"""parse_event: Sensu Classic and Sensu Go documents -> Event, or EventError."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from hipchatd.sensu import events, model
from hipchatd.sensu.events import EventError, HandleWhen, Overrides, parse_event, severity
from tests.factories import CLASSIC_CRITICAL
from tests.processes import child_env

FIXTURES = Path(__file__).parent / "fixtures"
ALL_FIXTURES = sorted(path.name for path in FIXTURES.glob("*.json"))
PREFIX = "sensu.io/plugins/hipchat/config/"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def classic(**top: Any) -> dict[str, Any]:
    """A minimal valid Classic event; ``top`` replaces top-level keys."""
    doc: dict[str, Any] = {
        "client": {"name": "web-01"},
        "check": {"name": "check_http", "status": 2, "output": "down"},
        "action": "create",
    }
    doc.update(top)
    return doc


def go(**top: Any) -> dict[str, Any]:
    """A minimal valid Go event; ``top`` replaces top-level keys."""
    doc: dict[str, Any] = {
        "entity": {"metadata": {"name": "web-01"}},
        "check": {"metadata": {"name": "check-http"}, "status": 2, "output": "down"},
    }
    doc.update(top)
    return doc


def with_check(doc: dict[str, Any], **fields: Any) -> dict[str, Any]:
    doc["check"].update(fields)
    return doc


def go_annotated(
    check_annotations: dict[str, str] | None = None,
    entity_annotations: dict[str, str] | None = None,
    **check_fields: Any,
) -> dict[str, Any]:
    doc = go()
    if check_annotations is not None:
        doc["check"]["metadata"]["annotations"] = check_annotations
    if entity_annotations is not None:
        doc["entity"]["metadata"]["annotations"] = entity_annotations
    doc["check"].update(check_fields)
    return doc


# --- the two reference samples ---------------------------------------------------------------


def test_classic_critical_reference_sample() -> None:
    event = parse_event(load("classic-critical.json"))
    assert event == CLASSIC_CRITICAL
    assert event.incident_key == ("", "sensu.test.local", "testing")


def test_go_warning_reference_sample() -> None:
    event = parse_event(load("go-warning.json"))
    assert event.flavor == "go"
    assert event.id == ""
    assert event.source == "70faa7c58706"
    assert event.check == "helloworld"
    assert event.status == 1
    assert event.output == "Hello linux world!\n"
    assert event.action == "create"
    assert event.occurrences == 423
    assert event.occurrences_watermark == 423
    assert event.interval == 10
    assert event.namespace == "default"
    assert event.timestamp == 1548109478.0
    assert event.history == (1,) * 21
    assert event.silenced is False
    # Slack annotations are someone else's: they must not leak into hipchat overrides.
    assert event.check_overrides == Overrides()
    assert event.client_overrides == Overrides()
    assert event.incident_key == ("default", "70faa7c58706", "helloworld")


# --- every fixture ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "flavor", "source", "check", "status", "action", "occurrences", "watermark"),
    [
        ("classic-critical.json", "classic", "sensu.test.local", "testing", 2, "create", 1, 1),
        (
            "classic-resolve.json",
            "classic",
            "db-01.prod.example.com",
            "check_disk_root",
            0,
            "resolve",
            3,
            3,
        ),
        (
            "classic-flapping.json",
            "classic",
            "web-03.prod.example.com",
            "check_http_frontend",
            1,
            "flapping",
            1,
            1,
        ),
        (
            "classic-hipchat.json",
            "classic",
            "db-01.prod.example.com",
            "mysql_replication",
            2,
            "create",
            3,
            3,
        ),
        ("classic-proxy.json", "classic", "switch-42.dc1", "check_ping", 2, "create", 2, 2),
        (
            "classic-metric-ok.json",
            "classic",
            "app-07.prod.example.com",
            "metrics_cpu",
            0,
            "create",
            1,
            1,
        ),
        ("go-warning.json", "go", "70faa7c58706", "helloworld", 1, "create", 423, 423),
        ("go-critical.json", "go", "api-02", "check-http-api", 2, "create", 3, 3),
        ("go-resolution.json", "go", "api-02", "check-http-api", 0, "resolve", 1, 5),
        ("go-flapping.json", "go", "queue-01", "check-rabbitmq-queue", 1, "flapping", 1, 1),
        ("go-keepalive.json", "go", "web-01", "keepalive", 2, "create", 2, 2),
        ("go-annotations.json", "go", "pay-01", "check-payments-errors", 2, "create", 2, 2),
        ("go-namespace.json", "go", "billing-db-1", "check-backup-age", 1, "create", 1, 1),
    ],
)
def test_fixture_core_fields(
    name: str,
    flavor: str,
    source: str,
    check: str,
    status: int,
    action: str,
    occurrences: int,
    watermark: int,
) -> None:
    event = parse_event(load(name))
    assert (
        event.flavor,
        event.source,
        event.check,
        event.status,
        event.action,
        event.occurrences,
        event.occurrences_watermark,
    ) == (flavor, source, check, status, action, occurrences, watermark)
    assert event.history[-1] == status


def test_every_fixture_is_listed() -> None:
    assert len(ALL_FIXTURES) == 13


@pytest.mark.parametrize(
    ("name", "history"),
    [
        ("classic-resolve.json", (0, 0, 1, 2, 2, 2, 0)),
        ("classic-flapping.json", (0, 1) * 5),
        ("classic-metric-ok.json", (0, 0, 0)),
        ("go-resolution.json", (0,) * 15 + (2, 2, 2, 2, 2, 0)),
        ("go-keepalive.json", (0,) * 17 + (1, 1, 2, 2)),
    ],
)
def test_fixture_history(name: str, history: tuple[int, ...]) -> None:
    assert parse_event(load(name)).history == history


def test_go_keepalive_fixture() -> None:
    event = parse_event(load("go-keepalive.json"))
    assert event.check == "keepalive"
    assert event.output == "No keepalive sent from web-01 for 190 seconds (>= 180)"
    assert event.interval == 20
    assert event.id == "e2c4a6b8-1d3f-4a5c-9e7b-0f2d4c6a8e13"


def test_go_non_default_namespace_cron_silenced_fixture() -> None:
    event = parse_event(load("go-namespace.json"))
    assert event.namespace == "billing"
    assert event.interval is None  # cron check: interval 0
    assert event.silenced is True
    assert event.id == ""  # Go omits an empty id
    assert event.incident_key == ("billing", "billing-db-1", "check-backup-age")


def test_classic_hipchat_fixture() -> None:
    event = parse_event(load("classic-hipchat.json"))
    assert event.notification == "MySQL replication lag on db-01 is above 15 minutes"
    assert event.playbook == "https://wiki.example.com/runbooks/mysql-replication"
    assert event.handle_when == HandleWhen(occurrences=3, reset=900)
    # check.hipchat.room names rooms, so check.hipchat_room ("legacy-mysql") is not used.
    assert event.check_overrides == Overrides(
        room=("db-oncall", "ops"), notify=True, message_format="text"
    )
    assert event.client_overrides == Overrides(room=("dba", "ops"))
    assert event.contacts == ("dba", "ops")


def test_go_annotations_fixture() -> None:
    event = parse_event(load("go-annotations.json"))
    assert event.check_overrides == Overrides(
        room=("payments", "ops"), notify=True, message_format="text"
    )
    assert event.client_overrides == Overrides(room=("payments-team",), username="Sensu Go")
    assert event.handle_when == HandleWhen(occurrences=2, reset=600)
    assert event.notification == "Payments API error rate above 5%"
    assert event.playbook == "https://wiki.example.com/runbooks/payments-api"
    assert event.contacts == ("payments-oncall", "sre")


# --- shape detection and EventError ----------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "json_type"),
    [
        ([], "array"),
        ("{}", "string"),
        (3, "number"),
        (1.5, "number"),
        (None, "null"),
        (True, "boolean"),
    ],
)
def test_non_object_names_the_json_type(document: object, json_type: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event(document)
    assert str(info.value) == f"not a Sensu event: expected a JSON object, got {json_type}"


@pytest.mark.parametrize(
    ("document", "listed"),
    [
        ({}, "top-level keys: (none)"),
        ({"id": "x", "foo": 1}, "top-level keys: foo, id"),
        ({"check": {}, "client": {}}, 'top-level keys: check, client ("client" is present but'),
        ({"action": "create", "check": {}}, "top-level keys: action, check"),
    ],
)
def test_unknown_shape_lists_top_level_keys(document: dict[str, Any], listed: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event(document)
    message = str(info.value)
    assert message.startswith(
        'not a Sensu event: expected "client"+"action" (Sensu Classic) or '
        '"entity"+"check.metadata.name" (Sensu Go); '
    )
    assert listed in message


def test_unknown_shape_elides_many_keys() -> None:
    document = {f"k{i:02}": i for i in range(20)}
    with pytest.raises(EventError, match=r"k11, … \(8 more\)$"):
        parse_event(document)


def _set(doc: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """Set (or with value DELETE, remove) ``path`` (dotted) in ``doc``."""
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("client", "web-01", "Sensu Classic event: client: expected an object, got string"),
        ("client", None, "Sensu Classic event: client: expected an object, got null"),
        (
            "client.name",
            DELETE,
            "Sensu Classic event: client.name is missing (expected a non-empty string)",
        ),
        (
            "client.name",
            "",
            "Sensu Classic event: client.name: expected a non-empty string, got an empty string",
        ),
        (
            "client.name",
            7,
            "Sensu Classic event: client.name: expected a non-empty string, got number",
        ),
        ("check", DELETE, "Sensu Classic event: check is missing (expected an object)"),
        ("check", [], "Sensu Classic event: check: expected an object, got array"),
        (
            "check.name",
            DELETE,
            "Sensu Classic event: check.name is missing (expected a non-empty string)",
        ),
        (
            "check.name",
            {"a": 1},
            "Sensu Classic event: check.name: expected a non-empty string, got object",
        ),
        ("check.status", "2", "Sensu Classic event: check.status: expected an integer, got string"),
        (
            "check.status",
            True,
            "Sensu Classic event: check.status: expected an integer, got boolean",
        ),
        ("check.status", 2.0, "Sensu Classic event: check.status: expected an integer, got number"),
        ("check.status", None, "Sensu Classic event: check.status: expected an integer, got null"),
        (
            "check.status",
            DELETE,
            "Sensu Classic event: check.status is missing (expected an integer)",
        ),
        (
            "action",
            "update",
            'Sensu Classic event: action: expected one of "create", "resolve", "flapping", '
            'got "update"',
        ),
        (
            "action",
            None,
            'Sensu Classic event: action: expected one of "create", "resolve", "flapping", '
            "got null",
        ),
        (
            "action",
            "Create",
            'Sensu Classic event: action: expected one of "create", "resolve", "flapping", '
            'got "Create"',
        ),
    ],
)
def test_classic_errors(path: str, value: object, message: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event(_set(classic(), path, value))
    assert str(info.value) == message


def test_classic_error_cuts_a_long_action() -> None:
    with pytest.raises(EventError) as info:
        parse_event(classic(action="x" * 500))
    assert str(info.value).endswith('got "' + "x" * 40 + '"')


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("entity", [], "Sensu Go event: entity: expected an object, got array"),
        (
            "entity.metadata",
            DELETE,
            "Sensu Go event: entity.metadata is missing (expected an object)",
        ),
        (
            "entity.metadata.name",
            DELETE,
            "Sensu Go event: entity.metadata.name is missing (expected a non-empty string)",
        ),
        (
            "entity.metadata.name",
            "",
            "Sensu Go event: entity.metadata.name: expected a non-empty string, "
            "got an empty string",
        ),
        ("check", DELETE, 'Sensu Go event for entity "web-01" has no check'),
        ("check", None, 'Sensu Go event for entity "web-01" has no check'),
        ("check", "output", "Sensu Go event: check: expected an object, got string"),
        (
            "check.metadata",
            DELETE,
            "Sensu Go event: check.metadata is missing (expected an object)",
        ),
        (
            "check.metadata",
            "check-http",
            "Sensu Go event: check.metadata: expected an object, got string",
        ),
        (
            "check.metadata.name",
            DELETE,
            "Sensu Go event: check.metadata.name is missing (expected a non-empty string)",
        ),
        (
            "check.metadata.name",
            None,
            "Sensu Go event: check.metadata.name: expected a non-empty string, got null",
        ),
        ("check.status", "1", "Sensu Go event: check.status: expected an integer, got string"),
        ("check.status", DELETE, "Sensu Go event: check.status is missing (expected an integer)"),
    ],
)
def test_go_errors(path: str, value: object, message: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event(_set(go(), path, value))
    assert str(info.value) == message


def test_go_metrics_only_event() -> None:
    document = go(metrics={"points": [{"name": "cpu.user", "value": 1.5, "timestamp": 1}]})
    del document["check"]
    with pytest.raises(EventError) as info:
        parse_event(document)
    assert str(info.value) == (
        'Sensu Go event for entity "web-01" has no check (metrics-only event)'
    )


def test_go_check_name_is_not_metadata_name() -> None:
    document = go()
    document["check"] = {"name": "check-http", "status": 2}
    with pytest.raises(EventError, match=r"check\.metadata is missing"):
        parse_event(document)


def test_classic_shape_wins_when_both_shapes_are_present() -> None:
    # sensu-plugin's mutator adds "client" and "action" to a Go event.
    document = go(client={"name": "mapped"}, action="create")
    document["check"]["name"] = "mapped-check"
    event = parse_event(document)
    assert (event.flavor, event.source, event.check) == ("classic", "mapped", "mapped-check")


def _paths(node: object, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*prefix, index)
            yield from _paths(value, (*prefix, index))


MUTANTS: list[object] = [DELETE, None, "", "x", "[1]", 0, -1, 2.5, True, [], [None], {}]


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_no_mutation_raises_anything_but_event_error(name: str) -> None:
    """Replace or delete every key and list item in turn: an Event or an EventError, always."""
    original = load(name)
    outcomes = {"event": 0, "error": 0}
    for path in _paths(original):
        for mutant in MUTANTS:
            document = copy.deepcopy(original)
            node: Any = document
            for key in path[:-1]:
                node = node[key]
            if mutant is DELETE:
                del node[path[-1]]
            else:
                node[path[-1]] = copy.deepcopy(mutant)
            try:
                parse_event(document)
            except EventError:
                outcomes["error"] += 1
            else:
                outcomes["event"] += 1
    # Both happen: required keys reject, optional keys are lenient.
    assert outcomes["event"] > 0
    assert outcomes["error"] > 0


# --- source, status, history -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [("switch-1", "switch-1"), ("", "web-01"), (None, "web-01"), (5, "web-01")],
)
def test_classic_source(source: object, expected: str) -> None:
    assert parse_event(with_check(classic(), source=source)).source == expected


@pytest.mark.parametrize(
    ("proxy", "expected"),
    [("router-9", "router-9"), ("", "web-01"), (None, "web-01"), (["x"], "web-01")],
)
def test_go_proxy_entity_source(proxy: object, expected: str) -> None:
    event = parse_event(with_check(go(), proxy_entity_name=proxy))
    assert event.source == expected
    assert event.incident_key == ("default", expected, "check-http")


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        (["0", "1", "2"], (0, 1, 2)),
        (["2", "x", 1, None, "-1", " 2 ", "", "1.5", True, "3"], (2, 3, 1, 3, -1, 2, 3, 3, 3, 3)),
        ([], ()),
        ("0,1,2", ()),
        (None, ()),
    ],
)
def test_classic_history(history: object, expected: tuple[int, ...]) -> None:
    assert parse_event(with_check(classic(), history=history)).history == expected


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ([{"status": 0, "executed": 1}, {"status": 2, "executed": 2}], (0, 2)),
        ([{"status": "1"}, {"executed": 2}, 5, None, {"status": 1}], (3, 3, 3, 3, 1)),
        ({"status": 1}, ()),
    ],
)
def test_go_history(history: object, expected: tuple[int, ...]) -> None:
    assert parse_event(with_check(go(), history=history)).history == expected


# --- action ----------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["create", "resolve", "flapping"])
def test_classic_action_is_taken_as_sent(action: str) -> None:
    assert parse_event(classic(action=action)).action == action


def _hist(*statuses: object) -> list[dict[str, object]]:
    return [
        {"status": status, "executed": 1700000000 + 60 * i} for i, status in enumerate(statuses)
    ]


@pytest.mark.parametrize(
    ("state", "status", "history", "action"),
    [
        ("passing", 0, _hist(2, 0), "resolve"),
        ("passing", 0, _hist(0, 0, 1, 2, 0), "resolve"),
        ("passing", 0, _hist(3, 0), "resolve"),
        ("passing", 0, _hist("bad", 0), "resolve"),  # a malformed entry is unknown, not OK
        ("passing", 0, _hist(0, 0), "create"),  # every OK is "passing": not a resolution
        ("passing", 0, _hist(0), "create"),
        ("passing", 0, [], "create"),
        ("failing", 0, _hist(0, 0), "create"),  # sensu-plugin test data: failing with status 0
        ("failing", 0, _hist(1, 0), "resolve"),  # the status decides, not the state
        ("failing", 2, _hist(0, 2), "create"),
        ("failing", 1, _hist(2, 1), "create"),
        (None, 1, _hist(1), "create"),
        ("flapping", 1, _hist(0, 1, 0, 1), "flapping"),
        ("flapping", 0, _hist(1, 0), "flapping"),
    ],
)
def test_go_action_derivation(
    state: str | None, status: int, history: list[dict[str, object]], action: str
) -> None:
    assert (
        parse_event(with_check(go(), state=state, status=status, history=history)).action == action
    )


# --- counts, interval, timestamp, id, output -------------------------------------------------


@pytest.mark.parametrize(
    ("occurrences", "watermark", "expected"),
    [
        (5, 7, (5, 7)),
        (5, None, (5, 5)),
        (None, None, (1, 1)),
        ("3", 3, (1, 3)),
        (-2, 3, (1, 3)),
        (4, 0, (4, 4)),  # Go before 5.9 could send a zero watermark
        (0, 0, (0, 0)),
        (True, 2, (1, 2)),
    ],
)
def test_occurrences_and_watermark(
    occurrences: object, watermark: object, expected: tuple[int, int]
) -> None:
    classic_doc = classic(occurrences=occurrences, occurrences_watermark=watermark)
    go_doc = with_check(go(), occurrences=occurrences, occurrences_watermark=watermark)
    for document in (classic_doc, go_doc):
        event = parse_event(document)
        assert (event.occurrences, event.occurrences_watermark) == expected


def test_classic_counts_are_top_level_not_check_threshold() -> None:
    # In Classic, check.occurrences is the filter threshold, not the count.
    document = with_check(classic(occurrences=7), occurrences=3)
    assert parse_event(document).occurrences == 7


def test_go_counts_are_inside_check() -> None:
    document = with_check(go(occurrences=9), occurrences=4)
    assert parse_event(document).occurrences == 4


@pytest.mark.parametrize(
    ("interval", "expected"),
    [(60, 60), (1, 1), (0, None), (-5, None), ("60", None), (60.5, None), (True, None)],
)
def test_interval(interval: object, expected: int | None) -> None:
    assert parse_event(with_check(classic(), interval=interval)).interval == expected
    assert parse_event(with_check(go(), interval=interval)).interval == expected


@pytest.mark.parametrize(
    ("timestamp", "executed", "expected"),
    [
        (1700000000, 1600000000, 1700000000.0),
        (1700000000.25, None, 1700000000.25),
        (None, 1600000000, 1600000000.0),
        ("1700000000", 1600000000, 1600000000.0),
        (float("nan"), 1600000000, 1600000000.0),
        (float("inf"), None, 0.0),
        (True, 1600000000, 1600000000.0),
        (None, None, 0.0),
    ],
)
def test_timestamp_falls_back_to_executed(
    timestamp: object, executed: object, expected: float
) -> None:
    for base in (classic(), go()):
        document = with_check(dict(base, timestamp=timestamp), executed=executed)
        assert parse_event(document).timestamp == expected


@pytest.mark.parametrize(("given", "expected"), [("abc-123", "abc-123"), (None, ""), (42, "")])
def test_id_is_kept_or_empty(given: object, expected: str) -> None:
    assert parse_event(classic(id=given)).id == expected
    assert parse_event(go(id=given)).id == expected


def test_go_without_id_has_empty_id() -> None:
    assert parse_event(go()).id == ""


@pytest.mark.parametrize(
    ("output", "expected"), [("boom\n", "boom\n"), ("", ""), (None, ""), (3, "")]
)
def test_output(output: object, expected: str) -> None:
    assert parse_event(with_check(classic(), output=output)).output == expected
    assert parse_event(with_check(go(), output=output)).output == expected


# --- silenced, namespace, handle -------------------------------------------------------------


@pytest.mark.parametrize(
    ("silenced", "expected"), [(True, True), (False, False), ("yes", False), (None, False)]
)
def test_classic_silenced(silenced: object, expected: bool) -> None:
    assert parse_event(classic(silenced=silenced)).silenced is expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"is_silenced": True}, True),
        ({"silenced": ["linux:*"]}, True),
        ({"is_silenced": False, "silenced": ["*:check-http"]}, True),
        ({"is_silenced": False, "silenced": []}, False),
        ({"is_silenced": "true"}, False),
        ({"silenced": "linux:*"}, False),
        ({}, False),
    ],
)
def test_go_silenced(fields: dict[str, object], expected: bool) -> None:
    assert parse_event(with_check(go(), **fields)).silenced is expected


@pytest.mark.parametrize(
    ("top", "entity_ns", "check_ns", "expected"),
    [
        ({"namespace": "prod"}, "other", "other", "prod"),
        ({}, "staging", "other", "staging"),  # old Go versions send metadata: {}
        (None, None, "checks", "checks"),
        ({"namespace": ""}, "", None, "default"),
        ("prod", None, None, "default"),
        (None, None, None, "default"),
    ],
)
def test_go_namespace(
    top: object, entity_ns: str | None, check_ns: str | None, expected: str
) -> None:
    document = go()
    if top is not None:
        document["metadata"] = top
    if entity_ns is not None:
        document["entity"]["metadata"]["namespace"] = entity_ns
    if check_ns is not None:
        document["check"]["metadata"]["namespace"] = check_ns
    assert parse_event(document).namespace == expected


def test_classic_has_no_namespace() -> None:
    assert parse_event(classic(metadata={"namespace": "x"})).namespace is None


@pytest.mark.parametrize(
    ("handle", "expected"), [(False, False), (True, True), (None, True), ("false", True), (0, True)]
)
def test_classic_handle(handle: object, expected: bool) -> None:
    assert parse_event(with_check(classic(), handle=handle)).handle is expected


def test_classic_handle_defaults_true() -> None:
    assert parse_event(classic()).handle is True


def test_go_handle_from_json_attributes() -> None:
    document = go_annotated({"sensu.io.json_attributes": '{"handle": false}'})
    assert parse_event(document).handle is False


# --- notification, playbook ------------------------------------------------------------------


def test_classic_notification_and_playbook() -> None:
    document = with_check(classic(), notification="Disk full", playbook="https://wiki/disk")
    event = parse_event(document)
    assert (event.notification, event.playbook) == ("Disk full", "https://wiki/disk")


@pytest.mark.parametrize("value", ["", None, 3, ["x"]])
def test_classic_notification_and_playbook_ignore_non_text(value: object) -> None:
    event = parse_event(with_check(classic(), notification=value, playbook=value))
    assert (event.notification, event.playbook) == (None, None)


@pytest.mark.parametrize(
    ("annotations", "notification", "playbook"),
    [
        (
            {
                "playbook": "plain",
                PREFIX + "playbook": "keyspace",
                PREFIX + "notification": "note",
                "sensu.io.json_attributes": '{"playbook": "attr", "notification": "attr note"}',
            },
            "note",
            "plain",
        ),
        (
            {
                PREFIX + "playbook": "keyspace",
                "sensu.io.json_attributes": '{"playbook": "attr", "notification": "attr note"}',
            },
            "attr note",
            "keyspace",
        ),
        ({"sensu.io.json_attributes": '{"playbook": "attr"}'}, None, "attr"),
        ({"playbook": "", PREFIX + "playbook": "keyspace"}, None, "keyspace"),
        ({"notification": "plain notification is not read"}, None, None),
    ],
)
def test_go_notification_and_playbook(
    annotations: dict[str, str], notification: str | None, playbook: str | None
) -> None:
    event = parse_event(go_annotated(annotations))
    assert (event.notification, event.playbook) == (notification, playbook)


def test_go_inline_check_attributes_are_read() -> None:
    # Sensu Go 5.x serialised custom check attributes inline in the check object.
    event = parse_event(with_check(go(), playbook="inline", hipchat_room="inline-room"))
    assert event.playbook == "inline"
    assert event.check_overrides.room == ("inline-room",)


def test_go_entity_annotations_do_not_give_a_playbook() -> None:
    event = parse_event(go_annotated(entity_annotations={"playbook": "entity"}))
    assert event.playbook is None


# --- handle_when -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("handle_when", "expected"),
    [
        ({"occurrences": 3, "reset": 900}, HandleWhen(3, 900)),
        ({"occurrences": 3}, HandleWhen(3, 1800)),
        ({"reset": 0}, HandleWhen(1, 0)),
        ({}, HandleWhen(1, 1800)),
        ({"occurrences": 0, "reset": -1}, HandleWhen(1, 1800)),
        ({"occurrences": "3", "reset": "900"}, HandleWhen(1, 1800)),
        ({"occurrences": 2.0, "reset": True}, HandleWhen(1, 1800)),
        ("occurrences=3", HandleWhen(1, 1800)),
        (None, HandleWhen(1, 1800)),
    ],
)
def test_classic_handle_when(handle_when: object, expected: HandleWhen) -> None:
    assert parse_event(with_check(classic(), handle_when=handle_when)).handle_when == expected


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({PREFIX + "handle_when": '{"occurrences": 5, "reset": 3600}'}, HandleWhen(5, 3600)),
        (
            {
                PREFIX + "handle_when": '{"occurrences": 5}',
                "sensu.io.json_attributes": '{"handle_when": {"occurrences": 9, "reset": 60}}',
            },
            HandleWhen(5, 1800),
        ),
        (
            {
                PREFIX + "handle_when": "not json",
                "sensu.io.json_attributes": '{"handle_when": {"occurrences": 9, "reset": 60}}',
            },
            HandleWhen(9, 60),
        ),
        ({PREFIX + "handle_when": "[3, 1800]"}, HandleWhen(1, 1800)),
        ({"sensu.io.json_attributes": "{broken"}, HandleWhen(1, 1800)),
        ({}, HandleWhen(1, 1800)),
    ],
)
def test_go_handle_when(annotations: dict[str, str], expected: HandleWhen) -> None:
    assert parse_event(go_annotated(annotations)).handle_when == expected


# --- Classic overrides -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {
                "hipchat": {
                    "room": "ops",
                    "notify": True,
                    "username": "db",
                    "message_format": "text",
                }
            },
            Overrides(room=("ops",), notify=True, username="db", message_format="text"),
        ),
        ({"hipchat": {"room": ["a", "b", "a"]}}, Overrides(room=("a", "b"))),
        ({"hipchat": {"room": 12345}}, Overrides(room=("12345",))),
        ({"hipchat": {"room": [" a ", "", None, 7, True, {"x": 1}]}}, Overrides(room=("a", "7"))),
        ({"hipchat": {"room": "main"}, "hipchat_room": "legacy"}, Overrides(room=("main",))),
        ({"hipchat": {"room": []}, "hipchat_room": "legacy"}, Overrides(room=("legacy",))),
        (
            {"hipchat": {"notify": True}, "hipchat_room": ["x", "y"]},
            Overrides(room=("x", "y"), notify=True),
        ),
        ({"hipchat_room": "legacy"}, Overrides(room=("legacy",))),
        ({"hipchat_room": ""}, Overrides()),
        ({"hipchat": {"notify": "true"}}, Overrides()),
        ({"hipchat": {"message_format": "TEXT "}}, Overrides(message_format="text")),
        ({"hipchat": {"message_format": "markdown"}}, Overrides()),
        ({"hipchat": {"username": ""}}, Overrides()),
        ({"hipchat": "ops"}, Overrides()),
        ({"hipchat": None, "hipchat_room": None}, Overrides()),
    ],
)
def test_classic_overrides(fields: dict[str, object], expected: Overrides) -> None:
    check_doc = with_check(classic(), **fields)
    assert parse_event(check_doc).check_overrides == expected
    client_doc = classic()
    client_doc["client"].update(fields)
    event = parse_event(client_doc)
    assert event.client_overrides == expected
    assert event.check_overrides == Overrides()


# --- Go overrides ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({PREFIX + "room": '["a", "b"]'}, Overrides(room=("a", "b"))),
        ({PREFIX + "room": "ops"}, Overrides(room=("ops",))),
        ({PREFIX + "room": "12345"}, Overrides(room=("12345",))),
        ({PREFIX + "room": "[]"}, Overrides()),
        ({PREFIX + "room": ""}, Overrides()),
        ({PREFIX + "notify": "true"}, Overrides(notify=True)),
        ({PREFIX + "notify": " false "}, Overrides(notify=False)),
        ({PREFIX + "notify": "yes"}, Overrides()),
        ({PREFIX + "notify": "1"}, Overrides()),
        ({PREFIX + "username": "Sensu Go"}, Overrides(username="Sensu Go")),
        ({PREFIX + "message_format": "text"}, Overrides(message_format="text")),
        ({PREFIX + "message_format": "rtf"}, Overrides()),
        ({"sensu.io/plugins/slack/config/channel": "#ops"}, Overrides()),
        (
            {"sensu.io.json_attributes": '{"hipchat": {"room": "attr", "notify": false}}'},
            Overrides(room=("attr",), notify=False),
        ),
        (
            {
                "sensu.io.json_attributes": '{"hipchat": {"room": "attr", "notify": false}}',
                PREFIX + "room": "annotation",
            },
            Overrides(room=("annotation",), notify=False),
        ),
        (
            {
                "sensu.io.json_attributes": (
                    '{"hipchat_room": "legacy", "hipchat": {"username": "a"}}'
                ),
                PREFIX + "username": "b",
                PREFIX + "notify": "maybe",
            },
            Overrides(room=("legacy",), username="b"),
        ),
        ({"sensu.io.json_attributes": '["not", "an", "object"]'}, Overrides()),
    ],
)
def test_go_overrides(annotations: dict[str, str], expected: Overrides) -> None:
    event = parse_event(go_annotated(annotations))
    assert event.check_overrides == expected
    assert event.client_overrides == Overrides()
    event = parse_event(go_annotated(entity_annotations=annotations))
    assert event.client_overrides == expected
    assert event.check_overrides == Overrides()


def test_go_annotations_that_are_not_strings_are_ignored() -> None:
    document = go()
    document["check"]["metadata"]["annotations"] = {PREFIX + "room": ["a"], PREFIX + "notify": True}
    assert parse_event(document).check_overrides == Overrides()
    document["check"]["metadata"]["annotations"] = "room=a"
    assert parse_event(document).check_overrides == Overrides()


# --- contacts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check_fields", "client_fields", "expected"),
    [
        ({"contact": "dba"}, {}, ("dba",)),
        ({"contacts": ["ops", "dba"]}, {}, ("ops", "dba")),
        (
            {"contact": "dba", "contacts": ["ops", "dba"]},
            {"contacts": ["sre", "ops"]},
            ("dba", "ops", "sre"),
        ),
        ({}, {"contact": "web"}, ("web",)),
        ({"contacts": "ops"}, {}, ("ops",)),
        ({"contacts": [1, None, "", "ops"]}, {"contact": ["x"]}, ("1", "ops", "x")),
        ({"contact": {"name": "x"}}, {}, ()),
        ({}, {}, ()),
    ],
)
def test_classic_contacts(
    check_fields: dict[str, object], client_fields: dict[str, object], expected: tuple[str, ...]
) -> None:
    document = with_check(classic(), **check_fields)
    document["client"].update(client_fields)
    assert parse_event(document).contacts == expected


@pytest.mark.parametrize(
    ("check_annotations", "entity_annotations", "expected"),
    [
        ({PREFIX + "contacts": '["ops", "dba"]'}, {}, ("ops", "dba")),
        ({PREFIX + "contacts": "ops"}, {PREFIX + "contacts": '["web", "ops"]'}, ("ops", "web")),
        (
            {
                PREFIX + "contacts": "ann",
                "sensu.io.json_attributes": '{"contact": "attr1", "contacts": ["attr2"]}',
            },
            {"sensu.io.json_attributes": '{"contacts": ["ent"]}'},
            ("ann", "attr1", "attr2", "ent"),
        ),
        ({"contacts": "plain annotations are not read"}, {}, ()),
    ],
)
def test_go_contacts(
    check_annotations: dict[str, str],
    entity_annotations: dict[str, str],
    expected: tuple[str, ...],
) -> None:
    assert parse_event(go_annotated(check_annotations, entity_annotations)).contacts == expected


def test_event_is_frozen() -> None:
    event = parse_event(classic())
    with pytest.raises(AttributeError):
        event.status = 0  # type: ignore[misc]


# --- fast-path edges -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        (["07", "²", "٣", "1_0", "+1"], (7, 3, 3, 3, 1)),  # int() takes more than Sensu's digits
        ([2, "0"], (2, 0)),
    ],
)
def test_classic_history_only_ascii_digits_are_statuses(
    history: list[object], expected: tuple[int, ...]
) -> None:
    assert parse_event(with_check(classic(), history=history)).history == expected


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        (_hist(1, True, 2.0, 0), (1, 3, 3, 0)),
        (_hist(0, None), (0, 3)),
        ([{"status": 1}, {"status": 2}, ["status"]], (1, 2, 3)),
        ([{"status": 1}, "status", {"status": 2}], (1, 3, 2)),
    ],
)
def test_go_history_with_one_malformed_status(
    history: list[object], expected: tuple[int, ...]
) -> None:
    assert parse_event(with_check(go(), history=history)).history == expected


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({PREFIX + "notify": "\ttrue\r\n"}, Overrides(notify=True)),
        ({PREFIX + "notify": "True"}, Overrides()),
        ({PREFIX + "notify": "\u00a0true"}, Overrides()),  # not JSON whitespace
        ({PREFIX + "room": '\n ["a", "b"] '}, Overrides(room=("a", "b"))),
        ({PREFIX + "room": '["a", "b"'}, Overrides(room=('["a", "b"',))),
        ({PREFIX.upper() + "room": "loud"}, Overrides()),
    ],
)
def test_go_annotation_values_parse_as_json_does(
    annotations: dict[str, str], expected: Overrides
) -> None:
    assert parse_event(go_annotated(annotations)).check_overrides == expected


def test_go_handle_when_annotation_with_leading_whitespace() -> None:
    document = go_annotated({PREFIX + "handle_when": ' \n{"occurrences": 4}'})
    assert parse_event(document).handle_when == HandleWhen(4, 1800)


@pytest.mark.parametrize("name", ["classic-hipchat.json", "go-annotations.json"])
def test_objects_need_not_be_dicts(name: str) -> None:
    """Any Mapping reads as the dict json gives would."""

    def frozen(value: object) -> object:
        if isinstance(value, dict):
            return MappingProxyType({k: frozen(v) for k, v in value.items()})
        if isinstance(value, list):
            return [frozen(v) for v in value]
        return value

    document = load(name)
    assert parse_event(frozen(document)) == parse_event(document)


def test_a_timestamp_too_large_for_a_float_is_ignored() -> None:
    document = load("classic-critical.json")
    document["timestamp"] = 10**400
    document["check"]["executed"] = 10**400
    assert parse_event(document).timestamp == 0.0


@pytest.mark.parametrize(
    ("status", "name"),
    [(0, "ok"), (1, "warning"), (2, "critical"), (3, "unknown"), (42, "unknown"), (-2, "unknown")],
)
def test_severity(status: int, name: str) -> None:
    # The one mapping the filters (severities) and render (status word, colour) share.
    assert severity(status) == name


@pytest.mark.parametrize(
    "module",
    ["hipchatd.sensu.events", "hipchatd.sensu.model", "hipchatd.sensu.framing"],
)
def test_vocabulary_modules_import_no_configuration(module: str) -> None:
    """Overrides, MessageFormat, Severity and Framing live below config, which imports them."""
    probe = f"import sys, {module}; print(sorted(m for m in sys.modules if 'hipchatd' in m))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], env=child_env(), capture_output=True, text=True, check=True
    ).stdout
    assert module in loaded
    assert "hipchatd.config" not in loaded


def test_events_exports_the_model_it_builds() -> None:
    """Callers import the parser and its model from one module: the model's own objects."""
    exported = [name for name in model.__all__ if name in events.__all__]
    assert set(model.__all__) - set(exported) == {
        "DEFAULT_HANDLE_WHEN_OCCURRENCES",
        "DEFAULT_HANDLE_WHEN_RESET",
        "UNKNOWN_STATUS",
        "new_event",
    }
    for name in exported:
        assert getattr(events, name) is getattr(model, name), name


def test_new_event_builds_what_the_dataclass_builds() -> None:
    """``new_event`` takes Event's fields in order and gives an equal, frozen, hashable Event."""
    fields = [field.name for field in dataclasses.fields(model.Event)]
    assert list(inspect.signature(model.new_event).parameters) == fields
    parsed_fixtures = 0
    for name in ALL_FIXTURES:
        try:
            parsed = parse_event(load(name))
        except EventError:
            continue
        parsed_fixtures += 1
        values = {name: getattr(parsed, name) for name in fields}
        built = model.new_event(**values)
        assert type(built) is model.Event
        assert built == model.Event(**values)
        assert hash(built) == hash(model.Event(**values))
        assert dataclasses.replace(built, id="other").id == "other"
        with pytest.raises(dataclasses.FrozenInstanceError):
            built.id = "other"  # type: ignore[misc]
    assert parsed_fixtures > 10


_ATTRIBUTE_KEYS = ("hipchat", "hipchat_room", "contact", "contacts")
_CHECK_KEYS = (*_ATTRIBUTE_KEYS, "handle_when", "notification", "playbook")


@pytest.mark.parametrize(
    ("make", "part", "key"),
    [
        *((classic, "check", key) for key in _CHECK_KEYS),
        *((classic, "client", key) for key in _ATTRIBUTE_KEYS),
        *((go, "check", key) for key in _CHECK_KEYS),
        *((go, "entity", key) for key in _ATTRIBUTE_KEYS),
    ],
)
def test_an_attribute_given_as_null_reads_as_one_not_given(make: Any, part: str, key: str) -> None:
    """An object naming no attribute at all gives the defaults that null values give."""
    given = make()
    given[part][key] = None
    assert parse_event(given) == parse_event(make())
    # And one attribute that is set is read, whichever of them it is.
    named = make()
    named[part][key] = {"room": "ops"} if key == "hipchat" else "ops"
    if key == "handle_when":
        named[part][key] = {"occurrences": 3, "reset": 60}
    assert parse_event(named) != parse_event(make())
