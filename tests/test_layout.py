"""The package's layout is its architecture: floors, and one owner per foreign library.

Folders stand in floors and nothing imports upward (docs/design.md draws
them). Lazy imports inside functions count as much as those at the top.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import hipchatd

PACKAGE = Path(hipchatd.__file__).parent

#: Lowest first. A module may import from its own floor and the floors below it.
FLOORS: tuple[frozenset[str], ...] = (
    frozenset(
        {
            "__init__",
            "errors",
            "clock",
            "redaction",
            "reasons",
            "metrics",
            "boundary",
            "http11",
            "jsontext",
        }
    ),
    frozenset({"sensu"}),
    frozenset({"config"}),
    frozenset({"delivery"}),
    frozenset({"ingest"}),
    frozenset({"ops"}),
    frozenset({"app", "cli", "__main__"}),
)

#: The emulator stands beside the daemon: it uses the bottom floor only, and only
#: the top floor (``hipchatd emulator``, the built-in emulator of ``serve``) uses it.
EMULATOR = "emulator"


def _unit(module: Path) -> str:
    """The floor-deciding name of a module: its first folder, or its own name at the top."""
    parts = module.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _floor(unit: str) -> int:
    for level, units in enumerate(FLOORS):
        if unit in units:
            return level
    raise AssertionError(f"{unit!r} stands on no floor: add it to FLOORS")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(module: Path) -> Iterator[tuple[int, str]]:
    """Every module name ``module`` imports, absolute, with its line."""
    package = ".".join(("hipchatd", *module.relative_to(PACKAGE).parent.parts))
    for node in ast.walk(ast.parse(module.read_text(), str(module))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            yield node.lineno, base
            for alias in node.names:  # ``from hipchatd import config`` imports a module
                yield node.lineno, f"{base}.{alias.name}"


def _target_unit(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "hipchatd":
        return None
    if len(parts) == 1:
        return "__init__"
    candidate = PACKAGE.joinpath(*parts[1:2])
    if candidate.is_dir() or candidate.with_suffix(".py").exists():
        return parts[1]
    return "__init__"  # a name defined in hipchatd/__init__.py, such as __version__


def test_every_module_stands_on_a_floor() -> None:
    for module in _modules():
        unit = _unit(module)
        if unit != EMULATOR:
            _floor(unit)


def test_nothing_imports_upward() -> None:
    upward = []
    for module in _modules():
        unit = _unit(module)
        for line, name in _imports(module):
            target = _target_unit(name)
            if target is None or target == unit:
                continue
            where = f"{module.relative_to(PACKAGE.parent)}:{line} imports {name}"
            if unit == EMULATOR:
                if target != EMULATOR and _floor(target) != 0:
                    upward.append(f"{where} (the emulator uses the bottom floor only)")
            elif target == EMULATOR:
                if _floor(unit) != len(FLOORS) - 1:
                    upward.append(f"{where} (only the top floor runs the emulator)")
            elif _floor(target) > _floor(unit):
                upward.append(where)
    assert upward == []


@pytest.mark.parametrize(
    ("library", "owner"),
    [
        # sqlite3 errors are translated inside the spool's SQLite backend.
        ("sqlite3", "delivery/spool/sqlite"),
        # psycopg errors are translated inside the spool's PostgreSQL backend.
        ("psycopg", "delivery/spool/postgresql"),
        # The HipChat client is the only code that knows httpx.
        ("httpx", "delivery/hipchat.py"),
        # Templates are compiled, checked and rendered by one module.
        ("jinja2", "config/sandbox.py"),
        # Fast JSON text, with the json module's answers, comes from one module.
        ("msgspec", "jsontext.py"),
    ],
)
def test_one_owner_per_foreign_library(library: str, owner: str) -> None:
    importers = []
    for module in _modules():
        relative = module.relative_to(PACKAGE).as_posix()
        if relative == owner or relative.startswith(owner + "/"):
            continue
        if any(name.split(".")[0] == library for _, name in _imports(module)):
            importers.append(relative)
    assert importers == []


# --- Citations: every reference in the code resolves inside the repository ---

ROOT = PACKAGE.parent
#: The page a bare section number or source id means, in a module that names it.
API_DOC = "docs/hipchat-api.md"
#: ``docs/<file>.md §N``, ``RFC <n> §N`` or a bare ``§N``, each with an optional ``qN``.
_SECTION_CITE = re.compile(
    r"(?:(RFC \d+) |`{0,2}(docs/[\w.-]+\.md)`{0,2}\s*)?§(\d+(?:\.\d+)*)(?: q(\d+))?"
)
_SOURCE_ID = re.compile(r"\bS\d+b?\b")
#: Citations of reference pages outside the repository.
_OUTSIDE = re.compile(r"(?<![\w/])(?:hipchat-api|sensu)\.md|reference\s+§|shared/referenc[e]")
_HEADING = re.compile(r"^#{2,} (\d+(?:\.\d+)*)\.? ", re.MULTILINE)
_QUESTION_ROW = re.compile(r"^\| q(\d+) \|", re.MULTILINE)
_SOURCE_ENTRY = re.compile(r"^- (S\d+b?) (.*)$", re.MULTILINE)


def _cited_files() -> Iterator[Path]:
    for folder in ("hipchatd", "tests", "bench"):
        yield from sorted((ROOT / folder).rglob("*.py"))


def _anchors(page: str) -> tuple[set[str], set[str], dict[str, str]]:
    """A docs page's section numbers, open-question numbers and sources (id -> entry)."""
    text = (ROOT / page).read_text(encoding="utf-8")
    sources = dict(_SOURCE_ENTRY.findall(text))
    return set(_HEADING.findall(text)), set(_QUESTION_ROW.findall(text)), sources


def _unresolved(where: str, text: str, names_api_doc: bool) -> Iterator[str]:
    for match in _SECTION_CITE.finditer(text):
        rfc, page, section, question = match.groups()
        if rfc is not None:
            continue
        if page is None:
            if not names_api_doc:
                yield f"{where}: bare {match.group(0)!r} in a file that names no docs page"
                continue
            page = API_DOC
        if not (ROOT / page).is_file():
            yield f"{where}: {match.group(0)!r} names a missing page"
            continue
        sections, questions, _ = _anchors(page)
        if section not in sections:
            yield f"{where}: {match.group(0)!r} names no section of {page}"
        elif question is not None and question not in questions:
            yield f"{where}: {match.group(0)!r} names no open question of {page}"
    sources = _anchors(API_DOC)[2]
    for match in _SOURCE_ID.finditer(text):
        if not names_api_doc:
            yield f"{where}: source id {match.group(0)} in a file that names no docs page"
        elif match.group(0) not in sources:
            yield f"{where}: source id {match.group(0)} is not listed in {API_DOC}"


def test_code_citations_resolve_inside_the_repository() -> None:
    """Every ``docs/<file>.md §N`` (and bare section, question or source id) resolves."""
    problems = []
    for path in _cited_files():
        where = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        problems += _unresolved(where, text, API_DOC in text)
        problems += [f"{where}: cites {m.group(0)!r}" for m in _OUTSIDE.finditer(text)]
    assert problems == []


def test_api_page_resolves_its_own_references() -> None:
    """The page's own section and source references resolve; each source has a public address."""
    text = (ROOT / API_DOC).read_text(encoding="utf-8")
    problems = list(_unresolved(API_DOC, text, names_api_doc=True))
    for source, entry in _anchors(API_DOC)[2].items():
        if "https://" not in entry:
            problems.append(f"{API_DOC}: {source} has no public address")
    assert problems == []
