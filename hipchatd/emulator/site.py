"""What the endpoints act on (:class:`Site`), and one request on its way (:class:`Exchange`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import trio

from hipchatd.emulator.faults import Faults
from hipchatd.emulator.limits import Call, Limiter
from hipchatd.emulator.records import RequestRecord
from hipchatd.emulator.rooms import Rooms
from hipchatd.emulator.validation import Rules
from hipchatd.emulator.wire import Target
from hipchatd.http11 import Request
from hipchatd.redaction import scrub

_HOST_HEADER = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]+)?|\[[0-9A-Fa-f:.]+\](:[0-9]+)?")


class Site:
    """The emulated HipChat: tokens, rules, rooms and messages, limits, faults, request log."""

    def __init__(
        self, *, tokens: Iterable[str], rules: Rules, rooms: Rooms, limits: Limiter
    ) -> None:
        self.tokens = frozenset(tokens)
        if "" in self.tokens:
            raise ValueError("tokens must be non-empty strings")
        self.rules = rules
        self.rooms = rooms
        self.limits = limits
        self.faults = Faults()
        #: Seconds added before every API answer. Like ``room_latency`` (extra
        #: seconds for requests addressed to a room, by room name), it delays the
        #: handling of a request, so a client that gives up during the delay still
        #: gets its message delivered: the duplicate risk a slow real server poses.
        self.latency = 0.0
        self.room_latency: dict[str, float] = {}
        self.requests: list[RequestRecord] = []
        #: API requests received, counted before any latency: with ``requests`` (the
        #: answered ones) it shows what is in flight.
        self.arrived = 0
        #: the scheme and base URL serving started with
        self.scheme = "http"
        self.url = ""
        #: rate limit, flood limit and latency when serving started, restored by reset()
        self.baseline = (limits.rate_limit, limits.flood_limit, 0.0)

    def token_ok(self, token: str | None) -> bool:
        """Whether ``token`` is accepted: any non-empty one in open mode."""
        return bool(token) and (not self.tokens or token in self.tokens)

    def record(self, method: str, path: str, status: int, token: str | None) -> None:
        """Log one answered API request; ``token`` is redacted from the path."""
        if token:
            path = scrub(path, token)  # a token must never be recorded, in any encoding
        self.requests.append(RequestRecord(method, path, status, trio.current_time()))

    def reset(self) -> None:
        """Clear messages, requests, counts and faults (an outage ends); rooms stay."""
        self.rooms.messages.clear()
        self.requests.clear()
        self.arrived = 0
        self.limits.clear()
        rate_limit, flood_limit, latency = self.baseline
        self.limits.rate_limit, self.limits.flood_limit = rate_limit, flood_limit
        self.latency = latency
        self.faults.clear()

    def base(self, request: Request) -> str:
        """The scheme and host the client used, for links; the served URL if Host is odd."""
        host = request.headers.get("host", "")
        # As HipChat did: clients such as HypChat follow these links, and pick the
        # room's class by an https:// pattern (docs/hipchat-api.md §9).
        return f"{self.scheme}://{host}" if _HOST_HEADER.fullmatch(host) else self.url


@dataclass(slots=True)
class Exchange:
    """One request being answered, as an endpoint's handler sees it."""

    site: Site
    call: Call
    request: Request
    target: Target
    #: the decoded path parameter (a room or a user), "" when the path has none
    param: str = ""
    #: v1 parameters: the query and a form body merged (the body wins)
    params: dict[str, str] = field(default_factory=dict)
