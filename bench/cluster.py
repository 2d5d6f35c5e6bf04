"""PostgreSQL scenarios: the spool's cost against SQLite, several instances on one schema.

A private PostgreSQL 15 server is started for the run from the same code the
tests use (:mod:`tests.postgres`, Debian's ``postgresql-15`` binaries), but
durable as production runs it (``fsync``, ``synchronous_commit`` on: every
commit waits for its WAL flush), and each scenario gets a schema of its own.
Where the binaries are missing, the scenarios are not run and the report says
why. Every figure is a ratio between runs of this same benchmark, on this
same machine, with the same load generator.

* ``pg_spool_cost``: the same Sensu-style ingest (scenario 1's load, delivered)
  into a daemon with its spool in SQLite and one with it in PostgreSQL,
  alternating, best of each: events/s and the daemon's CPU per event.
* ``pg_instances``: the same ingest into one instance, then spread over two
  instances sharing one schema: events/s of the pair over the single one.
* ``pg_storm``: scenario 4 (the storm under HipChat's limits) on PostgreSQL with
  one instance, then with three sharing the schema and the load.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.procs import Daemon, Emulator, HarnessError, wait_for
from bench.scenarios import NO_LIMIT, TOKEN, Context

__all__ = ["private_server", "scenario_pg_instances", "scenario_pg_spool_cost", "scenario_pg_storm"]

#: Instances of the storm run on one schema (the issue's cluster).
STORM_INSTANCES = 3


@contextlib.contextmanager
def private_server(ctx: Context) -> Iterator[Any]:
    """A durable private PostgreSQL server for the run, or None (with a note saying why)."""
    try:
        from tests import postgres
    except ImportError as exc:  # pytest or psycopg missing: the test extra is not installed
        ctx.notes.append(f"PostgreSQL scenarios not run: {exc} (pip install -e '.[test]')")
        yield None
        return
    try:
        server = postgres.PostgresServer(postgres.find_bindir(), postgres.DURABLE_OPTIONS)
    except postgres.PostgresUnavailable as exc:
        ctx.notes.append(f"PostgreSQL scenarios not run: {exc}")
        yield None
        return
    try:
        try:
            server.start()
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            ctx.notes.append(f"PostgreSQL scenarios not run: the server did not start: {first}")
            yield None
            return
        ctx.notes.append(
            f"PostgreSQL scenarios: a private durable PostgreSQL 15 server (fsync and "
            f"synchronous_commit on), started in {server.started_after:.1f} s"
        )
        yield server
    finally:
        server.stop()


def _spool(server: Any) -> dict[str, Any]:
    """A fresh schema on ``server``, as ``hipchatd.spool`` settings."""
    schema = server.create_schema()
    return {"spool": {"backend": "postgresql", "dsn": schema.conninfo, "schema": schema.schema}}


#: The daemons' own budget settings, the emulator's limits (off): a budget shared through
#: PostgreSQL starts from these and HipChat's answers only ever lower it.
NO_LIMITS = {"rate_limit": NO_LIMIT, "flood_limit": NO_LIMIT}


def _emulator(ctx: Context, name: str) -> Emulator:
    return ctx.children.emulator(
        name, token=TOKEN, rate_limit=NO_LIMIT, flood_limit=NO_LIMIT, rooms=["bench"]
    )


def server_cpu(server: Any) -> float:
    """CPU seconds the PostgreSQL server has used: the postmaster, its live backends and
    the ones it has reaped (read from ``/proc``, as :meth:`bench.procs.Child.cpu`)."""
    try:
        postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    except (OSError, ValueError, IndexError):
        return 0.0
    total = 0.0
    for pid, reaped in ((postmaster, True), *((int(c), False) for c in children)):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used = int(fields[11]) + int(fields[12])
        if reaped:
            used += int(fields[13]) + int(fields[14])
        total += used / os.sysconf("SC_CLK_TCK")
    return total


def scenario_pg_spool_cost(ctx: Context, server: Any) -> dict[str, Any]:
    """The same ingest into a daemon on SQLite and one on PostgreSQL, alternating.

    The CPU per event is the daemon's plus, on PostgreSQL, the server's (its
    backends do the commits' work), from the first event sent until every
    event shows as accepted (committed).
    """
    s = ctx.sizes
    emulator = _emulator(ctx, "emulator-pg-cost")
    big = scenarios.daemon_settings()
    daemons = {
        "sqlite": ctx.children.daemon(
            "daemon-sqlite", emulator=emulator, hipchat=NO_LIMITS, settings=big
        ),
        "postgresql": ctx.children.daemon(
            "daemon-postgresql",
            emulator=emulator,
            hipchat=NO_LIMITS,
            settings={**big, **_spool(server)},
        ),
    }
    runs: dict[str, list[dict[str, Any]]] = {"sqlite": [], "postgresql": []}
    try:
        for _ in range(s.repeat):
            for backend, daemon in daemons.items():
                runs[backend].append(_spread_ingest(ctx, [daemon], emulator, server))
    finally:
        for child in (*daemons.values(), emulator):
            ctx.children.stop(child)
    best = {k: max(v, key=lambda r: r["rate"] or 0) for k, v in runs.items()}
    rate = {k: v["rate"] for k, v in best.items()}
    cpu = {k: min(r["daemon_cpu_us_per_event"] for r in v) for k, v in runs.items()}
    in_server = {k: min(r["server_cpu_us_per_event"] for r in v) for k, v in runs.items()}
    spool_cpu = {"sqlite": cpu["sqlite"], "postgresql": cpu["postgresql"] + in_server["postgresql"]}
    return {
        "events": s.ingest_variant,
        "senders": s.senders,
        "rate": rate,
        "daemon_cpu_us_per_event": cpu,
        "server_cpu_us_per_event": in_server,
        "cpu_us_per_event": spool_cpu,
        "runs": {k: [r["rate"] for r in v] for k, v in runs.items()},
        "delivered": {k: v["events_delivered"] for k, v in best.items()},
        # The spool's cost: PostgreSQL over SQLite, in time per event and CPU per event.
        "time_ratio": rate["sqlite"] / rate["postgresql"] if rate["postgresql"] else None,
        "cpu_ratio": spool_cpu["postgresql"] / cpu["sqlite"] if cpu["sqlite"] else None,
    }


def _why(exc: HarnessError) -> str:
    """The last line of a child's log in ``exc`` (a JSON log line: its ``error``)."""
    lines = [line for line in str(exc).splitlines() if line.strip()] or ["?"]
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(lines[-1]).get("error", lines[-1]))
    return lines[-1]


def _instances(
    ctx: Context, name: str, count: int, emulator: Emulator, spool: dict[str, Any]
) -> list[Daemon] | str:
    """``count`` daemons on one schema, or why they could not all start."""
    settings = {**scenarios.daemon_settings(), **spool}
    started: list[Daemon] = []
    for i in range(count):
        try:
            started.append(
                ctx.children.daemon(
                    f"{name}-{i}", emulator=emulator, hipchat=NO_LIMITS, settings=settings
                )
            )
        except HarnessError as exc:
            for daemon in started:
                ctx.children.stop(daemon)
            return f"instance {i + 1} of {count} on one schema did not start: {_why(exc)}"
    return started


def _queue(daemon: Daemon) -> int:
    """Entries waiting to be delivered: in the shared PostgreSQL queue (every instance's),
    else in the daemon's own spool (``/metrics``)."""
    spool = daemon.config["hipchatd"].get("spool", {})
    if spool.get("backend") != "postgresql":
        return int(daemon.pending() or 0)
    import psycopg
    from psycopg import sql

    with psycopg.connect(spool["dsn"], connect_timeout=10) as conn:
        query = sql.SQL("SELECT count(*) FROM {}.pending").format(sql.Identifier(spool["schema"]))
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def _spread_ingest(
    ctx: Context, daemons: list[Daemon], emulator: Emulator, server: Any
) -> dict[str, Any]:
    """Scenario 1's load spread over ``daemons``; done when all of it shows as processed
    (accepted, skipped or rejected); then waits until nothing is left to deliver."""
    s = ctx.sizes
    emulator.reset()
    before = [d.metrics() or {} for d in daemons]
    cpu_before = sum(d.cpu() for d in daemons), server_cpu(server)
    start = ctx.seqs(s.ingest_variant)
    spec = scenarios._spec(
        "conn",
        daemons[0].tcp_port,
        s.ingest_variant,
        start,
        ctx.templates("ingest"),
        senders=s.senders,
        ports=[d.tcp_port for d in daemons],
    )
    phase = f"pg-{len(daemons)}-instances-{len(ctx.generator)}"
    result = scenarios._load(ctx, phase, spec, daemons[0], [*daemons[1:], emulator])
    deadline = time.monotonic() + s.phase_cap
    done_at = None
    while time.monotonic() < deadline:
        processed = sum(
            sum(scenarios._processed(d.metrics() or {}, b).values())
            for d, b in zip(daemons, before, strict=True)
        )
        if processed >= result["sent"]:
            done_at = time.time()
            break
        time.sleep(0.02)
    end = done_at or time.time()
    events = max(1, result["sent"])
    daemon_cpu = (sum(d.cpu() for d in daemons) - cpu_before[0]) / events * 1e6
    in_server = (server_cpu(server) - cpu_before[1]) / events * 1e6
    drained_at = time.monotonic()
    wait_for(
        "the deliveries done",
        lambda: all(_queue(d) == 0 for d in daemons),
        s.phase_cap,
        step=0.2,
        detail=daemons[0].tail,
    )
    drained = time.monotonic() - drained_at
    messages = emulator.messages()
    return {
        "sent": result["sent"],
        "errors": result["errors"],
        "seconds": round(end - result["start"], 3),
        "rate": scenarios._rate(result["sent"], end - result["start"]),
        "all_processed": done_at is not None,
        "events_delivered": len(scenarios._arrivals(messages, start, start + s.ingest_variant)),
        "drain_s": round(drained, 2),
        "daemon_cpu_us_per_event": round(daemon_cpu, 1),
        "server_cpu_us_per_event": round(in_server, 1),
    }


def scenario_pg_instances(ctx: Context, server: Any) -> dict[str, Any]:
    """The same ingest into one instance, then over two instances on one schema."""
    emulator = _emulator(ctx, "emulator-pg-instances")
    out: dict[str, Any] = {"events": ctx.sizes.ingest_variant, "senders": ctx.sizes.senders}
    try:
        for count in (1, 2):
            daemons = _instances(ctx, f"daemon-pg{count}", count, emulator, _spool(server))
            if isinstance(daemons, str):
                return {**out, "available": False, "reason": daemons}
            try:
                runs = [
                    _spread_ingest(ctx, daemons, emulator, server) for _ in range(ctx.sizes.repeat)
                ]
            finally:
                for daemon in daemons:
                    ctx.children.stop(daemon)
            out[f"instances_{count}"] = max(runs, key=lambda r: r["rate"] or 0)
            out[f"instances_{count}"]["runs"] = [r["rate"] for r in runs]
    finally:
        ctx.children.stop(emulator)
    one, two = out["instances_1"]["rate"], out["instances_2"]["rate"]
    return {**out, "available": True, "ratio": two / one if one and two else None}


def scenario_pg_storm(ctx: Context, server: Any) -> dict[str, Any]:
    """Scenario 4 on PostgreSQL: one instance, then three sharing the schema and the load."""
    one = scenarios.scenario_storm(ctx, name="pg-storm-1", settings=_spool(server))
    try:
        three = scenarios.scenario_storm(
            ctx, name=f"pg-storm-{STORM_INSTANCES}", instances=STORM_INSTANCES,
            settings=_spool(server),
        )  # fmt: skip
    except HarnessError as exc:
        return {"one": one, "available": False, "reason": _why(exc)}
    return {
        "one": one,
        "available": True,
        "instances": STORM_INSTANCES,
        "several": three,
        "same_requests": one["requests"] == three["requests"],
    }
