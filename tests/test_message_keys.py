"""The message-shaping keys: how events, the configuration and routing read them.

``notify`` (also by severity), ``mentions``, ``card``, ``dashboard_url``,
``template`` (a name) and ``legacy_occurrences`` come from the check, the
client/entity, their Sensu Go annotations, contacts and the ``hipchat``
scope, with the precedence rooms have; the values land on each Target and
survive the spool.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hipchatd.config import ConfigError, load_config
from hipchatd.delivery.routing import route
from hipchatd.delivery.spool import SpoolError
from hipchatd.delivery.spool.sqlite import sql
from hipchatd.sensu.events import BySeverity, Overrides, Repeat, parse_event
from hipchatd.sensu.links import dashboard_link, dashboard_problem, mention_problem
from tests.factories import make_event, make_settings, make_target

TOKEN = "k" * 40
PREFIX = "sensu.io/plugins/hipchat/config/"


def classic(check: dict[str, Any] | None = None, client: dict[str, Any] | None = None) -> Any:
    return parse_event(
        {
            "client": {"name": "web-01", **(client or {})},
            "check": {"name": "check_http", "status": 2, "output": "down", **(check or {})},
            "action": "create",
            "occurrences": 1,
        }
    )


def go(check_ann: dict[str, str] | None = None, entity_ann: dict[str, str] | None = None) -> Any:
    check_meta: dict[str, Any] = {"name": "check_http"}
    entity_meta: dict[str, Any] = {"name": "web-01"}
    if check_ann is not None:
        check_meta["annotations"] = check_ann
    if entity_ann is not None:
        entity_meta["annotations"] = entity_ann
    return parse_event(
        {
            "entity": {"metadata": entity_meta},
            "check": {"metadata": check_meta, "status": 2, "output": "down", "occurrences": 7},
        }
    )


def load(tmp_path: Path, hipchat: dict[str, Any], **scopes: Any) -> Any:
    path = tmp_path / "hipchat.json"
    path.write_text(json.dumps({"hipchat": {"api_token": TOKEN, **hipchat}, **scopes}))
    return load_config([path], {}).config


def problem(tmp_path: Path, hipchat: dict[str, Any], **scopes: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, hipchat, **scopes)
    assert len(info.value.problems) == 1, info.value.problems
    return info.value.problems[0]


# --- events ----------------------------------------------------------------------------------


def test_a_check_hipchat_object_names_every_message_key() -> None:
    event = classic(
        {
            "hipchat": {
                "notify": {"critical": True, "warning": False},
                "mentions": {"critical": ["@all", "@oncall"]},
                "card": True,
                "dashboard_url": "https://sensu.example.com/{source}/{check}",
                "template": "disk",
                "legacy_occurrences": True,
            }
        }
    )
    assert event.check_overrides == Overrides(
        notify=BySeverity(critical=True, warning=False),
        mentions=BySeverity(critical="@all @oncall"),
        card=True,
        dashboard_url="https://sensu.example.com/{source}/{check}",
        template="disk",
        legacy_occurrences=True,
    )
    assert event.legacy_occurrences is True


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("notify", "yes"),
        ("notify", {"fatal": True}),
        ("mentions", {"critical": "all"}),
        ("mentions", {"critical": "@all; rm -rf"}),
        ("mentions", "@all"),
        ("card", "true"),
        ("dashboard_url", "javascript:alert(1)"),
        ("dashboard_url", "https://x.example/{secret}"),
        ("template", ["a", "b"]),
        ("legacy_occurrences", 1),
    ],
)
def test_a_bad_value_in_event_data_is_ignored(key: str, value: Any) -> None:
    assert classic({"hipchat": {key: value}}).check_overrides == Overrides()


def test_notify_by_severity_keeps_only_the_good_entries() -> None:
    event = classic({"hipchat": {"notify": {"critical": True, "warning": "no", "bogus": 1}}})
    assert event.check_overrides.notify == BySeverity(critical=True)


def test_go_annotations_name_message_keys_and_beat_the_json_attributes() -> None:
    attributes = {"hipchat": {"card": False, "template": "plain"}, "occurrences": 3}
    event = go(
        {
            "sensu.io.json_attributes": json.dumps(attributes),
            PREFIX + "notify": '{"critical": true}',
            PREFIX + "mentions": '{"critical": "@all"}',
            PREFIX + "card": "true",
            PREFIX + "dashboard_url": "https://s.example/n/{namespace}/{source}/{check}",
            PREFIX + "template": "disk",
            PREFIX + "legacy_occurrences": "true",
        },
        {PREFIX + "notify": "false"},
    )
    assert event.check_overrides == Overrides(
        notify=BySeverity(critical=True),
        mentions=BySeverity(critical="@all"),
        card=True,
        dashboard_url="https://s.example/n/{namespace}/{source}/{check}",
        template="disk",
        legacy_occurrences=True,
    )
    assert event.client_overrides == Overrides(notify=False)
    # Go's own check.occurrences (7) is a count; the threshold is the translated attribute.
    assert event.occurrences == 7
    assert event.repeat == Repeat(occurrences=3)


def test_go_repeat_threshold_is_never_the_occurrence_count() -> None:
    assert go().repeat == Repeat()


def test_classic_repeat_attributes_and_handle_when() -> None:
    event = classic({"occurrences": 3, "refresh": 600, "handle_when": {"occurrences": 2}})
    assert event.repeat == Repeat(occurrences=3, refresh=600, handle_when_given=True)
    assert classic({"occurrences": 0, "refresh": -1}).repeat == Repeat()
    # sensu-plugin read them with Ruby's to_i: a string of digits counts.
    assert classic({"occurrences": "3", "refresh": "600"}).repeat == Repeat(3, 600)
    assert classic({"occurrences": "3x", "refresh": "1e3"}).repeat == Repeat()


def test_client_is_the_client_name_even_for_a_proxy_check() -> None:
    event = classic({"source": "switch-7"})
    assert (event.source, event.client) == ("switch-7", "web-01")


# --- configuration ---------------------------------------------------------------------------


def test_the_scope_reads_every_message_key(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "notify": {"critical": True, "ok": False},
            "mentions": {"critical": "@all", "warning": ["@oncall", "@ops"]},
            "card": True,
            "dashboard_url": "https://uchiwa.example.com/#/client/dc1/{source}?check={check}",
            "legacy_occurrences": True,
            "templates": {"disk": "{{ output }}"},
        },
        contacts={"ops": {"hipchat": {"room": "ops", "template": "disk", "card": False}}},
    )
    settings = config.hipchat
    assert settings.notify == BySeverity(critical=True, ok=False)
    assert settings.mentions == BySeverity(critical="@all", warning="@oncall @ops")
    assert settings.card is True
    assert settings.legacy_occurrences is True
    assert config.contacts["ops"] == Overrides(room=("ops",), template="disk", card=False)


@pytest.mark.parametrize(
    ("hipchat", "expected"),
    [
        (
            {"notify": {"fatal": True}},
            'hipchat.notify: got {"fatal": true} (object): "fatal" (string) is not a severity;'
            ' expected true or false, or an object of severities, e.g. {"critical": true,',
        ),
        (
            {"mentions": {"critical": "all"}},
            'hipchat.mentions: got {"critical": "all"} (object): critical: \'all\' is not a'
            " mention; expected @ and a mention name, e.g. @all; expected an object of severities",
        ),
        (
            {"mentions": {"critical": 5}},
            'hipchat.mentions: got {"critical": 5} (object): critical: got 5 (number); expected',
        ),
        (
            {"dashboard_url": "https://s.example/{datacenter}/{source}"},
            'hipchat.dashboard_url: got "https://s.example/{datacenter}/{source}" (string):'
            " unknown placeholder {datacenter}; known: {source}, {check}, {namespace}, {client};"
            " expected an http(s) URL pattern",
        ),
        (
            {"card_icons": {"red": "https://i.example/r.png"}},
            'hipchat.card_icons: got {"red": "https://i.example/r.png"} (object): "red" (string)'
            " is not a status word; expected an object of status words",
        ),
        (
            {"card_icons": {"critical": "javascript:x"}},
            'critical: got "javascript:x" (string); an icon is an http(s) URL with a host',
        ),
        (
            {"card": True, "api_version": "v1"},
            'hipchat.card: got true with api_version "v1" from',
        ),
    ],
)
def test_a_bad_message_key_is_one_clear_problem(
    tmp_path: Path, hipchat: dict[str, Any], expected: str
) -> None:
    found = problem(tmp_path, hipchat)
    assert expected in found, found
    assert found.startswith(str(tmp_path / "hipchat.json"))


# --- routing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "notify", "mention"),
    [(2, True, "@all"), (1, False, "@oncall"), (3, False, None), (0, False, None)],
)
def test_notify_and_mentions_by_severity_resolve_per_event(
    status: int, notify: bool, mention: str | None
) -> None:
    settings = make_settings(
        notify=BySeverity(critical=True, warning=False),
        mentions=BySeverity(critical="@all", warning="@oncall"),
    )
    action = "resolve" if status == 0 else "create"
    (target,) = route(make_event(status=status, action=action), settings, {})
    assert (target.notify, target.mention) == (notify, mention)


def test_the_most_specific_source_that_names_a_key_decides_for_every_severity() -> None:
    check = Overrides(notify=BySeverity(critical=True), mentions=BySeverity(critical="@here"))
    settings = make_settings(
        notify=True, mentions=BySeverity(warning="@oncall"), card=True, dashboard_url="https://d/"
    )
    (target,) = route(make_event(status=1, check_overrides=check), settings, {})
    # The check's maps name no warning: no notify, no mention, whatever the settings say.
    assert (target.notify, target.mention) == (False, None)
    assert (target.card, target.dashboard_url, target.template) == (True, "https://d/", None)


def test_check_then_client_then_contact_then_settings_for_message_keys() -> None:
    contacts = {"ops": Overrides(room=("ops",), card=False, template="contact", dashboard_url="c")}
    client = Overrides(template="client")
    event = make_event(contacts=("ops",), client_overrides=client)
    (target,) = route(event, make_settings(card=True), contacts)
    assert (target.name, target.card, target.template, target.dashboard_url) == (
        "ops",
        False,
        "client",
        "c",
    )


# --- the spool keeps them --------------------------------------------------------------------


def test_targets_round_trip_through_the_spool_encoding() -> None:
    plain = make_target()
    shaped = make_target(
        mention="@all", card=True, dashboard_url="https://d/{check}", template="disk"
    )
    for target in (plain, shaped):
        assert sql._decode_target(sql._encode_target(target)) == target
    # Unset keys are not stored: a spool written before they existed reads the same.
    assert "card" not in json.loads(sql._encode_target(plain))


def test_a_target_with_a_bad_message_key_is_unreadable() -> None:
    text = json.dumps({**json.loads(sql._encode_target(make_target())), "card": "yes"})
    with pytest.raises(SpoolError, match="unreadable target"):
        sql._decode_target(text)


# --- links -----------------------------------------------------------------------------------


def test_dashboard_link_percent_encodes_each_value() -> None:
    event = make_event(source="rack 1/web#01", check="disk?/&", namespace="prod ns", client="c")
    pattern = "https://sensu.example.com/c/~/n/{namespace}/events/{source}/{check}?c={client}"
    assert dashboard_link(pattern, event) == (
        "https://sensu.example.com/c/~/n/prod%20ns/events/rack%201%2Fweb%2301/disk%3F%2F%26?c=c"
    )
    assert dashboard_link("https://u/{{x}}/{namespace}", make_event()) == "https://u/{x}/default"


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("https://u/{source", "unbalanced braces"),
        ("https://u/{source!r}", "takes no format spec"),
        ("https://u/{check:>9}", "takes no format spec"),
        ("ftp://u/{check}", "expected an http(s) URL"),
        ("/relative/{check}", "expected an http(s) URL"),
        ("https://u/ {check}", "whitespace"),
        ("https://u/" + "x" * 2_000, "at most 2000"),
    ],
)
def test_dashboard_problem_says_what_is_wrong(pattern: str, why: str) -> None:
    problem_text = dashboard_problem(pattern)
    assert problem_text is not None
    assert why in problem_text


@pytest.mark.parametrize(
    ("value", "ok"),
    [("@all", True), ("@all @oncall", True), ("@a.b-c_d", True), ("all", False), ("@", False)],
)
def test_mention_problem(value: str, ok: bool) -> None:
    assert (mention_problem(value) is None) is ok
    assert mention_problem(" ".join(["@x"] * 21)) == "21 mentions; at most 20"
