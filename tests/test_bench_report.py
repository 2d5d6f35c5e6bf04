"""The benchmark's report shows the CPU per event of the daemon and of the bare server."""

from __future__ import annotations

from typing import Any

from bench import report


def _run(rate: float, cpu: float | None, **more: Any) -> dict[str, Any]:
    run: dict[str, Any] = {"rate": rate, "sent": 1000, **more}
    if cpu is not None:
        run["cpu_us_per_event"] = cpu
    return run


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
