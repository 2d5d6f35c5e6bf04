"""Child processes for the tests that run hipchatd as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
HIPCHATD = [sys.executable, "-m", "hipchatd"]
#: Seconds a child gets to start, and a log line or a delivery to show up (a loaded 2-core box).
STARTUP = 30.0

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T], timeout: float, step: float = 0.05) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g} s: {what} (last: {value!r})")
        time.sleep(step)


def child_env() -> dict[str, str]:
    """The environment of a child: unbuffered, this checkout first, no stray settings."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # Settings that would otherwise leak in from the environment running the tests.
    for name in ("HIPCHAT_API_TOKEN", "STATE_DIRECTORY", "CREDENTIALS_DIRECTORY"):
        env.pop(name, None)
    return env


class Child:
    """A ``python -m hipchatd`` child (behind ``launcher``, if any); a thread collects its
    output lines so it never blocks."""

    def __init__(
        self, *args: str, launcher: Sequence[str] = (), env: Mapping[str, str] | None = None
    ) -> None:
        self.args = args
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.popen = subprocess.Popen(
            [*launcher, *HIPCHATD, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            env={**child_env(), **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_line(self, predicate: Callable[[str], bool], timeout: float = STARTUP) -> str:
        """The first output line (seen so far or later) that satisfies ``predicate``."""
        return self.wait_lines(predicate, 1, timeout)[0]

    def wait_lines(
        self, predicate: Callable[[str], bool], count: int, timeout: float = STARTUP
    ) -> list[str]:
        """The first ``count`` output lines (seen so far or later) that satisfy ``predicate``.

        Wakes on each new line (no polling); fails after ``timeout`` seconds
        or once the child has exited and its output is read.
        """
        deadline = time.monotonic() + timeout
        seen = 0
        found: list[str] = []
        if count <= 0:
            return found
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        found.append(line)
                        if len(found) == count:
                            return found
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"{len(found)} of {count} such lines from hipchatd {' '.join(self.args)} "
                        f"within {timeout:g} s (exit code {self.popen.poll()}):\n"
                        + "".join(self.lines)
                    )
                self._changed.wait(min(left, 0.2))

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines so far, in order (other output is skipped)."""
        records = []
        for line in self.output.splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [record for record in self.logs() if record["event"] == event]

    def wait_logged(self, event: str, timeout: float = STARTUP) -> dict[str, Any]:
        line = self.wait_line(lambda text: f'"event": "{event}"' in text, timeout)
        record: dict[str, Any] = json.loads(line)
        return record

    def wait_exit(self, timeout: float) -> int:
        """The exit code; fails if the process is still running after ``timeout`` seconds."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"hipchatd {' '.join(self.args)} still running after {timeout:g} s:\n{self.output}"
            ) from None

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)
        self._reader.join(10)
        assert self.popen.stdout is not None
        self.popen.stdout.close()
