"""The HipChat HTTP client: v1 and v2 requests, outcome classification.

The only module that knows httpx. It never raises for a HipChat answer or a
transport failure: every attempt becomes an Outcome.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import httpx

from hipchatd.config import HipChatSettings
from hipchatd.render import Message
from hipchatd.routing import Target

__all__ = ["HipChatClient", "Outcome", "OutcomeKind", "RateInfo", "make_http_client"]


class OutcomeKind(enum.Enum):
    SENT = "sent"
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    BAD_REQUEST = "bad_request"
    SERVER_ERROR = "server_error"
    TRANSPORT_ERROR = "transport_error"
    TIMEOUT = "timeout"

    @property
    def transient(self) -> bool:
        """Worth retrying later: rate limits, 5xx, transport errors, timeouts."""
        return self in _TRANSIENT


_TRANSIENT = frozenset(
    {
        OutcomeKind.RATE_LIMITED,
        OutcomeKind.SERVER_ERROR,
        OutcomeKind.TRANSPORT_ERROR,
        OutcomeKind.TIMEOUT,
    }
)


@dataclass(frozen=True, slots=True)
class RateInfo:
    """One rate-limit header family: limit, remaining, reset (absolute Unix time)."""

    limit: int | None
    remaining: int | None
    reset: float | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt achieved."""

    kind: OutcomeKind
    #: HTTP status, None when no response arrived.
    status: int | None = None
    #: HipChat's own error message, or the transport error's description.
    error: str | None = None
    #: ``X-Ratelimit-*`` (per token).
    rate: RateInfo | None = None
    #: ``X-FloodControl-*`` (per room or user).
    flood: RateInfo | None = None
    #: absolute Unix time HipChat asked us to come back (Retry-After or a reset header).
    retry_at: float | None = None


def make_http_client(settings: HipChatSettings, concurrency: int) -> httpx.AsyncClient:
    """The one AsyncClient for the process: pool sized to ``concurrency``, ``ca_file`` trusted."""
    raise NotImplementedError


class HipChatClient:
    """Posts messages to HipChat; one instance per process (per reload)."""

    def __init__(self, settings: HipChatSettings, http: httpx.AsyncClient) -> None:
        raise NotImplementedError

    async def send(self, target: Target, message: Message) -> Outcome:
        """Post ``message`` to ``target`` once and classify the answer.

        Takes no timeout: the caller wraps it in ``trio.move_on_after``.
        Cancellation propagates; every other failure is an Outcome.
        """
        raise NotImplementedError
