"""A structure-aware fuzz test of the whole intake path, against one live daemon.

Hypothesis builds near-valid Sensu Classic and Go events (a few fields
replaced by wrong types, lone surrogates, deep nesting, huge or non-finite
numbers, keys renamed or removed), encodes them, wraps them in odd framing
(NDJSON, length prefixes that may lie, stray bytes) and sends them over TCP
in chunks split at random points, or as one UDP datagram. After every input
a valid canary event must be delivered and ``hipchatd_internal_errors_total``
must still be 0: no exception escapes and the next valid event gets through.

CI cost is fixed: ``MAX_EXAMPLES`` inputs, derandomized (the same inputs on
every run), no deadline, no example database.
"""

from __future__ import annotations

import itertools
import json
import struct
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hipchatd.app import App
from hipchatd.emulator import Emulator
from hipchatd.ingest.intake import MAX_NESTING
from tests.conftest import StartDaemon
from tests.hostile import (
    MAX_DATAGRAM,
    NO_LIMITS,
    Canary,
    classic_base,
    go_base,
    internal_errors,
    paths,
    strict_log,
    unlimited_emulator,
)

#: Inputs tried per run (each followed by a canary); the notes quote this figure.
MAX_EXAMPLES = 200


@pytest.fixture
async def emulator(nursery: trio.Nursery) -> Emulator:
    """The emulator without rate or flood limits: every example sends a canary."""
    return await unlimited_emulator(nursery)


# --- values ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text placed as is: numbers json.dumps cannot write, literal nesting."""

    text: str


def _nested_text(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


RAW = st.one_of(
    st.sampled_from(
        [
            Raw("9" * 5000),
            Raw("-" + "9" * 4301),
            Raw("9" * 4300),
            Raw("1e400"),
            Raw("-1e400"),
            Raw("1e300"),
            Raw("NaN"),
            Raw("Infinity"),
            Raw("-Infinity"),
            Raw("-0"),
            Raw("0." + "0" * 5000 + "1"),
        ]
    ),
    st.integers(min_value=1, max_value=1200).map(_nested_text),
    st.sampled_from([MAX_NESTING - 3, MAX_NESTING - 2, MAX_NESTING - 1, MAX_NESTING]).map(
        _nested_text
    ),
)
#: Text with lone surrogates, NULs, controls and line separators among ordinary characters.
TEXT = st.text(st.characters(exclude_categories=()), max_size=30) | st.sampled_from(
    ["\ud800", "\udfff", "a\udc00b", "\x00", "\u2028", "", " ", "x" * 200]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**300), max_value=10**300),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    RAW,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


_BASES = {"classic": classic_base(), "go": go_base()}
_BASE_PATHS = {name: [path for path, _ in paths(base)] for name, base in _BASES.items()}


@st.composite
def events(draw: st.DrawFn) -> Any:
    """A Classic or Go event with up to 4 fields replaced, renamed or removed."""
    shape = draw(st.sampled_from(sorted(_BASES)))
    document: Any = json.loads(json.dumps(_BASES[shape]))
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        path = draw(st.sampled_from(_BASE_PATHS[shape]))
        parent = document
        try:
            for key in path[:-1]:
                parent = parent[key]
            key = path[-1]
            parent[key]  # an earlier change may have removed the path
        except (KeyError, IndexError, TypeError):
            continue
        change = draw(st.sampled_from(["replace", "replace", "rename", "remove"]))
        if change == "replace":
            parent[key] = draw(VALUES)
        elif isinstance(parent, dict) and change == "rename":
            parent[key + draw(TEXT)] = parent.pop(key)
        elif isinstance(parent, dict):
            del parent[key]
    return document


def encode(value: Any) -> bytes:
    """JSON text for ``value``; Raw parts are written as is."""
    raws: list[str] = []

    def placeholder(obj: Any) -> str:
        if isinstance(obj, Raw):
            raws.append(obj.text)
            return f"\x00raw{len(raws) - 1}\x00"
        raise TypeError(type(obj).__name__)

    text = json.dumps(value, default=placeholder, separators=(",", ":"))
    for i, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\x00raw{i}\x00"), raw, 1)
    return text.encode("utf-8", "surrogatepass")


# --- framing ---------------------------------------------------------------------------------

#: Bytes that may wrap a document: a BOM, NULs, invalid UTF-8, an encoded surrogate, blanks.
STRAY = st.sampled_from(
    [b"", b"", b"", b"\xef\xbb\xbf", b"\x00", b"\xff\xfe", b"\xed\xa0\x80", b"\n", b"}", b" \t"]
)


@dataclass(frozen=True)
class Input:
    transport: str
    chunks: tuple[bytes, ...]

    @property
    def size(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)


@st.composite
def inputs(draw: st.DrawFn) -> Input:
    documents = [encode(draw(events())) for _ in range(draw(st.integers(1, 3)))]
    framing = draw(st.sampled_from(["plain", "ndjson", "length", "stray"]))
    if framing == "plain":
        payload = b"".join(documents)
    elif framing == "ndjson":
        payload = b"\n".join(documents) + b"\n"
    elif framing == "length":
        lie = draw(st.sampled_from([0, 0, 0, 1, -1, 1000, 2**24]))
        payload = b"".join(
            struct.pack(">I", max(0, min(len(doc) + lie, 2**32 - 1))) + doc for doc in documents
        )
    else:
        payload = b"".join(draw(STRAY) + doc + draw(STRAY) for doc in documents)
    transport = draw(st.sampled_from(["tcp", "tcp", "udp"]))
    if transport == "udp" or len(payload) < 2:
        return Input("udp" if len(payload) <= MAX_DATAGRAM else "tcp", (payload,))
    cuts = sorted(set(draw(st.lists(st.integers(1, len(payload) - 1), max_size=4))))
    bounds = [0, *cuts, len(payload)]
    return Input("tcp", tuple(payload[a:b] for a, b in itertools.pairwise(bounds)))


async def _send(app: App, sent: Input) -> None:
    if sent.transport == "udp":
        assert app.udp_address is not None
        with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
            await sock.sendto(sent.chunks[0], app.udp_address)
        return
    stream = await trio.open_tcp_stream(*app.tcp_addresses[0])
    async with stream:
        try:
            for chunk in sent.chunks:
                await stream.send_all(chunk)
                # Let the daemon read this chunk on its own before the next one arrives.
                await trio.lowlevel.checkpoint()
        except trio.BrokenResourceError:
            pass  # the daemon closed the connection (a frame over max_frame_bytes): allowed


async def test_fuzz_the_intake_path_of_a_live_daemon(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    tried: list[Input] = []
    with trio.fail_after(600), strict_log() as log_bytes:
        app = await start_daemon(rate_limit=NO_LIMITS, flood_limit=NO_LIMITS)
        canary = Canary(app, emulator)

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.large_base_example,
            ],
        )
        @given(inputs())
        def one_input(sent: Input) -> None:
            tried.append(sent)
            trio.from_thread.run(_send, app, sent)
            trio.from_thread.run(canary.check, sent.transport, f"fuzz input {len(tried)}")

        await trio.to_thread.run_sync(one_input)
    assert len(tried) == MAX_EXAMPLES
    assert internal_errors(app) == 0
    log_bytes.getvalue().decode("utf-8")
    transports = {t: sum(1 for i in tried if i.transport == t) for t in ("tcp", "udp")}
    print(
        f"fuzz: {len(tried)} inputs ({transports['tcp']} over TCP in "
        f"{sum(len(i.chunks) for i in tried if i.transport == 'tcp')} writes, "
        f"{transports['udp']} over UDP), {sum(i.size for i in tried)} bytes, "
        f"{canary.sent} canaries delivered"
    )
