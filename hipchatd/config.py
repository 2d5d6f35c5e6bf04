"""Configuration: Sensu-style JSON files, merged and validated once.

Files are read in order; a directory means every ``*.json`` in it, sorted.
Documents are deep-merged in order, as Sensu merges ``conf.d``. Only the
``hipchat``, ``hipchatd`` and ``contacts`` scopes are read; every other scope
is ignored, so hipchatd can be pointed at an existing Sensu ``conf.d``.

The result is a tree of frozen dataclasses. Nothing downstream re-validates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hipchatd.errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "DaemonSettings",
    "HipChatSettings",
    "Listen",
    "LoadResult",
    "Overrides",
    "Secret",
    "load_config",
]

ApiVersion = Literal["v1", "v2"]
MessageFormat = Literal["html", "text"]
Framing = Literal["auto", "eof", "newline", "length"]
Severity = Literal["ok", "warning", "critical", "unknown"]

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
#: Events waiting between ingest and delivery.
DEFAULT_QUEUE_SIZE = 10_000
#: Concurrent HipChat requests (also the HTTP pool size).
DEFAULT_CONCURRENCY = 16


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
class Overrides:
    """Per-check, per-client or per-contact HipChat attributes; ``None`` = not named."""

    room: tuple[str, ...] | None = None
    notify: bool | None = None
    username: str | None = None
    message_format: MessageFormat | None = None


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


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    """The ``hipchatd`` scope: the daemon's own settings."""

    tcp: Listen | None = Listen("127.0.0.1", DEFAULT_PORT)
    udp: Listen | None = Listen("127.0.0.1", DEFAULT_PORT)
    framing: Framing = "auto"
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    queue_size: int = DEFAULT_QUEUE_SIZE
    concurrency: int = DEFAULT_CONCURRENCY


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

    ``env`` supplies ``HIPCHAT_API_TOKEN`` and ``CREDENTIALS_DIRECTORY`` (the
    file ``hipchat_api_token`` there) when the files name no ``api_token``.
    With ``require_token=False`` a missing token is allowed (the emulator
    mode supplies its own) and ``api_token`` is an empty ``Secret``.

    Raises ConfigError listing every problem found, one line each.
    """
    raise NotImplementedError
