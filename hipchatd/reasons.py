"""Why input is refused, an event skipped or a notification failed: the label values of
``hipchatd_events_rejected_total{reason}``, ``hipchatd_events_skipped_total{reason}``
and ``hipchatd_notifications_failed_total{reason}``.

The reason is decided where the input is refused (framing, the listeners,
the intake) and travels as a :class:`RejectReason`; the metrics take their
label set from the same enum, so no code reads a reason back out of
message text. The human-readable text (what, where, what was expected)
travels beside it and goes to the log.

This module imports nothing from hipchatd: framing is pure and the metric
instruments sit below everything that counts, so both must be able to
import it without pulling in anything above them.
"""

from __future__ import annotations

import enum

__all__ = ["OutcomeKind", "RejectReason", "SkipReason"]


class RejectReason(enum.StrEnum):
    """One label of ``hipchatd_events_rejected_total``; the value is the label.

    The order is the order of the samples on ``/metrics``.
    """

    #: a frame that is not JSON (framing)
    INVALID_JSON = "invalid_json"
    #: a frame that is not valid UTF-8 (framing)
    NOT_UTF8 = "not_utf8"
    #: a JSON document that is not a Sensu event (intake)
    NOT_EVENT = "not_event"
    #: a frame cut short by the end of the stream, or an empty length-prefixed frame (framing)
    TRUNCATED = "truncated"
    #: a frame over ``max_frame_bytes``; the connection is closed (listeners)
    FRAME_TOO_LARGE = "frame_too_large"
    #: no complete event within ``idle_timeout``; the connection is closed (listeners)
    IDLE_TIMEOUT = "idle_timeout"
    #: kept at 0: past ``max_connections`` connections wait in the backlog, none is refused
    TOO_MANY_CONNECTIONS = "too_many_connections"
    #: the spool holds ``max_spool_events`` deliveries, or could not store the event (intake)
    SPOOL_FULL = "spool_full"
    #: an event routed to more than ``max_targets_per_event`` targets (intake)
    TOO_MANY_TARGETS = "too_many_targets"
    #: a peer outside ``allow_from``, dropped unread (listeners)
    NOT_ALLOWED = "not_allowed"


class SkipReason(enum.StrEnum):
    """Why a valid event is not notified: one label of ``hipchatd_events_skipped_total``.

    The filters (:mod:`hipchatd.sensu.filters`) decide it; the order is their rule order.
    """

    #: the check says ``handle: false``
    HANDLE_DISABLED = "handle_disabled"
    #: status 0 that is not a resolve
    STATUS_OK = "status_ok"
    #: a severity the handler's ``severities`` do not list
    SEVERITY = "severity"
    #: a silenced event, and ``handle_silenced`` is not set
    SILENCED = "silenced"
    #: fewer occurrences than ``handle_when.occurrences`` (with ``legacy_occurrences``:
    #: than the check's ``occurrences``)
    BELOW_OCCURRENCES = "below_occurrences"
    #: between two ``handle_when.reset`` repeats (with ``legacy_occurrences``: ``refresh``)
    REPEAT_SUPPRESSED = "repeat_suppressed"
    #: a resolve of a problem that was never notified
    NOT_ANNOUNCED = "not_announced"


class OutcomeKind(enum.Enum):
    """What one attempt to post to HipChat achieved (:class:`hipchatd.delivery.outcome.Outcome`).

    Every kind but SENT is one label of ``hipchatd_notifications_failed_total``;
    the value is the label, and the order is the order of the samples.
    """

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
