"""Counters, gauges and histograms, in a Prometheus registry per daemon.

Each App owns its registry (tests run several daemons in one process). Every
label combination that can occur is initialised at start, so a counter
reads 0 rather than being absent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from hipchatd.reasons import OutcomeKind, RejectReason, SkipReason

__all__ = [
    "API_VERSIONS",
    "CONNECTIONS_OPEN",
    "EVENTS_ACCEPTED",
    "EVENTS_RECEIVED",
    "EVENTS_REJECTED",
    "EVENTS_SKIPPED",
    "FAILURE_REASONS",
    "INTERNAL_ERRORS",
    "INTERNAL_ERROR_PLACES",
    "LANES_OWNED",
    "LEASE_RENEWALS_FAILED",
    "LEASE_TAKEOVERS",
    "NOTIFICATIONS",
    "NOTIFICATIONS_FAILED",
    "NOTIFICATION_LATENCY",
    "RATELIMIT_REMAINING",
    "REJECT_REASONS",
    "SPOOL_EVENTS",
    "SPOOL_FORWARDED",
    "SPOOL_LOCAL",
    "TRANSPORTS",
    "Metrics",
    "ReadCounter",
]

# The series, named as they appear on /metrics: a counter's samples end in
# ``_total`` (prometheus_client takes the name with or without it).
EVENTS_RECEIVED: Final = "hipchatd_events_received_total"
EVENTS_REJECTED: Final = "hipchatd_events_rejected_total"
EVENTS_SKIPPED: Final = "hipchatd_events_skipped_total"
EVENTS_ACCEPTED: Final = "hipchatd_events_accepted_total"
NOTIFICATIONS: Final = "hipchatd_notifications_total"
NOTIFICATIONS_FAILED: Final = "hipchatd_notifications_failed_total"
#: a histogram: its samples are ``_bucket``, ``_count`` and ``_sum``.
NOTIFICATION_LATENCY: Final = "hipchatd_notification_latency_seconds"
CONNECTIONS_OPEN: Final = "hipchatd_connections_open"
RATELIMIT_REMAINING: Final = "hipchatd_ratelimit_remaining"
SPOOL_EVENTS: Final = "hipchatd_spool_events"
SPOOL_LOCAL: Final = "hipchatd_spool_local_entries"
SPOOL_FORWARDED: Final = "hipchatd_spool_forwarded_entries_total"
INTERNAL_ERRORS: Final = "hipchatd_internal_errors_total"
LANES_OWNED: Final = "hipchatd_lanes_owned"
LEASE_TAKEOVERS: Final = "hipchatd_lease_takeovers_total"
LEASE_RENEWALS_FAILED: Final = "hipchatd_lease_renewals_failed_total"

TRANSPORTS = ("tcp", "udp")
#: The labels of NOTIFICATIONS: HipChat's API versions.
API_VERSIONS: Final = ("v1", "v2")
#: The labels of EVENTS_REJECTED: one per RejectReason, in its order.
REJECT_REASONS: Final = tuple(RejectReason)
#: Where a fault boundary caught an unexpected exception (a bug, counted and survived).
INTERNAL_ERROR_PLACES = ("frame", "datagram", "connection", "lane", "http")
#: The labels of NOTIFICATIONS_FAILED: every OutcomeKind but SENT, in its order.
FAILURE_REASONS: Final = tuple(kind.value for kind in OutcomeKind if kind is not OutcomeKind.SENT)


class Metrics:
    """The daemon's instruments."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events_received = Counter(
            EVENTS_RECEIVED, "Frames read from Sensu", ["transport"], registry=r
        )
        self.events_rejected = Counter(
            EVENTS_REJECTED, "Input refused, by reason", ["reason"], registry=r
        )
        self.events_skipped = Counter(
            EVENTS_SKIPPED, "Events not notified by the filters", ["reason"], registry=r
        )
        self.events_accepted = Counter(EVENTS_ACCEPTED, "Events accepted for delivery", registry=r)
        self.notifications = Counter(
            NOTIFICATIONS, "Messages HipChat accepted", ["api_version"], registry=r
        )
        self.notifications_failed = Counter(
            NOTIFICATIONS_FAILED, "Failed attempts, by reason", ["reason"], registry=r
        )
        self.notification_latency = Histogram(
            NOTIFICATION_LATENCY,
            "Acceptance to HipChat's confirmation",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=r,
        )
        self.connections_open = Gauge(CONNECTIONS_OPEN, "Sensu connections being read", registry=r)
        self.ratelimit_remaining = Gauge(
            RATELIMIT_REMAINING, "HipChat's last X-Ratelimit-Remaining", registry=r
        )
        self.spool_events = Gauge(
            SPOOL_EVENTS, "Spooled deliveries, by state", ["state"], registry=r
        )
        self.spool_local = Gauge(
            SPOOL_LOCAL, "Entries held in the local spool (PostgreSQL unreachable)", registry=r
        )
        self.spool_forwarded = ReadCounter(
            SPOOL_FORWARDED, "Entries forwarded from the local spool to PostgreSQL", registry=r
        )
        self.internal_errors_total = Counter(
            INTERNAL_ERRORS,
            "Unexpected exceptions caught at a fault boundary (bugs), by where",
            ["where"],
            registry=r,
        )
        # Several instances on one PostgreSQL spool: the lanes this one sends for.
        self.lanes_owned = Gauge(
            LANES_OWNED, "Lanes (rooms, users) this instance holds the lease of", registry=r
        )
        self.lease_takeovers = Counter(
            LEASE_TAKEOVERS, "Lanes taken over from an instance whose lease expired", registry=r
        )
        self.lease_renewals_failed = Counter(
            LEASE_RENEWALS_FAILED, "Lease rounds the spool's server did not complete", registry=r
        )
        # Children looked up once: ``labels()`` costs more than ``inc()`` on the hot path.
        self.received = {t: self.events_received.labels(transport=t) for t in TRANSPORTS}
        self.rejected = {r: self.events_rejected.labels(reason=r) for r in REJECT_REASONS}
        self.skipped = {r: self.events_skipped.labels(reason=r) for r in SkipReason}
        self.internal_errors = {
            w: self.internal_errors_total.labels(where=w) for w in INTERNAL_ERROR_PLACES
        }
        self.sent = {v: self.notifications.labels(api_version=v) for v in API_VERSIONS}
        self.failed = {r: self.notifications_failed.labels(reason=r) for r in FAILURE_REASONS}

    def value(self, name: str, **labels: str) -> float:
        """The current value of a sample (0.0 when absent); for status lines and tests."""
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found


class ReadCounter(Collector):
    """A counter kept by its owner (the spool counts what it forwards), read at each scrape."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self._name = name.removesuffix("_total")
        self._documentation = documentation
        self._read: Callable[[], float] = lambda: 0.0
        registry.register(self)

    def set_function(self, read: Callable[[], float]) -> None:
        """Read the value from ``read()`` from now on."""
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._documentation, value=self._read())
