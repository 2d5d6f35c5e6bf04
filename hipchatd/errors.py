"""The exceptions hipchatd raises.

::

    HipchatdError
    ├── ConfigError         the configuration cannot be used (one line per problem;
    │                       its warnings travel with it, kept apart)
    ├── StartupError        the daemon cannot start: an address cannot be bound
    │                       (one line naming the address, the key and what to do)
    ├── EventError          a JSON document is not a Sensu event
    ├── FrameTooLarge       a frame is over ``max_frame_bytes``; the connection is closed
    └── spool.SpoolError    the spool cannot be opened or used (the message names the
        │                   path and the fix); no ``sqlite3`` exception leaves the spool
        ├── SpoolReadError  reading entries or documents back failed; try again later
        └── SpoolWriteError a commit failed in a way no retry fixes (a bug); ends ``run``

``hipchatd serve`` ends with one ERROR line per ``ConfigError`` problem,
``StartupError`` or ``spool.SpoolError`` (also when they arrive in an
exception group from a nursery) and a non-zero exit code, never a traceback.

Expected failures at the edges (a bad frame, a HipChat error answer) are not
exceptions in the rest of the program: they become logged outcomes where they
are scoped. These classes are for the places that must stop one unit of work.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from typing import Any


class HipchatdError(Exception):
    """Base class of every hipchatd error."""


class ConfigError(HipchatdError):
    """The configuration is invalid.

    ``problems`` holds one human-readable line per problem, each naming the
    file, the key path, the bad value and what is expected. ``warnings``
    holds what was noticed besides (an unknown key is often the cause of a
    problem, e.g. ``api_tokne``): callers print them labelled as warnings.
    """

    def __init__(self, problems: Sequence[str], warnings: Sequence[str] = ()) -> None:
        self.problems = tuple(problems)
        self.warnings = tuple(warnings)
        super().__init__("\n".join(self.problems))


class StartupError(HipchatdError):
    """The daemon cannot start; the message is one line naming what and what to do."""

    @classmethod
    def cannot_listen(
        cls, exc: OSError, transport: str, key: str, host: str, port: int, *, fix_port: str
    ) -> StartupError:
        """The error for a listener that cannot be bound at ``host:port``.

        ``key`` is the configuration key of the address; ``fix_port`` says how
        to choose another port.
        """
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        where = f"cannot listen on {address} ({transport}, {key})"
        if isinstance(exc, socket.gaierror):
            return cls(
                f"{where}: cannot resolve {host!r} ({exc.strerror or exc}); "
                "expected a host name or IP address of this host, e.g. 127.0.0.1 or 0.0.0.0"
            )
        if exc.errno == errno.EADDRINUSE:
            ss = "ss -ltnp" if transport in ("tcp", "http") else "ss -lunp"
            return cls(
                f"{where}: address already in use; stop the process holding it "
                f"(`{ss} 'sport = :{port}'` names it), {fix_port}, or let systemd hold "
                "the sockets (socket activation, systemd/hipchatd.socket)"
            )
        if exc.errno == errno.EADDRNOTAVAIL:
            return cls(
                f"{where}: address not available: {host} is not an address of this host; "
                "expected a local address, e.g. 127.0.0.1, or 0.0.0.0 for every interface"
            )
        if exc.errno == errno.EACCES:
            return cls(
                f"{where}: permission denied (ports below 1024 need privileges); "
                f"{fix_port} of 1024 or above, or let systemd bind it (socket activation)"
            )
        return cls(f"{where}: {exc.strerror or exc}; {fix_port}, or check {key}")


class EventError(HipchatdError):
    """A JSON document is not a Sensu event; the message says what is missing."""


class FrameTooLarge(HipchatdError):
    """A frame exceeds ``max_frame_bytes``.

    ``frames`` holds the frames the same chunk completed before the oversized
    one (the decoder fills it in): they are whole and must still be handled.
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        self.frames: list[Any] = []
        super().__init__(f"frame of at least {size} bytes exceeds max_frame_bytes={limit}")
