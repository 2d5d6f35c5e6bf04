"""Sensu event payloads for the load generator, built from the test fixtures.

Each payload is a real Classic or Go event from ``tests/fixtures``, made
compact (as Sensu writes it) and normalised so that it passes hipchatd's
filters: status 1 or 2, ``occurrences`` 1, not silenced, no ``handle_when``,
and no routing of its own (the daemon's configured room applies), so that one
event means exactly one notification. Small Classic events get realistic
multi-line check output so every payload is 1-5 KB.

A template holds :data:`PLACEHOLDER` in the event id and at the start of
``check.output`` (and, for the ingest mix, in the check name, so that every
event is its own incident, as in a large fleet, and a storm summary keeps one
line per event). The generator replaces it with the 8-digit sequence number,
which keeps the size constant and lets the harness find the event again in
the message the emulator received (:func:`find_seqs`), even when the daemon
folds several events into one summary message.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "PLACEHOLDER",
    "ROOM",
    "events_in",
    "fill",
    "find_seq",
    "find_seqs",
    "ingest_templates",
    "storm_templates",
    "verify",
]

#: Replaced by the generator with ``b"%08d" % seq``: same length, so sizes do not drift.
PLACEHOLDER = b"@SEQNUM@"
#: The room every ingest and delivery scenario posts to (the daemon's ``hipchat.room``).
ROOM = "bench"

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

#: Fixtures whose shapes make up the mix: Classic plain, proxy, flapping, with attributes;
#: Go agent, keepalive, namespaced, annotated. Metric and resolve shapes are left out:
#: they would be filtered (status 0), and the scenarios want every event notified.
_CLASSIC = ("classic-critical", "classic-proxy", "classic-flapping", "classic-hipchat")
_GO = ("go-critical", "go-warning", "go-keepalive", "go-namespace", "go-annotations")

_MIN_BYTES = 1024
_MAX_BYTES = 5 * 1024
_MARKER = "[bench {}] "
_SEQ = re.compile(r"\[bench (\d{8})\]")
#: The header of a storm summary message (hipchatd.coalesce): "12 events: 9 critical, ...".
_SUMMARY = re.compile(r"(\d+) events: ")
#: Routing and filtering attributes removed so the daemon's defaults decide.
_ATTRIBUTES = (
    "hipchat",
    "hipchat_room",
    "contact",
    "contacts",
    "handle",
    "handle_when",
    "notification",
    "playbook",
)
#: What a disk check prints on a busy host: filler for events under 1 KB.
_DISK_LINES = [
    f"/dev/mapper/vg0-lv{i} {20 + i * 7}G {12 + i * 5}G {8 + i}G {60 + i}% /srv/data{i}"
    for i in range(16)
]


def _compact(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _seq_id(original: object) -> str:
    text = original if isinstance(original, str) and len(original) >= 8 else "0" * 36
    return text[:-8] + PLACEHOLDER.decode()


def _strip(obj: dict[str, Any]) -> None:
    for key in _ATTRIBUTES:
        obj.pop(key, None)


def _strip_annotations(metadata: dict[str, Any]) -> None:
    annotations = metadata.get("annotations")
    if isinstance(annotations, dict):
        for key in list(annotations):
            if key.startswith("sensu.io/plugins/hipchat/") or key in (
                "sensu.io.json_attributes",
                "playbook",
            ):
                del annotations[key]


def _classic(doc: dict[str, Any], status: int, room: str | None) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    check, client = doc["check"], doc["client"]
    _strip(check)
    _strip(client)
    doc.update(
        id=_seq_id(doc.get("id")),
        action="create",
        occurrences=1,
        occurrences_watermark=1,
        silenced=False,
        silenced_by=[],
    )
    check.update(status=status, type="standard", history=["0", str(status)])
    check["output"] = _MARKER.format(PLACEHOLDER.decode()) + str(check.get("output", ""))
    if room is not None:
        check["hipchat_room"] = room
    return doc


def _go(doc: dict[str, Any], status: int, room: str | None) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    check, entity = doc["check"], doc["entity"]
    _strip(check)
    _strip(entity)
    _strip_annotations(check["metadata"])
    _strip_annotations(entity["metadata"])
    doc["id"] = _seq_id(doc.get("id"))
    check.pop("silenced", None)
    check.update(
        status=status,
        state="failing",
        occurrences=1,
        occurrences_watermark=1,
        is_silenced=False,
        proxy_entity_name="",
    )
    history = check.get("history") if isinstance(check.get("history"), list) else []
    history = [*history[-20:-1], {"status": status, "executed": check.get("executed", 0)}]
    if len(history) >= 2:
        history[-2] = {"status": 0, "executed": history[-2].get("executed", 0)}
    check["history"] = history
    check["output"] = _MARKER.format(PLACEHOLDER.decode()) + str(check.get("output", ""))
    if room is not None:
        check["metadata"].setdefault("annotations", {})
        check["metadata"]["annotations"]["sensu.io/plugins/hipchat/config/room"] = room
    return doc


def _padded(doc: dict[str, Any]) -> dict[str, Any]:
    """Give a small event the multi-line output of a real disk check, up to 1 KB."""
    lines = iter(_DISK_LINES)
    while len(_compact(doc)) < _MIN_BYTES:
        doc["check"]["output"] += next(lines) + "\n"
    return doc


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text("utf-8"))
    return data


def ingest_templates(*, ok: bool = False) -> list[bytes]:
    """The ingest mix: one template per fixture shape, statuses 1 and 2 alternating.

    ``ok``: status 0 instead, so every event is parsed and then filtered
    (``status_ok``) without being queued or delivered.
    """
    out: list[bytes] = []
    for i, name in enumerate((*_CLASSIC, *_GO)):
        status = 0 if ok else 2 if i % 2 == 0 else 1
        doc = _load(name)
        if name.startswith("classic"):
            made = _classic(doc, status, None)
            made["check"]["name"] += "-" + PLACEHOLDER.decode()
        else:
            made = _go(doc, status, None)
            made["check"]["metadata"]["name"] += "-" + PLACEHOLDER.decode()
        out.append(_compact(_padded(made)))
    return out


def storm_templates(checks: int, rooms: int) -> list[bytes]:
    """One template per check, ``storm-NNN`` routed to room ``storm-room-(N % rooms)``.

    Event ``seq`` uses template ``seq % checks``; its status flips between 2 and 1
    at each round (a flapping storm), so every event passes the filters
    with ``occurrences`` 1 and the latest state of a check is its last event.
    """
    shapes = [_load(name) for name in (*_CLASSIC, *_GO)]
    out: list[bytes] = []
    for i in range(checks):
        name = f"storm-{i:03d}"
        room = storm_room(i, rooms)
        shape = (*_CLASSIC, *_GO)[i % len(shapes)]
        doc = shapes[i % len(shapes)]
        if shape.startswith("classic"):
            made = _classic(doc, 2, room)
            made["check"]["name"] = name
        else:
            made = _go(doc, 2, room)
            made["check"]["metadata"]["name"] = name
        out.append(_compact(_padded(made)))
    return out


def storm_room(check: int, rooms: int) -> str:
    """The room check number ``check`` reports to in the storm."""
    return f"storm-room-{check % rooms:02d}"


def storm_payload(templates: Sequence[bytes], seq: int) -> bytes:
    """Storm event ``seq``: its check's template, status 2 on even rounds and 1 on odd ones."""
    data = fill(templates[seq % len(templates)], seq)
    if (seq // len(templates)) % 2:
        data = data.replace(b'"status":2', b'"status":1').replace(b'"2"]', b'"1"]')
    return data


def fill(template: bytes, seq: int) -> bytes:
    """The payload of event ``seq`` from ``template``."""
    return template.replace(PLACEHOLDER, b"%08d" % seq)


def find_seq(message: str) -> int | None:
    """The first sequence number in a delivered message's text, or None."""
    m = _SEQ.search(message)
    return int(m.group(1)) if m else None


def find_seqs(message: str) -> list[int]:
    """Every sequence number in a delivered message (a summary holds several)."""
    return [int(x) for x in _SEQ.findall(message)]


def events_in(message: str) -> int:
    """How many events a message stands for: a summary's "N events:" header, else 1."""
    m = _SUMMARY.match(message)
    return int(m.group(1)) if m else 1


def verify(payloads: Iterable[bytes], room: str | None = None) -> list[str]:
    """Problems that would make a payload not measure what it should, as text lines.

    Checks size (1-5 KB), and with hipchatd's own pure functions that it
    parses, passes the default filters and routes to exactly one room
    (``room`` when given).
    """
    from hipchatd.config import HipChatSettings, Secret
    from hipchatd.delivery.routing import route
    from hipchatd.sensu.events import parse_event
    from hipchatd.sensu.filters import skip_reason

    settings = HipChatSettings(api_token=Secret("x"), room=(ROOM,))
    problems: list[str] = []
    for i, data in enumerate(payloads):
        if not _MIN_BYTES <= len(data) <= _MAX_BYTES:
            problems.append(f"payload {i}: {len(data)} bytes, outside 1-5 KB")
        event = parse_event(json.loads(data))
        reason = skip_reason(event, settings)
        if reason is not None:
            problems.append(f"payload {i}: filtered ({reason})")
        targets = route(event, settings, {})
        want = room or ROOM
        if [t.name for t in targets] != [want]:
            problems.append(f"payload {i}: routes to {[t.name for t in targets]}, not {want}")
        if find_seq(event.output) is None:
            problems.append(f"payload {i}: no sequence marker in the output")
    return problems
