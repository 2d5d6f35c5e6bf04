"""Results -> a Markdown table, a JSON file and a PNG plot.

Targets are ratios against ceilings and peers measured in the same run (or,
for memory and latency, fixed bounds), marked PASS or MISS; a target whose
measurement is not available yet is marked SKIP. Nothing here asserts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["markdown", "plot", "targets", "write"]

#: The goals of the ingest targets: the daemon's rate over the bare trio server's.
INGEST_GOAL = 0.7
STREAM_GOAL = 0.5


def _n(value: float | None, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "–"
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}".strip()


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def _cpu(run: dict[str, Any]) -> str:
    """A process's CPU per event, to follow its rate; nothing for results without it."""
    value = run.get("cpu_us_per_event")
    return "" if value is None else f", {_n(value, 'µs')} CPU/event"


def _cpu_notes(run: dict[str, Any], scenario: dict[str, Any] | None = None) -> str:
    """The daemon's CPU per event over the bare server's, and until its events were done."""
    notes = ""
    if scenario is not None and scenario.get("cpu_ratio") is not None:
        notes += f"; CPU per event daemon/bare {_ratio(scenario['cpu_ratio'])}"
    value = run.get("cpu_us_per_event_done")
    if value is not None:
        until = "delivered" if "delivery" in run else "processed"
        notes += f"; CPU until {until} {_n(value, 'µs')}/event"
    return notes


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results.get("scenarios", {})
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _verdict(value: float | None, ok: Callable[[float], bool]) -> str:
    if value is None:
        return "SKIP"
    return "PASS" if ok(value) else "MISS"


def _target(
    target: str,
    measured: str,
    reference: str,
    ratio: float | None,
    goal: str,
    verdict: str,
    note: str = "",
) -> dict[str, Any]:
    return {
        "target": target,
        "measured": measured,
        "reference": reference,
        "ratio": ratio,
        "goal": goal,
        "result": verdict,
        "note": note,
    }


def _against_bare(
    label: str, scenario: dict[str, Any], goal: float, note: str = ""
) -> dict[str, Any]:
    """An ingest target: the daemon's rate over the bare trio server's, with each one's CPU."""
    d, c, r = scenario["daemon"], scenario["ceiling"], scenario["ratio"]
    return _target(
        label,
        _n(d["rate"], "ev/s") + _cpu(d),
        _n(c["rate"], "ev/s") + _cpu(c),
        r,
        f">= {goal:.2f}",
        _verdict(r, lambda v: v >= goal),
        note,
    )


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value, reference, ratio and verdict."""
    out: list[dict[str, Any]] = []
    ingest = _get(results, "ingest")
    if ingest:
        spool = results["meta"].get("spool_available")
        note = "" if spool else "spool not available yet: measured without it"
        out.append(
            _against_bare("Sensu-style ingest, spool on, vs bare trio", ingest, INGEST_GOAL, note)
        )
    stream = _get(results, "stream")
    if stream:
        out.append(_against_bare("NDJSON streams vs bare trio", stream, STREAM_GOAL))
    delivery = _get(results, "delivery")
    if delivery:
        d, c, r = delivery["daemon"]["rate"], delivery["ceiling"]["rate"], delivery["ratio"]
        out.append(
            _target(
                "Delivery, limits off, vs bare httpx",
                _n(d, "ev/s"),
                _n(c, "ev/s"),
                r,
                ">= 0.80",
                _verdict(r, lambda v: v >= 0.8),
            )
        )
    latency = _get(results, "latency")
    if latency:
        p50, p95, p99 = latency["p50_ms"], latency["p95_ms"], latency["p99_ms"]
        label = f"p99 write-to-receipt at half load ({_n(latency['offered_rate'])} ev/s)"
        ref = f"p50 {_n(p50, 'ms', 1)}, p95 {_n(p95, 'ms', 1)}"
        out.append(
            _target(label, _n(p99, "ms", 1), ref, None, "< 50 ms", _verdict(p99, lambda v: v < 50))
        )
    peer = _get(results, "peer")
    if delivery and peer and peer.get("rate"):
        d = delivery["daemon"]["rate"] or 0.0
        r = d / peer["rate"]
        out.append(
            _target(
                "Events/s vs process-per-event peer",
                _n(d, "ev/s"),
                _n(peer["rate"], "ev/s", 1),
                r,
                ">= 50x",
                _verdict(r, lambda v: v >= 50),
            )
        )
    memory = _get(results, "memory")
    if memory:
        idle = memory.get("idle", {}).get("peak_mb")
        out.append(
            _target(
                "Peak RSS, idle",
                _n(idle, "MB", 1),
                "",
                None,
                "< 60 MB",
                _verdict(idle, lambda v: v < 60),
            )
        )
    pending = _get(results, "pending")
    if pending is not None:
        available = pending.get("available")
        peak = pending.get("peak_mb") if available else None
        label = f"Peak RSS, {_n(pending.get('pending') or 100_000)} events pending"
        note = "" if available else f"not available: {pending.get('reason')}"
        out.append(
            _target(
                label,
                _n(peak, "MB", 1),
                "",
                None,
                "< 100 MB",
                _verdict(peak, lambda v: v < 100),
                note,
            )
        )
    return out


Measurement = tuple[str, str, str, str]


def _ingest_rows(results: dict[str, Any]) -> list[Measurement]:
    rows: list[Measurement] = []
    ingest = _get(results, "ingest")
    if not ingest:
        return rows
    d, c = ingest["daemon"], ingest["ceiling"]
    runs = ", ".join(_n(r) for r in ingest["daemon_runs"])
    ceiling_runs = ", ".join(_n(r) for r in ingest["ceiling_runs"])
    delivered = d.get("delivery", {})
    label = (
        f"1. Sensu-style ingest, {ingest['senders']} senders, "
        f"{_n(ingest['events'])} events (pass the filters, delivered)"
    )
    note = (
        f"ratio {_ratio(ingest['ratio'])}; runs {runs} vs {ceiling_runs}; "
        f"{_n(delivered.get('events_delivered'))} events delivered in "
        f"{_n(delivered.get('messages'))} messages; ingest confirmed by {d['confirmed_by']}"
        f"{_cpu_notes(d, ingest)}"
    )
    value, reference = _n(d["rate"], "ev/s") + _cpu(d), _n(c["rate"], "ev/s") + _cpu(c)
    rows.append((label, value, reference + " bare trio", note))
    variants = (
        ("ingest_filtered", "1. Sensu-style ingest, events filtered (status 0)"),
        ("ingest_warning", "1. Sensu-style ingest, daemon at --log-level warning"),
        ("ingest_spool_file", "1. Sensu-style ingest, state_dir on disk"),
        ("ingest_spool_memory", '1. Sensu-style ingest, state_dir ":memory:"'),
    )
    for key, label in variants:
        v = _get(results, key)
        if v and c["rate"]:
            ratio = (v["rate"] or 0) / c["rate"]
            note = f"ratio {_ratio(ratio)}; {_n(v['sent'])} events{_cpu_notes(v)}"
            rows.append((label, _n(v["rate"], "ev/s") + _cpu(v), "bare trio (above)", note))
    undelivered = _get(results, "ingest_undelivered")
    if undelivered:
        label = "1. Sensu-style ingest, HipChat unreachable (spooled, not delivered)"
        rows.append(_stage_row(label, undelivered))
    return rows


def _stage_row(label: str, stage: dict[str, Any]) -> Measurement:
    """A stage of ingest against the bare-server phase run just before it."""
    d, c = stage["daemon"], stage["ceiling"]
    return (
        label,
        _n(d["rate"], "ev/s") + _cpu(d),
        _n(c["rate"], "ev/s") + _cpu(c) + " bare trio, run just before",
        f"ratio {_ratio(stage['ratio'])}; {_n(d['sent'])} events{_cpu_notes(d, stage)}",
    )


def _stream_rows(results: dict[str, Any]) -> list[Measurement]:
    rows: list[Measurement] = []
    stream = _get(results, "stream")
    if stream:
        label = (
            f"2. NDJSON stream ingest, {stream['connections']} connections, "
            f"{_n(stream['events'])} events"
        )
        d, c = stream["daemon"], stream["ceiling"]
        rows.append(
            (
                label,
                _n(d["rate"], "ev/s") + _cpu(d),
                _n(c["rate"], "ev/s") + _cpu(c) + " bare trio",
                f"ratio {_ratio(stream['ratio'])}{_cpu_notes(d, stream)}",
            )
        )
        for key, what in (
            ("filtered", "events filtered (status 0)"),
            ("undelivered", "HipChat unreachable (spooled, not delivered)"),
        ):
            if stream.get(key):
                rows.append(_stage_row(f"2. NDJSON stream ingest, {what}", stream[key]))
    udp = _get(results, "udp")
    if udp:
        c = udp.get("ceiling_blast", {})
        for kind in ("blast", "paced"):
            d = udp.get(f"daemon_{kind}")
            if not d:
                continue
            blast = kind == "blast"
            offered = "as fast as possible" if blast else f"at {_n(d['offered_rate'])} ev/s"
            ref = f"bare trio loss {_pct(c.get('loss'))}{_cpu(c)}" if blast else ""
            rows.append(
                (
                    f"2. UDP datagrams, {_n(d['sent'])} sent {offered}",
                    f"loss {_pct(d['loss'])} ({_n(d['received'])} received){_cpu(d)}",
                    ref,
                    f"sent at {_n(d['send_rate'], 'dg/s')}; counted by {d['counted_by']}",
                )
            )
    return rows


def _delivery_rows(results: dict[str, Any]) -> list[Measurement]:
    rows: list[Measurement] = []
    delivery = _get(results, "delivery")
    if delivery:
        d, c = delivery["daemon"], delivery["ceiling"]
        label = (
            f"3. Delivery, limits off, {_n(delivery['events'])} events, "
            f"concurrency {delivery['concurrency']}"
        )
        note = (
            f"ratio {_ratio(delivery['ratio'])}; {_n(d['delivered'])} events in "
            f"{_n(d['messages'])} messages; end-to-end {_n(d['end_to_end_rate'], 'ev/s')}; "
            f"CPU: daemon {_pct(d['daemon_cpu_util'])}, emulator "
            f"{_pct(d['emulator_cpu_util'])} (httpx run: {_pct(c['emulator_cpu_util'])})"
        )
        rows.append((label, _n(d["rate"], "ev/s"), _n(c["rate"], "ev/s") + " bare httpx", note))
    latency = _get(results, "latency")
    if latency:
        label = (
            f"3. Latency, write to receipt, {_n(latency['offered_rate'])} ev/s for "
            f"{latency['seconds']:g} s"
        )
        value = " / ".join(f"{q} {_n(latency[f'{q}_ms'], 'ms', 1)}" for q in ("p50", "p95", "p99"))
        note = (
            f"max {_n(latency['max_ms'], 'ms', 1)}; {_n(latency['measured'])} of "
            f"{_n(latency['sent'])} events matched; late sends {latency['late_sends']}"
        )
        rows.append((label, value, "", note))
    peer = _get(results, "peer")
    if peer:
        label = f"3. Peer: one handler process per event, {peer['concurrency']} at a time"
        note = (
            f"{peer['delivered']}/{peer['events']} delivered; "
            f"{_n(peer['handler_cpu_ms_per_event'], 'ms', 1)} CPU per event"
        )
        rows.append((label, _n(peer["rate"], "ev/s", 1), "", note))
    return rows


def _storm_rows(results: dict[str, Any]) -> list[Measurement]:
    storm = _get(results, "storm")
    if not storm:
        return []
    label = (
        f"4. Storm: {_n(storm['events'])} events, {storm['checks']} checks, "
        f"{storm['rooms']} rooms in {storm['send_seconds']:g} s; "
        "limits 100/300 s, 30/room/min"
    )
    value = f"{storm['requests']} requests, {storm['rate_limited_429']} × 429"
    last = _n(storm["time_to_last_message_s"], "s", 1)
    note = (
        f"{storm['accepted']} accepted; events represented "
        f"{_n(storm['events_represented'])}/{_n(storm['events'])} "
        f"({_n(storm['events_shown'])} shown by their own line); checks "
        f"{storm['checks_represented']}/{storm['checks']}, latest state of "
        f"{storm['latest_state_represented']}; from the first send: all events represented "
        f"at {_n(storm.get('all_events_represented_s'), 's', 1)}, every latest state at "
        f"{_n(storm.get('all_latest_states_s'), 's', 1)}, last message at {last} (watched "
        f"until {storm['cap_seconds']:g} s after the last send, or "
        f"{storm.get('quiet_seconds', 0):g} s without a request)"
    )
    return [(label, value, "", note)]


def _memory_rows(results: dict[str, Any]) -> list[Measurement]:
    rows: list[Measurement] = []
    memory = _get(results, "memory") or {}
    for key, label in (
        ("idle", "5. Peak RSS, idle"),
        ("after_ingest", "5. Peak RSS, through scenario 1"),
    ):
        m = memory.get(key)
        if m:
            rows.append(
                (
                    label,
                    _n(m.get("peak_mb"), "MB", 1),
                    "",
                    f"RSS now {_n(m.get('rss_mb'), 'MB', 1)}",
                )
            )
    pending = _get(results, "pending")
    if pending is not None:
        if pending.get("available"):
            rows.append(
                (
                    f"5. Peak RSS, {_n(pending['pending'])} events pending",
                    _n(pending["peak_mb"], "MB", 1),
                    "",
                    f"read in {pending['ingest_seconds']} s, all committed at "
                    f"{_n(pending.get('committed_seconds'), 's', 1)}; spool pending "
                    f"{_n(pending.get('spool_pending'))}",
                )
            )
        else:
            rows.append(
                (
                    "5. Peak RSS, events pending in the spool",
                    "not available",
                    "",
                    str(pending.get("reason")),
                )
            )
    return rows


def _pg_storm_value(storm: dict[str, Any]) -> str:
    return f"{storm['requests']} requests, {storm['rate_limited_429']} × 429"


def _pg_rows(results: dict[str, Any]) -> list[Measurement]:
    rows: list[Measurement] = []
    cost = _get(results, "pg_spool_cost")
    if cost:
        rate, cpu = cost["rate"], cost["cpu_us_per_event"]
        in_server = cost["server_cpu_us_per_event"]["postgresql"]
        rows.append(
            (
                f"6. Spool on PostgreSQL vs SQLite, Sensu-style ingest, {_n(cost['events'])} "
                "events (delivered)",
                _n(rate["postgresql"], "ev/s"),
                _n(rate["sqlite"], "ev/s") + " on SQLite",
                f"time per event PostgreSQL/SQLite {_ratio(cost['time_ratio'])}; CPU per "
                f"event {_n(cpu['postgresql'], 'µs')} (of which the server "
                f"{_n(in_server, 'µs')}) vs {_n(cpu['sqlite'], 'µs')} "
                f"(ratio {_ratio(cost['cpu_ratio'])})",
            )
        )
    pair = _get(results, "pg_instances")
    if pair:
        label = f"6. Two instances on one PostgreSQL schema, {_n(pair['events'])} events"
        if pair.get("available"):
            one, two = pair["instances_1"], pair["instances_2"]
            rows.append(
                (
                    label,
                    _n(two["rate"], "ev/s"),
                    _n(one["rate"], "ev/s") + " one instance",
                    f"ratio {_ratio(pair['ratio'])}; delivered {_n(two['events_delivered'])} "
                    f"and {_n(one['events_delivered'])}",
                )
            )
        else:
            rows.append((label, "not available", "", str(pair.get("reason"))))
    storm = _get(results, "pg_storm")
    if storm:
        label = "6. Storm (scenario 4) on PostgreSQL, several instances"
        one = _pg_storm_value(storm["one"]) + " one instance"
        if storm.get("available"):
            several = storm["several"]
            rows.append(
                (
                    f"6. Storm (scenario 4) on PostgreSQL, {storm['instances']} instances",
                    _pg_storm_value(several),
                    one,
                    f"no more requests than one instance: {_storm_verdict(storm)}; events "
                    f"represented {_n(several['events_represented'])}/"
                    f"{_n(several['events'])} vs {_n(storm['one']['events_represented'])}",
                )
            )
        else:
            rows.append((label, "not available", one, str(storm.get("reason"))))
    return rows


#: One stage of ingest: its name, its ratio to the bare server, the daemon's run.
Stage = tuple[str, float | None, dict[str, Any]]


def _stages(label: str, scenario: dict[str, Any], goal: float, staged: list[Stage]) -> str:
    """From the cheapest stage to the whole path, each one's ratio to the bare server and the
    daemon's CPU per event; empty when no stage was measured (results from before them)."""
    if not staged:
        return ""
    parts = [f"{name} {_ratio(ratio)}{_us(run)}" for name, ratio, run in staged]
    parts.append(f"full {_ratio(scenario['ratio'])}{_us(scenario['daemon'])}")
    return f"- {label} (target >= {goal:.2f}): " + " · ".join(parts)


def _us(run: dict[str, Any]) -> str:
    value = run.get("cpu_us_per_event")
    return "" if value is None else f" ({_n(value, 'µs')} CPU/event)"


def _breakdown(results: dict[str, Any]) -> list[str]:
    """One line per ingest scenario: what each stage of ingest reaches of the bare server."""
    lines = []
    stream = _get(results, "stream")
    if stream:
        staged: list[Stage] = [
            (name, stream[key]["ratio"], stream[key]["daemon"])
            for key, name in (("filtered", "filtered"), ("undelivered", "spooled, not delivered"))
            if stream.get(key)
        ]
        lines.append(_stages("NDJSON stream", stream, STREAM_GOAL, staged))
    ingest = _get(results, "ingest")
    if ingest:
        staged = []
        filtered = _get(results, "ingest_filtered")
        rate = ingest["ceiling"]["rate"]
        if filtered and rate:
            staged.append(("filtered", (filtered["rate"] or 0) / rate, filtered))
        undelivered = _get(results, "ingest_undelivered")
        if undelivered:
            staged.append(("spooled, not delivered", undelivered["ratio"], undelivered["daemon"]))
        lines.append(_stages("Sensu-style ingest", ingest, INGEST_GOAL, staged))
    lines = [line for line in lines if line]
    if not lines:
        return []
    return [
        "",
        "## Ingest by stage",
        "",
        "Each stage's rate over the bare trio server's: *filtered*, every event an OK the "
        "filters skip (read, framed, parsed, filtered); *spooled, not delivered*, a daemon "
        "whose HipChat is unreachable (also committed to the spool); *full*, the target's "
        "figure (also delivered). Each stage is measured against a bare-server phase of its "
        "own run just before it, except Sensu-style *filtered*, against scenario 1's.",
        "",
        *lines,
    ]


def _measurements(results: dict[str, Any]) -> list[Measurement]:
    return [
        *_ingest_rows(results),
        *_stream_rows(results),
        *_delivery_rows(results),
        *_storm_rows(results),
        *_memory_rows(results),
        *_pg_rows(results),
    ]


def _esc(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(results: dict[str, Any]) -> str:
    """The report: targets, every measurement, the generator's CPU, errors."""
    meta = results["meta"]
    lines = [
        f"# hipchatd benchmark ({'quick' if meta['quick'] else 'full'} run)",
        "",
        f"{meta['started']} · {meta['cpus']} CPUs · Python {meta['python']} · "
        f"hipchatd {meta['hipchatd']} · took {meta['duration_s']:.0f} s",
        "",
        "Ratios compare with ceilings and peers measured in this same run, with the same "
        "load generator; they are reported, never asserted.",
        "",
        "## Targets",
        "",
        "| target | measured | reference (same run) | ratio | goal | result |",
        "|---|---:|---:|---:|---|---|",
    ]
    for t in results.get("targets", []):
        note = f" ({t['note']})" if t.get("note") else ""
        lines.append(
            f"| {_esc(t['target'])} | {t['measured']} | {_esc(t['reference'])} | "
            f"{_ratio(t['ratio'])} | {t['goal']} | {t['result']}{_esc(note)} |"
        )
    lines += _breakdown(results)
    lines += [
        "",
        "## Measurements",
        "",
        "| scenario | measured | reference | notes |",
        "|---|---:|---:|---|",
    ]
    for label, value, ref, note in _measurements(results):
        lines.append(f"| {_esc(label)} | {_esc(value)} | {_esc(ref)} | {_esc(note)} |")
    lines += [
        "",
        "## Load generator CPU",
        "",
        "The generator must not be the bottleneck: its CPU per phase, in % of one core, "
        "next to the CPU of the process it loads.",
        "",
        "| phase | events | wall | generator CPU | µs/event | loaded process | its CPU |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for g in results.get("generator", []):
        lines.append(
            f"| {g['phase']} | {_n(g['events'])} | {g['wall_s']:.2f} s | "
            f"{_pct(g['generator_util'])} | {_n(g['generator_us_per_event'], '', 0)} | "
            f"{g['target']} | {_pct(g['target_util'])} |"
        )
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    if results.get("errors"):
        lines += ["", "## Errors", ""]
        for name, error in results["errors"].items():
            first = str(error).strip().splitlines()[0] if str(error).strip() else "?"
            lines.append(f"- {name}: {_esc(first)}")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], series: dict[str, Any], path: Path) -> str | None:
    """Latency distribution and throughput over time as a PNG; None, or why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no plot"
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    lat = series.get("latency_ms") or []
    ax = axes[0]
    if lat:
        lo, hi = max(min(lat), 0.05), max(max(lat), 0.1)
        edges = [lo * (hi / lo) ** (i / 60) for i in range(61)]
        ax.hist(lat, bins=edges, color="tab:blue", alpha=0.8)
        ax.set_xscale("log")
        latency = _get(results, "latency") or {}
        for q, style in (("p50_ms", "-"), ("p95_ms", "--"), ("p99_ms", ":")):
            if latency.get(q) is not None:
                ax.axvline(
                    latency[q], color="k", linestyle=style, label=f"{q[:3]} {latency[q]:.1f} ms"
                )
        ax.legend()
        ax.set_title(f"Write-to-receipt latency at {_n(latency.get('offered_rate'))} ev/s")
    ax.set_xlabel("ms (log scale)")
    ax.set_ylabel("events")
    for ax, key, title in (
        (axes[1], "ingest", "Sensu-style ingest (acknowledged events)"),
        (axes[2], "delivery", "Delivery (events reaching the emulator)"),
    ):
        data = series.get(key) or {}
        for name, bins in data.items():
            if bins:
                ax.plot([i * 0.1 for i in range(len(bins))], [b * 10 for b in bins], label=name)
        ax.set_title(title)
        ax.set_xlabel("s")
        ax.set_ylabel("events/s (100 ms bins)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def write(results: dict[str, Any], series: dict[str, Any], out_dir: Path, stem: str) -> str:
    """Write ``stem``.md, .json and .png to ``out_dir``; return the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped = plot(results, series, out_dir / f"{stem}.png")
    if skipped:
        results.setdefault("notes", []).append(skipped)
    text = markdown(results)
    (out_dir / f"{stem}.md").write_text(text)
    data = dict(results)
    data["series"] = series
    (out_dir / f"{stem}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    return text


def _storm_verdict(storm: dict[str, Any]) -> str:
    """Whether several instances sent no more requests than one."""
    fewer = storm["several"]["requests"] <= storm["one"]["requests"]
    return "yes" if fewer else "no"
