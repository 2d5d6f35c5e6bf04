"""The benchmark's report shows the CPU per event of the daemon and of the bare server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import report

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"


def _run(rate: float, cpu: float | None, **more: Any) -> dict[str, Any]:
    run: dict[str, Any] = {"rate": rate, "sent": 1000, **more}
    if cpu is not None:
        run["cpu_us_per_event"] = cpu
    return run


def _stage(rate: float, cpu: float, ceiling: float, ceiling_cpu: float) -> dict[str, Any]:
    """A stage of ingest beside the bare-server phase run just before it."""
    return {
        "daemon": _run(rate, cpu, cpu_us_per_event_done=cpu + 1),
        "ceiling": _run(ceiling, ceiling_cpu),
        "ratio": rate / ceiling,
        "cpu_ratio": round(cpu / ceiling_cpu, 2),
    }


def _with_stages(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` as a run that also measured ingest by stage."""
    scenarios = results["scenarios"]
    scenarios["stream"]["filtered"] = _stage(36000.0, 31.0, 59000.0, 15.0)
    scenarios["stream"]["undelivered"] = _stage(21000.0, 50.0, 58000.0, 15.0)
    scenarios["ingest_undelivered"] = {"senders": 50, "events": 1000}
    scenarios["ingest_undelivered"].update(_stage(5700.0, 250.0, 6000.0, 160.0))
    results["targets"] = report.targets(results)
    return results


def _results(cpu: bool) -> dict[str, Any]:
    def c(value: float) -> float | None:
        return value if cpu else None

    daemon = _run(2000.0, c(412.0), confirmed_by="metrics", delivery={"events_delivered": 1000})
    if cpu:
        daemon["cpu_us_per_event_done"] = 430.5
    ingest = {
        "senders": 50,
        "events": 1000,
        "daemon": daemon,
        "ceiling": _run(6000.0, c(150.0)),
        "daemon_runs": [2000.0],
        "ceiling_runs": [6000.0],
        "ratio": 2000 / 6000,
        **({"cpu_ratio": 2.75} if cpu else {}),
    }
    stream = {
        "connections": 4,
        "events": 1000,
        "daemon": _run(14000.0, c(98.5)),
        "ceiling": _run(60000.0, c(16.0)),
        "ratio": 14000 / 60000,
        **({"cpu_ratio": 6.16} if cpu else {}),
    }
    udp_run = {"sent": 1000, "received": 250, "loss": 0.75, "send_rate": 9e4, "counted_by": "x"}
    udp = {
        "ceiling_blast": {**udp_run, **({"cpu_us_per_event": 20.0} if cpu else {})},
        "daemon_blast": {
            **udp_run,
            "offered_rate": None,
            **({"cpu_us_per_event": 95.0} if cpu else {}),
        },
    }
    filtered = _run(4000.0, c(210.0))
    results: dict[str, Any] = {
        "meta": {
            "quick": True,
            "started": "now",
            "cpus": 2,
            "python": "3",
            "hipchatd": "x",
            "duration_s": 1.0,
            "spool_available": True,
        },
        "scenarios": {"ingest": ingest, "stream": stream, "udp": udp, "ingest_filtered": filtered},
    }
    results["targets"] = report.targets(results)
    return results


def _row(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {start}"))


def test_targets_show_cpu_per_event_of_daemon_and_bare_server() -> None:
    text = report.markdown(_results(cpu=True))
    ingest = _row(text, "Sensu-style ingest, spool on")
    assert "| 2,000 ev/s, 412 µs CPU/event | 6,000 ev/s, 150 µs CPU/event |" in ingest
    stream = _row(text, "NDJSON streams vs bare trio")
    assert "| 14,000 ev/s, 98 µs CPU/event | 60,000 ev/s, 16 µs CPU/event | 0.23 | >= 0.50 |" in (
        stream
    )


def test_measurements_show_cpu_per_event_for_ingest_stream_and_udp() -> None:
    text = report.markdown(_results(cpu=True))
    ingest = _row(text, "1. Sensu-style ingest, 50 senders")
    assert "2,000 ev/s, 412 µs CPU/event" in ingest
    assert "CPU per event daemon/bare 2.75; CPU until delivered 430 µs/event" in ingest
    assert "4,000 ev/s, 210 µs CPU/event" in _row(text, "1. Sensu-style ingest, events filtered")
    stream = _row(text, "2. NDJSON")
    assert "14,000 ev/s, 98 µs CPU/event | 60,000 ev/s, 16 µs CPU/event bare trio" in stream
    assert "CPU per event daemon/bare 6.16" in stream
    udp = _row(text, "2. UDP")
    assert "(250 received), 95 µs CPU/event | bare trio loss 75.0%, 20 µs CPU/event" in udp


def test_results_without_cpu_figures_still_render() -> None:
    text = report.markdown(_results(cpu=False))
    assert "CPU/event" not in text
    assert "daemon/bare" not in text
    assert "| 2,000 ev/s | 6,000 ev/s bare trio |" in _row(text, "1. Sensu-style ingest, 50")


def test_ingest_by_stage_shows_each_stage_and_the_full_path_with_its_target() -> None:
    text = report.markdown(_with_stages(_results(cpu=True)))
    stream = next(line for line in text.splitlines() if line.startswith("- NDJSON stream"))
    assert stream == (
        "- NDJSON stream (target >= 0.50): filtered 0.61 (31 µs CPU/event) · spooled, not "
        "delivered 0.36 (50 µs CPU/event) · full 0.23 (98 µs CPU/event)"
    )
    ingest = next(line for line in text.splitlines() if line.startswith("- Sensu-style"))
    assert ingest == (
        "- Sensu-style ingest (target >= 0.70): filtered 0.67 (210 µs CPU/event) · spooled, "
        "not delivered 0.95 (250 µs CPU/event) · full 0.33 (412 µs CPU/event)"
    )


def test_each_stage_is_a_measurement_against_the_bare_server_run_just_before_it() -> None:
    text = report.markdown(_with_stages(_results(cpu=True)))
    filtered = _row(text, "2. NDJSON stream ingest, events filtered")
    assert "| 36,000 ev/s, 31 µs CPU/event | 59,000 ev/s, 15 µs CPU/event bare trio, run " in (
        filtered
    )
    assert "ratio 0.61; 1,000 events; CPU per event daemon/bare 2.07; CPU until processed" in (
        filtered
    )
    spooled = _row(text, "2. NDJSON stream ingest, HipChat unreachable")
    assert "| 21,000 ev/s, 50 µs CPU/event | 58,000 ev/s, 15 µs CPU/event bare trio" in spooled
    sensu = _row(text, "1. Sensu-style ingest, HipChat unreachable (spooled, not delivered)")
    assert "| 5,700 ev/s, 250 µs CPU/event | 6,000 ev/s, 160 µs CPU/event bare trio" in sensu
    assert "ratio 0.95; 1,000 events; CPU per event daemon/bare 1.56" in sensu


def test_stages_leave_the_targets_and_their_judgement_as_they_are() -> None:
    plain = _results(cpu=True)
    staged = _with_stages(_results(cpu=True))
    assert staged["targets"] == plain["targets"]
    stream = _row(report.markdown(staged), "NDJSON streams vs bare trio")
    assert stream.endswith("| 0.23 | >= 0.50 | MISS |")


def test_results_without_stages_render_without_their_lines() -> None:
    results = _results(cpu=True)
    del results["scenarios"]["ingest_filtered"]
    text = report.markdown(results)
    assert "Ingest by stage" not in text
    assert "HipChat unreachable" not in text
    assert "2. NDJSON stream ingest, events filtered" not in text
    # A run from before the stages still shows the one stage it had: Sensu-style filtered.
    text = report.markdown(_results(cpu=True))
    assert "- NDJSON stream" not in text
    line = next(line for line in text.splitlines() if line.startswith("- Sensu-style"))
    assert line == (
        "- Sensu-style ingest (target >= 0.70): filtered 0.67 (210 µs CPU/event) · full 0.33 "
        "(412 µs CPU/event)"
    )


def test_saved_results_from_before_the_stages_still_render() -> None:
    paths = sorted(RESULTS.glob("*.json"))
    assert paths
    for path in paths:
        text = report.markdown(json.loads(path.read_text()))
        assert "## Measurements" in text, path.name
