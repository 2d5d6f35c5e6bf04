"""``hipchatd send-event``: write one Sensu event to the daemon, the way Sensu does.

Over TCP: connect, write the whole event, close, with no framing and no
reply awaited (a Sensu socket handler never gets one). Over UDP: one
datagram. The event comes from a file or, with ``-``, from stdin, so an
operator can replay an event without ``nc``, and a Sensu Go pipe handler
(``command: hipchatd send-event -``) can hand its events to the local
daemon, which spools them before delivery.

The input is checked before anything is sent: it must be UTF-8 JSON, one
Sensu event (Classic or Go), no larger than the daemon's
``max_frame_bytes`` (and, over UDP, one datagram). A refusal is one line on
stderr and nothing is sent. The address defaults to the configured
``hipchatd.tcp`` (or ``hipchatd.udp``) listener; a listener on every
interface (``0.0.0.0``, ``::``) is reached over loopback.

Exit codes: 0 sent, 1 could not send, 2 bad input or configuration.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
from collections.abc import Callable
from typing import BinaryIO, TextIO

from hipchatd.config import Config, DaemonSettings, Listen
from hipchatd.errors import EventError
from hipchatd.sensu.events import parse_event

__all__ = ["SEND_TIMEOUT", "add_arguments", "run"]

#: Seconds to connect and write: the daemon reads without waiting on HipChat, so a
#: healthy one takes milliseconds; Sensu's own handler timeout is 10 s too.
SEND_TIMEOUT = 10.0
#: Bytes of one UDP datagram's payload at most, by address family (65,535 less the
#: IP and UDP headers; IPv6's header is not counted in its payload length).
UDP_PAYLOAD_LIMIT = {socket.AF_INET: 65_507, socket.AF_INET6: 65_527}

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INPUT = 2

#: Listening on every interface means "reachable on loopback" to a local sender.
_ANY_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def add_arguments(parser: argparse.ArgumentParser, *, port_type: Callable[[str], int]) -> None:
    """The ``send-event`` arguments (``--config`` is added by the caller)."""
    parser.add_argument("file", metavar="FILE", help='the event\'s JSON file, or "-" for stdin')
    parser.add_argument("--udp", action="store_true", help="send one UDP datagram instead of TCP")
    parser.add_argument(
        "--host", metavar="H", help="the daemon's host (default: the configured listener's)"
    )
    parser.add_argument(
        "--port",
        type=port_type,
        metavar="P",
        help="the daemon's port (default: the configured listener's, else 3033)",
    )


class _Refused(Exception):
    """One line for stderr, and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def run(args: argparse.Namespace, config: Config, stdin: BinaryIO, out: TextIO, err: TextIO) -> int:
    """Check the event, send it, print one line; returns the exit code."""
    try:
        transport = "udp" if args.udp else "tcp"
        host, port = _address(config.daemon, transport, args.host, args.port)
        data = _read(args.file, stdin, config.daemon.max_frame_bytes)
        _check(data, args.file)
        sent = _send_udp(data, host, port) if args.udp else _send_tcp(data, host, port)
    except _Refused as exc:
        print(f"error: {exc}", file=err)
        return exc.code
    print(f"sent {len(data)} bytes to {sent} over {transport}", file=out)
    return EXIT_OK


def _address(
    daemon: DaemonSettings, transport: str, host: str | None, port: int | None
) -> tuple[str, int]:
    listen: Listen | None = daemon.udp if transport == "udp" else daemon.tcp
    if listen is None and (host is None or port is None):
        raise _Refused(
            f"hipchatd.{transport} is null in the configuration (no {transport} listener); "
            f"give --host and --port{'' if transport == 'udp' else ', or --udp'}",
            EXIT_INPUT,
        )
    if host is None:
        assert listen is not None
        host = _ANY_TO_LOOPBACK.get(listen.host, listen.host)
    if port is None:
        assert listen is not None
        port = listen.port
    if port == 0:
        raise _Refused(
            f"port 0 (any free port) in hipchatd.{transport}: the daemon's port is only "
            "known from its daemon.started log line; give --port",
            EXIT_INPUT,
        )
    return host, port


def _read(name: str, stdin: BinaryIO, limit: int) -> bytes:
    """The whole input, up to ``limit`` bytes (the daemon's ``max_frame_bytes``)."""
    where = "stdin" if name == "-" else name
    try:
        if name == "-":
            data = stdin.read(limit + 1)
        else:
            with open(name, "rb") as file:
                data = file.read(limit + 1)
    except OSError as exc:
        raise _Refused(f"{where}: cannot read: {exc.strerror or exc}", EXIT_INPUT) from exc
    if len(data) > limit:
        raise _Refused(
            f"{where}: over {limit} bytes, the daemon's hipchatd.max_frame_bytes; "
            "it would reject the event",
            EXIT_INPUT,
        )
    return data


def _check(data: bytes, name: str) -> None:
    """Refuse what the daemon would reject: not UTF-8, not JSON, not one Sensu event."""
    where = "stdin" if name == "-" else name
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = f"not UTF-8 text (bad byte at offset {exc.start})"
        raise _Refused(f"{where}: {bad}; nothing was sent", EXIT_INPUT) from None
    if not text.strip():
        raise _Refused(f"{where}: empty; expected one Sensu event as JSON", EXIT_INPUT)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Refused(
            f"{where}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}; nothing was sent", EXIT_INPUT
        ) from None
    except (ValueError, RecursionError) as exc:
        # A number past Python's digit limit, or nesting past the recursion limit.
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise _Refused(f"{where}: not usable JSON: {reason}; nothing was sent", EXIT_INPUT) from exc
    try:
        parse_event(document)
    except EventError as exc:
        raise _Refused(f"{where}: {exc}; nothing was sent", EXIT_INPUT) from None


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _send_tcp(data: bytes, host: str, port: int) -> str:
    where = _shown(host, port)
    try:
        with socket.create_connection((host, port), timeout=SEND_TIMEOUT) as sock:
            sock.sendall(data)
    except ConnectionRefusedError:
        raise _Refused(
            f"cannot connect to {where} (tcp): connection refused; is the daemon running? "
            "Start it with `hipchatd serve` (or name its address with --host and --port)",
            EXIT_FAILURE,
        ) from None
    except TimeoutError:
        raise _Refused(
            f"cannot send to {where} (tcp): no progress within {SEND_TIMEOUT:g} s", EXIT_FAILURE
        ) from None
    except OSError as exc:
        raise _Refused(f"cannot send to {where} (tcp): {_reason(exc)}", EXIT_FAILURE) from None
    return where


def _send_udp(data: bytes, host: str, port: int) -> str:
    where = _shown(host, port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise _Refused(f"cannot send to {where} (udp): {_reason(exc)}", EXIT_FAILURE) from None
    family, type_, proto, _, address = infos[0]
    limit = UDP_PAYLOAD_LIMIT.get(family, UDP_PAYLOAD_LIMIT[socket.AF_INET])
    if len(data) > limit:
        raise _Refused(
            f"{len(data)} bytes do not fit in one UDP datagram (at most {limit} bytes to "
            f"{where}); send it over TCP (without --udp)",
            EXIT_INPUT,
        )
    try:
        with socket.socket(family, type_, proto) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendto(data, address)
    except OSError as exc:
        if exc.errno == errno.EMSGSIZE:
            raise _Refused(
                f"{len(data)} bytes do not fit in one UDP datagram to {where}; "
                "send it over TCP (without --udp)",
                EXIT_INPUT,
            ) from None
        raise _Refused(f"cannot send to {where} (udp): {_reason(exc)}", EXIT_FAILURE) from None
    return where


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
