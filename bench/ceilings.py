"""The ceilings hipchatd is measured against, each a separate process.

``python -m bench.ceilings ingest --tcp-port P --udp-port U``
    A bare trio server: accepts, reads to EOF, parses each JSON document
    (one per connection, or one per line on a stream), counts, closes. No
    filtering, no queue, no logging: what trio and ``json`` cost on their own.
    Prints ``ready`` once listening and, on SIGTERM or SIGINT, one JSON line
    with its counts and CPU time.

``python -m bench.ceilings delivery SPEC.json``
    A bare httpx keep-alive POST loop: ``concurrency`` tasks sharing one
    ``AsyncClient`` with a pool of that size, posting pre-rendered v2 room
    notifications (the bodies hipchatd would send) to the emulator. Prints one
    JSON result.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
import time
from typing import Any

import trio

__all__ = ["main"]

_CHUNK = 65536


class _Counts:
    def __init__(self) -> None:
        self.tcp = 0
        self.udp = 0
        self.bad = 0
        self.connections = 0

    def parse(self, data: bytes | bytearray) -> None:
        if not data.strip():
            return
        try:
            json.loads(data)
        except ValueError:
            self.bad += 1
            return
        self.tcp += 1


async def _tcp_handler(counts: _Counts, stream: trio.SocketStream) -> None:
    counts.connections += 1
    buf = bytearray()
    async with stream:
        try:
            while data := await stream.receive_some(_CHUNK):
                buf += data
                start = 0
                while (nl := buf.find(b"\n", start)) >= 0:
                    counts.parse(buf[start:nl])
                    start = nl + 1
                del buf[:start]
        except trio.BrokenResourceError:
            return
        counts.parse(buf)


async def _udp_loop(counts: _Counts, sock: trio.socket.SocketType) -> None:
    while True:
        data, _ = await sock.recvfrom(65535)
        for line in data.split(b"\n"):
            if line.strip():
                try:
                    json.loads(line)
                except ValueError:
                    counts.bad += 1
                    continue
                counts.udp += 1


async def _ingest(tcp_port: int, udp_port: int) -> _Counts:
    counts = _Counts()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(tcp_port, host="127.0.0.1")
            nursery.start_soon(trio.serve_listeners, lambda s: _tcp_handler(counts, s), listeners)
            sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
            await sock.bind(("127.0.0.1", udp_port))
            nursery.start_soon(_udp_loop, counts, sock)
            print("ready", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    return counts


def _run_ingest(args: argparse.Namespace) -> int:
    counts = trio.run(_ingest, args.tcp_port, args.udp_port)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "tcp": counts.tcp,
                "udp": counts.udp,
                "bad": counts.bad,
                "connections": counts.connections,
                "cpu": usage.ru_utime + usage.ru_stime,
            }
        ),
        flush=True,
    )
    return 0


async def _deliver(spec: dict[str, Any]) -> dict[str, Any]:
    import httpx

    bodies: list[str] = spec["bodies"]
    placeholder: str = spec["placeholder"]
    count, start, concurrency = spec["count"], spec["seq_start"], spec["concurrency"]
    url = f"{spec['url']}/v2/room/{spec['room']}/notification"
    headers = {"Authorization": f"Bearer {spec['token']}", "Content-Type": "application/json"}
    seqs = iter(range(start, start + count))
    statuses: dict[str, int] = {}
    done: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(10.0)) as client:

        async def worker() -> None:
            for seq in seqs:
                body = bodies[seq % len(bodies)].replace(placeholder, f"{seq:08d}")
                try:
                    response = await client.post(url, content=body.encode(), headers=headers)
                    key = str(response.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                statuses[key] = statuses.get(key, 0) + 1
                done.append(time.time())

        t0 = time.time()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        t1 = time.time()
    return {"statuses": statuses, "start": t0, "end": t1, "sent": len(done)}


def _run_delivery(args: argparse.Namespace) -> int:
    with open(args.spec, encoding="utf-8") as f:
        spec = json.load(f)
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = trio.run(_deliver, spec)
    after = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(json.dumps(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m bench.ceilings {ingest,delivery} ...``."""
    parser = argparse.ArgumentParser(prog="python -m bench.ceilings")
    sub = parser.add_subparsers(dest="which", required=True)
    ingest = sub.add_parser("ingest", help="bare trio accept/read/parse server")
    ingest.add_argument("--tcp-port", type=int, required=True)
    ingest.add_argument("--udp-port", type=int, required=True)
    delivery = sub.add_parser("delivery", help="bare httpx keep-alive POST loop")
    delivery.add_argument("spec")
    args = parser.parse_args(argv)
    if args.which == "ingest":
        return _run_ingest(args)
    return _run_delivery(args)


if __name__ == "__main__":
    sys.exit(main())
