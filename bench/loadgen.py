"""The load generator: a separate process that sends Sensu events over loopback.

``python -m bench.loadgen SPEC.json`` reads a spec, sends, and prints one JSON
result on stdout. Plain blocking sockets in threads: each send is a handful of
system calls that release the GIL, so the generator stays far cheaper per
event than the daemon it loads; it measures and reports its own CPU time so
the harness can check that.

Modes (``spec["mode"]``):

``conn``
    Sensu-style, closed loop: ``senders`` threads, each opening one connection
    per event, writing it in one ``sendall`` and half-closing. With ``ack``
    (the default) the sender then waits for the server to close too: hipchatd
    and the ceiling close right after EOF, once the event has been parsed and
    accepted, so each close is a per-event ingest acknowledgement. Sensu itself
    does not wait; the server sees exactly the same bytes and EOF either way.
``paced``
    Sensu-style, open loop: one connection per event at ``rate`` events/s, no
    waiting for the server. Records each event's write time (for latency).
``stream``
    NDJSON over ``connections`` persistent connections, written in batches,
    then half-closed; waits for the server's close (``closed``: the last one).
``udp``
    One datagram per event, at ``rate`` events/s (0: as fast as possible).
``peer``
    Process-per-event, as Sensu runs pipe handlers: spawns ``command`` once per
    event with the event on stdin, ``concurrency`` at a time.

Common keys: ``host``, ``port``, ``count``, ``seq_start``, ``templates`` (path of
a JSON list of template strings), ``storm`` (use :func:`bench.payloads.storm_payload`).
``ports`` (``conn`` and ``paced``): send event ``seq`` to ``ports[seq % len(ports)]``
instead of ``port``, as Sensu backends each with their own hipchatd instance would.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench.payloads import fill, storm_payload

__all__ = ["main", "run"]

#: Bin width, seconds, of the completion-time histogram returned for plots.
BIN = 0.1
#: Events per ``sendall`` on a stream connection: big writes, as a busy forwarder makes.
STREAM_BATCH = 32
#: Retries of a connect that failed for want of a local port (TIME_WAIT), not the server.
PORT_RETRIES = 50


def _payload_maker(spec: dict[str, Any]) -> Callable[[int], bytes]:
    with open(spec["templates"], encoding="utf-8") as f:
        templates = [t.encode() for t in json.load(f)]
    if spec.get("storm"):
        return lambda seq: storm_payload(templates, seq)
    n = len(templates)
    return lambda seq: fill(templates[seq % n], seq)


def _connect(address: tuple[str, int]) -> socket.socket:
    for attempt in range(PORT_RETRIES):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.connect(address)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRNOTAVAIL and attempt + 1 < PORT_RETRIES:
                time.sleep(0.01)
                continue
            raise
        return sock
    raise AssertionError("unreachable")


def _addresses(spec: dict[str, Any]) -> Callable[[int], tuple[str, int]]:
    """Where event ``seq`` goes: ``port``, or the instances of ``ports`` in turn."""
    ports = spec.get("ports") or [spec["port"]]
    return lambda seq: (spec["host"], ports[seq % len(ports)])


def _wait_close(sock: socket.socket) -> None:
    while sock.recv(4096):
        pass


class _Recorder:
    """Per-thread completion times, merged into bins at the end."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: list[float] = []
        self.errors: dict[str, int] = {}

    def error(self, exc: BaseException) -> None:
        key = type(exc).__name__
        with self.lock:
            self.errors[key] = self.errors.get(key, 0) + 1

    def merge(self, times: list[float]) -> None:
        with self.lock:
            self.done.extend(times)


def _threads(count: int, target: Callable[[], None]) -> None:
    threads = [threading.Thread(target=target, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _conn(spec: dict[str, Any], rec: _Recorder) -> dict[str, Any]:
    make = _payload_maker(spec)
    address = _addresses(spec)
    ack = spec.get("ack", True)
    seqs: Iterator[int] = iter(range(spec["seq_start"], spec["seq_start"] + spec["count"]))

    def sender() -> None:
        times: list[float] = []
        for seq in seqs:  # a shared range iterator: next() is atomic under the GIL
            data = make(seq)
            try:
                sock = _connect(address(seq))
                try:
                    sock.sendall(data)
                    if ack:
                        sock.shutdown(socket.SHUT_WR)
                        _wait_close(sock)
                finally:
                    sock.close()
            except OSError as exc:
                rec.error(exc)
                continue
            times.append(time.time())
        rec.merge(times)

    _threads(spec["senders"], sender)
    return {}


def _paced(spec: dict[str, Any], rec: _Recorder) -> dict[str, Any]:
    make = _payload_maker(spec)
    address = _addresses(spec)
    rate, count, start = float(spec["rate"]), spec["count"], spec["seq_start"]
    writes: list[float] = [0.0] * count
    late = 0
    t0 = time.monotonic()
    for i in range(count):
        due = t0 + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -0.005:
            late += 1
        data = make(start + i)
        try:
            sock = _connect(address(start + i))
            try:
                writes[i] = time.time()
                sock.sendall(data)
            finally:
                sock.close()
        except OSError as exc:
            writes[i] = 0.0
            rec.error(exc)
            continue
        rec.done.append(time.time())
    return {"write_times": writes, "late": late}


def _stream(spec: dict[str, Any], rec: _Recorder) -> dict[str, Any]:
    make = _payload_maker(spec)
    address = (spec["host"], spec["port"])
    connections, count, start = spec["connections"], spec["count"], spec["seq_start"]
    shares = [range(start + c, start + count, connections) for c in range(connections)]
    it = iter(shares)
    lock = threading.Lock()
    closed: list[float] = []

    def sender() -> None:
        with lock:
            share = next(it)
        times: list[float] = []
        try:
            sock = _connect(address)
            try:
                batch: list[bytes] = []
                for seq in share:
                    batch.append(make(seq))
                    batch.append(b"\n")
                    if len(batch) >= 2 * STREAM_BATCH:
                        sock.sendall(b"".join(batch))
                        times.extend([time.time()] * (len(batch) // 2))
                        batch.clear()
                if batch:
                    sock.sendall(b"".join(batch))
                    times.extend([time.time()] * (len(batch) // 2))
                sock.shutdown(socket.SHUT_WR)
                _wait_close(sock)
                with lock:
                    closed.append(time.time())
            finally:
                sock.close()
        except OSError as exc:
            rec.error(exc)
        rec.merge(times)

    _threads(connections, sender)
    # The server closes once it has read and accepted everything on the connection.
    return {"closed": max(closed) if len(closed) == connections else None}


def _udp(spec: dict[str, Any], rec: _Recorder) -> dict[str, Any]:
    make = _payload_maker(spec)
    address = (spec["host"], spec["port"])
    rate, count, start = float(spec.get("rate", 0)), spec["count"], spec["seq_start"]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t0 = time.monotonic()
    try:
        for i in range(count):
            if rate > 0:
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            try:
                sock.sendto(make(start + i), address)
            except OSError as exc:
                rec.error(exc)
                continue
            rec.done.append(time.time())
    finally:
        sock.close()
    return {}


def _peer(spec: dict[str, Any], rec: _Recorder) -> dict[str, Any]:
    make = _payload_maker(spec)
    command: list[str] = spec["command"]
    count, start = spec["count"], spec["seq_start"]
    seqs: Iterator[int] = iter(range(start, start + count))
    failed = 0

    def runner() -> None:
        nonlocal failed
        times: list[float] = []
        for seq in seqs:
            try:
                done = subprocess.run(
                    command, input=make(seq), stdout=subprocess.DEVNULL, timeout=30, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                rec.error(exc)
                continue
            if done.returncode != 0:
                with rec.lock:
                    failed += 1
            times.append(time.time())
        rec.merge(times)

    _threads(spec["concurrency"], runner)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"failed": failed, "children_cpu": children.ru_utime + children.ru_stime}


_MODES: dict[str, Callable[[dict[str, Any], _Recorder], dict[str, Any]]] = {
    "conn": _conn,
    "paced": _paced,
    "stream": _stream,
    "udp": _udp,
    "peer": _peer,
}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Send as ``spec`` says; return counts, times, CPU and a completion histogram."""
    rec = _Recorder()
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.time()
    extra = _MODES[spec["mode"]](spec, rec)
    end = time.time()
    after = resource.getrusage(resource.RUSAGE_SELF)
    done = sorted(rec.done)
    bins = [0] * (int((end - start) / BIN) + 1)
    for t in done:
        bins[min(int((t - start) / BIN), len(bins) - 1)] += 1
    return {
        "mode": spec["mode"],
        "sent": len(done),
        "errors": rec.errors,
        "start": start,
        "end": end,
        "first_done": done[0] if done else None,
        "last_done": done[-1] if done else None,
        "cpu_user": after.ru_utime - before.ru_utime,
        "cpu_sys": after.ru_stime - before.ru_stime,
        "bins": bins,
        **extra,
    }


def main() -> int:
    """Entry point: ``python -m bench.loadgen SPEC.json``."""
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    result = run(spec)
    sys.stdout.write(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)  # daemon threads are done; skip interpreter teardown


if __name__ == "__main__":
    raise SystemExit(main())
