"""Counters, gauges and histograms, in a Prometheus registry per daemon.

Each App owns its registry (tests run several daemons in one process). Every
label combination that can occur is initialised at start, so a counter
reads 0 rather than being absent.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from hipchatd.filters import SKIP_REASONS

__all__ = [
    "FAILURE_REASONS",
    "INTERNAL_ERROR_PLACES",
    "REJECT_REASONS",
    "SKIP_REASONS",
    "TRANSPORTS",
    "Metrics",
]

TRANSPORTS = ("tcp", "udp")
REJECT_REASONS = (
    "invalid_json",
    "not_utf8",
    "not_event",
    "truncated",
    "frame_too_large",
    "idle_timeout",
    "too_many_connections",
    "spool_full",
    "too_many_targets",
    "not_allowed",
)
#: Where a fault boundary caught an unexpected exception (a bug, counted and survived).
INTERNAL_ERROR_PLACES = ("frame", "datagram", "connection", "lane", "spool")
FAILURE_REASONS = (
    "rate_limited",
    "unauthorized",
    "forbidden",
    "not_found",
    "bad_request",
    "server_error",
    "transport_error",
    "timeout",
)


class Metrics:
    """The daemon's instruments."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events_received = Counter(
            "hipchatd_events_received", "Frames read from Sensu", ["transport"], registry=r
        )
        self.events_rejected = Counter(
            "hipchatd_events_rejected", "Input refused, by reason", ["reason"], registry=r
        )
        self.events_skipped = Counter(
            "hipchatd_events_skipped", "Events not notified by the filters", ["reason"], registry=r
        )
        self.events_accepted = Counter(
            "hipchatd_events_accepted", "Events accepted for delivery", registry=r
        )
        self.notifications = Counter(
            "hipchatd_notifications", "Messages HipChat accepted", ["api_version"], registry=r
        )
        self.notifications_failed = Counter(
            "hipchatd_notifications_failed", "Failed attempts, by reason", ["reason"], registry=r
        )
        self.notification_latency = Histogram(
            "hipchatd_notification_latency_seconds",
            "Acceptance to HipChat's confirmation",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=r,
        )
        self.connections_open = Gauge(
            "hipchatd_connections_open", "Sensu connections being read", registry=r
        )
        self.ratelimit_remaining = Gauge(
            "hipchatd_ratelimit_remaining", "HipChat's last X-Ratelimit-Remaining", registry=r
        )
        self.spool_events = Gauge(
            "hipchatd_spool_events", "Spooled deliveries, by state", ["state"], registry=r
        )
        self.internal_errors_total = Counter(
            "hipchatd_internal_errors",
            "Unexpected exceptions caught at a fault boundary (bugs), by where",
            ["where"],
            registry=r,
        )
        # Children looked up once: ``labels()`` costs more than ``inc()`` on the hot path.
        self.received = {t: self.events_received.labels(transport=t) for t in TRANSPORTS}
        self.rejected = {r: self.events_rejected.labels(reason=r) for r in REJECT_REASONS}
        self.skipped = {r: self.events_skipped.labels(reason=r) for r in SKIP_REASONS}
        self.internal_errors = {
            w: self.internal_errors_total.labels(where=w) for w in INTERNAL_ERROR_PLACES
        }
        for version in ("v1", "v2"):
            self.notifications.labels(api_version=version)
        for reason in FAILURE_REASONS:
            self.notifications_failed.labels(reason=reason)

    def value(self, name: str, **labels: str) -> float:
        """The current value of a sample (0.0 when absent); for status lines and tests."""
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found
