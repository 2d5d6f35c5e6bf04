"""Configuration: Sensu-style JSON files, merged and validated once.

Files are read in order; a directory means every ``*.json`` directly in it,
sorted by name. Documents are deep-merged in order, as Sensu merges
``conf.d``: objects merge key by key, and any other value from a later file
replaces the earlier one. (Sensu itself concatenates two lists; hipchatd
replaces them, so that a later file can narrow ``room`` or ``severities``.)
Only the ``hipchat``, ``hipchatd`` and ``contacts`` scopes are read; every
other scope is ignored, so hipchatd can be pointed at an existing Sensu
``conf.d``.

Each scope is described by a table (key -> ``Rule``: a converter and the
expected value in words), so a new setting is one line in a table and one
field in a dataclass. Every problem line names the file that supplied the
value, the key path, the value (never the token's) and what is expected.

The result is a tree of frozen dataclasses. Nothing downstream re-validates.

One job per module, each importing only those above it in this list:

* :mod:`~hipchatd.config.settings`: the model (dataclasses, defaults, ``Secret``);
* :mod:`~hipchatd.config.describe`: values in problem lines, never a secret's;
* :mod:`~hipchatd.config.files`: reading regular files, bounded, and merging them;
* :mod:`~hipchatd.config.rules`: the schema, one rule per key;
* :mod:`~hipchatd.config.checker`: validation of the merged scopes and the token;
* :mod:`~hipchatd.config.loader`: :func:`load_config`, which runs them in order.

This package exports the interface; the rest of hipchatd imports from here.
"""

from __future__ import annotations

from hipchatd.config.files import MAX_CONFIG_DEPTH, MAX_INTEGER_DIGITS, read_regular
from hipchatd.config.loader import load_config
from hipchatd.config.settings import (
    DEFAULT_CONCURRENCY,
    DEFAULT_FLOOD_LIMIT,
    DEFAULT_HOST,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_SPOOL_EVENTS,
    DEFAULT_MAX_TARGETS_PER_EVENT,
    DEFAULT_METRICS_PORT,
    DEFAULT_PORT,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_RATE_LIMIT,
    DEFAULT_SERVER_URL,
    DEFAULT_SEVERITIES,
    DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_STATE_DIR,
    DEFAULT_TIMEOUT,
    MIN_MAX_FRAME_BYTES,
    PROXY_FROM_ENV,
    TOKEN_CREDENTIAL,
    TOKEN_ENV,
    ApiVersion,
    Config,
    DaemonSettings,
    HipChatSettings,
    Listen,
    LoadResult,
    Network,
    ProxySetting,
    ProxyUrl,
    Secret,
    SpoolSettings,
)
from hipchatd.errors import ConfigError

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_FLOOD_LIMIT",
    "DEFAULT_HOST",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_SPOOL_EVENTS",
    "DEFAULT_MAX_TARGETS_PER_EVENT",
    "DEFAULT_METRICS_PORT",
    "DEFAULT_PORT",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_RATE_LIMIT",
    "DEFAULT_SERVER_URL",
    "DEFAULT_SEVERITIES",
    "DEFAULT_SHUTDOWN_GRACE",
    "DEFAULT_STATE_DIR",
    "DEFAULT_TIMEOUT",
    "MAX_CONFIG_DEPTH",
    "MAX_INTEGER_DIGITS",
    "MIN_MAX_FRAME_BYTES",
    "PROXY_FROM_ENV",
    "TOKEN_CREDENTIAL",
    "TOKEN_ENV",
    "ApiVersion",
    "Config",
    "ConfigError",
    "DaemonSettings",
    "HipChatSettings",
    "Listen",
    "LoadResult",
    "Network",
    "ProxySetting",
    "ProxyUrl",
    "Secret",
    "SpoolSettings",
    "load_config",
    "read_regular",
]
