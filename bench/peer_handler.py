"""The peer: a Sensu pipe handler that posts one event to HipChat, then exits.

This is the model most Sensu users run today: Sensu starts one handler
process per event, writes the event JSON to its stdin and waits for it to
exit. It is kept as light as such a handler can be (stdlib ``urllib``, no
plugin framework), so the comparison favours the peer.

``python bench/peer_handler.py SERVER_URL TOKEN ROOM < event.json``; exit 0
when HipChat (the emulator) answered 2xx.
"""

from __future__ import annotations

import html
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

_WORDS = {0: "OK", 1: "WARNING", 2: "CRITICAL"}
_COLORS = {0: "green", 1: "yellow", 2: "red"}


def main() -> int:
    """Read one event from stdin, post it once, return the exit code."""
    server, token, room = sys.argv[1:4]
    event = json.load(sys.stdin)
    check = event.get("check") or {}
    if "entity" in event:
        source = event["entity"]["metadata"]["name"]
        name = check.get("metadata", {}).get("name", "")
    else:
        source = check.get("source") or event["client"]["name"]
        name = check.get("name", "")
    status = int(check.get("status", 3))
    word = _WORDS.get(status, "UNKNOWN")
    output = html.escape(str(check.get("output", "")).strip()).replace("\n", "<br>")
    body = {
        "message": f"<b>{word}</b> {html.escape(source)}/{html.escape(name)}: {output}",
        "color": _COLORS.get(status, "gray"),
        "notify": False,
        "message_format": "html",
        "from": "sensu",
    }
    request = urllib.request.Request(
        f"{server}/v2/room/{urllib.parse.quote(room, safe='')}/notification",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return 0 if 200 <= response.status < 300 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"peer_handler: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
