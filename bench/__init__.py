"""hipchatd's benchmark: ``python -m bench`` (full, a few minutes) or ``python -m bench --quick``.

Every scenario runs the daemon, the HipChat emulator and the load generator
as separate processes on loopback, and measures the daemon against ceilings
and a peer measured in the same run with the same generator:

- the ingest ceiling: a bare trio server that accepts, reads to EOF and parses JSON
  (:mod:`bench.ceilings`);
- the delivery ceiling: a bare httpx keep-alive POST loop to the emulator at the
  daemon's concurrency (:mod:`bench.ceilings`);
- the peer: one handler process per event that posts once, the way Sensu runs
  pipe handlers (:mod:`bench.peer_handler`).

Targets are reported as ratios with PASS/MISS and never asserted: the machine is
shared and noisy, so only ratios within one run mean anything. Results go to
``bench/results/`` as Markdown, JSON and a PNG plot.

Modules: :mod:`bench.runner` (command line, scenario order, outputs),
:mod:`bench.scenarios` (the scenarios), :mod:`bench.procs` (child processes,
CPU and memory readings, the emulator's admin API), :mod:`bench.payloads`
(Sensu event payloads), :mod:`bench.loadgen` (the load generator process),
:mod:`bench.report` (table, JSON, plot).
"""
