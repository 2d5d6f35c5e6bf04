"""hipchatd.jsontext: msgspec's speed with exactly the json module's answers and errors."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hipchatd import jsontext

_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@given(_VALUES)
def test_loads_reads_what_json_writes(value: object) -> None:
    text = json.dumps(value)
    assert _same(jsontext.loads(text), json.loads(text))
    assert _same(jsontext.loads(text.encode()), json.loads(text))


@pytest.mark.parametrize(
    "text",
    [
        "123456789012345678901234567890",  # beyond 64 bits
        "[NaN, Infinity, -Infinity]",
        '"\\ud800"',  # a lone surrogate
        '{"a": 1, "a": 2}',  # the last duplicate wins
        "1e400",
        ' \t\n{"k": [1, 2.5, "x"]}\r\n',
    ],
)
def test_loads_accepts_what_json_accepts(text: str) -> None:
    assert _same(jsontext.loads(text), json.loads(text))
    assert _same(jsontext.loads(text.encode()), json.loads(text))


@pytest.mark.parametrize("text", ['{"a": }', "[1, 2", "", "{'a': 1}", '{"a": 1} x', "tru"])
def test_loads_raises_what_json_raises(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as got:
        jsontext.loads(text)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize(
    "data",
    [b'"\xed\xa0\x80"', b'"\xff"', b'["ok", "\xc3"]', b"\xef\xbb\xbf{}", b"\x00[\x001\x00]"],
    ids=["utf8-surrogate", "invalid-byte", "cut-character", "utf8-bom", "utf16"],
)
def test_loads_reads_bytes_as_json_does(data: bytes) -> None:
    """Bytes that are not plain UTF-8: json's answer (it guesses the encoding), or its error."""
    assert _same(_outcome(jsontext.loads, data), _outcome(json.loads, data))


@given(_VALUES)
def test_loads_utf8_reads_what_json_writes(value: object) -> None:
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False)):
        if _utf8(text):  # a lone surrogate written as is has no UTF-8 encoding
            assert _same(jsontext.loads_utf8(text.encode(), text), json.loads(text))


@pytest.mark.parametrize(
    "text",
    [
        "123456789012345678901234567890",
        "[NaN, Infinity, -Infinity]",
        '"\\ud800"',
        "1e400",
        "9" * 5000,  # json refuses more than sys.get_int_max_str_digits() digits
        '{"a": }',
        '{"a": 1} x',
        "\ufeff{}",  # json.loads(bytes) would skip a UTF-8 BOM; json.loads(text) refuses it
        "[\x001]",  # json.loads(bytes) would read this as UTF-16
        "[" * 5_000 + "]" * 5_000,
    ],
)
def test_loads_utf8_answers_and_raises_as_json_loads_of_the_text(text: str) -> None:
    got = _outcome(jsontext.loads_utf8, text.encode(), text)
    assert _same(got, _outcome(json.loads, text))


def _outcome(parse: Callable[..., object], *args: object) -> object:
    """What ``parse(*args)`` returns, or the type and message of what it raises."""
    try:
        return parse(*args)
    except (ValueError, RecursionError) as exc:
        return (type(exc), str(exc))


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@given(_VALUES.filter(lambda v: not _has_nonfinite(v)))
def test_dumps_is_compact_json(value: object) -> None:
    out = jsontext.dumps(value)
    assert _same(json.loads(out), value)


def test_dumps_writes_what_msgspec_cannot() -> None:
    assert jsontext.dumps([2**70, "\ud800"]) == b'[1180591620717411303424,"\\ud800"]'
    assert jsontext.dumps({"é": "ü"}) == '{"é":"ü"}'.encode()


def _has_nonfinite(value: object) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(_has_nonfinite(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nonfinite(v) for v in value.values())
    return False


@pytest.mark.parametrize("depth", [50, 500, 5_000])
def test_loads_nests_as_json_does(depth: int) -> None:
    text = "[" * depth + "]" * depth
    try:
        expected: object = json.loads(text)
    except RecursionError:
        with pytest.raises(RecursionError):
            jsontext.loads(text)
    else:
        assert jsontext.loads(text) == expected
