"""Message templates: Jinja2 in its sandbox, compiled once when the configuration loads.

Templates are code, and hipchatd runs only its own: the ``hipchat`` scope's
``template`` (or ``template_file``), its named ``templates`` and its
``digest_template``. Event data only selects a named template by name; it
never supplies template text and never names a file.

Each template is compiled once per message format: html with autoescaping on
(every value is escaped unless the template says ``|safe``), text with it
off. Both use :class:`jinja2.sandbox.ImmutableSandboxedEnvironment`: no
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

import functools
import re
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

import jinja2
from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from hipchatd.sensu.events import Event, MessageFormat, parse_event, severity

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
_MAX_REPORTED = 3

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


@dataclass(frozen=True, slots=True)
class Template:
    """One configured template, compiled for both message formats."""

    #: where it was configured, e.g. ``hipchat.templates.disk``: named in every log line.
    key: str
    source: Source
    html: jinja2.Template = field(compare=False, repr=False)
    text: jinja2.Template = field(compare=False, repr=False)

    def render(self, message_format: MessageFormat, context: Mapping[str, Any]) -> tuple[str, bool]:
        """The output for ``context``, and whether it was cut at MAX_TEMPLATE_OUTPUT_CHARS.

        Raises whatever the template raises (SecurityError, UndefinedError,
        TypeError, RecursionError, ...): the caller falls back.
        """
        compiled = self.html if message_format == "html" else self.text
        parts: list[str] = []
        size = 0
        chunks = cast(Generator[str, None, None], compiled.generate(context))
        try:
            for chunk in chunks:
                parts.append(chunk)
                size += len(chunk)
                if size > MAX_TEMPLATE_OUTPUT_CHARS:
                    return "".join(parts), True
        finally:
            chunks.close()
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


# -- the sandbox -------------------------------------------------------------------------

_SEQUENCES = (str, list, tuple)
#: A number in a format string (a width or precision): ``%99999999d``, ``{:>99999999}``.
_FORMAT_NUMBER = re.compile(r"\d+")


class _OverLimit(SecurityError):
    """An operation would build a value past the template bounds."""


def _check_int(value: object) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        _check_size(value, f"an integer argument of {value}")


def _check_format(value: object) -> None:
    if isinstance(value, str):
        for number in _FORMAT_NUMBER.findall(value[:MAX_TEMPLATE_OUTPUT_CHARS]):
            if len(number) > len(str(MAX_TEMPLATE_VALUE_CHARS)):
                raise _OverLimit(f"a format width of {len(number)} digits")
            _check_int(int(number))


def _check_binop(op: str, left: Any, right: Any) -> None:
    if op == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, _SEQUENCES) and isinstance(count, int):
                _check_size(len(seq) * count, f"repeating {len(seq)} items {count} times")
    elif op == "+":
        if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            _check_size(len(left) + len(right), f"adding {len(left)} and {len(right)} items")
    elif op == "**":
        if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            _check_size(abs(left).bit_length() * right, "a power", MAX_POWER_BITS)
    elif op == "%":
        _check_format(left)


def _check_size(size: int, what: str, bound: int = MAX_TEMPLATE_VALUE_CHARS) -> None:
    if size > bound:
        raise _OverLimit(f"{what}: past the bound of {bound}")


class _Generator(CodeGenerator):
    """Jinja's code generator, with every ``~`` result checked against the value bound."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.joined(")
        super().visit_Concat(node, frame)
        self.write(")")


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with the size bounds of the module docstring."""

    code_generator_class = _Generator
    intercepted_binops = frozenset({"*", "+", "**", "%"})

    def joined(self, value: str) -> str:
        """A ``~`` result, refused past the value bound (a macro doubling a string each call)."""
        _check_size(len(value), "a joined string")
        return value

    def call_binop(self, context: jinja2.runtime.Context, op: str, left: Any, right: Any) -> Any:
        _check_binop(op, left, right)
        return super().call_binop(context, op, left, right)

    def call(
        __self,
        __context: jinja2.runtime.Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        for value in (*args, *kwargs.values()):
            _check_int(value)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format(value.__self__)
        return wrapped


def _bounded(filter_: Callable[..., Any], *, format_string: bool = False) -> Callable[..., Any]:
    """``filter_`` refusing integer arguments past the bound (and, for format, wide fields)."""

    @functools.wraps(filter_)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        # args[0] is the filtered value (or the environment, for truncate).
        for value in (*args[1:], *kwargs.values()):
            _check_int(value)
        if format_string and args:
            _check_format(args[0])
        return filter_(*args, **kwargs)

    return bounded


def _environment(autoescape: bool) -> _Sandbox:
    env = _Sandbox(
        autoescape=autoescape,
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=lambda value: "" if value is None else value,
        cache_size=0,
        auto_reload=False,
    )
    # A text generator: nothing a message needs, and it writes paragraphs by the thousand.
    env.globals.pop("lipsum", None)
    for name in ("center", "indent", "truncate", "wordwrap"):
        env.filters[name] = _bounded(env.filters[name])
    env.filters["format"] = _bounded(env.filters["format"], format_string=True)
    return env


#: The message formats, each with its environment.
_FORMATS: Final[tuple[MessageFormat, ...]] = ("html", "text")
_ENVIRONMENTS: Final = {"html": _environment(True), "text": _environment(False)}
#: Names a template may use besides its context: Jinja's own.
_BUILTIN_NAMES: Final = frozenset(_ENVIRONMENTS["html"].globals) | {"loop", "self", "caller"}


# -- compiling and checking --------------------------------------------------------------


def compile_template(key: str, source: Source, *, digest: bool = False) -> Template:
    """Compile ``source`` for both formats and check it (see the module docstring).

    ``key`` names it in log lines. Raises TemplateProblem whose message
    names the file (for a template from a file) and the template's line.
    """
    names = frozenset(DIGEST_NAMES if digest else EVENT_NAMES) | _BUILTIN_NAMES
    compiled: dict[str, jinja2.Template] = {}
    for fmt in _FORMATS:
        text = source.html if fmt == "html" else source.text
        file = source.html_file if fmt == "html" else source.text_file
        env = _ENVIRONMENTS[fmt]
        try:
            tree = env.parse(text)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateProblem(f"{_at(file, exc.lineno)}: {exc.message}") from None
        refused = [f"{_at(file, line)}: {why}" for line, why in _refusals(tree, names)]
        if refused:
            raise TemplateProblem("; ".join(refused[:_MAX_REPORTED]))
        compiled[fmt] = env.from_string(tree)
    template = Template(key, source, compiled["html"], compiled["text"])
    for fmt in _FORMATS:
        _try_samples(template, fmt, source.html_file if fmt == "html" else source.text_file, digest)
    return template


def _at(file: str | None, line: int | None) -> str:
    where = f"line {line}" if line is not None else "the template"
    return f"{file}:{line}" if file is not None and line is not None else where


def _refusals(tree: nodes.Template, names: frozenset[str]) -> Iterator[tuple[int, str]]:
    """(line, why) for each construct refused before the template ever runs."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        name = _private_name(node)
        if name is not None:
            yield node.lineno, f'"{name}" starts with "_"; templates may not reach Python internals'
    kinds = (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)
    for statement in tree.find_all(kinds):
        yield statement.lineno, "a template cannot include, import or extend another"
    unknown = sorted(meta.find_undeclared_variables(tree) - names)
    if unknown:
        lines = {n.name: n.lineno for n in tree.find_all(nodes.Name) if n.name in unknown}
        known = ", ".join(sorted(names - _BUILTIN_NAMES))
        for name in unknown:
            yield lines.get(name, 1), f'unknown variable "{name}"; the context has {known}'


def _private_name(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr):
        value: object = node.attr
    elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        value = node.arg.value
    elif (
        isinstance(node, nodes.Filter)
        and node.name == "attr"
        and node.args
        and isinstance(node.args[0], nodes.Const)
    ):
        value = node.args[0].value
    else:
        return None
    return value if isinstance(value, str) and value.startswith("_") else None


def _try_samples(template: Template, fmt: MessageFormat, file: str | None, digest: bool) -> None:
    contexts = [_DIGEST_SAMPLE] if digest else _EVENT_SAMPLES
    failures: list[BaseException] = []
    for context in contexts:
        try:
            template.render(fmt, context)
        except SecurityError as exc:
            line = _at(file, template_line(exc))
            raise TemplateProblem(f"{line}: refused by the sandbox: {exc}") from None
        except Exception as exc:
            failures.append(exc)
    if failures and len(failures) == len(contexts):
        first = failures[0]
        raise TemplateProblem(
            f"{_at(file, template_line(first))}: fails for every sample event"
            f" ({type(first).__name__}: {first})"
        )


def template_line(exc: BaseException) -> int | None:
    """The template line an exception raised from rendering points at, if any."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


# -- sample events, for checking templates at load ---------------------------------------

_CLASSIC: Final[dict[str, Any]] = {
    "id": "2c5d0b3e-6a61-4c8b-9b4e-5f1f6b7a8c9d",
    "action": "create",
    "occurrences": 3,
    "timestamp": 1700000000,
    "client": {
        "name": "web-01",
        "address": "10.0.0.11",
        "subscriptions": ["web", "linux"],
        "timestamp": 1699999990,
    },
    "check": {
        "name": "check-disk",
        "command": "check-disk-usage.rb -w 80 -c 90",
        "subscribers": ["linux"],
        "interval": 60,
        "issued": 1699999999,
        "executed": 1699999999,
        "duration": 0.12,
        "output": "DISK CRITICAL - / at 97% <b>&amp;</b>\nsecond line\n",
        "status": 2,
        "history": ["0", "2", "2"],
        "playbook": "https://wiki.example.com/disk",
    },
}
_GO: Final[dict[str, Any]] = {
    "id": "5d0b3e2c-616a-8b4c-4e9b-7a8c9d5f1f6b",
    "timestamp": 1700000000,
    "metadata": {"namespace": "prod"},
    "entity": {
        "entity_class": "agent",
        "metadata": {"name": "db-02", "namespace": "prod", "labels": {"team": "db"}},
        "subscriptions": ["linux", "entity:db-02"],
        "system": {"hostname": "db-02", "os": "linux", "platform": "ubuntu"},
    },
    "check": {
        "metadata": {
            "name": "check-load",
            "namespace": "prod",
            "labels": {"tier": "1"},
            "annotations": {"runbook": "https://wiki.example.com/load"},
        },
        "command": "check-load -w 4 -c 8",
        "interval": 30,
        "executed": 1699999999,
        "status": 1,
        "output": "LOAD WARNING - load average: 5.1, 4.9, 4.2",
        "occurrences": 4,
        "occurrences_watermark": 4,
        "state": "failing",
        "history": [{"status": 0, "executed": 1699999969}, {"status": 1, "executed": 1699999999}],
    },
}


def _variant(document: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    copy = {**document, "check": {**document["check"], **changes.pop("check", {})}}
    copy.update(changes)
    return copy


def _samples() -> list[dict[str, Any]]:
    documents = [
        (_CLASSIC, "CRITICAL", None),
        (_variant(_CLASSIC, action="resolve", check={"status": 0}), "RESOLVED", None),
        (_GO, "WARNING", "https://sensu.example.com/c/~/n/prod/events/db-02/check-load"),
        (
            _variant(_GO, check={"status": 3, "state": "flapping"}),
            "FLAPPING",
            None,
        ),
    ]
    return [
        event_context(parse_event(doc), doc, status_word=word, dashboard_url=url)
        for doc, word, url in documents
    ]


_EVENT_SAMPLES: Final = _samples()
_DIGEST_SAMPLE: Final = digest_context(_EVENT_SAMPLES)
