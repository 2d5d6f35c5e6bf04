"""Command line: argv -> config -> logging -> trio.run(app.serve, ...) -> exit code.

Synchronous: the task tree, signals included, is ``app.serve``'s.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import structlog
import trio

from hipchatd import __version__
from hipchatd.config import DEFAULT_STATE_DIR, Config, Listen, LoadResult, load_config
from hipchatd.delivery.spool import SpoolError
from hipchatd.errors import ConfigError, HipchatdError, StartupError
from hipchatd.ops import logconfig, systemd

__all__ = ["main"]

#: Where the packaged unit points ``--config``; used when the flag is absent and it exists.
DEFAULT_CONFIG_DIR = Path("/etc/hipchatd")

#: The ``emulator`` subcommand's line in ``hipchatd --help`` (as its own package adds it).
EMULATOR_HELP = "run the HipChat API emulator"

#: Seconds the event loop's thread may keep the interpreter while the spool's worker thread
#: waits for it (CPython's default is 5 ms). The worker needs it back after each SQLite
#: statement, a dozen per commit, and under a burst connections wait for commits once 2,048
#: entries are uncommitted: 1 ms halved those waits (measured on NDJSON bursts)
#: (https://docs.python.org/3/library/sys.html#sys.setswitchinterval).
GIL_SWITCH_INTERVAL = 0.001

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

log = structlog.get_logger()


def _add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        action="append",
        default=[],
        metavar="PATH",
        help="a JSON file, or a directory of *.json merged in name order (repeatable; "
        f"default {DEFAULT_CONFIG_DIR}/ when it exists)",
    )


def _port(text: str) -> int:
    """argparse type: a port number, 0 to 65535 (0: any free port)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0 to 65535)")
    return port


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line; the emulator's options only when ``command`` is ``emulator``.

    Its package (an HTTP server, HipChat's rules) is about 0.5 MB of a daemon's memory,
    which ``serve`` without ``--emulator`` never uses; ``--help`` lists it all the same.
    """
    from hipchatd.ops import sendevent, spool_admin

    parser = argparse.ArgumentParser(
        prog="hipchatd", description="Sensu socket handler that notifies HipChat rooms."
    )
    parser.add_argument("--version", action="version", version=f"hipchatd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="listen for Sensu events and notify HipChat")
    _add_config_argument(serve)
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="lowest level logged (default info)",
    )
    serve.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the spool lives (default: hipchatd.state_dir, else $STATE_DIRECTORY, "
        f'else {DEFAULT_STATE_DIR}; ":memory:" with --emulator)',
    )
    serve.add_argument(
        "--emulator",
        action="store_true",
        help="deliver to an in-process HipChat emulator on loopback and print its messages",
    )
    serve.add_argument(
        "--port",
        type=_port,
        metavar="N",
        help="listen for TCP and UDP on port N of the configured hosts "
        "(instead of hipchatd.tcp.port and hipchatd.udp.port)",
    )

    check = sub.add_parser("check-config", help="validate the configuration and exit")
    _add_config_argument(check)
    check.add_argument(
        "--online",
        action="store_true",
        help="also verify the token with HipChat (auth_test: no message is posted) and, "
        "with a PostgreSQL spool, the connection and its schema version",
    )

    test = sub.add_parser("send-test", help="post one marked test notification and report")
    _add_config_argument(test)
    test.add_argument("--room", metavar="NAME", help="this room instead of the configured ones")

    where = argparse.ArgumentParser(add_help=False)
    _add_config_argument(where)
    where.add_argument("--state-dir", metavar="DIR", help="the spool's directory")
    spool_parser = sub.add_parser(
        "spool", help="list, retry or purge spooled events (safe while the daemon runs)"
    )
    spool_admin.add_arguments(spool_parser, parents=[where])

    send = sub.add_parser(
        "send-event",
        help="write one Sensu event to the daemon, as Sensu does (no reply is awaited)",
    )
    _add_config_argument(send)
    sendevent.add_arguments(send, port_type=_port)

    if command == "emulator":
        from hipchatd import emulator

        emulator.add_parser(sub)
    else:
        sub.add_parser("emulator", help=EMULATOR_HELP)
    return parser


def _config_paths(given: Sequence[str]) -> list[str]:
    if given:
        return list(given)
    return [str(DEFAULT_CONFIG_DIR)] if DEFAULT_CONFIG_DIR.is_dir() else []


def _load(paths: Sequence[str], *, require_token: bool) -> LoadResult:
    return load_config(_config_paths(paths), os.environ, require_token=require_token)


def _load_for_command(args: argparse.Namespace, *, require_token: bool) -> LoadResult | None:
    """Load for a one-shot command: problems and warnings go to stderr; None on problems."""
    try:
        result = _load(args.config, require_token=require_token)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        for warning in exc.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        return None
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return result


def _check_config(args: argparse.Namespace) -> int:
    if args.online:
        from hipchatd.ops import probe

        return _online(args, probe.check_online)
    if _load_for_command(args, require_token=True) is None:
        return EXIT_CONFIG
    print("OK")
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    try:
        result = _load(args.config, require_token=not args.emulator)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("config.invalid", problem=problem)
        for warning in exc.warnings:
            log.warning("config.warning", warning=warning)
        return EXIT_CONFIG
    config = _with_port(result.config, args.port)
    logconfig.register_config_secrets(config)
    for warning in result.warnings:
        log.warning("config.warning", warning=warning)
    config = _with_state_dir(config, _state_dir(args, config, os.environ))
    try:
        inherited = systemd.listen_fds()
    except systemd.SystemdError as exc:
        log.error("systemd.unusable_socket", error=str(exc))
        return EXIT_CONFIG
    if inherited and args.port is not None:
        log.warning("daemon.port_ignored", port=args.port, reason="sockets inherited from systemd")
    state_dir = config.daemon.state_dir

    def load() -> LoadResult:
        reloaded = _load(args.config, require_token=not args.emulator)
        config = _with_state_dir(_with_port(reloaded.config, args.port), state_dir)
        return dataclasses.replace(reloaded, config=config)

    from hipchatd import app

    failures: list[HipchatdError] = []
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    try:
        trio.run(
            partial(app.serve, config, with_emulator=args.emulator, inherited=inherited, load=load),
            instruments=[logconfig.LineFlush()],
        )
    except* _FATAL as group:
        failures = _leaves(group)
    if failures:
        for failure in failures:
            _log_fatal(failure)
        return EXIT_FAILURE
    log.info("daemon.stopped")
    return EXIT_OK


#: Errors that end ``serve`` with one ERROR line each and no traceback: each
#: message already names the file, key or address and what to do.
_FATAL = (StartupError, ConfigError, SpoolError)


def _leaves(group: BaseExceptionGroup[HipchatdError]) -> list[HipchatdError]:
    """The exceptions of ``group`` and of the groups nested in it (each nursery adds one)."""
    found: list[HipchatdError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found


def _log_fatal(exc: HipchatdError) -> None:
    if isinstance(exc, ConfigError):
        for problem in exc.problems:
            log.error("config.invalid", problem=problem)
    elif isinstance(exc, SpoolError):
        log.error("spool.unavailable", error=str(exc))
    else:
        log.error("daemon.start_failed", error=str(exc))


def _with_port(config: Config, port: int | None) -> Config:
    """``serve --port``: the configured TCP and UDP listeners moved to ``port``."""
    if port is None:
        return config
    daemon = config.daemon
    tcp = None if daemon.tcp is None else Listen(daemon.tcp.host, port)
    udp = None if daemon.udp is None else Listen(daemon.udp.host, port)
    return dataclasses.replace(config, daemon=dataclasses.replace(daemon, tcp=tcp, udp=udp))


def _with_state_dir(config: Config, state_dir: str) -> Config:
    if state_dir == config.daemon.state_dir:
        return config
    return dataclasses.replace(
        config, daemon=dataclasses.replace(config.daemon, state_dir=state_dir)
    )


def _online(args: argparse.Namespace, check: Callable[..., Awaitable[int]], *extra: object) -> int:
    result = _load_for_command(args, require_token=True)
    if result is None:
        return EXIT_CONFIG
    logconfig.register_config_secrets(result.config)
    code: int = trio.run(partial(check, result.config, *extra, sys.stdout))
    return code


def _spool(args: argparse.Namespace) -> int:
    from hipchatd.ops import spool_admin

    args.emulator = False
    result = _load_for_command(args, require_token=False)
    if result is None:
        return EXIT_CONFIG
    logconfig.register_config_secrets(result.config)
    config = result.config
    return spool_admin.run(args, _state_dir(args, config, os.environ), config.daemon.spool)


def _send_event(args: argparse.Namespace) -> int:
    from hipchatd.ops import sendevent

    # The daemon's address and max_frame_bytes; without --config and /etc/hipchatd, the
    # defaults. Its warnings are for check-config and serve.
    try:
        config = _load(args.config, require_token=False).config
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    return sendevent.run(args, config, sys.stdin.buffer, sys.stdout, sys.stderr)


def _state_dir(args: argparse.Namespace, config: Config, env: Mapping[str, str]) -> str:
    """--state-dir, else the configured one; an unconfigured one follows systemd or --emulator.

    systemd's ``StateDirectory=`` passes its path in ``$STATE_DIRECTORY``;
    ``serve --emulator`` (a trial run) keeps its spool in memory.
    """
    if args.state_dir:
        return str(args.state_dir)
    if config.daemon.state_dir != DEFAULT_STATE_DIR:
        return config.daemon.state_dir
    if env.get("STATE_DIRECTORY"):
        return env["STATE_DIRECTORY"].split(":")[0]
    if args.emulator:
        return ":memory:"
    return config.daemon.state_dir


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hipchatd`` console script."""
    given = sys.argv[1:] if argv is None else argv
    # The command comes first: the top level has no options but --help and --version.
    parser = _parser(given[0] if given else None)
    args = parser.parse_args(given)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    if args.command == "emulator":
        from hipchatd import emulator

        return emulator.run(args)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "spool":
        return _spool(args)
    if args.command == "send-event":
        return _send_event(args)
    if args.command == "send-test":
        from hipchatd.ops import probe

        return _online(args, probe.send_test, args.room)
    logconfig.configure(args.log_level)
    return _serve(args)
