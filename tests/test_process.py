"""Durable delivery across real processes: ``kill -9``, SIGTERM, a second signal, the spool CLI.

The daemon and the HipChat emulator run as separate ``python -m hipchatd``
processes on loopback; the tests signal them as an init system or an
operator would and read the daemon's JSON log lines, the emulator's
``/_emulator/*`` endpoints and ``hipchatd spool`` output. Every wait has a
wall-clock deadline; every child is killed at teardown.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import classic_event
from tests.processes import HIPCHATD, REPO, STARTUP, Child, child_env, wait_for

TOKEN = "process-token-9a8b7c6d5e4f"
#: A storm message's header: "12 events: ..." (html wraps it in <b>).
_STORM_HEADER = re.compile(r"(?:<b>)?(\d+) events:")


class Emulator:
    """``hipchatd emulator`` in its own process, driven through ``/_emulator/*``."""

    def __init__(self, child: Child) -> None:
        self.child = child
        line = child.wait_line(lambda text: "emulator listening on" in text)
        match = re.search(r"listening on (http://[^;\s]+);", line)
        assert match is not None, line
        self.url = match.group(1)
        self.port = int(self.url.rsplit(":", 1)[1])
        wait_for("the emulator answers", self._answers, STARTUP)

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/_emulator/requests", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def messages(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/_emulator/messages", timeout=10)
        response.raise_for_status()
        messages: list[dict[str, Any]] = response.json()
        return messages

    def arrived(self) -> int:
        """API requests the emulator received, including those still waiting out its latency."""
        response = httpx.get(f"{self.url}/_emulator/requests", timeout=10)
        response.raise_for_status()
        count: int = response.json()["arrived"]
        return count

    def faults(self, **faults: object) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/_emulator/faults", json=faults, timeout=10)
        response.raise_for_status()
        state: dict[str, Any] = response.json()
        return state

    def checks_seen(self, prefix: str) -> set[str]:
        """Check names starting with ``prefix`` in any delivered message (storms included)."""
        text = "\n".join(m["message"] for m in self.messages())
        return set(re.findall(rf"\b{re.escape(prefix)}\d\d\b", text))

    def represented(self) -> int:
        """Events the delivered messages stand for: a storm message's header count, else one."""
        total = 0
        for message in self.messages():
            match = _STORM_HEADER.match(message["message"])
            total += int(match.group(1)) if match else 1
        return total


class Daemon:
    """``hipchatd serve`` in its own process, listening for Sensu on a loopback TCP port."""

    def __init__(self, child: Child, state_dir: Path) -> None:
        self.child = child
        self.state_dir = state_dir
        started = child.wait_logged("daemon.started")
        host, port = started["tcp"][0].rsplit(":", 1)
        self.address = (host, int(port))

    def send(self, event: dict[str, Any]) -> None:
        """What Sensu does: connect, write the event once, close."""
        with socket.create_connection(self.address, timeout=10) as sock:
            sock.sendall(json.dumps(event).encode())

    def signal(self, signum: signal.Signals) -> None:
        self.child.popen.send_signal(signum)


class Cluster:
    """Starts emulators, daemons and spool commands for one test; kills every child after it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.state_dir = tmp_path / "state"
        self.children: list[Child] = []

    def start(self, *args: str) -> Child:
        child = Child(*args)
        self.children.append(child)
        return child

    def emulator(self, *args: str, port: int = 0) -> Emulator:
        return Emulator(self.start("emulator", "--port", str(port), "--token", TOKEN, *args))

    def daemon(self, emulator: Emulator, **settings: object) -> Daemon:
        config = {
            "hipchat": {"api_token": TOKEN, "server_url": emulator.url, "room": "sensu"},
            "hipchatd": {
                "tcp": {"host": "127.0.0.1", "port": 0},
                "udp": None,
                "state_dir": str(self.state_dir),
                **settings,
            },
        }
        path = self.tmp_path / f"hipchatd-{len(self.children)}.json"
        path.write_text(json.dumps(config))
        return Daemon(self.start("serve", "--config", str(path)), self.state_dir)

    def spool_options(self) -> list[str]:
        """Where ``hipchatd spool`` finds this cluster's spool."""
        return ["--state-dir", str(self.state_dir)]

    def spool(self, *args: str) -> str:
        """``hipchatd spool ARGS --state-dir D``'s stdout; it must succeed."""
        result = subprocess.run(
            [*HIPCHATD, "spool", *args, *self.spool_options()],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=child_env(),
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def spool_rows(self, *args: str) -> list[str]:
        """The table rows of ``hipchatd spool list ARGS`` (no header); [] when it says none."""
        out = self.spool("list", *args)
        if out.startswith("no "):
            return []
        header, *rows = out.splitlines()
        assert header.startswith("ID "), out
        return rows

    def pending_now(self, table: str = "pending") -> int:
        """Pending (or ``dead``) entries, read straight from the spool file.

        For tight polling while deliveries are in flight: the ``spool list``
        command spends a whole interpreter start-up per look.
        """
        path = self.state_dir / "spool.sqlite3"
        if not path.exists():
            return 0
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            count: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        finally:
            conn.close()
        return count

    def close(self) -> None:
        for child in self.children:
            child.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path)
    try:
        yield running
    finally:
        running.close()


def _event(check: str, room: str | None = None) -> dict[str, Any]:
    attrs: dict[str, Any] = {"name": check, "output": f"{check} output"}
    if room is not None:
        attrs["hipchat"] = {"room": room}
    event = classic_event(**attrs)
    event["client"]["name"] = "web-1"
    event["id"] = f"web-1-{check}"
    return event


def _checks(rows: list[str]) -> set[str]:
    """Check names in ``spool list`` rows (the SOURCE/CHECK column is ``web-1/CHECK``)."""
    return {m for row in rows for m in re.findall(r"web-1/(\S+)", row)}


def _order(daemon: Daemon, *events: str) -> list[int]:
    names = [record["event"] for record in daemon.child.logs()]
    return [names.index(event) for event in events]


def test_kill_9_mid_delivery_loses_nothing(cluster: Cluster) -> None:
    """SIGKILL while messages are in flight; the restarted daemon delivers every accepted event."""
    kill_9_mid_delivery(cluster, "kill9-")


def kill_9_mid_delivery(cluster: Cluster, prefix: str) -> Daemon:
    """30 events to 3 rooms, SIGKILL with the first messages in flight, restart: every event
    is delivered at least once and the spool empties. Returns the restarted daemon."""
    latency = 5.0
    emulator = cluster.emulator("--latency", str(latency), "--auto-create-rooms")
    daemon = cluster.daemon(emulator)
    checks = {f"{prefix}{i:02d}" for i in range(30)}
    rooms = ["ops", "dev", "db"]
    ordered = sorted(checks)
    # One event per room first, and its request in flight, whatever the machine's load:
    # the emulator answers each after `latency` seconds.
    for i, check in enumerate(ordered[: len(rooms)]):
        daemon.send(_event(check, room=rooms[i]))
    wait_for("a request in flight per room", lambda: emulator.arrived() == len(rooms), STARTUP)
    for i, check in enumerate(ordered[len(rooms) :], start=len(rooms)):
        daemon.send(_event(check, room=rooms[i % len(rooms)]))
    wait_for("all 30 events accepted", lambda: cluster.pending_now() == 30, STARTUP)
    # The rest wait behind their room's message in flight, none of which has come back.
    assert emulator.messages() == []
    daemon.signal(signal.SIGKILL)
    assert daemon.child.wait_exit(10) == -signal.SIGKILL

    # Nothing was confirmed to the daemon, so nothing left the spool.
    assert _checks(cluster.spool_rows()) == checks
    # The requests in flight at the kill still land (HipChat never heard the client left)...
    wait_for("an in-flight request lands", emulator.messages, latency + 10)
    time.sleep(0.5)
    # ...but the events queued behind them were never sent.
    assert 1 <= emulator.represented() < 30

    emulator.faults(latency=0)
    restarted = cluster.daemon(emulator)
    recovered = restarted.child.wait_logged("spool.recovered")
    assert recovered["entries"] == 30
    wait_for(
        "every event delivered after the restart",
        lambda: emulator.checks_seen(prefix) == checks,
        60,
    )
    wait_for("the spool emptied", lambda: cluster.pending_now() == 0, 15)
    assert cluster.spool_rows() == []
    # At least once: the in-flight ones arrive twice, nothing is missing.
    assert emulator.represented() >= 30
    return restarted


def test_sigterm_drains_the_in_flight_message(cluster: Cluster) -> None:
    """SIGTERM: stop accepting, let the message in flight finish, exit 0 within the grace."""
    grace = 5.0
    emulator = cluster.emulator("--latency", "2", "--auto-create-rooms")
    daemon = cluster.daemon(emulator, shutdown_grace=grace)
    daemon.send(_event("drain-00"))
    wait_for("the event accepted", lambda: cluster.pending_now() == 1, STARTUP)
    time.sleep(0.5)
    assert emulator.messages() == []
    stopping_at = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.child.wait_exit(grace + 10) == 0
    took = time.monotonic() - stopping_at
    assert took < grace + 2, daemon.child.output

    assert emulator.checks_seen("drain-") == {"drain-00"}
    stopping, delivered, stopped = _order(
        daemon, "daemon.stopping", "event.delivered", "daemon.stopped"
    )
    # Delivered (and its spool entry deleted) after the signal, before the exit.
    assert stopping < delivered < stopped
    assert daemon.child.logged("daemon.stopping")[0]["signal"] == "SIGTERM"
    assert daemon.child.logged("daemon.grace_expired") == []
    assert daemon.child.logged("spool.closed")[0]["pending"] == 0
    assert cluster.spool_rows() == []


def test_sigterm_while_hipchat_is_down_keeps_the_events(cluster: Cluster) -> None:
    """HipChat down: SIGTERM exits 0 promptly, the events stay spooled; a restart delivers."""
    grace = 5.0
    emulator = cluster.emulator("--auto-create-rooms")
    daemon = cluster.daemon(emulator, shutdown_grace=grace)
    assert emulator.faults(down_for=60)["down"]  # the control endpoints stay up
    checks = {"down-00", "down-01"}
    for check in sorted(checks):
        daemon.send(_event(check))
    daemon.child.wait_logged("delivery.failed")
    wait_for("both events accepted", lambda: cluster.pending_now() == 2, STARTUP)
    stopping_at = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.child.wait_exit(grace + 10) == 0
    assert time.monotonic() - stopping_at < grace + 2, daemon.child.output
    assert daemon.child.logged("daemon.stopped")
    assert daemon.child.logged("event.delivered") == []

    rows = cluster.spool_rows()
    assert _checks(rows) == checks
    assert len(rows) == 2
    # HipChat back: a fresh emulator on the same address.
    emulator.child.close()
    emulator = cluster.emulator("--auto-create-rooms", port=emulator.port)
    cluster.daemon(emulator, shutdown_grace=grace)
    wait_for(
        "the spooled events delivered", lambda: emulator.checks_seen("down-") == checks, STARTUP
    )
    wait_for("the spool emptied", lambda: cluster.pending_now() == 0, 15)
    assert cluster.spool_rows() == []


def test_second_signal_stops_at_once(cluster: Cluster) -> None:
    """SIGTERM then SIGINT: exit within about 2 s, not the 20 s grace; the event stays spooled."""
    emulator = cluster.emulator("--latency", "30", "--auto-create-rooms")
    daemon = cluster.daemon(emulator, shutdown_grace=20)
    daemon.send(_event("twice-00"))
    wait_for("the event accepted", lambda: cluster.pending_now() == 1, STARTUP)
    time.sleep(0.5)
    daemon.signal(signal.SIGTERM)
    daemon.child.wait_logged("daemon.stopping", timeout=10)
    time.sleep(0.5)
    now_at = time.monotonic()
    daemon.signal(signal.SIGINT)
    assert daemon.child.wait_exit(20) == 0
    assert time.monotonic() - now_at < 3.0, daemon.child.output
    [now] = daemon.child.logged("daemon.stopping_now")
    assert now["signal"] == "SIGINT"
    assert daemon.child.logged("event.delivered") == []

    assert _checks(cluster.spool_rows()) == {"twice-00"}
    emulator.faults(latency=0)
    cluster.daemon(emulator)
    # Well before the first attempt's 30 s answer could land: this is the restart's delivery.
    wait_for(
        "the event delivered after the restart",
        lambda: emulator.checks_seen("twice-") == {"twice-00"},
        15,
    )
    wait_for("the spool emptied", lambda: cluster.pending_now() == 0, 15)
    assert cluster.spool_rows() == []


def test_spool_commands_on_a_live_daemon(cluster: Cluster) -> None:
    """A dead letter is listed, re-queued with ``spool retry --all`` and delivered, live."""
    emulator = cluster.emulator("--room", "sensu")
    daemon = cluster.daemon(emulator)
    daemon.send(_event("ghost-00", room="nope"))
    dead = daemon.child.wait_logged("delivery.dead_lettered")
    assert dead["room"] == "nope"
    wait_for("the dead letter committed", lambda: cluster.pending_now("dead") == 1, 15)
    [row] = cluster.spool_rows("--dead")
    assert "web-1/ghost-00" in row
    assert "nope" in row
    assert "permanent" in row
    assert "Room nope not found" in row
    assert cluster.spool_rows() == []

    # The room exists now: HipChat restarted (same address) with it.
    emulator.child.close()
    emulator = cluster.emulator("--room", "sensu", "--room", "nope", port=emulator.port)
    out = cluster.spool("retry", "--all")
    assert out.startswith("re-queued 1 dead-lettered event "), out
    requeued = daemon.child.wait_logged("spool.requeued", timeout=15)
    assert requeued["entries"] == 1
    wait_for(
        "the re-queued event delivered",
        lambda: [m["room"] for m in emulator.messages() if "ghost-00" in m["message"]] == ["nope"],
        15,
    )
    wait_for("the spool emptied", lambda: cluster.pending_now() == 0, 15)
    assert cluster.spool_rows() == []
    assert cluster.spool_rows("--dead") == []
    assert cluster.spool("purge", "--dead").startswith("purged 0 dead-lettered events")
    assert daemon.child.popen.poll() is None
