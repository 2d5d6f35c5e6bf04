"""The one entry point: read, merge and validate the configuration files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hipchatd.config.checker import Checker
from hipchatd.config.files import expand, merge, read_document
from hipchatd.config.rules import DAEMON_RULES, HIPCHAT_RULES
from hipchatd.config.settings import Config, DaemonSettings, HipChatSettings, LoadResult
from hipchatd.errors import ConfigError

#: The scopes read; every other scope is another handler's, and ignored.
SCOPES = ("hipchat", "hipchatd", "contacts")


def load_config(
    paths: Sequence[str | Path],
    env: Mapping[str, str],
    *,
    require_token: bool = True,
) -> LoadResult:
    """Read, merge and validate configuration files.

    Each path is a file, or a directory meaning every ``*.json`` in it,
    sorted by name; an empty directory is fine. ``env`` supplies
    ``HIPCHAT_API_TOKEN`` and ``CREDENTIALS_DIRECTORY``.

    The API token is taken from the first of these that has one:

    1. ``hipchat.api_token`` in the files: Sensu Enterprise keeps it there,
       so an existing ``conf.d`` works unchanged;
    2. ``$CREDENTIALS_DIRECTORY/hipchat_api_token`` (surrounding whitespace
       stripped): systemd ``LoadCredential=`` is the most deliberate
       choice of the two, and is invisible to other processes;
    3. ``HIPCHAT_API_TOKEN`` (surrounding whitespace stripped; an empty
       value counts as unset).

    A token with a character that cannot go in an HTTP header or a form
    body (whitespace inside it, a control or a non-ASCII character) is a
    problem naming its source and the character's class, never the token.

    A shadowed source gets a warning naming which one is used. With
    ``require_token=False`` a missing token is allowed (the emulator mode
    supplies its own) and ``api_token`` is an empty ``Secret``. A missing
    token is not reported when some file could not be read or parsed.

    Raises ConfigError listing every problem found, one line each, with the
    warnings kept apart in ``warnings`` (an unknown key is often the cause,
    e.g. ``api_tokne``). No line ever contains the token. Nothing but a
    regular file is opened (a FIFO or a device would block or never end),
    and a file too deeply nested or holding a number too long to convert is
    a problem line, not an exception.
    """
    problems: list[str] = []
    merged: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    sources: list[str] = []
    for file in expand(paths, problems):
        document = read_document(file, problems)
        if document is None:
            continue
        sources.append(str(file))
        for scope in SCOPES:
            if scope in document:
                merge(merged, {scope: document[scope]}, str(file), origin)

    # A file that could not be read may hold the token: then "missing" would mislead.
    token_required = require_token and not problems
    check = Checker(origin, problems)
    hipchat_raw = merged.get("hipchat", {})
    hipchat = check.scope(merged, "hipchat", HIPCHAT_RULES)
    check.templates(hipchat)
    daemon = check.scope(merged, "hipchatd", DAEMON_RULES)
    contacts = check.contacts(merged)

    file_token = hipchat.pop("api_token", None)
    token_given = isinstance(hipchat_raw, dict) and "api_token" in hipchat_raw
    token = check.token(file_token, token_given, env, token_required, sources)
    settings = HipChatSettings(api_token=token, **hipchat)
    daemon_settings = check.spool(DaemonSettings(**daemon), env)
    check.cross(settings, daemon_settings, contacts)

    if problems:
        raise ConfigError(problems, check.warnings)
    config = Config(
        hipchat=settings,
        daemon=daemon_settings,
        contacts=MappingProxyType(contacts),
        sources=tuple(sources),
    )
    return LoadResult(config=config, warnings=tuple(check.warnings))
