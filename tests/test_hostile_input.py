"""Hostile input never stops the daemon: the corpus, the fault boundaries, rooms per event.

The corpus tests send every input of ``tests/corpus/`` and of the generated
families below to a live daemon (the real App, the real emulator, loopback
sockets) over TCP and UDP, and after each input (or batch) require a valid
canary to be delivered with ``hipchatd_internal_errors_total`` still 0.
"""

from __future__ import annotations

import io
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trio.testing

from hipchatd import app as app_module
from hipchatd.config import DaemonSettings
from hipchatd.emulator import Emulator
from hipchatd.errors import EventError
from hipchatd.ingest import intake, listeners
from hipchatd.ingest.intake import MAX_NESTING
from hipchatd.metrics import Metrics
from hipchatd.ops import logconfig
from hipchatd.reasons import RejectReason
from hipchatd.sensu.events import MAX_NAME_CHARS, parse_event
from hipchatd.sensu.framing import Document, Rejected, preview
from tests import hostile
from tests.conftest import StartDaemon, classic_event, send_tcp, send_udp, wait_until
from tests.hostile import (
    CANARY_ROOM,
    MAX_DATAGRAM,
    NO_LIMITS,
    Canary,
    Path_,
    classic_base,
    encode,
    go_base,
    internal_errors,
    paths,
    send,
    unlimited_emulator,
)
from tests.logcapture import capture_logs
from tests.processes import Child

CORPUS = Path(__file__).parent / "corpus"
#: Generated inputs sent between two canaries.
BATCH = 100


@pytest.fixture
async def emulator(nursery: trio.Nursery) -> Emulator:
    """The emulator without rate or flood limits: hundreds of canaries go to one room."""
    return await unlimited_emulator(nursery)


async def _daemon(start_daemon: StartDaemon, **settings: Any) -> app_module.App:
    return await start_daemon(rate_limit=NO_LIMITS, flood_limit=NO_LIMITS, **settings)


@pytest.fixture
def strict_log() -> Iterator[io.BytesIO]:
    with hostile.strict_log() as raw:
        yield raw


# --- the corpus ------------------------------------------------------------------------------


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.name != "README.md")


def test_corpus_holds_every_family_and_the_issue_packets() -> None:
    names = [p.name for p in corpus_files()]
    for family in ("issue", "surrogate", "nesting", "number", "bytes", "dupkeys", "empty"):
        assert any(n.startswith(f"{family}-") for n in names), family
    assert (CORPUS / "issue-lone-surrogate.json").read_bytes() == b'{"a":"\\ud800"}\n'
    nested = (CORPUS / "issue-nesting-983.json").read_bytes()
    assert nested == b'{"client":' + b"[" * 983 + b"]" * 983 + b"}"


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_corpus_files_against_a_live_daemon(
    start_daemon: StartDaemon, emulator: Emulator, strict_log: io.BytesIO, transport: str
) -> None:
    """Every stored input, then a canary: delivered, and no fault boundary reached."""
    files = [p for p in corpus_files() if transport == "tcp" or p.stat().st_size <= MAX_DATAGRAM]
    with trio.fail_after(120):
        app = await _daemon(start_daemon)
        canary = Canary(app, emulator)
        for path in files:
            await send(app, transport, path.read_bytes())
            await canary.check(transport, after=path.name)
    assert canary.sent == len(files)
    # Every line was written, and the stream holds only UTF-8.
    text = strict_log.getvalue().decode("utf-8")
    assert "input.rejected" in text


# --- generated families ----------------------------------------------------------------------


#: One value of each JSON type, and the awkward ones, put in place of every field.
WRONG_VALUES: tuple[tuple[str, Any], ...] = (
    ("null", None),
    ("false", False),
    ("zero", 0),
    ("negative", -1),
    ("float", 2.5),
    ("4001-digit-int", 10**4000),
    ("empty-string", ""),
    ("surrogate", "x\ud800"),
    ("empty-array", []),
    ("empty-object", {}),
    ("array", ["x", 1]),
    ("object", {"name": "x", "status": 2}),
)


def replaced(document: Any, path: Path_, new: Any) -> Any:
    """A copy of ``document`` with the value at ``path`` replaced by ``new``."""
    copy: Any = json.loads(json.dumps(document))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = new
    return copy


def renamed(document: Any, path: Path_, suffix: str) -> Any:
    """A copy of ``document`` whose key at ``path`` (an object key) gets ``suffix``."""
    copy: Any = json.loads(json.dumps(document))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    assert isinstance(key, str)
    parent[key + suffix] = parent.pop(key)
    return copy


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def with_nesting(document: Any, path: Path_, depth: int) -> bytes:
    """``document`` with ``depth`` nested arrays at ``path``, written as text.

    Encoding 983 levels with json.dumps could itself hit the recursion limit.
    """
    marker = "\x00nesting\x00"
    raw = b"[" * depth + b"]" * depth
    return encode(replaced(document, path, marker)).replace(encode(marker), raw)


def bases() -> Iterator[tuple[str, dict[str, Any]]]:
    yield "classic", classic_base()
    yield "go", go_base()


def wrong_types() -> Iterator[tuple[str, bytes]]:
    """A wrong type in every field of both event shapes."""
    for shape, base in bases():
        for path, _ in paths(base):
            for label, value in WRONG_VALUES:
                yield f"{shape}:{_dotted(path)}={label}", encode(replaced(base, path, value))


def surrogates() -> Iterator[tuple[str, bytes]]:
    """A lone surrogate in every string value, every key, and a new key at every depth."""
    for shape, base in bases():
        yield f"{shape}:new-top-level-key", encode({**base, "\udc00": "\ud800"})
        for path, value in paths(base):
            where = _dotted(path)
            if isinstance(value, str):
                yield f"{shape}:{where}=value", encode(replaced(base, path, "\ud800" + value))
            if isinstance(path[-1], str):
                yield f"{shape}:{where}=key", encode(renamed(base, path, "\udfff"))
            if isinstance(value, dict):
                yield (
                    f"{shape}:{where}=new-key",
                    encode(replaced(base, path, {**value, "\ud800": 1})),
                )


def nestings() -> Iterator[tuple[str, bytes, bool]]:
    """Every field nested to exactly MAX_NESTING levels, one past it, and 983 levels.

    Yields (name, payload, within_limit). A value at ``path`` sits inside
    ``len(path)`` containers, so nesting it ``MAX_NESTING - len(path)`` deep
    makes the document exactly MAX_NESTING deep.
    """
    for shape, base in bases():
        for path, _ in paths(base):
            where = _dotted(path)
            at = MAX_NESTING - len(path)
            yield f"{shape}:{where}=at-limit", with_nesting(base, path, at), True
            yield f"{shape}:{where}=past-limit", with_nesting(base, path, at + 1), False
            yield f"{shape}:{where}=983", with_nesting(base, path, 983), False


def _dotted(path: Path_) -> str:
    return ".".join(str(key) for key in path)


def generated() -> list[tuple[str, bytes]]:
    return [*wrong_types(), *surrogates(), *((n, p) for n, p, _ in nestings())]


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_generated_families_against_a_live_daemon(
    start_daemon: StartDaemon, emulator: Emulator, strict_log: io.BytesIO, transport: str
) -> None:
    """Wrong types, surrogates and nesting everywhere: a canary after every batch."""
    inputs = generated()
    with trio.fail_after(300):
        app = await _daemon(start_daemon)
        canary = Canary(app, emulator)
        for start in range(0, len(inputs), BATCH):
            batch = inputs[start : start + BATCH]
            for _, payload in batch:
                await send(app, transport, payload)
            await canary.check(transport, after=f"{batch[0][0]} .. {batch[-1][0]}")
    received = app.metrics.value("hipchatd_events_received_total", transport=transport)
    assert received == len(inputs) + canary.sent
    strict_log.getvalue().decode("utf-8")


async def test_nesting_at_the_limit_is_accepted_and_past_it_refused_naming_the_field(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    event = classic_event(name="deep")
    at_limit = replaced(event, ("check", "extra"), nested(MAX_NESTING - 2))
    past = replaced(classic_event(name="deeper"), ("check", "extra"), nested(MAX_NESTING - 1))
    with trio.fail_after(10), capture_logs() as logs:
        app = await _daemon(start_daemon)
        await send_tcp(app.tcp_addresses[0], encode(past))
        await send_tcp(app.tcp_addresses[0], encode(at_limit))
        await emulator.wait_for_messages(1)
    assert "deep" in emulator.messages[0].message
    [refused] = [line for line in logs if line["event"] == "input.rejected"]
    assert refused["reason"] == (
        f"not a Sensu event: check is nested deeper than {MAX_NESTING} levels"
    )
    assert app.metrics.value("hipchatd_events_rejected_total", reason="not_event") == 1


# --- the issue's packets, each on its own --------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("name", ["issue-lone-surrogate.json", "issue-nesting-983.json"])
async def test_issue_packet_is_rejected_with_an_escaped_preview(
    start_daemon: StartDaemon, emulator: Emulator, transport: str, name: str
) -> None:
    with trio.fail_after(10), capture_logs() as logs:
        app = await _daemon(start_daemon)
        await send(app, transport, (CORPUS / name).read_bytes())
        await Canary(app, emulator).check(transport, after=name)
    [rejected] = [line for line in logs if line["event"] == "input.rejected"]
    assert rejected["transport"] == transport
    assert rejected["preview"].startswith(
        '{"a":"\\ud800"}' if "surrogate" in name else '{"client":[[['
    )
    rejected["preview"].encode("utf-8")
    if "nesting" in name:
        # How deep the JSON parser itself goes depends on the stack it runs on;
        # either way the document is refused, and says why.
        assert "nested" in rejected["reason"]
    else:
        assert app.metrics.value("hipchatd_events_rejected_total", reason="not_event") == 1


def test_a_document_without_its_text_is_previewed_safely_and_depth_checked() -> None:
    """Documents not built by the decoder carry no text: re-encoding them must not raise."""
    surrogate = Document({"a": "\ud800"}, 14)
    assert intake._preview(surrogate) == '{"a": "\\ud800"}'
    assert intake._too_deep(surrogate) is None
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    document = Document({"client": deep}, 10000)
    assert intake._preview(document) == "(a JSON dict that cannot be shown)"
    assert intake._too_deep(document) == f"client is nested deeper than {MAX_NESTING} levels"


def test_preview_of_text_escapes_lone_surrogates_and_cuts() -> None:
    assert preview('{"a":"\ud800"}') == '{"a":"\\ud800"}'
    assert preview("a" * 130 + "\udfff", 120) == "a" * 120 + "…(+11 characters)"


# --- strings an event carries: never unencodable --------------------------------------------


def _strings_of(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _strings_of(item)
    elif hasattr(value, "__slots__"):
        for name in value.__slots__:
            yield from _strings_of(getattr(value, name))


@pytest.mark.parametrize("name", ["surrogate-classic-fields.json", "surrogate-go-annotations.json"])
def test_every_string_of_a_parsed_event_encodes_as_utf8(name: str) -> None:
    """Lone surrogates become U+FFFD, as Go's encoding/json decodes them."""
    event = parse_event(json.loads((CORPUS / name).read_bytes()))
    strings = list(_strings_of(event))
    for text in strings:
        text.encode("utf-8")
    assert any("\ufffd" in text for text in strings)


def test_classic_history_with_a_5000_digit_string_reads_as_unknown() -> None:
    event = parse_event(
        json.loads((CORPUS / "number-classic-history-5000-digit-string.json").read_bytes())
    )
    assert event.history == (0, 3, 2)


@pytest.mark.parametrize(
    "name", ["nesting-go-annotation-string.json", "nesting-go-json-attributes-string.json"]
)
def test_annotations_nested_past_the_parser_are_ignored(name: str) -> None:
    event = parse_event(json.loads((CORPUS / name).read_bytes()))
    assert event.check == "helloworld"


def test_a_room_name_no_hipchat_room_can_have_is_ignored() -> None:
    """Longer than MAX_NAME_CHARS: the event falls back to the next source of rooms."""
    event = parse_event(json.loads((CORPUS / "long-room-name.json").read_bytes()))
    assert event.check_overrides.room is None
    at_limit = classic_event(hipchat={"room": ["r" * MAX_NAME_CHARS, "r" * (MAX_NAME_CHARS + 1)]})
    assert parse_event(at_limit).check_overrides.room == ("r" * MAX_NAME_CHARS,)


def test_a_rejection_names_long_keys_cut_short() -> None:
    with pytest.raises(EventError) as caught:
        parse_event(json.loads((CORPUS / "long-key.json").read_bytes()))
    assert len(str(caught.value)) < 300
    assert "top-level keys: " + "k" * 40 + "…" in str(caught.value)


async def test_surrogates_in_every_field_of_an_accepted_event_are_delivered(
    start_daemon: StartDaemon, emulator: Emulator, strict_log: io.BytesIO
) -> None:
    """Logs, the spool and HipChat all take the event; the room name is the one sent."""
    with trio.fail_after(10):
        app = await _daemon(start_daemon, api_version="v1")
        await send_tcp(
            app.tcp_addresses[0], (CORPUS / "surrogate-classic-fields.json").read_bytes()
        )
        await emulator.wait_for_messages(1)
    [message] = emulator.messages
    assert message.room == "ops\ufffd"
    assert "web\ufffd/disk\ufffd" in message.message
    assert internal_errors(app) == 0
    strict_log.getvalue().decode("utf-8")


def test_log_lines_with_unencodable_text_are_written_escaped() -> None:
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
    try:
        logconfig.configure("info", json=False, stream=out, cache=False)
        structlog.get_logger().warning("input.rejected", reason="key\ud800")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    assert "key\\ud800" in raw.getvalue().decode("utf-8")


# --- fault boundaries ----------------------------------------------------------------------


def _buggy_sink(sunk: list[Any]) -> listeners.Sink:
    """A sink that raises on ``{"bug": true}`` and keeps every other document's value."""

    def sink(document: Document, peer: str, transport: str) -> None:
        if document.value == {"bug": True}:
            raise ZeroDivisionError("a bug in the sink")
        sunk.append(document.value)

    return sink


async def test_a_sink_bug_loses_only_its_frame() -> None:
    """Three frames on one connection: the one the sink raised on is lost, the others used."""
    metrics = Metrics()
    sunk: list[Any] = []
    handler = listeners.ConnectionHandler(DaemonSettings(), _buggy_sink(sunk), metrics)
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(10), capture_logs() as logs:
        await client.send_all(b'{"bug":true}\n{"ok":1}\n{x}\n')
        await client.send_stream.aclose()
        await handler(server, "127.0.0.1:9")
    assert sunk == [{"ok": 1}]
    assert metrics.value("hipchatd_internal_errors_total", where="frame") == 1
    assert metrics.value("hipchatd_events_received_total", transport="tcp") == 3
    assert metrics.value("hipchatd_events_rejected_total", reason="invalid_json") == 1
    [caught] = [line for line in logs if line["event"] == "internal_error.caught"]
    assert caught["log_level"] == "error"
    assert caught["where"] == "frame"
    assert caught["peer"] == "127.0.0.1:9"
    assert isinstance(caught["conn_id"], int)
    assert caught["transport"] == "tcp"
    assert caught["exc_info"] is True


async def test_the_counter_takes_the_frames_reason_not_its_words() -> None:
    """Each framing rejection is counted under its RejectReason; the words go to the log."""
    metrics = Metrics()
    frames = [
        Rejected(RejectReason.NOT_UTF8, "invalid JSON: words that say otherwise", 3, "abc"),
        Rejected(RejectReason.TRUNCATED, "empty frame", 0, ""),
        Rejected(RejectReason.INVALID_JSON, "not UTF-8 (the words again)", 1, "x"),
    ]
    with capture_logs() as logs:
        listeners._handle_frames(frames, lambda *_: None, metrics, "127.0.0.1:9", "udp")
    rejected = {
        reason: metrics.value("hipchatd_events_rejected_total", reason=reason)
        for reason in RejectReason
    }
    assert {reason: n for reason, n in rejected.items() if n} == {
        "not_utf8": 1,
        "truncated": 1,
        "invalid_json": 1,
    }
    assert [(line["event"], line["reason"]) for line in logs] == [
        ("input.rejected", "invalid JSON: words that say otherwise"),
        ("input.rejected", "empty frame"),
        ("input.rejected", "not UTF-8 (the words again)"),
    ]


async def test_an_oversized_datagram_is_counted_as_frame_too_large() -> None:
    metrics = Metrics()
    sunk: list[Document] = []
    datagram = b"[" + b"1," * 600 + b"1]"
    settings = DaemonSettings(max_frame_bytes=1024)
    with capture_logs() as logs:
        listeners._handle_datagram(
            datagram, "127.0.0.1:9", "auto", settings, lambda d, *_: sunk.append(d), metrics
        )
    assert sunk == []
    assert metrics.value("hipchatd_events_received_total", transport="udp") == 1
    assert metrics.value("hipchatd_events_rejected_total", reason="frame_too_large") == 1
    [line] = logs
    assert line["event"] == "input.rejected"
    assert line["nbytes"] == len(datagram)
    assert line["reason"] == "frame of at least 1203 bytes exceeds max_frame_bytes=1024"


async def test_a_datagram_bug_loses_only_that_datagram(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in decoding (``where="datagram"``) and one in the sink (``"frame"``)."""
    real_decoder = listeners.Decoder

    class Buggy(real_decoder):  # type: ignore[misc,valid-type]
        def feed(self, data: bytes) -> list[Document | Rejected]:
            if data.startswith(b"BUG"):
                raise ZeroDivisionError("a bug in the decoder")
            return super().feed(data)

    monkeypatch.setattr(listeners, "Decoder", Buggy)
    metrics = Metrics()
    sunk: list[Any] = []
    sink = _buggy_sink(sunk)

    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    address = sock.getsockname()
    with trio.fail_after(10), sock, capture_logs() as logs:
        await nursery.start(listeners.serve_udp, sock, DaemonSettings(), sink, metrics)
        for payload in (b"BUG{}", b'{"bug":true}', b'{"ok":1}'):
            await send_udp(address, payload)
        await wait_until(lambda: bool(sunk))
        nursery.cancel_scope.cancel()
    assert sunk == [{"ok": 1}]
    assert metrics.value("hipchatd_internal_errors_total", where="datagram") == 1
    assert metrics.value("hipchatd_internal_errors_total", where="frame") == 1
    assert [line["where"] for line in logs if line["event"] == "internal_error.caught"] == [
        "datagram",
        "frame",
    ]


async def test_live_daemon_survives_a_bug_while_handling_an_event(
    start_daemon: StartDaemon, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug reached by one event (here: routing) is counted; the next events are delivered."""
    real_route = intake.Router.route

    def buggy_route(router: Any, event: Any, *args: Any) -> Any:
        if event.check == "poison":
            raise ZeroDivisionError("a bug in routing")
        return real_route(router, event, *args)

    monkeypatch.setattr(intake.Router, "route", buggy_route)
    poison = encode(classic_event(name="poison"))
    with trio.fail_after(20), capture_logs() as logs:
        app = await _daemon(start_daemon)
        assert app.udp_address is not None
        await send_tcp(app.tcp_addresses[0], poison + b"\n" + encode(classic_event(name="after")))
        await send_udp(app.udp_address, poison)
        await wait_until(lambda: internal_errors(app) == 2)
        await send_udp(app.udp_address, encode(classic_event(name="via-udp")))
        await wait_until(lambda: "via-udp" in " ".join(m.message for m in emulator.messages))
    text = " ".join(m.message for m in emulator.messages)
    assert "after" in text
    assert "poison" not in text
    assert app.metrics.value("hipchatd_internal_errors_total", where="frame") == 2
    caught = [line for line in logs if line["event"] == "internal_error.caught"]
    assert [(line["where"], line["transport"]) for line in caught] == [
        ("frame", "tcp"),
        ("frame", "udp"),
    ]


# --- max_targets_per_event --------------------------------------------------------------------


async def test_an_event_naming_2000_rooms_notifies_the_first_50(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    rooms = [f"room-{i:04}" for i in range(2000)]
    event = classic_event(name="everywhere", hipchat={"room": rooms})
    event["id"] = "evt-2000-rooms"
    with trio.fail_after(60), capture_logs() as logs:
        app = await _daemon(start_daemon)
        await send_tcp(app.tcp_addresses[0], encode(event))
        await emulator.wait_for_messages(50)
        await wait_until(lambda: app.spool.counts()["pending"] == 0)
        await Canary(app, emulator).check("tcp", after="2,000 rooms")
    delivered = sorted(m.room or "" for m in emulator.messages if m.room != CANARY_ROOM)
    assert delivered == rooms[:50]
    assert app.metrics.value("hipchatd_events_rejected_total", reason="too_many_targets") == 1
    assert app.metrics.value("hipchatd_events_accepted_total") == 2  # the event and the canary
    [warning] = [line for line in logs if line["event"] == "event.targets_refused"]
    assert warning["log_level"] == "warning"
    assert warning["event_id"] == "evt-2000-rooms"
    assert warning["peer"].startswith("127.0.0.1:")
    assert isinstance(warning["conn_id"], int)
    assert (warning["source"], warning["check"]) == ("sensu.test.local", "everywhere")
    assert (warning["targets"], warning["refused"]) == (2000, 1950)
    assert warning["max_targets_per_event"] == 50


async def test_max_targets_per_event_is_configurable_and_exact(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    with trio.fail_after(20), capture_logs() as logs:
        app = await _daemon(start_daemon, max_targets_per_event=3)
        await send_tcp(
            app.tcp_addresses[0],
            encode(classic_event(name="three", hipchat={"room": ["a", "b", "c"]})),
        )
        await send_tcp(
            app.tcp_addresses[0],
            encode(classic_event(name="four", hipchat={"room": ["w", "x", "y", "z"]})),
        )
        await emulator.wait_for_messages(6)
        await wait_until(lambda: app.spool.counts()["pending"] == 0)
    assert sorted(m.room or "" for m in emulator.messages) == ["a", "b", "c", "w", "x", "y"]
    assert app.metrics.value("hipchatd_events_rejected_total", reason="too_many_targets") == 1
    assert len([line for line in logs if line["event"] == "event.targets_refused"]) == 1


# --- the real process --------------------------------------------------------------------------


def test_the_issue_packets_do_not_stop_a_real_process(tmp_path: Path) -> None:
    """``hipchatd serve`` as a process: each packet over TCP and UDP, a canary after each."""
    config = tmp_path / "hipchatd.json"
    config.write_text(
        json.dumps(
            {
                "hipchat": {"room": "sensu"},
                "hipchatd": {
                    "tcp": {"host": "127.0.0.1", "port": 0},
                    "udp": {"host": "127.0.0.1", "port": 0},
                },
            }
        )
    )
    child = Child("serve", "--config", str(config), "--emulator")
    try:
        started = child.wait_logged("daemon.started")
        host, port = started["tcp"][0].rsplit(":", 1)
        udp_host, udp_port = started["udp"].rsplit(":", 1)
        sent = 0
        for name in ("issue-lone-surrogate.json", "issue-nesting-983.json"):
            packet = (CORPUS / name).read_bytes()
            for transport in ("tcp", "udp"):
                sent += 1
                canary = classic_event(name=f"canary-{sent}")
                for payload in (packet, encode(canary)):
                    if transport == "tcp":
                        with socket.create_connection((host, int(port)), timeout=10) as sock:
                            sock.sendall(payload)
                    else:
                        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                            sock.sendto(payload, (udp_host, int(udp_port)))
                child.wait_line(lambda line, n=sent: f"/canary-{n}" in line and "[room" in line)
                assert child.popen.poll() is None, child.output
        assert len(child.logged("input.rejected")) == 4
        assert child.logged("internal_error.caught") == []
    finally:
        child.close()


def test_a_real_process_on_an_ascii_stdout_writes_what_it_cannot_encode_escaped(
    tmp_path: Path,
) -> None:
    """Log and emulator echo lines with non-ASCII text, on an ASCII stdout: escaped, not fatal."""
    config = tmp_path / "hipchatd.json"
    config.write_text(
        json.dumps(
            {"hipchat": {"room": "sensu"}, "hipchatd": {"tcp": {"host": "127.0.0.1", "port": 0}}}
        )
    )
    child = Child("serve", "--config", str(config), "--emulator", env={"PYTHONIOENCODING": "ascii"})
    try:
        started = child.wait_logged("daemon.started")
        host, port = started["tcp"][0].rsplit(":", 1)
        for name, shown in (("café-☕", "caf\\xe9-\\u2615"), ("after", "after")):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(encode(classic_event(name=name)))
            child.wait_line(lambda line, s=shown: line.startswith("[room sensu]") and s in line)
        assert child.popen.poll() is None, child.output
    finally:
        child.close()
