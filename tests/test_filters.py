"""skip_reason: the Sensu Enterprise integration's filters, in order."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hipchatd.reasons import SkipReason
from hipchatd.sensu.events import Action, Event, HandleWhen, Overrides, Repeat, parse_event
from hipchatd.sensu.filters import (
    DEFAULT_INTERVAL,
    LEGACY_INTERVAL,
    LEGACY_OCCURRENCES,
    LEGACY_REFRESH,
    SKIP_REASONS,
    handle_when_reason,
    legacy_applies,
    reminder_period,
    repeat_reason,
    severity,
    skip_reason,
)
from tests.factories import make_event, make_settings

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> Event:
    return parse_event(json.loads((FIXTURES / name).read_text(encoding="utf-8")))


ALL = frozenset({"ok", "warning", "critical", "unknown"})


def test_a_fresh_critical_is_notified() -> None:
    assert skip_reason(make_event(), make_settings()) is None


# --- 1. handle -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"status": 0},
        {"silenced": True},
        {"occurrences": 2},
        {"action": "resolve", "status": 0, "history": (2, 0)},
    ],
)
def test_handle_false_wins_over_everything(changes: dict[str, Any]) -> None:
    assert skip_reason(make_event(handle=False, **changes), make_settings()) == "handle_disabled"


# --- 2. status 0 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "expected"),
    [("create", "status_ok"), ("flapping", "status_ok"), ("resolve", None)],
)
def test_status_ok_unless_resolve(action: Action, expected: str | None) -> None:
    ok = make_event(status=0, action=action, history=(2, 0))
    assert skip_reason(ok, make_settings(severities=ALL)) == expected


def test_status_ok_comes_before_severity() -> None:
    # Even a handler that lists "ok" does not get non-resolve OKs.
    assert (
        skip_reason(make_event(status=0), make_settings(severities=frozenset({"ok"})))
        == "status_ok"
    )


# --- 3. severities ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "name"),
    [(0, "ok"), (1, "warning"), (2, "critical"), (3, "unknown"), (127, "unknown"), (-1, "unknown")],
)
def test_severity_names(status: int, name: str) -> None:
    assert severity(status) == name


@pytest.mark.parametrize(
    ("status", "severities", "expected"),
    [
        (1, {"warning", "critical", "unknown"}, None),
        (2, {"warning", "critical", "unknown"}, None),
        (3, {"warning", "critical", "unknown"}, None),
        (127, {"warning", "critical", "unknown"}, None),
        (1, {"critical"}, "severity"),
        (2, {"critical"}, None),
        (3, {"critical"}, "severity"),
        (2, {"warning"}, "severity"),
        (1, set(), "severity"),
    ],
)
def test_severity_of_current_status(
    status: int, severities: set[str], expected: str | None
) -> None:
    s = make_settings(severities=frozenset(severities))
    assert skip_reason(make_event(status=status, history=(0, status)), s) == expected
    assert skip_reason(make_event(status=status, action="flapping"), s) == expected


@pytest.mark.parametrize(
    ("history", "severities", "expected"),
    [
        # The walk starts before the current entry and stops at the first 0: it sees only 1.
        ((2, 0, 1, 0), {"critical"}, "severity"),
        ((2, 0, 1, 0), {"warning"}, None),
        ((1, 2, 2, 0), {"critical"}, None),
        ((1, 2, 2, 0), {"warning"}, None),  # any severity since the last OK
        ((1, 2, 2, 0), {"unknown"}, "severity"),
        ((0, 3, 3, 0), {"unknown"}, None),
        ((2, 1, 0), {"ok"}, "severity"),
        ((0, 0), {"warning", "critical", "unknown"}, "severity"),  # previous result was OK
        ((0,), {"critical"}, None),  # nothing to walk: pass rather than lose the resolve
        ((), {"critical"}, None),
    ],
)
def test_resolve_severity_walk(
    history: tuple[int, ...], severities: set[str], expected: str | None
) -> None:
    resolve = make_event(action="resolve", status=0, history=history, occurrences_watermark=1)
    assert skip_reason(resolve, make_settings(severities=frozenset(severities))) == expected


def test_default_severities_pass_resolves_of_warnings() -> None:
    resolve = make_event(action="resolve", status=0, history=(0, 1, 1, 0))
    assert skip_reason(resolve, make_settings()) is None


# --- 4. silenced -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("silenced", "handle_silenced", "expected"),
    [(True, False, "silenced"), (True, True, None), (False, False, None), (False, True, None)],
)
def test_silenced(silenced: bool, handle_silenced: bool, expected: str | None) -> None:
    s = make_settings(handle_silenced=handle_silenced)
    assert skip_reason(make_event(silenced=silenced), s) == expected


def test_severity_comes_before_silenced() -> None:
    s = make_settings(severities=frozenset({"critical"}))
    assert skip_reason(make_event(silenced=True, status=1), s) == "severity"


def test_silenced_comes_before_handle_when() -> None:
    quiet = make_event(silenced=True, handle_when=HandleWhen(occurrences=3), occurrences=1)
    assert skip_reason(quiet, make_settings()) == "silenced"


# --- 5. handle_when arithmetic ---------------------------------------------------------------


def _notified(
    action: Action, threshold: int, reset: int, interval: int | None, upto: int = 70
) -> list[int]:
    return [
        n
        for n in range(1, upto + 1)
        if handle_when_reason(
            action=action,
            occurrences=n,
            watermark=n,
            threshold=threshold,
            reset=reset,
            interval=interval,
        )
        is None
    ]


@pytest.mark.parametrize("action", ["create", "flapping"])
def test_worked_example_notifies_at_3_33_63(action: Action) -> None:
    """N=3, I=60, R=1800 (k=30): notifications at n = 3, 33, 63."""
    assert _notified(action, threshold=3, reset=1800, interval=60) == [3, 33, 63]


def test_worked_example_through_skip_reason() -> None:
    reasons = [
        skip_reason(
            make_event(occurrences=n, occurrences_watermark=n, handle_when=HandleWhen(3, 1800)),
            make_settings(),
        )
        for n in range(1, 70 + 1)
    ]
    assert [n for n, reason in enumerate(reasons, start=1) if reason is None] == [3, 33, 63]
    assert reasons[:2] == ["below_occurrences", "below_occurrences"]
    assert set(reasons[3:32]) == {"repeat_suppressed"}


def test_missing_interval_defaults_to_60() -> None:
    assert DEFAULT_INTERVAL == 60
    assert _notified("create", threshold=3, reset=1800, interval=None) == [3, 33, 63]


@pytest.mark.parametrize(
    ("threshold", "reset", "interval", "expected"),
    [
        (1, 1800, 60, [1, 31, 61]),
        (1, 300, 60, list(range(1, 71, 5))),  # k = 5
        (2, 100, 30, list(range(2, 71, 3))),  # k = floor(100 / 30) = 3
        (3, 30, 60, list(range(3, 71))),  # k = 0: every result from N on
        (1, 0, 60, list(range(1, 71))),  # reset 0: k = 0
        (5, 1800, 600, list(range(5, 71, 3))),  # k = 3
        (71, 1800, 60, []),  # the threshold is never reached
    ],
)
def test_repeat_arithmetic(threshold: int, reset: int, interval: int, expected: list[int]) -> None:
    assert _notified("create", threshold=threshold, reset=reset, interval=interval) == expected


@pytest.mark.parametrize(
    ("occurrences", "watermark", "threshold", "expected"),
    [
        (3, 3, 3, None),
        (1, 5, 3, None),  # Go: n counts OK results on a resolve; w carries the incident
        (1, 2, 3, "not_announced"),
        (5, 2, 3, "not_announced"),
        (1, 1, 1, None),
        (33, 33, 3, None),  # a resolve is never a "repeat"
    ],
)
def test_resolve_needs_the_incident_to_have_been_announced(
    occurrences: int, watermark: int, threshold: int, expected: str | None
) -> None:
    reason = handle_when_reason(
        action="resolve",
        occurrences=occurrences,
        watermark=watermark,
        threshold=threshold,
        reset=1800,
        interval=60,
    )
    assert reason == expected


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"occurrences": 1, "handle_when": HandleWhen(2, 1800)}, "below_occurrences"),
        ({"occurrences": 2, "handle_when": HandleWhen(2, 1800)}, None),
        ({"occurrences": 3, "handle_when": HandleWhen(2, 1800)}, "repeat_suppressed"),
        ({"occurrences": 32, "handle_when": HandleWhen(2, 1800)}, None),
        ({"occurrences": 7, "interval": 600, "handle_when": HandleWhen(1, 1800)}, None),
        (
            {"occurrences": 8, "interval": 600, "handle_when": HandleWhen(1, 1800)},
            "repeat_suppressed",
        ),
        (
            {
                "action": "resolve",
                "status": 0,
                "history": (2, 2, 0),
                "occurrences": 2,
                "occurrences_watermark": 2,
                "handle_when": HandleWhen(3, 1800),
            },
            "not_announced",
        ),
    ],
)
def test_handle_when_through_skip_reason(changes: dict[str, Any], expected: str | None) -> None:
    assert skip_reason(make_event(**changes), make_settings()) == expected


# --- the fixtures, end to end ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("classic-critical.json", None),
        ("classic-resolve.json", None),
        ("classic-flapping.json", None),
        ("classic-hipchat.json", None),  # n = N = 3
        ("classic-proxy.json", "repeat_suppressed"),  # n = 2, N = 1, k = 30
        ("classic-metric-ok.json", "status_ok"),
        ("go-warning.json", "repeat_suppressed"),  # n = 423, N = 1, k = 180: 422 % 180 != 0
        ("go-critical.json", "repeat_suppressed"),  # n = 3
        ("go-resolution.json", None),  # n = 1, w = 5
        ("go-flapping.json", None),
        ("go-keepalive.json", "repeat_suppressed"),  # n = 2, k = 1800 // 20 = 90
        ("go-annotations.json", None),  # handle_when annotation: N = 2, n = 2
        ("go-namespace.json", "silenced"),
    ],
)
def test_fixtures(name: str, expected: str | None) -> None:
    assert skip_reason(fixture(name), make_settings()) == expected


def test_go_failing_with_status_zero_is_status_ok() -> None:
    document = json.loads((FIXTURES / "go-critical.json").read_text(encoding="utf-8"))
    document["check"]["status"] = 0
    document["check"]["history"][-1]["status"] = 0
    document["check"]["history"][-2]["status"] = 0
    parsed = parse_event(document)
    assert (parsed.action, parsed.status) == ("create", 0)
    assert skip_reason(parsed, make_settings()) == "status_ok"


def test_every_reason_is_listed() -> None:
    cases = [
        make_event(handle=False),
        make_event(status=0),
        make_event(status=1, history=(0, 1)),
        make_event(silenced=True),
        make_event(handle_when=HandleWhen(occurrences=2)),
        make_event(occurrences=2, occurrences_watermark=2),
        make_event(
            action="resolve", status=0, history=(2, 0), handle_when=HandleWhen(occurrences=2)
        ),
    ]
    s = make_settings(severities=frozenset({"critical"}))
    assert tuple(skip_reason(case, s) for case in cases) == SKIP_REASONS


# --- legacy_occurrences: sensu-plugin's filter_repeated ----------------------------------------


def _ruby_filter_repeated(
    action: Action, n: int, occurrences: int | None, interval: int | None, refresh: int | None
) -> bool:
    """``Sensu::Handler#filter_repeated`` (sensu-plugin 4.0) line by line: True = handled.

    ``bail`` exits the handler: here it returns False. Ruby's ``fdiv`` is a
    float division and ``to_i`` truncates towards zero, as Python's ``int``.
    """
    occurrences = 1 if occurrences is None else occurrences
    interval = 30 if interval is None else interval
    refresh = 1800 if refresh is None else refresh
    if n < occurrences:
        return False  # bail 'not enough occurrences'
    if not (n > occurrences and action == "create"):
        return True
    number = int(refresh / interval)
    # Otherwise: bail 'only handling every N occurrences'.
    return number == 0 or (n - occurrences) % number == 0


def _legacy(
    action: Action, n: int, threshold: int | None, interval: int | None, refresh: int | None
) -> SkipReason | None:
    return repeat_reason(
        action=action, occurrences=n, threshold=threshold, interval=interval, refresh=refresh
    )


def _legacy_notified(
    action: Action, threshold: int | None, interval: int | None, refresh: int | None
) -> list[int]:
    return [n for n in range(70 + 1) if _legacy(action, n, threshold, interval, refresh) is None]


def test_legacy_defaults_are_sensu_plugins() -> None:
    assert (LEGACY_OCCURRENCES, LEGACY_INTERVAL, LEGACY_REFRESH) == (1, 30, 1800)


def test_legacy_worked_example() -> None:
    """N=3, I=60, R=1800 (k=30): create at 3, 33, 63; flapping from 3 on; a resolve from 3 on."""
    assert _legacy_notified("create", 3, 60, 1800) == [3, 33, 63]
    assert _legacy_notified("flapping", 3, 60, 1800) == list(range(3, 71))
    assert _legacy_notified("resolve", 3, 60, 1800) == list(range(3, 71))
    reasons = [_legacy("create", n, 3, 60, 1800) for n in (1, 2, 4, 32)]
    assert reasons == ["below_occurrences", "below_occurrences"] + ["repeat_suppressed"] * 2


@pytest.mark.parametrize(
    ("threshold", "interval", "refresh", "expected"),
    [
        (None, None, None, [1, 61]),  # every default: k = 1800 // 30 = 60
        (3, None, 10, list(range(3, 71))),  # Classic's refresh of 10 s: k = 0, every result
        (2, 60, 1800, [2, 32, 62]),
        (1, 600, 1800, list(range(1, 71, 3))),  # k = 3
        (1, 7, 100, list(range(1, 71, 14))),  # k = floor(100 / 7) = 14
        (5, 60, 0, list(range(5, 71))),  # refresh 0: k = 0
    ],
)
def test_legacy_repeat_arithmetic(
    threshold: int | None, interval: int | None, refresh: int | None, expected: list[int]
) -> None:
    assert _legacy_notified("create", threshold, interval, refresh) == expected


def test_legacy_filter_is_rubys_on_a_grid() -> None:
    """Every combination of small values, against the transcription of the Ruby."""
    grid = itertools.product(
        ("create", "resolve", "flapping"),
        range(40),
        (None, 0, 1, 2, 3, 5),
        (None, 1, 7, 29, 30, 31, 60, 600),
        (None, 0, 10, 29, 30, 59, 60, 61, 300, 1800),
    )
    checked = 0
    for case in grid:
        assert (_legacy(*case) is None) == _ruby_filter_repeated(*case), case
        checked += 1
    assert checked == 3 * 6 * 8 * 10 * 40


@given(
    action=st.sampled_from(["create", "resolve", "flapping"]),
    n=st.integers(min_value=0, max_value=10**9),
    threshold=st.none() | st.integers(min_value=-10, max_value=10**6),
    interval=st.none() | st.integers(min_value=1, max_value=10**6) | st.integers(-(10**6), -1),
    refresh=st.none() | st.integers(min_value=-(10**7), max_value=10**7),
)
@settings(max_examples=2000)
def test_legacy_filter_is_rubys(
    action: Action, n: int, threshold: int | None, interval: int | None, refresh: int | None
) -> None:
    """Any values, signs included: the integer arithmetic agrees with Ruby's float route."""
    reason = _legacy(action, n, threshold, interval, refresh)
    assert (reason is None) == _ruby_filter_repeated(action, n, threshold, interval, refresh)
    if reason is not None:
        below = n < (LEGACY_OCCURRENCES if threshold is None else threshold)
        assert reason == ("below_occurrences" if below else "repeat_suppressed")


# --- legacy_occurrences through skip_reason ------------------------------------------------------

LEGACY = make_settings(legacy_occurrences=True)
#: A check with sensu-plugin's ``occurrences: 3`` and the usual Classic ``refresh``.
THREE = Repeat(occurrences=3, refresh=1800)


def _classic(n: int, **changes: Any) -> Event:
    return make_event(**{"occurrences": n, "occurrences_watermark": n, "repeat": THREE, **changes})


def test_legacy_occurrences_is_off_by_default() -> None:
    assert make_settings().legacy_occurrences is False
    # handle_when's defaults decide: the first occurrence notifies.
    assert skip_reason(_classic(1), make_settings()) is None
    assert not legacy_applies(_classic(1), make_settings())


def test_legacy_occurrences_holds_back_occurrences_below_the_threshold() -> None:
    reasons = [skip_reason(_classic(n), LEGACY) for n in range(1, 70 + 1)]
    assert reasons[:2] == ["below_occurrences", "below_occurrences"]
    assert [n for n, reason in enumerate(reasons, start=1) if reason is None] == [3, 33, 63]
    assert set(reasons[3:32]) == {"repeat_suppressed"}


def test_handle_when_wins_over_legacy_occurrences() -> None:
    """A check that names handle_when is judged by it, legacy_occurrences or not."""
    given = _classic(1, repeat=Repeat(occurrences=3, handle_when_given=True))
    assert not legacy_applies(given, LEGACY)
    assert skip_reason(given, LEGACY) is None
    held = replace(given, handle_when=HandleWhen(occurrences=2))
    assert skip_reason(held, LEGACY) == "below_occurrences"


@pytest.mark.parametrize(
    ("setting", "client", "check", "applies"),
    [
        (False, None, True, True),
        (False, True, None, True),
        (True, False, None, False),
        (True, None, False, False),
        (False, False, True, True),  # the check's word before the client's
        (True, True, False, False),
        (True, None, None, True),
        (False, None, None, False),
    ],
)
def test_legacy_occurrences_overrides(
    setting: bool, client: bool | None, check: bool | None, applies: bool
) -> None:
    event = _classic(
        1,
        check_overrides=Overrides(legacy_occurrences=check),
        client_overrides=Overrides(legacy_occurrences=client),
    )
    settings = make_settings(legacy_occurrences=setting)
    assert legacy_applies(event, settings) is applies
    assert skip_reason(event, settings) == ("below_occurrences" if applies else None)


def test_legacy_flapping_is_not_repeat_filtered_and_resolves_need_the_threshold() -> None:
    flapping = [skip_reason(_classic(n, action="flapping"), LEGACY) for n in (2, 3, 4, 5)]
    assert flapping == ["below_occurrences", None, None, None]
    resolve = {"action": "resolve", "status": 0, "history": (2, 2, 0)}
    assert skip_reason(_classic(2, **resolve), LEGACY) == "below_occurrences"
    assert skip_reason(_classic(4, **resolve), LEGACY) is None


def test_legacy_defaults_without_classic_attributes() -> None:
    """No occurrences, refresh or interval on the check: N=1, I=30, R=1800 (k=60)."""
    bare = make_event(interval=None)
    notified = [
        n
        for n in range(1, 130)
        if skip_reason(replace(bare, occurrences=n, occurrences_watermark=n), LEGACY) is None
    ]
    assert notified == [1, 61, 121]


def test_reminder_period_is_reset_or_under_legacy_refresh() -> None:
    event = _classic(1, handle_when=HandleWhen(reset=600), repeat=Repeat(refresh=120))
    assert reminder_period(event, make_settings()) == 600
    assert reminder_period(event, LEGACY) == 120
    assert reminder_period(replace(event, repeat=Repeat()), LEGACY) == LEGACY_REFRESH
    given = replace(event, repeat=Repeat(refresh=120, handle_when_given=True))
    assert reminder_period(given, LEGACY) == 600


def test_legacy_on_the_classic_sample() -> None:
    """The Classic sample with occurrences 3 named on the check and a 10 s refresh (k = 0)."""
    document = json.loads((FIXTURES / "classic-critical.json").read_text(encoding="utf-8"))
    document["check"]["occurrences"] = 3
    document["check"]["hipchat"] = {"legacy_occurrences": True}

    def at(n: int) -> SkipReason | None:
        return skip_reason(parse_event({**document, "occurrences": n}), make_settings())

    assert [at(n) for n in (1, 2, 3, 4, 5)] == ["below_occurrences"] * 2 + [None] * 3


def test_legacy_on_a_go_check_reads_its_json_attributes() -> None:
    """Go's check.occurrences is a count: the threshold comes from sensu.io.json_attributes."""
    document = json.loads((FIXTURES / "go-critical.json").read_text(encoding="utf-8"))
    annotations = document["check"]["metadata"].setdefault("annotations", {})
    annotations["sensu.io.json_attributes"] = json.dumps({"occurrences": 5, "refresh": 0})
    annotations["sensu.io/plugins/hipchat/config/legacy_occurrences"] = "true"
    document["check"].pop("handle_when", None)
    event = parse_event(document)
    assert (event.repeat.occurrences, event.repeat.refresh) == (5, 0)
    assert event.occurrences == 3
    assert skip_reason(event, make_settings()) == "below_occurrences"
    document["check"]["occurrences"] = 5
    assert skip_reason(parse_event(document), make_settings()) is None


@pytest.mark.parametrize(("threshold", "expected"), [(5, None), (6, "below_occurrences")])
def test_legacy_judges_a_go_resolve_by_its_incidents_count(
    threshold: int, expected: str | None
) -> None:
    """Go counts a resolve's OK results (n = 1): the incident's count is its watermark (5)."""
    document = json.loads((FIXTURES / "go-resolution.json").read_text(encoding="utf-8"))
    annotations = document["check"]["metadata"].setdefault("annotations", {})
    annotations["sensu.io.json_attributes"] = json.dumps({"occurrences": threshold})
    event = parse_event(document)
    assert (event.action, event.occurrences, event.occurrences_watermark) == ("resolve", 1, 5)
    assert skip_reason(event, LEGACY) == expected
