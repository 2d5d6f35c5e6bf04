"""Shared by the hostile-input corpus and the intake fuzz test: base events, sending, canaries."""

from __future__ import annotations

import copy
import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
import trio

from hipchatd.app import App
from hipchatd.emulator import Emulator
from hipchatd.metrics import INTERNAL_ERROR_PLACES
from hipchatd.ops import logconfig
from tests.conftest import TOKEN, classic_event, load_fixture, send_tcp, send_udp, until_delivered

#: The largest payload one UDP datagram can carry over IPv4.
MAX_DATAGRAM = 65507
#: The room canaries go to, so no input under test can be mistaken for one.
CANARY_ROOM = "canary"
#: Where a value sits in a JSON document: keys and list indexes.
Path_ = tuple[str | int, ...]
#: Limits high enough that neither the emulator nor the daemon's budget ever waits.
NO_LIMITS = 1_000_000


async def unlimited_emulator(nursery: trio.Nursery) -> Emulator:
    """A real emulator without rate or flood limits: every input can be followed by a canary."""
    emu = Emulator(
        tokens=[TOKEN],
        rooms=["sensu", CANARY_ROOM],
        auto_create_rooms=True,
        rate_limit=NO_LIMITS,
        flood_limit=NO_LIMITS,
    )
    await nursery.start(emu.serve, "127.0.0.1", 0)
    return emu


def classic_base() -> dict[str, Any]:
    """The Classic critical sample: a valid event that notifies the default room."""
    return classic_event()


def go_base() -> dict[str, Any]:
    """The Go warning sample, as a first occurrence (the sample's 423rd would be held back)."""
    event = load_fixture("go-warning.json")
    event["check"]["occurrences"] = 1
    return event


def encode(value: Any) -> bytes:
    """Compact JSON as Sensu writes it; lone surrogates go out as ``\\udXXX`` escapes."""
    return json.dumps(value, separators=(",", ":")).encode()


def paths(value: Any, prefix: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    """Every (path, value) below ``value``, parents before children."""
    items: Any = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, child in items:
        yield (*prefix, key), child
        yield from paths(child, (*prefix, key))


def internal_errors(app: App) -> float:
    """``hipchatd_internal_errors_total`` summed over every place: each one is a bug."""
    return sum(
        app.metrics.value("hipchatd_internal_errors_total", where=where)
        for where in INTERNAL_ERROR_PLACES
    )


async def send(app: App, transport: str, payload: bytes) -> None:
    """One input as Sensu sends it: a TCP connection written and closed, or one datagram."""
    if transport == "tcp":
        await send_tcp(app.tcp_addresses[0], payload)
    else:
        assert app.udp_address is not None
        await send_udp(app.udp_address, payload)


class Canary:
    """Valid events, each proving the daemon still reads ``transport`` and delivers."""

    def __init__(self, app: App, emulator: Emulator) -> None:
        self.app = app
        self.emulator = emulator
        self.sent = 0

    def _delivered(self, name: str) -> bool:
        return any(m.room == CANARY_ROOM and name in m.message for m in self.emulator.messages)

    async def check(self, transport: str, after: str) -> None:
        """Send a canary; fail unless it is delivered and no fault boundary caught anything.

        ``after`` names the input just sent, for the failure message.
        """
        self.sent += 1
        name = f"canary-{self.sent}"
        event = copy.deepcopy(classic_base())
        event["check"].update(name=name, hipchat={"room": CANARY_ROOM})
        await send(self.app, transport, encode(event))
        with trio.move_on_after(10) as scope:
            await until_delivered(self.emulator, lambda: self._delivered(name))
        assert not scope.cancelled_caught, f"{name} not delivered after {after} over {transport}"
        assert internal_errors(self.app) == 0, f"a fault boundary caught {after} over {transport}"


@contextmanager
def strict_log() -> Iterator[io.BytesIO]:
    """The daemon's real log configuration, at debug, console-rendered onto strict UTF-8.

    Console rendering writes text as it is (JSON lines escape it), so a
    string UTF-8 cannot encode reaches the stream: the stream must take it.
    Yields the bytes written.
    """
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
    logconfig.configure("debug", json=False, stream=out, cache=False)
    try:
        yield raw
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
        out.detach()  # the bytes stay readable after the wrapper is gone
