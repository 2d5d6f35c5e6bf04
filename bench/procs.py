"""Child processes of the benchmark: the daemon, the emulator, ceilings, the generator.

Every child is registered with a :class:`Children` owner and stopped (SIGTERM,
then SIGKILL after a grace period) when the owner closes, so a run leaves no
process behind whatever fails. CPU time and peak RSS are read from
``/proc/<pid>`` (Linux), without extra dependencies.

The tests that run hipchatd as a real process use the same helpers
(:func:`child_env`, :func:`wait_for`, :func:`memory_mb`, :class:`Child`), so
this module needs nothing beyond the standard library.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "REPO",
    "Child",
    "Children",
    "Daemon",
    "Emulator",
    "HarnessError",
    "child_env",
    "free_port",
    "memory_mb",
    "spool_available",
    "use_source",
    "wait_for",
]

REPO = Path(__file__).resolve().parent.parent
#: The directory holding the ``hipchatd`` package under test (see :func:`use_source`).
SOURCE = REPO
_TICK = os.sysconf("SC_CLK_TCK")
#: Seconds a child gets to exit on SIGTERM before SIGKILL.
STOP_GRACE = 5.0
#: Seconds the daemon or emulator may take to start listening.
START_TIMEOUT = 20.0
#: Settings that would otherwise leak into a child from the environment running it.
STRAY_SETTINGS = (
    "HIPCHAT_API_TOKEN",
    "STATE_DIRECTORY",
    "CREDENTIALS_DIRECTORY",
    "PYTHONASYNCIODEBUG",
)

T = TypeVar("T")


class HarnessError(RuntimeError):
    """The harness itself failed (a child did not start, a phase overran its cap)."""


def wait_for(
    what: str,
    probe: Callable[[], T],
    timeout: float,
    step: float = 0.05,
    *,
    alive: Callable[[], bool] | None = None,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy, and return that.

    Raises HarnessError after ``timeout`` seconds, or as soon as ``alive``
    (if given) says the process that should bring it about has exited; the
    message names ``what``, the last value and ``detail()`` (a log tail).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        gone = alive is not None and not alive()
        if gone or time.monotonic() >= deadline:
            why = "the process exited" if gone else f"not within {timeout:g} s"
            more = f"\n{detail()}" if detail is not None else ""
            raise HarnessError(f"{why}: {what} (last: {value!r}){more}")
        time.sleep(step)


def child_env(source: Path | None = None) -> dict[str, str]:
    """The environment of a child: unbuffered output, no stray settings, and first on
    PYTHONPATH the package under test (``source``, else the checkout), then the checkout."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    paths = [str(source or REPO), str(REPO), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    for name in STRAY_SETTINGS:
        env.pop(name, None)
    return env


def memory_mb(pid: int) -> dict[str, float]:
    """``rss_mb`` now and ``peak_mb`` (VmHWM, the peak since start) of ``pid``, in MiB.

    Empty once the process has gone.
    """
    out: dict[str, float] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out["rss_mb" if key == "VmRSS" else "peak_mb"] = int(value.split()[0]) / 1024
    return out


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that was free a moment ago (the race is acceptable on loopback)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def use_source(path: Path) -> None:
    """Benchmark the ``hipchatd`` package found in ``path`` instead of the checkout's.

    E.g. a snapshot from ``git archive HEAD hipchatd | tar -x -C DIR`` while the
    working tree is mid-edit. The harness process imports it from there too.
    """
    global SOURCE
    SOURCE = path.resolve()
    if not (SOURCE / "hipchatd" / "__init__.py").exists():
        raise HarnessError(f"{SOURCE} holds no hipchatd package")
    sys.path.insert(0, str(SOURCE))
    _level_on_serve.cache_clear()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def spool_available() -> bool:
    """Whether the daemon has a durable spool (``state_dir``): older trees kept it in one module."""
    package = SOURCE / "hipchatd"
    return (package / "delivery" / "spool").is_dir() or (package / "spool.py").exists()


@functools.cache
def _level_on_serve() -> bool:
    """Whether ``--log-level`` belongs to ``serve`` (else it is a top-level option)."""
    done = subprocess.run(
        [sys.executable, "-m", "hipchatd", "serve", "--help"],
        cwd=SOURCE,
        env=child_env(SOURCE),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return "--log-level" in done.stdout


@dataclass
class Child:
    """One child process and where its output goes."""

    name: str
    popen: subprocess.Popen[Any]
    log: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu(self) -> float:
        """User + system CPU seconds used so far (0.0 once it has exited)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / _TICK

    def memory(self) -> dict[str, float]:
        """``rss_mb`` now and ``peak_mb`` (VmHWM, the peak since start), in MiB."""
        return memory_mb(self.pid)

    def tail(self, lines: int = 20) -> str:
        """The last lines of its log, for error messages."""
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after :data:`STOP_GRACE`; waits for the exit."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self.popen.wait(STOP_GRACE)


@dataclass
class Emulator(Child):
    """A ``hipchatd emulator`` process and its admin API."""

    url: str = ""
    token: str = ""

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """One admin request; the decoded JSON answer (None for 204)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def answers(self) -> bool:
        """Whether its admin API answers."""
        try:
            self.counts()
        except (urllib.error.URLError, OSError):
            return False
        return True

    def counts(self) -> dict[str, int]:
        """API requests answered so far, by status, plus ``total``."""
        result: dict[str, int] = self.call("GET", "/_emulator/requests")
        return result

    def messages(self) -> list[dict[str, Any]]:
        """Every message accepted since the last reset."""
        result: list[dict[str, Any]] = self.call("GET", "/_emulator/messages", timeout=120)
        return result

    def reset(self) -> None:
        """Clear messages, requests, counters and faults."""
        self.call("POST", "/_emulator/reset")

    def faults(self, **faults: Any) -> Any:
        """``POST /_emulator/faults``: latency, fail_next, down_for, rate_limit, flood_limit."""
        return self.call("POST", "/_emulator/faults", faults)

    def wait_delivered(self, count: int, *, cap: float, quiet: float) -> float:
        """Wait until ``count`` API requests were answered, or none came for ``quiet`` s.

        Returns the seconds waited. Gives up at ``cap`` seconds.
        """
        t0 = time.monotonic()
        last, last_change = -1, t0
        while True:
            total = self.counts().get("total", 0)
            now = time.monotonic()
            if total != last:
                last, last_change = total, now
            if total >= count or now - last_change >= quiet or now - t0 >= cap:
                return now - t0
            time.sleep(0.1 if count - total < 200 else 0.25)


@dataclass
class Daemon(Child):
    """A ``hipchatd serve`` process, its ports and its log file."""

    tcp_port: int = 0
    udp_port: int = 0
    metrics_port: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, float] | None:
        """Samples from ``GET /metrics``, or None if nothing answers.

        Each sample is under its full name with labels (``name{state="pending"}``),
        and each name also holds the sum over its labels.
        """
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2
            ) as response:
                text = response.read().decode()
        except (urllib.error.URLError, OSError):
            return None
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.partition("{")[0]
            with contextlib.suppress(ValueError):
                samples[name] = samples.get(name, 0.0) + float(value)
                if name_labels != name:
                    samples[name_labels] = float(value)
        return samples

    def pending(self) -> float | None:
        """Deliveries waiting in the spool, or None (no /metrics, or no spool)."""
        samples = self.metrics()
        if samples is None:
            return None
        return samples.get('hipchatd_spool_events{state="pending"}')

    def received(self) -> float | None:
        """``hipchatd_events_received_total`` (all transports), or None without metrics."""
        samples = self.metrics()
        if samples is None or "hipchatd_events_received_total" not in samples:
            return None
        return samples["hipchatd_events_received_total"]

    def log_lines(self, event: str) -> int:
        """How many log lines carry ``"event":"<event>"`` (or the spaced form of older
        versions, which ``--hipchatd`` can benchmark)."""
        if self.log is None or not self.log.exists():
            return 0
        needles = (f'"event":"{event}"', f'"event": "{event}"')
        with self.log.open(errors="replace") as f:
            return sum(1 for line in f if any(n in line for n in needles))


class Children:
    """Owns every child started through it; ``close()`` stops them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every child still running, newest first."""
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    def stop(self, child: Child) -> None:
        """Stop one child now."""
        child.stop()
        if child in self.children:
            self.children.remove(child)

    def _popen(self, name: str, argv: list[str], *, log: bool = True) -> tuple[Any, Path | None]:
        path = self.workdir / f"{name}.log" if log else None
        out: Any = path.open("wb") if path is not None else subprocess.DEVNULL
        try:
            popen = subprocess.Popen(
                argv,
                cwd=self.workdir,
                env=child_env(SOURCE),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        finally:
            if path is not None:
                out.close()
        return popen, path

    def emulator(
        self, name: str, *, token: str, rate_limit: int, flood_limit: int, rooms: list[str]
    ) -> Emulator:
        """Start ``hipchatd emulator`` on a free port; return once its admin API answers."""
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "hipchatd",
            "emulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--token",
            token,
            "--auto-create-rooms",
            "--rate-limit",
            str(rate_limit),
            "--flood-limit",
            str(flood_limit),
        ]
        for room in rooms:
            argv += ["--room", room]
        # Its stdout is one echo line per message: discarded, as a console nobody reads.
        popen, _ = self._popen(name, argv, log=False)
        emulator = Emulator(name, popen, None, url=f"http://127.0.0.1:{port}", token=token)
        self.children.append(emulator)
        wait_for(f"emulator {name} answers", emulator.answers, START_TIMEOUT, alive=emulator.alive)
        return emulator

    def daemon(
        self,
        name: str,
        *,
        emulator: Emulator,
        log_level: str = "info",
        hipchat: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> Daemon:
        """Write a config and start ``hipchatd serve``; return once it logged ``daemon.started``."""
        tcp, udp, metrics = free_port(), free_port(socket.SOCK_DGRAM), free_port()
        state_dir = self.workdir / f"{name}-state"
        state_dir.mkdir(exist_ok=True)
        config = {
            "hipchat": {
                "api_token": emulator.token,
                "server_url": emulator.url,
                "room": "bench",
                **(hipchat or {}),
            },
            "hipchatd": {
                "tcp": {"host": "127.0.0.1", "port": tcp},
                "udp": {"host": "127.0.0.1", "port": udp},
                "metrics": {"host": "127.0.0.1", "port": metrics},
                "state_dir": str(state_dir),
                **(settings or {}),
            },
        }
        path = self.workdir / f"{name}.json"
        path.write_text(json.dumps(config, indent=2))
        level = ["--log-level", log_level]
        argv = [
            sys.executable,
            "-m",
            "hipchatd",
            *([] if _level_on_serve() else level),
            "serve",
            *(level if _level_on_serve() else []),
            "--config",
            str(path),
        ]
        popen, log = self._popen(name, argv)
        daemon = Daemon(
            name, popen, log, tcp_port=tcp, udp_port=udp, metrics_port=metrics, config=config
        )
        self.children.append(daemon)
        # daemon.started is an INFO line; above that level, a connect that succeeds will do
        # (an empty connection is read to EOF and ignored).
        logs_start = log_level in ("debug", "info")
        wait_for(
            f"daemon {name} started",
            lambda: daemon.log_lines("daemon.started") if logs_start else _accepts(tcp),
            START_TIMEOUT,
            alive=daemon.alive,
            detail=daemon.tail,
        )
        return daemon

    def ceiling(self, name: str) -> tuple[Child, int, int]:
        """Start the bare trio ingest server; return it with its TCP and UDP ports."""
        tcp, udp = free_port(), free_port(socket.SOCK_DGRAM)
        argv = [
            sys.executable,
            "-m",
            "bench.ceilings",
            "ingest",
            "--tcp-port",
            str(tcp),
            "--udp-port",
            str(udp),
        ]
        popen, log = self._popen(name, argv)
        child = Child(name, popen, log)
        self.children.append(child)
        assert log is not None
        wait_for(
            f"ceiling {name} ready",
            lambda: "ready" in log.read_text(errors="replace"),
            START_TIMEOUT,
            alive=child.alive,
            detail=child.tail,
        )
        return child, tcp, udp

    def ceiling_counts(self, child: Child) -> dict[str, Any]:
        """Stop the ingest ceiling and return the counts it printed."""
        self.stop(child)
        lines = child.tail(5).splitlines()
        for line in reversed(lines):
            if line.startswith("{"):
                result: dict[str, Any] = json.loads(line)
                return result
        raise HarnessError(f"ceiling {child.name} printed no counts:\n{child.tail()}")

    def run_json(self, name: str, argv: list[str], *, cap: float) -> dict[str, Any]:
        """Run a child to completion (at most ``cap`` s) and parse its JSON stdout."""
        out = self.workdir / f"{name}.out"
        err = self.workdir / f"{name}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            popen = subprocess.Popen(
                argv,
                cwd=self.workdir,
                env=child_env(SOURCE),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
            child = Child(name, popen, err)
            self.children.append(child)
            try:
                popen.wait(cap)
            except subprocess.TimeoutExpired:
                self.stop(child)
                raise HarnessError(f"{name} overran its {cap:g} s cap") from None
            self.children.remove(child)
        if popen.returncode != 0:
            raise HarnessError(f"{name} exited {popen.returncode}:\n{child.tail()}")
        result: dict[str, Any] = json.loads(out.read_text())
        return result

    def loadgen(self, name: str, spec: dict[str, Any], *, cap: float) -> dict[str, Any]:
        """Run the load generator with ``spec``; its JSON result."""
        path = self.workdir / f"{name}.spec.json"
        path.write_text(json.dumps(spec))
        return self.run_json(name, [sys.executable, "-m", "bench.loadgen", str(path)], cap=cap)
