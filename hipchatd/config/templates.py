"""Message templates: Jinja2 in its sandbox, compiled once when the configuration loads.

Templates are code, and hipchatd runs only its own: the ``hipchat`` scope's
``template`` (or ``template_file``), its named ``templates`` and its
``digest_template``. Event data only selects a named template by name; it
never supplies template text and never names a file.

Each template is compiled once per message format: html with autoescaping on
(every value is escaped unless the template says ``|safe``), text with it
off. Both use :class:`jinja2.sandbox.ImmutableSandboxedEnvironment`
(:mod:`hipchatd.config.sandbox`): no
attribute starting with ``_``, no unsafe callable, no changing the event's
lists and dicts. Blocks take their own line (``trim_blocks``,
``lstrip_blocks``), a final newline is dropped, and None renders as nothing.
A key an event lacks renders as nothing too (``ChainableUndefined``), since
Classic and Go events differ in shape.

At load a template is refused, with a problem naming the key, the file and
the template's line, when:

* it does not parse;
* it reaches for an attribute or key starting with ``_`` (``''.__class__``,
  ``cycler.__init__.__globals__``, ``self._TemplateReference__context``),
  or includes, imports or extends another template: the sandbox itself
  only turns such an access into an empty value when the line runs, so the
  whole template is walked, every branch;
* it names a variable its context lacks (a typo such as ``sevrity``);
* rendered against sample Classic and Go events, the sandbox refuses it, or
  it fails for every one of them. One that fails for only some samples is
  kept: for a real event it falls back to the built-in layout.

Cost: a template is the operator's code, so these bounds stop accidents, not
intent. Output is consumed only up to MAX_TEMPLATE_OUTPUT_CHARS (a loop that
prints forever stops there); ``range`` is capped by the sandbox at 100,000
items; a value built by repeating (``*``) or adding (``+``) sequences, by
``~`` (a macro that doubles a string per call) or sized by an integer
argument (a width) or a format-string width is refused past
MAX_TEMPLATE_VALUE_CHARS, and ``**`` past MAX_POWER_BITS, before it is
built (``~`` just after). ``lipsum`` is not offered. A loop that prints
nothing still costs its time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from hipchatd.sensu.events import Event, MessageFormat, severity

__all__ = [
    "DIGEST_NAMES",
    "EVENT_NAMES",
    "MAX_TEMPLATE_OUTPUT_CHARS",
    "Source",
    "Template",
    "TemplateProblem",
    "TemplateSet",
    "compile_template",
    "digest_context",
    "event_context",
    "template_line",
]

#: Characters of a template's output consumed at most: ten times HipChat's
#: 10,000-character message limit, so a long output is cut visibly, not lost,
#: while a runaway loop cannot build gigabytes.
MAX_TEMPLATE_OUTPUT_CHARS = 100_000
#: Characters (or items) of a value a template builds (``*``, ``+``, ``~``, a width):
#: room for the 1 MiB output of a default-sized frame, many times over.
MAX_TEMPLATE_VALUE_CHARS = 16 * 1024 * 1024
#: Bits of an integer ``**`` may build: far past any number a message shows,
#: far below the seconds ``10 ** 10 ** 10`` would take.
MAX_POWER_BITS = 4_096
#: Errors per template reported at load: the first few say what is wrong.
MAX_REPORTED = 3

#: The variables of an event's template (see :func:`event_context`).
EVENT_NAMES: Final = (
    "event",
    "status",
    "severity",
    "status_word",
    "action",
    "is_resolution",
    "source",
    "check",
    "output",
    "notification",
    "occurrences",
    "namespace",
    "playbook",
    "dashboard_url",
    "timestamp",
    "flavor",
)
#: The variables of ``digest_template`` (see :func:`digest_context`).
DIGEST_NAMES: Final = ("events", "counts", "total")


class TemplateProblem(ValueError):
    """A template cannot be used; the message names the file (if any) and the line."""


@dataclass(frozen=True, slots=True)
class Source:
    """A template's text as configured, per format, and the file each came from (None: inline)."""

    html: str
    text: str
    html_file: str | None = None
    text_file: str | None = None


class Compiled(Protocol):
    """A compiled template, as :mod:`hipchatd.config.sandbox` makes it (a ``jinja2.Template``)."""

    def generate(self, *args: Any, **kwargs: Any) -> Iterator[str]: ...


@dataclass(frozen=True, slots=True)
class Template:
    """One configured template, compiled for both message formats."""

    #: where it was configured, e.g. ``hipchat.templates.disk``: named in every log line.
    key: str
    source: Source
    html: Compiled = field(compare=False, repr=False)
    text: Compiled = field(compare=False, repr=False)

    def render(self, message_format: MessageFormat, context: Mapping[str, Any]) -> tuple[str, bool]:
        """The output for ``context``, and whether it was cut at MAX_TEMPLATE_OUTPUT_CHARS.

        Raises whatever the template raises (SecurityError, UndefinedError,
        TypeError, RecursionError, ...): the caller falls back.
        """
        compiled = self.html if message_format == "html" else self.text
        parts: list[str] = []
        size = 0
        chunks = compiled.generate(context)
        try:
            for chunk in chunks:
                parts.append(chunk)
                size += len(chunk)
                if size > MAX_TEMPLATE_OUTPUT_CHARS:
                    return "".join(parts), True
        finally:
            # Jinja's generate() is a generator: closing it ends the template's frame now.
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return "".join(parts), False


@dataclass(frozen=True, slots=True)
class TemplateSet:
    """The templates a renderer may use: the default, the named ones, the digest's."""

    default: Template | None = None
    named: Mapping[str, Template] = field(default_factory=dict)
    digest: Template | None = None

    def select(self, name: str | None) -> Template | None:
        """The template named ``name``, or the default for None. KeyError for an unknown name."""
        return self.default if name is None else self.named[name]

    def any_for(self, name: str | None) -> bool:
        """Whether a target selecting ``name`` renders anything with a template."""
        selected = self.default if name is None else self.named.get(name)
        return self.digest is not None or selected is not None


# -- the context -------------------------------------------------------------------------


def event_context(
    event: Event,
    document: Mapping[str, Any] | None,
    *,
    status_word: str,
    dashboard_url: str | None,
) -> dict[str, Any]:
    """The variables of an event's template (the README's table lists them).

    ``document`` is the event as Sensu sent it (``event``); an empty mapping
    stands in when it is not at hand. A resolve's severity is "ok".
    """
    return {
        "event": document if document is not None else {},
        "status": event.status,
        "severity": "ok" if event.action == "resolve" else severity(event.status),
        "status_word": status_word,
        "action": event.action,
        "is_resolution": event.action == "resolve",
        "source": event.source,
        "check": event.check,
        "output": event.output,
        "notification": event.notification,
        "occurrences": event.occurrences,
        "namespace": event.namespace,
        "playbook": event.playbook,
        "dashboard_url": dashboard_url,
        "timestamp": event.timestamp,
        "flavor": event.flavor,
    }


def digest_context(events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The variables of ``digest_template``: each event's context, counts by status word."""
    counts: dict[str, int] = {}
    for context in events:
        word = str(context["status_word"]).lower()
        counts[word] = counts.get(word, 0) + 1
    return {"events": list(events), "counts": counts, "total": len(events)}


# -- compiling and checking --------------------------------------------------------------


def compile_template(key: str, source: Source, *, digest: bool = False) -> Template:
    """Compile ``source`` for both formats and check it (see the module docstring).

    ``key`` names it in log lines. Raises TemplateProblem whose message
    names the file (for a template from a file) and the template's line.
    Jinja2 is imported here, the first time a template is configured: a
    daemon without templates never loads it.
    """
    from hipchatd.config import sandbox

    return sandbox.compile_template(key, source, digest=digest)


def template_line(exc: BaseException) -> int | None:
    """The template line an exception raised from rendering points at, if any."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
