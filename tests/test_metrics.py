"""The metric contract: series names and the label sets that are there from the start."""

from __future__ import annotations

from hipchatd import metrics
from hipchatd.metrics import Metrics
from hipchatd.reasons import OutcomeKind, RejectReason


def test_every_reject_reason_is_a_label_reading_zero_from_the_start() -> None:
    registry = Metrics().registry
    for reason in RejectReason:
        sample = registry.get_sample_value(metrics.EVENTS_REJECTED, {"reason": reason.value})
        assert sample == 0.0, reason


def test_reject_labels_are_the_documented_ones_in_order() -> None:
    """The labels are an interface for dashboards: renaming one is a breaking change."""
    assert [reason.value for reason in RejectReason] == [
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
    ]
    assert tuple(RejectReason) == metrics.REJECT_REASONS


def test_rejected_counters_are_looked_up_by_reject_reason() -> None:
    m = Metrics()
    assert set(m.rejected) == set(RejectReason)
    m.rejected[RejectReason.SPOOL_FULL].inc()
    assert m.value(metrics.EVENTS_REJECTED, reason="spool_full") == 1


def test_each_name_constant_is_a_series_on_metrics() -> None:
    """The constants spell the names of the README, each registered once."""
    families = list(Metrics().registry.collect())
    # A labelled gauge has no sample until a label is set: its family stands for it.
    samples = {family.name for family in families if family.type == "gauge"}
    samples |= {sample.name for family in families for sample in family.samples}
    names = [
        (metrics.EVENTS_RECEIVED, "hipchatd_events_received_total"),
        (metrics.EVENTS_REJECTED, "hipchatd_events_rejected_total"),
        (metrics.EVENTS_SKIPPED, "hipchatd_events_skipped_total"),
        (metrics.EVENTS_ACCEPTED, "hipchatd_events_accepted_total"),
        (metrics.NOTIFICATIONS, "hipchatd_notifications_total"),
        (metrics.NOTIFICATIONS_FAILED, "hipchatd_notifications_failed_total"),
        (metrics.NOTIFICATION_LATENCY, "hipchatd_notification_latency_seconds"),
        (metrics.CONNECTIONS_OPEN, "hipchatd_connections_open"),
        (metrics.RATELIMIT_REMAINING, "hipchatd_ratelimit_remaining"),
        (metrics.SPOOL_EVENTS, "hipchatd_spool_events"),
        (metrics.INTERNAL_ERRORS, "hipchatd_internal_errors_total"),
    ]
    for constant, name in names:
        assert constant == name
        # A histogram has no sample of its own name, only _bucket, _count and _sum.
        assert name in samples or f"{name}_count" in samples, name


def test_every_failed_outcome_kind_is_a_label_reading_zero_from_the_start() -> None:
    """The failure labels come from OutcomeKind itself: a new kind cannot go uncounted."""
    registry = Metrics().registry
    failed = [kind for kind in OutcomeKind if kind is not OutcomeKind.SENT]
    assert tuple(kind.value for kind in failed) == metrics.FAILURE_REASONS
    for kind in failed:
        sample = registry.get_sample_value(metrics.NOTIFICATIONS_FAILED, {"reason": kind.value})
        assert sample == 0.0, kind
    # A delivered message is no failure.
    assert registry.get_sample_value(metrics.NOTIFICATIONS_FAILED, {"reason": "sent"}) is None


def test_failure_labels_are_the_documented_ones_in_order() -> None:
    """The labels are an interface for dashboards: renaming one is a breaking change."""
    assert metrics.FAILURE_REASONS == (
        "rate_limited",
        "unauthorized",
        "forbidden",
        "not_found",
        "bad_request",
        "server_error",
        "transport_error",
        "timeout",
    )


def test_notification_counters_are_looked_up_by_api_version_and_failure_reason() -> None:
    """Looked up once at start, counting into the series the README names, from 0."""
    m = Metrics()
    assert set(m.sent) == {"v1", "v2"} == set(metrics.API_VERSIONS)
    assert set(m.failed) == set(metrics.FAILURE_REASONS)
    for version in metrics.API_VERSIONS:
        assert m.value(metrics.NOTIFICATIONS, api_version=version) == 0
    m.sent["v2"].inc()
    m.failed[OutcomeKind.RATE_LIMITED.value].inc()
    assert m.value(metrics.NOTIFICATIONS, api_version="v2") == 1
    assert m.value(metrics.NOTIFICATIONS, api_version="v1") == 0
    assert m.value(metrics.NOTIFICATIONS_FAILED, reason="rate_limited") == 1
