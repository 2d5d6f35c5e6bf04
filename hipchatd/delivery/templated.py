"""An event's message text from a configured template, or None for the built-in layout.

:func:`hipchatd.delivery.render.render` asks here first, and
:func:`hipchatd.delivery.coalesce.render_batch` for a storm's several-event
message when ``digest_template`` is set. The template is the one the target
names (``Target.template``), else the scope's ``template``; none of them
configured, the built-in layout is used and nothing is logged.

The alert is never lost to a template bug: any exception while rendering
(SecurityError, UndefinedError, TypeError, RecursionError, ...), a name
``templates`` lacks, or an output of only whitespace (HipChat refuses an
empty message) gives None after one WARNING ``template.failed`` naming the
template, the error and the template line. Pure but for that log line.

The template renders in the format the message is sent in: ``text`` for a
target that carries a mention (:func:`hipchatd.delivery.mentions.sent_format`),
whose mentions and neutralising are applied to the output afterwards.

HipChat's 10,000-character limit is applied to the template's output: past
it the text is cut, with a visible marker, and never inside an HTML tag or
entity in html mode.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from hipchatd.config import HipChatSettings
from hipchatd.config.templates import (
    Template,
    TemplateSet,
    digest_context,
    event_context,
    template_line,
)
from hipchatd.delivery.mentions import sent_format
from hipchatd.delivery.routing import Target
from hipchatd.sensu.events import Event
from hipchatd.sensu.links import dashboard_link

if TYPE_CHECKING:
    from hipchatd.delivery.spool import Spool

__all__ = ["Document", "Shaping", "digest_text", "fit", "templated_text"]

log = structlog.get_logger()

_ELLIPSIS = "…"

#: An event's document as Sensu sent it, decoded; None when not at hand.
Document = Mapping[str, Any] | None


@dataclass(slots=True)
class Shaping:
    """What one lane attempt renders with: the templates, and its events' documents.

    ``documents`` is None when no template applies to the target: then no
    document is read back, so a daemon without templates keeps only parsed
    events, as before.
    """

    templates: TemplateSet
    documents: list[Document] | None
    #: ``hipchat.card_icons``: status word (lower case) -> icon URL.
    card_icons: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: HipChatSettings, target: Target) -> Shaping:
        """The templates of ``settings``; documents are collected when one applies to ``target``."""
        templates = TemplateSet(settings.template, settings.templates, settings.digest_template)
        documents: list[Document] | None = [] if templates.any_for(target.template) else None
        return cls(templates, documents, settings.card_icons)

    async def read(self, spool: Spool, ids: Sequence[int]) -> None:
        """Append the documents of entries ``ids`` (decoded), when collecting. SpoolReadError."""
        if self.documents is None or not ids:
            return
        texts = await spool.load_documents(ids)
        for id_ in ids:
            try:
                self.documents.append(json.loads(texts[id_]))
            except (KeyError, ValueError):
                # The lane dead-letters an entry that no longer parses; the rest keep their index.
                self.documents.append(None)


def templated_text(
    event: Event,
    target: Target,
    templates: TemplateSet,
    document: Document,
    *,
    word: str,
    limit: int,
) -> str | None:
    """``event`` rendered by the target's template, at most ``limit`` characters.

    None: no template applies, or it failed (logged); use the built-in layout.
    ``word`` is the message's status word (RESOLVED, CRITICAL, ...).
    """
    name = target.template
    try:
        template = templates.select(name)
    except KeyError:
        _failed(f"hipchat.templates.{name}", target, "no such template", None)
        return None
    if template is None:
        return None
    dashboard = _dashboard(target, event)
    context = event_context(event, document, status_word=word, dashboard_url=dashboard)
    return _render(template, target, context, limit)


def digest_text(
    events: Sequence[Event],
    documents: Sequence[Document] | None,
    words: Sequence[str],
    target: Target,
    templates: TemplateSet,
    *,
    limit: int,
) -> str | None:
    """Several events in one message by ``digest_template``; None: the built-in summary."""
    template = templates.digest
    if template is None:
        return None
    contexts = [
        event_context(
            event,
            documents[index] if documents else None,
            status_word=words[index],
            dashboard_url=_dashboard(target, event),
        )
        for index, event in enumerate(events)
    ]
    return _render(template, target, digest_context(contexts), limit)


def _dashboard(target: Target, event: Event) -> str | None:
    pattern = target.dashboard_url
    return dashboard_link(pattern, event) if pattern else None


def _render(
    template: Template, target: Target, context: Mapping[str, Any], limit: int
) -> str | None:
    try:
        text, stopped = template.render(sent_format(target), context)
    except Exception as exc:
        # A template bug must not lose the alert: the caller falls back to the built-in layout.
        _failed(template.key, target, f"{type(exc).__name__}: {exc}", template_line(exc))
        return None
    if not text.strip():
        _failed(template.key, target, "the template rendered nothing", None)
        return None
    return fit(text, limit, as_html=sent_format(target) == "html", stopped=stopped)


def _failed(key: str, target: Target, error: str, line: int | None) -> None:
    log.warning(
        "template.failed",
        template=key,
        room=target.name,
        error=error,
        line=line,
        fallback="built-in layout",
    )


def fit(text: str, limit: int, *, as_html: bool, stopped: bool = False) -> str:
    """``text``, or its start with a visible marker, in at most ``limit`` characters.

    ``stopped``: the template's output was cut while rendering, so the count
    of dropped characters is a lower bound ("N+"). In html mode the cut never
    falls inside a tag or an entity.
    """
    if len(text) <= limit and not stopped:
        return text
    longest = _marker(len(text), stopped)
    keep = max(0, limit - len(longest))
    if as_html:
        opened = text.rfind("<", 0, keep)
        if opened > text.rfind(">", 0, keep):
            keep = opened
        entity = text.rfind("&", 0, keep)
        if entity > text.rfind(";", 0, keep):
            keep = entity
    return text[:keep] + _marker(len(text) - keep, stopped)


def _marker(dropped: int, stopped: bool) -> str:
    more = f"{dropped}+" if stopped else str(dropped)
    return f"{_ELLIPSIS} [message truncated: {more} more characters]"
