"""hipchatd.delivery.spool at its edges: storage per event, migration, a full disk, a lost file.

Real SQLite files under tmp_path throughout. A full disk is SQLite's own
``SQLITE_FULL``, made deterministic with ``PRAGMA max_page_count`` on the
daemon's connection: the file may not grow past a given number of pages.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
from structlog.testing import capture_logs
from trio.testing import MockClock

from hipchatd.config import Listen
from hipchatd.delivery.routing import Target
from hipchatd.delivery.spool import (
    Entry,
    EventEntries,
    Spool,
    SpoolError,
    SpoolReadError,
    SpoolWriteError,
)
from hipchatd.delivery.spool.sqlite import SCHEMA_VERSION, SPOOL_FILE, SqliteSpool, sql
from hipchatd.delivery.spool.sqlite.files import os_cause
from hipchatd.emulator import Emulator
from hipchatd.sensu.events import Event, parse_event
from tests.conftest import (
    StartDaemon,
    classic_event,
    load_fixture,
    ndjson,
    represented,
    send_tcp,
    wait_until,
)
from tests.test_spool import DOCUMENT, EVENT, OPS, Committed, spool_cli

#: Bytes of the event document in the one-event-to-many-rooms case (as measured in the field).
LARGE_DOCUMENT = 117 * 1024
ROOMS = 2000


def rooms(count: int) -> list[Target]:
    return [
        Target(kind="room", name=f"room-{i}", notify=False, username="sensu", message_format="html")
        for i in range(count)
    ]


def event_of(check: str, output_bytes: int = 100) -> tuple[Event, str]:
    document = load_fixture("classic-critical.json")
    document["check"]["name"] = check
    document["check"]["output"] = "x" * output_bytes
    return parse_event(document), json.dumps(document)


class Refused:
    """The ``on_refused`` callback: records the handle and the entries of each refused event."""

    def __init__(self) -> None:
        self.events: list[list[Entry]] = []
        self.handles: list[object] = []

    def __call__(self, event: EventEntries) -> None:
        self.handles.append(event[0])
        self.events.append(event[1])


@asynccontextmanager
async def running(spool: Spool) -> AsyncIterator[tuple[Committed, Refused]]:
    """``spool.run`` with both callbacks; leaving cancels it, which flushes and closes."""
    committed, refused = Committed(), Refused()
    async with trio.open_nursery() as nursery:

        async def run(task_status: trio.TaskStatus[None]) -> None:
            await spool.run(committed, on_refused=refused, task_status=task_status)

        await nursery.start(run)
        yield committed, refused
        nursery.cancel_scope.cancel()


def table_count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        count: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return count


@pytest.fixture
def thread_clock(autojump_clock: MockClock) -> MockClock:
    """The mock clock that never jumps while SQLite works on a worker thread."""
    return autojump_clock


# --- one document per event ------------------------------------------------------------------


async def test_an_event_to_many_rooms_stores_its_document_once(tmp_path: Path) -> None:
    event, document = event_of("big", LARGE_DOCUMENT)
    targets = rooms(ROOMS)
    with trio.fail_after(60):
        spool = await SqliteSpool.open(str(tmp_path), max_events=10_000)
        async with running(spool) as (committed, _):
            assert spool.submit(event, document, targets, 1000.0)
            entries = await committed.wait_for(ROOMS)
            loaded = await spool.load_documents([e.id for e in entries])
        reopened = await SqliteSpool.open(str(tmp_path), max_events=10_000)
        recovered = await reopened.load_pending()
        await reopened.aclose()
    assert [e.target for e in recovered] == targets
    assert all(e.document == document for e in recovered)
    # Read back once and shared, not a copy per room.
    assert len({id(e.document) for e in recovered}) == 1
    assert len({id(text) for text in loaded.values()}) == 1
    assert table_count(tmp_path / SPOOL_FILE, "documents") == 1
    # O(document) on disk: the document once plus a small row per room (was 2,000 copies).
    files = [tmp_path / SPOOL_FILE, tmp_path / f"{SPOOL_FILE}-wal"]
    size = sum(f.stat().st_size for f in files if f.exists())
    assert size < 4 * LARGE_DOCUMENT + ROOMS * 200


async def test_a_document_leaves_with_its_last_entry(
    tmp_path: Path, thread_clock: MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    first, first_doc = event_of("first")
    second, second_doc = event_of("second")
    path = tmp_path / SPOOL_FILE
    with trio.fail_after(20):
        spool = await SqliteSpool.open(str(tmp_path), max_events=100)
        async with running(spool) as (committed, _):
            spool.submit(first, first_doc, rooms(3), 1000.0)
            spool.submit(second, second_doc, rooms(2), 1001.0)
            a, b, c, d, e = await committed.wait_for(5)
            spool.mark_delivered([a.id, b.id, d.id])
            spool.mark_dead([c.id], "permanent", "Room not found")
            await spool.flush()
            # Both documents still have an entry: the first a dead one.
            assert table_count(path, "documents") == 2
            spool.mark_delivered([e.id])
            await spool.flush()
            assert table_count(path, "documents") == 1
            assert await spool.load_documents([a.id, e.id]) == {}

            # Back from the dead letters, with its document.
            assert spool_cli(capsys, str(tmp_path), "retry", str(c.id)).code == 0
            retried = (await committed.wait_for(6))[-1]
            assert (retried.id, retried.document) == (c.id, first_doc)
            assert await spool.load_documents([c.id]) == {c.id: first_doc}
            spool.mark_dead([c.id], "permanent", "Room not found")
            await spool.flush()
    assert table_count(path, "documents") == 1
    assert spool_cli(capsys, str(tmp_path), "purge", "--dead").code == 0
    assert table_count(path, "documents") == 0
    assert table_count(path, "dead") == 0


# --- schema migration ------------------------------------------------------------------------

#: The version 1 schema, as hipchatd wrote it: every entry carries the whole document.
V1_SCHEMA = (
    """CREATE TABLE pending (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        accepted_at REAL NOT NULL,
        source TEXT NOT NULL,
        check_name TEXT NOT NULL,
        target TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        requeued INTEGER NOT NULL DEFAULT 0,
        document TEXT NOT NULL
    )""",
    "CREATE INDEX pending_requeued ON pending (id) WHERE requeued = 1",
    """CREATE TABLE dead (
        id INTEGER PRIMARY KEY,
        accepted_at REAL NOT NULL,
        dead_at REAL NOT NULL,
        source TEXT NOT NULL,
        check_name TEXT NOT NULL,
        target TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        reason TEXT NOT NULL,
        error TEXT,
        document TEXT NOT NULL
    )""",
    "CREATE INDEX dead_dead_at ON dead (dead_at)",
)


def target_json(name: str) -> str:
    return json.dumps(
        {
            "kind": "room",
            "name": name,
            "notify": False,
            "username": "sensu",
            "message_format": "html",
        },
        separators=(",", ":"),
    )


def write_v1_spool(state_dir: Path) -> dict[int, str]:
    """A version 1 spool as a v1 daemon left it; returns every entry's document by id.

    Event A (ids 1-3): 1 delivered, 2 dead, 3 pending. Event B (4-5): both pending, 4 retried
    by the operator while the daemon was down. Event C (6): delivered. Event D (7-8): dead and
    pending, with the same text as B (an identical event sent twice). Ids up to 9 were handed
    out (9 was delivered), so a new entry gets 10.
    """
    state_dir.mkdir()
    docs = {name: json.dumps({**load_fixture("classic-critical.json"), "n": name}) for name in "AB"}
    docs["D"] = docs["B"]
    pending = [
        (3, 1000.0, "A", "r3", 2, "HTTP 500", 0),
        (4, 1001.0, "B", "r1", 1, "HTTP 502", 1),
        (5, 1001.0, "B", "r2", 0, None, 0),
        (8, 1003.0, "D", "r2", 0, None, 0),
    ]
    dead = [
        (2, 1000.0, 1500.0, "A", "r2", 3, "expired", "HTTP 500"),
        (7, 1003.0, 1600.0, "D", "r1", 1, "permanent", "Room not found"),
    ]
    with sqlite3.connect(state_dir / SPOOL_FILE) as conn:
        for statement in V1_SCHEMA:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO pending (id, accepted_at, source, check_name, target, attempts,"
            " last_error, requeued, document) VALUES (?, ?, 'src', ?, ?, ?, ?, ?, ?)",
            [
                (i, at, f"check-{ev}", target_json(room), n, err, requeued, docs[ev])
                for i, at, ev, room, n, err, requeued in pending
            ],
        )
        conn.executemany(
            "INSERT INTO dead (id, accepted_at, dead_at, source, check_name, target, attempts,"
            " reason, error, document) VALUES (?, ?, ?, 'src', ?, ?, ?, ?, ?, ?)",
            [
                (i, at, dead_at, f"check-{ev}", target_json(room), n, reason, err, docs[ev])
                for i, at, dead_at, ev, room, n, reason, err in dead
            ],
        )
        conn.execute("UPDATE sqlite_sequence SET seq = 9 WHERE name = 'pending'")
        conn.execute("PRAGMA user_version = 1")
    entries = {i: docs[ev] for i, _, ev, *_ in pending}
    entries.update({i: docs[ev] for i, _, _, ev, *_ in dead})
    return entries


async def test_a_version_1_spool_is_migrated_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "state"
    documents = write_v1_spool(state_dir)
    before = spool_cli(capsys, str(state_dir), "list", "--dead")
    assert before.code == 1
    assert "start the daemon once to upgrade it" in before.err
    with trio.fail_after(20):
        with capture_logs() as logs:
            spool = await SqliteSpool.open(str(state_dir), max_events=100)
        assert [e for e in logs if e["event"] == "spool.migrated"] == [
            {
                "event": "spool.migrated",
                "log_level": "info",
                "path": str(state_dir / SPOOL_FILE),
                "from_version": 1,
                "to_version": SCHEMA_VERSION,
            }
        ]
        assert spool.counts() == {"pending": 4, "dead": 2}
        loaded = await spool.load_pending()
        dead = await spool.list_dead()
        async with running(spool) as (committed, _):
            assert spool.submit(EVENT, DOCUMENT, [OPS], 2000.0)
            (new,) = await committed.wait_for(1)
            assert await spool.load_documents([e.id for e in loaded]) == {
                e.id: documents[e.id] for e in loaded
            }
            spool.mark_delivered([e.id for e in loaded])
            await spool.flush()
            assert spool.counts() == {"pending": 1, "dead": 2}
    assert new.id == 10
    assert [(e.id, e.check, e.target.name, e.attempts, e.last_error) for e in loaded] == [
        (3, "check-A", "r3", 2, "HTTP 500"),
        # Re-queued by the operator: picked up with attempts and error reset.
        (4, "check-B", "r1", 0, None),
        (5, "check-B", "r2", 0, None),
        (8, "check-D", "r2", 0, None),
    ]
    assert all(e.document == documents[e.id] for e in loaded)
    assert [(d.id, d.check, d.attempts, d.reason, d.error) for d in dead] == [
        (2, "check-A", 3, "expired", "HTTP 500"),
        (7, "check-D", 1, "permanent", "Room not found"),
    ]
    path = state_dir / SPOOL_FILE
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        # A's stays for its dead entry 2; B's (D has the same text: one document for 4-8)
        # for the dead entry 7.
        assert conn.execute("SELECT id FROM documents ORDER BY id").fetchall() == [
            (2,),
            (4,),
            (10,),
        ]
    after = spool_cli(capsys, str(state_dir), "retry", "--all")
    assert after.code == 0
    with trio.fail_after(20):
        reopened = await SqliteSpool.open(str(state_dir), max_events=100)
        retried = await reopened.load_pending()
        await reopened.aclose()
    assert [(e.id, e.document) for e in retried] == [
        (2, documents[2]),
        (7, documents[7]),
        (10, DOCUMENT),
    ]


# --- a full disk -----------------------------------------------------------------------------


async def test_marks_commit_and_an_event_that_cannot_fit_is_refused(
    tmp_path: Path, thread_clock: MockClock
) -> None:
    """A batch that does not fit is halved; marks commit first; the one that cannot fit goes."""
    small, small_doc = event_of("small", 1000)
    huge, huge_doc = event_of("huge", 600_000)
    later, later_doc = event_of("later", 1000)
    with trio.fail_after(60):
        spool = await SqliteSpool.open(str(tmp_path), max_events=100)
        async with running(spool) as (committed, refused):
            spool.submit(small, small_doc, rooms(2), 1000.0)
            first = await committed.wait_for(2)
            assert spool._worker.conn is not None
            pages = spool._worker.conn.execute("PRAGMA page_count").fetchone()[0]
            # A few pages of room: small events fit, 600 KB does not.
            spool._worker.conn.execute(f"PRAGMA max_page_count = {pages + 4}")
            with capture_logs() as logs:
                spool.mark_delivered([first[0].id])
                spool.mark_dead([first[1].id], "permanent", "Room not found")
                # Each event's handle is its check name: what comes back says whose it is.
                for check in ("a", "b"):
                    spool.submit(*event_of(check, 1000), rooms(2), 1001.0, check)
                spool.submit(huge, huge_doc, rooms(3), 1002.0, "huge")
                spool.submit(later, later_doc, rooms(1), 1003.0, "later")
                await committed.wait_for(7)
                await spool.flush()
                assert spool.buffered == 0
                # Its readers go on: nothing is left waiting for a commit.
                await spool.wait_for_room()
                assert not spool.writable
            assert spool.counts() == {"pending": 5, "dead": 1}
            assert [e.check for e in committed.entries[2:]] == ["a", "a", "b", "b", "later"]
            assert [[e.check for e in event] for event in refused.events] == [["huge"] * 3]
            # The refused event in the middle leaves its neighbours paired with their own.
            assert refused.handles == ["huge"]
            assert [
                (handle, [e.check for e in entries]) for handle, entries in committed.events
            ] == [
                (None, ["small", "small"]),
                ("a", ["a", "a"]),
                ("b", ["b", "b"]),
                ("later", ["later"]),
            ]
            [refusal] = [e for e in logs if e["event"] == "event.refused"]
            assert refusal["log_level"] == "error"
            assert refusal["error"] == "database or disk is full"
            assert (refusal["check"], refusal["targets"]) == ("huge", 3)
            assert refusal["nbytes"] == len(huge_doc)
            assert not [e for e in logs if e["event"] == "spool.write_failed"]

            # The next commit that works makes the spool writable again.
            spool.submit(small, small_doc, rooms(1), 1004.0)
            await committed.wait_for(8)
            assert spool.writable
    reopened = await SqliteSpool.open(str(tmp_path), max_events=100)
    kept = await reopened.load_pending()
    dead = await reopened.list_dead()
    await reopened.aclose()
    assert [e.check for e in kept] == ["a", "a", "b", "b", "later", "small"]
    assert [d.id for d in dead] == [first[1].id]


async def test_marks_are_committed_while_new_events_keep_failing(
    tmp_path: Path, thread_clock: MockClock
) -> None:
    """Deliveries free the spool even when every write of new events fails."""
    with trio.fail_after(60):
        spool = await SqliteSpool.open(str(tmp_path), max_events=100)
        async with running(spool) as (committed, _):
            spool.submit(EVENT, DOCUMENT, rooms(3), 1000.0)
            first = await committed.wait_for(3)
            assert spool._worker.conn is not None
            # No new row fits anywhere: every insert fails, deletes still work.
            pages = spool._worker.conn.execute("PRAGMA page_count").fetchone()[0]
            spool._worker.conn.execute(f"PRAGMA max_page_count = {pages}")
            with capture_logs() as logs:
                spool.submit(*event_of("blocked", 200_000), rooms(1), 1001.0)
                spool.mark_delivered([e.id for e in first])
                await spool.flush()
            assert spool.counts() == {"pending": 0, "dead": 0}
            assert [e["event"] for e in logs if e["log_level"] == "error"] == ["event.refused"]


async def test_deliveries_commit_when_other_marks_do_not_fit(
    tmp_path: Path, thread_clock: MockClock
) -> None:
    """Deliveries only delete: they go alone when an error text or a dead letter has no room."""
    with trio.fail_after(60):
        spool = await SqliteSpool.open(str(tmp_path), max_events=100)
        async with running(spool) as (committed, _):
            spool.submit(EVENT, DOCUMENT, rooms(2), 1000.0)
            first, second = await committed.wait_for(2)
            assert spool._worker.conn is not None
            pages = spool._worker.conn.execute("PRAGMA page_count").fetchone()[0]
            spool._worker.conn.execute(f"PRAGMA max_page_count = {pages}")
            with capture_logs() as logs:
                spool.mark_attempt([first.id], "HTTP 500: " + "e" * 200_000)
                spool.mark_delivered([second.id])
                while spool.counts()["pending"] != 1:
                    await trio.sleep(0.1)
                assert [e["event"] for e in logs] == ["spool.write_failed"]
                assert not spool.writable
                # Room again: the kept attempt is committed at the next try.
                spool._worker.conn.execute(f"PRAGMA max_page_count = {2**30}")
                while not spool.writable:
                    await trio.sleep(0.1)
            loaded = await spool.load_pending()
    assert [(e.id, e.attempts) for e in loaded] == [(first.id, 1)]
    assert loaded[0].last_error is not None
    assert loaded[0].last_error.startswith("HTTP 500: eee")


# --- the file under the daemon ---------------------------------------------------------------


async def test_a_deleted_or_replaced_spool_file_is_noticed(
    tmp_path: Path, thread_clock: MockClock
) -> None:
    path = tmp_path / SPOOL_FILE
    with trio.fail_after(60):
        spool = await SqliteSpool.open(str(tmp_path), max_events=100)
        async with running(spool):
            assert spool.file_problem() is None
            with capture_logs() as logs:
                path.unlink()
                deleted = spool.file_problem()
                # The writer's look, as every RETRY_POLL, without waiting for one.
                await spool.poll_now()
                other = tmp_path / "other.sqlite3"
                other.write_bytes(b"")
                other.rename(path)
                replaced = spool.file_problem()
                await spool.poll_now()
    assert deleted is not None
    assert f"spool file {path} was deleted while hipchatd runs" in deleted
    assert "restart hipchatd" in deleted
    assert replaced is not None
    assert f"spool file {path} was replaced by another file" in replaced
    # The writer noticed too, and said so once.
    [lost] = [e for e in logs if e["event"] == "spool.file_lost"]
    assert lost["log_level"] == "error"
    assert lost["problem"] == deleted


async def test_healthz_turns_503_when_the_spool_file_is_deleted_or_replaced(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    path = tmp_path / SPOOL_FILE
    with trio.fail_after(20):
        app = await start_daemon(metrics=Listen("127.0.0.1", 0), state_dir=str(tmp_path))
        url = f"http://{app.metrics_addresses[0]}/healthz"
        async with httpx.AsyncClient() as client:
            healthy = await client.get(url)
            path.unlink()
            deleted = await client.get(url)
            (tmp_path / "copy").write_bytes(b"")
            (tmp_path / "copy").rename(path)
            replaced = await client.get(url)
    assert healthy.status_code == 200
    assert deleted.status_code == 503
    assert deleted.json()["reason"].startswith(f"spool file {path} was deleted")
    assert replaced.status_code == 503
    assert replaced.json()["reason"].startswith(f"spool file {path} was replaced")
    assert "restart hipchatd" in replaced.json()["reason"]


# --- sqlite3 errors leave the spool as SpoolError ------------------------------------------


async def test_reads_sqlite_cannot_do_raise_spool_read_error(tmp_path: Path) -> None:
    """A closed connection under every read: SpoolReadError naming what, where and why."""
    with trio.fail_after(30):
        spool = await SqliteSpool.open(str(tmp_path), max_events=10)
        async with running(spool) as (committed, _):
            assert spool.submit(EVENT, DOCUMENT, [OPS], 1.0)
            [entry] = await committed.wait_for(1)
            assert spool._worker.conn is not None
            spool._worker.conn.close()
            reads = {
                "event documents": spool.load_documents([entry.id]),
                "the pending entries": spool.load_pending(),
                "the dead entries": spool.list_dead(),
            }
            for what, read in reads.items():
                with pytest.raises(SpoolReadError) as raised:
                    await read
                assert str(raised.value) == (
                    f"cannot read {what} from the spool {spool.path}: "
                    "Cannot operate on a closed database."
                )
                assert isinstance(raised.value, SpoolError)
                assert isinstance(raised.value.__cause__, sqlite3.ProgrammingError)


async def test_a_read_error_names_sqlites_error_and_the_spool_stays_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(conn: sqlite3.Connection, ids: list[int]) -> dict[int, str]:
        conn.execute("SELECT document FROM no_such_table")
        raise AssertionError("unreachable")

    with trio.fail_after(30):
        spool = await SqliteSpool.open(str(tmp_path), max_events=10)
        async with running(spool) as (committed, _):
            assert spool.submit(EVENT, DOCUMENT, [OPS], 1.0)
            [entry] = await committed.wait_for(1)
            with monkeypatch.context() as patched:
                patched.setattr(sql, "load_documents", broken)
                with pytest.raises(SpoolReadError) as raised:
                    await spool.load_documents([entry.id])
            assert str(raised.value) == (
                f"cannot read event documents from the spool {spool.path}: "
                "no such table: no_such_table (SQLITE_ERROR)"
            )
            assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
            assert await spool.load_documents([entry.id]) == {entry.id: DOCUMENT}


async def test_a_commit_no_retry_can_fix_ends_run_with_spool_write_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def constraint(conn: sqlite3.Connection, batch: list[EventEntries]) -> int:
        raise sqlite3.IntegrityError("UNIQUE constraint failed: pending.id")

    monkeypatch.setattr(sql, "write_batch", constraint)
    with trio.fail_after(30):
        spool = await SqliteSpool.open(str(tmp_path), max_events=10)
        assert spool.submit(EVENT, DOCUMENT, [OPS], 1.0)
        with pytest.raises(SpoolWriteError) as raised:
            await spool.run(Committed())
    assert str(raised.value) == (
        f"cannot commit to the spool {spool.path}: UNIQUE constraint failed: pending.id"
    )
    assert isinstance(raised.value.__cause__, sqlite3.IntegrityError)
    assert spool.closed


async def test_a_constraint_failing_mid_insert_leaves_nothing_of_its_transaction(
    tmp_path: Path,
) -> None:
    """An insert that fails on its second row rolls back its whole transaction (the first
    row and the marks with it), and ``run`` ends with SpoolWriteError."""
    with trio.fail_after(30):
        spool = await SqliteSpool.open(str(tmp_path), max_events=10)
        async with running(spool) as (committed, _):
            spool.submit(EVENT, DOCUMENT, [OPS], 1.0)
            (first,) = await committed.wait_for(1)
        spool = await SqliteSpool.open(str(tmp_path), max_events=10)
        assert spool._worker.conn is not None
        # The id the second new event will get is taken: a bug, as the spool sees it.
        spool._worker.conn.execute("INSERT INTO documents VALUES (3, 1, 'taken')")
        spool.mark_delivered([first.id])
        for at in (2.0, 3.0, 4.0):
            assert spool.submit(EVENT, DOCUMENT, [OPS], at)
        with pytest.raises(SpoolWriteError) as raised:
            await spool.run(Committed())
    assert str(raised.value) == (
        f"cannot commit to the spool {spool.path}: "
        "UNIQUE constraint failed: documents.id (SQLITE_CONSTRAINT_PRIMARYKEY)"
    )
    with sqlite3.connect(tmp_path / SPOOL_FILE) as conn:
        assert conn.execute("SELECT id FROM pending").fetchall() == [(first.id,)]
        assert conn.execute("SELECT id FROM documents ORDER BY id").fetchall() == [(1,), (3,)]


# --- the daemon around the spool -------------------------------------------------------------


async def test_the_daemon_refuses_an_event_the_spool_cannot_store_and_goes_on(
    start_daemon: StartDaemon, emulator: Emulator, tmp_path: Path, thread_clock: MockClock
) -> None:
    """The refused event is not accepted; the next one is delivered as itself."""
    with trio.fail_after(30):
        app = await start_daemon(state_dir=str(tmp_path), room="ops")
        conn = app.spool._worker.conn
        assert conn is not None
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 4}")
        huge = classic_event(name="huge", output="x" * 600_000)
        small = classic_event(name="small", output="fits")
        with capture_logs() as logs:
            await send_tcp(app.tcp_addresses[0], json.dumps(huge).encode())
            await wait_until(
                lambda: (
                    app.metrics.value("hipchatd_events_rejected_total", reason="spool_full") == 1
                )
            )
            await send_tcp(app.tcp_addresses[0], json.dumps(small).encode())
            await emulator.wait_for_messages(1)
            await wait_until(lambda: app.spool.counts()["pending"] == 0)
    assert len(emulator.messages) == 1
    assert "small" in emulator.messages[0].message
    assert app.metrics.value("hipchatd_events_accepted_total") == 1
    [refusal] = [e for e in logs if e["event"] == "event.refused"]
    assert refusal["check"] == "huge"
    assert not [e for e in logs if e["event"] == "internal_error.caught"]


async def test_an_event_refused_amid_one_commit_leaves_its_neighbours_as_themselves(
    start_daemon: StartDaemon, emulator: Emulator, tmp_path: Path, thread_clock: MockClock
) -> None:
    """Three events in one write, one commit: the middle one cannot be stored."""
    with trio.fail_after(30):
        app = await start_daemon(state_dir=str(tmp_path), room="ops")
        conn = app.spool._worker.conn
        assert conn is not None
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 4}")
        events = [
            classic_event(name="before", output="fits"),
            classic_event(name="huge", output="x" * 600_000),
            classic_event(name="after", output="fits too"),
        ]
        with capture_logs() as logs:
            await send_tcp(app.tcp_addresses[0], ndjson(events))
            await wait_until(lambda: app.metrics.value("hipchatd_events_accepted_total") == 2)
            await wait_until(lambda: represented(emulator) == 2)
            await wait_until(lambda: app.spool.counts()["pending"] == 0)
    text = "\n".join(m.message for m in emulator.messages)
    assert "before" in text
    assert "after" in text
    assert "huge" not in text
    assert app.metrics.value("hipchatd_events_rejected_total", reason="spool_full") == 1
    [refusal] = [e for e in logs if e["event"] == "event.refused"]
    assert refusal["check"] == "huge"
    assert not [e for e in logs if e["event"] == "internal_error.caught"]


async def test_an_event_routed_nowhere_shifts_no_other_event(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    """An event with no target stores nothing; the next event is still paired with itself."""
    with trio.fail_after(30):
        # No room configured: an event that names none goes nowhere.
        app = await start_daemon(room=())
        await send_tcp(app.tcp_addresses[0], json.dumps(classic_event(name="nowhere")).encode())
        routed = classic_event(name="routed", output="to ops", hipchat={"room": "ops"})
        await send_tcp(app.tcp_addresses[0], json.dumps(routed).encode())
        await emulator.wait_for_messages(1)
        await wait_until(lambda: app.spool.counts()["pending"] == 0)
    assert [m.room for m in emulator.messages] == ["ops"]
    assert "routed" in emulator.messages[0].message
    assert "nowhere" not in emulator.messages[0].message
    assert app.metrics.value("hipchatd_events_accepted_total") == 1


async def test_list_dead_counts_the_attempt_that_was_refused(
    start_daemon: StartDaemon,
    emulator: Emulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An entry HipChat refused once shows one attempt, not 0."""
    emulator.auto_create_rooms = False
    with trio.fail_after(30):
        app = await start_daemon(state_dir=str(tmp_path))
        ghost = classic_event(name="ghost", hipchat={"room": "no-such-room"})
        await send_tcp(app.tcp_addresses[0], json.dumps(ghost).encode())
        await wait_until(lambda: app.spool.counts()["dead"] == 1)
        await app.spool.flush()
    listed = spool_cli(capsys, str(tmp_path), "list", "--dead")
    assert listed.code == 0
    header, row = listed.out.splitlines()
    columns = dict(zip(header.split(), row.split(), strict=False))
    assert columns["TARGET"] == "no-such-room"
    assert columns["ATTEMPTS"] == "1"
    assert columns["REASON"] == "permanent"


def test_os_causes_say_what_to_do() -> None:
    """Causes tests cannot make real as root: permission denied, a read-only file system."""
    denied = os_cause(PermissionError(13, "Permission denied", "/srv/state"), "/srv/state/x")
    assert denied.startswith("permission denied on /srv/state; give the user hipchatd runs as (")
    assert f"uid {os.geteuid()}" in denied
    read_only = os_cause(OSError(30, "Read-only file system"), "/srv/state/x")
    assert read_only.startswith("/srv/state is on a read-only file system;")
    assert "ReadWritePaths=" in read_only
