"""Child processes for the tests that run hipchatd as a real process.

The helpers shared with the benchmark (environment, polling, /proc figures,
the child's life cycle) live in :mod:`bench.procs`; this adds a child whose
output lines the test reads as they come.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bench import procs
from bench.procs import REPO, child_env, wait_for

__all__ = ["HIPCHATD", "REPO", "STARTUP", "Child", "child_env", "wait_for"]

HIPCHATD = [sys.executable, "-m", "hipchatd"]
#: Seconds a child gets to start, and a log line or a delivery to show up (a loaded 2-core box).
STARTUP = 30.0


class Child(procs.Child):
    """A ``python -m hipchatd`` child (behind ``launcher``, if any); a thread collects its
    output lines so it never blocks."""

    def __init__(
        self, *args: str, launcher: Sequence[str] = (), env: Mapping[str, str] | None = None
    ) -> None:
        self.args = args
        self.lines: list[str] = []
        self._changed = threading.Condition()
        popen = subprocess.Popen(
            [*launcher, *HIPCHATD, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            env={**child_env(), **(env or {})},
        )
        super().__init__(f"hipchatd {' '.join(args)}", popen)
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
        line = self.wait_line(lambda text: f'"event":"{event}"' in text, timeout)
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
