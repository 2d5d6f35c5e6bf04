"""Intake: a decoded document in; an event accepted by the spool and handed to the lanes.

::

    accept      too deep? -> parse_event -> skip_reason -> route -> Spool.submit
    skipped     counted; logged at INFO once per check per reminder period (SkipLog),
                else at DEBUG
    committed   the spool's group commit stored the event: it is accepted, its entries go
                to the lanes (Dispatcher.enqueue)
    refused     the spool could not store it: never accepted
    recover     entries a previous run left pending go to the lanes at start

``accept`` is the listeners' sink: synchronous, it never blocks, and it
runs in the task of the connection (or datagram) the document came in on,
whose ``peer`` and ``conn_id`` are bound there. Once the document parses,
``accept`` binds the event's ``event_id``, ``source`` and ``check`` until it
returns, so every line about the event names it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from hipchatd.clock import unix_now
from hipchatd.config import Config
from hipchatd.delivery.routing import Router
from hipchatd.delivery.spool import Entry, EventEntries, Spool
from hipchatd.delivery.tickets import Feed, Ticket, tickets_for
from hipchatd.errors import EventError
from hipchatd.ingest.frames import log_context, reject
from hipchatd.ingest.skiplog import SkipLog, check_key
from hipchatd.metrics import Metrics
from hipchatd.reasons import RejectReason, SkipReason
from hipchatd.sensu.events import Event, parse_event
from hipchatd.sensu.filters import reminder_period, skip_reason
from hipchatd.sensu.framing import Document, preview

__all__ = ["MAX_NESTING", "Intake"]

log = structlog.get_logger()

#: Levels of arrays and objects a document may nest: Ruby's JSON.parse default
#: ``max_nesting``, so Sensu Classic itself never parses deeper. A fixed bound
#: keeps every later reader of the document (the spool, re-parsing, tools) well
#: inside the interpreter's recursion limit, whatever its stack depth.
MAX_NESTING = 100

#: Characters of a refused document shown in its log line.
_PREVIEW_CHARS = 120

_EVENT_ID = log_context("event_id")
_SOURCE = log_context("source")
_CHECK = log_context("check")


@dataclass(slots=True, eq=False)
class _Submitted:
    """What ``accept`` gives ``Spool.submit`` as the handle that comes back with the entries."""

    ticket: Ticket
    event: Event


class Intake:
    """Parse, filter, route and spool what the listeners decode; hand committed events on.

    ``config`` reads the running configuration (a reload replaces it).
    """

    def __init__(
        self, config: Callable[[], Config], metrics: Metrics, spool: Spool, dispatcher: Feed
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._spool = spool
        self._dispatcher = dispatcher
        self._router = Router()
        #: which skips are logged at INFO; its ``run`` reports what its line budget held back.
        self.skip_log = SkipLog()

    def accept(self, document: Document, peer: str, transport: str) -> None:
        """Sink for the listeners: parse, filter, route, spool. Never blocks.

        A document nested deeper than MAX_NESTING is refused before it is
        read; an event routed to more than ``max_targets_per_event`` targets
        notifies only the first that many. ``peer`` is the key of the
        rejection log's share (:func:`hipchatd.ingest.frames.reject`).
        """
        try:
            too_deep = _too_deep(document)
            if too_deep is not None:
                raise EventError(f"not a Sensu event: {too_deep}")
            event = parse_event(document.value)
        except EventError as exc:
            reject(
                self._metrics,
                RejectReason.NOT_EVENT,
                peer=peer,
                transport=transport,
                nbytes=document.nbytes,
                reason=str(exc),
                preview=_preview(document),
            )
            return
        # Bound, not passed: every line logged about the event from here on names it.
        id_token = _EVENT_ID.set(event.id)
        source_token = _SOURCE.set(event.source)
        check_token = _CHECK.set(event.check)
        try:
            self._admit(event, document)
        finally:
            _CHECK.reset(check_token)
            _SOURCE.reset(source_token)
            _EVENT_ID.reset(id_token)

    def _admit(self, event: Event, document: Document) -> None:
        config = self._config()
        settings = config.hipchat
        reason = skip_reason(event, settings)
        if reason is not None:
            self._metrics.skipped[reason].inc()
            self._log_skipped(event, reason, reminder_period(event, settings))
            return
        targets = self._router.route(event, settings, config.contacts)
        limit = config.daemon.max_targets_per_event
        if len(targets) > limit:
            self._metrics.rejected[RejectReason.TOO_MANY_TARGETS].inc()
            log.warning(
                "event.targets_refused",
                targets=len(targets),
                refused=len(targets) - limit,
                max_targets_per_event=limit,
            )
            targets = targets[:limit]
        accepted_at = unix_now()
        # json.dumps escapes lone surrogates; _too_deep has bounded its recursion.
        text = document.text or json.dumps(document.value, separators=(",", ":"))
        # Sources and checks repeat across events: one string each for the lanes.
        ticket = Ticket(
            event.id, sys.intern(event.source), sys.intern(event.check), accepted_at, len(targets)
        )
        if self._spool.submit(event, text, targets, accepted_at, _Submitted(ticket, event)):
            return
        if self._spool.closed:
            log.warning("event.refused", reason="shutting down")
            return
        self._metrics.rejected[RejectReason.SPOOL_FULL].inc()
        log.error(
            "event.refused",
            reason="spool full",
            max_spool_events=config.daemon.max_spool_events,
        )

    def _log_skipped(self, event: Event, reason: SkipReason, period: int) -> None:
        """``event.skipped``: at INFO once per check per ``period`` seconds, else at DEBUG.

        The INFO line says how many of the check's skips since its last INFO
        line were logged at DEBUG only (``skipped_since_last``), and the
        seconds until its next one may be written (``period``).
        """
        period = max(period, self.skip_log.min_period)
        shown = self.skip_log.admit(check_key(event.incident_key), period, unix_now())
        fields = {
            "status": event.status,
            "action": event.action,
            "occurrences": event.occurrences,
            "reason": reason,
        }
        if shown is None:
            log.debug("event.skipped", **fields)
        else:
            log.info("event.skipped", **fields, skipped_since_last=shown, period=period)

    def committed(self, events: Sequence[EventEntries]) -> None:
        """The spool committed ``events``: they are accepted; hand their entries to the lanes.

        Each event's entries come with the handle ``accept`` submitted them
        with, all of them at once: the event is accepted here.
        """
        batch: list[tuple[Entry, Ticket, Event | None]] = []
        accepted = 0
        for submitted, entries in events:
            if isinstance(submitted, _Submitted):
                ticket, event = submitted.ticket, submitted.event
                batch.extend((entry, ticket, event) for entry in entries)
                accepted += 1
            else:
                # Re-queued from the dead-letter table by ``hipchatd spool retry``.
                batch.extend((entry, _ticket_for(entry), None) for entry in entries)
        if accepted:
            # One addition per commit: a commit holds dozens of events under load.
            self._metrics.events_accepted.inc(accepted)
        self._dispatcher.enqueue(batch)

    def refused(self, event: EventEntries) -> None:
        """The spool could not store this submitted event (it logged why): never accepted."""
        self._metrics.rejected[RejectReason.SPOOL_FULL].inc()

    def recover(self, entries: Sequence[Entry]) -> None:
        """Queue what a previous run left pending, in acceptance order."""
        batch, events = tickets_for(entries)
        self._dispatcher.enqueue(batch)
        if entries:
            log.info("spool.recovered", entries=len(entries), events=events)


def _ticket_for(entry: Entry) -> Ticket:
    return Ticket("", entry.source, entry.check, entry.accepted_at, 1)


def _too_deep(document: Document) -> str | None:
    """Where ``document`` nests deeper than MAX_NESTING, or None when it does not.

    Depth never exceeds the number of opening brackets, and counting them
    in the text costs next to nothing: only documents with more than
    MAX_NESTING brackets are walked, without recursion.
    """
    value = document.value
    text = document.text
    if text and text.count("[") + text.count("{") <= MAX_NESTING:
        return None
    if not isinstance(value, dict | list):
        return None
    # Only containers go on the stack: an event's many scalars cost nothing here.
    stack: list[tuple[dict[str, object] | list[object], int, str]] = [
        (child, 2, str(key) if isinstance(value, dict) else f"[{key}]")
        for key, child in (value.items() if isinstance(value, dict) else enumerate(value))
        if isinstance(child, dict | list)
    ]
    while stack:
        node, depth, top = stack.pop()
        if depth > MAX_NESTING:
            return f"{preview(top, 40)} is nested deeper than {MAX_NESTING} levels"
        children = node.values() if isinstance(node, dict) else node
        stack.extend(
            (child, depth + 1, top) for child in children if isinstance(child, dict | list)
        )
    return None


def _preview(document: Document) -> str:
    """The document as received, escaped and cut: rendering it again could raise."""
    if document.text:
        return preview(document.text, _PREVIEW_CHARS)
    try:
        text = json.dumps(document.value)
    except (ValueError, RecursionError):
        return f"(a JSON {type(document.value).__name__} that cannot be shown)"
    return preview(text, _PREVIEW_CHARS)
