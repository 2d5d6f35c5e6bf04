"""Operator commands: check the token and rooms against HipChat, send a test message.

Both talk to the configured HipChat server once per target, each request
bounded by ``hipchat.timeout``, print one line per target to ``out`` and
return an exit code: 0 when every target is fine, 1 otherwise. No line ever
holds the API token.

* :func:`check_online` (``hipchatd check-config --online``) asks HipChat
  whether the token may post to each configured room (or ``user``) without
  posting anything: v2 ``?auth_test=true``, v1 its nearest equivalent (see
  :meth:`HipChatClient.auth_test`). With a PostgreSQL spool it first
  connects to the server and reads the spool's schema version.
* :func:`send_test` (``hipchatd send-test [--room NAME]``) posts one quiet,
  clearly marked notification, to prove delivery end to end.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Literal, TextIO

import trio

from hipchatd.config import Config, HipChatSettings
from hipchatd.delivery.hipchat import HipChatClient, Outcome, OutcomeKind, make_http_client
from hipchatd.delivery.render import Message, sender_name
from hipchatd.delivery.routing import Target
from hipchatd.delivery.spool import SpoolError, describe_store
from hipchatd.errors import ConfigError
from hipchatd.redaction import scrub

__all__ = ["TEST_COLOR", "build_test_message", "check_online", "configured_targets", "send_test"]

EXIT_OK = 0
EXIT_FAILED = 1
#: Gray: the quietest HipChat colour, which no real alert uses for a failure.
TEST_COLOR = "gray"
#: Outcomes that say nothing about one target: every other target would fail the same way.
_SERVER_WIDE = frozenset(
    {OutcomeKind.UNAUTHORIZED, OutcomeKind.TRANSPORT_ERROR, OutcomeKind.TIMEOUT}
)


def configured_targets(config: Config, *, with_contacts: bool = True) -> list[Target]:
    """Every recipient the configuration names, in order, without duplicates.

    The ``user`` when set (it replaces every room, as in delivery); else the
    ``hipchat.room`` list and, with ``with_contacts``, the rooms of each
    contact in ``contacts``.
    """
    settings = config.hipchat
    if settings.user:
        return [_target(settings, "user", settings.user)]
    rooms = list(settings.room)
    if with_contacts:
        rooms += [room for contact in config.contacts.values() for room in contact.room or ()]
    return [_target(settings, "room", room) for room in dict.fromkeys(rooms)]


def build_test_message(settings: HipChatSettings, hostname: str | None = None) -> Message:
    """The marked test notification: gray, text, never notifying, from ``username``."""
    host = hostname if hostname is not None else socket.gethostname()
    return Message(
        text=f"hipchatd test notification from {host} — if you can read this, delivery works",
        color=TEST_COLOR,
        notify=False,
        message_format="text",
        sender=sender_name(settings.username, settings.api_version),
    )


async def check_online(config: Config, out: TextIO) -> int:
    """Check the token and every configured room (or ``user``) with HipChat; post nothing.

    Prints ``ok: room sensu (token accepted)`` or ``error: room ops: 404 Room
    ops not found`` per target. A rejected token, an unreachable server or
    a timeout is reported once (``error: token rejected: 401 ...``, ``error:
    cannot reach https://...: ...``) and the remaining targets are listed as
    ``not checked``. With a PostgreSQL spool, the first line is ``ok: spool
    postgresql://user@host:port/db, schema hipchatd (PostgreSQL 15.4): schema
    version 1`` or ``error: spool: ...`` (never the DSN or its password).
    Returns 0 when the spool and every target are ok, else 1. Each request is
    bounded by ``hipchat.timeout``; cancellation propagates.
    """
    spool_ok = await _check_spool(config, out)
    code = await _run(
        config,
        configured_targets(config),
        out,
        lambda client, target: client.auth_test(target),
        done="ok",
        skipped="not checked",
    )
    return code if spool_ok else EXIT_FAILED


async def _check_spool(config: Config, out: TextIO) -> bool:
    """Reach the spool's server, when it has one; print one line. True when usable."""
    if config.daemon.spool.backend == "sqlite":
        return True
    try:
        found = await trio.to_thread.run_sync(describe_store, config.daemon.spool)
    except SpoolError as exc:
        print(f"error: spool: {exc}", file=out, flush=True)
        return False
    if found is not None:
        print(f"ok: spool {found}", file=out, flush=True)
    return True


async def send_test(config: Config, room: str | None, out: TextIO) -> int:
    """Post one test notification (:func:`build_test_message`) and report each target.

    To ``room`` when given, else to the configured ``user`` or ``hipchat.room``
    list (contacts' rooms are left alone: they are checked by
    :func:`check_online`, not messaged). Prints ``sent: room sensu`` or an
    ``error:`` line per target; returns 0 when every message was accepted,
    else 1. Each request is bounded by ``hipchat.timeout``.
    """
    settings = config.hipchat
    if room is not None:
        targets = [_target(settings, "room", room)]
    else:
        targets = configured_targets(config, with_contacts=False)
    message = build_test_message(settings)
    return await _run(
        config,
        targets,
        out,
        lambda client, target: client.send(target, message),
        done="sent",
        skipped="not sent",
    )


async def _run(
    config: Config,
    targets: Iterable[Target],
    out: TextIO,
    call: Callable[[HipChatClient, Target], Awaitable[Outcome]],
    *,
    done: str,
    skipped: str,
) -> int:
    settings = config.hipchat
    targets = list(targets)
    token = settings.api_token.reveal()

    def say(line: str) -> None:
        print(scrub(line, token), file=out, flush=True)

    if not targets:
        say("error: no room or user configured (hipchat.room, hipchat.user)")
        return EXIT_FAILED
    try:
        http = make_http_client(settings, concurrency=1)
    except ConfigError as exc:
        for problem in exc.problems:
            say(f"error: {problem}")
        return EXIT_FAILED
    failed = False
    async with http:
        client = HipChatClient(settings, http)
        for index, target in enumerate(targets):
            with trio.move_on_after(settings.timeout) as scope:
                outcome = await call(client, target)
            if scope.cancelled_caught:
                outcome = Outcome.timeout(settings.timeout)
            if outcome.kind is OutcomeKind.SENT:
                detail = " (token accepted)" if done == "ok" else ""
                say(f"{done}: {_label(target)}{detail}")
                continue
            failed = True
            if outcome.kind in _SERVER_WIDE:
                say(_server_wide_line(outcome, settings.server_url))
                for rest in targets[index:]:
                    say(f"{skipped}: {_label(rest)}")
                break
            say(f"error: {_label(target)}: {_describe(outcome)}")
    return EXIT_FAILED if failed else EXIT_OK


def _target(settings: HipChatSettings, kind: Literal["room", "user"], name: str) -> Target:
    return Target(
        kind=kind,
        name=name,
        # The probe's auth test never notifies; by-severity settings have no severity here.
        notify=False,
        username=settings.username,
        message_format=settings.message_format,
    )


def _label(target: Target) -> str:
    return f"{target.kind} {target.name}"


def _describe(outcome: Outcome) -> str:
    error = outcome.error or outcome.kind.value
    if outcome.status is None or error.startswith(str(outcome.status)):
        return error
    return f"{outcome.status} {error}"


def _server_wide_line(outcome: Outcome, server_url: str) -> str:
    if outcome.kind is OutcomeKind.UNAUTHORIZED:
        return f"error: token rejected: {_describe(outcome)}"
    if outcome.kind is OutcomeKind.TIMEOUT:
        return f"error: {server_url}: {_describe(outcome)}"
    return f"error: cannot reach {server_url}: {_describe(outcome)}"
