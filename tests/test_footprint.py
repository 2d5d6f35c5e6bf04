"""What a daemon loads: ``hipchatd serve`` with the defaults imports no library it does not use.

Every module imported is memory the daemon keeps (idle and with 100,000
pending alike), so a default daemon (SQLite spool, no template, no
PostgreSQL, no built-in emulator, no unknown key in its configuration) must
not import the emulator, jinja2, psycopg, difflib, or the command line client
httpx loads when its libraries are installed. The daemon runs as a real
process with ``PYTHONPROFILEIMPORTTIME``, which makes Python write one line
for every module it imports, lazily imported ones included, and delivers one
event to the real emulator over loopback.
"""

from __future__ import annotations

import signal

import pytest

from tests.processes import Child
from tests.test_process import Cluster, _event, cluster  # noqa: F401

#: Top-level packages a default daemon never needs.
UNUSED = (
    # only with a template configured (config/sandbox.py)
    "jinja2",
    # only with a PostgreSQL spool (delivery/spool/postgresql/)
    "psycopg",
    "psycopg_binary",
    # httpx's command line client (httpx/_main.py), never run by the daemon; not rich, whose
    # import structlog tries (a line is written for a module that is not installed too)
    "click",
    "pygments",
    # only to suggest a key for an unknown one (config/checker.py)
    "difflib",
)


def _imported(child: Child) -> set[str]:
    """Modules named by the ``import time:`` lines of ``-X importtime`` (header excluded)."""
    names = set()
    for line in child.output.splitlines():
        if line.startswith("import time:"):
            names.add(line.rsplit("|", 1)[1].strip())
    names.discard("imported package")
    return names


def test_a_default_daemon_imports_no_library_it_does_not_use(
    cluster: Cluster,  # noqa: F811 (the fixture imported above)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator = cluster.emulator()
    # Read at interpreter start-up: the daemon started next writes the lines, not this process.
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    daemon = cluster.daemon(emulator)
    child = daemon.child
    daemon.send(_event("footprint"))
    delivered = child.wait_logged("event.delivered")
    assert delivered["rooms"] == ["sensu"]
    daemon.signal(signal.SIGTERM)
    assert child.wait_exit(30) == 0

    imported = _imported(child)
    # The lines are there: what the daemon does use is named.
    assert {"hipchatd.app", "hipchatd.delivery.hipchat", "httpx", "sqlite3"} <= imported
    unused = sorted(
        name
        for name in imported
        if name.split(".")[0] in UNUSED or name.startswith("hipchatd.emulator")
    )
    assert unused == []
