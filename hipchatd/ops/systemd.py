"""systemd integration: sd_notify, socket activation (``LISTEN_FDS``), watchdog.

Standard library and trio only; no libsystemd. Outside systemd every function
is a quiet no-op, so the daemon runs the same in a shell.

* :func:`notify` and its helpers (:func:`ready`, :func:`status`,
  :func:`reloading`, :func:`stopping`) send one datagram to
  ``$NOTIFY_SOCKET``. They are synchronous: a non-blocking ``sendto`` on a
  local datagram socket cannot block, and a notification that cannot be sent
  is dropped (logged at DEBUG), never raised. The service manager, not the
  daemon, decides what a lost notification means.
* :func:`listen_fds` adopts the sockets of ``hipchatd.socket``. It refuses an
  fd it cannot serve loudly (:class:`SystemdError`), because a daemon that
  silently ignored an inherited socket would leave Sensu connecting to a port
  nobody reads.
* :func:`watchdog` pings ``WATCHDOG=1`` from a trio task, so the pings stop
  when the event loop is stuck, which is the point of the watchdog.

The protocol is systemd's ``sd_notify(3)``, ``sd_listen_fds(3)`` and
``sd_watchdog_enabled(3)``.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Literal

import structlog
import trio

from hipchatd.errors import HipchatdError

__all__ = [
    "LISTEN_FDS_START",
    "InheritedSocket",
    "SystemdError",
    "listen_fds",
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_period",
]

log = structlog.get_logger()

#: The first inherited fd (``SD_LISTEN_FDS_START``); 0-2 are stdio.
LISTEN_FDS_START = 3
#: systemd's name for an fd its unit did not name (``sd_listen_fds_with_names``).
UNNAMED = "unknown"
#: Families hipchatd can serve: Sensu speaks TCP and UDP over IP.
_SERVABLE_FAMILIES = {socket.AF_INET: "AF_INET", socket.AF_INET6: "AF_INET6"}
_KINDS: dict[int, Literal["stream", "datagram"]] = {
    socket.SOCK_STREAM: "stream",
    socket.SOCK_DGRAM: "datagram",
}
_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class SystemdError(HipchatdError):
    """The service manager handed over something hipchatd cannot use.

    The message names the fd, its ``LISTEN_FDNAMES`` label and what to change
    in the ``.socket`` unit.
    """


@dataclass(frozen=True, slots=True)
class InheritedSocket:
    """One socket passed by systemd, adopted: non-blocking and close-on-exec."""

    sock: socket.socket
    #: its ``FileDescriptorName=`` (``LISTEN_FDNAMES``): a label for logs only.
    name: str
    #: from the socket's own type (``SO_TYPE``), never from the name or the order.
    kind: Literal["stream", "datagram"]


# -- sd_notify --------------------------------------------------------------------


def notify(*lines: str, env: Mapping[str, str] = os.environ) -> bool:
    """Send ``lines`` (``"READY=1"``, ``"STATUS=..."``) as one datagram to ``$NOTIFY_SOCKET``.

    Returns True when the datagram was sent, False when not running under
    systemd (no ``NOTIFY_SOCKET``), when the address is of a kind this
    module does not speak (e.g. ``vsock:``) or when sending failed: the
    notification is then dropped and logged at DEBUG. Never raises for a
    send error, and never blocks (a full receive queue drops the datagram).
    Raises ValueError for a line holding a newline, which would smuggle in
    another assignment.
    """
    for line in lines:
        if "\n" in line:
            raise ValueError(f"sd_notify line contains a newline: {line!r}")
    target = env.get("NOTIFY_SOCKET", "")
    if not target:
        return False
    if target.startswith("@"):
        # Linux abstract namespace: the leading "@" stands for a NUL byte.
        address = "\0" + target[1:]
    elif target.startswith("/"):
        address = target
    else:
        log.debug("systemd.notify_failed", notify_socket=target, reason="unsupported address")
        return False
    payload = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(payload, address)
    except OSError as exc:
        log.debug(
            "systemd.notify_failed",
            notify_socket=target,
            state=lines[0].partition("=")[0] if lines else "",
            reason=exc.strerror or str(exc),
        )
        return False
    return True


def ready(status_text: str | None = None, *, env: Mapping[str, str] = os.environ) -> bool:
    """``READY=1``, with ``STATUS=`` in the same datagram when given.

    Send it once the listeners serve and the dispatcher runs: ``Type=notify``
    units count as started (and socket units start forwarding) from here.
    """
    lines = ["READY=1"]
    if status_text is not None:
        lines.append(_status_line(status_text))
    return notify(*lines, env=env)


def status(text: str, *, env: Mapping[str, str] = os.environ) -> bool:
    """``STATUS=text``: the one-line summary ``systemctl status`` shows.

    Newlines in ``text`` become spaces (the protocol is line-based).
    """
    return notify(_status_line(text), env=env)


def reloading(*, env: Mapping[str, str] = os.environ) -> bool:
    """``RELOADING=1`` and ``MONOTONIC_USEC=``, in one datagram, as a reload starts.

    systemd (253 and later) requires the timestamp, on ``CLOCK_MONOTONIC``,
    to tell this reload from an earlier one; older versions ignore it. Send
    :func:`ready` when the new configuration is in effect, and also when
    the reload failed and the old one stays.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", env=env)


def stopping(*, env: Mapping[str, str] = os.environ) -> bool:
    """``STOPPING=1``: shutdown has begun (send it before the drain grace starts)."""
    return notify("STOPPING=1", env=env)


def _status_line(text: str) -> str:
    return "STATUS=" + " ".join(text.splitlines())


# -- socket activation ------------------------------------------------------------


def listen_fds(
    env: MutableMapping[str, str] = os.environ, *, unset: bool = True
) -> list[InheritedSocket]:
    """Adopt the sockets systemd passed (``LISTEN_FDS``), from fd 3 on, in order.

    Returns ``[]`` when there are none, or when ``LISTEN_PID`` names another
    process (the variables were inherited from a parent that was activated,
    not meant for us). ``LISTEN_FDNAMES`` only labels the sockets; a list
    of the wrong length is ignored with a warning. Whether a socket is TCP
    or UDP is read from the socket itself.

    Each adopted socket is set non-blocking and close-on-exec. With
    ``unset`` (the default) ``LISTEN_PID``, ``LISTEN_FDS`` and
    ``LISTEN_FDNAMES`` are removed from ``env`` in every case, as
    ``sd_listen_fds(3)`` does, so no child process mistakes them for its own.

    Raises SystemdError, naming the fd and its label, for an fd that is not
    open, not a socket, not AF_INET/AF_INET6, neither stream nor datagram,
    or a stream socket that is not listening (``Accept=yes``); and for
    ``LISTEN_PID``/``LISTEN_FDS`` values that are not numbers. Nothing is
    adopted then: every fd is left open and untouched.
    """
    pid_text = env.get("LISTEN_PID")
    count_text = env.get("LISTEN_FDS")
    names_text = env.get("LISTEN_FDNAMES")
    if unset:
        for variable in _LISTEN_VARIABLES:
            env.pop(variable, None)
    if count_text is None or pid_text is None:
        return []
    pid = _env_int("LISTEN_PID", pid_text)
    count = _env_int("LISTEN_FDS", count_text)
    if pid != os.getpid():
        log.info("systemd.listen_fds_ignored", listen_pid=pid, pid=os.getpid(), listen_fds=count)
        return []
    names = _names(names_text, count)
    adopted: list[InheritedSocket] = []
    try:
        for offset, name in enumerate(names):
            adopted.append(_adopt(LISTEN_FDS_START + offset, name))
    except SystemdError:
        for inherited in adopted:
            inherited.sock.detach()  # hand the fd back unchanged: nothing half-adopted
        raise
    for inherited in adopted:
        inherited.sock.setblocking(False)
        os.set_inheritable(inherited.sock.fileno(), False)
    return adopted


def _env_int(variable: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise SystemdError(f"{variable}={text!r}: expected a non-negative integer")
    return value


def _names(text: str | None, count: int) -> list[str]:
    if text is None:
        return [UNNAMED] * count
    names = text.split(":")
    if len(names) != count:
        log.warning(
            "systemd.fdnames_ignored",
            listen_fdnames=text,
            listen_fds=count,
            reason="not one name per fd",
        )
        return [UNNAMED] * count
    return [name or UNNAMED for name in names]


def _adopt(fd: int, name: str) -> InheritedSocket:
    where = f"inherited fd {fd} ({name!r})"
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise SystemdError(f"{where}: cannot be used: {exc.strerror or exc}") from exc
    if not stat.S_ISSOCK(mode):
        raise SystemdError(
            f"{where}: not a socket ({_file_kind(mode)}); expected a ListenStream= or"
            " ListenDatagram= socket from the .socket unit"
        )
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise SystemdError(f"{where}: cannot be used: {exc.strerror or exc}") from exc
    try:
        family = sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
        type_ = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        if family not in _SERVABLE_FAMILIES:
            raise SystemdError(
                f"{where}: a {_family_name(family)} socket; hipchatd serves TCP and UDP over"
                " IP: use ListenStream=HOST:PORT / ListenDatagram=HOST:PORT"
            )
        kind = _KINDS.get(type_)
        if kind is None:
            raise SystemdError(
                f"{where}: a {_type_name(type_)} socket; expected SOCK_STREAM (ListenStream=)"
                " or SOCK_DGRAM (ListenDatagram=)"
            )
        if kind == "stream" and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise SystemdError(
                f"{where}: a stream socket that is not listening (a connection?);"
                " expected a listening socket: set Accept=no in the .socket unit"
            )
    except BaseException:
        sock.detach()
        raise
    return InheritedSocket(sock=sock, name=name, kind=kind)


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a pipe"),
    ):
        if test(mode):
            return kind
    return f"file mode {mode:o}"


def _family_name(family: int) -> str:
    try:
        return socket.AddressFamily(family).name
    except ValueError:
        return f"address family {family}"


def _type_name(type_: int) -> str:
    try:
        return socket.SocketKind(type_).name
    except ValueError:
        return f"type {type_}"


# -- watchdog ---------------------------------------------------------------------


def watchdog_period(env: Mapping[str, str] = os.environ) -> float | None:
    """The watchdog timeout in seconds (``WATCHDOG_USEC``), or None when off or not ours.

    ``WATCHDOG_PID``, when set, must be this process. A value that is not
    a positive integer is ignored with a warning.
    """
    usec_text = env.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    pid_text = env.get("WATCHDOG_PID")
    if pid_text and pid_text != str(os.getpid()):
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        usec = 0
    if usec <= 0:
        log.warning("systemd.watchdog_ignored", watchdog_usec=usec_text, reason="not a number > 0")
        return None
    return usec / 1_000_000


async def watchdog(
    env: Mapping[str, str] = os.environ,
    *,
    task_status: trio.TaskStatus[float | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` until cancelled.

    Start it with ``nursery.start``: it reports the period (None when the
    watchdog is off, and then returns at once). The first ping goes out
    immediately. The pings come from this task, so an event loop that stops
    scheduling tasks stops them too, and systemd restarts the service.
    """
    period = watchdog_period(env)
    task_status.started(period)
    if period is None:
        return
    log.debug("systemd.watchdog_started", period_s=period)
    while True:
        notify("WATCHDOG=1", env=env)
        await trio.sleep(period / 2)
