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
from typing import Any

import pytest

from hipchatd import __version__
from tests.conftest import FIXTURES
from tests.processes import STARTUP, Child

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


# -- check-config: warnings apart, files that are not JSON files -------------------------


def test_check_config_labels_warnings_as_warnings_beside_errors(tmp_path: Path) -> None:
    config = write_config(tmp_path / "a.json", timeout="ten", server_url="http://h.example")
    doc = json.loads(config.read_text())
    doc["hipchat"]["romm"] = "ops"
    config.write_text(json.dumps(doc))
    result = run("check-config", "--config", str(config))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert [line for line in lines if line.startswith("error: ")] == [
        f'error: {config}: hipchat.timeout: got "ten" (string); expected a number of seconds > 0'
    ]
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert len(warnings) == 2
    assert any("hipchat.romm: unknown key" in line for line in warnings)
    assert any("hipchat.server_url: plain http://" in line for line in warnings)
    assert len(lines) == 3


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[" * 100_000, ":1:101: nested deeper than 100 levels"),
        ('{"hipchat": {"rate_limit": ' + "9" * 5000 + "}}", ":1:28: an integer of 5000 digits"),
    ],
    ids=["deep-nesting", "huge-integer"],
)
def test_check_config_reports_unparsable_files_in_one_line(
    tmp_path: Path, content: str, expected: str
) -> None:
    config = tmp_path / "a.json"
    config.write_text(content)
    result = run("check-config", "--config", str(config))
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {config}{expected}")


def test_check_config_refuses_a_fifo_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "hipchatd.json"
    os.mkfifo(fifo)
    result = run("check-config", "--config", str(fifo))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {fifo}: a FIFO (named pipe), not a regular file; expected a JSON file"
    ]


def test_check_config_refuses_a_ca_file_that_is_not_pem(tmp_path: Path) -> None:
    """It said OK, and then serve died with a traceback."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    config = write_config(tmp_path / "a.json", ca_file=str(ca))
    result = run("check-config", "--config", str(config))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f'error: {config}: hipchat.ca_file: got "{ca}" (string): no CA cert')


# -- serve: start-up failures are one line -----------------------------------------------


def _serve_config(tmp_path: Path, **daemon: object) -> Path:
    path = tmp_path / "serve.json"
    doc = {
        "hipchat": {"api_token": TOKEN},
        "hipchatd": {
            "tcp": {"host": "127.0.0.1", "port": 0},
            "udp": None,
            "state_dir": str(tmp_path / "state"),
            **daemon,
        },
    }
    path.write_text(json.dumps(doc))
    return path


def _fails_to_start(*args: str) -> dict[str, Any]:
    """Run ``hipchatd serve ...``; it must exit 1 with one ERROR line and no traceback."""
    child = Child("serve", *args)
    try:
        code = child.wait_exit(STARTUP)
    finally:
        child.close()
    assert code == 1, child.output
    assert "Traceback" not in child.output
    errors = [record for record in child.logs() if record["level"] == "error"]
    assert len(errors) == 1, child.output
    # Nothing but JSON log lines: no stray output beside the one line.
    assert all(line.startswith("{") for line in child.output.splitlines()), child.output
    return errors[0]


@pytest.fixture
def tcp_port_in_use() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_serve_on_a_tcp_port_in_use_says_so_in_one_line(
    tmp_path: Path, tcp_port_in_use: int
) -> None:
    """It was a 40-line traceback."""
    config = _serve_config(tmp_path, tcp={"host": "127.0.0.1", "port": tcp_port_in_use})
    error = _fails_to_start("--config", str(config))
    assert error["event"] == "daemon.start_failed"
    message = error["error"]
    assert message.startswith(
        f"cannot listen on 127.0.0.1:{tcp_port_in_use} (tcp, hipchatd.tcp): address already in use"
    )
    assert f"ss -ltnp 'sport = :{tcp_port_in_use}'" in message
    assert "hipchatd serve --port N" in message
    assert "socket activation" in message


def test_serve_on_a_udp_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        config = _serve_config(tmp_path, udp={"host": "127.0.0.1", "port": port})
        error = _fails_to_start("--config", str(config))
    assert error["error"].startswith(
        f"cannot listen on 127.0.0.1:{port} (udp, hipchatd.udp): address already in use"
    )
    assert f"ss -lunp 'sport = :{port}'" in error["error"]


def test_serve_port_flag_in_use_names_the_port(tmp_path: Path, tcp_port_in_use: int) -> None:
    config = _serve_config(tmp_path)
    error = _fails_to_start("--config", str(config), "--port", str(tcp_port_in_use))
    assert f"127.0.0.1:{tcp_port_in_use} (tcp, hipchatd.tcp)" in error["error"]


def test_serve_with_a_metrics_address_in_use_says_so_in_one_line(
    tmp_path: Path, tcp_port_in_use: int
) -> None:
    config = _serve_config(tmp_path, metrics={"host": "127.0.0.1", "port": tcp_port_in_use})
    error = _fails_to_start("--config", str(config))
    assert error["error"].startswith(
        f"cannot listen on 127.0.0.1:{tcp_port_in_use} (http, hipchatd.metrics):"
        " address already in use"
    )
    assert "hipchatd.metrics.port" in error["error"]


def test_serve_on_an_address_not_of_this_host_says_so_in_one_line(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1: never an address of this host, nothing is sent.
    config = _serve_config(tmp_path, tcp={"host": "192.0.2.1", "port": 0})
    error = _fails_to_start("--config", str(config))
    assert error["error"].startswith(
        "cannot listen on 192.0.2.1:0 (tcp, hipchatd.tcp): address not available:"
        " 192.0.2.1 is not an address of this host"
    )


def test_serve_with_a_spool_that_cannot_be_opened_names_the_cause(tmp_path: Path) -> None:
    """It logged only "Exceptions from Trio nursery (1 sub-exception)"."""
    (tmp_path / "state").write_text("a file where the spool directory should be")
    config = _serve_config(tmp_path)
    error = _fails_to_start("--config", str(config))
    assert error["event"] == "spool.unavailable"
    assert error["error"].startswith(f"cannot open the spool {tmp_path / 'state'}")
    assert "Trio nursery" not in error["error"]


def test_serve_with_a_ca_file_that_is_not_pem_is_refused_in_one_line(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    config = _serve_config(tmp_path)
    doc = json.loads(config.read_text())
    doc["hipchat"]["ca_file"] = str(ca)
    config.write_text(json.dumps(doc))
    child = Child("serve", "--config", str(config))
    try:
        assert child.wait_exit(STARTUP) == 2
    finally:
        child.close()
    assert "Traceback" not in child.output
    (invalid,) = child.logged("config.invalid")
    assert "hipchat.ca_file" in invalid["problem"]
