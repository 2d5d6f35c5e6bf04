"""The package's layout is its architecture: floors, and one owner per foreign library.

Folders stand in floors and nothing imports upward (docs/design.md draws
them). Lazy imports inside functions count as much as those at the top.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import hipchatd

PACKAGE = Path(hipchatd.__file__).parent

#: Lowest first. A module may import from its own floor and the floors below it.
FLOORS: tuple[frozenset[str], ...] = (
    frozenset(
        {"__init__", "errors", "clock", "redaction", "reasons", "metrics", "boundary", "http11"}
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
        # The HipChat client is the only code that knows httpx.
        ("httpx", "delivery/hipchat.py"),
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
