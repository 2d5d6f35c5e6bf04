"""Lane leases that hold nothing until their spool says the lanes may be read.

A spool that keeps work for the shared store elsewhere for a while (the
PostgreSQL spool's local fallback) must not let this instance read a lane's
entries from the store before that work is written there: entries whose
delivery is marked only locally would be sent again. :class:`GatedLeases`
wraps the store's :class:`~hipchatd.delivery.spool.store.LaneLeases`: until
``ready()`` a round holds no lane (the lanes held are dropped, as when a
lease expires) and nothing is read; until ``opened()`` (the store's tables
exist) nothing listens either.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from hipchatd.delivery.spool.store import Entry, Held, LaneLeases

__all__ = ["GatedLeases"]


class GatedLeases:
    """``leases``, holding and reading nothing until ``ready()``, not listening until
    ``opened()``; released only if they were used."""

    def __init__(
        self, leases: LaneLeases, *, ready: Callable[[], bool], opened: Callable[[], bool]
    ) -> None:
        #: the leases gated.
        self.inner = leases
        self.ttl = leases.ttl
        self.renew_every = leases.renew_every
        self._ready = ready
        self._opened = opened
        self._used = False

    async def round(self) -> Held:
        if not self._ready():
            return Held(frozenset())
        self._used = True
        return await self.inner.round()

    async def read(self, after: dict[str, int]) -> list[Entry]:
        if not self._ready():
            return []
        self._used = True
        return await self.inner.read(after)

    async def wait(self, within: float) -> bool:
        if not self._opened():
            await trio.sleep(within)
            return False
        self._used = True
        return await self.inner.wait(within)

    async def release(self) -> None:
        # Never used: nothing held, no connection made.
        if self._used:
            await self.inner.release()
