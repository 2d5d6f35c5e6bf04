"""hipchatd as a systemd service: socket activation, sd_notify, reload, metrics, health.

The daemon runs as a real process where systemd's side matters (inherited
sockets, NOTIFY_SOCKET, SIGHUP); metrics and health run in-process against
the real emulator.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from hipchatd.config import Listen
from hipchatd.delivery.spool.sqlite import sql as spool_sql
from hipchatd.emulator import Emulator
from tests.conftest import StartDaemon, classic_event, free_port, send_tcp
from tests.processes import Child

TOKEN = "service-token-0a1b2c3d4e5f"


@pytest.fixture
def emulator_process() -> Iterator[str]:
    port = free_port()
    process = Child("emulator", "--port", str(port), "--token", TOKEN, "--auto-create-rooms")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/_emulator/requests", timeout=2)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield url
    finally:
        process.close()


def _messages(url: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(f"{url}/_emulator/messages", timeout=5).json()
    return found


def _wait_messages(url: str, *names: str, timeout: float = 30) -> list[dict[str, Any]]:
    """Wait until every name appears in a delivered message (storms fold several into one)."""
    deadline = time.monotonic() + timeout
    while True:
        found = _messages(url)
        text = " ".join(m["message"] for m in found)
        if all(name in text for name in names):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {names} in messages, have {found}")
        time.sleep(0.05)


def _config(path: Path, url: str, room: str = "sensu", **daemon: Any) -> Path:
    doc = {
        "hipchat": {"api_token": TOKEN, "server_url": url, "room": room},
        "hipchatd": {
            "tcp": {"host": "127.0.0.1", "port": 0},
            "udp": None,
            "state_dir": str(path.parent / "state"),
            **daemon,
        },
    }
    path.write_text(json.dumps(doc))
    return path


def _send(port: int, event: dict[str, Any]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(json.dumps(event).encode())


def _event(check: str) -> dict[str, Any]:
    return classic_event(name=check, output=f"{check} failed")


def test_socket_activation_tcp_and_udp(tmp_path: Path, emulator_process: str) -> None:
    """systemd-socket-activate passes a TCP and a UDP socket; an event on each is delivered.

    Each launcher listens on one kind of socket, so two are nested: the outer
    passes its TCP socket through the inner, which adds the UDP one.
    """
    port = free_port()
    config = _config(tmp_path / "hipchatd.json", emulator_process)
    daemon = Child(
        "serve", "--config", str(config),
        launcher=[
            "systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=sensu", "--",
            "systemd-socket-activate", "-d", "-l", f"127.0.0.1:{port}", "--fdname=sensu", "--",
        ],
    )  # fmt: skip
    try:
        daemon.wait_line(lambda line: "Listening on" in line)
        # The first connection starts the daemon; the kernel queues it meanwhile.
        _send(port, _event("over-tcp"))
        adopted = daemon.wait_logged("systemd.sockets_adopted")
        assert sorted(s.split(":")[1] for s in adopted["sockets"]) == ["datagram", "stream"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(json.dumps(_event("over-udp")).encode(), ("127.0.0.1", port))
        _wait_messages(emulator_process, "over-tcp", "over-udp")
    finally:
        daemon.close()


def test_serve_port_gives_way_to_inherited_sockets(tmp_path: Path, emulator_process: str) -> None:
    """Under socket activation ``--port`` is not used, and a WARNING says so."""
    port = free_port()
    config = _config(tmp_path / "hipchatd.json", emulator_process)
    daemon = Child(
        "serve", "--config", str(config), "--port", "1",
        launcher=["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--"],
    )  # fmt: skip
    try:
        daemon.wait_line(lambda line: "Listening on" in line)
        _send(port, _event("port-ignored"))
        ignored = daemon.wait_logged("daemon.port_ignored")
        assert (ignored["level"], ignored["port"]) == ("warning", 1)
        _wait_messages(emulator_process, "port-ignored")
    finally:
        daemon.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(30)
    yield sock
    sock.close()


def _notifications(sock: socket.socket, until: str) -> list[str]:
    """Datagrams received until one contains ``until``."""
    received = []
    while True:
        data = sock.recv(4096).decode()
        received.append(data)
        if until in data.splitlines():
            return received


def test_sd_notify_ready_watchdog_reload_stopping(
    tmp_path: Path, emulator_process: str, notify_socket: socket.socket
) -> None:
    config = _config(tmp_path / "hipchatd.json", emulator_process)
    daemon = Child(
        "serve",
        "--config",
        str(config),
        env={"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "1000000"},
    )
    try:
        before_ready = _notifications(notify_socket, "READY=1")
        # READY=1 only once the listeners serve: a connection now succeeds.
        port = int(daemon.wait_logged("daemon.started")["tcp"][0].rsplit(":", 1)[1])
        _send(port, _event("after-ready"))
        assert any("WATCHDOG=1" in d for d in before_ready)
        ready = before_ready[-1].splitlines()
        assert ready[0] == "READY=1"
        assert ready[1].startswith("STATUS=")
        # The watchdog keeps pinging from the event loop.
        assert _notifications(notify_socket, "WATCHDOG=1")
        daemon.popen.send_signal(signal.SIGHUP)
        reload = _notifications(notify_socket, "READY=1")
        reloading = next(d for d in reload if d.startswith("RELOADING=1")).splitlines()
        assert reloading[1].startswith("MONOTONIC_USEC=")
        usec = int(reloading[1].partition("=")[2])
        assert abs(usec - time.monotonic_ns() // 1000) < 30_000_000
        daemon.popen.send_signal(signal.SIGTERM)
        assert _notifications(notify_socket, "STOPPING=1")
        assert daemon.popen.wait(30) == 0
    finally:
        daemon.close()


def test_sighup_reloads_rooms_and_keeps_old_config_when_broken(
    tmp_path: Path, emulator_process: str
) -> None:
    path = tmp_path / "hipchatd.json"
    _config(path, emulator_process, room="before")
    daemon = Child("serve", "--config", str(path))
    try:
        port = int(daemon.wait_logged("daemon.started")["tcp"][0].rsplit(":", 1)[1])
        _send(port, _event("one"))
        _wait_messages(emulator_process, "/one")
        _config(path, emulator_process, room="after")
        daemon.popen.send_signal(signal.SIGHUP)
        assert daemon.wait_logged("config.reloaded")["rooms"] == ["after"]
        _send(port, _event("two"))
        _wait_messages(emulator_process, "/two")
        path.write_text('{"hipchat": {"room": 42')
        daemon.popen.send_signal(signal.SIGHUP)
        failed = daemon.wait_logged("config.reload_failed")
        assert str(path) in failed["problem"]
        _send(port, _event("three"))
        messages = _wait_messages(emulator_process, "/three")
    finally:
        daemon.close()
    rooms = {
        check: m["room"]
        for m in messages
        for check in ("one", "two", "three")
        if f"/{check}:" in m["message"]
    }
    assert rooms == {"one": "before", "two": "after", "three": "after"}


def test_sighup_never_kills_the_daemon_and_logs_warnings_as_warnings(
    tmp_path: Path, emulator_process: str
) -> None:
    """A file nested 100,000 deep made the reload raise RecursionError and the daemon exit."""
    path = tmp_path / "hipchatd.json"
    _config(path, emulator_process, room="before")
    daemon = Child("serve", "--config", str(path))
    try:
        port = int(daemon.wait_logged("daemon.started")["tcp"][0].rsplit(":", 1)[1])
        path.write_text("[" * 100_000)
        daemon.popen.send_signal(signal.SIGHUP)
        failed = daemon.wait_logged("config.reload_failed")
        assert failed["level"] == "error"
        assert failed["problem"].startswith(f"{path}:1:101: nested deeper than")
        _send(port, _event("after-bad-reload"))
        _wait_messages(emulator_process, "/after-bad-reload")
        assert daemon.popen.poll() is None
        # A good file again: the reload succeeds, and its warning (the emulator is plain
        # http://) is a warning, not a failure.
        _config(path, emulator_process, room="after")
        daemon.popen.send_signal(signal.SIGHUP)
        assert daemon.wait_logged("config.reloaded")["rooms"] == ["after"]
        _send(port, _event("after-good-reload"))
        messages = _wait_messages(emulator_process, "/after-good-reload")
    finally:
        daemon.close()
    rooms = {m["room"] for m in messages if "/after-bad-reload:" in m["message"]}
    assert rooms == {"before"}
    assert "Traceback" not in daemon.output
    assert len(daemon.logged("config.reload_failed")) == 1
    warnings = [w for w in daemon.logged("config.warning") if "plain http://" in w["warning"]]
    # One at start, one for the good reload.
    assert [w["level"] for w in warnings] == ["warning", "warning"]


async def test_metrics_counters_move_by_the_right_amounts(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    with trio.fail_after(20):
        app = await start_daemon(metrics=Listen("127.0.0.1", 0))
        url = f"http://{app.metrics_addresses[0]}"
        async with httpx.AsyncClient() as client:

            async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
                text = (await client.get(f"{url}/metrics")).text
                return {
                    (s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(text)
                    for s in family.samples
                }

            before = await scrape()
            assert before[("hipchatd_events_received_total", (("transport", "tcp"),))] == 0
            assert before[("hipchatd_events_rejected_total", (("reason", "invalid_json"),))] == 0
            address = app.tcp_addresses[0]
            await send_tcp(address, json.dumps(_event("m1")).encode())
            await emulator.wait_for_messages(1)
            await send_tcp(address, b"not json")
            ok = classic_event(name="fine", status=0)
            await send_tcp(address, json.dumps(ok).encode())
            while (await scrape())[("hipchatd_events_received_total", (("transport", "tcp"),))] < 3:
                await trio.sleep(0.01)
            await app.spool.flush()
            after = await scrape()
            health = await client.get(f"{url}/healthz")
    assert after[("hipchatd_events_received_total", (("transport", "tcp"),))] == 3
    assert after[("hipchatd_events_rejected_total", (("reason", "invalid_json"),))] == 1
    assert after[("hipchatd_events_skipped_total", (("reason", "status_ok"),))] == 1
    assert after[("hipchatd_notifications_total", (("api_version", "v2"),))] == 1
    assert after[("hipchatd_notification_latency_seconds_count", ())] == 1
    assert after[("hipchatd_spool_events", (("state", "pending"),))] == 0
    assert ("hipchatd_ratelimit_remaining", ()) in after
    assert health.status_code == 200


async def test_healthz_turns_503_when_the_spool_cannot_be_written(
    start_daemon: StartDaemon,
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    def disk_full(conn: sqlite3.Connection, batch: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    with trio.fail_after(20):
        app = await start_daemon(metrics=Listen("127.0.0.1", 0), state_dir=str(tmp_path))
        url = f"http://{app.metrics_addresses[0]}"
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{url}/healthz")).status_code == 200
            monkeypatch.setattr(spool_sql, "write_batch", disk_full)
            await send_tcp(app.tcp_addresses[0], json.dumps(_event("lost?")).encode())
            while app.spool.writable:
                await trio.sleep(0.01)
            unhealthy = await client.get(f"{url}/healthz")
            monkeypatch.undo()
            # The batch was kept: once the disk has room the event is delivered.
            await emulator.wait_for_messages(1)
            while not app.spool.writable:
                await trio.sleep(0.01)
            healthy = await client.get(f"{url}/healthz")
    assert unhealthy.status_code == 503
    assert "spool not writable" in unhealthy.json()["reason"]
    assert healthy.status_code == 200


def test_check_config_online_and_send_test(tmp_path: Path, emulator_process: str) -> None:
    config = _config(tmp_path / "hipchatd.json", emulator_process)
    hipchatd = [sys.executable, "-m", "hipchatd"]
    online = subprocess.run(
        [*hipchatd, "check-config", "--online", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert online.returncode == 0, online.stdout + online.stderr
    assert _messages(emulator_process) == []
    sent = subprocess.run(
        [*hipchatd, "send-test", "--room", "ops", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    [message] = _messages(emulator_process)
    assert message["room"] == "ops"
    assert "test notification" in message["message"]
    bad = json.loads(config.read_text())
    bad["hipchat"]["api_token"] = "wrong-token-value"
    config.write_text(json.dumps(bad))
    rejected = subprocess.run(
        [*hipchatd, "check-config", "--online", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert rejected.returncode != 0
    assert "401" in rejected.stdout
    assert "wrong-token-value" not in rejected.stdout + rejected.stderr


async def test_reload_adopts_rooms_and_limits_and_names_what_needs_a_restart(
    start_daemon: StartDaemon, emulator: Emulator
) -> None:
    with trio.fail_after(20):
        app = await start_daemon(room=("before",))
        old_budget = app.dispatcher.budget
        new = dataclasses.replace(
            app.config,
            hipchat=dataclasses.replace(app.config.hipchat, room=("after",), rate_limit=7),
            daemon=dataclasses.replace(app.config.daemon, max_frame_bytes=4096, max_age=60.0),
        )
        restart = app.reload(new)
        await send_tcp(app.tcp_addresses[0], json.dumps(_event("reloaded")).encode())
        await emulator.wait_for_messages(1)
    assert emulator.messages[0].room == "after"
    assert restart == ["hipchatd.max_frame_bytes"]
    # The running value stays until a restart; max_age applies at once.
    assert app.config.daemon.max_frame_bytes == 1024 * 1024
    assert app.config.daemon.max_age == 60.0
    # New limits (or a new token) start a new budget.
    assert app.dispatcher.budget is not old_budget
    assert app.dispatcher.budget.snapshot()["rate_limit"] == 7
