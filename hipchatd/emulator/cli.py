"""``hipchatd emulator``: its options, and running the emulator in the foreground."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import ssl
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import trio

from hipchatd.emulator.server import DEFAULT_PORT, Emulator
from hipchatd.emulator.tls import LOOPBACK_NAMES, TLS_INSTALL_HINT, TLSUnavailable, throwaway_tls

#: Hosts that stand for every address, which no certificate can name: --tls covers loopback.
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``emulator`` subcommand to the ``hipchatd`` command line."""
    add_arguments(commands.add_parser("emulator", help="run the HipChat API emulator"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options to ``parser`` (the ``hipchatd emulator`` subcommand)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default %(default)s")
    parser.add_argument(
        "--token",
        dest="tokens",
        action="append",
        default=[],
        metavar="T",
        help="accepted token (repeatable); none means any non-empty token is accepted",
    )
    parser.add_argument(
        "--room",
        dest="rooms",
        action="append",
        default=[],
        metavar="NAME",
        help="room to create (repeatable; default: sensu)",
    )
    parser.add_argument(
        "--auto-create-rooms", action="store_true", help="create unknown rooms on first use"
    )
    parser.add_argument(
        "--rate-limit", type=int, default=500, metavar="N", help="requests per token per 5 minutes"
    )
    parser.add_argument(
        "--flood-limit", type=int, default=30, metavar="N", help="messages per room/user per minute"
    )
    parser.add_argument(
        "--float-reset", action="store_true", help="send X-*-Reset as a float, as seen in 2014"
    )
    parser.add_argument(
        "--strict-from-25", action="store_true", help="limit v2 `from` to 25 characters, not 64"
    )
    parser.add_argument(
        "--lenient-notify", action="store_true", help='accept "true"/"false" strings for notify'
    )
    parser.add_argument(
        "--parse-form-v2", action="store_true", help="parse form bodies on v2 instead of 400"
    )
    parser.add_argument("--latency", type=float, default=0.0, metavar="S",
                        help="seconds added before every API answer")  # fmt: skip
    https = parser.add_argument_group("HTTPS (default: plain HTTP)")
    https.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS with a throwaway certificate for 127.0.0.1, localhost and ::1 "
        f"(and --host), from a new CA whose certificate is written out; needs {TLS_INSTALL_HINT}",
    )
    https.add_argument(
        "--tls-ca-out",
        metavar="PATH",
        help="with --tls: write the CA certificate (PEM) here, for hipchat.ca_file "
        "(default: a new file in the temporary directory, removed at exit)",
    )
    https.add_argument(
        "--tls-cert", metavar="FILE", help="serve HTTPS with this certificate chain (PEM)"
    )
    https.add_argument(
        "--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM; default: in it)"
    )


def emulator_from_args(args: argparse.Namespace, echo: Callable[[str], None]) -> Emulator:
    """Build an Emulator from :func:`add_arguments` options."""
    emulator = Emulator(
        tokens=args.tokens,
        rooms=args.rooms or ("sensu",),
        auto_create_rooms=args.auto_create_rooms,
        rate_limit=args.rate_limit,
        flood_limit=args.flood_limit,
        float_reset=args.float_reset,
        strict_from_25=args.strict_from_25,
        lenient_notify=args.lenient_notify,
        parse_form_v2=args.parse_form_v2,
        echo=echo,
    )
    emulator.latency = args.latency
    return emulator


def _print_line(line: str) -> None:
    print(line, flush=True)


def _startup_line(emulator: Emulator, args: argparse.Namespace, tls: _Tls | None = None) -> str:
    rooms, limits = emulator.rooms.describe(), emulator.limits
    tokens = (
        f"{len(set(args.tokens))} token(s) accepted"
        if args.tokens
        else "open mode: any token accepted"
    )
    auto = ", unknown rooms auto-created" if args.auto_create_rooms else ""
    return (
        f"hipchatd emulator listening on {emulator.url}; rooms: {rooms}{auto}; "
        f"rate limit {limits.rate_limit}/{limits.rate_window:g}s per token, "
        f"flood control {limits.flood_limit}/{limits.flood_window:g}s per room; {tokens}"
        + (f"; CA certificate in {tls.ca_path}" if tls is not None and tls.ca_path else "")
    )


async def _serve_until_signalled(
    emulator: Emulator, args: argparse.Namespace, tls: _Tls | None
) -> int:
    serve = functools.partial(emulator.serve, ssl_context=tls.context if tls else None)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(serve, args.host, args.port)
            except OSError as exc:
                print(f"hipchatd emulator: cannot listen on {args.host}:{args.port}: {exc}",
                      file=sys.stderr)  # fmt: skip
                return 1
            _print_line(_startup_line(emulator, args, tls))
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the emulator in the foreground until Ctrl-C or SIGTERM; return the exit code.

    Prints one startup line (with ``--tls``, it names the CA certificate
    file), then one line per accepted message. Returns 0 on a signal, 1 if it
    cannot start: the address cannot be bound, or the HTTPS options cannot be
    used (one line on stderr says why).
    """
    try:
        tls = _tls_from_args(args)
    except _CannotStart as exc:
        print(f"hipchatd emulator: {exc}", file=sys.stderr)
        return 1
    emulator = emulator_from_args(args, _print_line)
    try:
        return trio.run(_serve_until_signalled, emulator, args, tls)
    except KeyboardInterrupt:  # Ctrl-C before the signal receiver was installed
        return 0
    finally:
        if tls is not None and tls.ca_path is not None:
            _remove_quietly(tls.ca_path, tls.temporary)


@dataclass(frozen=True, slots=True)
class _Tls:
    context: ssl.SSLContext
    #: the throwaway CA's certificate, None with --tls-cert
    ca_path: str | None = None
    #: the CA file is ours to remove at exit (no --tls-ca-out)
    temporary: bool = False


class _CannotStart(Exception):
    """One line saying why the emulator cannot start as asked."""


def _tls_from_args(args: argparse.Namespace) -> _Tls | None:
    if args.tls and args.tls_cert:
        raise _CannotStart("give either --tls (a throwaway certificate) or --tls-cert, not both")
    if args.tls_key and not args.tls_cert:
        raise _CannotStart("--tls-key needs --tls-cert")
    if args.tls_ca_out and not args.tls:
        raise _CannotStart("--tls-ca-out goes with --tls (it names where the throwaway CA goes)")
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            key = f" and --tls-key {args.tls_key}" if args.tls_key else ""
            raise _CannotStart(
                f"cannot load --tls-cert {args.tls_cert}{key}: {exc}; both must be PEM and "
                "the key must match the certificate"
            ) from None
        return _Tls(context)
    if not args.tls:
        return None
    hosts = [*LOOPBACK_NAMES]
    if args.host not in _WILDCARD_HOSTS:
        hosts.append(args.host)
    temporary = not args.tls_ca_out
    if temporary:
        fd, path = tempfile.mkstemp(prefix="hipchatd-emulator-ca-", suffix=".pem")
        os.close(fd)
    else:
        path = os.path.abspath(args.tls_ca_out)
    try:
        context = throwaway_tls(path, hosts)
    except TLSUnavailable as exc:
        _remove_quietly(path, temporary)
        raise _CannotStart(str(exc)) from None
    except OSError as exc:
        _remove_quietly(path, temporary)
        raise _CannotStart(f"cannot write the CA certificate to {path}: {exc.strerror}") from None
    return _Tls(context, path, temporary)


def _remove_quietly(path: str, ours: bool) -> None:
    if ours:
        with contextlib.suppress(OSError):
            os.unlink(path)
