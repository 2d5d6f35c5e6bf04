"""Message templates: checked at load, rendered with a fallback, end to end through the daemon.

Templates come only from the ``hipchat`` scope; event data selects one by
name. A template that cannot be used is a ``check-config`` problem naming
the file, the key and the line; one that fails for one event falls back to
the built-in layout with one WARNING.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from hipchatd import app as app_module
from hipchatd.config import Config, ConfigError, load_config
from hipchatd.config.templates import (
    MAX_TEMPLATE_OUTPUT_CHARS,
    Source,
    TemplateProblem,
    TemplateSet,
    compile_template,
)
from hipchatd.delivery.coalesce import render_batch
from hipchatd.delivery.render import MAX_MESSAGE_CHARS, render
from hipchatd.delivery.templated import Shaping, fit
from hipchatd.emulator import Emulator
from hipchatd.sensu.events import parse_event
from tests.conftest import TOKEN, load_fixture, send_tcp
from tests.factories import make_event, make_settings, make_target
from tests.logcapture import capture_logs

HIPCHATD = [sys.executable, "-m", "hipchatd"]


def write(tmp_path: Path, hipchat: dict[str, Any], **scopes: Any) -> Path:
    path = tmp_path / "hipchat.json"
    doc = {
        "hipchat": {"api_token": TOKEN, **hipchat},
        "hipchatd": {"tcp": {"host": "127.0.0.1", "port": 0}, "udp": None, "state_dir": ":memory:"},
        **scopes,
    }
    path.write_text(json.dumps(doc))
    return path


def load(tmp_path: Path, hipchat: dict[str, Any], **scopes: Any) -> Config:
    return load_config([write(tmp_path, hipchat, **scopes)], {}).config


def problems(tmp_path: Path, hipchat: dict[str, Any], **scopes: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, hipchat, **scopes)
    return list(info.value.problems)


def templates_of(config: Config) -> TemplateSet:
    h = config.hipchat
    return TemplateSet(h.template, h.templates, h.digest_template)


def go_event() -> dict[str, Any]:
    event = load_fixture("go-warning.json")
    # The sample is the 423rd occurrence: handle_when would hold it back as a repeat.
    event["check"]["occurrences"] = 1
    return event


# --- loading: every key, and what it compiles to ----------------------------------------


def test_each_key_compiles_to_a_template(tmp_path: Path) -> None:
    (tmp_path / "disk.j2").write_text("DISK {{ check }}\n")
    config = load(
        tmp_path,
        {
            "template": {"html": "<b>{{ status_word }}</b>", "text": "{{ status_word }}"},
            "templates": {
                "short": "{{ source }}",
                "disk": {"file": str(tmp_path / "disk.j2")},
            },
            "digest_template": "{{ total }} events",
        },
    )
    h = config.hipchat
    assert h.template is not None
    assert h.template.key == "hipchat.template"
    assert set(h.templates) == {"short", "disk"}
    assert h.templates["disk"].source.html_file == str(tmp_path / "disk.j2")
    assert h.digest_template is not None
    assert h.digest_template.key == "hipchat.digest_template"
    event = parse_event(load_fixture("classic-critical.json"))
    text = render(event, make_target(), "v2", templates=templates_of(config)).text
    assert text == "<b>CRITICAL</b>"
    named = render(event, make_target(template="disk"), "v2", templates=templates_of(config))
    # A file's final newline is dropped (keep_trailing_newline is off).
    assert named.text == "DISK testing"


def test_template_file_reads_one_file_per_format(tmp_path: Path) -> None:
    (tmp_path / "m.html").write_text("<i>{{ check }}</i>")
    (tmp_path / "m.txt").write_text("{{ check }}")
    files = {"html": str(tmp_path / "m.html"), "text": str(tmp_path / "m.txt")}
    config = load(tmp_path, {"template_file": files})
    event = make_event()
    templates = templates_of(config)
    assert render(event, make_target(), "v2", templates=templates).text == "<i>check_http</i>"
    text_target = make_target(message_format="text")
    assert render(event, text_target, "v2", templates=templates).text == "check_http"


def test_template_and_template_file_together_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "m.j2").write_text("{{ check }}")
    [line] = problems(tmp_path, {"template": "x", "template_file": str(tmp_path / "m.j2")})
    assert "hipchat.template_file: given with hipchat.template" in line


def test_a_syntax_error_names_the_file_key_and_line(tmp_path: Path) -> None:
    [line] = problems(tmp_path, {"template": "{{ status }}\n{% if status %}\nno end"})
    assert line.startswith(f"{tmp_path / 'hipchat.json'}: hipchat.template: line 3: ")
    assert "endif" in line


def test_a_syntax_error_in_a_template_file_names_it_and_its_line(tmp_path: Path) -> None:
    template = tmp_path / "message.j2"
    template.write_text("{{ source }}\n\n{{ check }\n")
    [line] = problems(tmp_path, {"templates": {"m": {"file": str(template)}}})
    assert line.startswith(f"{tmp_path / 'hipchat.json'}: hipchat.templates.m: {template}:3: ")


@pytest.mark.parametrize(
    ("hipchat", "expected"),
    [
        ({"template": 5}, "hipchat.template: got 5 (number)"),
        ({"template": {"html": "x"}}, 'hipchat.template: got {"html": "x"} (object)'),
        ({"template_file": "/nonexistent/m.j2"}, "/nonexistent/m.j2: no such file"),
        ({"templates": {"a": ["x"]}}, 'hipchat.templates.a: got ["x"] (list)'),
        ({"templates": "x"}, "hipchat.templates: got"),
        ({"templates": {"": "x"}}, "hipchat.templates.: an empty name"),
        ({"digest_template": "{{ source }}"}, 'unknown variable "source"'),
    ],
)
def test_bad_template_values_are_problems(
    tmp_path: Path, hipchat: dict[str, Any], expected: str
) -> None:
    [line] = problems(tmp_path, hipchat)
    assert expected in line


def test_a_contact_must_name_a_configured_template(tmp_path: Path) -> None:
    contacts = {"ops": {"hipchat": {"room": "ops", "template": "dsik"}}}
    [line] = problems(tmp_path, {"templates": {"disk": "{{ check }}"}}, contacts=contacts)
    assert 'contacts.ops.hipchat.template: got "dsik"' in line
    assert '(configured: "disk")' in line


# --- refused at load: the sandbox's reach, and the cost bounds ----------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__.os.system('id') }}",
    "{{ self._TemplateReference__context }}",
    "{{ lipsum.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ event['__class__'] }}",
    "{{ event|attr('__class__') }}",
    "{{ range.__self__ }}",
    "{{ status.__class__.__base__.__subclasses__() }}",
    # In a branch no sample reaches: found by walking the template, not by running it.
    "ok\n{% if status == 99 %}\n{{ output.__class__ }}\n{% endif %}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_a_sandbox_escape_is_refused_at_load(tmp_path: Path, template: str) -> None:
    found = problems(tmp_path, {"templates": {"x": template}})
    assert found
    assert all("hipchat.templates.x: line " in line for line in found)
    assert any(
        'starts with "_"; templates may not reach Python internals' in line for line in found
    )


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{% include 'other.j2' %}", "cannot include, import or extend"),
        ("{% extends 'base.j2' %}", "cannot include, import or extend"),
        ("{{ sevrity }}", 'unknown variable "sevrity"'),
        ("{{ event.pop('check') }}", "refused by the sandbox"),
        ("{{ 'x' * 100000000 }}", "refused by the sandbox: repeating"),
        ("{{ 'x'|center(100000000) }}", "refused by the sandbox: an integer argument"),
        ("{{ 'x'.ljust(100000000) }}", "refused by the sandbox: an integer argument"),
        ("{{ '%999999999d' % 1 }}", "refused by the sandbox: a format width"),
        ("{{ '{:>999999999}'.format(1) }}", "refused by the sandbox: a format width"),
        ("{{ 7 ** 100000 }}", "refused by the sandbox: a power"),
        (
            "{% macro d(s, n) %}{{ d(s ~ s, n - 1) if n else s }}{% endmacro %}{{ d('x', 40) }}",
            "refused by the sandbox: a joined string",
        ),
        ("{{ 1 / 0 }}", "fails for every sample event (ZeroDivisionError"),
    ],
)
def test_refused_at_load(tmp_path: Path, template: str, expected: str) -> None:
    [line] = problems(tmp_path, {"template": template})
    assert "hipchat.template: line 1: " in line
    assert expected in line


def test_a_dynamic_private_name_renders_nothing() -> None:
    """What the walk cannot see, the sandbox turns into an empty value when it runs."""
    source = "[{{ event|attr('__cl' ~ 'ass__') }}][{{ '{0.__class__}'.format(event) }}]"
    template = compile_template("t", Source(source, source))
    text, _ = template.render("text", {"event": {}})
    assert text == "[][]"


def test_a_template_failing_for_some_samples_only_is_kept() -> None:
    """Classic and Go differ: ``event.client.name`` is there for Classic only."""
    source = "{{ event.client.name.upper() }}"
    template = compile_template("t", Source(source, source))
    assert template.key == "t"


def test_output_is_consumed_only_up_to_its_bound() -> None:
    source = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
    template = compile_template("t", Source(source, source))
    text, stopped = template.render("text", {})
    assert stopped
    assert MAX_TEMPLATE_OUTPUT_CHARS < len(text) <= MAX_TEMPLATE_OUTPUT_CHARS + 1


def test_compile_error_is_a_template_problem() -> None:
    with pytest.raises(TemplateProblem, match=r"^/etc/m\.j2:2: "):
        compile_template("t", Source("a\n{{", "a\n{{", "/etc/m.j2", "/etc/m.j2"))


# --- rendering one event --------------------------------------------------------------


def one(source: str | dict[str, str], **target: Any) -> tuple[TemplateSet, Any]:
    html, text = (source, source) if isinstance(source, str) else (source["html"], source["text"])
    templates = TemplateSet(default=compile_template("hipchat.template", Source(html, text)))
    return templates, make_target(**target)


def test_html_escapes_event_values_and_text_does_not() -> None:
    event = make_event(output="<script>alert(1)</script> & more")
    templates, html = one("{{ output }}")
    assert render(event, html, "v2", templates=templates).text == (
        "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more"
    )
    text = replace(html, message_format="text")
    message = render(event, text, "v2", templates=templates)
    assert message.text == "<script>alert(1)</script> & more"
    assert message.message_format == "text"


def test_a_mention_renders_the_text_variant_neutralised_with_the_mentions_first() -> None:
    event = make_event(output="ping @all <now>")
    templates, target = one(
        {"html": "<b>{{ output }}</b>", "text": "{{ output }}"}, mention="@oncall"
    )
    message = render(event, target, "v2", templates=templates)
    assert message.message_format == "text"
    assert message.text == "@oncall ping @\u200ball <now>"


def test_the_context_holds_the_normalised_fields_and_the_whole_event() -> None:
    document = go_event()
    event = parse_event(document)
    source = (
        "{{ status }}|{{ severity }}|{{ status_word }}|{{ action }}|{{ is_resolution }}|"
        "{{ source }}|{{ check }}|{{ occurrences }}|{{ namespace }}|{{ playbook }}|"
        "{{ flavor }}|{{ event.entity.metadata.labels.region }}|{{ event.client.name }}|"
        "{{ dashboard_url }}"
    )
    templates, target = one(source, dashboard_url="https://s.example/{namespace}/{source}")
    text = render(event, target, "v2", templates=templates, document=document).text
    assert text == (
        "1|warning|WARNING|create|False|70faa7c58706|helloworld|1|default||go|us-west-1|"
        # A Go event has no client: a missing key renders as nothing.
        "|https://s.example/default/70faa7c58706"
    )


def test_a_dashboard_link_is_percent_encoded_for_templates() -> None:
    event = make_event(source="web 01/eu", check="check?x=1")
    templates, target = one(
        "{{ dashboard_url }}", dashboard_url="https://d.example/{source}/{check}"
    )
    text = render(event, target, "v2", templates=templates).text
    assert text == "https://d.example/web%2001%2Feu/check%3Fx%3D1"


def test_a_resolve_has_severity_ok() -> None:
    templates, target = one("{{ severity }} {{ status_word }} {{ is_resolution }}")
    event = make_event(action="resolve", status=2)
    assert render(event, target, "v2", templates=templates).text == "ok RESOLVED True"


def test_a_failing_template_falls_back_with_one_warning() -> None:
    templates, target = one("line 1\n{{ event.client.name.upper() }}")
    event = make_event()
    with capture_logs() as logs:
        message = render(event, target, "v2", templates=templates, document={})
    assert message == render(event, target, "v2")
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert warning["event"] == "template.failed"
    assert warning["template"] == "hipchat.template"
    assert warning["line"] == 2
    assert warning["error"].startswith("UndefinedError: ")
    assert warning["room"] == "ops"


@pytest.mark.parametrize(
    ("source", "name", "key", "error"),
    [
        # HipChat refuses an empty message.
        ("{% if status == 9 %}x{% endif %}  \n", None, "hipchat.template", "rendered nothing"),
        ("{{ check }}", "nope", "hipchat.templates.nope", "no such template"),
    ],
)
def test_nothing_to_send_falls_back_with_one_warning(
    source: str, name: str | None, key: str, error: str
) -> None:
    templates, target = one(source, template=name)
    event = make_event()
    with capture_logs() as logs:
        message = render(event, target, "v2", templates=templates)
    assert message == render(event, target, "v2")
    assert [(e["event"], e["template"]) for e in logs] == [("template.failed", key)]
    assert error in logs[0]["error"]


def test_the_message_limit_applies_after_rendering() -> None:
    event = make_event(output="<" * 6000)
    templates, target = one("{{ output }}")
    text = render(event, target, "v2", templates=templates).text
    assert len(text) <= MAX_MESSAGE_CHARS
    kept, marker = text.split("…")
    # Never cut inside an entity: every kept character is a whole "&lt;".
    assert kept == "&lt;" * (len(kept) // 4)
    assert marker.startswith(" [message truncated: ")


def test_a_runaway_template_is_cut_with_a_lower_bound() -> None:
    templates, target = one("{% for i in range(100000) %}{{ check }} {% endfor %}")
    text = render(make_event(), target, "v2", templates=templates).text
    assert len(text) <= MAX_MESSAGE_CHARS
    assert text.endswith("+ more characters]")


@pytest.mark.parametrize("as_html", [True, False])
def test_fit_keeps_short_text_and_cuts_long_text_to_the_limit(as_html: bool) -> None:
    assert fit("short", 100, as_html=as_html) == "short"
    cut = fit("a <b>bold</b> tail " * 20, 60, as_html=as_html)
    assert len(cut) <= 60
    if as_html:
        head = cut.split("…")[0]
        assert head.count("<") == head.count(">")


# --- storms: digest_template, and what a lane reads back -------------------------------


def test_a_digest_template_renders_several_events() -> None:
    digest = compile_template(
        "hipchat.digest_template",
        Source(
            "{{ total }}: {% for e in events %}{{ e.source }}={{ e.status_word }} {% endfor %}"
            "{{ counts.critical }}",
            "{{ total }}",
        ),
        digest=True,
    )
    shaping = Shaping(TemplateSet(digest=digest), [{"n": 1}, {"n": 2}])
    events = [make_event(source="a"), make_event(source="b", action="resolve", status=0)]
    [(message, span)] = render_batch(events, make_target(), "v2", shaping=shaping)
    assert span == range(2)
    assert message.text == "2: a=CRITICAL b=RESOLVED 1"
    [(plain, _)] = render_batch(events, make_target(), "v2")
    assert plain.text.startswith("2 events: 1 critical, 1 resolved")


def test_documents_are_read_back_only_where_a_template_applies() -> None:
    template = compile_template("t", Source("x", "x"))
    plain = Shaping.of(make_settings(), make_target())
    assert plain.documents is None
    named = Shaping.of(make_settings(templates={"t": template}), make_target(template="t"))
    assert named.documents == []
    other = Shaping.of(make_settings(templates={"t": template}), make_target())
    assert other.documents is None
    default = Shaping.of(make_settings(template=template), make_target())
    assert default.documents == []
    unknown = Shaping.of(make_settings(template=template), make_target(template="nope"))
    assert unknown.documents is None


# --- end to end: the daemon, the emulator, real events ---------------------------------

PAGE = "{{ status_word }} {{ source }}/{{ check }} ({{ flavor }}): {{ output }}"


async def start(nursery: trio.Nursery, emulator: Emulator, tmp_path: Path, **hipchat: Any) -> Any:
    config = load(tmp_path, {"server_url": emulator.url, **hipchat})
    return await nursery.start(app_module.run, config)


@pytest.mark.parametrize("message_format", ["html", "text"])
async def test_a_user_template_renders_classic_and_go_events(
    nursery: trio.Nursery, emulator: Emulator, tmp_path: Path, message_format: str
) -> None:
    classic = load_fixture("classic-critical.json")
    classic["check"]["output"] = "<script>alert('x')</script>"
    go = go_event()
    with trio.fail_after(10):
        app = await start(nursery, emulator, tmp_path, template=PAGE, message_format=message_format)
        await send_tcp(app.tcp_addresses[0], json.dumps(classic).encode())
        await emulator.wait_for_messages(1)
        await send_tcp(app.tcp_addresses[0], json.dumps(go).encode())
        await emulator.wait_for_messages(2)
    first, second = emulator.messages
    if message_format == "html":
        assert first.message == (
            "CRITICAL sensu.test.local/testing (classic):"
            " &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
        )
    else:
        assert (
            first.message
            == "CRITICAL sensu.test.local/testing (classic): <script>alert('x')</script>"
        )
    assert first.message_format == message_format
    assert second.message.startswith("WARNING 70faa7c58706/helloworld (go): ")


async def test_a_named_template_selected_by_an_annotation_reads_the_whole_event(
    nursery: trio.Nursery, emulator: Emulator, tmp_path: Path
) -> None:
    go = go_event()
    go["check"]["metadata"]["annotations"] = {"sensu.io/plugins/hipchat/config/template": "go"}
    templates = {
        "go": "{{ event.entity.system.hostname }} in {{ event.entity.metadata.namespace }}"
    }
    with trio.fail_after(10):
        app = await start(nursery, emulator, tmp_path, template=PAGE, templates=templates)
        await send_tcp(app.tcp_addresses[0], json.dumps(go).encode())
        await emulator.wait_for_messages(1)
    [message] = emulator.messages
    assert message.message == "70faa7c58706 in default"


async def test_a_failing_template_falls_back_to_the_built_in_layout_end_to_end(
    nursery: trio.Nursery, emulator: Emulator, tmp_path: Path
) -> None:
    """Go events have no ``client``: calling its missing name fails, for Go events only."""
    with trio.fail_after(10), capture_logs() as logs:
        app = await start(nursery, emulator, tmp_path, template="{{ event.client.name.upper() }}")
        await send_tcp(app.tcp_addresses[0], json.dumps(go_event()).encode())
        await emulator.wait_for_messages(1)
    [message] = emulator.messages
    assert message.message.startswith("<b>WARNING</b> 70faa7c58706/helloworld")
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["template.failed"]
    assert warnings[0]["template"] == "hipchat.template"
    assert warnings[0]["line"] == 1


# --- check-config, as a user runs it -----------------------------------------------------


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HIPCHATD, "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_refuses_sandbox_escapes(tmp_path: Path) -> None:
    named = {f"t{index}": template for index, template in enumerate(ESCAPES)}
    result = check_config(write(tmp_path, {"templates": named}))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    for name in named:
        assert any(f"hipchat.templates.{name}: line " in line for line in errors), name
    assert TOKEN not in result.stdout + result.stderr


def test_check_config_names_file_key_and_line_of_a_syntax_error(tmp_path: Path) -> None:
    template = tmp_path / "page.j2"
    template.write_text("{{ source }}\n{% for x in %}\n")
    config = write(tmp_path, {"template_file": str(template)})
    result = check_config(config)
    assert result.returncode != 0
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert f"{config}: hipchat.template_file: {template}:2: " in line


def test_check_config_accepts_a_good_template(tmp_path: Path) -> None:
    result = check_config(write(tmp_path, {"template": PAGE}))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"
