"""What operators and systemd see: /metrics and /healthz, logging, sd_notify, operator commands.

Stands above ``ingest`` and ``delivery``; only ``app.py`` and ``cli.py`` stand above it.
"""
