"""The configuration's model: frozen dataclasses nested by concern, and their defaults.

Each default is a named constant with its unit and the reason for its value.
:func:`hipchatd.config.load_config` builds these only from validated values,
so nothing downstream re-validates.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

from hipchatd.config.templates import Template
from hipchatd.sensu.events import BySeverity, MessageFormat, Overrides
from hipchatd.sensu.framing import Framing

ApiVersion = Literal["v1", "v2"]
SpoolBackend = Literal["sqlite", "postgresql"]
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
#: File name of the PostgreSQL spool's DSN in ``$CREDENTIALS_DIRECTORY``.
SPOOL_DSN_CREDENTIAL = "hipchat_spool_dsn"
#: The PostgreSQL schema of the spool's tables: one name per cluster of instances.
DEFAULT_SPOOL_SCHEMA = "hipchatd"

#: ``password=...`` in a key=value DSN, quoted (``'...'``, backslash escapes) or not.
_DSN_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


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


#: ``hipchat.proxy`` naming the environment's proxy variables instead of a proxy.
PROXY_FROM_ENV = "env"


@dataclass(frozen=True, slots=True, repr=False)
class ProxyUrl:
    """An egress proxy, ``http://host:port`` or ``https://host:port``.

    Its credentials (``user:password@``) are a secret: ``str`` and ``repr``
    show the scheme, host and port only, so a log line, an error or a
    problem line can name the proxy without them.
    """

    scheme: Literal["http", "https"]
    host: str
    port: int
    #: ``user:password`` as written in the URL (percent-encoded), or None.
    credentials: Secret | None = None

    @classmethod
    def parse(cls, text: str) -> ProxyUrl:
        """Read ``scheme://[user:password@]host:port[/]``.

        Raises ValueError saying what is wrong, in words that never quote
        the credentials (nor the rest of the value: it may hold them).
        """
        try:
            parts = urlsplit(text.strip())
            port = parts.port
        except ValueError:
            # urlsplit's own text may quote a password taken for a port.
            raise ValueError("not a URL of the form scheme://host:port") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            # Quoted only when it is one: "user:password@host:port" parses as scheme "user".
            if scheme and text.strip().lower().startswith(f"{scheme}://"):
                raise ValueError(f'scheme "{scheme}" not supported')
            raise ValueError("no scheme (http:// or https://)")
        if not parts.hostname:
            raise ValueError("no host")
        if port is None:
            raise ValueError("no port")
        if port == 0:
            raise ValueError("port 0")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("a proxy URL has no path, query or fragment")
        userinfo = parts.netloc.rpartition("@")[0]
        return cls(
            "https" if scheme == "https" else "http",
            parts.hostname,
            port,
            Secret(userinfo) if userinfo else None,
        )

    def auth(self) -> tuple[str, str] | None:
        """(user, password), percent-decoded, for Proxy-Authorization; None without credentials."""
        if self.credentials is None:
            return None
        user, _, password = self.credentials.reveal().partition(":")
        return unquote(user), unquote(password)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def __repr__(self) -> str:
        hidden = ", credentials hidden" if self.credentials is not None else ""
        return f"ProxyUrl({str(self)!r}{hidden})"


#: ``hipchat.proxy``: no proxy (None), the environment's (``"env"``), or one proxy.
ProxySetting = ProxyUrl | Literal["env"] | None


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
    #: True/False, or by severity (a severity the map does not name: False).
    notify: bool | BySeverity[bool] = False
    timeout: float = DEFAULT_TIMEOUT
    message_format: MessageFormat = "html"
    severities: frozenset[str] = DEFAULT_SEVERITIES
    handle_silenced: bool = False
    user: str | None = None
    ca_file: str | None = None
    rate_limit: int = DEFAULT_RATE_LIMIT
    flood_limit: int = DEFAULT_FLOOD_LIMIT
    #: mention names by severity; a message that carries one is sent as text.
    mentions: BySeverity[str] | None = None
    #: post a HipChat card with each room message (API v2).
    card: bool = False
    dashboard_url: str | None = None
    #: honour the Classic ``occurrences``/``refresh`` check attributes without ``handle_when``.
    legacy_occurrences: bool = False
    #: status word (lower case) -> the URL of a card's icon; none by default.
    card_icons: Mapping[str, str] = field(default_factory=dict)
    #: from ``template`` or ``template_file``; None: the built-in layout.
    template: Template | None = None
    #: named templates a check, client/entity, annotation or contact selects by name.
    templates: Mapping[str, Template] = field(default_factory=dict)
    #: a storm's several-event message; None: the built-in one line per check.
    digest_template: Template | None = None
    #: None: no proxy, and the environment's proxy variables are ignored.
    proxy: ProxySetting = None


#: No DSN configured (the SQLite backend).
_NO_DSN = Secret("")


@dataclass(frozen=True, slots=True)
class SpoolSettings:
    """``hipchatd.spool``: where accepted events are kept (embedded SQLite, or PostgreSQL)."""

    backend: SpoolBackend = "sqlite"
    #: libpq connection string or URI (PostgreSQL only); may hold a password.
    dsn: Secret = _NO_DSN
    schema: str = DEFAULT_SPOOL_SCHEMA

    def secrets(self) -> tuple[str, ...]:
        """What must never be printed: the DSN, and the password it holds (each spelling)."""
        dsn = self.dsn.reveal()
        if not dsn:
            return ()
        found = {dsn}
        if "://" in dsn:
            try:
                password = urlsplit(dsn).password
            except ValueError:
                password = None
            if password:
                found |= {password, unquote(password)}
        for match in _DSN_PASSWORD.finditer(dsn):
            raw = match.group(1)
            found.add(raw)
            if raw.startswith("'"):
                found.add(re.sub(r"\\(.)", r"\1", raw[1:-1]))
        return tuple(sorted(found, key=len, reverse=True))


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
    spool: SpoolSettings = SpoolSettings()


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
