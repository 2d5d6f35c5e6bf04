"""systemd integration: sd_notify datagrams, adopted LISTEN_FDS sockets, the watchdog, the units.

Notifications go to a real AF_UNIX datagram socket (a file path and an
abstract name). Socket activation uses real sockets put on fds 3 and up, as
systemd does (saved and restored around each test: pytest keeps /dev/null
there), and once the real ``systemd-socket-activate`` launching a child.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from hipchatd.config import DEFAULT_SHUTDOWN_GRACE, load_config
from hipchatd.ops import systemd
from hipchatd.ops.systemd import LISTEN_FDS_START, SystemdError
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"


# -- helpers -------------------------------------------------------------------


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    """A bound datagram socket standing in for systemd, and an env naming it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        yield sock, {"NOTIFY_SOCKET": str(path)}


def _received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


@contextlib.contextmanager
def inherited(*files: int | None) -> Iterator[None]:
    """Put ``files`` (fds, or None for a closed slot) on fds 3, 4, ...; restore afterwards.

    The fds are dup'ed, so the caller keeps and closes its own objects.
    """
    slots = range(LISTEN_FDS_START, LISTEN_FDS_START + len(files))
    saved: list[int | None] = []
    for fd in slots:
        try:
            saved.append(os.dup(fd))
        except OSError:
            saved.append(None)
    try:
        for fd, source in zip(slots, files, strict=True):
            _place(source, fd)
        yield
    finally:
        for fd, backup in zip(slots, saved, strict=True):
            _place(backup, fd)
            if backup is not None:
                os.close(backup)


def _place(source: int | None, fd: int) -> None:
    """Dup ``source`` onto ``fd``; None closes ``fd``."""
    if source is None:
        with contextlib.suppress(OSError):
            os.close(fd)
    else:
        os.dup2(source, fd)


def _env(count: int, names: str | None = None, pid: int | None = None) -> dict[str, str]:
    env = {"LISTEN_PID": str(os.getpid() if pid is None else pid), "LISTEN_FDS": str(count)}
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    return env


def _close_all(adopted: Sequence[systemd.InheritedSocket]) -> None:
    for item in adopted:
        item.sock.close()


@pytest.fixture
def tcp_listener() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


@pytest.fixture
def udp_socket() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


# -- sd_notify -------------------------------------------------------------------


def test_ready_sends_ready_and_status_in_one_datagram(
    receiver: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = receiver
    assert systemd.ready("listening on 127.0.0.1:3033", env=env) is True
    assert _received(sock) == ["READY=1", "STATUS=listening on 127.0.0.1:3033"]
    assert systemd.ready(env=env) is True
    assert _received(sock) == ["READY=1"]


def test_abstract_namespace_address() -> None:
    name = f"hipchatd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert systemd.stopping(env={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_status_is_one_line(receiver: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = receiver
    assert systemd.status("delivering\n3 queued", env=env) is True
    assert _received(sock) == ["STATUS=delivering 3 queued"]


def test_reloading_carries_the_monotonic_clock(
    receiver: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = receiver
    before = time.monotonic_ns() // 1000
    assert systemd.reloading(env=env) is True
    after = time.monotonic_ns() // 1000
    first, second = _received(sock)
    assert first == "RELOADING=1"
    match = re.fullmatch(r"MONOTONIC_USEC=(\d+)", second)
    assert match is not None
    assert before <= int(match.group(1)) <= after


def test_notify_outside_systemd_is_a_quiet_no_op() -> None:
    assert systemd.notify("READY=1", env={}) is False
    assert systemd.notify("READY=1", env={"NOTIFY_SOCKET": ""}) is False
    assert systemd.notify("READY=1", env={"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_send_failure_is_logged_not_raised(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}
    with capture_logs() as logs:
        assert systemd.ready(env=env) is False
    [entry] = logs
    assert entry["event"] == "systemd.notify_failed"
    assert entry["log_level"] == "debug"
    assert entry["state"] == "READY"


def test_a_newline_inside_a_line_is_refused(
    receiver: tuple[socket.socket, dict[str, str]],
) -> None:
    _, env = receiver
    with pytest.raises(ValueError, match="newline"):
        systemd.notify("STATUS=a\nREADY=1", env=env)


# -- watchdog ---------------------------------------------------------------------


async def test_watchdog_pings_every_half_period(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = str(tmp_path / "notify")
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"}
    pings: list[float] = []
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        await sock.bind(path)

        async def receive() -> None:
            while True:
                assert await sock.recv(4096) == b"WATCHDOG=1"
                pings.append(trio.current_time())

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                start = trio.current_time()
                period = await nursery.start(systemd.watchdog, env)
                assert period == 10.0
                await trio.sleep(62.5)
                nursery.cancel_scope.cancel()
    offsets = [round(t - start, 6) for t in pings]
    assert offsets == [5.0 * i for i in range(13)]  # 0, 5, ..., 60


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"},
        {"WATCHDOG_USEC": "0"},
    ],
    ids=["unset", "other-pid", "zero"],
)
async def test_watchdog_off_returns_at_once(
    env: dict[str, str], tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "nobody"), **env}
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            assert await nursery.start(systemd.watchdog, env) is None
        assert trio.current_time() == 0


def test_watchdog_pid_of_this_process_counts() -> None:
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert systemd.watchdog_period(env) == 30.0


# -- socket activation ------------------------------------------------------------


def test_adopts_tcp_and_udp_by_their_own_type(
    tcp_listener: socket.socket, udp_socket: socket.socket
) -> None:
    # The UDP socket first and both named "sensu": neither order nor name decides.
    env = {**_env(2, "sensu:sensu"), "OTHER": "kept"}
    with inherited(udp_socket.fileno(), tcp_listener.fileno()):
        adopted = systemd.listen_fds(env)
        try:
            assert [(s.name, s.kind) for s in adopted] == [
                ("sensu", "datagram"),
                ("sensu", "stream"),
            ]
            assert [s.sock.fileno() for s in adopted] == [3, 4]
            assert adopted[1].sock.getsockname() == tcp_listener.getsockname()
            for item in adopted:
                assert item.sock.getblocking() is False
                assert os.get_inheritable(item.sock.fileno()) is False
        finally:
            _close_all(adopted)
    assert env == {"OTHER": "kept"}


async def test_adopted_sockets_serve_through_trio(
    tcp_listener: socket.socket, udp_socket: socket.socket
) -> None:
    # Everything inside: restoring fds 3 and 4 would pull them from under the adopted sockets.
    with inherited(tcp_listener.fileno(), udp_socket.fileno()), trio.fail_after(10):
        tcp, udp = systemd.listen_fds(_env(2, "tcp:udp"))
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(tcp.sock))
        async with listener:
            client = await trio.open_tcp_stream(*tcp_listener.getsockname())
            async with client, await listener.accept() as server:
                await client.send_all(b"event")
                assert await server.receive_some(5) == b"event"
        with trio.socket.from_stdlib_socket(udp.sock) as dgram:
            with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                await sender.sendto(b"datagram", udp_socket.getsockname())
            assert await dgram.recv(64) == b"datagram"


def test_listen_pid_of_another_process_is_ignored(tcp_listener: socket.socket) -> None:
    env = _env(1, "sensu", pid=1)
    with inherited(tcp_listener.fileno()), capture_logs() as logs:
        assert systemd.listen_fds(env) == []
        os.fstat(LISTEN_FDS_START)  # not closed, not adopted
    assert env == {}
    assert [e["event"] for e in logs] == ["systemd.listen_fds_ignored"]


def test_no_listen_fds_means_no_sockets() -> None:
    assert systemd.listen_fds({}) == []
    assert systemd.listen_fds({"LISTEN_PID": str(os.getpid())}) == []


def test_unset_false_keeps_the_variables(tcp_listener: socket.socket) -> None:
    env = _env(1)
    with inherited(tcp_listener.fileno()):
        adopted = systemd.listen_fds(env, unset=False)
        _close_all(adopted)
    assert env == _env(1)
    assert [s.name for s in adopted] == ["unknown"]


def test_wrong_number_of_names_falls_back_to_unknown(tcp_listener: socket.socket) -> None:
    with inherited(tcp_listener.fileno()), capture_logs() as logs:
        adopted = systemd.listen_fds(_env(1, "tcp:udp"))
        _close_all(adopted)
    assert [s.name for s in adopted] == ["unknown"]
    assert [e["event"] for e in logs] == ["systemd.fdnames_ignored"]


def test_regular_file_is_refused_loudly(tmp_path: Path) -> None:
    with (tmp_path / "file").open("w") as file, inherited(file.fileno()):
        with pytest.raises(SystemdError) as info:
            systemd.listen_fds(_env(1, "sensu"))
        os.fstat(LISTEN_FDS_START)  # left open
    message = str(info.value)
    assert "fd 3 ('sensu')" in message
    assert "not a socket (a regular file)" in message


def test_closed_fd_is_refused_loudly() -> None:
    with inherited(None), pytest.raises(SystemdError, match=r"fd 3 \('sensu'\): cannot be used"):
        systemd.listen_fds(_env(1, "sensu"))


def test_unix_socket_is_refused_loudly(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(tmp_path / "sock"))
        sock.listen()
        with inherited(sock.fileno()), pytest.raises(SystemdError) as info:
            systemd.listen_fds(_env(1, "local"))
    assert "fd 3 ('local'): a AF_UNIX socket" in str(info.value)
    assert "ListenStream=HOST:PORT" in str(info.value)


def test_stream_socket_not_listening_is_refused_loudly() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        with inherited(sock.fileno()), pytest.raises(SystemdError) as info:
            systemd.listen_fds(_env(1, "sensu"))
    assert "fd 3 ('sensu'): a stream socket that is not listening" in str(info.value)
    assert "Accept=no" in str(info.value)


def test_one_bad_fd_adopts_nothing(tcp_listener: socket.socket, tmp_path: Path) -> None:
    with (tmp_path / "file").open("w") as file, inherited(tcp_listener.fileno(), file.fileno()):
        with pytest.raises(SystemdError, match=r"fd 4 \('bad'\)"):
            systemd.listen_fds(_env(2, "good:bad"))
        # fd 3 was handed back untouched: still open, still the listener, still blocking.
        with socket.socket(fileno=os.dup(LISTEN_FDS_START)) as again:
            assert again.getsockname() == tcp_listener.getsockname()
            assert os.get_blocking(LISTEN_FDS_START) is True


@pytest.mark.parametrize(
    ("variable", "value"), [("LISTEN_FDS", "two"), ("LISTEN_PID", "-3")], ids=["fds", "pid"]
)
def test_garbled_variables_are_refused(variable: str, value: str) -> None:
    env = {**_env(1), variable: value}
    with pytest.raises(SystemdError, match=f"{variable}="):
        systemd.listen_fds(env)


_CHILD = """
import json, os
from hipchatd.ops import systemd
adopted = systemd.listen_fds()
print(json.dumps({
    "sockets": [[s.name, s.kind, s.sock.getsockname()[1]] for s in adopted],
    "left": sorted(k for k in os.environ if k.startswith("LISTEN_")),
}))
"""


def test_systemd_socket_activate_end_to_end() -> None:
    """The real launcher, nested: each invocation listens on one kind of socket only.

    ``systemd-socket-activate -d`` makes every ``-l`` a datagram socket, so
    TCP plus UDP takes two: the outer one listens on TCP and passes its fd
    through the inner one, which adds the UDP socket. Its ``--fdname`` names
    both fds ("udp:udp"): only the socket type can tell them apart. Each
    launcher waits for traffic before starting its child; one TCP connect
    starts both.
    """
    port = free_port()
    command = [
        "systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=tcp", "--",
        "systemd-socket-activate", "-d", "-l", f"127.0.0.1:{port}", "--fdname=udp", "--",
        sys.executable, "-c", _CHILD,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    ) as proc:
        try:
            assert proc.stderr is not None
            assert "Listening on" in proc.stderr.readline()
            with socket.create_connection(("127.0.0.1", port), timeout=10):
                stdout, stderr = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 0, stderr
    result = json.loads(stdout)
    assert result == {"sockets": [["udp", "stream", port], ["udp", "datagram", port]], "left": []}


# -- the units -------------------------------------------------------------------


def _unit(name: str) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in (UNITS / name).read_text().splitlines():
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            current.append((key, value))
    return sections


def test_sandbox_block_is_alphabetical_and_commented() -> None:
    text = (UNITS / "hipchatd.service").read_text()
    block = text[text.index("# -- sandbox") : text.index("[Install]")].splitlines()
    keys = []
    for previous, line in itertools.pairwise(block):
        if line and not line.startswith("#"):
            keys.append(line.partition("=")[0])
            first_of_group = not keys[:-1] or keys[-2] != keys[-1]
            if first_of_group and line.partition("=")[0] != "CapabilityBoundingSet":
                assert previous.startswith("#"), f"{line!r} has no comment saying why"
    assert keys == sorted(keys, key=str.lower)
    assert {"DynamicUser", "ProtectSystem", "SystemCallFilter", "UMask"} <= set(keys)


def test_service_settings_fit_the_daemon() -> None:
    service = dict(_unit("hipchatd.service")["Service"])
    assert service["Type"] == "notify"
    assert float(service["TimeoutStopSec"]) > DEFAULT_SHUTDOWN_GRACE
    assert service["LoadCredential"].startswith("hipchat_api_token:")
    socket_unit = _unit("hipchatd.socket")["Socket"]
    assert ("ListenStream", "127.0.0.1:3033") in socket_unit
    assert ("ListenDatagram", "127.0.0.1:3033") in socket_unit


def test_example_config_loads_with_the_credential(tmp_path: Path) -> None:
    (tmp_path / "hipchat_api_token").write_text("token-from-credential\n")
    result = load_config([UNITS / "hipchatd.json"], {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert result.warnings == ()
    assert result.config.hipchat.api_token.reveal() == "token-from-credential"
    assert "api_token" not in (UNITS / "hipchatd.json").read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd")
def test_units_verify_cleanly(tmp_path: Path) -> None:
    """As .ci/systemd-check does: ExecStart= pointed at an executable that exists here."""
    shutil.copy(UNITS / "hipchatd.socket", tmp_path)
    service = (UNITS / "hipchatd.service").read_text()
    assert "\nExecStart=/usr/local/bin/hipchatd serve " in service
    service = service.replace(
        "\nExecStart=/usr/local/bin/hipchatd ", f"\nExecStart={sys.executable} -m hipchatd "
    )
    (tmp_path / "hipchatd.service").write_text(service)
    for unit in ("hipchatd.socket", "hipchatd.service"):
        done = subprocess.run(
            ["systemd-analyze", "verify", f"./{unit}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (done.returncode, done.stdout + done.stderr) == (0, "")
