"""hipchatd.delivery.spool: the SQLite spool, its group commit, durability, operator commands.

Real SQLite throughout (a file under tmp_path, or ``":memory:"``). Tests about
time run on ``thread_clock``, a MockClock that autojumps but holds still while
a worker thread runs: SQLite runs on one, and a plain autojumping clock would
count the waiting task as blocked and jump while the thread works.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import trio
from structlog.testing import capture_logs
from trio.testing import MockClock

from hipchatd.delivery.routing import Target
from hipchatd.delivery.spool import Entry, EventEntries, Spool, SpoolError, SpoolReadError
from hipchatd.delivery.spool.buffered import new_entries
from hipchatd.delivery.spool.sqlite import (
    BATCH,
    RETRY_POLL,
    SCHEMA_VERSION,
    SHUTDOWN_FLUSH,
    SPOOL_FILE,
    WRITE_RETRY,
    SqliteSpool,
    files,
    sql,
)
from hipchatd.ops import spool_admin
from hipchatd.ops.spool_admin import add_arguments, format_age
from hipchatd.sensu.events import Event, parse_event
from tests.conftest import ClockHold, load_fixture

OPS = Target(kind="room", name="ops", notify=True, username="sensu", message_format="html")
DEV = Target(kind="room", name="dev", notify=False, username="bot", message_format="text")
ONCALL = Target(
    kind="user", name="oncall@example.com", notify=False, username="sensu", message_format="text"
)
DOCUMENT = json.dumps(load_fixture("classic-critical.json"))
EVENT = parse_event(json.loads(DOCUMENT))
ROOT = Path(__file__).resolve().parent.parent


def other_event(check: str) -> tuple[Event, str]:
    document = load_fixture("classic-critical.json")
    document["check"]["name"] = check
    return parse_event(document), json.dumps(document)


@pytest.fixture(params=["file", "memory"])
def state_dir(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A spool directory under tmp_path, or the in-memory spool: same code, same behaviour."""
    return str(tmp_path / "state") if request.param == "file" else ":memory:"


@pytest.fixture
def thread_clock(autojump_clock: MockClock) -> MockClock:
    """The mock clock that never jumps while SQLite works on a worker thread."""
    return autojump_clock


class Committed:
    """The ``on_committed`` callback: records each call, lets a test wait for a count."""

    def __init__(self) -> None:
        #: the entries of each call.
        self.batches: list[list[Entry]] = []
        #: each (handle, entries) handed out, in order.
        self.events: list[EventEntries] = []
        self._changed = trio.Event()

    def __call__(self, events: list[EventEntries]) -> None:
        self.batches.append([entry for _, entries in events for entry in entries])
        self.events.extend(events)
        self._changed.set()
        self._changed = trio.Event()

    @property
    def entries(self) -> list[Entry]:
        return [entry for batch in self.batches for entry in batch]

    async def wait_for(self, count: int) -> list[Entry]:
        while len(self.entries) < count:
            await self._changed.wait()
        return self.entries


@asynccontextmanager
async def running(spool: Spool) -> AsyncIterator[Committed]:
    """``spool.run`` in a nursery; leaving cancels it, which flushes and closes the spool."""
    committed = Committed()
    async with trio.open_nursery() as nursery:
        await nursery.start(spool.run, committed)
        yield committed
        nursery.cancel_scope.cancel()


class Ran(NamedTuple):
    code: int
    out: str
    err: str


def spool_cli(capsys: pytest.CaptureFixture[str], state_dir: str, *argv: str) -> Ran:
    """``hipchatd spool ARGV`` as the CLI runs it; only the command's own output is returned."""
    parser = argparse.ArgumentParser(prog="hipchatd spool")
    add_arguments(parser)
    args = parser.parse_args(argv)
    capsys.readouterr()
    code = spool_admin.run(args, state_dir)
    out, err = capsys.readouterr()
    return Ran(code, out, err)


# --- the daemon's side -----------------------------------------------------------------------


async def test_committed_entries_come_back_in_acceptance_order(state_dir: str) -> None:
    with trio.fail_after(10):
        spool = await SqliteSpool.open(state_dir, max_events=100)
        second, second_doc = other_event("disk")
        async with running(spool) as committed:
            assert spool.submit(EVENT, DOCUMENT, [OPS, DEV], 1000.0)
            assert spool.submit(second, second_doc, [ONCALL], 1001.0)
            entries = await committed.wait_for(3)
        assert [e.id for e in entries] == [1, 2, 3]
        assert [(e.check, e.target, e.accepted_at) for e in entries] == [
            ("testing", OPS, 1000.0),
            ("testing", DEV, 1000.0),
            ("disk", ONCALL, 1001.0),
        ]
        assert entries[2].document == second_doc
        assert entries[0].source == "sensu.test.local"
        assert (entries[0].attempts, entries[0].last_error) == (0, None)
        assert spool.counts() == {"pending": 3, "dead": 0}


def test_new_entries_are_the_entries_the_dataclass_builds() -> None:
    """``submit`` fills entries slot by slot: equal, field for field, to ``Entry(...)``."""
    built = new_entries(7, 1000.0, DOCUMENT, "sensu.test.local", "testing", [OPS, DEV, ONCALL])
    assert built == [
        Entry(7, 1000.0, DOCUMENT, "sensu.test.local", "testing", OPS, 0, None),
        Entry(8, 1000.0, DOCUMENT, "sensu.test.local", "testing", DEV, 0, None),
        Entry(9, 1000.0, DOCUMENT, "sensu.test.local", "testing", ONCALL, 0, None),
    ]
    assert all(type(entry) is Entry and entry.requeued is False for entry in built)
    assert [dataclasses.astuple(entry) for entry in built] == [
        dataclasses.astuple(entry)
        for entry in (
            Entry(n, 1000.0, DOCUMENT, "sensu.test.local", "testing", target, 0, None)
            for n, target in ((7, OPS), (8, DEV), (9, ONCALL))
        )
    ]
    assert new_entries(1, 1.0, DOCUMENT, "s", "c", []) == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        built[0].attempts = 1  # type: ignore[misc]


async def test_each_event_comes_back_with_its_own_handle(state_dir: str) -> None:
    """Commits are matched to submissions by identity; an event with no target stores nothing."""
    first, nowhere, last = object(), object(), object()
    with trio.fail_after(10):
        spool = await SqliteSpool.open(state_dir, max_events=100)
        second, second_doc = other_event("disk")
        async with running(spool) as committed:
            assert spool.submit(EVENT, DOCUMENT, [OPS, DEV], 1000.0, first)
            assert spool.submit(EVENT, DOCUMENT, [], 1001.0, nowhere)
            assert spool.buffered == 2
            assert spool.submit(second, second_doc, [ONCALL], 1002.0, last)
            await committed.wait_for(3)
            await spool.flush()
        assert [handle for handle, _ in committed.events] == [first, last]
        assert committed.events[0][0] is first
        assert committed.events[1][0] is last
        assert [[e.target for e in entries] for _, entries in committed.events] == [
            [OPS, DEV],
            [ONCALL],
        ]
        assert [e.id for e in committed.entries] == [1, 2, 3]
        assert spool.counts() == {"pending": 3, "dead": 0}


async def test_submits_of_one_tick_are_one_transaction(state_dir: str) -> None:
    with trio.fail_after(10):
        spool = await SqliteSpool.open(state_dir, max_events=10_000)
        async with running(spool) as committed:
            for i in range(500):
                assert spool.submit(EVENT, DOCUMENT, [OPS], float(i))
            entries = await committed.wait_for(500)
            assert spool.transactions == 1
            assert len(committed.batches) == 1
            assert [e.id for e in entries] == list(range(1, 501))


async def test_marks_and_new_events_of_one_tick_are_one_transaction(state_dir: str) -> None:
    """Deletes of delivered entries ride with the next new events: one trip, one commit."""
    with trio.fail_after(10):
        spool = await SqliteSpool.open(state_dir, max_events=10_000)
        async with running(spool) as committed:
            for i in range(10):
                assert spool.submit(EVENT, DOCUMENT, [OPS, DEV], float(i))
            first = await committed.wait_for(20)
            before = spool.transactions
            spool.mark_delivered([e.id for e in first[:15]])
            spool.mark_attempt([first[15].id], "HTTP 500: Internal Server Error")
            spool.mark_dead([first[16].id], "expired", None)
            for i in range(10):
                assert spool.submit(EVENT, DOCUMENT, [ONCALL], float(10 + i))
            entries = await committed.wait_for(30)
            await spool.flush()
            assert spool.transactions == before + 1
            assert len(committed.batches) == 2
            assert spool.counts() == {"pending": 14, "dead": 1}
            loaded = await spool.load_documents([e.id for e in entries])
            assert sorted(loaded) == [e.id for e in entries[15:] if e.id != first[16].id]


async def test_a_burst_commits_in_batch_sized_transactions(state_dir: str) -> None:
    count = 2 * BATCH + 10
    with trio.fail_after(20):
        spool = await SqliteSpool.open(state_dir, max_events=10_000)
        async with running(spool) as committed:
            for _ in range(count):
                spool.submit(EVENT, DOCUMENT, [OPS], 0.0)
            entries = await committed.wait_for(count)
            assert [len(b) for b in committed.batches] == [BATCH, BATCH, 10]
            assert [e.id for e in entries] == list(range(1, count + 1))


async def test_reopened_spool_loads_what_was_not_delivered(tmp_path: Path) -> None:
    state_dir = str(tmp_path)
    with trio.fail_after(10):
        spool = await SqliteSpool.open(state_dir, max_events=100)
        async with running(spool) as committed:
            for i in range(5):
                spool.submit(EVENT, DOCUMENT, [OPS if i % 2 else ONCALL], 1000.0 + i)
            ids = [e.id for e in await committed.wait_for(5)]
            spool.mark_attempt([ids[1], ids[3]], "HTTP 500: Internal Server Error")
            spool.mark_attempt([ids[3]], "timed out after 10 s")
            spool.mark_delivered([ids[0]])
            spool.mark_dead([ids[2]], "permanent", "Room not found")
        assert spool.closed

        reopened = await SqliteSpool.open(state_dir, max_events=100)
        assert reopened.counts() == {"pending": 3, "dead": 1}
        loaded = await reopened.load_pending()
        await reopened.aclose()
    assert [e.id for e in loaded] == [ids[1], ids[3], ids[4]]
    assert [(e.attempts, e.last_error) for e in loaded] == [
        (1, "HTTP 500: Internal Server Error"),
        (2, "timed out after 10 s"),
        (0, None),
    ]
    assert [e.target for e in loaded] == [OPS, OPS, ONCALL]
    assert [e.accepted_at for e in loaded] == [1001.0, 1003.0, 1004.0]
    assert all(e.document == DOCUMENT for e in loaded)


async def test_ids_are_never_reused(tmp_path: Path) -> None:
    with trio.fail_after(10):
        spool = await SqliteSpool.open(str(tmp_path), max_events=100)
        async with running(spool) as committed:
            spool.submit(EVENT, DOCUMENT, [OPS, DEV], 0.0)
            first = await committed.wait_for(2)
            spool.mark_delivered([first[1].id])
            spool.mark_dead([first[0].id], "expired", None)
        reopened = await SqliteSpool.open(str(tmp_path), max_events=100)
        assert await reopened.load_pending() == []
        async with running(reopened) as committed:
            reopened.submit(EVENT, DOCUMENT, [OPS], 0.0)
            (again,) = await committed.wait_for(1)
    assert again.id == 3


async def test_mark_delivered_removes_entries(state_dir: str) -> None:
    with trio.fail_after(10):
        spool = await SqliteSpool.open(state_dir, max_events=100)
        async with running(spool) as committed:
            spool.submit(EVENT, DOCUMENT, [OPS, DEV, ONCALL], 0.0)
            entries = await committed.wait_for(3)
            spool.mark_delivered([entries[0].id, entries[2].id])
            await spool.flush()
            assert spool.counts() == {"pending": 1, "dead": 0}
            assert await spool.load_documents([e.id for e in entries]) == {entries[1].id: DOCUMENT}


async def test_scattered_and_repeated_marks_remove_exactly_those_entries(state_dir: str) -> None:
    """Deletes go by runs of consecutive ids: gaps, repeats and any order remove only these."""
    with trio.fail_after(10):
        spool = await SqliteSpool.open(state_dir, max_events=100)
        async with running(spool) as committed:
            for _ in range(20):
                spool.submit(EVENT, DOCUMENT, [OPS], 0.0)
            ids = [e.id for e in await committed.wait_for(20)]
            spool.mark_delivered([ids[9], ids[0], ids[1], ids[2], ids[2], ids[12], ids[13]])
            spool.mark_dead([ids[14], ids[5]], "expired", None)
            spool.mark_delivered([ids[15], ids[5]])
            await spool.flush()
            removed = {0, 1, 2, 5, 9, 12, 13, 14, 15}
            kept = [i for k, i in enumerate(ids) if k not in removed]
            assert set(await spool.load_documents(ids)) == set(kept)
            assert spool.counts() == {"pending": len(kept), "dead": 2}
            assert [e.id for e in await spool.list_dead()] == [ids[5], ids[14]]


async def test_deliveries_of_interleaved_rooms_remove_their_entries_and_then_documents(
    state_dir: str,
) -> None:
    """Rooms confirm at their own pace: many short runs of ids go by lists, and an event's
    document leaves with the last of its entries, whichever room that was."""
    with trio.fail_after(10):
        spool = await SqliteSpool.open(state_dir, max_events=1000)
        async with running(spool) as committed:
            for i in range(300):
                assert spool.submit(EVENT, DOCUMENT, [OPS, DEV, ONCALL], float(i))
            entries = await committed.wait_for(900)
            by_room = {t: [e.id for e in entries if e.target == t] for t in (OPS, DEV, ONCALL)}
            spool.mark_delivered(by_room[OPS] + by_room[OPS][:3])
            spool.mark_dead(by_room[ONCALL][::2], "permanent", "Room not found")
            await spool.flush()
            assert spool.counts() == {"pending": 450, "dead": 150}
            documents = await spool.load_documents([e.id for e in entries])
            assert sorted(documents) == sorted(by_room[DEV] + by_room[ONCALL][1::2])
            spool.mark_delivered(by_room[DEV][1::2])
            spool.mark_delivered(by_room[DEV][::2] + by_room[ONCALL][1::2])
            await spool.flush()
            assert spool.counts() == {"pending": 0, "dead": 150}
            assert await spool.load_documents([e.id for e in entries]) == {}
            dead = await spool.list_dead()
    assert [d.id for d in dead] == by_room[ONCALL][::2]
    if state_dir != ":memory:":
        # The documents of the dead entries stay, every other one goes.
        with sqlite3.connect(Path(state_dir) / SPOOL_FILE) as conn:
            assert conn.execute("SELECT count(*) FROM documents").fetchone() == (150,)


async def test_a_large_batch_fits_the_historical_variable_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Multi-row INSERTs follow SQLite's variable limit: 999 before SQLite 3.32."""
    write_batch = sql.write_batch

    def limited(conn: sqlite3.Connection, batch: Any) -> Any:
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        return write_batch(conn, batch)

    monkeypatch.setattr(sql, "write_batch", limited)
    count = BATCH - 23
    with trio.fail_after(20):
        spool = await SqliteSpool.open(str(tmp_path), max_events=10_000)
        async with running(spool) as committed:
            for i in range(count):
                spool.submit(EVENT, DOCUMENT, [(OPS, DEV, ONCALL)[i % 3]], float(i))
            entries = await committed.wait_for(count)
            assert spool.transactions == 1
        reopened = await SqliteSpool.open(str(tmp_path), max_events=10_000)
        loaded = await reopened.load_pending()
        await reopened.aclose()
    assert loaded == entries
    assert [e.id for e in loaded] == list(range(1, count + 1))


async def test_mark_dead_moves_entries_with_reason_and_error(state_dir: str) -> None:
    with trio.fail_after(10):
        spool = await SqliteSpool.open(state_dir, max_events=100)
        async with running(spool) as committed:
            spool.submit(EVENT, DOCUMENT, [OPS, DEV, ONCALL], 1000.0)
            ops, dev, _ = await committed.wait_for(3)
            spool.mark_attempt([dev.id], "HTTP 503: Service Unavailable")
            spool.mark_dead([ops.id], "permanent", "Room not found")
            spool.mark_dead([dev.id], "expired", None)
            await spool.flush()
            assert spool.counts() == {"pending": 1, "dead": 2}
            dead = await spool.list_dead()
    assert [(d.id, d.target, d.reason, d.error, d.attempts) for d in dead] == [
        (ops.id, OPS, "permanent", "Room not found", 0),
        (dev.id, DEV, "expired", "HTTP 503: Service Unavailable", 1),
    ]
    assert all(d.accepted_at == 1000.0 and d.dead_at > 1000.0 for d in dead)
    assert dead[0].check == "testing"


async def test_a_full_spool_refuses_new_events_and_keeps_the_oldest(state_dir: str) -> None:
    with trio.fail_after(10):
        spool = await SqliteSpool.open(state_dir, max_events=10)
        async with running(spool) as committed:
            for i in range(10):
                assert spool.submit(EVENT, DOCUMENT, [OPS], float(i))
            kept = await committed.wait_for(10)
            assert not spool.submit(EVENT, DOCUMENT, [OPS], 10.0)
            await spool.flush()
            assert spool.counts()["pending"] == 10
            assert [e.accepted_at for e in await spool.load_pending()] == [
                e.accepted_at for e in kept
            ]

            spool.mark_delivered([kept[0].id])
            await spool.flush()
            assert spool.submit(EVENT, DOCUMENT, [OPS], 11.0)


async def test_the_cap_counts_entries_not_yet_committed(state_dir: str) -> None:
    with trio.fail_after(10):
        spool = await SqliteSpool.open(state_dir, max_events=10)
        async with running(spool) as committed:
            for _ in range(8):
                assert spool.submit(EVENT, DOCUMENT, [OPS], 0.0)
            assert spool.buffered == 8
            # All or nothing: three targets do not fit in the two places left.
            assert not spool.submit(EVENT, DOCUMENT, [OPS, DEV, ONCALL], 0.0)
            assert spool.submit(EVENT, DOCUMENT, [OPS, DEV], 0.0)
            assert not spool.submit(EVENT, DOCUMENT, [ONCALL], 0.0)
            await committed.wait_for(10)
        assert len(committed.entries) == 10
        assert spool.counts()["pending"] == 10


async def test_cancelling_run_commits_what_is_buffered(tmp_path: Path) -> None:
    with trio.fail_after(10):
        spool = await SqliteSpool.open(str(tmp_path), max_events=100)
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.run, Committed())
            for i in range(3):
                spool.submit(EVENT, DOCUMENT, [OPS], float(i))
            nursery.cancel_scope.cancel()
        assert not spool.submit(EVENT, DOCUMENT, [OPS], 9.0)
        reopened = await SqliteSpool.open(str(tmp_path), max_events=100)
        loaded = await reopened.load_pending()
        await reopened.aclose()
    assert [e.accepted_at for e in loaded] == [0.0, 1.0, 2.0]


async def test_aclose_commits_what_is_buffered(tmp_path: Path) -> None:
    with trio.fail_after(10):
        spool = await SqliteSpool.open(str(tmp_path), max_events=100)
        spool.submit(EVENT, DOCUMENT, [OPS, DEV], 0.0)
        await spool.aclose()
        await spool.aclose()
        reopened = await SqliteSpool.open(str(tmp_path), max_events=100)
        assert [e.target for e in await reopened.load_pending()] == [OPS, DEV]
        await reopened.aclose()


async def test_the_shutdown_flush_is_bounded(
    tmp_path: Path,
    thread_clock: MockClock,
    clock_hold: ClockHold,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_batch = sql.write_batch
    calls = 0
    release = threading.Event()

    def stuck_after_first(conn: sqlite3.Connection, batch: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            release.wait(10)
        return write_batch(conn, batch)

    monkeypatch.setattr(sql, "write_batch", stuck_after_first)
    try:
        with trio.fail_after(60):
            spool = await SqliteSpool.open(str(tmp_path), max_events=100)
            with capture_logs() as logs:
                async with running(spool) as committed:
                    spool.submit(EVENT, DOCUMENT, [OPS], 0.0)
                    await committed.wait_for(1)
                    # The next commit hangs: time must go on without it.
                    clock_hold.enabled = False
                    spool.submit(EVENT, DOCUMENT, [DEV], 1.0)
                    cancelled_at = trio.current_time()
            assert trio.current_time() - cancelled_at == pytest.approx(SHUTDOWN_FLUSH)
            assert spool.closed
            (incomplete,) = [e for e in logs if e["event"] == "spool.flush_incomplete"]
            assert incomplete["entries"] == 1
            assert incomplete["log_level"] == "error"
    finally:
        release.set()


async def test_a_poll_no_retry_can_fix_ends_run_with_spool_read_error(
    tmp_path: Path, thread_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def mismatch(conn: sqlite3.Connection, now: float, last_version: int | None) -> Any:
        raise sqlite3.IntegrityError("datatype mismatch")

    monkeypatch.setattr(sql, "pick_up", mismatch)
    with trio.fail_after(60):
        spool = await SqliteSpool.open(str(tmp_path), max_events=100)
        with pytest.raises(SpoolReadError) as raised:
            await spool.run(Committed())
    assert str(raised.value) == (
        f"cannot read re-queued entries from the spool {spool.path}: datatype mismatch"
    )
    assert isinstance(raised.value.__cause__, sqlite3.IntegrityError)
    assert spool.closed


async def test_a_failing_round_keeps_its_marks_and_its_events(
    tmp_path: Path, thread_clock: MockClock
) -> None:
    """Marks and new events that failed together are retried together, nothing lost or doubled."""
    with trio.fail_after(60), capture_logs() as logs:
        spool = await SqliteSpool.open(str(tmp_path), max_events=100)
        async with running(spool) as committed:
            spool.submit(EVENT, DOCUMENT, [OPS, DEV, ONCALL], 0.0, "first")
            delivered, failing, dead = await committed.wait_for(3)
            assert spool._worker.conn is not None
            spool._worker.conn.execute("PRAGMA query_only = ON")
            spool.mark_delivered([delivered.id])
            spool.mark_attempt([failing.id], "HTTP 500: Internal Server Error")
            spool.mark_dead([dead.id], "permanent", "Room not found")
            spool.submit(EVENT, DOCUMENT, [OPS, DEV], 1.0, "second")
            await trio.sleep(WRITE_RETRY / 2)
            assert not spool.writable
            assert spool.counts() == {"pending": 3, "dead": 0}
            spool._worker.conn.execute("PRAGMA query_only = OFF")
            entries = await committed.wait_for(5)
            await spool.flush()
            assert spool.writable
            assert spool.counts() == {"pending": 3, "dead": 1}
        failed = [entry for entry in logs if entry["event"] == "spool.write_failed"]
        assert failed
        assert (failed[0]["entries"], failed[0]["items"]) == (2, 5)
        assert "readonly" in failed[0]["error"]
        assert any(entry["event"] == "spool.write_recovered" for entry in logs)

        reopened = await SqliteSpool.open(str(tmp_path), max_events=100)
        loaded = await reopened.load_pending()
        gone = await reopened.list_dead()
        await reopened.aclose()
    assert [handle for handle, _ in committed.events] == ["first", "second"]
    assert [(e.id, e.attempts) for e in loaded] == [
        (failing.id, 1),
        (entries[3].id, 0),
        (entries[4].id, 0),
    ]
    assert [(d.id, d.reason) for d in gone] == [(dead.id, "permanent")]


CRASH_SCRIPT = """
import json, os, signal, sys
import trio
from hipchatd.sensu.events import parse_event
from hipchatd.delivery.routing import Target
from hipchatd.delivery.spool import open_spool

state_dir, count, document = sys.argv[1], int(sys.argv[2]), sys.argv[3]
event = parse_event(json.loads(document))
target = Target("room", "ops", True, "sensu", "html")

async def main():
    spool = await open_spool(state_dir, max_events=count)
    seen = 0

    def on_committed(events):
        nonlocal seen
        seen += sum(len(entries) for _, entries in events)
        if seen == count:
            os.kill(os.getpid(), signal.SIGKILL)

    async with trio.open_nursery() as nursery:
        await nursery.start(spool.run, on_committed)
        for i in range(count):
            spool.submit(event, document, [target], float(i))
            if i % 50 == 0:
                await trio.sleep(0.001)

trio.run(main)
"""


async def killed(script: str, *args: object) -> subprocess.CompletedProcess[bytes]:
    """``script`` with ``args`` and DOCUMENT in a child process that must end by SIGKILL."""
    process = await trio.run_process(
        [sys.executable, "-c", script, *map(str, args), DOCUMENT],
        check=False,
        capture_stdout=True,
        capture_stderr=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()
    return process


async def test_committed_entries_survive_kill_9(tmp_path: Path) -> None:
    count = 500
    with trio.fail_after(30):
        await killed(CRASH_SCRIPT, tmp_path, count)
        spool = await SqliteSpool.open(str(tmp_path), max_events=count)
        loaded = await spool.load_pending()
        await spool.aclose()
    assert [e.id for e in loaded] == list(range(1, count + 1))
    assert [e.accepted_at for e in loaded] == [float(i) for i in range(count)]


COALESCED_CRASH_SCRIPT = """
import json, os, signal, sys
import trio
from hipchatd.sensu.events import parse_event
from hipchatd.delivery.routing import Target
from hipchatd.delivery.spool import open_spool

state_dir, rounds, document = sys.argv[1], int(sys.argv[2]), sys.argv[3]
event = parse_event(json.loads(document))
targets = [Target("room", name, True, "sensu", "html") for name in ("ops", "dev")]

async def main():
    spool = await open_spool(state_dir, max_events=100_000)
    seen = 0
    kept = []

    def submit_some():
        for i in range(7):
            spool.submit(event, document, targets[: 1 + i % 2], float(i))

    def on_committed(events):
        # Each round's deliveries are buffered with the next round's events.
        nonlocal seen
        seen += 1
        ids = [e.id for _, entries in events for e in entries]
        kept.extend(i for i in ids if i % 5 == 0)
        if seen == rounds:
            print(json.dumps({"kept": kept, "last": ids, "transactions": spool.transactions}))
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        spool.mark_delivered([i for i in ids if i % 5])
        submit_some()

    async with trio.open_nursery() as nursery:
        await nursery.start(spool.run, on_committed)
        submit_some()

trio.run(main)
"""


async def test_deletes_committed_with_new_events_survive_kill_9(tmp_path: Path) -> None:
    """Deliveries commit in the transaction of the next events: at a kill between commits,
    every accepted entry not yet confirmed is pending and every confirmed one is gone."""
    rounds = 40
    with trio.fail_after(30):
        process = await killed(COALESCED_CRASH_SCRIPT, tmp_path, rounds)
        # The last line: the spool's log lines come first.
        seen = json.loads(process.stdout.splitlines()[-1])
        spool = await SqliteSpool.open(str(tmp_path), max_events=1000)
        loaded = await spool.load_pending()
        await spool.aclose()
    # One transaction per round: the deletes never took a commit of their own.
    assert seen["transactions"] == rounds
    # Never delivered, or delivered but not yet committed when the process died.
    expected = sorted({*seen["kept"], *seen["last"]})
    assert [e.id for e in loaded] == expected
    assert len(expected) > rounds
    with sqlite3.connect(tmp_path / SPOOL_FILE) as conn:
        # A document leaves in the transaction that deletes its last entry.
        orphans = conn.execute(
            "SELECT count(*) FROM documents d"
            " WHERE NOT EXISTS (SELECT 1 FROM pending p WHERE p.document_id = d.id)"
        ).fetchone()[0]
    assert orphans == 0


async def test_a_failing_commit_is_retried_with_its_batch(
    tmp_path: Path, thread_clock: MockClock
) -> None:
    with trio.fail_after(60):
        spool = await SqliteSpool.open(str(tmp_path), max_events=100)
        async with running(spool) as committed:
            # A read-only connection: every write fails as on a read-only or full disk.
            assert spool._worker.conn is not None
            spool._worker.conn.execute("PRAGMA query_only = ON")
            with capture_logs() as logs:
                spool.submit(EVENT, DOCUMENT, [OPS, DEV], 0.0)
                await trio.sleep(WRITE_RETRY / 2)
                assert not spool.writable
                assert committed.entries == []
                spool.submit(EVENT, DOCUMENT, [ONCALL], 1.0)
                await trio.sleep(WRITE_RETRY)
                spool._worker.conn.execute("PRAGMA query_only = OFF")
                entries = await committed.wait_for(3)
            assert spool.writable
            assert [e.target for e in entries] == [OPS, DEV, ONCALL]
            assert [e.id for e in entries] == [1, 2, 3]
        failures = [entry for entry in logs if entry["event"] == "spool.write_failed"]
        assert len(failures) >= 2
        assert failures[0]["log_level"] == "error"
        assert failures[0]["entries"] == 2
        assert "readonly" in failures[0]["error"]
        assert any(entry["event"] == "spool.write_recovered" for entry in logs)

        reopened = await SqliteSpool.open(str(tmp_path), max_events=100)
        assert [e.target for e in await reopened.load_pending()] == [OPS, DEV, ONCALL]
        await reopened.aclose()


async def test_the_memory_spool_is_not_kept(tmp_path: Path) -> None:
    with trio.fail_after(10):
        spool = await SqliteSpool.open(":memory:", max_events=10)
        async with running(spool) as committed:
            spool.submit(EVENT, DOCUMENT, [OPS], 0.0)
            await committed.wait_for(1)
        assert spool.path == ":memory:"
        fresh = await SqliteSpool.open(":memory:", max_events=10)
        assert await fresh.load_pending() == []
        await fresh.aclose()
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240 (a tmp dir listing, after the run)


async def test_a_new_spool_is_private(tmp_path: Path) -> None:
    state_dir = tmp_path / "new" / "state"
    with trio.fail_after(10):
        spool = await SqliteSpool.open(str(state_dir), max_events=10)
        await spool.aclose()
    assert (state_dir.stat().st_mode & 0o777) == 0o700
    assert ((state_dir / SPOOL_FILE).stat().st_mode & 0o777) == 0o600


async def test_open_errors_name_the_path_the_cause_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every way the spool cannot be opened is one SpoolError line: path, cause, what to do."""
    a_file = tmp_path / "not-a-directory"
    a_file.write_text("")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / SPOOL_FILE).write_bytes(b"this is not an SQLite database, not even close" * 100)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with sqlite3.connect(foreign / SPOOL_FILE) as conn:
        conn.execute("CREATE TABLE t (x)")
    newer = tmp_path / "newer"
    newer.mkdir()
    with sqlite3.connect(newer / SPOOL_FILE) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    a_directory = tmp_path / "a-directory"
    (a_directory / SPOOL_FILE).mkdir(parents=True)
    locked = tmp_path / "locked"
    with trio.fail_after(10):
        await (await SqliteSpool.open(str(locked), max_events=10)).aclose()
    cases = [
        (a_file, f"{a_file} is not a directory; set hipchatd.state_dir"),
        (a_file / "state", f"{a_file} is not a directory; set hipchatd.state_dir"),
        (garbage, "the file is not an SQLite database (file is not a database)"),
        (foreign, "it is an SQLite database but not a hipchatd spool; move it away"),
        (newer, f"schema version {SCHEMA_VERSION + 1}, written by a newer hipchatd"),
        (a_directory, f"{a_directory / SPOOL_FILE} is a directory; move it away"),
        (locked, "the database is locked by another program (database is locked"),
        (tmp_path / "in-use", f"another hipchatd process (pid {os.getpid()}) is using it"),
    ]
    # Another program (an sqlite3 shell, say) holds a write lock; waiting 5 s adds nothing here.
    monkeypatch.setattr(files, "BUSY_TIMEOUT_MS", 50)
    holder = sqlite3.connect(locked / SPOOL_FILE, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with trio.fail_after(10):
        in_use = await SqliteSpool.open(str(tmp_path / "in-use"), max_events=10)
        for state_dir, cause in cases:
            with pytest.raises(SpoolError) as info:
                await SqliteSpool.open(str(state_dir), max_events=10)
            message = str(info.value)
            assert message.startswith(f"cannot open the spool {state_dir / SPOOL_FILE}: ")
            assert cause in message
            assert "\n" not in message
        holder.close()
        await in_use.aclose()
        for state_dir in (tmp_path / "in-use", locked):
            reopened = await SqliteSpool.open(str(state_dir), max_events=10)
            await reopened.aclose()


# --- operator commands -----------------------------------------------------------------------


async def spool_with_history(state_dir: str) -> tuple[SqliteSpool, list[Entry]]:
    """A closed spool file: one entry delivered, one retried, two dead, one waiting."""
    now = time.time()
    spool = await SqliteSpool.open(state_dir, max_events=100)
    disk, disk_doc = other_event("check_disk")
    async with running(spool) as committed:
        spool.submit(EVENT, DOCUMENT, [OPS, DEV], now - 192.5)
        spool.submit(disk, disk_doc, [ONCALL], now - 7300.5)
        spool.submit(EVENT, DOCUMENT, [OPS], now - 5.5)
        entries = await committed.wait_for(4)
        spool.mark_attempt([entries[1].id], "HTTP 500: " + "x" * 200)
        spool.mark_dead([entries[2].id], "permanent", "HTTP 404: Room not found")
        spool.mark_dead([entries[3].id], "expired", None)
        spool.mark_delivered([entries[0].id])
    return spool, entries


async def test_list_shows_pending_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(10):
        _, entries = await spool_with_history(str(tmp_path))
    ran = spool_cli(capsys, str(tmp_path), "list")
    assert ran.code == 0
    lines = ran.out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == [
        "ID", "AGE", "SOURCE/CHECK", "TARGET", "ATTEMPTS", "LAST ERROR"
    ]  # fmt: skip
    assert len(lines) == 2
    columns = re.split(r"\s{2,}", lines[1])
    assert columns[:5] == [str(entries[1].id), "3m12s", "sensu.test.local/testing", "dev", "1"]
    assert columns[5].startswith("HTTP 500: xxx")
    assert columns[5].endswith("...")
    assert len(columns[5]) <= 60


async def test_list_dead_shows_reasons(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with trio.fail_after(10):
        _, entries = await spool_with_history(str(tmp_path))
    ran = spool_cli(capsys, str(tmp_path), "list", "--dead")
    assert ran.code == 0
    header, *rows = ran.out.splitlines()
    assert re.split(r"\s{2,}", header) == [
        "ID", "AGE", "SOURCE/CHECK", "TARGET", "ATTEMPTS", "REASON", "ERROR"
    ]  # fmt: skip
    assert [re.split(r"\s{2,}", row) for row in rows] == [
        [
            str(entries[2].id),
            "2h01m",
            "sensu.test.local/check_disk",
            "user:oncall@example.com",
            "0",
            "permanent",
            "HTTP 404: Room not found",
        ],
        [str(entries[3].id), "5s", "sensu.test.local/testing", "ops", "0", "expired", "-"],
    ]
    # Aligned: every column starts at the same offset on every line.
    assert {row.index("sensu.test.local") for row in rows} == {header.index("SOURCE/CHECK")}


async def test_list_of_an_empty_spool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with trio.fail_after(10):
        await (await SqliteSpool.open(str(tmp_path), max_events=10)).aclose()
    assert spool_cli(capsys, str(tmp_path), "list") == (0, "no pending events\n", "")
    assert spool_cli(capsys, str(tmp_path), "list", "--dead") == (
        0,
        "no dead-lettered events\n",
        "",
    )


async def test_retry_is_picked_up_by_the_running_daemon(
    tmp_path: Path, thread_clock: MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run in this process, the operator's retry wakes the writer at once (no poll waited)."""
    with trio.fail_after(60):
        spool = await SqliteSpool.open(str(tmp_path), max_events=100)
        async with running(spool) as committed:
            handle = object()
            spool.submit(EVENT, DOCUMENT, [OPS], 1000.0, handle)
            (entry,) = await committed.wait_for(1)
            spool.mark_attempt([entry.id], "HTTP 500")
            spool.mark_dead([entry.id], "expired", None)
            await spool.flush()
            assert spool.counts() == {"pending": 0, "dead": 1}

            ran = spool_cli(capsys, str(tmp_path), "retry", str(entry.id))
            assert ran.code == 0
            assert ran.out.startswith("re-queued 1 dead-lettered event ")
            asked = trio.current_time()
            with capture_logs() as logs:
                _, retried = await committed.wait_for(2)
            assert trio.current_time() - asked < RETRY_POLL / 2
            assert retried.id == entry.id
            assert (retried.target, retried.document) == (OPS, DOCUMENT)
            assert (retried.attempts, retried.last_error) == (0, None)
            assert retried.requeued
            assert not entry.requeued
            # No submit made it: it comes back with no handle.
            assert committed.events == [(handle, [entry]), (None, [retried])]
            assert retried.accepted_at > 1000.0
            assert spool.counts() == {"pending": 1, "dead": 0}
            assert [e["event"] for e in logs] == ["spool.requeued"]

            # Picked up once: the next looks hand out nothing more.
            await spool.poll_now()
            await spool.poll_now()
            assert len(committed.entries) == 2
            loaded = await spool.load_pending()
    # A spool that stopped running is no longer woken (nor kept alive) by the registry.
    assert files._watchers == {}
    assert [(e.id, e.attempts) for e in loaded] == [(entry.id, 0)]


async def test_a_retry_from_another_process_is_picked_up_by_the_poll(
    tmp_path: Path,
    thread_clock: MockClock,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A commit no in-process wake-up announces (another process's) is seen by data_version."""
    monkeypatch.setattr(files, "announce_change", lambda path: None)
    with trio.fail_after(60):
        spool = await SqliteSpool.open(str(tmp_path), max_events=100)
        async with running(spool) as committed:
            spool.submit(EVENT, DOCUMENT, [OPS], 1000.0)
            (entry,) = await committed.wait_for(1)
            spool.mark_dead([entry.id], "expired", None)
            await spool.flush()
            ran = spool_cli(capsys, str(tmp_path), "retry", str(entry.id))
            assert ran.out.endswith(f"picks them up within {RETRY_POLL:g} s)\n")
            asked = trio.current_time()
            _, retried = await committed.wait_for(2)
            assert trio.current_time() - asked <= RETRY_POLL
            assert (retried.id, retried.requeued) == (entry.id, True)
            assert spool.counts() == {"pending": 1, "dead": 0}


async def test_retry_while_the_daemon_is_down_is_loaded_at_start(
    tmp_path: Path, thread_clock: MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(60):
        _, entries = await spool_with_history(str(tmp_path))
        ran = spool_cli(capsys, str(tmp_path), "retry", "--all")
        assert ran.code == 0
        assert ran.out.startswith("re-queued 2 dead-lettered events ")
        spool = await SqliteSpool.open(str(tmp_path), max_events=100)
        assert spool.counts() == {"pending": 3, "dead": 0}
        loaded = await spool.load_pending()
        async with running(spool) as committed:
            await spool.poll_now()
    assert [e.id for e in loaded] == [e.id for e in entries[1:]]
    assert [(e.attempts, e.last_error) for e in loaded[1:]] == [(0, None), (0, None)]
    assert not any(e.requeued for e in loaded)
    assert committed.entries == []


async def test_retry_of_an_unknown_id_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(10):
        _, entries = await spool_with_history(str(tmp_path))
    pending_id, dead_id = entries[1].id, entries[2].id
    ran = spool_cli(capsys, str(tmp_path), "retry", str(dead_id), "999", str(pending_id))
    assert ran.code == 1
    err = ran.err
    assert "no dead-lettered entry with id 999" in err
    assert f"entry {pending_id} is pending, not dead-lettered" in err
    assert len(spool_cli(capsys, str(tmp_path), "list", "--dead").out.splitlines()) == 3


async def test_purge_deletes_dead_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(10):
        await spool_with_history(str(tmp_path))
        assert spool_cli(capsys, str(tmp_path), "purge", "--dead") == (
            0,
            "purged 2 dead-lettered events from the dead-letter table\n",
            "",
        )
        assert spool_cli(capsys, str(tmp_path), "retry", "--all") == (
            0,
            "no dead-lettered events\n",
            "",
        )
        spool = await SqliteSpool.open(str(tmp_path), max_events=100)
        assert spool.counts() == {"pending": 1, "dead": 0}
        await spool.aclose()


def test_commands_need_an_existing_spool_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = spool_cli(capsys, str(tmp_path / "nowhere"), "list")
    assert ran.code == 1
    assert f"no spool at {tmp_path / 'nowhere' / SPOOL_FILE}" in ran.err
    assert not (tmp_path / "nowhere").exists()
    ran = spool_cli(capsys, ":memory:", "list", "--dead")
    assert ran.code == 1
    assert "in memory" in ran.err


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(-3, "0s"), (0.9, "0s"), (59, "59s"), (192, "3m12s"), (3600, "1h00m"), (90061, "1d01h")],
)
def test_format_age(seconds: float, shown: str) -> None:
    assert format_age(seconds) == shown
