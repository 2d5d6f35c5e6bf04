"""Shared fixtures: a real emulator and a real daemon on loopback, and ways to talk to them."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import trio
import trio.testing
from postgres import pg_schema, pg_server  # noqa: F401 (fixtures for every test module)

from hipchatd import app as app_module
from hipchatd.config import Config, DaemonSettings, HipChatSettings, Listen, Secret
from hipchatd.emulator import Emulator
from hipchatd.ops import logconfig

FIXTURES = Path(__file__).parent / "fixtures"

# Property tests draw the same examples on every run (their counts are set per
# test), with no deadline a loaded machine could miss and no example database:
# a failure reproduces from the test alone. HYPOTHESIS_PROFILE=explore draws
# new examples each run and keeps failing ones in .hypothesis/.
hypothesis.settings.register_profile("ci", derandomize=True, database=None, deadline=None)
hypothesis.settings.register_profile("explore", deadline=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
TOKEN = "s3cr3t-hipchat-token-0123456789abcdef"


def load_fixture(name: str) -> dict[str, Any]:
    """A sample Sensu event from tests/fixtures, as a fresh dict."""
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return copy.deepcopy(data)


def classic_event(**check: Any) -> dict[str, Any]:
    """The Classic critical sample, with ``check`` attributes overridden."""
    event = load_fixture("classic-critical.json")
    event["check"].update(check)
    return event


def free_port() -> int:
    """A port free for TCP and UDP alike (systemd-socket-activate cannot take port 0)."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free for both TCP and UDP")


def make_config(emulator_url: str, **hipchat: Any) -> Config:
    """A config for a daemon on ephemeral loopback ports, delivering to ``emulator_url``."""
    daemon_keys = {k: hipchat.pop(k) for k in list(hipchat) if k in DaemonSettings.__slots__}
    if isinstance(hipchat.get("room"), str):
        hipchat["room"] = (hipchat["room"],)
    settings = HipChatSettings(
        api_token=Secret(hipchat.pop("api_token", TOKEN)), server_url=emulator_url, **hipchat
    )
    daemon_keys.setdefault("state_dir", ":memory:")
    daemon = DaemonSettings(tcp=Listen("127.0.0.1", 0), udp=Listen("127.0.0.1", 0), **daemon_keys)
    return Config(hipchat=settings, daemon=daemon)


@pytest.fixture(autouse=True)
def clean_secrets() -> Iterator[None]:
    """Every test starts with no registered secret and leaves none behind."""
    logconfig.reset_secrets()
    yield
    logconfig.reset_secrets()


#: Real seconds every task must have waited before the mock clock jumps, while no
#: worker thread runs: loopback I/O between the tasks of one process is ready by then.
IO_GRACE = 0.001


class ClockHold:
    """Holds trio's autojumping mock clock still while a worker thread runs.

    The spool runs SQLite in a worker thread, and a task waiting on a thread
    looks idle to trio: a plain autojumping clock leaps ahead while a commit
    is still running, unless its threshold covers the slowest commit of a
    loaded machine (and then every jump costs that much real time). So the
    clock jumps after IO_GRACE of real idleness, except while a call of
    ``trio.to_thread.run_sync`` (wrapped by the ``clock_hold`` fixture) is
    running: then its threshold is infinite until the last thread returned.
    """

    def __init__(self) -> None:
        self.clock = trio.testing.MockClock(autojump_threshold=IO_GRACE)
        #: worker threads running now.
        self.threads = 0
        #: False for a test that leaves a worker thread stuck on purpose and wants time to go on.
        self.enabled = True

    async def run_sync(self, run_sync: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> Any:
        if args and getattr(args[0], "__qualname__", "") in UNHELD:
            return await run_sync(*args, **kw)
        self._count(+1)
        try:
            return await run_sync(*args, **kw)
        finally:
            self._count(-1)

    def _count(self, change: int) -> None:
        self.threads += change
        held = self.threads > 0 and self.enabled
        self.clock.autojump_threshold = math.inf if held else IO_GRACE


#: Worker-thread calls that wait on the network for as long as they are allowed (the lane
#: leases' LISTEN), not compute: holding the clock for them would stop it for good.
UNHELD = frozenset({"_Listener.wait"})


@pytest.fixture
def clock_hold() -> Iterator[ClockHold]:
    """A :class:`ClockHold`, told about every ``trio.to_thread.run_sync`` of the test.

    Its own patch: a test's ``monkeypatch.undo()`` leaves it in place.
    """
    hold = ClockHold()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trio.to_thread, "run_sync", partial(hold.run_sync, trio.to_thread.run_sync))
        yield hold


@pytest.fixture
def autojump_clock(clock_hold: ClockHold) -> trio.testing.MockClock:
    """trio's mock clock, jumping whenever every task waits and no worker thread runs."""
    return clock_hold.clock


@pytest.fixture
async def emulator(nursery: trio.Nursery) -> Emulator:
    """A real HipChat emulator on a loopback port, knowing TOKEN and a few rooms."""
    emu = Emulator(tokens=[TOKEN], rooms=["sensu", "ops", "dev"], auto_create_rooms=True)
    await nursery.start(emu.serve, "127.0.0.1", 0)
    return emu


StartDaemon = Callable[..., Awaitable[app_module.App]]


@pytest.fixture
def start_daemon(nursery: trio.Nursery, emulator: Emulator) -> StartDaemon:
    """Start the real daemon (app.run) against the emulator; keyword args go to make_config."""

    async def start(**hipchat: Any) -> app_module.App:
        config = make_config(emulator.url, **hipchat)
        started: app_module.App = await nursery.start(app_module.run, config)
        return started

    return start


async def send_tcp(address: tuple[str, int], payload: bytes) -> None:
    """What Sensu does: connect, one write, close."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(payload)


async def send_udp(address: tuple[str, int], payload: bytes) -> None:
    """One datagram."""
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        await sock.sendto(payload, address)


def length_prefixed(documents: Iterable[dict[str, Any]]) -> bytes:
    """4-byte big-endian length + JSON, per document."""
    out = bytearray()
    for doc in documents:
        body = json.dumps(doc).encode()
        out += struct.pack(">I", len(body)) + body
    return bytes(out)


def ndjson(documents: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(doc).encode() + b"\n" for doc in documents)


@pytest.fixture
async def tcp_stream_factory() -> AsyncIterator[
    Callable[[tuple[str, int]], Awaitable[trio.SocketStream]]
]:
    streams: list[trio.SocketStream] = []

    async def open_stream(address: tuple[str, int]) -> trio.SocketStream:
        stream = await trio.open_tcp_stream(*address)
        streams.append(stream)
        return stream

    yield open_stream
    for stream in streams:
        await stream.aclose()


def represented(emulator: Emulator, room: str | None = None) -> int:
    """Events the delivered messages stand for: a storm message's header counts, else one."""
    total = 0
    for message in emulator.messages:
        if room is not None and message.room != room:
            continue
        match = re.match(r"(?:<b>)?(\d+) events:", message.message)
        total += int(match.group(1)) if match else 1
    return total


async def wait_until(predicate: Callable[[], bool], step: float = 0.05) -> None:
    """Poll ``predicate`` on trio's clock (for state with no event to wait on)."""
    while not predicate():
        await trio.sleep(step)


async def until_delivered(emulator: Emulator, predicate: Callable[[], bool]) -> None:
    """Return once ``predicate`` holds, looking again at each message the emulator accepts.

    For conditions on what was delivered: wakes on arrival, no polling.
    Takes no timeout: wrap it in ``trio.fail_after``.
    """
    while not predicate():
        await emulator.wait_for_messages(len(emulator.messages) + 1)
