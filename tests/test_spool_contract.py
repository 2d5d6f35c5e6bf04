"""The spool's store interface: what every backend promises, through the protocols only.

Each test takes ``backend``, parametrised over the backends hipchatd has
(SQLite, and PostgreSQL on the test session's private server, in a schema of
the test's own), and uses nothing but :class:`~hipchatd.delivery.spool.Spool`
and :class:`~hipchatd.delivery.spool.SpoolAdmin`: a second backend passes
these by adding its parameter to the fixture. Backend-specific behaviour
(group-commit sizes, a full disk, migrations, the file under the daemon) is
tested beside each backend (``test_spool.py``, ``test_spool_edges.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from hipchatd.config import Secret, SpoolSettings
from hipchatd.delivery.spool import (
    Requeued,
    Spool,
    SpoolAdmin,
    SpoolError,
    open_admin,
    open_spool,
)
from tests.postgres import PgSchema
from tests.test_spool import DEV, DOCUMENT, EVENT, ONCALL, OPS, other_event
from tests.test_spool_edges import running


@dataclass(frozen=True)
class Backend:
    """One spool store, reachable by a daemon and by the operator commands at once."""

    name: str
    #: a daemon's spool on this store, holding at most ``max_events`` entries.
    open_spool: Callable[[int], Awaitable[Spool]]
    #: the operator's handle on the same store.
    open_admin: Callable[[], SpoolAdmin]


def _sqlite(tmp_path: Path) -> Backend:
    state_dir = str(tmp_path / "state")

    async def spool(max_events: int) -> Spool:
        return await open_spool(state_dir, max_events=max_events)

    return Backend("sqlite", spool, lambda: open_admin(state_dir))


def postgresql_settings(schema: PgSchema) -> SpoolSettings:
    """The spool in ``schema`` of the test session's server."""
    return SpoolSettings("postgresql", Secret(schema.conninfo), schema.schema)


def _postgresql(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    settings = postgresql_settings(request.getfixturevalue("pg_schema"))
    state_dir = str(tmp_path / "state")

    async def spool(max_events: int) -> Spool:
        return await open_spool(state_dir, max_events=max_events, settings=settings)

    return Backend("postgresql", spool, lambda: open_admin(state_dir, settings))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each spool backend, on a store of its own for this test."""
    if request.param == "postgresql":
        return _postgresql(request, tmp_path)
    return _sqlite(tmp_path)


async def test_an_event_is_accepted_when_its_entries_come_back_with_its_handle(
    backend: Backend,
) -> None:
    first, nowhere, last = object(), object(), object()
    disk, disk_doc = other_event("disk")
    with trio.fail_after(20):
        spool = await backend.open_spool(100)
        async with running(spool) as (committed, refused):
            assert spool.submit(EVENT, DOCUMENT, [OPS, DEV], 1000.0, first)
            # No target: nothing to store, and its handle never comes back.
            assert spool.submit(EVENT, DOCUMENT, [], 1001.0, nowhere)
            assert spool.submit(disk, disk_doc, [ONCALL], 1002.0, last)
            entries = await committed.wait_for(3)
            await spool.flush()
            assert spool.counts() == {"pending": 3, "dead": 0}
            assert spool.writable
            assert spool.file_problem() is None
    assert [handle for handle, _ in committed.events] == [first, last]
    assert committed.events[0][0] is first
    assert refused.events == []
    ids = [e.id for e in entries]
    assert ids == sorted(set(ids))
    assert [(e.check, e.target, e.accepted_at, e.document) for e in entries] == [
        ("testing", OPS, 1000.0, DOCUMENT),
        ("testing", DEV, 1000.0, DOCUMENT),
        ("disk", ONCALL, 1002.0, disk_doc),
    ]
    assert all((e.attempts, e.last_error, e.requeued) == (0, None, False) for e in entries)
    assert spool.closed
    assert not spool.submit(EVENT, DOCUMENT, [OPS], 1003.0)


async def test_marks_decide_what_stays_pending_and_what_is_dead(backend: Backend) -> None:
    with trio.fail_after(20):
        spool = await backend.open_spool(100)
        async with running(spool) as (committed, _):
            spool.submit(EVENT, DOCUMENT, [OPS, DEV, ONCALL], 1000.0)
            delivered, failing, dead = await committed.wait_for(3)
            spool.mark_attempt([failing.id], "HTTP 500: Internal Server Error")
            spool.mark_attempt([dead.id], "HTTP 503: Service Unavailable")
            spool.mark_dead([dead.id], "expired", None)
            spool.mark_delivered([delivered.id])
            await spool.flush()
            assert spool.counts() == {"pending": 1, "dead": 1}
            documents = await spool.load_documents([delivered.id, failing.id, dead.id])
            assert documents == {failing.id: DOCUMENT}

        reopened = await backend.open_spool(100)
        assert reopened.counts() == {"pending": 1, "dead": 1}
        [loaded] = await reopened.load_pending()
        await reopened.aclose()
    assert (loaded.id, loaded.target, loaded.document) == (failing.id, DEV, DOCUMENT)
    assert (loaded.attempts, loaded.last_error) == (1, "HTTP 500: Internal Server Error")
    with closing(backend.open_admin()) as admin:
        [pending] = admin.list_pending()
        [gone] = admin.list_dead()
    assert (pending.id, pending.attempts, pending.target) == (failing.id, 1, DEV)
    # None keeps the entry's last error.
    assert (gone.id, gone.reason, gone.error) == (
        dead.id,
        "expired",
        "HTTP 503: Service Unavailable",
    )
    assert (gone.attempts, gone.target, gone.accepted_at) == (1, ONCALL, 1000.0)
    assert gone.dead_at >= gone.accepted_at


async def test_marks_and_new_events_buffered_together_both_take_effect(backend: Backend) -> None:
    """Marks buffered in the same tick as a new event (one group commit carries both): the
    marks take effect, the event is accepted with its handle, and a reopened store agrees."""
    disk, disk_doc = other_event("disk")
    with trio.fail_after(20):
        spool = await backend.open_spool(4)
        async with running(spool) as (committed, refused):
            spool.submit(EVENT, DOCUMENT, [OPS, DEV, ONCALL], 1000.0, "first")
            delivered, failing, dead = await committed.wait_for(3)
            spool.mark_delivered([delivered.id])
            spool.mark_attempt([failing.id], "HTTP 500: Internal Server Error")
            spool.mark_dead([dead.id], "permanent", "Room not found")
            assert spool.submit(disk, disk_doc, [OPS], 1001.0, "second")
            *_, new = await committed.wait_for(4)
            await spool.flush()
            assert spool.counts() == {"pending": 2, "dead": 1}
            documents = await spool.load_documents([delivered.id, failing.id, dead.id, new.id])
            assert documents == {failing.id: DOCUMENT, new.id: disk_doc}

        reopened = await backend.open_spool(4)
        loaded = await reopened.load_pending()
        await reopened.aclose()
    assert [handle for handle, _ in committed.events] == ["first", "second"]
    assert refused.events == []
    assert new.id > dead.id
    assert [(e.id, e.attempts, e.last_error, e.document) for e in loaded] == [
        (failing.id, 1, "HTTP 500: Internal Server Error", DOCUMENT),
        (new.id, 0, None, disk_doc),
    ]
    with closing(backend.open_admin()) as admin:
        [gone] = admin.list_dead()
    assert (gone.id, gone.reason, gone.error) == (dead.id, "permanent", "Room not found")


async def test_a_full_spool_refuses_whole_events_and_keeps_the_oldest(backend: Backend) -> None:
    with trio.fail_after(20):
        spool = await backend.open_spool(3)
        async with running(spool) as (committed, _):
            assert spool.submit(EVENT, DOCUMENT, [OPS, DEV], 1000.0)
            # All or nothing: two targets do not fit in the one place left.
            assert not spool.submit(EVENT, DOCUMENT, [OPS, DEV], 1001.0)
            assert spool.submit(EVENT, DOCUMENT, [ONCALL], 1002.0)
            assert not spool.submit(EVENT, DOCUMENT, [OPS], 1003.0)
            kept = await committed.wait_for(3)
            await spool.wait_for_room()
            spool.mark_delivered([kept[0].id])
            await spool.flush()
            assert spool.submit(EVENT, DOCUMENT, [OPS], 1004.0)
            await committed.wait_for(4)
    assert [e.accepted_at for e in committed.entries] == [1000.0, 1000.0, 1002.0, 1004.0]


async def test_ids_are_acceptance_order_and_never_reused(backend: Backend) -> None:
    with trio.fail_after(20):
        spool = await backend.open_spool(100)
        async with running(spool) as (committed, _):
            spool.submit(EVENT, DOCUMENT, [OPS, DEV], 1000.0)
            first = await committed.wait_for(2)
            spool.mark_delivered([first[1].id])
            spool.mark_dead([first[0].id], "permanent", "Room not found")
        reopened = await backend.open_spool(100)
        assert await reopened.load_pending() == []
        async with running(reopened) as (again, _):
            reopened.submit(EVENT, DOCUMENT, [OPS], 1001.0)
            [later] = await again.wait_for(1)
    assert later.id > max(e.id for e in first)


async def test_operators_retry_and_purge_beside_the_running_daemon(backend: Backend) -> None:
    with trio.fail_after(20):
        spool = await backend.open_spool(100)
        async with running(spool) as (committed, _):
            handle = object()
            spool.submit(EVENT, DOCUMENT, [OPS, DEV, ONCALL], 1000.0, handle)
            waiting, retried, purged = await committed.wait_for(3)
            spool.mark_attempt([retried.id], "HTTP 500")
            spool.mark_dead([retried.id, purged.id], "expired", None)
            await spool.flush()
            assert spool.counts() == {"pending": 1, "dead": 2}
            unknown = purged.id + 1000
            with closing(backend.open_admin()) as admin:
                assert admin.pickup_within > 0
                # All or nothing: one id pending, one unknown, so nothing moves.
                assert admin.retry([retried.id, unknown, waiting.id]) == Requeued(
                    pending=(waiting.id,), unknown=(unknown,)
                )
                assert [d.id for d in admin.list_dead()] == [retried.id, purged.id]
                assert admin.retry([retried.id]) == Requeued(ids=(retried.id,))
            # The running daemon hands it out again: no submit made it, so no handle.
            await committed.wait_for(4)
            [(none, [back])] = committed.events[1:]
            assert none is None
            assert (back.id, back.target, back.document) == (retried.id, DEV, DOCUMENT)
            assert (back.attempts, back.last_error, back.requeued) == (0, None, True)
            assert back.accepted_at > 1000.0
            with closing(backend.open_admin()) as admin:
                assert admin.purge_dead() == 1
                assert admin.list_dead() == []
                assert admin.retry(None) == Requeued()
                assert [p.id for p in admin.list_pending()] == [waiting.id, retried.id]
            spool.mark_delivered([waiting.id, back.id])
            await spool.flush()
            assert spool.counts()["pending"] == 0
    assert committed.events[0][0] is handle


async def test_read_and_open_failures_are_spool_errors(backend: Backend) -> None:
    """Callers catch SpoolError only: no exception of a backend's library leaves the spool."""
    with trio.fail_after(20):
        spool = await backend.open_spool(10)
        await spool.aclose()
        await spool.aclose()
        with pytest.raises(SpoolError):
            await spool.load_documents([1])
        with pytest.raises(SpoolError):
            await spool.run(lambda events: None)
