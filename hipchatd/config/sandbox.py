"""Jinja2's sandbox, as hipchatd's templates run in it: the only module that imports jinja2.

Imported the first time a template is configured
(:func:`hipchatd.config.templates.compile_template`), so a daemon without
templates never loads Jinja2. What is refused at load and which costs are
bounded: :mod:`hipchatd.config.templates`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import jinja2
from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from hipchatd.config.templates import (
    DIGEST_NAMES,
    EVENT_NAMES,
    MAX_POWER_BITS,
    MAX_REPORTED,
    MAX_TEMPLATE_OUTPUT_CHARS,
    MAX_TEMPLATE_VALUE_CHARS,
    Source,
    Template,
    TemplateProblem,
    digest_context,
    event_context,
    template_line,
)
from hipchatd.sensu.events import MessageFormat, parse_event

__all__ = ["compile_template"]

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
            raise TemplateProblem("; ".join(refused[:MAX_REPORTED]))
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
