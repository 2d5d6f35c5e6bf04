"""hipchat.proxy: HipChat through an HTTP CONNECT proxy, and nothing of the token for the proxy.

End to end: a real CONNECT proxy (tests/connect_proxy.py) and the emulator
in its HTTPS mode on loopback, the real daemon or the real client between
them. The proxy keeps every byte it carried, so what its operator could
log is asserted, not assumed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import ssl
import subprocess
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme

from hipchatd import app as app_module
from hipchatd.config import (
    PROXY_FROM_ENV,
    ConfigError,
    HipChatSettings,
    ProxyUrl,
    Secret,
    load_config,
)
from hipchatd.delivery.egress import EnvironmentProxies, bypassed, route, scrub_proxy
from hipchatd.delivery.hipchat import HipChatClient, Outcome, OutcomeKind, make_http_client
from hipchatd.delivery.render import Message
from hipchatd.delivery.routing import Target
from hipchatd.emulator import Emulator
from tests.conftest import TOKEN, classic_event, make_config, send_tcp, until_delivered
from tests.connect_proxy import ConnectProxy, closed_port
from tests.logcapture import capture_logs
from tests.processes import HIPCHATD, REPO, STARTUP, Child, child_env

#: Distinctive, so a leak anywhere is found by a substring search.
PASSWORD = "pr0xy-pa55-9f8e7d6c"
USER = "hipchatd-egress"
SENSU = Target(kind="room", name="sensu", notify=False, username="Sensu", message_format="text")
DRILL = Message(text="drill", color="red", notify=False, message_format="text", sender="s")
#: What hipchat.proxy accepts, in words, as every problem line ends.
PROXY_EXPECTED = (
    '"env", or "http://host:port" or "https://host:port", optionally with user:password@'
    " before the host"
)
#: Variables a test environment might carry; each test sets the ones it means.
PROXY_VARIABLES = (
    "https_proxy",
    "HTTPS_PROXY",
    "http_proxy",
    "HTTP_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
)


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without proxy variables: the ones it needs it sets."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# -- fixtures: a CA, the emulator over HTTPS, a proxy -----------------------------------------


@dataclass(frozen=True)
class Tls:
    """One throwaway CA: the emulator's and the https:// proxy's certificates, and its PEM file."""

    authority: trustme.CA
    ca_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        return context


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    authority = trustme.CA(organization_name="hipchatd proxy tests")
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    return Tls(authority, ca_file)


@pytest.fixture
async def https_emulator(nursery: trio.Nursery, tls: Tls) -> Emulator:
    emu = Emulator(tokens=[TOKEN], rooms=["sensu", "ops"], auto_create_rooms=True)
    await nursery.start(functools.partial(emu.serve, ssl_context=tls.server_context()))
    return emu


def localhost_url(emu: Emulator) -> str:
    """The emulator's URL by name, as a HipChat server's would be."""
    return f"https://localhost:{emu.url.rsplit(':', 1)[1]}"


async def start_proxy(nursery: trio.Nursery, **options: Any) -> ConnectProxy:
    proxy = ConnectProxy(**options)
    await nursery.start(proxy.serve)
    return proxy


def settings_for(emu: Emulator, tls: Tls, proxy: str | None, **hipchat: Any) -> HipChatSettings:
    parsed = ProxyUrl.parse(proxy) if proxy not in (None, PROXY_FROM_ENV) else proxy
    return HipChatSettings(
        api_token=Secret(TOKEN),
        server_url=localhost_url(emu),
        ca_file=str(tls.ca_file),
        proxy=parsed,  # type: ignore[arg-type]
        **hipchat,
    )


async def send_once(settings: HipChatSettings) -> Outcome:
    with trio.fail_after(10):
        async with make_http_client(settings, 2) as http:
            return await HipChatClient(settings, http).send(SENSU, DRILL)


def with_credentials(url: str, user: str = USER, password: str = PASSWORD) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{user}:{password}@{rest}"


def rendered(logs: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(entry, default=str) for entry in logs]


# -- end to end: the daemon through a CONNECT proxy -------------------------------------------


async def test_daemon_delivers_through_a_connect_tunnel_the_proxy_sees_only_connect(
    nursery: trio.Nursery, https_emulator: Emulator, tls: Tls
) -> None:
    """v2 over TLS through the proxy: it sees CONNECT lines, then ciphertext; ca_file applies."""
    proxy = await start_proxy(nursery, credentials=(USER, PASSWORD))
    config = make_config(
        localhost_url(https_emulator),
        ca_file=str(tls.ca_file),
        proxy=ProxyUrl.parse(with_credentials(proxy.url)),
        room=("sensu", "ops"),
    )
    events = [classic_event(name=f"disk-{n}") for n in range(3)]
    with trio.fail_after(30), capture_logs() as logs:
        app = await nursery.start(app_module.run, config)
        for event in events:
            await send_tcp(app.tcp_addresses[0], json.dumps(event).encode())
        await until_delivered(
            https_emulator,
            lambda: (
                {
                    (m.room, n)
                    for m in https_emulator.messages
                    for n in range(3)
                    if f"disk-{n}" in m.message
                }
                == {(room, n) for room in ("sensu", "ops") for n in range(3)}
            ),
        )
    port = https_emulator.url.rsplit(":", 1)[1]
    assert proxy.tunnels >= 1
    assert proxy.request_lines == [f"CONNECT localhost:{port} HTTP/1.1"] * proxy.tunnels
    for head in proxy.heads:
        names = {line.split(b":")[0].lower() for line in head.split(b"\r\n")[1:] if line}
        assert names <= {b"host", b"accept", b"proxy-authorization"}
    assert len(proxy.seen) > sum(map(len, proxy.heads))  # the tunnel carried TLS
    assert TOKEN.encode() not in proxy.seen
    assert b"disk-0" not in proxy.seen  # the messages too were ciphertext
    lines = rendered(logs)
    [started] = [e for e in logs if e["event"] == "daemon.started"]
    assert started["proxy"] == proxy.url
    assert not [line for line in lines if TOKEN in line or PASSWORD in line]


async def test_a_refusing_proxy_is_a_transient_failure_and_the_event_is_retried(
    nursery: trio.Nursery,
    https_emulator: Emulator,
    tls: Tls,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 407 to CONNECT names the proxy (never its credentials); the event waits and arrives."""
    proxy = await start_proxy(nursery, credentials=(USER, PASSWORD), refuse_next=2)
    config = make_config(
        localhost_url(https_emulator),
        ca_file=str(tls.ca_file),
        proxy=ProxyUrl.parse(with_credentials(proxy.url)),
    )
    with trio.fail_after(120), capture_logs() as logs:
        app = await nursery.start(app_module.run, config)
        await send_tcp(app.tcp_addresses[0], json.dumps(classic_event(name="held")).encode())
        await https_emulator.wait_for_messages(1)
    failures = [e for e in logs if e["event"] == "delivery.failed"]
    assert len(failures) == 2
    for failure in failures:
        assert failure["outcome"] == "transport_error"
        assert failure["error"] == (
            f"ProxyError: proxy {proxy.url} refused CONNECT: 407 Proxy Authentication Required"
        )
    assert "held" in https_emulator.messages[0].message
    assert not [line for line in rendered(logs) if PASSWORD in line or TOKEN in line]


async def test_reload_with_a_changed_proxy_needs_a_restart_and_keeps_the_running_one(
    nursery: trio.Nursery, https_emulator: Emulator, tls: Tls
) -> None:
    """The HTTP client is made once: like ca_file, a new proxy takes a restart."""
    first = await start_proxy(nursery)
    second = await start_proxy(nursery)
    config = make_config(
        localhost_url(https_emulator), ca_file=str(tls.ca_file), proxy=ProxyUrl.parse(first.url)
    )
    with trio.fail_after(30):
        app = await nursery.start(app_module.run, config)
        changed = dataclasses.replace(
            config.hipchat, proxy=ProxyUrl.parse(with_credentials(second.url)), room=("ops",)
        )
        restart = app.reload(dataclasses.replace(config, hipchat=changed))
        await send_tcp(app.tcp_addresses[0], json.dumps(classic_event()).encode())
        await https_emulator.wait_for_messages(1)
    assert restart == ["hipchat.proxy"]
    assert app.config.hipchat.proxy == ProxyUrl.parse(first.url)
    assert https_emulator.messages[0].room == "ops"  # the rest of the reload took effect
    assert first.tunnels == 1
    assert second.heads == []
    assert PASSWORD not in repr(app.config)


# -- the client through a proxy: failures, https:// proxies, the environment ----------------


async def test_an_https_proxy_is_trusted_with_ca_file_like_the_server(
    nursery: trio.Nursery, https_emulator: Emulator, tls: Tls
) -> None:
    trusted = await start_proxy(nursery, ssl_context=tls.server_context())
    stranger = trustme.CA(organization_name="someone else")
    foreign_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    stranger.issue_cert("127.0.0.1").configure_cert(foreign_context)
    untrusted = await start_proxy(nursery, ssl_context=foreign_context)
    sent = await send_once(settings_for(https_emulator, tls, trusted.url))
    refused = await send_once(settings_for(https_emulator, tls, untrusted.url))
    assert trusted.url.startswith("https://")
    assert sent.kind is OutcomeKind.SENT
    assert trusted.request_lines == [f"CONNECT {localhost_url(https_emulator)[8:]} HTTP/1.1"]
    assert refused.kind is OutcomeKind.TRANSPORT_ERROR
    assert refused.error is not None
    assert refused.error.startswith(f"ConnectError: via proxy {untrusted.url}: ")
    assert "CERTIFICATE_VERIFY_FAILED" in refused.error
    assert untrusted.heads == []


async def test_the_server_certificate_is_checked_through_the_tunnel(
    nursery: trio.Nursery, https_emulator: Emulator, tls: Tls, tmp_path: Path
) -> None:
    """A tunnel does not weaken TLS: a CA that did not sign the emulator's certificate fails."""
    proxy = await start_proxy(nursery)
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    outcome = await send_once(
        dataclasses.replace(settings_for(https_emulator, tls, proxy.url), ca_file=str(other))
    )
    assert outcome.kind is OutcomeKind.TRANSPORT_ERROR
    assert outcome.error is not None
    assert f"via proxy {proxy.url}" in outcome.error
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.error
    assert proxy.tunnels == 1
    assert https_emulator.messages == []


@pytest.mark.parametrize(
    ("refusal", "credentials", "expected"),
    [
        (None, (USER, "wrong-" + PASSWORD), "refused CONNECT: 407 Proxy Authentication Required"),
        (HTTPStatus.FORBIDDEN, (USER, PASSWORD), "refused CONNECT: 403 Forbidden"),
    ],
)
async def test_a_refused_connect_names_the_proxy_without_its_credentials(
    nursery: trio.Nursery,
    https_emulator: Emulator,
    tls: Tls,
    refusal: HTTPStatus | None,
    credentials: tuple[str, str],
    expected: str,
) -> None:
    options: dict[str, Any] = {"credentials": (USER, PASSWORD)}
    if refusal is not None:
        options |= {"refuse_next": 1, "refusal": refusal}
    proxy = await start_proxy(nursery, **options)
    configured = with_credentials(proxy.url, *credentials)
    outcome = await send_once(settings_for(https_emulator, tls, configured))
    assert outcome.kind is OutcomeKind.TRANSPORT_ERROR
    assert outcome.kind.transient
    assert outcome.error == f"ProxyError: proxy {proxy.url} {expected}"
    assert PASSWORD not in outcome.error
    assert https_emulator.messages == []


async def test_a_proxy_that_refuses_connections_names_itself(
    https_emulator: Emulator, tls: Tls
) -> None:
    url = f"http://127.0.0.1:{await closed_port()}"
    outcome = await send_once(settings_for(https_emulator, tls, with_credentials(url)))
    assert outcome.kind is OutcomeKind.TRANSPORT_ERROR
    assert outcome.error is not None
    assert outcome.error.startswith(f"ConnectError: via proxy {url}: ")
    assert PASSWORD not in outcome.error
    assert USER not in outcome.error


async def test_a_forwarding_proxy_answering_407_is_a_transport_error(
    nursery: trio.Nursery, emulator: Emulator
) -> None:
    """An http:// server's requests go to the proxy whole; its 407 is the proxy's, not HipChat's."""
    proxy = await start_proxy(nursery, credentials=(USER, PASSWORD))
    settings = HipChatSettings(
        api_token=Secret(TOKEN),
        server_url=emulator.url,
        proxy=ProxyUrl.parse(with_credentials(proxy.url, password="wrong-" + PASSWORD)),
    )
    outcome = await send_once(settings)
    assert outcome.kind is OutcomeKind.TRANSPORT_ERROR
    assert outcome.error == (
        f"ProxyError: proxy {proxy.url} refused the request: 407 Proxy Authentication Required"
    )
    assert proxy.request_lines[0].startswith(f"POST {emulator.url}/v2/room/sensu/notification ")
    assert emulator.messages == []


async def test_env_honours_https_proxy(
    nursery: trio.Nursery, https_emulator: Emulator, tls: Tls, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await start_proxy(nursery, credentials=(USER, PASSWORD))
    monkeypatch.setenv("HTTPS_PROXY", with_credentials(proxy.url))
    monkeypatch.setenv("NO_PROXY", "hipchat.example.com,10.0.0.0/8")
    with capture_logs() as logs:
        outcome = await send_once(settings_for(https_emulator, tls, PROXY_FROM_ENV))
    assert outcome.kind is OutcomeKind.SENT
    assert proxy.request_lines == [f"CONNECT {localhost_url(https_emulator)[8:]} HTTP/1.1"]
    assert TOKEN.encode() not in proxy.seen
    assert not [line for line in rendered(logs) if PASSWORD in line]


@pytest.mark.parametrize(
    ("proxy_setting", "variables"),
    [
        # The default: no proxy, and the environment is ignored.
        (None, {"HTTPS_PROXY": "{proxy}", "ALL_PROXY": "{proxy}"}),
        # "env", but the server is listed in NO_PROXY.
        (PROXY_FROM_ENV, {"https_proxy": "{proxy}", "NO_PROXY": "example.com,localhost"}),
        # "env" with only http_proxy: it is for http:// servers.
        (PROXY_FROM_ENV, {"http_proxy": "{proxy}"}),
    ],
)
async def test_requests_go_direct_when_no_proxy_applies(
    nursery: trio.Nursery,
    https_emulator: Emulator,
    tls: Tls,
    monkeypatch: pytest.MonkeyPatch,
    proxy_setting: str | None,
    variables: dict[str, str],
) -> None:
    proxy = await start_proxy(nursery)
    for name, value in variables.items():
        monkeypatch.setenv(name, value.format(proxy=proxy.url))
    outcome = await send_once(settings_for(https_emulator, tls, proxy_setting))
    assert outcome.kind is OutcomeKind.SENT
    assert proxy.heads == []
    assert [m.message for m in https_emulator.messages] == ["drill"]


async def test_env_reads_the_proxy_variables_and_nothing_else(
    nursery: trio.Nursery, https_emulator: Emulator, tls: Tls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSL_CERT_FILE would make the emulator's CA trusted; with "env" it still is not read."""
    proxy = await start_proxy(nursery)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))
    monkeypatch.setenv("SSL_CERT_DIR", str(tls.ca_file.parent))
    settings = dataclasses.replace(settings_for(https_emulator, tls, PROXY_FROM_ENV), ca_file=None)
    outcome = await send_once(settings)
    assert outcome.kind is OutcomeKind.TRANSPORT_ERROR
    assert outcome.error is not None
    assert f"via proxy {proxy.url}" in outcome.error
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.error


def test_env_refuses_an_unusable_proxy_variable_naming_it_never_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALL_PROXY", f"socks5://{USER}:{PASSWORD}@127.0.0.1:1080")
    settings = HipChatSettings(api_token=Secret(TOKEN), proxy=PROXY_FROM_ENV)
    with pytest.raises(ConfigError) as info:
        make_http_client(settings, 1)
    assert info.value.problems == (
        'ALL_PROXY: scheme "socks5" not supported (value hidden); expected http://host:port'
        ' or https://host:port, as hipchat.proxy is "env"',
    )


# -- the rule: hipchat.proxy in the configuration ---------------------------------------------


def load_proxy(tmp_path: Path, value: object, **hipchat: Any) -> Any:
    path = tmp_path / "proxy.json"
    path.write_text(json.dumps({"hipchat": {"api_token": TOKEN, "proxy": value, **hipchat}}))
    return load_config([path], {})


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("http://proxy.example.com:3128", "http://proxy.example.com:3128"),
        ("https://proxy.example.com:8443/", "https://proxy.example.com:8443"),
        ("HTTP://Proxy.Example.com:3128", "http://proxy.example.com:3128"),
        ("http://[2001:db8::1]:3128", "http://[2001:db8::1]:3128"),
        (f"http://{USER}:{PASSWORD}@proxy.example.com:3128", "http://proxy.example.com:3128"),
    ],
)
def test_a_proxy_url_is_read_and_shown_without_credentials(
    tmp_path: Path, value: str, shown: str
) -> None:
    proxy = load_proxy(tmp_path, value).config.hipchat.proxy
    assert isinstance(proxy, ProxyUrl)
    assert str(proxy) == shown
    assert PASSWORD not in repr(proxy)
    assert PASSWORD not in repr(load_proxy(tmp_path, value).config)


def test_credentials_are_percent_decoded_for_proxy_authorization() -> None:
    proxy = ProxyUrl.parse("http://ops%40example.com:p%3Ass%2Fw0rd@proxy.example.com:3128")
    assert proxy.auth() == ("ops@example.com", "p:ss/w0rd")
    assert repr(proxy) == "ProxyUrl('http://proxy.example.com:3128', credentials hidden)"
    assert ProxyUrl.parse("http://proxy.example.com:3128").auth() is None


def test_env_is_read_as_the_string_env(tmp_path: Path) -> None:
    assert load_proxy(tmp_path, "env").config.hipchat.proxy == PROXY_FROM_ENV


def test_no_proxy_by_default(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"hipchat": {"api_token": TOKEN}}))
    assert (
        load_config([path], {"HTTPS_PROXY": "http://127.0.0.1:3128"}).config.hipchat.proxy is None
    )


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (f"socks5://{USER}:{PASSWORD}@proxy.example.com:1080", 'scheme "socks5" not supported'),
        (f"{USER}:{PASSWORD}@proxy.example.com:3128", "no scheme (http:// or https://)"),
        (f"http://{USER}:{PASSWORD}@:3128", "no host"),
        (f"http://{USER}:{PASSWORD}@proxy.example.com", "no port"),
        (f"http://{USER}:{PASSWORD}@proxy.example.com:0", "port 0"),
        (f"http://{USER}:{PASSWORD}@proxy.example.com:99999", "not a URL of the form"),
        (f"http://{USER}:{PASSWORD}/proxy.example.com", "not a URL of the form"),
        (f"http://{USER}:{PASSWORD}@proxy.example.com:3128/path", "no path, query or fragment"),
        (f"http://{USER}:{PASSWORD}@proxy.example.com:3128?x=1", "no path, query or fragment"),
        (f"http://{USER}:{PASSWORD}@proxy.example.com:3128#top", "no path, query or fragment"),
        ("", "no scheme"),
    ],
)
def test_a_bad_proxy_is_a_problem_that_never_quotes_the_value(
    tmp_path: Path, value: str, why: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_proxy(tmp_path, value)
    (problem,) = info.value.problems
    assert problem.endswith(f"; expected {PROXY_EXPECTED}")
    assert problem.startswith(
        f"{tmp_path / 'proxy.json'}: hipchat.proxy: got a string (value hidden): "
    )
    assert why in problem
    assert PASSWORD not in problem
    assert USER not in problem


def test_a_proxy_that_is_not_a_string_is_a_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_proxy(tmp_path, 3128)
    (problem,) = info.value.problems
    assert "hipchat.proxy: got a number (value hidden); expected " in problem


def test_plain_http_through_a_proxy_warns_that_the_proxy_sees_the_token(tmp_path: Path) -> None:
    path = tmp_path / "proxy.json"
    result = load_proxy(tmp_path, "http://proxy.example.com:3128", server_url="http://hc.internal")
    (warning,) = result.warnings
    assert warning == (
        f"{path}: hipchat.server_url: plain http://; the proxy (hipchat.proxy from {path})"
        " would see the API token in every request, use https://"
    )
    assert load_proxy(tmp_path, "http://proxy.example.com:3128").warnings == ()


# -- as an operator meets it: check-config and serve ----------------------------------------


def run_check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HIPCHATD, "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=STARTUP,
        env=child_env(),
        cwd=REPO,
        check=False,
    )


def test_check_config_shows_no_proxy_credentials(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    hipchat = {"api_token": TOKEN, "proxy": with_credentials("http://proxy.example.com:3128/x")}
    path.write_text(json.dumps({"hipchat": hipchat}))
    refused = run_check_config(path)
    hipchat |= {"proxy": with_credentials(A), "server_url": "http://hc.internal"}
    path.write_text(json.dumps({"hipchat": hipchat}))
    warned = run_check_config(path)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"error: {path}: hipchat.proxy: got a string (value hidden): a proxy URL has no path,"
        f" query or fragment; expected {PROXY_EXPECTED}"
    ]
    assert warned.returncode == 0
    assert warned.stdout == "OK\n"
    assert "the proxy (hipchat.proxy from" in warned.stderr
    for result in (refused, warned):
        assert PASSWORD not in result.stdout + result.stderr


def test_serve_refuses_an_unusable_proxy_variable_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "serve.json"
    document = {
        "hipchat": {"api_token": TOKEN, "proxy": "env"},
        "hipchatd": {"tcp": {"host": "127.0.0.1", "port": 0}, "udp": None, "state_dir": ":memory:"},
    }
    path.write_text(json.dumps(document))
    child = Child(
        "serve", "--config", str(path), env={"HTTPS_PROXY": f"http://{USER}:{PASSWORD}@proxy"}
    )
    try:
        assert child.wait_exit(STARTUP) == 1
    finally:
        child.close()
    assert "Traceback" not in child.output
    assert PASSWORD not in child.output
    (invalid,) = child.logged("config.invalid")
    assert invalid["problem"].startswith("HTTPS_PROXY: no port (value hidden); expected ")


# -- the environment, as curl reads it ---------------------------------------------------------

A = "http://a.example:3128"
B = "http://b.example:3128"


@pytest.mark.parametrize(
    ("environ", "scheme", "expected"),
    [
        ({"https_proxy": A, "HTTPS_PROXY": B}, "https", A),  # lower case first, as curl
        ({"HTTPS_PROXY": B}, "https", B),
        ({"HTTPS_PROXY": B, "ALL_PROXY": A}, "https", B),  # the scheme's own first
        ({"all_proxy": A}, "https", A),
        ({"ALL_PROXY": A}, "http", A),
        ({"HTTP_PROXY": B}, "http", B),  # unlike curl: never a CGI script
        ({"http_proxy": A}, "https", None),
        ({"https_proxy": "", "HTTPS_PROXY": B}, "https", B),  # empty counts as unset
        ({"HTTPS_PROXY": "a.example:3128"}, "https", A),  # host:port means http://
        ({}, "https", None),
    ],
)
def test_the_proxy_variable_for_each_scheme(
    environ: dict[str, str], scheme: str, expected: str | None
) -> None:
    found = EnvironmentProxies.read(environ).proxy_for(scheme, "hipchat.example.com")
    assert (None if found is None else str(found)) == expected


#: NO_PROXY -> (hosts that go direct, hosts that still take the proxy).
NO_PROXY_CASES: dict[str, tuple[list[str], list[str]]] = {
    "example.com": (
        ["hipchat.example.com", "example.com", "HipChat.Example.COM."],
        ["notexample.com"],
    ),
    ".example.com": (["hipchat.example.com", "example.com"], ["example.org"]),
    "other.com, example.com ": (["hipchat.example.com"], ["other.org"]),
    "*": (["hipchat.example.com", "10.1.2.3", "::1"], []),
    "hipchat": ([], ["hipchat.example.com"]),
    "10.0.0.0/8": (["10.1.2.3"], ["11.1.2.3", "hipchat.example.com"]),
    # An address matches itself, never as a domain.
    "10.1.2.3,2.3": (["10.1.2.3"], ["10.1.2.4"]),
    "::1": (["::1", "[::1]"], ["::2"]),
    "[::1]": (["::1"], []),
    "hipchat.example.com:8443,[::2]:8443": (["hipchat.example.com", "::2"], ["example.com"]),
    "2001:db8::/32": (["2001:db8::5"], ["2001:db9::5"]),
    "": ([], ["localhost"]),
}


@pytest.mark.parametrize(
    ("host", "no_proxy", "direct"),
    [
        (host, no_proxy, direct)
        for no_proxy, (matched, unmatched) in NO_PROXY_CASES.items()
        for direct, hosts in ((True, matched), (False, unmatched))
        for host in hosts
    ],
)
def test_no_proxy_matching(host: str, no_proxy: str, direct: bool) -> None:
    proxies = EnvironmentProxies.read({"HTTPS_PROXY": A, "NO_PROXY": no_proxy})
    assert bypassed(host, proxies.no_proxy) is direct
    assert (proxies.proxy_for("https", host) is None) is direct


def test_route_reads_the_environment_only_for_env() -> None:
    environ = {"HTTPS_PROXY": A}
    assert route(None, environ) is None
    assert route(PROXY_FROM_ENV, {}) is None
    via_env = route(PROXY_FROM_ENV, environ)
    assert via_env is not None
    assert str(via_env("https", "hipchat.example.com")) == A
    configured = route(ProxyUrl.parse(B), {**environ, "NO_PROXY": "*"})
    assert configured is not None
    assert str(configured("https", "localhost")) == B


def test_scrub_proxy_removes_every_form_of_the_credentials() -> None:
    proxy = ProxyUrl.parse(with_credentials(A))
    basic = "aGlwY2hhdGQtZWdyZXNzOnByMHh5LXBhNTUtOWY4ZTdkNmM="  # base64 of USER:PASSWORD
    text = scrub_proxy(f"echoed {USER}:{PASSWORD} and Basic {basic} and {PASSWORD}", proxy)
    assert PASSWORD not in text
    assert basic not in text
    assert text == "echoed [REDACTED] and Basic [REDACTED] and [REDACTED]"


def test_settings_repr_hides_the_proxy_credentials() -> None:
    settings = HipChatSettings(api_token=Secret(TOKEN), proxy=ProxyUrl.parse(with_credentials(A)))
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings)
    assert "ProxyUrl('http://a.example:3128', credentials hidden)" in repr(settings)
