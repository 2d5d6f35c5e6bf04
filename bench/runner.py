"""``python -m bench``: run every scenario, print the table, save the results.

The run order shares one emulator (limits off) and one daemon across the
scenarios that allow it; the storm and the pending-events scenario start
their own, and the PostgreSQL scenarios (:mod:`bench.cluster`) their own
private server. Every child is stopped on the way out, whatever happened.

Exit status: 0 when every scenario ran (targets missed or not), 1 when the
harness could not measure something (a child did not start, a phase overran
its cap), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import cluster, procs, report, scenarios
from bench.payloads import ROOM, ingest_templates, storm_payload, storm_room, storm_templates
from bench.procs import Children, HarnessError
from bench.scenarios import NO_LIMIT, TOKEN, Context, Sizes

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark hipchatd against a bare trio server, a bare httpx loop and "
        "a process-per-event handler, all measured in the same run.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of every scenario in well under a minute"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="where to write STEM.md/.json/.png (default %(default)s)",
    )
    parser.add_argument("--stem", help="file name stem (default: latest, or quick with --quick)")
    parser.add_argument(
        "--hipchatd",
        type=Path,
        metavar="DIR",
        help="benchmark the hipchatd package in DIR (e.g. a git archive "
        "snapshot) instead of the checkout's",
    )
    parser.add_argument("--senders", type=int, help="concurrent Sensu-style senders")
    parser.add_argument("--repeat", type=int, help="alternating ceiling/daemon runs, best kept")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--postgresql-only",
        action="store_true",
        help="run only the PostgreSQL scenarios (spool cost, two instances, storm on three)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record the daemon with py-spy through scenarios 1-3 (STEM-profile.svg)",
    )
    return parser


def _describe_source() -> str:
    source = procs.SOURCE
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "hipchatd"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return str(source)
    if rev.returncode != 0:
        return str(source)
    return rev.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def _check_payloads(sizes: Sizes) -> list[str]:
    from bench.payloads import fill, verify

    problems = verify(fill(t, i) for i, t in enumerate(ingest_templates()))
    storm = storm_templates(sizes.storm_checks, sizes.storm_rooms)
    for seq in range(2 * sizes.storm_checks):
        problems += verify(
            [storm_payload(storm, seq)], storm_room(seq % len(storm), sizes.storm_rooms)
        )
    return problems


class _Run:
    def __init__(self, ctx: Context, results: dict[str, Any]) -> None:
        self.ctx = ctx
        self.results = results

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run one scenario; record its result, or its error, and go on."""
        t0 = time.monotonic()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            value = fn()
        except (HarnessError, OSError, ValueError, KeyError, TypeError) as exc:
            detail = "".join(traceback.format_exception_only(exc)).strip()
            self.results["errors"][name] = detail
            print(f"bench: {name} failed: {detail}", file=sys.stderr, flush=True)
            return None
        self.results["scenarios"][name] = value
        print(f"bench: {name} done in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
        return value

    def start(self, name: str, fn: Callable[[], procs.Daemon]) -> procs.Daemon | None:
        """Start a daemon that several scenarios share; None, its error recorded, if not."""
        try:
            return fn()
        except (HarnessError, OSError) as exc:
            detail = "".join(traceback.format_exception_only(exc)).strip()
            self.results["errors"][name] = detail
            print(f"bench: {name} failed: {detail}", file=sys.stderr, flush=True)
            return None


def _run_postgresql(ctx: Context, run: _Run) -> None:
    with cluster.private_server(ctx) as server:
        if server is not None:
            run.step("pg_spool_cost", lambda: cluster.scenario_pg_spool_cost(ctx, server))
            run.step("pg_instances", lambda: cluster.scenario_pg_instances(ctx, server))
            run.step("pg_storm", lambda: cluster.scenario_pg_storm(ctx, server))


def _run_all(ctx: Context, results: dict[str, Any], *, postgresql_only: bool = False) -> None:
    s = ctx.sizes
    run = _Run(ctx, results)
    if postgresql_only:
        _run_postgresql(ctx, run)
        return
    children = ctx.children
    emulator = children.emulator(
        "emulator", token=TOKEN, rate_limit=NO_LIMIT, flood_limit=NO_LIMIT, rooms=[ROOM]
    )
    big = scenarios.daemon_settings()
    daemon = children.daemon("daemon", emulator=emulator, settings=big)
    if ctx.profile is not None:
        _start_profiler(ctx, daemon)
    time.sleep(s.idle_seconds)
    memory: dict[str, Any] = {"idle": daemon.memory()}
    results["meta"]["metrics_endpoint"] = daemon.metrics() is not None
    results["scenarios"]["memory"] = memory

    ingest = run.step("ingest", lambda: scenarios.scenario_ingest(ctx, daemon, emulator, s.repeat))
    memory["after_ingest"] = daemon.memory()
    run.step(
        "ingest_filtered",
        lambda: scenarios.scenario_ingest_variant(ctx, daemon, emulator, kind="ok"),
    )

    def on_other_daemon(name: str, **kw: Any) -> dict[str, Any]:
        other = children.daemon(name, emulator=emulator, **kw)
        try:
            return scenarios.scenario_ingest_variant(ctx, other, emulator, kind="ingest")
        finally:
            children.stop(other)

    run.step(
        "ingest_warning",
        lambda: on_other_daemon("daemon-warning", log_level="warning", settings=big),
    )
    if procs.spool_available():
        run.step(
            "ingest_spool_file",
            lambda: scenarios.scenario_ingest_variant(ctx, daemon, emulator, kind="ingest"),
        )
        run.step(
            "ingest_spool_memory",
            lambda: on_other_daemon("daemon-memory", settings={**big, "state_dir": ":memory:"}),
        )
    else:
        results["notes"].append(
            'state_dir file vs ":memory:" not compared: the daemon has no spool yet'
        )

    # Intake and spool commit without delivery: HipChat is a loopback port nothing listens
    # on. Started only now and stopped right after its phases, so that its lane's retries
    # never run beside another scenario.
    undelivered = run.start(
        "daemon-undelivered",
        lambda: children.daemon(
            "daemon-undelivered",
            emulator=emulator,
            settings=big,
            hipchat={"server_url": f"http://127.0.0.1:{procs.free_port()}"},
        ),
    )
    try:
        run.step("stream", lambda: scenarios.scenario_stream(ctx, daemon, emulator, undelivered))
        if undelivered is not None:
            run.step(
                "ingest_undelivered",
                lambda: scenarios.scenario_ingest_undelivered(ctx, undelivered, emulator),
            )
    finally:
        if undelivered is not None:
            children.stop(undelivered)
    ingest_rate = (ingest or {}).get("daemon", {}).get("rate")
    paced = round(ingest_rate / 2) if ingest_rate else None
    run.step("udp", lambda: scenarios.scenario_udp(ctx, daemon, emulator, paced))

    delivery = run.step(
        "delivery", lambda: scenarios.scenario_delivery(ctx, daemon, emulator, s.repeat)
    )
    # The latency load is Sensu-style, so its maximum is the lower of the two capacities.
    delivery_rate = (delivery or {}).get("daemon", {}).get("rate")
    max_rate = min(r for r in (delivery_rate, ingest_rate, float("inf")) if r)
    max_rate = max_rate if max_rate != float("inf") else 100.0
    results["notes"].append(
        f"half load = half of min(delivery {delivery_rate or 0:,.0f} ev/s, Sensu-style ingest "
        f"{ingest_rate or 0:,.0f} ev/s) = {max_rate / 2:,.0f} ev/s"
    )
    run.step("latency", lambda: scenarios.scenario_latency(ctx, emulator, max_rate / 2))
    run.step("peer", lambda: scenarios.scenario_peer(ctx, emulator))
    _stop_profiler(ctx, results)
    children.stop(daemon)
    children.stop(emulator)

    run.step("storm", lambda: scenarios.scenario_storm(ctx))
    run.step("pending", lambda: scenarios.scenario_pending(ctx))
    _run_postgresql(ctx, run)


def _start_profiler(ctx: Context, daemon: procs.Daemon) -> None:
    assert ctx.profile is not None
    if shutil.which("py-spy") is None:
        ctx.notes.append("--profile: py-spy is not installed (pip install -e '.[bench]')")
        return
    argv = [
        "py-spy",
        "record",
        "--rate",
        "200",
        "--format",
        "flamegraph",
        "--output",
        str(ctx.profile),
        "--pid",
        str(daemon.pid),
    ]
    ctx.profiler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop_profiler(ctx: Context, results: dict[str, Any]) -> None:
    if ctx.profiler is None:
        return
    ctx.profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        ctx.profiler.wait(60)
    except subprocess.TimeoutExpired:
        ctx.profiler.kill()
        ctx.profiler.wait()
    if ctx.profile is not None and ctx.profile.exists():
        results["notes"].append(
            f"daemon profile (scenarios 1-3): {ctx.profile.name}, beside this file"
        )
    ctx.profiler = None


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every finally, which stops the children


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring for the exit status."""
    args = _parser().parse_args(argv)
    if args.hipchatd is not None:
        procs.use_source(args.hipchatd)
    sizes = Sizes.quick() if args.quick else Sizes()
    overrides = {k: v for k, v in (("senders", args.senders), ("repeat", args.repeat)) if v}
    if overrides:
        sizes = Sizes(**{**scenarios.sizes_dict(sizes), **overrides})
    problems = _check_payloads(sizes)
    if problems:
        print(
            "bench: payloads would not measure what they should:",
            *problems,
            sep="\n  ",
            file=sys.stderr,
        )
        return 1
    stem = args.stem or ("quick" if args.quick else "latest")
    signal.signal(signal.SIGTERM, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="hipchatd-bench-"))
    started = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "quick": args.quick,
            "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "hipchatd": _describe_source(),
            "spool_available": procs.spool_available(),
            "sizes": scenarios.sizes_dict(sizes),
        },
        "scenarios": {},
        "errors": {},
        "notes": [],
    }
    ctx = Context(Children(workdir), workdir, sizes)
    if args.profile:
        args.out.mkdir(parents=True, exist_ok=True)
        ctx.profile = args.out / f"{stem}-profile.svg"
    try:
        with ctx.children:
            _run_all(ctx, results, postgresql_only=args.postgresql_only)
    except HarnessError as exc:
        results["errors"]["setup"] = str(exc)
    except KeyboardInterrupt:
        print("bench: interrupted; children stopped", file=sys.stderr)
        return 130
    finally:
        if ctx.profiler is not None:
            ctx.profiler.kill()
            ctx.profiler.wait()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["meta"]["duration_s"] = time.monotonic() - started
    results["notes"].extend(ctx.notes)
    results["generator"] = ctx.generator
    results["targets"] = report.targets(results)
    # A UDP blast sends as fast as the generator can, by design: it measures loss, not rate.
    gen = [g["generator_util"] for g in ctx.generator if "blast" not in g["phase"]]
    if gen:
        results["notes"].append(
            f"load generator CPU: at most {max(gen) * 100:.0f}% of one core in any phase "
            f"(median {sorted(gen)[len(gen) // 2] * 100:.0f}%), UDP blasts aside, which send "
            "as fast as the generator can by design"
        )
    if args.keep:
        results["notes"].append(f"work directory kept: {workdir}")
    text = report.write(results, ctx.series, args.out, stem)
    print(text)
    print(f"bench: wrote {args.out / stem}.md, .json, .png", file=sys.stderr)
    return 1 if results["errors"] else 0
