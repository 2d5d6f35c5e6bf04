"""check_online and send_test against the real emulator over loopback."""

from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from hipchatd.config import Config, HipChatSettings, Secret
from hipchatd.emulator import Emulator
from hipchatd.ops import probe
from hipchatd.sensu.events import Overrides
from tests.conftest import TOKEN

WRONG_TOKEN = "wrong-token-9876543210fedcba"


@pytest.fixture
async def emu(nursery: trio.Nursery) -> Emulator:
    """Knows TOKEN and the rooms sensu and dev; no room is created on demand."""
    emulator = Emulator(tokens=[TOKEN], rooms=["sensu", "dev"])
    await nursery.start(emulator.serve, "127.0.0.1", 0)
    return emulator


def _config(url: str, contacts: dict[str, Overrides] | None = None, **hipchat: Any) -> Config:
    token = hipchat.pop("api_token", TOKEN)
    settings = HipChatSettings(api_token=Secret(token), server_url=url, **hipchat)
    return Config(hipchat=settings, contacts=contacts or {})


def _lines(out: io.StringIO) -> list[str]:
    text = out.getvalue()
    assert TOKEN not in text
    assert WRONG_TOKEN not in text
    return text.splitlines()


# -- check_online --------------------------------------------------------------------


@pytest.mark.parametrize("api_version", ["v1", "v2"])
async def test_check_online_ok_posts_nothing(emu: Emulator, api_version: str) -> None:
    out = io.StringIO()
    with trio.fail_after(10):
        code = await probe.check_online(
            _config(emu.url, api_version=api_version, room=("sensu", "dev")), out
        )
    assert code == 0
    assert _lines(out) == ["ok: room sensu (token accepted)", "ok: room dev (token accepted)"]
    assert emu.messages == []
    assert [r.status for r in emu.requests] == [202, 202]
    if api_version == "v2":
        assert all(r.path.endswith("/notification") for r in emu.requests)


@pytest.mark.parametrize(
    ("api_version", "reason"),
    [
        ("v2", "401 Invalid OAuth session"),
        ("v1", "401 Auth token invalid. Please see: https://www.hipchat.com/docs/api/auth"),
    ],
)
async def test_check_online_wrong_token(emu: Emulator, api_version: str, reason: str) -> None:
    out = io.StringIO()
    config = _config(emu.url, api_token=WRONG_TOKEN, api_version=api_version, room=("sensu", "dev"))
    with trio.fail_after(10):
        code = await probe.check_online(config, out)
    assert code == 1
    assert _lines(out) == [
        f"error: token rejected: {reason}",
        "not checked: room sensu",
        "not checked: room dev",
    ]
    assert len(emu.requests) == 1  # one rejection says it all


async def test_check_online_reports_a_room_error_and_goes_on(emu: Emulator) -> None:
    """auth_test checks token and method (docs/hipchat-api.md §2); a room error still shows."""
    emu.fail_next(1, 404)
    out = io.StringIO()
    with trio.fail_after(10):
        code = await probe.check_online(_config(emu.url, room=("ops", "sensu")), out)
    assert code == 1
    assert _lines(out) == ["error: room ops: 404 Not Found", "ok: room sensu (token accepted)"]


async def test_check_online_checks_the_user_instead_of_rooms(emu: Emulator) -> None:
    out = io.StringIO()
    with trio.fail_after(10):
        code = await probe.check_online(_config(emu.url, user="ops@example.com"), out)
    assert code == 0
    assert _lines(out) == ["ok: user ops@example.com (token accepted)"]
    assert [r.path for r in emu.requests] == ["/v2/user/ops%40example.com/message"]


async def test_check_online_includes_contact_rooms_once(emu: Emulator) -> None:
    contacts = {"oncall": Overrides(room=("dev", "sensu")), "nobody": Overrides()}
    out = io.StringIO()
    with trio.fail_after(10):
        code = await probe.check_online(_config(emu.url, contacts=contacts), out)
    assert code == 0
    assert _lines(out) == ["ok: room sensu (token accepted)", "ok: room dev (token accepted)"]


async def test_check_online_unreachable_server_names_the_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening
        out = io.StringIO()
        with trio.fail_after(10):
            code = await probe.check_online(_config(url, room=("sensu", "dev")), out)
    assert code == 1
    first, *rest = _lines(out)
    assert first.startswith(f"error: cannot reach {url}: ConnectError")
    assert rest == ["not checked: room sensu", "not checked: room dev"]


async def test_check_online_timeout_is_the_configured_one(
    emu: Emulator, autojump_clock: trio.testing.MockClock
) -> None:
    emu.latency = 60
    out = io.StringIO()
    with trio.fail_after(120):
        start = trio.current_time()
        code = await probe.check_online(_config(emu.url, timeout=10.0), out)
        elapsed = trio.current_time() - start
    assert code == 1
    assert _lines(out) == [
        f"error: {emu.url}: no answer from HipChat within 10 s",
        "not checked: room sensu",
    ]
    assert elapsed == pytest.approx(10.0)


async def test_unusable_ca_file_is_reported(emu: Emulator, tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("not a certificate\n")
    out = io.StringIO()
    with trio.fail_after(10):
        code = await probe.check_online(_config(emu.url, ca_file=str(ca_file)), out)
    assert code == 1
    [line] = _lines(out)
    assert line.startswith("error: hipchat.ca_file: cannot load CA certificates")
    assert emu.requests == []


# -- send_test ------------------------------------------------------------------------


@pytest.mark.parametrize("api_version", ["v1", "v2"])
async def test_send_test_delivers_one_marked_message(emu: Emulator, api_version: str) -> None:
    out = io.StringIO()
    with trio.fail_after(10):
        code = await probe.send_test(_config(emu.url, api_version=api_version), None, out)
    assert code == 0
    assert _lines(out) == ["sent: room sensu"]
    [message] = emu.messages
    assert message.room == "sensu"
    assert message.message == (
        f"hipchatd test notification from {socket.gethostname()}"
        " — if you can read this, delivery works"
    )
    assert (message.color, message.notify, message.message_format) == ("gray", False, "text")
    assert message.sender == "sensu"
    assert message.api_version == api_version


async def test_send_test_room_override(emu: Emulator) -> None:
    out = io.StringIO()
    with trio.fail_after(10):
        code = await probe.send_test(_config(emu.url, room=("sensu",)), "dev", out)
    assert code == 0
    assert _lines(out) == ["sent: room dev"]
    assert [m.room for m in emu.messages] == ["dev"]


async def test_send_test_unknown_room_is_404(emu: Emulator) -> None:
    out = io.StringIO()
    with trio.fail_after(10):
        code = await probe.send_test(_config(emu.url, room=("ops", "sensu")), None, out)
    assert code == 1
    assert _lines(out) == ["error: room ops: 404 Room ops not found", "sent: room sensu"]
    assert [m.room for m in emu.messages] == ["sensu"]


async def test_send_test_v1_unknown_room(emu: Emulator) -> None:
    out = io.StringIO()
    with trio.fail_after(10):
        code = await probe.send_test(_config(emu.url, api_version="v1"), "ops", out)
    assert code == 1
    assert _lines(out) == ["error: room ops: 404 Room not found"]
    assert emu.messages == []


async def test_send_test_to_the_user(emu: Emulator) -> None:
    out = io.StringIO()
    with trio.fail_after(10):
        code = await probe.send_test(_config(emu.url, user="ops@example.com"), None, out)
    assert code == 0
    assert _lines(out) == ["sent: user ops@example.com"]
    [message] = emu.messages
    assert message.user == "ops@example.com"


async def test_send_test_wrong_token(emu: Emulator) -> None:
    out = io.StringIO()
    with trio.fail_after(10):
        code = await probe.send_test(_config(emu.url, api_token=WRONG_TOKEN), None, out)
    assert code == 1
    assert _lines(out) == [
        "error: token rejected: 401 Invalid OAuth session",
        "not sent: room sensu",
    ]
    assert emu.messages == []


def test_test_message_fits_v1_sender_rules() -> None:
    settings = HipChatSettings(
        api_token=Secret(TOKEN), api_version="v1", username="Sensu Monitoring (prod)"
    )
    message = probe.build_test_message(settings, hostname="web-01")
    assert message.sender == "Sensu Monitorin"  # v1: 15 characters, no parentheses
    assert message.text.startswith("hipchatd test notification from web-01 — ")
