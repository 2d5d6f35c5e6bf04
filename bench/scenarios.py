"""The scenarios: each starts what it needs, drives the load generator, and measures.

Every function returns a plain dict (it ends up in the JSON results) and
appends the generator's CPU record of each load phase to ``ctx.generator``.
A phase that breaks raises :class:`~bench.procs.HarnessError`; the runner
records it and carries on with the next scenario.

How "ingested" is known: Sensu-style senders half-close and wait for the
daemon to close too, which it does right after handing the event to its
accept path (see :mod:`bench.loadgen`); when the daemon serves
``/metrics``, ingest ends once every event counts as accepted (committed,
with a spool), skipped or rejected there. How "delivered" is known: the
emulator's ``/_emulator/requests`` counts, and the receipt time of every
message in ``/_emulator/messages``, where each event is found by its
sequence marker, also inside a storm summary that folds several events.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import payloads
from bench.procs import REPO, Child, Children, Daemon, Emulator, spool_available

__all__ = ["Context", "Sizes"]

TOKEN = "bench-token-0123456789abcdef"
#: The HTTP pool and concurrent requests, as the daemon's default ``concurrency``.
CONCURRENCY = 16
#: Limits high enough to be "off" (the emulator has no off switch: 0 means "nothing").
NO_LIMIT = 10**9


@dataclass(frozen=True)
class Sizes:
    """Event counts and time caps of one run (``--quick`` shrinks them all)."""

    ingest: int = 15_000
    ingest_variant: int = 6_000
    senders: int = 50
    stream: int = 20_000
    stream_connections: int = 4
    udp: int = 10_000
    delivery: int = 10_000
    latency_seconds: float = 10.0
    peer: int = 240
    peer_concurrency: int = 8
    storm_events: int = 2_000
    storm_checks: int = 200
    storm_rooms: int = 20
    storm_seconds: float = 10.0
    storm_cap: float = 90.0
    storm_quiet: float = 10.0
    pending: int = 100_000
    repeat: int = 2
    idle_seconds: float = 3.0
    #: seconds without a new request after which deliveries count as finished
    quiet: float = 3.0
    #: seconds of load at the latency scenario's rate before it measures
    warmup_seconds: float = 1.0
    #: at most this many seconds of paced UDP
    udp_paced_seconds: float = 5.0
    #: seconds any one load phase may take before the run gives up on it
    phase_cap: float = 150.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            ingest=1_000,
            ingest_variant=400,
            senders=20,
            stream=2_000,
            udp=1_000,
            delivery=1_000,
            latency_seconds=1.5,
            peer=16,
            peer_concurrency=4,
            storm_events=200,
            storm_checks=20,
            storm_rooms=4,
            storm_seconds=2.0,
            storm_cap=4.0,
            storm_quiet=2.0,
            pending=2_000,
            repeat=1,
            idle_seconds=0.5,
            quiet=1.0,
            warmup_seconds=0.3,
            udp_paced_seconds=1.0,
            phase_cap=30.0,
        )


@dataclass
class Context:
    """What the scenarios share within one run."""

    children: Children
    workdir: Path
    sizes: Sizes
    #: the generator's CPU record of each load phase
    generator: list[dict[str, Any]] = field(default_factory=list)
    #: per-bin series for the plot
    series: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: where ``--profile`` writes the daemon's flame graph, and the running py-spy
    profile: Path | None = None
    profiler: subprocess.Popen[bytes] | None = None
    _seq: int = 0
    _files: dict[str, Path] = field(default_factory=dict)

    def seqs(self, count: int) -> int:
        """A fresh range of ``count`` sequence numbers; returns its start."""
        start, self._seq = self._seq, self._seq + count
        return start

    def templates(self, kind: str) -> Path:
        """The template file for ``ingest``, ``ok`` (filtered) or ``storm`` payloads."""
        if kind not in self._files:
            if kind == "storm":
                made = payloads.storm_templates(self.sizes.storm_checks, self.sizes.storm_rooms)
            else:
                made = payloads.ingest_templates(ok=kind == "ok")
            path = self.workdir / f"templates-{kind}.json"
            path.write_text(json.dumps([t.decode() for t in made]))
            self._files[kind] = path
        return self._files[kind]


# --- helpers -------------------------------------------------------------------------------------


def daemon_settings() -> dict[str, Any]:
    """The ``hipchatd`` settings every benchmark daemon gets beyond the defaults.

    With a spool, the defaults stand: events past ``queue_size`` wait in the
    spool, not in memory. Without one, ``queue_size`` is the only buffer and
    the default (10,000) would refuse the bigger bursts, so it is raised.
    """
    if spool_available():
        return {"max_spool_events": 200_000}
    return {"queue_size": 200_000}


def _load(
    ctx: Context,
    phase: str,
    spec: dict[str, Any],
    target: Child,
    others: Sequence[Child] = (),
    cap: float | None = None,
) -> dict[str, Any]:
    """Run one generator phase; record its CPU and that of ``target`` and ``others``."""
    watched = [target, *others]
    before = [c.cpu() for c in watched]
    t0 = time.monotonic()
    result = ctx.children.loadgen(phase, spec, cap=cap or ctx.sizes.phase_cap)
    # The loaded processes' CPU over the generator's whole life (start-up included, when
    # they idle): a lower bound of their utilisation while loaded.
    process_wall = time.monotonic() - t0
    used = {c.name: round(c.cpu() - b, 3) for c, b in zip(watched, before, strict=True)}
    wall = max(result["end"] - result["start"], 1e-6)
    gen_cpu = result["cpu_user"] + result["cpu_sys"]
    sent = result["sent"]
    record = {
        "phase": phase,
        "events": sent,
        "wall_s": round(wall, 3),
        "generator_cpu_s": round(gen_cpu, 3),
        "generator_util": round(gen_cpu / wall, 3),
        "generator_us_per_event": round(gen_cpu / sent * 1e6, 1) if sent else None,
        "target": target.name,
        "target_util": round(used[target.name] / process_wall, 3),
        "cpu_s": used,
    }
    ctx.generator.append(record)
    result["cpu"] = used
    result["cpu_before"] = {c.name: b for c, b in zip(watched, before, strict=True)}
    result["wall"] = wall
    return result


def _per_event(cpu_s: float, events: int | None) -> float | None:
    """CPU microseconds per event: a process's CPU seconds spread over the events it handled.

    None when no CPU time showed at all: less than one clock tick (10 ms) is not zero.
    """
    return round(cpu_s / events * 1e6, 1) if events and cpu_s > 0 else None


def _cpu_ratio(daemon: dict[str, Any], ceiling: dict[str, Any]) -> float | None:
    """The daemon's CPU per event over the bare server's, in one scenario."""
    d, c = daemon.get("cpu_us_per_event"), ceiling.get("cpu_us_per_event")
    return round(d / c, 2) if d and c else None


def _versus(ceiling: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """A daemon phase beside the bare-server phase run just before it, and their ratios."""
    ceiling.pop("bins", None)
    run.pop("bins", None)
    return {
        "ceiling": ceiling,
        "daemon": run,
        "ratio": (run["rate"] or 0) / ceiling["rate"] if ceiling["rate"] else None,
        "cpu_ratio": _cpu_ratio(run, ceiling),
    }


def _rate(count: int, seconds: float | None) -> float | None:
    if not count or not seconds or seconds <= 0:
        return None
    return count / seconds


def _receipt_rate(dates: Sequence[float]) -> float | None:
    """Messages per second between the first and the last receipt."""
    if len(dates) < 2:
        return None
    ordered = sorted(dates)
    return (len(ordered) - 1) / max(ordered[-1] - ordered[0], 1e-6)


def _bins(times: Sequence[float], origin: float, width: float = 0.1) -> list[int]:
    if not times:
        return []
    out = [0] * (int((max(times) - origin) / width) + 1)
    for t in times:
        out[max(0, int((t - origin) / width))] += 1
    return out


def _percentile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _drain(
    emulator: Emulator, expected: int, cap: float, quiet: float, daemon: Daemon | None = None
) -> dict[str, Any]:
    """Wait until the deliveries are done, at most ``cap`` s.

    Done means: the daemon's spool has nothing pending (when its ``/metrics``
    says so), else ``expected`` requests answered, else ``quiet`` s without a
    request (coalesced deliveries make fewer requests than events).
    """
    t0 = time.monotonic()
    pending = daemon.pending() if daemon is not None else None
    if daemon is not None and pending is not None:
        # Empty and no new request for a few polls: the last events may still be on their
        # way into the spool (group commit) when the generator finishes.
        stable, last = 0, -1
        while stable < 3 and time.monotonic() - t0 < cap:
            time.sleep(0.1)
            pending = daemon.pending() or 0.0
            total = emulator.counts().get("total", 0)
            stable = stable + 1 if not pending and total == last else 0
            last = total
        how = "spool empty" if stable >= 3 else "cap reached"
    else:
        emulator.wait_delivered(expected, cap=cap, quiet=quiet)
        how = "emulator requests"
    counts = emulator.counts()
    return {
        "expected": expected,
        "answered": counts,
        "drain_s": round(time.monotonic() - t0, 2),
        "drained_by": how,
    }


def _arrivals(messages: Sequence[dict[str, Any]], lo: int, hi: int) -> dict[int, float]:
    """seq -> receipt time, for the events in ``[lo, hi)`` the messages show."""
    out: dict[int, float] = {}
    for message in messages:
        for seq in payloads.find_seqs(message["message"]):
            if lo <= seq < hi and seq not in out:
                out[seq] = message["date"]
    return out


def _metrics_delta(daemon: Daemon, before: float | None) -> float | None:
    after = daemon.received()
    return None if before is None or after is None else after - before


#: Every event ends up in one of these (hipchatd.metrics).
_OUTCOMES = (
    "hipchatd_events_accepted_total",
    "hipchatd_events_skipped_total",
    "hipchatd_events_rejected_total",
)


def _processed(samples: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: samples.get(k, 0.0) - before.get(k, 0.0) for k in _OUTCOMES}


def _wait_processed(
    daemon: Daemon, before: dict[str, float], expected: int, cap: float
) -> tuple[float | None, dict[str, float]]:
    """Poll ``/metrics`` until ``expected`` events were accepted, skipped or rejected.

    Returns the wall time when they were (None if not within ``cap``) and the deltas.
    """
    deadline = time.monotonic() + cap
    while True:
        samples = daemon.metrics() or {}
        delta = _processed(samples, before)
        if sum(delta.values()) >= expected:
            return time.time(), delta
        if time.monotonic() > deadline:
            return None, delta
        time.sleep(0.02)


def _spec(
    mode: str, port: int, count: int, start: int, templates: Path, **kw: Any
) -> dict[str, Any]:
    return {
        "mode": mode,
        "host": "127.0.0.1",
        "port": port,
        "count": count,
        "seq_start": start,
        "templates": str(templates),
        **kw,
    }


# --- 1. Sensu-style ingest -----------------------------------------------------------------------


def ingest_ceiling(ctx: Context, mode: str, count: int, **kw: Any) -> dict[str, Any]:
    """The bare trio server under the same generator phase."""
    child, tcp, _ = ctx.children.ceiling(f"ceiling-{mode}")
    spec = _spec(mode, tcp, count, ctx.seqs(count), ctx.templates("ingest"), **kw)
    result = _load(ctx, f"ceiling-{mode}-{len(ctx.generator)}", spec, child)
    counts = ctx.children.ceiling_counts(child)
    end = result.get("closed") or result["last_done"]
    return {
        "sent": result["sent"],
        "parsed": counts["tcp"],
        "errors": result["errors"],
        "seconds": round(end - result["start"], 3),
        "rate": _rate(counts["tcp"], end - result["start"]),
        "cpu_us_per_event": _per_event(result["cpu"][child.name], counts["tcp"]),
        "generator": ctx.generator[-1],
        "bins": result["bins"],
    }


def ingest_daemon(
    ctx: Context,
    daemon: Daemon,
    emulator: Emulator,
    mode: str,
    count: int,
    *,
    kind: str = "ingest",
    drain: bool = True,
    **kw: Any,
) -> dict[str, Any]:
    """One ingest phase against the daemon; then waits for the deliveries it causes.

    Ingest ends when the daemon has closed every connection (it closes after
    EOF) and, when it serves ``/metrics``, once every event shows as accepted
    (committed to the spool, where there is one), skipped or rejected.
    ``cpu_us_per_event`` is the daemon's CPU over the generator's phase per
    event sent (what it delivers meanwhile included); ``cpu_us_per_event_done``
    runs on until the events are processed and, for ``kind="ingest"``,
    delivered (the benchmark's ``/metrics`` polls included). ``drain=False``
    does not wait for deliveries: for a daemon whose HipChat is unreachable on
    purpose, whose spool would never drain.
    """
    emulator.reset()
    before = daemon.metrics()
    start = ctx.seqs(count)
    spec = _spec(mode, daemon.tcp_port, count, start, ctx.templates(kind), **kw)
    result = _load(ctx, f"{daemon.name}-{mode}-{len(ctx.generator)}", spec, daemon, [emulator])
    end = result.get("closed") or result["last_done"]
    out: dict[str, Any] = {"sent": result["sent"], "errors": result["errors"]}
    if before is not None:
        done_at, outcome = _wait_processed(daemon, before, result["sent"], ctx.sizes.phase_cap)
        out["processed"] = outcome
        out["confirmed_by"] = "metrics (accepted + skipped + rejected)"
        if done_at is None:
            out["confirmed_by"] += ": not all within the cap"
        end = max(end or 0.0, done_at or time.time())
    else:
        # Without /metrics: the daemon closes once the event is handed to its accept path
        # (with a spool, that is before the group commit).
        out["confirmed_by"] = "connection close (no /metrics)"
    out["seconds"] = round(end - result["start"], 3) if end else None
    out["rate"] = _rate(result["sent"], end - result["start"]) if end else None
    out["cpu_us_per_event"] = _per_event(result["cpu"][daemon.name], result["sent"])
    out["generator"] = ctx.generator[-1]
    out["bins"] = result["bins"]
    if kind == "ingest" and drain:
        drained = _drain(emulator, result["sent"], ctx.sizes.phase_cap, ctx.sizes.quiet, daemon)
        messages = emulator.messages()
        out["delivery"] = {
            **drained,
            "messages": len(messages),
            "events_delivered": len(_arrivals(messages, start, start + count)),
        }
    done = daemon.cpu() - result["cpu_before"][daemon.name]
    out["cpu_us_per_event_done"] = _per_event(done, result["sent"])
    return out


def scenario_ingest(
    ctx: Context, daemon: Daemon, emulator: Emulator, repeat: int
) -> dict[str, Any]:
    """Scenario 1: one connection per event, ``senders`` concurrent senders, vs the ceiling.

    Ceiling and daemon alternate ``repeat`` times; the best of each is kept
    (on a noisy machine the best run is the least disturbed one).
    """
    s = ctx.sizes
    ceilings, runs = [], []
    for _ in range(repeat):
        ceilings.append(ingest_ceiling(ctx, "conn", s.ingest, senders=s.senders))
        runs.append(ingest_daemon(ctx, daemon, emulator, "conn", s.ingest, senders=s.senders))
    best_c = max(ceilings, key=lambda r: r["rate"] or 0)
    best_d = max(runs, key=lambda r: r["rate"] or 0)
    ctx.series["ingest"] = {"ceiling": best_c.pop("bins"), "daemon": best_d.pop("bins")}
    for r in (*ceilings, *runs):
        r.pop("bins", None)
    return {
        "senders": s.senders,
        "events": s.ingest,
        "ceiling": best_c,
        "daemon": best_d,
        "ceiling_runs": [r["rate"] for r in ceilings],
        "daemon_runs": [r["rate"] for r in runs],
        "ratio": (best_d["rate"] or 0) / best_c["rate"] if best_c["rate"] else None,
        "cpu_ratio": _cpu_ratio(best_d, best_c),
    }


def scenario_ingest_variant(
    ctx: Context, daemon: Daemon, emulator: Emulator, *, kind: str
) -> dict[str, Any]:
    """Scenario 1 with filtered events, or on another daemon (log level, state_dir)."""
    s = ctx.sizes
    result = ingest_daemon(
        ctx, daemon, emulator, "conn", s.ingest_variant, kind=kind, senders=s.senders
    )
    result.pop("bins", None)
    return result


def scenario_ingest_undelivered(ctx: Context, daemon: Daemon, emulator: Emulator) -> dict[str, Any]:
    """Scenario 1 on a daemon whose HipChat is unreachable: intake and spool commit only.

    ``daemon`` delivers to a loopback port nothing listens on, so each event
    is read, parsed, filtered and committed to the spool, and none is
    delivered during the phase (its lane backs off after the first refused
    connection). Against a bare-server phase of the same size run just before
    it, like every stage of the breakdown: the machine drifts within minutes.
    With ``ingest`` (everything) and ``ingest_filtered`` (nothing spooled) it
    shows what the spool costs and what delivery costs.
    """
    s = ctx.sizes
    kw: dict[str, Any] = {"senders": s.senders}
    ceiling = ingest_ceiling(ctx, "conn", s.ingest_variant, **kw)
    run = ingest_daemon(ctx, daemon, emulator, "conn", s.ingest_variant, drain=False, **kw)
    return {"senders": s.senders, "events": s.ingest_variant, **_versus(ceiling, run)}


# --- 2. stream ingest: NDJSON and UDP ------------------------------------------------------------


def scenario_stream(
    ctx: Context, daemon: Daemon, emulator: Emulator, undelivered: Daemon | None = None
) -> dict[str, Any]:
    """Scenario 2a: NDJSON over a few persistent connections, vs the ceiling; and its stages.

    ``ceiling``, ``daemon`` and ``ratio`` are the whole path: read, frame,
    parse, filter, spool commit, delivery. Two stages of it follow, each
    against a bare-server phase of its own run just before it (the machine
    drifts within minutes, so a ratio against an earlier ceiling would drift
    with it), which together show which stage sets the ceiling:

    - ``filtered``: the same daemon, every event an OK the filters skip:
      reading, framing, parsing and filtering only, nothing spooled or sent;
    - ``undelivered``: ``undelivered``, a daemon whose HipChat is a loopback
      port nothing listens on: intake and the durable spool commit, no
      delivery during the phase (its lane backs off after the first refusal).
    """
    s = ctx.sizes
    kw: dict[str, Any] = {"connections": s.stream_connections}

    def stage(target: Daemon, kind: str, *, drain: bool = True) -> dict[str, Any]:
        ceiling = ingest_ceiling(ctx, "stream", s.stream, **kw)
        run = ingest_daemon(ctx, target, emulator, "stream", s.stream, kind=kind, drain=drain, **kw)
        return _versus(ceiling, run)

    out: dict[str, Any] = {
        "connections": s.stream_connections,
        "events": s.stream,
        **stage(daemon, "ingest"),
    }
    out["filtered"] = stage(daemon, "ok")
    if undelivered is not None:
        out["undelivered"] = stage(undelivered, "ingest", drain=False)
    return out


def scenario_udp(
    ctx: Context, daemon: Daemon, emulator: Emulator, paced_rate: float | None
) -> dict[str, Any]:
    """Scenario 2b: one datagram per event; loss at full speed, and paced, vs the ceiling."""
    s = ctx.sizes
    out: dict[str, Any] = {"events": s.udp}
    child, _, udp = ctx.children.ceiling("ceiling-udp")
    spec = _spec("udp", udp, s.udp, ctx.seqs(s.udp), ctx.templates("ingest"))
    result = _load(ctx, "ceiling-udp-blast", spec, child)
    time.sleep(0.5)
    counts = ctx.children.ceiling_counts(child)
    out["ceiling_blast"] = _udp_result(result, counts["udp"], ctx.generator[-1], child.name)

    phases = [("blast", 0.0)]
    if paced_rate:
        phases.append(("paced", paced_rate))
    for label, rate in phases:
        emulator.reset()
        before = daemon.received()
        count = min(s.udp, int(rate * s.udp_paced_seconds)) if rate else s.udp
        first = ctx.seqs(count)
        spec = _spec("udp", daemon.udp_port, count, first, ctx.templates("ingest"), rate=rate)
        result = _load(ctx, f"{daemon.name}-udp-{label}", spec, daemon, [emulator])
        _drain(emulator, result["sent"], ctx.sizes.phase_cap, ctx.sizes.quiet, daemon)
        received = _metrics_delta(daemon, before)
        if received is not None:
            got = int(received)
        else:
            got = len(_arrivals(emulator.messages(), first, first + count))
        entry = _udp_result(result, got, ctx.generator[-1], daemon.name)
        entry["offered_rate"] = rate or None
        entry["counted_by"] = "metrics" if received is not None else "emulator deliveries"
        out[f"daemon_{label}"] = entry
    return out


def _udp_result(
    result: dict[str, Any], received: int, gen: dict[str, Any], target: str
) -> dict[str, Any]:
    """One UDP phase's figures; ``target``'s CPU is spread over the datagrams it received."""
    sent = result["sent"]
    return {
        "sent": sent,
        "received": received,
        "loss": (sent - received) / sent if sent else None,
        "send_rate": _rate(sent, result["end"] - result["start"]),
        "cpu_us_per_event": _per_event(result["cpu"][target], received),
        "generator": gen,
    }


# --- 3. delivery, latency, peer ------------------------------------------------------------------


def _bodies() -> list[str]:
    """The v2 notification bodies hipchatd would send for the ingest templates."""
    from hipchatd.config import HipChatSettings, Secret
    from hipchatd.delivery.render import render
    from hipchatd.delivery.routing import route
    from hipchatd.sensu.events import parse_event

    settings = HipChatSettings(api_token=Secret(TOKEN), room=(payloads.ROOM,))
    out = []
    for template in payloads.ingest_templates():
        event = parse_event(json.loads(template))
        (target,) = route(event, settings, {})
        m = render(event, target, "v2")
        body = {
            "message": m.text,
            "color": m.color,
            "notify": m.notify,
            "message_format": m.message_format,
            "from": m.sender,
        }
        out.append(json.dumps(body))
    return out


def delivery_ceiling(ctx: Context, emulator: Emulator) -> dict[str, Any]:
    """The bare httpx keep-alive POST loop at the daemon's concurrency."""
    s = ctx.sizes
    emulator.reset()
    first = ctx.seqs(s.delivery)
    spec = {
        "url": emulator.url,
        "token": TOKEN,
        "room": payloads.ROOM,
        "count": s.delivery,
        "seq_start": first,
        "concurrency": CONCURRENCY,
        "placeholder": payloads.PLACEHOLDER.decode(),
        "bodies": _bodies(),
    }
    path = ctx.workdir / "delivery-ceiling.json"
    path.write_text(json.dumps(spec))
    e0 = emulator.cpu()
    result = ctx.children.run_json(
        "delivery-ceiling",
        [sys.executable, "-m", "bench.ceilings", "delivery", str(path)],
        cap=s.phase_cap,
    )
    emulator_cpu = emulator.cpu() - e0
    messages = emulator.messages()
    dates = sorted(_arrivals(messages, first, first + s.delivery).values())
    wall = result["end"] - result["start"]
    return {
        "sent": result["sent"],
        "statuses": result["statuses"],
        "messages": len(messages),
        "delivered": len(dates),
        "rate": _receipt_rate(dates),
        "client_cpu_util": round(result["cpu"] / wall, 3),
        "emulator_cpu_util": round(emulator_cpu / wall, 3),
        "dates": dates,
    }


def delivery_daemon(ctx: Context, daemon: Daemon, emulator: Emulator) -> dict[str, Any]:
    """Events fed over NDJSON (the cheapest ingest), delivered with limits off.

    The rate counts events, wherever they show: one per message, or several
    per storm summary when the daemon coalesces.
    """
    s = ctx.sizes
    emulator.reset()
    first = ctx.seqs(s.delivery)
    spec = _spec(
        "stream",
        daemon.tcp_port,
        s.delivery,
        first,
        ctx.templates("ingest"),
        connections=s.stream_connections,
    )
    d0, e0 = daemon.cpu(), emulator.cpu()
    result = _load(ctx, f"{daemon.name}-delivery-{len(ctx.generator)}", spec, daemon, [emulator])
    drained = _drain(emulator, result["sent"], s.phase_cap, s.quiet, daemon)
    messages = emulator.messages()
    dates = sorted(_arrivals(messages, first, first + s.delivery).values())
    wall = (dates[-1] - result["start"]) if dates else result["wall"]
    return {
        "sent": result["sent"],
        "messages": len(messages),
        "delivered": len(dates),
        "answered": drained["answered"],
        "rate": _receipt_rate(dates),
        "end_to_end_rate": _rate(len(dates), wall),
        "daemon_cpu_util": round((daemon.cpu() - d0) / wall, 3),
        "emulator_cpu_util": round((emulator.cpu() - e0) / wall, 3),
        "start": result["start"],
        "dates": dates,
    }


def scenario_delivery(
    ctx: Context, daemon: Daemon, emulator: Emulator, repeat: int
) -> dict[str, Any]:
    """Scenario 3a: events/s reaching the emulator, rate limits off, vs bare httpx."""
    ceilings, runs = [], []
    for _ in range(repeat):
        ceilings.append(delivery_ceiling(ctx, emulator))
        runs.append(delivery_daemon(ctx, daemon, emulator))
    best_c = max(ceilings, key=lambda r: r["rate"] or 0)
    best_d = max(runs, key=lambda r: r["rate"] or 0)
    c_dates, d_dates = best_c["dates"], best_d["dates"]
    ctx.series["delivery"] = {
        "ceiling": _bins(c_dates, c_dates[0]) if c_dates else [],
        "daemon": _bins(d_dates, best_d["start"]) if d_dates else [],
    }
    for r in (*ceilings, *runs):
        r.pop("dates", None)
    return {
        "events": ctx.sizes.delivery,
        "concurrency": CONCURRENCY,
        "ceiling": best_c,
        "daemon": best_d,
        "ceiling_runs": [r["rate"] for r in ceilings],
        "daemon_runs": [r["rate"] for r in runs],
        "ratio": (best_d["rate"] or 0) / best_c["rate"] if best_c["rate"] else None,
    }


def scenario_latency(ctx: Context, emulator: Emulator, rate: float) -> dict[str, Any]:
    """Scenario 3b: sender's write to the emulator's receipt, at a fixed offered load.

    On a daemon of its own, warmed up for a second at the same rate: the
    daemon that went through the bursts of the other scenarios may still owe a
    garbage collection, which would land in this window by chance.
    """
    s = ctx.sizes
    daemon = ctx.children.daemon("daemon-latency", emulator=emulator, settings=daemon_settings())
    try:
        warm = max(10, int(rate * s.warmup_seconds))
        spec = _spec(
            "paced", daemon.tcp_port, warm, ctx.seqs(warm), ctx.templates("ingest"), rate=rate
        )
        ctx.children.loadgen("daemon-latency-warmup", spec, cap=s.phase_cap)
        _drain(emulator, warm, s.phase_cap, s.quiet, daemon)
        emulator.reset()
        count = max(10, int(rate * s.latency_seconds))
        start = ctx.seqs(count)
        spec = _spec("paced", daemon.tcp_port, count, start, ctx.templates("ingest"), rate=rate)
        result = _load(ctx, "daemon-latency", spec, daemon, [emulator])
        _drain(emulator, result["sent"], s.phase_cap, s.quiet, daemon)
        messages = emulator.messages()
    finally:
        ctx.children.stop(daemon)
    writes: list[float] = result["write_times"]
    latencies = sorted(
        (date - writes[seq - start]) * 1000
        for seq, date in _arrivals(messages, start, start + count).items()
        if writes[seq - start]
    )
    ctx.series["latency_ms"] = [round(x, 3) for x in latencies]
    return {
        "offered_rate": rate,
        "seconds": s.latency_seconds,
        "sent": result["sent"],
        "messages": len(messages),
        "late_sends": result["late"],
        "measured": len(latencies),
        "p50_ms": _percentile(latencies, 0.50),
        "p95_ms": _percentile(latencies, 0.95),
        "p99_ms": _percentile(latencies, 0.99),
        "max_ms": latencies[-1] if latencies else None,
        "generator": ctx.generator[-1],
    }


def scenario_peer(ctx: Context, emulator: Emulator) -> dict[str, Any]:
    """Scenario 3c: one handler process per event, as Sensu runs pipe handlers."""
    s = ctx.sizes
    emulator.reset()
    command = [
        sys.executable,
        str(REPO / "bench" / "peer_handler.py"),
        emulator.url,
        TOKEN,
        payloads.ROOM,
    ]
    spec = {
        "mode": "peer",
        "count": s.peer,
        "seq_start": ctx.seqs(s.peer),
        "templates": str(ctx.templates("ingest")),
        "command": command,
        "concurrency": s.peer_concurrency,
    }
    result = _load(ctx, "peer", spec, emulator)
    dates = [m["date"] for m in emulator.messages()]
    wall = result["wall"]
    return {
        "events": s.peer,
        "concurrency": s.peer_concurrency,
        "delivered": len(dates),
        "failed": result["failed"],
        "rate": _receipt_rate(dates),
        "wall_rate": _rate(len(dates), wall),
        "handler_cpu_ms_per_event": round(result["children_cpu"] / max(1, s.peer) * 1000, 1),
    }


# --- 4. storm under limits -----------------------------------------------------------------------


_CHECK = re.compile(r"storm-(\d{3})")


def scenario_storm(
    ctx: Context,
    *,
    name: str = "storm",
    instances: int = 1,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Scenario 4: a burst over many checks and rooms against HipChat's real limits.

    The emulator allows 100 requests per 300 s per token and 30 messages per
    room per minute; the daemon keeps its defaults (which assume the same).
    With ``instances`` > 1 (on one PostgreSQL schema, from ``settings``) the
    events go to the instances in turn and the deliveries count as done after
    ``storm_quiet`` s without a request.
    """
    s = ctx.sizes
    emulator = ctx.children.emulator(
        f"emulator-{name}", token=TOKEN, rate_limit=100, flood_limit=30, rooms=[]
    )
    daemons: list[Daemon] = []
    try:
        for i in range(instances):
            suffix = f"-{i}" if instances > 1 else ""
            daemons.append(
                ctx.children.daemon(
                    f"daemon-{name}{suffix}",
                    emulator=emulator,
                    settings={**daemon_settings(), **(settings or {})},
                )
            )
        daemon = daemons[0]
        rate = s.storm_events / s.storm_seconds
        spec = _spec(
            "paced",
            daemon.tcp_port,
            s.storm_events,
            0,
            ctx.templates("storm"),
            rate=rate,
            storm=True,
            ports=[d.tcp_port for d in daemons],
        )
        result = _load(ctx, f"daemon-{name}", spec, daemon, [*daemons[1:], emulator])
        t0 = time.monotonic()
        if instances > 1 or daemon.pending() is None:
            emulator.wait_delivered(NO_LIMIT, cap=s.storm_cap, quiet=s.storm_quiet)
        else:
            _drain(emulator, NO_LIMIT, s.storm_cap, s.storm_quiet, daemon)
        waited = time.monotonic() - t0
        counts = emulator.counts()
        messages = emulator.messages()
    finally:
        for started in daemons:
            ctx.children.stop(started)
        ctx.children.stop(emulator)
    seqs: set[int] = set()
    checks: set[int] = set()
    for m in messages:
        seqs.update(payloads.find_seqs(m["message"]))
        checks.update(int(x) for x in _CHECK.findall(m["message"]))
    rounds = math.ceil(s.storm_events / s.storm_checks)
    last_of_check = {c: c + s.storm_checks * (rounds - 1) for c in range(s.storm_checks)}
    last_state = sum(1 for c, seq in last_of_check.items() if seq in seqs)
    dates = [m["date"] for m in messages]
    ok = sum(v for k, v in counts.items() if k.isdigit() and 200 <= int(k) < 300)
    # When every event was represented, and when every check's latest state was shown.
    all_events_at = None
    total = 0
    for m in sorted(messages, key=lambda m: m["date"]):
        total += payloads.events_in(m["message"])
        if total >= result["sent"]:
            all_events_at = round(m["date"] - result["start"], 2)
            break
    shown = _arrivals(messages, 0, s.storm_events)
    latest_at = None
    if all(seq in shown for seq in last_of_check.values()):
        latest_at = round(max(shown[seq] for seq in last_of_check.values()) - result["start"], 2)
    return {
        "events": result["sent"],
        "checks": s.storm_checks,
        "rooms": s.storm_rooms,
        "send_seconds": round(result["end"] - result["start"], 2),
        "cap_seconds": s.storm_cap,
        "quiet_seconds": s.storm_quiet,
        "waited_seconds": round(waited, 1),
        "requests": counts.get("total", 0),
        "accepted": ok,
        "rate_limited_429": counts.get("429", 0),
        "statuses": counts,
        "messages": len(messages),
        # A summary's header counts the events it folds; a plain message is one event.
        "events_represented": sum(payloads.events_in(m["message"]) for m in messages),
        "events_shown": len(seqs),
        "checks_represented": len(checks),
        "latest_state_represented": last_state,
        "time_to_last_message_s": round(max(dates) - result["start"], 2) if dates else None,
        "all_events_represented_s": all_events_at,
        "all_latest_states_s": latest_at,
        "instances": instances,
        "daemon_failed_logs": sum(d.log_lines("event.failed") for d in daemons),
    }


# --- 5. memory -----------------------------------------------------------------------------------


def scenario_pending(ctx: Context) -> dict[str, Any]:
    """Scenario 5c: peak RSS with ``pending`` events spooled while HipChat is down.

    The events arrive over NDJSON as fast as the daemon reads them; memory is
    read once every one of them is committed (``/metrics``), plus a second.
    """
    s = ctx.sizes
    if not spool_available():
        return {"available": False, "reason": "no spool in this tree"}
    emulator = ctx.children.emulator(
        "emulator-pending",
        token=TOKEN,
        rate_limit=NO_LIMIT,
        flood_limit=NO_LIMIT,
        rooms=[payloads.ROOM],
    )
    daemon = ctx.children.daemon(
        "daemon-pending",
        emulator=emulator,
        settings={"max_spool_events": 2 * s.pending},
    )
    try:
        emulator.faults(down_for=s.phase_cap + 60)
        spec = _spec(
            "stream",
            daemon.tcp_port,
            s.pending,
            ctx.seqs(s.pending),
            ctx.templates("ingest"),
            connections=s.stream_connections,
        )
        before = daemon.metrics()
        result = _load(ctx, "daemon-pending", spec, daemon)
        closed = result.get("closed") or result["end"]
        committed = None
        if before is not None:
            done_at, _ = _wait_processed(daemon, before, result["sent"], s.phase_cap)
            committed = round(done_at - result["start"], 2) if done_at else None
        time.sleep(1.0)
        memory = daemon.memory()
        samples = daemon.metrics() or {}
    finally:
        ctx.children.stop(daemon)
        ctx.children.stop(emulator)
    return {
        "available": True,
        "pending": s.pending,
        "sent": result["sent"],
        "ingest_seconds": round(closed - result["start"], 2),
        # every event committed (from /metrics), when the daemon serves it
        "committed_seconds": committed,
        "spool_pending": samples.get('hipchatd_spool_events{state="pending"}'),
        "peak_mb": memory.get("peak_mb"),
        "rss_mb": memory.get("rss_mb"),
        "metrics": {k: v for k, v in samples.items() if "spool" in k or "pending" in k},
    }


def sizes_dict(sizes: Sizes) -> dict[str, Any]:
    """The sizes as JSON-ready data."""
    return asdict(sizes)
