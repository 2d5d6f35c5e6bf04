"""The command line, as a user runs it: real processes, real sockets, real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hipchatd import __version__
from tests.conftest import FIXTURES

HIPCHATD = [sys.executable, "-m", "hipchatd"]
TOKEN = "cli-token-5f4e3d2c1b0a"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HIPCHATD, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def write_config(path: Path, **hipchat: object) -> Path:
    doc = {
        "hipchat": {"api_token": TOKEN, **hipchat},
        "hipchatd": {"tcp": {"host": "127.0.0.1", "port": 0}, "udp": None},
    }
    path.write_text(json.dumps(doc))
    return path


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"hipchatd {__version__}"


def test_check_config_ok(tmp_path: Path) -> None:
    result = run("check-config", "--config", str(write_config(tmp_path / "a.json")))
    assert result.returncode == 0
    assert result.stdout.strip() == "OK"


def test_check_config_reports_each_problem(tmp_path: Path) -> None:
    config = write_config(tmp_path / "a.json", timeout="ten", api_version="v3")
    result = run("check-config", "--config", str(config))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert any(f"{config}: hipchat.timeout" in line and '"ten"' in line for line in errors)
    assert any(f"{config}: hipchat.api_version" in line and '"v3"' in line for line in errors)
    assert TOKEN not in result.stdout + result.stderr


def test_serve_refuses_a_bad_config(tmp_path: Path) -> None:
    config = write_config(tmp_path / "a.json", room=[])
    result = run("serve", "--config", str(config))
    assert result.returncode != 0
    assert "hipchat.room" in result.stdout + result.stderr


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    config = write_config(tmp_path / "a.json", room="sensu")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*HIPCHATD, "serve", "--emulator", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _read_until(proc: subprocess.Popen[str], predicate: object, lines: list[str]) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if predicate(line):  # type: ignore[operator]
            return line
    raise AssertionError("expected output not seen:\n" + "".join(lines))


def test_serve_with_emulator_prints_a_sent_event(daemon: subprocess.Popen[str]) -> None:
    """The README's quick start: an event written with nc shows up in the console."""
    lines: list[str] = []
    started = _read_until(daemon, lambda line: '"daemon.started"' in line, lines)
    host, port = json.loads(started)["tcp"][0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall((FIXTURES / "classic-critical.json").read_bytes())
    echo = _read_until(daemon, lambda line: line.startswith("[room sensu]"), lines)
    assert "CRITICAL" in echo
    assert "sensu.test.local/testing" in echo
    _read_until(daemon, lambda line: '"event.delivered"' in line, lines)
    daemon.send_signal(signal.SIGTERM)
    rest, _ = daemon.communicate(timeout=30)
    assert daemon.returncode == 0
    output = "".join(lines) + rest
    assert TOKEN not in output
    assert '"daemon.stopped"' in output
