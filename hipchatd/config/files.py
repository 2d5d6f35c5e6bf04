"""Reading configuration files: only regular files, bounded, then deep-merged in order.

A directory means every ``*.json`` directly in it, sorted by name. Documents
are deep-merged in order, as Sensu merges ``conf.d`` (see
:func:`hipchatd.config.load_config`), recording which file set each key so
that a problem line can name it. A file that cannot be read or parsed is a
problem line, never an exception.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hipchatd.config.describe import KeyPath, a_type


def expand(paths: Sequence[str | Path], problems: list[str]) -> list[Path]:
    """The files to read: each path as given, a directory as its ``*.json`` sorted by name."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            files.append(path)  # a missing or unreadable file is reported when read
            continue
        try:
            found = [p for p in path.iterdir() if p.name.endswith(".json") and not p.is_dir()]
        except OSError as exc:
            problems.append(f"{path}: cannot list directory: {exc.strerror or exc}")
            continue
        files.extend(sorted(found, key=lambda p: p.name))
    return files


#: Nesting depth of a configuration file at most: Sensu's deepest settings are a handful
#: of levels; far below Python's recursion limit, which would stop the JSON parser.
MAX_CONFIG_DEPTH = 100
#: Digits of a JSON integer at most: Python refuses to convert longer ones (its
#: int_max_str_digits default), and no setting needs more than a few.
MAX_INTEGER_DIGITS = 4300

#: Strings are skipped whole; brackets count depth; an integer part is checked for length.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[{\]}]|-?(\d+)(\.\d*)?([eE][-+]?\d*)?')


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_regular(path: Path) -> bytes:
    """The bytes of ``path``, which must be a regular file.

    Refuses anything else before reading a byte, without blocking: a FIFO
    would wait for a writer and a device may never end. Raises OSError, or
    NotRegular (an OSError) whose message names the kind of file.
    """
    # O_NONBLOCK: opening a FIFO must not wait for a writer; checked with fstat below.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        kind = _kind(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if kind is not None:
        os.close(fd)
        raise NotRegular(f"{kind}, not a regular file")
    with os.fdopen(fd, "rb") as file:
        return file.read()


class NotRegular(OSError):
    """A path names something other than a regular file; the message says what."""


def _structure_problem(text: str) -> str | None:
    """Where ``text`` nests too deeply or holds too long an integer (``line:column: why``).

    Checked before parsing: json.loads would raise RecursionError or
    ValueError with no position. An O(n) scan by one regular expression.
    """
    depth = 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_CONFIG_DEPTH:
                where = _position(text, match.start())
                return (
                    f"{where}: nested deeper than {MAX_CONFIG_DEPTH} levels;"
                    " no configuration needs that many"
                )
        elif token in ("]", "}"):
            depth -= 1
        elif match.group(2, 3) == (None, None) and len(match.group(1) or "") > MAX_INTEGER_DIGITS:
            where = _position(text, match.start())
            return (
                f"{where}: an integer of {len(match.group(1))} digits;"
                f" expected at most {MAX_INTEGER_DIGITS}"
            )
    return None


def _position(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"{line}:{column}"


def read_document(path: Path, problems: list[str]) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None after appending a problem line naming the file."""
    try:
        # utf-8-sig: Sensu strips a byte-order mark too (sensu-settings read_config_file).
        text = read_regular(path).decode("utf-8-sig")
    except FileNotFoundError:
        problems.append(f"{path}: no such file or directory")
        return None
    except NotRegular as exc:
        problems.append(f"{path}: {exc}; expected a JSON file")
        return None
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror or exc}")
        return None
    except UnicodeDecodeError as exc:
        problems.append(f"{path}: not UTF-8 text (bad byte at offset {exc.start})")
        return None
    structure = _structure_problem(text)
    if structure is not None:
        problems.append(f"{path}:{structure}")
        return None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        problems.append(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}")
        return None
    except (ValueError, RecursionError) as exc:
        # Past the scan above only if Python's own limits are lower than ours.
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        problems.append(f"{path}: cannot parse: {why}")
        return None
    if not isinstance(document, dict):
        problems.append(f"{path}: got {a_type(document)} at the top level; expected a JSON object")
        return None
    return document


def merge(
    into: dict[str, Any],
    document: Mapping[str, Any],
    source: str,
    origin: dict[KeyPath, str],
    path: KeyPath = (),
) -> None:
    """Deep-merge ``document`` into ``into``, recording in ``origin`` who set each key."""
    for key, value in document.items():
        at = (*path, key)
        earlier = into.get(key)
        if isinstance(earlier, dict) and isinstance(value, dict):
            merge(earlier, value, source, origin, at)
            continue
        into[key] = value
        for stale in [p for p in origin if p[: len(at)] == at]:
            del origin[stale]
        origin[at] = source
