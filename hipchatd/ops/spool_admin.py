"""``hipchatd spool list|retry|purge``: the operator's view of the spool, beside the daemon.

Arguments and output only; the spool does the work through its
:class:`~hipchatd.delivery.spool.SpoolAdmin` interface, so the commands read
the same whatever the backend. Safe while the daemon runs. Messages go to
stdout, errors to stderr as one ``error: ...`` line each.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections.abc import Sequence
from typing import Final

from hipchatd.config import SpoolSettings
from hipchatd.delivery.routing import Target
from hipchatd.delivery.spool import (
    SQLITE,
    DeadEntry,
    PendingEntry,
    SpoolAdmin,
    SpoolError,
    open_admin,
)

__all__ = ["add_arguments", "format_age", "run"]

#: Characters of an error shown by ``hipchatd spool list``.
_ERROR_COLUMN: Final = 60


def add_arguments(
    parser: argparse.ArgumentParser, *, parents: Sequence[argparse.ArgumentParser] = ()
) -> None:
    """Add ``list``, ``retry`` and ``purge`` to ``parser`` (the ``hipchatd spool`` subcommand).

    ``parents`` (e.g. a parser holding ``--state-dir`` and ``--config``) are
    added to each of them, so those options may follow the sub-subcommand.
    """
    sub = parser.add_subparsers(dest="spool_command", metavar="ACTION", required=True)
    listing = sub.add_parser(
        "list", parents=list(parents), help="show pending (or dead-lettered) events"
    )
    listing.add_argument("--dead", action="store_true", help="show dead-lettered events instead")
    retry = sub.add_parser(
        "retry", parents=list(parents), help="move dead-lettered events back for delivery"
    )
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", nargs="*", type=int, default=[], metavar="ID", help="entry id")
    which.add_argument("--all", action="store_true", help="every dead-lettered event")
    purge = sub.add_parser("purge", parents=list(parents), help="delete dead-lettered events")
    purge.add_argument(
        "--dead", action="store_true", required=True, help="delete every dead-lettered event"
    )


def run(args: argparse.Namespace, state_dir: str, settings: SpoolSettings = SQLITE) -> int:
    """Run ``hipchatd spool ACTION`` on the configured spool; return the exit code (0 or 1).

    The spool is in ``state_dir`` (SQLite) or where ``settings`` say (PostgreSQL).
    Never creates a spool. With PostgreSQL, ``list`` also shows the entries
    held in the local spool in ``state_dir`` (accepted while the server was
    unreachable, not forwarded yet), even when the server cannot be reached.
    """
    command: str = args.spool_command
    held = settings.backend == "postgresql" and command == "list" and not args.dead
    try:
        admin = open_admin(state_dir, settings)
    except SpoolError as exc:
        code = _fail(str(exc))
        if held:
            _list_held(state_dir)
        return code
    with contextlib.closing(admin):
        try:
            if command == "list":
                code = _list(admin, dead=args.dead)
                if held:
                    _list_held(state_dir)
                return code
            if command == "retry":
                return _retry(admin, None if args.all else args.ids)
            purged = admin.purge_dead()
            print(f"purged {_events(purged)} from the dead-letter table")
            return 0
        except SpoolError as exc:
            return _fail(str(exc))


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _list(admin: SpoolAdmin, *, dead: bool) -> int:
    now = time.time()
    entries: Sequence[PendingEntry | DeadEntry] = (
        admin.list_dead() if dead else admin.list_pending()
    )
    if not entries:
        print("no dead-lettered events" if dead else "no pending events")
        return 0
    last = ("REASON", "ERROR") if dead else ("LAST ERROR",)
    headers = ("ID", "AGE", "SOURCE/CHECK", "TARGET", "ATTEMPTS", *last)
    rows = [
        (
            str(e.id),
            format_age(now - e.accepted_at),
            f"{e.source}/{e.check}",
            _target_label(e.target),
            str(e.attempts),
            *_outcome(e),
        )
        for e in entries
    ]
    print(_table(headers, rows))
    return 0


def _list_held(state_dir: str) -> None:
    """The local spool's pending entries (PostgreSQL spool), when there are any."""
    try:
        local = open_admin(state_dir)
    except SpoolError:
        return
    with contextlib.closing(local):
        if local.list_pending():
            print(f"\nheld in the local spool {local.path} until PostgreSQL answers (local ids):")
            _list(local, dead=False)


def _outcome(entry: PendingEntry | DeadEntry) -> tuple[str, ...]:
    """The last columns of a listing: why it is dead and HipChat's error, or the last error."""
    if isinstance(entry, DeadEntry):
        return entry.reason, _cut(entry.error)
    return (_cut(entry.last_error),)


def _retry(admin: SpoolAdmin, ids: Sequence[int] | None) -> int:
    requeued = admin.retry(ids)
    if requeued.pending or requeued.unknown:
        for i in dict.fromkeys(ids or ()):
            if i in requeued.pending:
                print(f"error: entry {i} is pending, not dead-lettered", file=sys.stderr)
            elif i in requeued.unknown:
                print(f"error: no dead-lettered entry with id {i}", file=sys.stderr)
        print("nothing re-queued", file=sys.stderr)
        return 1
    if not requeued.ids:
        print("no dead-lettered events")
        return 0
    print(
        f"re-queued {_events(len(requeued.ids))} for delivery "
        f"(a running daemon picks them up within {admin.pickup_within:g} s)"
    )
    return 0


def _events(n: int) -> str:
    return f"{n} dead-lettered event" + ("" if n == 1 else "s")


def format_age(seconds: float) -> str:
    """Seconds as the two largest units: ``42s``, ``3m12s``, ``2h05m``, ``3d04h``."""
    s = max(0, math.floor(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _target_label(target: Target) -> str:
    return target.name if target.kind == "room" else f"user:{target.name}"


def _cut(text: str | None) -> str:
    if not text:
        return "-"
    flat = " ".join(text.split())
    return flat if len(flat) <= _ERROR_COLUMN else flat[: _ERROR_COLUMN - 3] + "..."


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
