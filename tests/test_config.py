"""config: Sensu-style JSON files -> one validated, frozen Config, or every problem at once."""

from __future__ import annotations

import ipaddress
import json
import os
import threading
from pathlib import Path
from typing import Any

import certifi
import pytest

from hipchatd.config import (
    DEFAULT_PORT,
    MAX_CONFIG_DEPTH,
    MAX_INTEGER_DIGITS,
    Config,
    ConfigError,
    DaemonSettings,
    HipChatSettings,
    Listen,
    LoadResult,
    Secret,
    load_config,
)
from hipchatd.sensu.events import Overrides

#: distinctive, so a leak anywhere in a message is found by a substring search.
TOKEN = "tok-5e7c3a9b1f04d2e8-never-print-me"
MISSING_TOKEN = (
    "hipchat.api_token: missing; expected a string in the hipchat scope,"
    " or HIPCHAT_API_TOKEN, or $CREDENTIALS_DIRECTORY/hipchat_api_token"
)


def write(path: Path, document: Any) -> Path:
    """Write ``document`` as JSON (or a str as is) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def with_token(**hipchat: Any) -> dict[str, Any]:
    return {"hipchat": {"api_token": TOKEN, **hipchat}}


def load(*paths: Path, env: dict[str, str] | None = None, **kwargs: Any) -> LoadResult:
    return load_config(list(paths), env or {}, **kwargs)


def problems(*paths: Path, env: dict[str, str] | None = None) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        load(*paths, env=env)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def one_problem(*paths: Path, env: dict[str, str] | None = None) -> str:
    found = problems(*paths, env=env)
    assert len(found) == 1, found
    return found[0]


# -- defaults and good values ----------------------------------------------------


def test_only_a_token_gives_every_default(tmp_path: Path) -> None:
    path = write(tmp_path / "hipchat.json", with_token())
    result = load(path)
    assert result.config == Config(
        hipchat=HipChatSettings(api_token=Secret(TOKEN)),
        daemon=DaemonSettings(),
        contacts={},
        sources=(str(path),),
    )
    assert result.warnings == ()
    assert result.config.daemon.tcp == Listen("127.0.0.1", DEFAULT_PORT)
    assert result.config.hipchat.room == ("sensu",)
    assert result.config.hipchat.severities == {"warning", "critical", "unknown"}


def test_every_key_accepts_a_good_value(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(Path(certifi.where()).read_bytes())
    path = write(
        tmp_path / "all.json",
        {
            "hipchat": {
                "api_token": TOKEN,
                "server_url": "https://hipchat.example.com/prefix/",
                "api_version": "v1",
                "username": "monitoring",
                "room": ["ops", "dev"],
                "notify": True,
                "timeout": 2.5,
                "message_format": "text",
                "severities": ["ok", "critical"],
                "handle_silenced": True,
                "ca_file": str(ca),
            },
            "hipchatd": {
                "tcp": {"host": "0.0.0.0", "port": 4444},
                "udp": {"host": "::1", "port": 0},
                "framing": "length",
                "max_frame_bytes": 1024,
                "idle_timeout": 5,
                "max_connections": 1,
                "queue_size": 7,
                "concurrency": 3,
                "allow_from": ["10.1.2.3/8", "192.0.2.7", "::1", "2001:db8::/32"],
                "max_targets_per_event": 5,
            },
        },
    )
    result = load(path)
    assert result.warnings == ()
    assert result.config.hipchat == HipChatSettings(
        api_token=Secret(TOKEN),
        server_url="https://hipchat.example.com/prefix",
        api_version="v1",
        username="monitoring",
        room=("ops", "dev"),
        notify=True,
        timeout=2.5,
        message_format="text",
        severities=frozenset({"ok", "critical"}),
        handle_silenced=True,
        ca_file=str(ca),
    )
    assert result.config.daemon == DaemonSettings(
        tcp=Listen("0.0.0.0", 4444),
        udp=Listen("::1", 0),
        framing="length",
        max_frame_bytes=1024,
        idle_timeout=5.0,
        max_connections=1,
        queue_size=7,
        concurrency=3,
        allow_from=(
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("192.0.2.7/32"),
            ipaddress.ip_network("::1/128"),
            ipaddress.ip_network("2001:db8::/32"),
        ),
        max_targets_per_event=5,
    )
    assert isinstance(result.config.daemon.idle_timeout, float)


def test_room_string_becomes_a_one_room_tuple_and_user_is_kept_with_v2(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", with_token(room="Operations", user="ops@example.com"))
    settings = load(path).config.hipchat
    assert settings.room == ("Operations",)
    assert settings.user == "ops@example.com"


def test_listen_object_fills_in_host_and_port(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.json",
        {**with_token(), "hipchatd": {"tcp": {"port": 5555}, "udp": {"host": "10.0.0.1"}}},
    )
    daemon = load(path).config.daemon
    assert daemon.tcp == Listen("127.0.0.1", 5555)
    assert daemon.udp == Listen("10.0.0.1", DEFAULT_PORT)


def test_empty_severities_list_is_allowed(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", with_token(severities=[]))
    assert load(path).config.hipchat.severities == frozenset()


# -- bad values: file, key path, value, expectation ----------------------------------

BAD_VALUES = [
    # (scope, key, value, how the value is shown, a piece of the expectation)
    ("hipchat", "server_url", 42, "42 (number)", "an http(s) URL with a host"),
    ("hipchat", "server_url", "ftp://h.example", '"ftp://h.example" (string)', "http(s) URL"),
    ("hipchat", "server_url", "https://", '"https://" (string)', "with a host"),
    ("hipchat", "server_url", "hipchat.example.com", '"hipchat.example.com" (string)', "URL"),
    ("hipchat", "api_version", "v3", '"v3" (string)', 'one of "v1", "v2"'),
    ("hipchat", "api_version", 2, "2 (number)", 'one of "v1", "v2"'),
    ("hipchat", "username", "", '"" (string)', "a non-empty string"),
    ("hipchat", "username", ["sensu"], '["sensu"] (list)', "a non-empty string"),
    ("hipchat", "room", [], "[] (list)", "a room name or a non-empty list of room names"),
    ("hipchat", "room", 12345, "12345 (number)", "a room name or a non-empty list"),
    ("hipchat", "room", ["ops", ""], '["ops", ""] (list)', "non-empty list of room names"),
    ("hipchat", "room", ["ops", 7], '["ops", 7] (list)', "non-empty list of room names"),
    ("hipchat", "notify", "true", '"true" (string)', "true or false"),
    ("hipchat", "notify", 1, "1 (number)", "true or false"),
    ("hipchat", "timeout", "ten", '"ten" (string)', "a number of seconds > 0"),
    ("hipchat", "timeout", 0, "0 (number)", "a number of seconds > 0"),
    ("hipchat", "timeout", -1.5, "-1.5 (number)", "a number of seconds > 0"),
    ("hipchat", "timeout", True, "true (boolean)", "a number of seconds > 0"),
    ("hipchat", "message_format", "markdown", '"markdown" (string)', 'one of "html", "text"'),
    ("hipchat", "severities", ["warning", "fatal"], '["warning", "fatal"] (list)', '"unknown"'),
    ("hipchat", "severities", "critical", '"critical" (string)', 'a list of "ok", "warning"'),
    ("hipchat", "handle_silenced", "yes", '"yes" (string)', "true or false"),
    ("hipchat", "user", "", '"" (string)', "a non-empty string"),
    ("hipchat", "ca_file", 5, "5 (number)", "the path of a readable PEM file"),
    ("hipchatd", "tcp", "127.0.0.1:3033", '"127.0.0.1:3033" (string)', "or null to disable"),
    ("hipchatd", "udp", 3033, "3033 (number)", '{"host": string, "port": integer}'),
    ("hipchatd", "framing", "lines", '"lines" (string)', 'one of "auto", "eof", "newline"'),
    ("hipchatd", "max_frame_bytes", 1023, "1023 (number)", "an integer >= 1024"),
    ("hipchatd", "max_frame_bytes", 2048.5, "2048.5 (number)", "an integer >= 1024"),
    ("hipchatd", "idle_timeout", 0, "0 (number)", "a number of seconds > 0"),
    ("hipchatd", "idle_timeout", "30s", '"30s" (string)', "a number of seconds > 0"),
    ("hipchatd", "max_connections", 0, "0 (number)", "an integer >= 1"),
    ("hipchatd", "queue_size", True, "true (boolean)", "an integer >= 1"),
    ("hipchatd", "concurrency", "4", '"4" (string)', "an integer >= 1"),
    ("hipchatd", "concurrency", None, "null", "an integer >= 1"),
    ("hipchatd", "max_targets_per_event", 0, "0 (number)", "an integer >= 1"),
    ("hipchatd", "allow_from", [], "[] (list)", "a list of IP addresses or networks"),
    ("hipchatd", "allow_from", 10, "10 (number)", "a list of IP addresses or networks"),
]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (["10.0.0.0/8", "ops.example.com"], '"ops.example.com" (string) is not an IP address'),
        (["10.0.0.0/33"], '"10.0.0.0/33" (string) is not an IP address or network'),
        ([10], "10 (number) is not a string"),
    ],
)
def test_a_bad_allow_from_entry_is_named(tmp_path: Path, value: Any, why: str) -> None:
    path = write(tmp_path / "d.json", {**with_token(), "hipchatd": {"allow_from": value}})
    line = one_problem(path)
    assert line.startswith(f"{path}: hipchatd.allow_from: got ")
    assert why in line


def test_more_rooms_than_max_targets_per_event_warns_with_the_fix(tmp_path: Path) -> None:
    path = write(
        tmp_path / "rooms.json",
        {
            "hipchat": {"api_token": TOKEN, "room": ["a", "b", "c"]},
            "hipchatd": {"max_targets_per_event": 2},
            "contacts": {"ops": {"hipchat": {"room": ["x", "y"]}}},
        },
    )
    result = load(path)
    assert result.warnings == (
        f"{path}: hipchat.room: 3 rooms, but hipchatd.max_targets_per_event is 2:"
        " an event routed here notifies only the first 2; raise the limit to at least 3",
    )


def test_allow_from_may_be_one_string_and_defaults_to_any_peer(tmp_path: Path) -> None:
    one = write(tmp_path / "one.json", {**with_token(), "hipchatd": {"allow_from": "::1"}})
    assert load(one).config.daemon.allow_from == (ipaddress.ip_network("::1"),)
    default = write(tmp_path / "default.json", with_token())
    assert load(default).config.daemon.allow_from is None


@pytest.mark.parametrize(("scope", "key", "value", "shown", "expected"), BAD_VALUES)
def test_a_bad_value_names_file_key_value_and_expectation(
    tmp_path: Path, scope: str, key: str, value: Any, shown: str, expected: str
) -> None:
    document = with_token()
    document.setdefault(scope, {})[key] = value
    path = write(tmp_path / "bad.json", document)
    line = one_problem(path)
    assert line.startswith(f"{path}: {scope}.{key}: got {shown}; expected ")
    assert expected in line.partition("; expected ")[2]


@pytest.mark.parametrize(
    ("listen", "key", "shown", "expected"),
    [
        ({"port": 70000}, "port", "70000 (number)", "an integer from 0 to 65535"),
        ({"port": -1}, "port", "-1 (number)", "an integer from 0 to 65535"),
        ({"port": "3033"}, "port", '"3033" (string)', "an integer from 0 to 65535"),
        ({"port": 3033.0}, "port", "3033.0 (number)", "an integer from 0 to 65535"),
        ({"host": ""}, "host", '"" (string)', "a host name or IP address"),
        ({"host": None}, "host", "null", "a host name or IP address"),
    ],
)
def test_a_bad_listen_field_is_named_by_its_full_path(
    tmp_path: Path, listen: dict[str, Any], key: str, shown: str, expected: str
) -> None:
    path = write(tmp_path / "d.json", {**with_token(), "hipchatd": {"udp": listen}})
    line = one_problem(path)
    assert line.startswith(f"{path}: hipchatd.udp.{key}: got {shown}; expected ")
    assert line.endswith(expected)


def test_a_url_with_a_query_is_rejected_with_the_reason(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", with_token(server_url="https://h.example/?x=1"))
    line = one_problem(path)
    assert line.startswith(f'{path}: hipchat.server_url: got "https://h.example/?x=1" (string): ')
    assert "query" in line


def test_a_long_bad_value_is_cut_short(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", with_token(username=["x" * 500]))
    line = one_problem(path)
    assert "x" * 500 not in line
    assert "…" in line


def test_a_scope_that_is_not_an_object_is_a_problem_showing_only_its_type(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", {"hipchat": TOKEN})
    found = problems(path)
    assert f"{path}: hipchat: got a string; expected an object" in found
    assert not any(TOKEN in line for line in found)


# -- the token ------------------------------------------------------------------------


def test_missing_token_without_files(tmp_path: Path) -> None:
    assert one_problem() == f"(no configuration files): {MISSING_TOKEN}"


def test_missing_token_names_the_files_read(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", {"hipchat": {"room": "ops"}})
    b = write(tmp_path / "b.json", {"checks": {}})
    assert one_problem(a, b) == f"{a}, {b}: {MISSING_TOKEN}"


def test_a_token_of_the_wrong_type_shows_its_type_never_its_value(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", {"hipchat": {"api_token": 98765432123456789}})
    line = one_problem(path)
    assert line == (
        f"{path}: hipchat.api_token: got a number (value hidden); expected a non-empty string"
    )
    assert "98765432123456789" not in line


def test_an_empty_token_in_a_file_is_a_problem_not_a_fallback(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", {"hipchat": {"api_token": ""}})
    with pytest.raises(ConfigError) as info:
        load(path, env={"HIPCHAT_API_TOKEN": TOKEN})
    assert info.value.problems == (
        f"{path}: hipchat.api_token: got a string (value hidden); expected a non-empty string",
    )
    assert info.value.warnings == (
        f"HIPCHAT_API_TOKEN: ignored; using hipchat.api_token from {path}",
    )


def test_token_from_the_environment(tmp_path: Path) -> None:
    result = load(env={"HIPCHAT_API_TOKEN": TOKEN})
    assert result.config.hipchat.api_token == Secret(TOKEN)
    assert result.warnings == ()


def test_an_empty_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    assert one_problem(env={"HIPCHAT_API_TOKEN": ""}).endswith(MISSING_TOKEN)


def test_token_from_the_credentials_directory_loses_its_trailing_newline(tmp_path: Path) -> None:
    write(tmp_path / "creds" / "hipchat_api_token", TOKEN + "\n")
    result = load(env={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    assert result.config.hipchat.api_token.reveal() == TOKEN


def test_an_empty_credential_file_is_a_problem(tmp_path: Path) -> None:
    credential = write(tmp_path / "creds" / "hipchat_api_token", "\n")
    line = one_problem(env={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    assert line == f"{credential}: empty; expected the HipChat API token"


def test_a_credential_that_is_a_fifo_is_refused_without_waiting_for_a_writer(
    tmp_path: Path,
) -> None:
    (tmp_path / "creds").mkdir()
    fifo = tmp_path / "creds" / "hipchat_api_token"
    os.mkfifo(fifo)
    line = one_problem(env={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    assert line == (
        f"{fifo}: a FIFO (named pipe), not a regular file;"
        " expected a file holding the HipChat API token"
    )


def test_a_credentials_directory_without_our_file_falls_back_to_the_environment(
    tmp_path: Path,
) -> None:
    (tmp_path / "creds").mkdir()
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds"), "HIPCHAT_API_TOKEN": TOKEN}
    assert load(env=env).config.hipchat.api_token == Secret(TOKEN)


def test_credential_file_beats_the_environment_and_says_so(tmp_path: Path) -> None:
    credential = write(tmp_path / "creds" / "hipchat_api_token", "from-credential\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds"), "HIPCHAT_API_TOKEN": "from-env"}
    result = load(env=env)
    assert result.config.hipchat.api_token == Secret("from-credential")
    assert result.warnings == (f"HIPCHAT_API_TOKEN: ignored; using {credential}",)


def test_config_file_beats_credential_and_environment_and_says_so(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", with_token())
    credential = write(tmp_path / "creds" / "hipchat_api_token", "from-credential")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds"), "HIPCHAT_API_TOKEN": "from-env"}
    result = load(path, env=env)
    assert result.config.hipchat.api_token == Secret(TOKEN)
    assert result.warnings == (
        f"{credential}: ignored; using hipchat.api_token from {path}",
        f"HIPCHAT_API_TOKEN: ignored; using hipchat.api_token from {path}",
    )


def test_the_environment_token_loses_surrounding_whitespace(tmp_path: Path) -> None:
    # As left by `export HIPCHAT_API_TOKEN="$(cat file)"` of a file written by echo, or a paste.
    result = load(env={"HIPCHAT_API_TOKEN": f" \t{TOKEN}\r\n"})
    assert result.config.hipchat.api_token.reveal() == TOKEN


def test_a_whitespace_only_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    assert one_problem(env={"HIPCHAT_API_TOKEN": " \n"}).endswith(MISSING_TOKEN)


def test_a_credential_file_loses_surrounding_whitespace(tmp_path: Path) -> None:
    write(tmp_path / "creds" / "hipchat_api_token", f"  {TOKEN} \r\n\n")
    result = load(env={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    assert result.config.hipchat.api_token.reveal() == TOKEN


_UNSENDABLE = [
    ("tok en-5e7c3a9b1f04", "whitespace at character 4 of 19"),
    ("tok\nen-5e7c3a9b1f04", "whitespace at character 4 of 19"),
    ("tok\x00en-5e7c3a9b1f04", "a control character at character 4 of 19"),
    ("tok\x7fen-5e7c3a9b1f04", "a control character at character 4 of 19"),
    ("tok\x85en-5e7c3a9b1f04", "whitespace at character 4 of 19"),
    ("tokén-5e7c3a9b1f04x", "a non-ASCII character at character 4 of 19"),
    ("tok\u20acn-5e7c3a9b1f04x", "a non-ASCII character at character 4 of 19"),
    ("tok\ud800n-5e7c3a9b1f04x", "a non-ASCII character at character 4 of 19"),
]
_EXPECTED_CHARS = "expected printable ASCII without spaces, as HipChat issues them"


@pytest.mark.parametrize(("token", "what"), _UNSENDABLE)
def test_a_token_that_cannot_go_in_a_header_is_refused_from_the_environment(
    token: str, what: str
) -> None:
    line = one_problem(env={"HIPCHAT_API_TOKEN": token})
    assert line == f"HIPCHAT_API_TOKEN: the token (value hidden) contains {what}; {_EXPECTED_CHARS}"
    assert "5e7c3a9b1f04" not in line


@pytest.mark.parametrize(("token", "what"), _UNSENDABLE)
def test_a_token_that_cannot_go_in_a_header_is_refused_from_a_file(
    tmp_path: Path, token: str, what: str
) -> None:
    path = write(tmp_path / "a.json", json.dumps({"hipchat": {"api_token": token}}))
    line = one_problem(path)
    assert line == (
        f"{path}: hipchat.api_token: the token (value hidden) contains {what}; {_EXPECTED_CHARS}"
    )
    assert "5e7c3a9b1f04" not in line


def test_a_token_that_cannot_go_in_a_header_is_refused_from_a_credential(
    tmp_path: Path,
) -> None:
    credential = write(tmp_path / "creds" / "hipchat_api_token", "tok\x01en-5e7c3a9b1f04\n")
    line = one_problem(env={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    assert line == (
        f"{credential}: the token (value hidden) contains a control character"
        f" at character 4 of 19; {_EXPECTED_CHARS}"
    )


def test_a_file_token_with_a_trailing_newline_is_refused_not_trimmed(tmp_path: Path) -> None:
    # JSON makes whitespace deliberate, so say so rather than guess.
    path = write(tmp_path / "a.json", with_token(api_token=TOKEN + "\n"))
    assert one_problem(path).startswith(
        f"{path}: hipchat.api_token: the token (value hidden) contains whitespace at character"
    )


def test_require_token_false_still_rejects_an_unsendable_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="contains a non-ASCII character"):
        load(env={"HIPCHAT_API_TOKEN": "tokén-5e7c"}, require_token=False)


def test_require_token_false_allows_a_missing_token(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", {"hipchat": {"room": "ops"}})
    settings = load(path, require_token=False).config.hipchat
    assert settings.api_token == Secret("")
    assert not settings.api_token


def test_require_token_false_still_rejects_a_bad_token(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", {"hipchat": {"api_token": 5}})
    with pytest.raises(ConfigError, match=r"hipchat\.api_token: got a number"):
        load(path, require_token=False)


def test_secret_hides_in_repr_and_str_of_the_whole_config(tmp_path: Path) -> None:
    result = load(write(tmp_path / "a.json", with_token()))
    token = result.config.hipchat.api_token
    assert token.reveal() == TOKEN
    assert repr(token) == str(token) == "Secret('**********')"
    assert TOKEN not in repr(result)
    assert TOKEN not in str(result.config)


def test_the_token_appears_in_no_problem_and_no_warning(tmp_path: Path) -> None:
    a = write(
        tmp_path / "conf.d" / "10-a.json",
        {
            "hipchat": {
                "api_token": TOKEN,
                "server_url": "http://hipchat.example.com",
                "api_tokne": TOKEN,
                "timeout": "soon",
            },
            "hipchatd": {"tcp": None, "udp": None},
            "contacts": {"ops": {"hipchat": {"room": ""}}},
        },
    )
    write(tmp_path / "creds" / "hipchat_api_token", TOKEN)
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds"), "HIPCHAT_API_TOKEN": TOKEN}
    with pytest.raises(ConfigError) as info:
        load(a.parent, env=env)
    text = str(info.value)
    assert len(info.value.problems) == 3  # timeout, room, both null
    assert len(info.value.warnings) >= 2  # x, the shadowed token sources
    assert TOKEN not in "\n".join(info.value.warnings)
    assert TOKEN not in text
    # and when the same files load, the warnings are clean too
    write(a, {"hipchat": {"api_token": TOKEN, "server_url": "http://h.example", "x": TOKEN}})
    result = load(a.parent, env=env)
    assert len(result.warnings) == 4
    assert not any(TOKEN in warning for warning in result.warnings)


# -- files, directories and merging --------------------------------------------------


def test_a_directory_is_read_in_name_order_and_merged_deeply(tmp_path: Path) -> None:
    conf = tmp_path / "conf.d"
    # created in reverse so that name order, not creation order, must decide
    b = write(
        conf / "20-b.json",
        {"hipchat": {"room": ["dev"], "timeout": 3}, "hipchatd": {"tcp": {"port": 4000}}},
    )
    a = write(
        conf / "10-a.json",
        {
            **with_token(room=["ops", "sre"], timeout=20, notify=True),
            "hipchatd": {"tcp": {"host": "0.0.0.0", "port": 3999}},
        },
    )
    write(conf / "README.md", "not json at all")
    write(conf / "nested" / "99-z.json", {"hipchat": {"timeout": 99}})
    config = load(conf).config
    assert config.sources == (str(a), str(b))
    assert config.hipchat.timeout == 3.0
    assert config.hipchat.notify is True
    # a later list replaces, never concatenates
    assert config.hipchat.room == ("dev",)
    # one nested key overridden, its sibling kept
    assert config.daemon.tcp == Listen("0.0.0.0", 4000)


def test_paths_are_merged_in_the_order_given(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", with_token(username="first"))
    b = write(tmp_path / "b.json", {"hipchat": {"username": "second"}})
    assert load(b, a).config.hipchat.username == "first"
    assert load(a, b).config.hipchat.username == "second"


def test_an_object_replaced_by_null_disables_and_names_the_later_file(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", {**with_token(), "hipchatd": {"tcp": {"port": 1}}})
    b = write(tmp_path / "b.json", {"hipchatd": {"tcp": None, "udp": None}})
    line = one_problem(a, b)
    assert line == f"{b}: hipchatd.tcp, hipchatd.udp: both null; expected at least one listener"


def test_a_bad_value_overridden_later_is_no_problem(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", with_token(timeout="ten"))
    b = write(tmp_path / "b.json", {"hipchat": {"timeout": 10}})
    assert load(a, b).config.hipchat.timeout == 10.0


def test_each_problem_names_the_file_that_set_that_key(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", {**with_token(notify="yes"), "hipchatd": {"tcp": {"port": 1}}})
    b = write(tmp_path / "b.json", {"hipchatd": {"tcp": {"port": "2"}}})
    assert set(problems(a, b)) == {
        f'{a}: hipchat.notify: got "yes" (string); expected true or false,'
        ' or an object of severities, e.g. {"critical": true, "ok": false}',
        f'{b}: hipchatd.tcp.port: got "2" (string); expected an integer from 0 to 65535',
    }


def test_other_sensu_scopes_are_ignored_silently(tmp_path: Path) -> None:
    conf = tmp_path / "conf.d"
    write(conf / "hipchat.json", with_token())
    write(
        conf / "handlers.json",
        {
            "handlers": {
                "hipchatd": {
                    "type": "tcp",
                    "timeout": 10,
                    "socket": {"host": "127.0.0.1", "port": 3033},
                    "severities": ["critical"],
                }
            }
        },
    )
    write(
        conf / "checks.json",
        {
            "checks": {
                "check_disk": {
                    "command": "check-disk-usage.rb -w 80 -c 90",
                    "subscribers": ["base"],
                    "interval": 60,
                    "handlers": ["hipchatd"],
                    "contacts": ["ops"],
                }
            }
        },
    )
    write(
        conf / "client.json",
        {
            "client": {"name": "web-01", "address": "10.0.0.5", "subscriptions": ["base"]},
            "transport": {"name": "redis"},
            "api": {"host": "localhost", "port": 4567},
            "slack": "not even an object",
        },
    )
    result = load(conf)
    assert result.warnings == ()
    assert result.config.hipchat == HipChatSettings(api_token=Secret(TOKEN))
    assert len(result.config.sources) == 4


def test_an_empty_directory_is_fine(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    result = load(tmp_path / "conf.d", env={"HIPCHAT_API_TOKEN": TOKEN})
    assert result.config.sources == ()


def test_a_missing_path_is_a_problem(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    assert f"{missing}: no such file or directory" in problems(missing)


def test_invalid_json_names_the_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.json", '{\n  "hipchat": {\n    "room": "ops",\n  }\n}\n')
    found = problems(path, env={"HIPCHAT_API_TOKEN": TOKEN})
    assert len(found) == 1
    assert found[0].startswith(f"{path}:4:3: invalid JSON: ")


@pytest.mark.parametrize(("text", "kind"), [("[1, 2]", "a list"), ('"hi"', "a string")])
def test_a_document_that_is_not_an_object_is_a_problem(
    tmp_path: Path, text: str, kind: str
) -> None:
    path = write(tmp_path / "a.json", text)
    line = one_problem(path, env={"HIPCHAT_API_TOKEN": TOKEN})
    assert line == f"{path}: got {kind} at the top level; expected a JSON object"


def test_a_file_that_is_not_utf8_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_bytes(b'{"hipchat": {"room": "\xff"}}')
    line = one_problem(path, env={"HIPCHAT_API_TOKEN": TOKEN})
    assert line.startswith(f"{path}: not UTF-8 text")


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(with_token()).encode())
    assert load(path).config.hipchat.api_token == Secret(TOKEN)


def test_a_path_through_a_file_is_a_problem_naming_the_os_error(tmp_path: Path) -> None:
    bogus = write(tmp_path / "a.json", with_token()) / "b.json"
    assert one_problem(bogus) == f"{bogus}: cannot read: Not a directory"


def test_an_unreadable_file_is_not_also_blamed_for_a_missing_token(tmp_path: Path) -> None:
    broken = write(tmp_path / "secret.json", '{"hipchat": {"api_token": ')
    assert not any("missing" in line for line in problems(broken))


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    broken = write(tmp_path / "0-broken.json", "{")
    a = write(tmp_path / "1-a.json", with_token(timeout=-1, api_version="v9"))
    b = write(tmp_path / "2-b.json", {"hipchatd": {"framing": "xml"}})
    found = problems(broken, a, b, tmp_path / "missing.json")
    assert len(found) == 5
    assert any(line.startswith(f"{broken}:1:2: invalid JSON") for line in found)
    assert any(line.startswith(f"{a}: hipchat.timeout: got -1 (number)") for line in found)
    assert any(line.startswith(f'{a}: hipchat.api_version: got "v9"') for line in found)
    assert any(line.startswith(f'{b}: hipchatd.framing: got "xml"') for line in found)
    assert f"{tmp_path / 'missing.json'}: no such file or directory" in found


# -- warnings -------------------------------------------------------------------------


def test_an_unknown_key_warns_with_the_nearest_known_key(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.json",
        {
            **with_token(romo="ops"),
            "hipchatd": {"max_conections": 5, "tcp": {"prot": 1}, "flux_capacitor": 1},
        },
    )
    result = load(path)
    assert set(result.warnings) == {
        f'{path}: hipchat.romo: unknown key; did you mean "room"?',
        f'{path}: hipchatd.max_conections: unknown key; did you mean "max_connections"?',
        f'{path}: hipchatd.tcp.prot: unknown key; did you mean "port"?',
        f"{path}: hipchatd.flux_capacitor: unknown key; ignored",
    }
    assert result.config.hipchat.room == ("sensu",)


def test_community_plugin_keys_point_at_ours(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", with_token(apikey="x", apiversion="v1", **{"from": "me"}))
    assert set(load(path).warnings) == {
        f'{path}: hipchat.apikey: unknown key; did you mean "api_token"?',
        f'{path}: hipchat.apiversion: unknown key; did you mean "api_version"?',
        f'{path}: hipchat.from: unknown key; did you mean "username"?',
    }


def test_a_misspelt_token_key_explains_the_missing_token(tmp_path: Path) -> None:
    """The unknown key travels with the problem, as a warning, not as another problem."""
    path = write(tmp_path / "a.json", {"hipchat": {"api_tokne": TOKEN}})
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == (f"{path}: {MISSING_TOKEN}",)
    assert info.value.warnings == (
        f'{path}: hipchat.api_tokne: unknown key; did you mean "api_token"?',
    )


def test_plain_http_warns_that_the_token_travels_in_clear_text(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", with_token(server_url="http://hipchat.internal:8080/"))
    result = load(path)
    assert result.config.hipchat.server_url == "http://hipchat.internal:8080"
    (warning,) = result.warnings
    assert warning.startswith(f"{path}: hipchat.server_url: ")
    assert "clear text" in warning


def test_https_does_not_warn(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", with_token(server_url="https://hipchat.internal"))
    assert load(path).warnings == ()


# -- contacts -------------------------------------------------------------------------


def test_contacts_hipchat_objects_become_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path / "contacts.json",
        {
            **with_token(),
            "contacts": {
                "ops": {
                    "hipchat": {
                        "room": "Operations",
                        "notify": True,
                        "username": "ops-bot",
                        "message_format": "text",
                    },
                    "email": {"to": "ops@example.com"},
                },
                "dev": {"hipchat": {"room": ["dev", "dev-alerts"]}, "slack": {"channel": "#d"}},
                "support": {"email": {"to": "support@example.com"}},
            },
        },
    )
    result = load(path)
    assert result.warnings == ()
    assert dict(result.config.contacts) == {
        "ops": Overrides(
            room=("Operations",), notify=True, username="ops-bot", message_format="text"
        ),
        "dev": Overrides(room=("dev", "dev-alerts")),
        "support": Overrides(),
    }


def test_contacts_merge_across_files(tmp_path: Path) -> None:
    a = write(
        tmp_path / "a.json", {**with_token(), "contacts": {"ops": {"hipchat": {"room": "a"}}}}
    )
    b = write(tmp_path / "b.json", {"contacts": {"ops": {"hipchat": {"notify": True}}}})
    assert load(a, b).config.contacts["ops"] == Overrides(room=("a",), notify=True)


def test_bad_contacts_are_problems_with_full_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path / "contacts.json",
        {
            **with_token(),
            "contacts": {
                "ops": {"hipchat": {"room": [], "notify": "yes", "romo": "x"}},
                "dev": "dev-room",
                "qa": {"hipchat": ["qa"]},
            },
        },
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    found = info.value.problems
    assert f"{path}: contacts.ops.hipchat.room: got [] (list); expected " in found[0]
    assert found[1].startswith(f'{path}: contacts.ops.hipchat.notify: got "yes" (string);')
    assert found[2].startswith(f'{path}: contacts.dev: got "dev-room" (string); expected an object')
    assert found[3].startswith(f'{path}: contacts.qa.hipchat: got ["qa"] (list); expected an obj')
    assert len(found) == 4
    assert info.value.warnings == (
        f'{path}: contacts.ops.hipchat.romo: unknown key; did you mean "room"?',
    )


def test_contacts_scope_must_be_an_object(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", {**with_token(), "contacts": ["ops"]})
    assert one_problem(path).startswith(f'{path}: contacts: got ["ops"] (list); expected an obj')


def test_contacts_mapping_is_read_only(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", {**with_token(), "contacts": {"ops": {}}})
    contacts = load(path).config.contacts
    with pytest.raises(TypeError):
        contacts["dev"] = Overrides()  # type: ignore[index]


# -- listeners --------------------------------------------------------------------


def test_tcp_null_disables_tcp_only(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", {**with_token(), "hipchatd": {"tcp": None}})
    daemon = load(path).config.daemon
    assert daemon.tcp is None
    assert daemon.udp == Listen("127.0.0.1", DEFAULT_PORT)


def test_both_listeners_null_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", {**with_token(), "hipchatd": {"tcp": None, "udp": None}})
    line = one_problem(path)
    assert line == f"{path}: hipchatd.tcp, hipchatd.udp: both null; expected at least one listener"


# -- rules across keys -------------------------------------------------------------


def test_user_with_api_v1_is_a_problem(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", with_token(user="ops@example.com"))
    b = write(tmp_path / "b.json", {"hipchat": {"api_version": "v1"}})
    line = one_problem(a, b)
    assert line.startswith(f'{a}: hipchat.user: got "ops@example.com" (string)')
    assert f'api_version "v1" from {b}' in line
    assert 'expected api_version "v2"' in line


def test_a_long_username_is_kept_for_v1_rendering_to_reduce(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", with_token(api_version="v1", username="Sensu (production)"))
    assert load(path).config.hipchat.username == "Sensu (production)"


def test_a_long_username_is_fine_with_v2(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", with_token(username="Sensu monitoring (production)"))
    assert load(path).config.hipchat.username == "Sensu monitoring (production)"


def test_a_missing_ca_file_is_a_problem(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    path = write(tmp_path / "a.json", with_token(ca_file=str(missing)))
    line = one_problem(path)
    assert line == (
        f'{path}: hipchat.ca_file: got "{missing}" (string): no such file;'
        " expected the path of a readable PEM file"
    )


def test_a_directory_as_ca_file_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", with_token(ca_file=str(tmp_path)))
    assert "not a regular file" in one_problem(path)


# -- files that are not plain configuration -------------------------------------------


def test_a_ca_file_that_is_not_pem_is_a_problem(tmp_path: Path) -> None:
    """check-config loads ca_file as the HTTP client will, so serve cannot fail on it later."""
    ca = write(tmp_path / "ca.pem", "this is not a certificate\n")
    path = write(tmp_path / "a.json", with_token(ca_file=str(ca)))
    line = one_problem(path)
    assert line.startswith(f'{path}: hipchat.ca_file: got "{ca}" (string): no CA certificate')
    assert line.endswith("expected the path of a readable PEM file")


def test_a_der_ca_file_is_a_problem_that_says_how_to_convert_it(tmp_path: Path) -> None:
    ca = tmp_path / "ca.der"
    ca.write_bytes(b"\x30\x82\x03\x00\xff\xfe")
    path = write(tmp_path / "a.json", with_token(ca_file=str(ca)))
    assert "openssl x509 -inform der" in one_problem(path)


def _in_a_thread(load_it: Any) -> Any:
    """Run ``load_it`` in a thread so that a regression (a blocking open) fails, not hangs."""
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(_outcome(load_it)), daemon=True)
    thread.start()
    thread.join(30)
    assert outcome, "loading blocked (a FIFO was opened for reading)"
    return outcome[0]


def _outcome(load_it: Any) -> Any:
    try:
        return load_it()
    except ConfigError as exc:
        return exc


def test_a_fifo_as_config_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "hipchatd.json"
    os.mkfifo(fifo)
    error = _in_a_thread(lambda: load(fifo))
    assert isinstance(error, ConfigError)
    assert error.problems[0] == (
        f"{fifo}: a FIFO (named pipe), not a regular file; expected a JSON file"
    )


def test_a_fifo_in_a_config_directory_is_refused_without_blocking(tmp_path: Path) -> None:
    write(tmp_path / "conf.d" / "a.json", with_token())
    os.mkfifo(tmp_path / "conf.d" / "b.json")
    error = _in_a_thread(lambda: load(tmp_path / "conf.d"))
    assert isinstance(error, ConfigError)
    assert error.problems == (
        f"{tmp_path / 'conf.d' / 'b.json'}: a FIFO (named pipe), not a regular file;"
        " expected a JSON file",
    )


def test_a_device_as_config_file_is_refused() -> None:
    # /dev/null, not an endless device: before the fix this read to the end.
    assert one_problem(Path("/dev/null")) == (
        "/dev/null: a character device, not a regular file; expected a JSON file"
    )


def test_a_fifo_as_ca_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "ca.pem"
    os.mkfifo(fifo)
    path = write(tmp_path / "a.json", with_token(ca_file=str(fifo)))
    error = _in_a_thread(lambda: load(path))
    assert isinstance(error, ConfigError)
    assert error.problems == (
        f'{path}: hipchat.ca_file: got "{fifo}" (string): a FIFO (named pipe), not a regular'
        " file; expected the path of a readable PEM file",
    )


def test_deep_nesting_is_one_problem_with_its_position(tmp_path: Path) -> None:
    """100,000 ``[`` made json raise RecursionError; now a line naming where."""
    path = write(tmp_path / "a.json", '{"hipchat":\n  ' + "[" * 100_000)
    assert one_problem(path) == (
        f"{path}:2:{3 + MAX_CONFIG_DEPTH - 1}: nested deeper than {MAX_CONFIG_DEPTH} levels;"
        " no configuration needs that many"
    )


def test_nesting_up_to_the_limit_is_fine(tmp_path: Path) -> None:
    deep = "[" * (MAX_CONFIG_DEPTH - 1) + "]" * (MAX_CONFIG_DEPTH - 1)
    path = write(tmp_path / "a.json", f'{{"api_token_here": 1, "checks": {deep}, "x": "[[[["}}')
    result = load(path, env={"HIPCHAT_API_TOKEN": TOKEN})
    assert result.config.sources == (str(path),)


def test_a_huge_integer_is_one_problem_with_its_position(tmp_path: Path) -> None:
    """5,000 digits made json raise ValueError (Python's int-string limit)."""
    path = write(tmp_path / "a.json", '{"hipchat": {\n "rate_limit": -' + "9" * 5000 + "}}")
    assert one_problem(path) == (
        f"{path}:2:16: an integer of 5000 digits; expected at most {MAX_INTEGER_DIGITS}"
    )


def test_long_fractions_and_digits_in_strings_are_not_integers(tmp_path: Path) -> None:
    digits = "7" * 5000
    path = write(
        tmp_path / "a.json",
        f'{{"hipchat": {{"api_token": "{TOKEN}", "timeout": 1.{digits}, "x": "{digits}"}}}}',
    )
    result = load(path)
    assert result.config.hipchat.timeout == pytest.approx(1.7777777)


# -- the spool: SQLite by default, or PostgreSQL with a DSN that is never printed -------

#: A DSN whose password is distinctive, so a leak is found by a substring search.
DSN_PASSWORD = "pg-pw-7c1e9a-never-print-me"
DSN = f"postgresql://hipchatd:{DSN_PASSWORD}@db.example.com:5432/sensu"


def spool_config(**spool: Any) -> dict[str, Any]:
    return {**with_token(), "hipchatd": {"spool": spool}}


def test_the_spool_is_sqlite_unless_postgresql_is_chosen(tmp_path: Path) -> None:
    default = load(write(tmp_path / "a.json", with_token())).config.daemon.spool
    assert (default.backend, default.dsn, default.schema) == ("sqlite", Secret(""), "hipchatd")
    chosen = load(write(tmp_path / "b.json", spool_config(backend="postgresql", dsn=DSN)))
    spool = chosen.config.daemon.spool
    assert (spool.backend, spool.dsn, spool.schema) == ("postgresql", Secret(DSN), "hipchatd")
    assert DSN_PASSWORD not in repr(chosen.config)
    assert set(spool.secrets()) == {DSN, DSN_PASSWORD}
    ignored = load(write(tmp_path / "c.json", spool_config(dsn=DSN)))
    assert ignored.warnings == (
        f'{tmp_path / "c.json"}: hipchatd.spool.dsn: ignored with backend "sqlite"',
    )


def test_a_postgresql_spool_takes_its_dsn_from_the_files_else_the_credential(
    tmp_path: Path,
) -> None:
    credentials = tmp_path / "credentials"
    write(credentials / "hipchat_spool_dsn", f"host=db password='{DSN_PASSWORD}'\n")
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    bare = write(tmp_path / "a.json", spool_config(backend="postgresql", schema="alerts"))
    spool = load(bare, env=env).config.daemon.spool
    assert (spool.dsn, spool.schema) == (Secret(f"host=db password='{DSN_PASSWORD}'"), "alerts")
    assert DSN_PASSWORD in spool.secrets()
    given = load(write(tmp_path / "b.json", spool_config(backend="postgresql", dsn=DSN)), env=env)
    assert given.config.daemon.spool.dsn == Secret(DSN)
    assert given.warnings == (
        f"{credentials / 'hipchat_spool_dsn'}: ignored; using hipchatd.spool.dsn from "
        f"{tmp_path / 'b.json'}",
    )
    assert one_problem(bare) == (
        f'{bare}: hipchatd.spool.dsn: missing with backend "postgresql"; expected a libpq'
        " connection URI for the PostgreSQL spool in hipchatd.spool.dsn or"
        " $CREDENTIALS_DIRECTORY/hipchat_spool_dsn"
    )


@pytest.mark.parametrize(
    ("spool", "expected"),
    [
        ({"backend": "mysql"}, 'hipchatd.spool.backend: got "mysql" (string); expected one of'),
        (
            {"backend": "postgresql", "dsn": DSN.replace("postgresql", "mysql")},
            "hipchatd.spool.dsn: got a string (value hidden): a URI must start with"
            " postgresql:// or postgres://",
        ),
        (
            {"backend": "postgresql", "dsn": DSN.replace("5432", "99999")},
            "hipchatd.spool.dsn: got a string (value hidden): the URI does not parse",
        ),
        (
            {"backend": "postgresql", "dsn": DSN, "schema": "Alerts"},
            'hipchatd.spool.schema: got "Alerts" (string); expected a lowercase name',
        ),
        (
            {"backend": "postgresql", "dsn": DSN, "schema": "pg_alerts"},
            "names starting with pg_ are reserved by PostgreSQL",
        ),
        (DSN, "hipchatd.spool: got a string (value hidden); expected an object"),
    ],
)
def test_bad_spool_settings_are_one_problem_each_never_showing_the_dsn(
    tmp_path: Path, spool: Any, expected: str
) -> None:
    path = write(tmp_path / "a.json", {**with_token(), "hipchatd": {"spool": spool}})
    problem = one_problem(path)
    assert expected in problem
    assert DSN_PASSWORD not in problem
