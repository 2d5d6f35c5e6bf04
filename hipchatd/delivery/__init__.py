"""From an accepted event to a HipChat message: routing, rendering, lanes, the client, the spool.

Stands above ``config``; ``ingest`` and ``ops`` use it. Only
``delivery/hipchat.py`` knows httpx, and only ``delivery/spool/sqlite/``
knows sqlite3.
"""
