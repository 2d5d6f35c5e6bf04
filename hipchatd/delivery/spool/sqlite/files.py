"""The spool's file: opening it safely, the lock, the messages an operator acts on.

Everything that can go wrong before the first transaction ends here as one
SpoolError line naming the path, the cause and what to do. The lock file
keeps a second daemon off a spool (two would hand out the same ids). The
change registry lets code in this process that commits to a spool file (the
operator commands, run in-process) wake the daemon's writer at once, instead
of leaving it to the writer's ``PRAGMA data_version`` poll, which remains the
path for commits from another process.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from hipchatd.delivery.spool.sqlite import schema
from hipchatd.delivery.spool.sqlite.sql import close
from hipchatd.delivery.spool.store import SpoolError

__all__ = [
    "BUSY_TIMEOUT_MS",
    "LOCK_FILE",
    "MEMORY",
    "SPOOL_FILE",
    "STATE_DIR_HINT",
    "Opened",
    "announce_change",
    "file_problem",
    "open_existing",
    "open_spool_file",
    "os_cause",
    "watch_changes",
]

log = structlog.get_logger()

#: ``state_dir`` value for an in-memory database: same code, nothing kept across restarts.
MEMORY: Final = ":memory:"
#: The database file inside ``state_dir``.
SPOOL_FILE: Final = "spool.sqlite3"
#: flock()ed by the daemon that has the spool open (the operator commands do not take it).
LOCK_FILE: Final = "spool.lock"
#: Milliseconds SQLite waits for another connection's lock (the operator commands).
BUSY_TIMEOUT_MS: Final = 5000
#: Bytes per database page, for a new spool: a typical 3 KB event fills a 4 KB page alone;
#: 16 KB pages hold five, which doubled measured insert throughput.
PAGE_SIZE: Final = 16384
#: Bytes: WAL size kept after a checkpoint, so a burst does not leave a huge file behind.
JOURNAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
#: KiB of page cache: a full batch transaction (about 3 MB of 3 KB events, plus the pages its
#: deletes touch) stays in memory instead of spilling to the WAL before it commits (the
#: default is 2 MB). Measured: about 20% less CPU per delete, 5-10% less per insert.
_CACHE_KIB: Final = 4096
STATE_DIR_HINT: Final = "set hipchatd.state_dir in the configuration or pass --state-dir"


@dataclass(frozen=True, slots=True)
class Opened:
    """A daemon's open spool file and what it found there."""

    conn: sqlite3.Connection
    path: str
    #: the flock()ed ``spool.lock``; None in memory.
    lock: int | None
    next_id: int
    pending: int
    dead: int
    journal_mode: str
    #: (st_dev, st_ino) of the database file; None in memory.
    identity: tuple[int, int] | None


def open_spool_file(state_dir: str) -> Opened:
    """Open (creating if needed) ``state_dir/spool.sqlite3`` for the daemon. Blocks.

    Raises SpoolError naming the path, the cause and the fix.
    """
    try:
        return _open_or_fail(state_dir)
    except (OSError, ValueError) as exc:
        # Whatever the checks below did not foresee still names the path.
        path = os.path.join(state_dir, SPOOL_FILE)
        raise SpoolError(_cannot_open(path, os_cause(exc, path))) from exc


def _open_or_fail(state_dir: str) -> Opened:
    lock = None
    identity = None
    if state_dir == MEMORY:
        path = MEMORY
    else:
        path = os.path.join(state_dir, SPOOL_FILE)
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise SpoolError(_cannot_open(path, _directory_cause(exc, state_dir))) from exc
        lock = _lock(state_dir, path)
        try:
            # Events carry check output; the WAL and shm files copy these permissions.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            os.close(lock)
            raise SpoolError(_cannot_open(path, os_cause(exc, path))) from exc
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        journal = _configure(conn)
        schema.migrate(conn, path)
        next_id, pending, dead = schema.open_counts(conn)
        if path != MEMORY:
            found = os.stat(path)
            identity = (found.st_dev, found.st_ino)
    except BaseException as exc:
        if conn is not None:
            conn.close()
        if lock is not None:
            os.close(lock)
        if isinstance(exc, schema.SchemaMismatch):
            raise SpoolError(_cannot_open(path, f"{exc}, or {STATE_DIR_HINT}")) from exc
        if isinstance(exc, sqlite3.Error):
            raise SpoolError(_cannot_open(path, _sqlite_cause(exc, path))) from exc
        raise
    return Opened(conn, path, lock, next_id, pending, dead, journal, identity)


def open_existing(state_dir: str) -> tuple[str, sqlite3.Connection]:
    """``(path, connection)`` to the spool a daemon made, for the operator commands.

    Never creates a spool. Raises SpoolError when there is none (or it is
    in memory), or it has another schema version.
    """
    if state_dir == MEMORY:
        raise SpoolError(
            'the spool is in memory (state_dir ":memory:"): it lives inside the running daemon '
            "and cannot be inspected"
        )
    path = Path(state_dir) / SPOOL_FILE
    if not path.is_file():
        raise SpoolError(
            f"no spool at {path} (has the daemon run with this state_dir?); {STATE_DIR_HINT}"
        )
    try:
        # mode=rw: never create a database where there was none.
        conn = sqlite3.connect(
            f"{path.absolute().as_uri()}?mode=rw", uri=True, isolation_level=None
        )
    except sqlite3.Error as exc:
        raise SpoolError(f"cannot open the spool {path}: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        version = schema.version(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise SpoolError(f"cannot open the spool {path}: {exc}") from exc
    if version != schema.SCHEMA_VERSION:
        conn.close()
        if 0 < version < schema.SCHEMA_VERSION:
            raise SpoolError(
                f"{path} was written by an older hipchatd (schema version {version}, this one "
                f"reads {schema.SCHEMA_VERSION}): start the daemon once to upgrade it in place, "
                "then run this again"
            )
        raise SpoolError(
            f"{path} is not a spool this hipchatd reads (schema version {version}, "
            f"expected {schema.SCHEMA_VERSION})"
        )
    return str(path), conn


def file_problem(path: str, identity: tuple[int, int] | None) -> str | None:
    """Why ``path`` is no longer the file opened as ``identity``, else None. One ``stat()``."""
    if identity is None:
        return None
    try:
        found = os.stat(path)
    except FileNotFoundError:
        what = "was deleted"
    except OSError as exc:
        what = f"cannot be checked ({exc.strerror or exc})"
    else:
        if (found.st_dev, found.st_ino) == identity:
            return None
        what = "was replaced by another file"
    return (
        f"spool file {path} {what} while hipchatd runs: events accepted since are not "
        "durable; restart hipchatd to open the spool at that path again"
    )


def release(conn: sqlite3.Connection, lock: int | None) -> None:
    """Close the daemon's connection, then drop its lock."""
    try:
        close(conn)
    finally:
        if lock is not None:
            os.close(lock)


# --- in-process wake-ups ---------------------------------------------------------------------

_watchers: dict[str, list[Callable[[], None]]] = {}
#: The operator commands may run on any thread; the daemon registers from trio's.
_watchers_lock = threading.Lock()


@contextmanager
def watch_changes(path: str, callback: Callable[[], None]) -> Iterator[None]:
    """While inside, ``announce_change(path)`` calls ``callback`` (from the announcing thread).

    ``callback`` must be thread-safe and must not block (for example
    ``TrioToken.run_sync_soon`` of a function that sets a ``trio.Event``).
    """
    key = _key(path)
    with _watchers_lock:
        _watchers.setdefault(key, []).append(callback)
    try:
        yield
    finally:
        with _watchers_lock:
            callbacks = _watchers[key]
            callbacks.remove(callback)
            if not callbacks:
                del _watchers[key]


def announce_change(path: str) -> None:
    """Another connection in this process committed to ``path``: tell its watchers now."""
    with _watchers_lock:
        callbacks = list(_watchers.get(_key(path), ()))
    for callback in callbacks:
        callback()


def _key(path: str) -> str:
    # One file, however it was named (relative, through a symlink).
    return os.path.realpath(path)


# --- messages --------------------------------------------------------------------------------


def _cannot_open(path: str, cause: str) -> str:
    return f"cannot open the spool {path}: {cause}"


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _directory_cause(exc: OSError, state_dir: str) -> str:
    if isinstance(exc, FileExistsError | NotADirectoryError):
        blocking = Path(state_dir)
        for parent in (blocking, *blocking.parents):
            if parent.exists():
                blocking = parent
                break
        return f"{blocking} is not a directory; {STATE_DIR_HINT}"
    return os_cause(exc, state_dir)


def os_cause(exc: OSError | ValueError, where: str) -> str:
    """The cause of a failed system call on ``where`` and what to do, for an operator."""
    if not isinstance(exc, OSError):
        return f"{exc}; {STATE_DIR_HINT}"
    directory = os.path.dirname(where) or "."
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied on {exc.filename or where}; give the user hipchatd runs as "
            f"({_user()}) read and write access to {directory}, or {STATE_DIR_HINT}"
        )
    if code == errno.EROFS:
        return (
            f"{directory} is on a read-only file system; put state_dir on a writable one "
            "(under systemd: StateDirectory= or ReadWritePaths=), or " + STATE_DIR_HINT
        )
    if code == errno.ENOTDIR:
        return f"a part of {where} is not a directory; {STATE_DIR_HINT}"
    if code == errno.EISDIR:
        return f"{where} is a directory; move it away or {STATE_DIR_HINT}"
    if code == errno.ENOSPC:
        return f"no space left on the device of {directory}; free some space"
    return f"{exc.strerror or exc}; {STATE_DIR_HINT}"


def _sqlite_cause(exc: sqlite3.Error, path: str) -> str:
    """The cause of a failed SQLite call on the spool file and what to do, for an operator."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code == sqlite3.SQLITE_NOTADB:
        return (
            f"the file is not an SQLite database ({exc}), so not a hipchatd spool; "
            f"move it away (a new spool is then created) or {STATE_DIR_HINT}"
        )
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return (
            f"the database is locked by another program ({exc}: a `hipchatd spool` "
            f"command or an sqlite3 shell?) for more than {BUSY_TIMEOUT_MS / 1000:g} s; "
            "end it and start hipchatd again"
        )
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM):
        return (
            f"the database cannot be written ({exc}); give the user hipchatd runs as "
            f"({_user()}) write access to {path}, its -wal and -shm files and "
            f"{os.path.dirname(path) or '.'}, or {STATE_DIR_HINT}"
        )
    if code == sqlite3.SQLITE_CORRUPT:
        return (
            f"the database is damaged ({exc}); move it away (keep it to inspect) and start "
            "hipchatd again: a new spool is created"
        )
    if code == sqlite3.SQLITE_FULL:
        return f"the disk is full ({exc}); free some space on it"
    return f"{exc}; {STATE_DIR_HINT}"


def _lock(state_dir: str, path: str) -> int:
    """Hold ``spool.lock``: two daemons on one spool would hand out the same ids.

    The holder's pid is written into it, for the message a second daemon prints.
    """
    lock_path = os.path.join(state_dir, LOCK_FILE)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise SpoolError(_cannot_open(path, os_cause(exc, lock_path))) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _lock_holder(fd)
        os.close(fd)
        raise SpoolError(
            _cannot_open(
                path,
                f"another hipchatd process{holder} is using it (it holds {lock_path}); "
                "stop that one, or give each daemon its own state_dir",
            )
        ) from exc
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        # Only the message of a second daemon loses the pid.
        log.warning("spool.lock_unwritable", path=lock_path, error=str(exc))
    return fd


def _lock_holder(fd: int) -> str:
    """`` (pid N)`` from a held lock file, or nothing when it names none."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {text})" if text.isdigit() else ""


def _configure(conn: sqlite3.Connection) -> str:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    # Only takes effect on a new database (before WAL mode and the first table).
    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    journal: str = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
    conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
    # Deleted events are still zeroed on the pages that are written anyway, but freed pages
    # are not rewritten just to zero them (Debian builds SQLite with secure_delete on, which
    # made each delete cost about 45% more CPU). Stock SQLite's default is off.
    conn.execute("PRAGMA secure_delete = FAST")
    return journal
