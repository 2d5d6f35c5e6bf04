"""The HipChat API emulator: a real HTTP/1.1 server on trio + h11.

HipChat Cloud is gone, so hipchatd's end-to-end tests, and users who want to
try a configuration, talk to this emulator instead. It enforces the rules in
``docs/hipchat-api.md``; section numbers (§) and source ids (S…) below point
into it. Where that page lists an open question, the emulator implements
the choice from its §11 table.

Served endpoints (all need a token unless noted):

- v2 ``POST /v2/room/{id_or_name}/notification`` -> 204
- v2 ``POST /v2/room/{id_or_name}/message`` -> 201 ``{"id", "timestamp"}``
- v2 ``POST /v2/user/{id_or_email}/message`` -> 204
- v2 ``GET /v2/room`` (a minimal room list), ``GET /v2/room/{id_or_name}``,
  ``GET /v2/room/{id_or_name}/history/latest``, ``GET /v2/room/{id_or_name}/history``
- v1 ``GET|POST /v1/rooms/message`` -> 200 ``{"status": "sent"}``,
  ``GET /v1/rooms/list``, ``GET /v1/rooms/history``
- admin, no token, not rate limited, not recorded: ``GET /_emulator/messages``,
  ``GET /_emulator/requests``, ``POST /_emulator/faults``, ``POST /_emulator/reset``.
  They stay up while the API is down (``down_for``), so an outage can be ended early.

Plain HTTP, or HTTPS with ``serve(ssl_context=...)`` (``--tls-cert``, or
``--tls`` for a throwaway CA from :func:`throwaway_tls`). Links in answers
(``links.self`` and the rest) carry the scheme and ``Host`` the client used,
as HipChat's did: HypChat follows them, and picks a room's class (the one with
``notification()``) by matching ``links.self`` against ``https://...`` (S12).

The package, by job (each module's docstring holds its part of the rules,
and the choices that page leaves open, marked *[inferred]*):

- :mod:`~hipchatd.emulator.server`: :class:`Emulator`, its state, controls and
  lifecycle; its connections are served by the shared loop of
  :mod:`hipchatd.http11`.
- :mod:`~hipchatd.emulator.api`: the route table, whose entries hold their
  handlers, and the dispatch (auth, token rate limit, injected failures).
- :mod:`~hipchatd.emulator.validation`: HipChat's request rules; the card
  schema and the HTML a card may hold are in :mod:`~hipchatd.emulator.cards`.
- :mod:`~hipchatd.emulator.limits`: rate limit and flood control, and their headers.
- :mod:`~hipchatd.emulator.faults` and :mod:`~hipchatd.emulator.control`:
  injected faults and outages, and the ``/_emulator/*`` endpoints.
- :mod:`~hipchatd.emulator.wire`: request targets, v1/v2 bodies and error shapes.
- :mod:`~hipchatd.emulator.rooms`, :mod:`~hipchatd.emulator.records`: rooms,
  accepted messages, answered requests, the console echo.
- :mod:`~hipchatd.emulator.tls`, :mod:`~hipchatd.emulator.cli`: HTTPS, and
  the ``hipchatd emulator`` subcommand.

Tokens never reach ``messages``, ``requests``, the echo line or the logs.
"""

from __future__ import annotations

from hipchatd.emulator.api import Endpoint, Route, match_route
from hipchatd.emulator.cli import add_arguments, add_parser, emulator_from_args, run
from hipchatd.emulator.limits import FixedWindow, Quota
from hipchatd.emulator.records import ReceivedMessage, RequestRecord, echo_line
from hipchatd.emulator.server import Emulator
from hipchatd.emulator.tls import TLSUnavailable, throwaway_tls
from hipchatd.emulator.validation import Reject, validate_notification, validate_v1_message
from hipchatd.emulator.wire import (
    ApiError,
    Target,
    decode_segment,
    py2_repr,
    split_target,
    v1_error_body,
    v1_json,
    v2_error_body,
)

__all__ = [
    "ApiError",
    "Emulator",
    "Endpoint",
    "FixedWindow",
    "Quota",
    "ReceivedMessage",
    "Reject",
    "RequestRecord",
    "Route",
    "TLSUnavailable",
    "Target",
    "add_arguments",
    "add_parser",
    "decode_segment",
    "echo_line",
    "emulator_from_args",
    "match_route",
    "py2_repr",
    "run",
    "split_target",
    "throwaway_tls",
    "v1_error_body",
    "v1_json",
    "v2_error_body",
    "validate_notification",
    "validate_v1_message",
]
