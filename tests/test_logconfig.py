"""Redaction happens in the processor chain, before any renderer."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

import pytest
import structlog
import trio

from hipchatd.config import Config, DaemonSettings, ProxyUrl, Secret, SpoolSettings
from hipchatd.ops import logconfig
from hipchatd.redaction import MIN_SECRET_LENGTH, REDACTED, Redactor, scrub
from tests.factories import make_settings

SECRET = "tok-9f8e7d6c5b4a"


@contextmanager
def _logging_to(out: TextIO) -> Iterator[None]:
    logconfig.register_secret(SECRET)
    logconfig.configure("debug", json=True, stream=out, cache=False)
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    with _logging_to(out):
        yield out


def test_secret_redacted_in_values_nested_and_exceptions(stream: io.StringIO) -> None:
    log = structlog.get_logger()
    log.info("thing.happened", url=f"https://h/v1?auth_token={SECRET}", nested={"a": [SECRET]})
    try:
        raise ValueError(f"bad token {SECRET}")
    except ValueError:
        log.exception("thing.failed")
    text = stream.getvalue()
    assert SECRET not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["url"] == f"https://h/v1?auth_token={logconfig.REDACTED}"
    assert lines[0]["nested"] == {"a": [logconfig.REDACTED]}
    assert "bad token [REDACTED]" in lines[1]["exception"]


def test_stdlib_logs_go_through_redaction(stream: io.StringIO) -> None:
    logging.getLogger("httpx").warning("request to %s failed", f"https://x/?t={SECRET}")
    logging.getLogger("httpx").info("below WARNING is dropped")
    text = stream.getvalue()
    assert SECRET not in text
    assert "[REDACTED]" in text
    assert "below WARNING" not in text


def test_short_strings_are_not_treated_as_secrets() -> None:
    logconfig.register_secret("ab")
    assert logconfig.redact("abc") == "abc"


# Characters that every escaping changes: quote, backslash, "/", "+", "%", space, non-ASCII.
ODD = "tok'\\\"/+% é-9f8e7d6c5b4a\n"


@pytest.mark.parametrize(
    "shown",
    [
        ODD,
        repr(ODD),
        repr(ODD.encode()),
        repr(f"Bearer {ODD}".encode()),
        f"Illegal header value {f'Bearer {ODD}'.encode()!r}",
        json.dumps(ODD),
        json.dumps(ODD, ensure_ascii=False),
        json.dumps({"message": f"auth_token={ODD}"}),
        json.dumps(repr(ODD)),
        repr(json.dumps(ODD)),
        quote(ODD, safe=""),
        quote(ODD),
        quote_plus(ODD),
        quote_plus(ODD).replace("%2F", "%2f").replace("%C3%A9", "%c3%A9"),
    ],
)
def test_escaped_and_quoted_forms_are_redacted(stream: io.StringIO, shown: str) -> None:
    logconfig.register_secret(ODD)
    structlog.get_logger().warning("delivery.failed", error=f"failed: {shown}!")
    try:
        raise OSError(f"cannot send {shown}")
    except OSError:
        structlog.get_logger().exception("thing.failed")
    text = stream.getvalue()
    assert "9f8e7d6c5b4a" not in text
    assert text.count(logconfig.REDACTED) == 2


def test_redact_survives_a_secret_with_a_lone_surrogate() -> None:
    logconfig.register_secret("tok\ud800-0123456789")
    assert logconfig.redact("x tok\ud800-0123456789 y") == f"x {logconfig.REDACTED} y"


def test_scrub_replaces_one_value_in_all_its_forms() -> None:
    value = "a/b+c d"
    text = f"{value} {quote(value, safe='')} {quote_plus(value)} {value.encode()!r}"
    r = logconfig.REDACTED
    assert logconfig.scrub(text, value) == f"{r} {r} {r} b'{r}'"


def test_a_test_registers_a_secret() -> None:
    logconfig.register_secret("only-this-test-9f8e")
    assert logconfig.redact("only-this-test-9f8e") == logconfig.REDACTED


def test_the_next_test_starts_with_no_secret() -> None:
    # Runs after the test above: its secret did not leak into this one.
    assert not logconfig.SECRETS
    assert logconfig.redact("only-this-test-9f8e") == "only-this-test-9f8e"


def test_a_redactor_is_its_own() -> None:
    one, other = Redactor("secret-one"), Redactor()
    other.add("secret-two")
    assert one.redact("secret-one secret-two") == "[REDACTED] secret-two"
    assert other.redact("secret-one secret-two") == "secret-one [REDACTED]"
    one.reset()
    assert not one
    assert one.redact("secret-one") == "secret-one"
    assert other


def test_a_redactor_ignores_secrets_below_the_minimum_length() -> None:
    redactor = Redactor("a" * (MIN_SECRET_LENGTH - 1))
    assert not redactor
    assert redactor.redact("aaa aaaa") == "aaa aaaa"
    redactor.add("b" * MIN_SECRET_LENGTH)
    assert redactor.redact("bbbb") == REDACTED


def test_one_marker_everywhere() -> None:
    # The log chain, the HipChat client's error text and the tools print the same marker.
    assert logconfig.REDACTED == REDACTED == "[REDACTED]"
    assert scrub("token=s3cr3t", "s3cr3t") == "token=[REDACTED]"


def test_bound_context_is_merged_into_every_line_and_redacted(stream: io.StringIO) -> None:
    """Keys bound with structlog.contextvars reach each line, stdlib ones too, redacted."""
    log = structlog.get_logger()
    with structlog.contextvars.bound_contextvars(peer="192.0.2.7:4000", conn_id=3):
        log.warning("input.rejected", reason="invalid JSON")
        with structlog.contextvars.bound_contextvars(event_id=f"id-{SECRET}"):
            logging.getLogger("httpx").warning("request failed")
            # A key passed to the call wins over the bound one.
            log.info("event.delivered", event_id="evt-2")
    log.info("daemon.stopping")
    text = stream.getvalue()
    assert SECRET not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [(line.get("peer"), line.get("conn_id"), line.get("event_id")) for line in lines] == [
        ("192.0.2.7:4000", 3, None),
        ("192.0.2.7:4000", 3, f"id-{REDACTED}"),
        ("192.0.2.7:4000", 3, "evt-2"),
        (None, None, None),
    ]


def test_every_secret_a_configuration_holds_is_registered(stream: io.StringIO) -> None:
    config = Config(
        hipchat=replace(
            make_settings(proxy=ProxyUrl.parse("http://squid:p%40ss-w0rd-long@proxy.example:3128")),
            api_token=Secret("token-0123456789abcdef"),
        ),
        daemon=DaemonSettings(
            spool=SpoolSettings(
                backend="postgresql", dsn=Secret("postgresql://u:dsn-pass-123456@db/sensu")
            )
        ),
    )
    logconfig.register_config_secrets(config)
    structlog.get_logger().warning(
        "thing.failed",
        token="token-0123456789abcdef",
        proxy="squid:p%40ss-w0rd-long",
        password="p@ss-w0rd-long",
        dsn="dsn-pass-123456",
    )
    text = stream.getvalue()
    for secret in ("token-0123456789abcdef", "p%40ss-w0rd-long", "p@ss-w0rd-long", "dsn-pass-1"):
        assert secret not in text
    assert text.count(REDACTED) >= 4


@pytest.fixture
def binary() -> Iterator[io.BytesIO]:
    """Lines as the daemon writes them: bytes under a text stream, as on stdout."""
    raw = io.BytesIO()
    with _logging_to(io.TextIOWrapper(raw, encoding="utf-8")):
        yield raw


def test_json_lines_are_compact_utf8_from_the_fast_serializer(binary: io.BytesIO) -> None:
    structlog.get_logger().info("event.delivered", outcome="sent", rooms=["Ops"], check="café")
    line = binary.getvalue()
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert line.startswith(b'{"outcome":"sent","rooms":["Ops"],"check":"caf\xc3\xa9"')
    assert b'"event":"event.delivered"' in line
    assert set(json.loads(line)) == {"outcome", "rooms", "check", "event", "level", "timestamp"}


def test_secret_nested_and_in_exception_text_redacted_by_the_fast_serializer(
    binary: io.BytesIO,
) -> None:
    log = structlog.get_logger()
    log.info(
        "thing.happened",
        nested={"a": [{"b": (1, f"x{SECRET}y")}], "c": SECRET.encode()},
        headers={f"X-{SECRET}": "v"},
        fine="nothing to hide",
    )
    try:
        raise ValueError(f"bad token {SECRET!r} in {json.dumps({'t': SECRET})}")
    except ValueError:
        log.exception("thing.failed")
    text = binary.getvalue()
    assert SECRET.encode() not in text
    first, second = (json.loads(line) for line in text.splitlines())
    assert first["nested"] == {"a": [{"b": [1, f"x{REDACTED}y"]}], "c": REDACTED}
    assert first["headers"] == {f"X-{REDACTED}": "v"}
    assert first["fine"] == "nothing to hide"
    assert f"bad token '{REDACTED}' in " in second["exception"]
    assert second["exception"].count(REDACTED) == 2


class _Shown:
    def __str__(self) -> str:
        return f"shown {SECRET}"


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_values_json_has_no_type_for_are_written_as_the_console_chain_leaves_them(
    binary: io.BytesIO,
) -> None:
    """Each value reads back as redact_secrets leaves it for JSONRenderer: the same fields."""
    import datetime
    import enum
    import uuid

    class Color(enum.Enum):
        RED = "red"

    fields: dict[str, object] = {
        "when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        "id": uuid.UUID(int=7),
        "raw": b"\xff\xfeok",
        "color": Color.RED,
        "kinds": {"a", "b"} - {"b"},
        "shown": _Shown(),
        "ints": {404: 1},
        "pair": ("a", 2.5, None, True),
        "big": 2**70,
    }
    structlog.get_logger().info("thing.happened", **fields)
    written = json.loads(binary.getvalue())
    expected = json.loads(
        structlog.processors.JSONRenderer()(
            None, "info", logconfig.redact_secrets(None, "info", dict(fields))
        )
    )
    assert {key: written[key] for key in fields} == expected
    assert written["shown"] == f"shown {REDACTED}"


def test_a_line_never_raises(binary: io.BytesIO) -> None:
    looped: list[object] = []
    looped.append(looped)
    log = structlog.get_logger()
    log.warning("thing.odd", looped=looped, text=f"{SECRET} and \udc80")
    log.warning("thing.odder", unprintable=_Unprintable(), token=SECRET)
    log.warning("thing.keyed", keys={(1, 2): "pair"})
    log.warning("thing.surrogate", text="lone \ud800 surrogate", token=SECRET)
    lines = [json.loads(line) for line in binary.getvalue().splitlines()]
    assert SECRET.encode() not in binary.getvalue()
    events = ["thing.odd", "thing.odder", "thing.keyed", "thing.surrogate"]
    assert [line["event"] for line in lines] == events
    assert lines[0]["looped"] == "[[...]]"
    assert lines[0]["text"] == f"{REDACTED} and \udc80"
    assert lines[1]["unprintable"] == "<unprintable _Unprintable>"
    assert lines[1]["token"] == REDACTED
    assert lines[2]["keys"] == {"(1, 2)": "pair"}
    assert lines[3] == {**lines[3], "text": "lone \ud800 surrogate", "token": REDACTED}


def test_stdlib_lines_share_the_chain_and_the_stream_in_order(binary: io.BytesIO) -> None:
    log = structlog.get_logger()
    with structlog.contextvars.bound_contextvars(conn_id=9):
        log.warning("first.logged")
        logging.getLogger("httpx").warning("request to %s failed", f"https://x/?t={SECRET}")
        log.warning("third.logged")
    lines = [json.loads(line) for line in binary.getvalue().splitlines()]
    assert [line["event"] for line in lines] == [
        "first.logged",
        f"request to https://x/?t={REDACTED} failed",
        "third.logged",
    ]
    assert lines[1]["logger"] == "httpx"
    assert [line["conn_id"] for line in lines] == [9, 9, 9]


def test_a_stack_asked_for_is_the_callers(binary: io.BytesIO) -> None:
    structlog.get_logger().info("thing.traced", stack_info=True)
    line = json.loads(binary.getvalue())
    last_frame = line["stack"].splitlines()[-2]
    assert last_frame.endswith(", in test_a_stack_asked_for_is_the_callers")
    assert "stack_info" not in line


@pytest.mark.parametrize(
    "ns",
    [0, 1_700_000_000_000_000_000, 1_700_000_000_000_001_999, 1_764_186_874_684_077_123],
)
def test_timestamps_read_as_structlogs_iso_utc(ns: int) -> None:
    import datetime

    when = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(
        microseconds=ns // 1000
    )
    assert logconfig.iso_utc(ns) == when.isoformat().replace("+00:00", "Z")


def test_a_line_is_stamped_with_the_time_it_was_written(binary: io.BytesIO) -> None:
    import datetime

    before = datetime.datetime.now(datetime.UTC)
    structlog.get_logger().info("thing.happened")
    after = datetime.datetime.now(datetime.UTC)
    stamped = json.loads(binary.getvalue())["timestamp"]
    assert stamped.endswith("Z")
    assert before <= datetime.datetime.fromisoformat(stamped) <= after


@pytest.mark.parametrize(
    "value",
    [
        ODD,
        f"x{ODD}y",
        repr(ODD),
        json.dumps({"m": quote_plus(ODD)}),
        quote(ODD).lower(),
        "\ud800" + ODD,
    ],
)
def test_a_redactor_finds_a_secret_in_a_json_line(value: str) -> None:
    """A line holding any form of the secret, once written as JSON, is found."""
    from hipchatd import jsontext

    redactor = Redactor(ODD)
    line = jsontext.dumps({"event": "x", "nested": [{"value": value}]})
    # The lowered percent-encoding holds the form in another case: still the secret.
    assert redactor.in_json(line)
    assert not redactor.in_json(jsontext.dumps({"event": "x", "value": redactor.redact(value)}))


def test_a_redactor_finds_nothing_without_a_secret() -> None:
    assert not Redactor().in_json(b'{"event":"x","value":"anything"}')
    assert not Redactor("secret-one").in_json(b'{"event":"x","value":"secret-two"}')


class _Writes(io.BytesIO):
    """A binary stream that keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: Any) -> int:
        self.writes.append(bytes(data))
        return super().write(data)


@pytest.fixture
def writes() -> Iterator[_Writes]:
    raw = _Writes()
    with _logging_to(io.TextIOWrapper(raw, encoding="utf-8", write_through=True)):
        yield raw


def _events(raw: io.BytesIO) -> list[str]:
    return [json.loads(line)["event"] for line in raw.getvalue().splitlines()]


def test_a_runs_lines_are_written_together_when_it_next_waits(writes: _Writes) -> None:
    log = structlog.get_logger()

    async def main() -> None:
        for n in range(3):
            log.info("event.delivered", n=n)
        assert writes.writes == []
        await trio.lowlevel.checkpoint()
        assert len(writes.writes) == 1
        log.info("last.logged")

    trio.run(main, instruments=[logconfig.LineFlush()])
    assert _events(writes) == [*["event.delivered"] * 3, "last.logged"]
    # The last line went out when the run ended.
    assert len(writes.writes) == 2


def test_lines_outside_a_run_are_written_at_once(writes: _Writes) -> None:
    trio.run(trio.lowlevel.checkpoint, instruments=[logconfig.LineFlush()])
    structlog.get_logger().info("after.run")
    structlog.get_logger().info("again")
    assert len(writes.writes) == 2


def test_another_threads_line_is_written_at_once_after_those_held(writes: _Writes) -> None:
    log = structlog.get_logger()

    async def main() -> None:
        log.info("held")
        thread = threading.Thread(target=log.info, args=("from.thread",))
        thread.start()
        thread.join()
        assert len(writes.writes) == 1
        log.info("held.again")
        assert len(writes.writes) == 1

    trio.run(main, instruments=[logconfig.LineFlush()])
    assert _events(writes) == ["held", "from.thread", "held.again"]


def test_a_stdlib_line_follows_the_lines_held_before_it(writes: _Writes) -> None:
    async def main() -> None:
        structlog.get_logger().warning("first.logged")
        logging.getLogger("httpx").warning("second")
        structlog.get_logger().warning("third.logged")

    trio.run(main, instruments=[logconfig.LineFlush()])
    assert _events(writes) == ["first.logged", "second", "third.logged"]


def test_lines_held_past_the_limit_are_written_at_once(writes: _Writes) -> None:
    log = structlog.get_logger()

    async def main() -> None:
        while not writes.writes:
            log.info("big", text="x" * 1000)
        assert 64 * 1024 <= len(writes.getvalue()) < 64 * 1024 + 2 * 1100

    trio.run(main, instruments=[logconfig.LineFlush()])


class _Broken(io.BytesIO):
    def write(self, data: Any) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_stream_that_fails_stops_lines_being_held() -> None:
    lines = logconfig._Lines(_Broken())
    lines.holder = threading.get_ident()
    lines.msg(b"held")
    with pytest.raises(BrokenPipeError):
        lines.flush()
    assert lines.holder is None
    # As without holding: the line fails where it is logged.
    with pytest.raises(BrokenPipeError):
        lines.msg(b"next")
