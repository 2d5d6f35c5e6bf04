"""Command line: argv -> config -> logging -> trio.run(app.run, ...) -> exit code."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog
import trio

from hipchatd import __version__, logconfig
from hipchatd.config import Config, LoadResult, load_config
from hipchatd.errors import ConfigError

__all__ = ["main"]

#: Where the packaged unit points ``--config``; used when the flag is absent and it exists.
DEFAULT_CONFIG_DIR = Path("/etc/hipchatd")

EXIT_OK = 0
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


def _parser() -> argparse.ArgumentParser:
    from hipchatd import emulator

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
        "--emulator",
        action="store_true",
        help="deliver to an in-process HipChat emulator on loopback and print its messages",
    )

    check = sub.add_parser("check-config", help="validate the configuration and exit")
    _add_config_argument(check)

    emu = sub.add_parser("emulator", help="run the HipChat API emulator")
    emulator.add_arguments(emu)
    return parser


def _config_paths(given: Sequence[str]) -> list[str]:
    if given:
        return list(given)
    return [str(DEFAULT_CONFIG_DIR)] if DEFAULT_CONFIG_DIR.is_dir() else []


def _load(paths: Sequence[str], *, require_token: bool) -> LoadResult:
    return load_config(_config_paths(paths), os.environ, require_token=require_token)


def _check_config(args: argparse.Namespace) -> int:
    try:
        result = _load(args.config, require_token=True)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print("OK")
    return EXIT_OK


async def _serve_until_signalled(config: Config, with_emulator: bool) -> None:
    from hipchatd import app

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda **kw: app.run(config, with_emulator=with_emulator, **kw))
            async for signum in signals:
                log.info("daemon.stopping", signal=signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def _serve(args: argparse.Namespace) -> int:
    try:
        result = _load(args.config, require_token=not args.emulator)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("config.invalid", problem=problem)
        return EXIT_CONFIG
    token = result.config.hipchat.api_token.reveal()
    logconfig.register_secret(token)
    for warning in result.warnings:
        log.warning("config.warning", warning=warning)
    trio.run(_serve_until_signalled, result.config, args.emulator)
    log.info("daemon.stopped")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hipchatd`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    if args.command == "emulator":
        from hipchatd import emulator

        return emulator.run(args)
    if args.command == "check-config":
        return _check_config(args)
    logconfig.configure(args.log_level)
    return _serve(args)
