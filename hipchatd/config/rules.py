"""The schema: one rule per key, each a converter and the expected value in words.

A converter returns the typed value or raises :class:`Reject`, whose message
(if any) says why beyond "expected ...". A new setting is one line in a table
here and one field in a dataclass of :mod:`hipchatd.config.settings`.
"""

from __future__ import annotations

import ipaddress
import math
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, get_args
from urllib.parse import urlsplit

from hipchatd.config.describe import describe
from hipchatd.config.files import NotRegular, read_regular
from hipchatd.config.settings import (
    DEFAULT_HOST,
    DEFAULT_METRICS_PORT,
    DEFAULT_PORT,
    DEFAULT_SPOOL_SCHEMA,
    MIN_MAX_FRAME_BYTES,
    PROXY_FROM_ENV,
    ApiVersion,
    Listen,
    Network,
    ProxySetting,
    ProxyUrl,
    Secret,
    SpoolBackend,
    SpoolSettings,
)
from hipchatd.config.templates import Source
from hipchatd.sensu.events import BySeverity, MessageFormat, Severity
from hipchatd.sensu.framing import Framing
from hipchatd.sensu.links import dashboard_problem, is_web_url, mention_problem


class Reject(ValueError):
    """A value does not fit its rule; the message, if any, says why beyond "expected ..."."""


def _string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise Reject
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise Reject
    return value


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Reject
    if not (math.isfinite(value) and value > 0):
        raise Reject
    return float(value)


def _integer(low: int, high: int | None = None) -> Callable[[object], int]:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Reject
        if value < low or (high is not None and value > high):
            raise Reject
        return value

    return convert


def _one_of(choices: tuple[str, ...]) -> Callable[[object], str]:
    def convert(value: object) -> str:
        if value not in choices:
            raise Reject
        return str(value)

    return convert


def _quoted(choices: tuple[str, ...]) -> str:
    return ", ".join(f'"{c}"' for c in choices)


def _rooms(value: object) -> tuple[str, ...]:
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list) and value and all(isinstance(r, str) and r for r in value):
        return tuple(value)
    raise Reject


def _severities(value: object) -> frozenset[str]:
    if isinstance(value, list) and all(v in _SEVERITIES for v in value):
        return frozenset(value)
    raise Reject


def _notify(value: object) -> bool | BySeverity[bool]:
    if isinstance(value, bool):
        return value
    return _by_severity(value, _boolean)


def _mentions(value: object) -> BySeverity[str]:
    return _by_severity(value, _mention)


def _mention(value: object) -> str:
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        value = " ".join(value)
    if not isinstance(value, str):
        raise Reject
    problem = mention_problem(value)
    if problem is not None:
        raise Reject(problem)
    return " ".join(value.split())


def _by_severity(value: object, convert: Callable[[object], Any]) -> BySeverity[Any]:
    """An object of severities -> values; an unknown severity or a bad value is rejected."""
    if not isinstance(value, dict) or not value:
        raise Reject
    converted: dict[str, Any] = {}
    for key, item in value.items():
        if key not in _SEVERITIES:
            raise Reject(f"{describe(key)} is not a severity")
        try:
            converted[key] = convert(item)
        except Reject as exc:
            raise Reject(f"{key}: {str(exc) or f'got {describe(item)}'}") from None
    return BySeverity(**converted)


#: The status words a card may have an icon for (the message's leading word, lower case).
_STATUS_WORDS: tuple[str, ...] = ("critical", "warning", "unknown", "ok", "resolved", "flapping")
#: Characters of an icon URL: about the longest URL browsers handle everywhere.
_MAX_ICON_URL_CHARS = 2_000


def _card_icons(value: object) -> Mapping[str, str]:
    if not isinstance(value, dict):
        raise Reject
    icons: dict[str, str] = {}
    for word, url in value.items():
        if word not in _STATUS_WORDS:
            raise Reject(f"{describe(word)} is not a status word")
        if not isinstance(url, str) or not _is_icon_url(url):
            raise Reject(f"{word}: got {describe(url)}; an icon is an http(s) URL with a host")
        icons[word] = url
    return MappingProxyType(icons)


def _is_icon_url(url: str) -> bool:
    return is_web_url(url) and " " not in url and len(url) <= _MAX_ICON_URL_CHARS


def _checked(problem: Callable[[str], str | None]) -> Callable[[object], str]:
    """A converter for a string that ``problem`` accepts; its answer is the reason otherwise."""

    def convert(value: object) -> str:
        if not isinstance(value, str):
            raise Reject
        why = problem(value)
        if why is not None:
            raise Reject(why)
        return value

    return convert


def _server_url(value: object) -> str:
    if not isinstance(value, str):
        raise Reject
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError as exc:
        raise Reject(str(exc)) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise Reject
    if parts.query or parts.fragment:
        raise Reject("a query or fragment cannot prefix API paths")
    return value.rstrip("/")


def _ca_bundle(value: object) -> str:
    """A regular file that loads as PEM CA certificates, as the HTTP client will load it."""
    if not isinstance(value, str) or not value:
        raise Reject
    try:
        data = read_regular(Path(value))
    except FileNotFoundError:
        raise Reject("no such file") from None
    except NotRegular as exc:
        raise Reject(str(exc)) from None
    except OSError as exc:
        raise Reject(f"cannot read: {exc.strerror or exc}") from None
    try:
        # What was read, not the path again: the file was checked to be regular.
        ssl.create_default_context(cadata=data.decode("ascii"))
    except UnicodeDecodeError:
        raise Reject("not PEM text (DER? `openssl x509 -inform der` converts it)") from None
    except (ssl.SSLError, ValueError) as exc:
        # "no start line: cadata does not contain a certificate (_ssl.c:4020)"
        reason = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(exc.args[-1] if exc.args else exc))
        raise Reject(f"no CA certificate could be loaded from it ({reason})") from None
    return value


#: Bytes of a template file at most: a template is a page of text; this stops a path
#: that names a log file by mistake from being read whole.
MAX_TEMPLATE_FILE_BYTES = 1024 * 1024


def _per_format(value: object) -> tuple[str, str] | None:
    """``{"html": string, "text": string}`` as (html, text); None for any other shape."""
    if isinstance(value, dict) and set(value) == {"html", "text"}:
        html, text = value["html"], value["text"]
        if isinstance(html, str) and html and isinstance(text, str) and text:
            return html, text
    return None


def _template(value: object) -> Source:
    if isinstance(value, str) and value:
        return Source(value, value)
    both = _per_format(value)
    if both is None:
        raise Reject
    return Source(*both)


def _read_template(path: str) -> str:
    try:
        data = read_regular(Path(path))
    except FileNotFoundError:
        raise Reject(f"{path}: no such file") from None
    except NotRegular as exc:
        raise Reject(f"{path}: {exc}") from None
    except OSError as exc:
        raise Reject(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_TEMPLATE_FILE_BYTES:
        raise Reject(f"{path}: {len(data)} bytes, more than {MAX_TEMPLATE_FILE_BYTES}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Reject(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None


def _template_file(value: object) -> Source:
    if isinstance(value, str) and value:
        text = _read_template(value)
        return Source(text, text, value, value)
    both = _per_format(value)
    if both is None:
        raise Reject
    html, text = both
    return Source(_read_template(html), _read_template(text), html, text)


def _template_entry(value: object) -> Source:
    """A named or digest template: what ``template`` takes, or ``{"file": ...}``."""
    if isinstance(value, dict) and set(value) == {"file"}:
        return _template_file(value["file"])
    return _template(value)


def _object(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Reject
    return value


def _proxy(value: object) -> ProxySetting:
    """``"env"``, or a proxy URL; the reason for a refusal never quotes the value."""
    if value == PROXY_FROM_ENV:
        return "env"
    if not isinstance(value, str):
        raise Reject
    try:
        return ProxyUrl.parse(value)
    except ValueError as exc:
        raise Reject(str(exc)) from None


# The proxy URL may carry credentials: problem lines name the key, never the value.
_PROXY_EXPECTED = (
    '"env", or "http://host:port" or "https://host:port", optionally with'
    " user:password@ before the host"
)


def _networks(value: object) -> tuple[Network, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise Reject
    networks: list[Network] = []
    for item in value:
        if not isinstance(item, str):
            raise Reject(f"{describe(item)} is not a string")
        try:
            # strict=False: "10.1.2.3/8" means the network that holds it, as in most ACLs.
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise Reject(f"{describe(item)} is not an IP address or network") from None
    return tuple(networks)


def _listen(values: Mapping[str, Any]) -> Listen:
    return Listen(values.get("host", DEFAULT_HOST), values.get("port", DEFAULT_PORT))


def _metrics_listen(values: Mapping[str, Any]) -> Listen:
    return Listen(values.get("host", DEFAULT_HOST), values.get("port", DEFAULT_METRICS_PORT))


#: A schema name hipchatd quotes nowhere and derives its NOTIFY channel from: lowercase,
#: short enough that ``hipchatd.<schema>`` fits PostgreSQL's 63-byte identifiers.
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")
#: URI schemes libpq accepts.
_DSN_SCHEMES = ("postgresql", "postgres")


def dsn_problem(dsn: str) -> str | None:
    """Why ``dsn`` is not a libpq URI or key=value string, never quoting it; else None."""
    if not dsn.strip():
        return "empty"
    if "://" in dsn:
        try:
            parts = urlsplit(dsn)
            parts.port  # noqa: B018 -- raises ValueError for a port out of range
        except ValueError:
            return "the URI does not parse (a port that is not a number from 0 to 65535?)"
        if parts.scheme.lower() not in _DSN_SCHEMES:
            return "a URI must start with postgresql:// or postgres://"
        return None
    if "=" not in dsn:
        return "neither a postgresql:// URI nor key=value pairs"
    return None


def _schema_name(value: object) -> str:
    if not isinstance(value, str) or not _SCHEMA_NAME.fullmatch(value):
        raise Reject
    if value.startswith("pg_"):
        raise Reject("names starting with pg_ are reserved by PostgreSQL")
    return value


def _spool(values: Mapping[str, Any]) -> SpoolSettings:
    return SpoolSettings(
        backend=values.get("backend", "sqlite"),
        dsn=Secret(values.get("dsn", "")),
        schema=values.get("schema", DEFAULT_SPOOL_SCHEMA),
    )


# -- the schema: one line per key ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """How to read one key: ``convert`` raises Reject unless the value is ``expected``."""

    convert: Callable[[Any], Any]
    expected: str
    #: the value is quoted in no message, only its type.
    secret: bool = False
    #: JSON null is accepted as None.
    nullable: bool = False
    #: an object whose keys are read with these rules; ``convert`` gets the results.
    fields: Mapping[str, Rule] | None = None


def _choice(literal: Any) -> Rule:
    """A rule accepting exactly the strings of a ``Literal`` type."""
    choices: tuple[str, ...] = get_args(literal)
    return Rule(_one_of(choices), f"one of {_quoted(choices)}")


def _at_least(low: int) -> Rule:
    return Rule(_integer(low), f"an integer >= {low}")


_SEVERITIES: tuple[str, ...] = get_args(Severity)
_SECONDS = Rule(_seconds, "a number of seconds > 0")
_BOOLEAN = Rule(_boolean, "true or false")
_NAME = Rule(_string, "a non-empty string")
_TEMPLATE_TEXT = 'a Jinja2 template string, or {"html": string, "text": string}'
#: A named template or the digest's; the checker reads each of ``templates`` with it.
TEMPLATE_ENTRY = Rule(
    _template_entry,
    f'{_TEMPLATE_TEXT}, or {{"file": path}} or {{"file": {{"html": path, "text": path}}}}',
)

HIPCHAT_RULES: Mapping[str, Rule] = {
    "api_token": Rule(_string, "a non-empty string", secret=True),
    "server_url": Rule(
        _server_url, 'an http(s) URL with a host, e.g. "https://hipchat.example.com"'
    ),
    "api_version": _choice(ApiVersion),
    "username": _NAME,
    "room": Rule(_rooms, "a room name or a non-empty list of room names"),
    "notify": Rule(
        _notify, 'true or false, or an object of severities, e.g. {"critical": true, "ok": false}'
    ),
    "timeout": _SECONDS,
    "message_format": _choice(MessageFormat),
    "severities": Rule(_severities, f"a list of {_quoted(_SEVERITIES)}"),
    "handle_silenced": _BOOLEAN,
    "user": Rule(_string, "a non-empty string: a user id, e-mail or @mention name"),
    "ca_file": Rule(_ca_bundle, "the path of a readable PEM file"),
    "rate_limit": _at_least(1),
    "flood_limit": _at_least(1),
    "mentions": Rule(
        _mentions,
        'an object of severities -> mentions, e.g. {"critical": "@all", "warning": "@oncall"}',
    ),
    "card": _BOOLEAN,
    "dashboard_url": Rule(
        _checked(dashboard_problem),
        "an http(s) URL pattern with {source}, {check}, {namespace} or {client} placeholders",
    ),
    "legacy_occurrences": _BOOLEAN,
    "card_icons": Rule(
        _card_icons,
        "an object of status words (critical, warning, unknown, ok, resolved, flapping)"
        ' -> icon URLs, e.g. {"critical": "https://icons.example.com/red.png"}',
    ),
    "template": Rule(_template, _TEMPLATE_TEXT),
    "template_file": Rule(
        _template_file,
        'the path of a UTF-8 template file, or {"html": path, "text": path}',
    ),
    "templates": Rule(_object, "an object: template name -> template"),
    "digest_template": TEMPLATE_ENTRY,
    "proxy": Rule(_proxy, _PROXY_EXPECTED, secret=True),
}

_LISTEN: Mapping[str, Rule] = {
    "host": Rule(_string, "a non-empty string: a host name or IP address"),
    "port": Rule(_integer(0, 65535), "an integer from 0 to 65535"),
}
_LISTEN_RULE = Rule(
    _listen,
    'an object {"host": string, "port": integer}, or null to disable',
    nullable=True,
    fields=_LISTEN,
)

DAEMON_RULES: Mapping[str, Rule] = {
    "tcp": _LISTEN_RULE,
    "udp": _LISTEN_RULE,
    "framing": _choice(Framing),
    "max_frame_bytes": _at_least(MIN_MAX_FRAME_BYTES),
    "idle_timeout": _SECONDS,
    "max_connections": _at_least(1),
    "queue_size": _at_least(1),
    "concurrency": _at_least(1),
    "state_dir": Rule(_string, 'a directory path, or ":memory:" for a spool that is not kept'),
    "max_spool_events": _at_least(1),
    "max_age": _SECONDS,
    "shutdown_grace": _SECONDS,
    "metrics": Rule(
        _metrics_listen,
        'an object {"host": string, "port": integer}, or null to disable',
        nullable=True,
        fields=_LISTEN,
    ),
    "allow_from": Rule(
        _networks,
        'a list of IP addresses or networks, e.g. ["10.0.0.0/8", "::1"], or null for any peer',
        nullable=True,
    ),
    "max_targets_per_event": _at_least(1),
    "spool": Rule(
        _spool,
        'an object {"backend": "sqlite"} or {"backend": "postgresql", "dsn": "postgresql://...",'
        ' "schema": "hipchatd"}',
        # A DSN put where the object belongs must not be quoted back.
        secret=True,
        fields={
            "backend": _choice(SpoolBackend),
            "dsn": Rule(
                _checked(dsn_problem),
                'a libpq connection URI ("postgresql://user@host/db") or key=value string',
                secret=True,
            ),
            "schema": Rule(
                _schema_name,
                "a lowercase name of at most 48 letters, digits and _, not starting with a digit",
            ),
        },
    ),
}

#: A contact's ``hipchat`` object (Sensu Enterprise contact routing).
CONTACT_RULES: Mapping[str, Rule] = {
    "room": HIPCHAT_RULES["room"],
    "notify": HIPCHAT_RULES["notify"],
    "username": HIPCHAT_RULES["username"],
    "message_format": HIPCHAT_RULES["message_format"],
    "mentions": HIPCHAT_RULES["mentions"],
    "card": HIPCHAT_RULES["card"],
    "dashboard_url": HIPCHAT_RULES["dashboard_url"],
    "template": Rule(_string, "the name of a template in hipchat.templates"),
}

#: Keys of the community plugin's ``hipchat`` scope (sensu-plugins-hipchat), and ours.
RENAMED_KEYS = {"apikey": "api_token", "apiversion": "api_version", "from": "username"}
