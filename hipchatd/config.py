"""Configuration: Sensu-style JSON files, merged and validated once.

Files are read in order; a directory means every ``*.json`` directly in it,
sorted by name. Documents are deep-merged in order, as Sensu merges
``conf.d``: objects merge key by key, and any other value from a later file
replaces the earlier one. (Sensu itself concatenates two lists; hipchatd
replaces them, so that a later file can narrow ``room`` or ``severities``.)
Only the ``hipchat``, ``hipchatd`` and ``contacts`` scopes are read; every
other scope is ignored, so hipchatd can be pointed at an existing Sensu
``conf.d``.

Each scope is described by a table (key -> ``_Rule``: a converter and the
expected value in words), so a new setting is one line in a table and one
field in a dataclass. Every problem line names the file that supplied the
value, the key path, the value (never the token's) and what is expected.

The result is a tree of frozen dataclasses. Nothing downstream re-validates.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import ssl
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from hipchatd.errors import ConfigError
from hipchatd.sensu.events import MessageFormat, Overrides, Severity
from hipchatd.sensu.framing import Framing

__all__ = [
    "Config",
    "ConfigError",
    "DaemonSettings",
    "HipChatSettings",
    "Listen",
    "LoadResult",
    "Secret",
    "load_config",
]

ApiVersion = Literal["v1", "v2"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The integration's documented default endpoint (HipChat Cloud, now gone).
DEFAULT_SERVER_URL = "https://api.hipchat.com"
#: Seconds: the integration's hard stop for one notification attempt.
DEFAULT_TIMEOUT = 10.0
#: The integration notifies on these unless told otherwise; resolves pass by history.
DEFAULT_SEVERITIES: frozenset[str] = frozenset({"warning", "critical", "unknown"})
#: Sensu's conventional socket-handler port region; TCP and UDP share it.
DEFAULT_PORT = 3033
#: Bytes: a Go event with long output is tens of KB; 1 MiB leaves room and bounds memory.
DEFAULT_MAX_FRAME_BYTES = 1024 * 1024
#: Seconds a peer may take to complete one event before it is closed.
DEFAULT_IDLE_TIMEOUT = 30.0
#: Concurrent connections; Sensu Go's default pipeline has 100 workers.
DEFAULT_MAX_CONNECTIONS = 1024
#: Pending events whose parsed form stays in memory; the rest are read back from the spool.
DEFAULT_QUEUE_SIZE = 2_000
#: Concurrent HipChat requests (also the HTTP pool size).
DEFAULT_CONCURRENCY = 16
#: The spool's home; the systemd unit's ``StateDirectory=hipchatd``.
DEFAULT_STATE_DIR = "/var/lib/hipchatd"
#: Events kept pending at most; past it new events are refused, the oldest kept.
DEFAULT_MAX_SPOOL_EVENTS = 100_000
#: Seconds an event may wait for delivery before it is dead-lettered as expired.
DEFAULT_MAX_AGE = 3600.0
#: Seconds SIGTERM leaves open connections and in-flight deliveries to finish.
DEFAULT_SHUTDOWN_GRACE = 5.0
#: Requests per 5 minutes assumed before HipChat reports its own (HipChat Server user tokens).
DEFAULT_RATE_LIMIT = 100
#: Messages per minute per room (HipChat's flood control).
DEFAULT_FLOOD_LIMIT = 30
#: Prometheus exposition port when ``metrics`` names no port.
DEFAULT_METRICS_PORT = 9533
#: Loopback unless told otherwise: events are unauthenticated, and Sensu is usually local.
DEFAULT_HOST = "127.0.0.1"
#: Bytes: a smaller frame could not hold even a minimal Sensu event.
MIN_MAX_FRAME_BYTES = 1024
#: Rooms and users one event may notify: routing names a handful; thousands is abuse
#: (each target is a spool entry, a lane and a request).
DEFAULT_MAX_TARGETS_PER_EVENT = 50

#: Environment variable holding the HipChat API token.
TOKEN_ENV = "HIPCHAT_API_TOKEN"
#: File name of the token in ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``).
TOKEN_CREDENTIAL = "hipchat_api_token"
#: What a token may contain: printable ASCII without spaces (``!`` to ``~``). It
#: goes in an HTTP header (v2's ``Authorization: Bearer``), which cannot carry
#: control characters and encodes only Latin-1, and in v1's form body.
_TOKEN_FIRST, _TOKEN_LAST = "\x21", "\x7e"


class Secret:
    """A string that never shows itself in ``repr``, ``str`` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself; only the HTTP client should call this."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class Listen:
    """An address to listen on."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class HipChatSettings:
    """The ``hipchat`` scope, as Sensu Enterprise's integration defines it, plus extensions."""

    api_token: Secret
    server_url: str = DEFAULT_SERVER_URL
    api_version: ApiVersion = "v2"
    username: str = "sensu"
    room: tuple[str, ...] = ("sensu",)
    notify: bool = False
    timeout: float = DEFAULT_TIMEOUT
    message_format: MessageFormat = "html"
    severities: frozenset[str] = DEFAULT_SEVERITIES
    handle_silenced: bool = False
    user: str | None = None
    ca_file: str | None = None
    rate_limit: int = DEFAULT_RATE_LIMIT
    flood_limit: int = DEFAULT_FLOOD_LIMIT


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    """The ``hipchatd`` scope: the daemon's own settings."""

    tcp: Listen | None = Listen(DEFAULT_HOST, DEFAULT_PORT)
    udp: Listen | None = Listen(DEFAULT_HOST, DEFAULT_PORT)
    framing: Framing = "auto"
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    queue_size: int = DEFAULT_QUEUE_SIZE
    concurrency: int = DEFAULT_CONCURRENCY
    state_dir: str = DEFAULT_STATE_DIR
    max_spool_events: int = DEFAULT_MAX_SPOOL_EVENTS
    max_age: float = DEFAULT_MAX_AGE
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    metrics: Listen | None = None
    #: peers that may send events; None: any peer that can reach the listeners.
    allow_from: tuple[Network, ...] | None = None
    max_targets_per_event: int = DEFAULT_MAX_TARGETS_PER_EVENT


@dataclass(frozen=True, slots=True)
class Config:
    """Everything hipchatd reads from its configuration."""

    hipchat: HipChatSettings
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    #: contact name -> that contact's ``hipchat`` overrides (Enterprise contact routing).
    contacts: Mapping[str, Overrides] = field(default_factory=dict)
    #: the files that were read, in merge order.
    sources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LoadResult:
    """A loaded configuration and the warnings (unknown keys, plain http) to log."""

    config: Config
    warnings: tuple[str, ...] = ()


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
    for file in _expand(paths, problems):
        document = _read_document(file, problems)
        if document is None:
            continue
        sources.append(str(file))
        for scope in _SCOPES:
            if scope in document:
                _merge(merged, {scope: document[scope]}, str(file), origin)

    # A file that could not be read may hold the token: then "missing" would mislead.
    token_required = require_token and not problems
    check = _Checker(origin, problems)
    hipchat_raw = merged.get("hipchat", {})
    hipchat = check.scope(merged, "hipchat", _HIPCHAT)
    daemon = check.scope(merged, "hipchatd", _HIPCHATD)
    contacts = check.contacts(merged)

    file_token = hipchat.pop("api_token", None)
    token_given = isinstance(hipchat_raw, dict) and "api_token" in hipchat_raw
    token = check.token(file_token, token_given, env, token_required, sources)
    settings = HipChatSettings(api_token=token, **hipchat)
    daemon_settings = DaemonSettings(**daemon)
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


# -- reading and merging -------------------------------------------------------

_SCOPES = ("hipchat", "hipchatd", "contacts")
_Path = tuple[str, ...]


def _expand(paths: Sequence[str | Path], problems: list[str]) -> list[Path]:
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            files.append(path)  # a missing or unreadable file is reported when read
            continue
        try:
            found = [p for p in path.iterdir() if p.name.endswith(".json") and not p.is_dir()]
        except OSError as exc:
            problems.append(f"{path}: cannot list directory: {exc.strerror or exc}")
            continue
        files.extend(sorted(found, key=lambda p: p.name))
    return files


#: Nesting depth of a configuration file at most: Sensu's deepest settings are a handful
#: of levels; far below Python's recursion limit, which would stop the JSON parser.
MAX_CONFIG_DEPTH = 100
#: Digits of a JSON integer at most: Python refuses to convert longer ones (its
#: int_max_str_digits default), and no setting needs more than a few.
MAX_INTEGER_DIGITS = 4300

#: Strings are skipped whole; brackets count depth; an integer part is checked for length.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[{\]}]|-?(\d+)(\.\d*)?([eE][-+]?\d*)?')


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_regular(path: Path) -> bytes:
    """The bytes of ``path``, which must be a regular file.

    Refuses anything else before reading a byte, without blocking: a FIFO
    would wait for a writer and a device may never end. Raises OSError, or
    _NotRegular (an OSError) whose message names the kind of file.
    """
    # O_NONBLOCK: opening a FIFO must not wait for a writer; checked with fstat below.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        kind = _kind(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if kind is not None:
        os.close(fd)
        raise _NotRegular(f"{kind}, not a regular file")
    with os.fdopen(fd, "rb") as file:
        return file.read()


class _NotRegular(OSError):
    """A path names something other than a regular file; the message says what."""


def _structure_problem(text: str) -> str | None:
    """Where ``text`` nests too deeply or holds too long an integer (``line:column: why``).

    Checked before parsing: json.loads would raise RecursionError or
    ValueError with no position. An O(n) scan by one regular expression.
    """
    depth = 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_CONFIG_DEPTH:
                where = _position(text, match.start())
                return (
                    f"{where}: nested deeper than {MAX_CONFIG_DEPTH} levels;"
                    " no configuration needs that many"
                )
        elif token in ("]", "}"):
            depth -= 1
        elif match.group(2, 3) == (None, None) and len(match.group(1) or "") > MAX_INTEGER_DIGITS:
            where = _position(text, match.start())
            return (
                f"{where}: an integer of {len(match.group(1))} digits;"
                f" expected at most {MAX_INTEGER_DIGITS}"
            )
    return None


def _position(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"{line}:{column}"


def _read_document(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        # utf-8-sig: Sensu strips a byte-order mark too (sensu-settings read_config_file).
        text = read_regular(path).decode("utf-8-sig")
    except FileNotFoundError:
        problems.append(f"{path}: no such file or directory")
        return None
    except _NotRegular as exc:
        problems.append(f"{path}: {exc}; expected a JSON file")
        return None
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror or exc}")
        return None
    except UnicodeDecodeError as exc:
        problems.append(f"{path}: not UTF-8 text (bad byte at offset {exc.start})")
        return None
    structure = _structure_problem(text)
    if structure is not None:
        problems.append(f"{path}:{structure}")
        return None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        problems.append(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}")
        return None
    except (ValueError, RecursionError) as exc:
        # Past the scan above only if Python's own limits are lower than ours.
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        problems.append(f"{path}: cannot parse: {why}")
        return None
    if not isinstance(document, dict):
        problems.append(f"{path}: got {_a(document)} at the top level; expected a JSON object")
        return None
    return document


def _merge(
    into: dict[str, Any],
    document: Mapping[str, Any],
    source: str,
    origin: dict[_Path, str],
    path: _Path = (),
) -> None:
    """Deep-merge ``document`` into ``into``, recording in ``origin`` who set each key."""
    for key, value in document.items():
        at = (*path, key)
        earlier = into.get(key)
        if isinstance(earlier, dict) and isinstance(value, dict):
            _merge(earlier, value, source, origin, at)
            continue
        into[key] = value
        for stale in [p for p in origin if p[: len(at)] == at]:
            del origin[stale]
        origin[at] = source


# -- describing values without leaking them ----------------------------------------

#: Characters of a bad value quoted in a problem line: room for a long path, not a pasted PEM.
_MAX_SHOWN = 200


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def _a(value: object) -> str:
    """The value's JSON type with an article ("a string", "an object", "null"); never the value."""
    name = _type_name(value)
    if name == "null":
        return name
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def _describe(value: object) -> str:
    """``"ten" (string)``: the value as JSON, cut short, and its type."""
    text = json.dumps(value, ensure_ascii=False)
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 1] + "…"
    return text if value is None else f"{text} ({_type_name(value)})"


def _dotted(path: _Path) -> str:
    return ".".join(path)


# -- converters: return the typed value or raise _Reject ------------------------------


class _Reject(ValueError):
    """A value does not fit its rule; the message, if any, says why beyond "expected ..."."""


def _string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _Reject
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Reject
    return value


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Reject
    if not (math.isfinite(value) and value > 0):
        raise _Reject
    return float(value)


def _integer(low: int, high: int | None = None) -> Callable[[object], int]:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Reject
        if value < low or (high is not None and value > high):
            raise _Reject
        return value

    return convert


def _one_of(choices: tuple[str, ...]) -> Callable[[object], str]:
    def convert(value: object) -> str:
        if value not in choices:
            raise _Reject
        return str(value)

    return convert


def _quoted(choices: tuple[str, ...]) -> str:
    return ", ".join(f'"{c}"' for c in choices)


def _rooms(value: object) -> tuple[str, ...]:
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list) and value and all(isinstance(r, str) and r for r in value):
        return tuple(value)
    raise _Reject


def _severities(value: object) -> frozenset[str]:
    if isinstance(value, list) and all(v in _SEVERITIES for v in value):
        return frozenset(value)
    raise _Reject


def _server_url(value: object) -> str:
    if not isinstance(value, str):
        raise _Reject
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError as exc:
        raise _Reject(str(exc)) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise _Reject
    if parts.query or parts.fragment:
        raise _Reject("a query or fragment cannot prefix API paths")
    return value.rstrip("/")


def _ca_bundle(value: object) -> str:
    """A regular file that loads as PEM CA certificates, as the HTTP client will load it."""
    if not isinstance(value, str) or not value:
        raise _Reject
    try:
        data = read_regular(Path(value))
    except FileNotFoundError:
        raise _Reject("no such file") from None
    except _NotRegular as exc:
        raise _Reject(str(exc)) from None
    except OSError as exc:
        raise _Reject(f"cannot read: {exc.strerror or exc}") from None
    try:
        # What was read, not the path again: the file was checked to be regular.
        ssl.create_default_context(cadata=data.decode("ascii"))
    except UnicodeDecodeError:
        raise _Reject("not PEM text (DER? `openssl x509 -inform der` converts it)") from None
    except (ssl.SSLError, ValueError) as exc:
        # "no start line: cadata does not contain a certificate (_ssl.c:4020)"
        reason = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(exc.args[-1] if exc.args else exc))
        raise _Reject(f"no CA certificate could be loaded from it ({reason})") from None
    return value


def _networks(value: object) -> tuple[Network, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _Reject
    networks: list[Network] = []
    for item in value:
        if not isinstance(item, str):
            raise _Reject(f"{_describe(item)} is not a string")
        try:
            # strict=False: "10.1.2.3/8" means the network that holds it, as in most ACLs.
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise _Reject(f"{_describe(item)} is not an IP address or network") from None
    return tuple(networks)


def _listen(values: Mapping[str, Any]) -> Listen:
    return Listen(values.get("host", DEFAULT_HOST), values.get("port", DEFAULT_PORT))


def _metrics_listen(values: Mapping[str, Any]) -> Listen:
    return Listen(values.get("host", DEFAULT_HOST), values.get("port", DEFAULT_METRICS_PORT))


# -- the schema: one line per key ---------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rule:
    """How to read one key: ``convert`` raises _Reject unless the value is ``expected``."""

    convert: Callable[[Any], Any]
    expected: str
    #: the value is quoted in no message, only its type.
    secret: bool = False
    #: JSON null is accepted as None.
    nullable: bool = False
    #: an object whose keys are read with these rules; ``convert`` gets the results.
    fields: Mapping[str, _Rule] | None = None


def _choice(literal: Any) -> _Rule:
    """A rule accepting exactly the strings of a ``Literal`` type."""
    choices: tuple[str, ...] = get_args(literal)
    return _Rule(_one_of(choices), f"one of {_quoted(choices)}")


def _at_least(low: int) -> _Rule:
    return _Rule(_integer(low), f"an integer >= {low}")


_SEVERITIES: tuple[str, ...] = get_args(Severity)
_SECONDS = _Rule(_seconds, "a number of seconds > 0")
_BOOLEAN = _Rule(_boolean, "true or false")
_NAME = _Rule(_string, "a non-empty string")

_HIPCHAT: Mapping[str, _Rule] = {
    "api_token": _Rule(_string, "a non-empty string", secret=True),
    "server_url": _Rule(
        _server_url, 'an http(s) URL with a host, e.g. "https://hipchat.example.com"'
    ),
    "api_version": _choice(ApiVersion),
    "username": _NAME,
    "room": _Rule(_rooms, "a room name or a non-empty list of room names"),
    "notify": _BOOLEAN,
    "timeout": _SECONDS,
    "message_format": _choice(MessageFormat),
    "severities": _Rule(_severities, f"a list of {_quoted(_SEVERITIES)}"),
    "handle_silenced": _BOOLEAN,
    "user": _Rule(_string, "a non-empty string: a user id, e-mail or @mention name"),
    "ca_file": _Rule(_ca_bundle, "the path of a readable PEM file"),
    "rate_limit": _at_least(1),
    "flood_limit": _at_least(1),
}

_LISTEN: Mapping[str, _Rule] = {
    "host": _Rule(_string, "a non-empty string: a host name or IP address"),
    "port": _Rule(_integer(0, 65535), "an integer from 0 to 65535"),
}
_LISTEN_RULE = _Rule(
    _listen,
    'an object {"host": string, "port": integer}, or null to disable',
    nullable=True,
    fields=_LISTEN,
)

_HIPCHATD: Mapping[str, _Rule] = {
    "tcp": _LISTEN_RULE,
    "udp": _LISTEN_RULE,
    "framing": _choice(Framing),
    "max_frame_bytes": _at_least(MIN_MAX_FRAME_BYTES),
    "idle_timeout": _SECONDS,
    "max_connections": _at_least(1),
    "queue_size": _at_least(1),
    "concurrency": _at_least(1),
    "state_dir": _Rule(_string, 'a directory path, or ":memory:" for a spool that is not kept'),
    "max_spool_events": _at_least(1),
    "max_age": _SECONDS,
    "shutdown_grace": _SECONDS,
    "metrics": _Rule(
        _metrics_listen,
        'an object {"host": string, "port": integer}, or null to disable',
        nullable=True,
        fields=_LISTEN,
    ),
    "allow_from": _Rule(
        _networks,
        'a list of IP addresses or networks, e.g. ["10.0.0.0/8", "::1"], or null for any peer',
        nullable=True,
    ),
    "max_targets_per_event": _at_least(1),
}

#: A contact's ``hipchat`` object (Sensu Enterprise contact routing).
_CONTACT_HIPCHAT: Mapping[str, _Rule] = {
    "room": _HIPCHAT["room"],
    "notify": _HIPCHAT["notify"],
    "username": _HIPCHAT["username"],
    "message_format": _HIPCHAT["message_format"],
}

#: Keys of the community plugin's ``hipchat`` scope (sensu-plugins-hipchat), and ours.
_RENAMED = {"apikey": "api_token", "apiversion": "api_version", "from": "username"}


# -- validation ------------------------------------------------------------------


class _Checker:
    """Validates the merged scopes, collecting problems and warnings, each naming its file."""

    def __init__(self, origin: Mapping[_Path, str], problems: list[str]) -> None:
        self.origin = origin
        self.problems = problems
        self.warnings: list[str] = []

    def source(self, path: _Path) -> str:
        for end in range(len(path), 0, -1):
            if path[:end] in self.origin:
                return self.origin[path[:end]]
        return "(defaults)"

    def problem(self, path: _Path, message: str) -> None:
        self.problems.append(f"{self.source(path)}: {_dotted(path)}: {message}")

    def reject(self, path: _Path, value: object, rule: _Rule, why: str = "") -> None:
        got = f"{_a(value)} (value hidden)" if rule.secret else _describe(value)
        self.problem(path, f"got {got}{': ' + why if why else ''}; expected {rule.expected}")

    def read(
        self, obj: Mapping[str, Any], rules: Mapping[str, _Rule], path: _Path
    ) -> dict[str, Any]:
        """Convert every known key of ``obj``; warn about the others."""
        values: dict[str, Any] = {}
        for key, value in obj.items():
            at = (*path, key)
            rule = rules.get(key)
            if rule is None:
                self.unknown(at, rules)
                continue
            if value is None and rule.nullable:
                values[key] = None
                continue
            if rule.fields is not None:
                if not isinstance(value, dict):
                    self.reject(at, value, rule)
                    continue
                value = self.read(value, rule.fields, at)
            try:
                values[key] = rule.convert(value)
            except _Reject as exc:
                self.reject(at, value, rule, str(exc))
        return values

    def unknown(self, path: _Path, rules: Mapping[str, _Rule]) -> None:
        key = path[-1]
        guess = _RENAMED.get(key.lower()) if rules is _HIPCHAT else None
        if guess is None:
            close = difflib.get_close_matches(key, list(rules), n=1)
            guess = close[0] if close else None
        hint = f'did you mean "{guess}"?' if guess else "ignored"
        self.warnings.append(f"{self.source(path)}: {_dotted(path)}: unknown key; {hint}")

    def scope(
        self, merged: Mapping[str, Any], name: str, rules: Mapping[str, _Rule]
    ) -> dict[str, Any]:
        obj = merged.get(name, {})
        if not isinstance(obj, dict):
            # The type only: a misplaced scope may well hold the token.
            self.problem((name,), f"got {_a(obj)}; expected an object")
            return {}
        return self.read(obj, rules, (name,))

    def contacts(self, merged: Mapping[str, Any]) -> dict[str, Overrides]:
        """Each contact's ``hipchat`` object; other integrations' objects are not ours to check."""
        scope = merged.get("contacts", {})
        if not isinstance(scope, dict):
            self.problem(("contacts",), f"got {_describe(scope)}; expected an object of contacts")
            return {}
        contacts: dict[str, Overrides] = {}
        for name, contact in scope.items():
            at = ("contacts", name)
            if not isinstance(contact, dict):
                expected = "an object of per-integration settings"
                self.problem(at, f"got {_describe(contact)}; expected {expected}")
                continue
            hipchat = contact.get("hipchat", {})
            if not isinstance(hipchat, dict):
                expected = "an object with room, notify, username or message_format"
                self.problem((*at, "hipchat"), f"got {_describe(hipchat)}; expected {expected}")
                continue
            contacts[name] = Overrides(**self.read(hipchat, _CONTACT_HIPCHAT, (*at, "hipchat")))
        return contacts

    def token(
        self,
        from_files: str | None,
        given_in_files: bool,
        env: Mapping[str, str],
        required: bool,
        sources: Sequence[str],
    ) -> Secret:
        """The token from the first source that has one (see load_config)."""
        credential = _credential_path(env)
        from_env = env.get(TOKEN_ENV, "").strip() or None
        if given_in_files:
            file = self.source(("hipchat", "api_token"))
            used = f"hipchat.api_token from {file}"
            shadowed = [str(credential)] if credential is not None else []
            shadowed += [TOKEN_ENV] if from_env else []
            for other in shadowed:
                self.warnings.append(f"{other}: ignored; using {used}")
            return self.checked(from_files or "", f"{file}: hipchat.api_token")
        if credential is not None:
            if from_env:
                self.warnings.append(f"{TOKEN_ENV}: ignored; using {credential}")
            return self.checked(self.read_credential(credential), str(credential))
        if from_env:
            return self.checked(from_env, TOKEN_ENV)
        if required:
            files = ", ".join(sources) or "(no configuration files)"
            self.problems.append(
                f"{files}: hipchat.api_token: missing; expected a string in the hipchat scope,"
                f" or {TOKEN_ENV}, or $CREDENTIALS_DIRECTORY/{TOKEN_CREDENTIAL}"
            )
        return Secret("")

    def checked(self, token: str, where: str) -> Secret:
        """``token`` as a Secret, or a problem naming ``where`` if it cannot be sent."""
        why = _token_problem(token)
        if why is not None:
            self.problems.append(f"{where}: {why}")
        return Secret(token)

    def read_credential(self, path: Path) -> str:
        try:
            # Surrounding whitespace is never part of a token: ``echo`` adds a newline.
            token = read_regular(path).decode("utf-8").strip()
        except _NotRegular as exc:
            self.problems.append(f"{path}: {exc}; expected a file holding the HipChat API token")
            return ""
        except OSError as exc:
            self.problems.append(f"{path}: cannot read: {exc.strerror or exc}")
            return ""
        except UnicodeDecodeError:
            self.problems.append(f"{path}: not UTF-8 text; expected the HipChat API token")
            return ""
        if not token:
            self.problems.append(f"{path}: empty; expected the HipChat API token")
        return token

    def cross(
        self, settings: HipChatSettings, daemon: DaemonSettings, contacts: Mapping[str, Overrides]
    ) -> None:
        """Rules that involve more than one key."""
        if settings.server_url.lower().startswith("http://"):
            self.warnings.append(
                f"{self.source(('hipchat', 'server_url'))}: hipchat.server_url: plain http://;"
                " the API token would travel in clear text, use https://"
            )
        if settings.api_version == "v1":
            v1 = f'with api_version "v1" from {self.source(("hipchat", "api_version"))}'
            if settings.user is not None:
                self.problem(
                    ("hipchat", "user"),
                    f'got {_describe(settings.user)} {v1}; expected api_version "v2",'
                    " the only API that can message a user",
                )
        limit = daemon.max_targets_per_event
        named = [(("hipchat", "room"), settings.room)] + [
            (("contacts", name, "hipchat", "room"), contact.room)
            for name, contact in contacts.items()
        ]
        for path, rooms in named:
            if rooms is not None and len(rooms) > limit:
                self.warnings.append(
                    f"{self.source(path)}: {_dotted(path)}: {len(rooms)} rooms, but"
                    f" hipchatd.max_targets_per_event is {limit}: an event routed here"
                    f" notifies only the first {limit}; raise the limit to at least {len(rooms)}"
                )
        if daemon.tcp is None and daemon.udp is None:
            files = sorted({self.source(("hipchatd", "tcp")), self.source(("hipchatd", "udp"))})
            self.problems.append(
                f"{', '.join(files)}: hipchatd.tcp, hipchatd.udp: both null;"
                " expected at least one listener"
            )


def _token_problem(token: str) -> str | None:
    """Why ``token`` cannot be sent, naming the first bad character's class and place."""
    for index, char in enumerate(token, start=1):
        if _TOKEN_FIRST <= char <= _TOKEN_LAST:
            continue
        if char.isspace():
            kind = "whitespace"
        elif char.isascii():
            kind = "a control character"
        else:
            kind = "a non-ASCII character"
        return (
            f"the token (value hidden) contains {kind} at character {index} of {len(token)};"
            " expected printable ASCII without spaces, as HipChat issues them"
        )
    return None


def _credential_path(env: Mapping[str, str]) -> Path | None:
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / TOKEN_CREDENTIAL
    return path if path.exists() else None
