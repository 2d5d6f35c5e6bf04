"""Wall-clock time on trio's clock.

HipChat's rate-limit headers carry absolute Unix times. Reading them
against ``time.time()`` would break tests on trio's mock clock, so Unix time
here is trio's clock plus an offset fixed at the first call in each run.
In production the two agree; under ``MockClock`` the emulator and the
client still agree with each other.
"""

from __future__ import annotations

import time

import trio
from trio.lowlevel import RunVar

__all__ = ["unix_now"]

_offset: RunVar[float] = RunVar("hipchatd_unix_offset")


def unix_now() -> float:
    """Seconds since the Unix epoch, consistent with ``trio.current_time()``."""
    try:
        offset = _offset.get()
    except LookupError:
        offset = time.time() - trio.current_time()
        _offset.set(offset)
    return offset + trio.current_time()
