"""The writer's look at the file: what other connections re-queued, and whether it is still there.

``hipchatd spool retry`` commits through a connection of its own. From
another process, that commit is noticed by ``PRAGMA data_version`` (it
changes when another connection commits), checked every ``RETRY_POLL``.
From this process (the operator commands run in-process, as the tests do),
the change registry of :mod:`.files` asks for a look at once, so nothing
waits for the poll. Each look also checks that the file is still the one
opened (``file_problem``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from functools import partial
from typing import Final

import structlog
import trio

from hipchatd.clock import unix_now
from hipchatd.delivery.spool.sqlite import files, sql
from hipchatd.delivery.spool.sqlite.writer import GroupCommit, Worker
from hipchatd.delivery.spool.store import Entry, OnCommitted, SpoolReadError

__all__ = ["RETRY_POLL", "Lookout"]

log = structlog.get_logger()

#: Seconds between looks for entries another process re-queued (``hipchatd spool retry``)
#: and at the file (``file_problem``): the operator waits at most this long.
RETRY_POLL: Final = 2.0


class Lookout:
    """Looks every ``RETRY_POLL``, or at once when asked; the writer's task does the looking."""

    def __init__(
        self,
        worker: Worker[sqlite3.Connection],
        writer: GroupCommit[sqlite3.Connection],
        identity: tuple[int, int] | None,
    ) -> None:
        self._worker = worker
        self._writer = writer
        self._path = worker.path
        self._identity = identity
        #: PRAGMA data_version at the last look; None: look at the first poll.
        self.data_version: int | None = None
        #: a look was asked for before the next RETRY_POLL.
        self.asked = False
        #: the file was found deleted or replaced (logged once).
        self._file_lost = False
        self._started = 0
        self._done = 0
        #: set (and replaced) after every look, and at close, for ``wait``.
        self._looked = trio.Event()
        self._closed = False

    def watching(self) -> AbstractContextManager[None]:
        """While inside (in the writer's trio run), a commit to the file from this process
        (``files.announce_change``) asks for a look at once."""
        if self._identity is None:
            return nullcontext()
        token = trio.lowlevel.current_trio_token()
        return files.watch_changes(self._path, partial(_soon, token, self.ask))

    def ask(self) -> None:
        """Have the writer look before its next ``RETRY_POLL``, as soon as it is free."""
        self.asked = True
        self._writer.nudge()

    async def look_now(self) -> None:
        """Ask for a look and return once a look that began after this call is done."""
        wanted = self._started + 1
        self.ask()
        while not self._closed and self._done < wanted:
            await self._looked.wait()

    async def look(self, on_committed: OnCommitted) -> None:
        """Check the file, then hand out what another connection re-queued. In the writer."""
        self.asked = False
        self._started += 1
        try:
            self._check_file()
            requeued = await self._pick_up_requeued()
        finally:
            self._done += 1
            self._looked.set()
            self._looked = trio.Event()
        if requeued:
            on_committed([(None, requeued)])

    def close(self) -> None:
        """No more looks: release every ``look_now``."""
        self._closed = True
        self._looked.set()

    def _check_file(self) -> None:
        if self._file_lost:
            return
        problem = files.file_problem(self._path, self._identity)
        if problem is not None:
            self._file_lost = True
            log.error("spool.file_lost", path=self._path, problem=problem)

    async def _pick_up_requeued(self) -> list[Entry]:
        try:
            version, entries, dead = await self._worker.call(
                partial(sql.pick_up, now=unix_now(), last_version=self.data_version)
            )
        except sqlite3.DatabaseError as exc:
            if not sql.is_transient(exc):
                raise SpoolReadError(
                    f"cannot read re-queued entries from the spool {self._path}: {sql.cause(exc)}"
                ) from exc
            log.error("spool.poll_failed", path=self._path, error=str(exc))
            return []
        self.data_version = version
        if dead is not None:
            self._writer.dead = dead
        if entries:
            self._writer.pending += len(entries)
            log.info("spool.requeued", entries=len(entries), ids=[e.id for e in entries[:20]])
        return entries


def _soon(token: trio.lowlevel.TrioToken, fn: Callable[[], None]) -> None:
    """``fn()`` in ``token``'s trio run as soon as it can, from any thread."""
    # A run that ended is no longer watching; the registry may still hold it briefly.
    with suppress(trio.RunFinishedError):
        token.run_sync_soon(fn)
