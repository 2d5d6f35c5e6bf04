"""The command line, as a user runs it: real processes, real sockets, real signals."""

from __future__ import annotations

import errno
import gc
import io
import json
import logging
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
import structlog
import trio

from hipchatd import __version__, cli
from hipchatd import app as app_module
from hipchatd.config import LoadResult
from hipchatd.errors import ConfigError, StartupError
from hipchatd.ops import logconfig
from tests.conftest import FIXTURES, free_port, make_config, wait_until
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


def test_help_lists_the_emulator_as_its_package_does() -> None:
    """Other commands leave the emulator's package unloaded; ``--help`` reads the same."""
    assert cli._parser("serve").format_help() == cli._parser("emulator").format_help()
    code = (
        "import sys; from hipchatd import cli; cli._parser('serve'); "
        "print(sorted(m for m in sys.modules if m.startswith('hipchatd.emulator')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


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


def test_serve_runs_the_daemon_with_its_line_flush_and_switch_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def run(fn: Any, *args: Any, instruments: Any = ()) -> None:
        seen["instruments"] = [type(instrument) for instrument in instruments]
        seen["switch_interval"] = sys.getswitchinterval()

    monkeypatch.setattr(cli.trio, "run", run)
    before = sys.getswitchinterval()
    try:
        code = cli.main(["serve", "--config", str(_serve_config(tmp_path))])
    finally:
        sys.setswitchinterval(before)
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    assert code == cli.EXIT_OK
    assert seen == {
        "instruments": [logconfig.LineFlush],
        "switch_interval": cli.GIL_SWITCH_INTERVAL,
    }


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


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "cannot listen on sensu.invalid:3033 (tcp, hipchatd.tcp): cannot resolve"
            " 'sensu.invalid' (Name or service not known); expected a host name or IP address",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied"),
            "cannot listen on sensu.invalid:3033 (tcp, hipchatd.tcp): permission denied"
            " (ports below 1024 need privileges); choose another port of 1024 or above",
        ),
        (
            OSError(errno.EMFILE, "Too many open files"),
            "cannot listen on sensu.invalid:3033 (tcp, hipchatd.tcp): Too many open files;"
            " choose another port, or check hipchatd.tcp",
        ),
    ],
    ids=["unresolvable", "privileged-port", "other"],
)
def test_a_listener_that_cannot_be_bound_is_one_line(exc: OSError, expected: str) -> None:
    error = StartupError.cannot_listen(
        exc, "tcp", "hipchatd.tcp", "sensu.invalid", 3033, fix_port="choose another port"
    )
    assert str(error).startswith(expected)
    assert "\n" not in str(error)


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


# -- reload ------------------------------------------------------------------------------


class _Running:
    """What ``app._reload`` needs of a running daemon when loading fails."""

    reloaded = False

    def status_line(self) -> str:
        return "0 pending"

    def reload(self, new: object) -> list[str]:
        self.reloaded = True
        return []


async def test_reload_survives_an_unexpected_error_while_loading() -> None:
    """Anything a load raises is a refused reload logged with its traceback, never an exit."""

    def load() -> LoadResult:
        raise RecursionError("maximum recursion depth exceeded")

    running = _Running()
    with trio.fail_after(10), structlog.testing.capture_logs() as logs:
        await app_module._reload(running, load)  # type: ignore[arg-type]
    assert not running.reloaded
    (failed,) = [record for record in logs if record["event"] == "config.reload_failed"]
    assert failed["log_level"] == "error"
    assert failed["exc_info"] is True
    assert "RecursionError" in failed["problem"]


async def test_reload_refused_logs_problems_as_errors_and_warnings_as_warnings() -> None:
    def load() -> LoadResult:
        raise ConfigError(["a.json: hipchat.timeout: bad"], ["a.json: hipchat.x: unknown key"])

    with trio.fail_after(10), structlog.testing.capture_logs() as logs:
        await app_module._reload(_Running(), load)  # type: ignore[arg-type]
    assert [(r["event"], r["log_level"]) for r in logs] == [
        ("config.reload_failed", "error"),
        ("config.warning", "warning"),
    ]


async def test_app_serve_reloads_on_sighup_and_stops_on_sigterm() -> None:
    """``app.serve`` is the top of the tree: it handles the signals ``cli`` runs it under."""
    config = make_config("http://127.0.0.1:1", room="ops")
    # shutdown_grace takes effect on reload (it is not a restart key).
    reloaded = make_config("http://127.0.0.1:1", room="dev", shutdown_grace=3.5)
    with trio.fail_after(30), structlog.testing.capture_logs() as logs:

        def events() -> list[str]:
            return [record["event"] for record in logs]

        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def serve() -> None:
                try:
                    await app_module.serve(
                        config, with_emulator=True, load=lambda: LoadResult(reloaded)
                    )
                finally:
                    gc.unfreeze()
                    done.set()

            nursery.start_soon(serve)
            await wait_until(lambda: "daemon.started" in events())
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_until(lambda: "config.reloaded" in events())
            os.kill(os.getpid(), signal.SIGTERM)
            await done.wait()
    (reload,) = [record for record in logs if record["event"] == "config.reloaded"]
    assert reload["rooms"] == ["dev"]
    (stopping,) = [record for record in logs if record["event"] == "daemon.stopping"]
    assert stopping["signal"] == "SIGTERM"
    assert stopping["shutdown_grace"] == 3.5


def test_cli_opens_no_nursery_and_handles_no_signal() -> None:
    """The task tree, signals included, is ``app.serve``'s; ``cli`` only runs it."""
    source = Path(cli.__file__).read_text()
    assert "open_nursery" not in source
    assert "open_signal_receiver" not in source
    assert "app.serve" in source


# -- serve --port and send-event -------------------------------------------------------------

EVENT = FIXTURES / "classic-critical.json"


def _trial_daemon(tmp_path: Path, port: int) -> Child:
    """``serve --emulator --port N`` on the default hosts (TCP and UDP on 127.0.0.1)."""
    config = tmp_path / f"trial-{port}.json"
    config.write_text('{"hipchatd": {}}')
    child = Child("serve", "--emulator", "--config", str(config), "--port", str(port))
    started = child.wait_logged("daemon.started")
    assert started["tcp"] == [f"127.0.0.1:{port}"]
    assert started["udp"] == f"127.0.0.1:{port}"
    return child


def _send_event(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """``hipchatd send-event ...`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    real = sys.stdin, sys.stdout, sys.stderr
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin or b""))
    sys.stdout, sys.stderr = out, err
    try:
        code = cli.main(["send-event", *args])
    finally:
        sys.stdin, sys.stdout, sys.stderr = real
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def trial_daemons(tmp_path: Path) -> Iterator[tuple[tuple[Child, int], tuple[Child, int]]]:
    """Two ``serve --emulator --port N`` daemons side by side."""
    first, second = free_port(), free_port()
    while second == first:
        second = free_port()
    one = _trial_daemon(tmp_path, first)
    try:
        two = _trial_daemon(tmp_path, second)
        try:
            yield (one, first), (two, second)
        finally:
            two.close()
    finally:
        one.close()


def _room_line(child: Child, text: str) -> str:
    return child.wait_line(lambda line: line.startswith("[room sensu]") and text in line)


def test_send_event_over_tcp_udp_and_stdin_to_two_trial_daemons(
    trial_daemons: tuple[tuple[Child, int], tuple[Child, int]],
) -> None:
    """The quick start without nc: two daemons on their own --port, events by send-event."""
    (one, first), (two, second) = trial_daemons
    code, out, err = _send_event(str(EVENT), "--port", str(first))
    assert (code, err) == (0, "")
    assert out == f"sent {EVENT.stat().st_size} bytes to 127.0.0.1:{first} over tcp\n"
    assert "CRITICAL" in _room_line(one, "sensu.test.local/testing")

    event = json.loads(EVENT.read_text())
    event["check"]["name"] = "over-udp"
    code, out, err = _send_event(
        "-", "--udp", "--port", str(second), stdin=json.dumps(event).encode()
    )
    assert (code, err) == (0, "")
    assert out.endswith(f"to 127.0.0.1:{second} over udp\n")
    _room_line(two, "sensu.test.local/over-udp")

    event["check"]["name"] = "from-stdin"
    code, out, err = _send_event("-", "--port", str(second), stdin=json.dumps(event).encode())
    assert code == 0, err
    _room_line(two, "sensu.test.local/from-stdin")
    # Each daemon got only its own events.
    assert "over-udp" not in one.output
    assert "sensu.test.local/testing" not in two.output


def test_send_event_defaults_to_the_configured_listener(tmp_path: Path) -> None:
    port = free_port()
    daemon = _trial_daemon(tmp_path, port)
    try:
        config = tmp_path / "sender.json"
        config.write_text(json.dumps({"hipchatd": {"tcp": {"host": "0.0.0.0", "port": port}}}))
        code, out, err = _send_event(str(EVENT), "--config", str(config))
        assert (code, err) == (0, "")
        # A listener on every interface is reached over loopback.
        assert f"to 127.0.0.1:{port} over tcp" in out
        _room_line(daemon, "sensu.test.local/testing")
    finally:
        daemon.close()


@pytest.fixture
def silent_listener() -> Iterator[socket.socket]:
    """A TCP listener that never accepts: a connection to it would wait in its backlog."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        yield listener


def _nothing_sent(listener: socket.socket) -> bool:
    try:
        listener.accept()[0].close()
    except BlockingIOError:
        return True
    return False


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"client": ', "{}:1:12: not JSON: Expecting value; nothing was sent"),
        (b"\xff{}", "{}: not UTF-8 text (bad byte at offset 0); nothing was sent"),
        (b"", "{}: empty; expected one Sensu event as JSON"),
        (b"[" * 100_000, "{}: not usable JSON: nested too deeply; nothing was sent"),
        (b'{"check": {}}', '{}: not a Sensu event: expected "client"+"action"'),
    ],
    ids=["truncated", "not-utf8", "empty", "deep", "not-an-event"],
)
def test_send_event_refuses_what_the_daemon_would_reject(
    tmp_path: Path, silent_listener: socket.socket, content: bytes, expected: str
) -> None:
    port = silent_listener.getsockname()[1]
    path = tmp_path / "event.json"
    path.write_bytes(content)
    code, out, err = _send_event(str(path), "--port", str(port))
    assert code == 2
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith("error: " + expected.format(path))
    assert _nothing_sent(silent_listener)


def test_send_event_to_no_daemon_says_to_start_one() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    code, out, err = _send_event(str(EVENT), "--port", str(port))
    assert (code, out) == (1, "")
    assert err == (
        f"error: cannot connect to 127.0.0.1:{port} (tcp): connection refused; is the daemon"
        " running? Start it with `hipchatd serve` (or name its address with --host and --port)\n"
    )


def test_send_event_over_udp_refuses_more_than_one_datagram(tmp_path: Path) -> None:
    event = json.loads(EVENT.read_text())
    event["check"]["output"] = "x" * 70_000
    path = tmp_path / "big.json"
    path.write_text(json.dumps(event))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        port = receiver.getsockname()[1]
        code, _, err = _send_event(str(path), "--udp", "--port", str(port))
        with pytest.raises(BlockingIOError):
            receiver.recv(1)
    assert code == 2
    assert err.startswith(f"error: {path.stat().st_size} bytes do not fit in one UDP datagram")
    assert "send it over TCP (without --udp)" in err


def test_send_event_refuses_more_than_max_frame_bytes(tmp_path: Path) -> None:
    config = tmp_path / "small.json"
    config.write_text(json.dumps({"hipchatd": {"max_frame_bytes": 1024}}))
    event = json.loads(EVENT.read_text())
    event["check"]["output"] = "x" * 2000
    code, _, err = _send_event("-", "--config", str(config), stdin=json.dumps(event).encode())
    assert code == 2
    assert err == (
        "error: stdin: over 1024 bytes, the daemon's hipchatd.max_frame_bytes;"
        " it would reject the event\n"
    )
