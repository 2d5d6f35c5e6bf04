"""The ``/_emulator/*`` control endpoints: what arrived, injected faults, reset.

They need no token, are not rate limited and not recorded, and stay up
while the API is down (``down_for``), so an outage can be ended early.
"""

from __future__ import annotations

import dataclasses

from hipchatd.emulator.faults import parse_faults
from hipchatd.emulator.site import Exchange
from hipchatd.emulator.validation import parse_v2_body
from hipchatd.emulator.wire import compact_json, json_response
from hipchatd.http11 import Response


def messages(ex: Exchange) -> Response:
    """``GET /_emulator/messages``: every accepted message, oldest first."""
    accepted = [dataclasses.asdict(m) for m in ex.site.rooms.messages]
    return json_response(200, compact_json(accepted))


def requests(ex: Exchange) -> Response:
    """``GET /_emulator/requests``: answered API requests counted by status, and in all;
    ``arrived`` counts those received, answered or still waiting out the latency."""
    counts: dict[str, int] = {}
    for record in ex.site.requests:
        counts[str(record.status)] = counts.get(str(record.status), 0) + 1
    counts["total"] = len(ex.site.requests)
    counts["arrived"] = ex.site.arrived
    return json_response(200, compact_json(counts))


def reset(ex: Exchange) -> Response:
    """``POST /_emulator/reset``: clear messages, requests, counts and faults."""
    ex.site.reset()
    return Response(204)


def faults(ex: Exchange) -> Response:
    """``POST /_emulator/faults``: change the faults; answers the fault state.

    The whole body is checked before anything changes, so a bad request
    changes nothing.
    """
    site = ex.site
    change = parse_faults(parse_v2_body("application/json", ex.request.body, parse_form=False))
    if change.latency is not None:
        site.latency = change.latency
    if change.fail is not None:
        site.faults.fail_next(*change.fail)
    site.limits.set_limits(rate_limit=change.rate_limit, flood_limit=change.flood_limit)
    if change.down_for:
        # Down before answering: this control request is served all the same.
        site.faults.go_down_for(change.down_for)
    if change.up:
        site.faults.set_down(False)
    fail_count, fail_status = site.faults.pending_failure
    state = {
        "latency": site.latency,
        "fail_next": {"count": fail_count, "status": fail_status},
        "rate_limit": site.limits.rate_limit,
        "flood_limit": site.limits.flood_limit,
        "down_for": change.down_for or 0,
        "down": site.faults.down,
    }
    return json_response(200, compact_json(state))
