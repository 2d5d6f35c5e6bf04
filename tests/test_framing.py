"""framing: bytes -> JSON documents, whatever the chunking, in every framing mode."""

from __future__ import annotations

import itertools
import json
import math
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hipchatd import jsontext
from hipchatd.errors import FrameTooLarge
from hipchatd.reasons import RejectReason
from hipchatd.sensu import framing
from hipchatd.sensu.framing import Decoder, Document, Framing, Rejected, preview

FIXTURES = Path(__file__).parent / "fixtures"
#: Sensu Classic's json mutator output: one compact line, no trailing newline.
CLASSIC = (FIXTURES / "classic-critical.json").read_bytes().rstrip(b"\n")
#: Sensu's own Go sample event, pretty-printed over many lines.
GO_PRETTY = (FIXTURES / "go-warning.json").read_bytes()
LIMIT = 1 << 20
MODES: tuple[Framing, ...] = ("auto", "eof", "newline", "length")

Frame = Document | Rejected


def decode(chunks: Iterable[bytes], mode: Framing = "auto", limit: int = LIMIT) -> list[Frame]:
    """Feed every chunk, then close; all frames in order."""
    decoder = Decoder(mode, limit)
    frames: list[Frame] = []
    for chunk in chunks:
        frames += decoder.feed(chunk)
    return frames + decoder.close()


def every(data: bytes, size: int) -> list[bytes]:
    """``data`` cut into chunks of ``size`` bytes."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def cut(data: bytes, points: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given offsets."""
    edges = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def values(frames: Sequence[Frame]) -> list[Any]:
    assert all(isinstance(f, Document) for f in frames), frames
    return [f.value for f in frames if isinstance(f, Document)]


def length_prefixed(*payloads: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in payloads)


# -- what Sensu sends ---------------------------------------------------------


def test_classic_write_and_close_is_one_document() -> None:
    """Classic's compact event, one write then EOF, is one Document of its full size."""
    assert decode([CLASSIC]) == [Document(json.loads(CLASSIC), len(CLASSIC))]


def test_pretty_printed_go_event_is_one_document_in_any_chunking() -> None:
    """A multi-line pretty-printed event is one document, even fed a byte at a time."""
    expected = [Document(json.loads(GO_PRETTY), len(GO_PRETTY.rstrip()))]
    assert decode([GO_PRETTY]) == expected
    assert decode(every(GO_PRETTY, 1)) == expected
    assert decode(every(GO_PRETTY, 1448)) == expected


def test_document_is_emitted_when_its_closing_brace_arrives() -> None:
    """No need to wait for EOF: the brace that closes the event completes it."""
    decoder = Decoder("auto", LIMIT)
    assert decoder.feed(CLASSIC[:-1]) == []
    assert values(decoder.feed(CLASSIC[-1:])) == [json.loads(CLASSIC)]
    assert decoder.close() == []


def test_every_two_chunk_split_of_an_event_gives_the_same_document() -> None:
    expected = decode([CLASSIC])
    for i in range(len(CLASSIC) + 1):
        assert decode([CLASSIC[:i], CLASSIC[i:]]) == expected, i


# -- JSON text: several documents on one connection -----------------------------


@pytest.mark.parametrize(
    "stream",
    [
        b'{"a":1}\n{"b":2}\n',  # NDJSON
        b'{"a":1}\r\n{"b":2}\r\n',  # NDJSON, CRLF
        b'{"a":1}{"b":2}',  # concatenated, compact
        b'{"a":1} {"b":2}',  # concatenated, space
        b'\n\n  {"a":1}\t\n\n{"b":2}\n\n',  # blank lines and padding
        b'{\n  "a": 1\n}\n{\n  "b": 2\n}',  # pretty-printed
    ],
)
def test_json_text_carries_several_documents(stream: bytes) -> None:
    for size in (1, 2, 3, 5, len(stream)):
        assert values(decode(every(stream, size))) == [{"a": 1}, {"b": 2}], size


def test_classic_and_go_events_back_to_back() -> None:
    stream = CLASSIC + GO_PRETTY + CLASSIC + b"\n"
    expected = [json.loads(CLASSIC), json.loads(GO_PRETTY), json.loads(CLASSIC)]
    for size in (1, 7, 1000, len(stream)):
        assert values(decode(every(stream, size))) == expected


def test_top_level_arrays_are_documents() -> None:
    assert values(decode([b'[1,[2,{"x":[]}]][]'])) == [[1, [2, {"x": []}]], []]


TRICKY = [
    {"s": "{not a brace}"},
    {"s": "]]]]}}}}"},
    {"s": '[{"nested": "json in a string"}]'},
    {"s": 'say \\"hi\\"'},
    {"s": "back\\slash\\\\"},
    {"s": "\\"},
    {"s": '\\"'},
    {"s": "ends with a backslash\\", "t": "}"},
    {"s": "caf\u00e9 \u20ac \U0001f600 \u2028"},
    {"s": "\x00\x1f control"},
    {"s": ""},
]


@pytest.mark.parametrize("doc", TRICKY, ids=range(len(TRICKY)))
@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_strings_with_brackets_quotes_escapes_and_unicode(
    doc: dict[str, str], ensure_ascii: bool
) -> None:
    """Brackets and quotes inside strings never end a document, at any split point.

    With ``ensure_ascii`` off, some splits fall inside a multi-byte UTF-8
    character; with it on, ``\\uXXXX`` escapes are split instead.
    """
    one = json.dumps(doc, ensure_ascii=ensure_ascii).encode()
    stream = one + one
    for i in range(len(stream) + 1):
        assert values(decode([stream[:i], stream[i:]])) == [doc, doc], i
    assert values(decode(every(stream, 1))) == [doc, doc]


def test_escaped_backslash_before_closing_quote() -> None:
    """``"\\\\"`` is a backslash then a closing quote, not an escaped quote."""
    stream = b'{"a":"\\\\"}{"b":"x\\"}\\\\"}'
    expected = [{"a": "\\"}, {"b": 'x"}\\'}]
    for size in (1, 2, len(stream)):
        assert values(decode(every(stream, size))) == expected


def test_bare_scalars_run_to_end_of_line_and_parse() -> None:
    """A bare number or string is a Document; the caller decides it is no event."""
    assert values(decode([b'42\n"text"\ntrue\n-1.5e3'])) == [42, "text", True, -1500.0]


def test_only_check_output_text_is_rejected_with_preview() -> None:
    """The only_check_output mutator sends plain check output, which is not JSON."""
    output = b"CheckHTTP CRITICAL: 500 Internal Server Error\nsecond line"
    frames = decode([output])
    assert frames == [
        Rejected(
            RejectReason.INVALID_JSON,
            "invalid JSON: Expecting value at line 1 column 1",
            45,
            "CheckHTTP CRITICAL: 500 Internal Server Error",
        ),
        Rejected(
            RejectReason.INVALID_JSON,
            "invalid JSON: Expecting value at line 1 column 1",
            11,
            "second line",
        ),
    ]


def test_stray_closing_bracket_rejects_its_line_and_resyncs() -> None:
    stream = b'{"a":1}}\n]{"lost":true}\n{"b":2}'
    for size in (1, len(stream)):
        frames = decode(every(stream, size))
        assert [type(f) for f in frames] == [Document, Rejected, Rejected, Document]
        assert frames[1] == Rejected(
            RejectReason.INVALID_JSON, "invalid JSON: Expecting value at line 1 column 1", 1, "}"
        )
        assert frames[2].nbytes == len(b']{"lost":true}')
        assert frames[3] == Document({"b": 2}, 7)


def test_invalid_document_between_valid_ones_does_not_hurt_them() -> None:
    stream = b'{"a":1}\n{"broken": nope}\n{"b":2}\n'
    for mode in ("auto", "newline"):
        for size in (1, 4, len(stream)):
            frames = decode(every(stream, size), mode)
            assert frames[0] == Document({"a": 1}, 7)
            assert frames[2] == Document({"b": 2}, 7)
            bad = frames[1]
            assert isinstance(bad, Rejected)
            assert bad.reason == "invalid JSON: Expecting value at line 1 column 12"
            assert bad.preview == '{"broken": nope}'


def test_invalid_json_reason_names_line_and_column() -> None:
    stream = b'{\n  "a": 1,\n  "b": }'
    [frame] = decode([stream])
    assert frame == Rejected(
        RejectReason.INVALID_JSON,
        "invalid JSON: Expecting value at line 3 column 8",
        len(stream),
        '{\\n  "a": 1,\\n  "b": }',
    )


def test_non_utf8_is_rejected_and_later_documents_survive() -> None:
    stream = b'{"a":"caf\xe9"}\n{"b":2}'
    for size in (1, len(stream)):
        frames = decode(every(stream, size))
        assert frames == [
            Rejected(
                RejectReason.NOT_UTF8,
                "not UTF-8: invalid continuation byte at offset 9",
                12,
                '{"a":"caf\\xe9"}',
            ),
            Document({"b": 2}, 7),
        ]


def test_non_utf8_text_line() -> None:
    [frame] = decode([b"\xff\xfe binary"])
    assert isinstance(frame, Rejected)
    assert frame.reason == "not UTF-8: invalid start byte at offset 0"
    assert frame.preview == "\\xff\\xfe binary"


def test_incomplete_document_at_close_is_rejected() -> None:
    stream = b'{"a":1}{"b":[1,{"c":"unterminated'
    for size in (1, len(stream)):
        frames = decode(every(stream, size))
        assert frames[0] == Document({"a": 1}, 7)
        assert frames[1] == Rejected(
            RejectReason.TRUNCATED,
            "incomplete JSON at end of stream: 3 unclosed bracket(s) inside a string",
            26,
            '{"b":[1,{"c":"unterminated',
        )


def test_deeply_nested_input_is_rejected_not_crashed() -> None:
    depth = 100_000
    stream = b"[" * depth + b"]" * depth
    for chunks in ([stream], every(stream, 4096)):
        [frame] = decode(chunks)
        assert isinstance(frame, Rejected)
        assert frame.reason == "invalid JSON: nested too deeply"


def test_integer_too_long_for_python_is_rejected() -> None:
    [frame] = decode([b'{"n":' + b"9" * 5000 + b"}"])
    assert isinstance(frame, Rejected)
    assert frame.reason.startswith("invalid JSON: Exceeds the limit")


# -- lines that are one document: parsed from bytes, answered as json answers -----------


def shapes(frames: Sequence[Frame]) -> list[object]:
    """Frames as a caller sees them: a Document's value (as JSON text, so NaN compares
    and 1 is not 1.0), its size and its text; a Rejected as it is."""
    return [
        (json.dumps(f.value), f.nbytes, f.text) if isinstance(f, Document) else f for f in frames
    ]


LINE_CASES = {
    "trailing-whitespace": b'{"a":1}  \t\r\n  ',
    "crlf-lines": b'{"a":1}\r\n[2]\r\n',
    "two-on-one-line": b'{"a":1}{"b":2}\n{"c":3} [4]\n',
    "then-a-word": b'{"a":1} x\n{"b":2}',
    "invalid-utf8": b'{"a":"caf\xe9"}\n{"b":2}\n',
    "cut-character": b'{"a":"\xe2\x82"}\n',
    "utf8-text": '{"a":"café € 😀 \u2028"}\n["\u00e9"]'.encode(),
    "lone-surrogate": b'{"a":"\\ud800 and \\udfff"}\n',
    "surrogate-pair": b'{"a":"\\ud83d\\ude00"}\n',
    "big-integers": b'{"a":123456789012345678901234567890,"b":-18446744073709551616}\n',
    "huge-integer": b'{"n":' + b"9" * 5000 + b"}\n",
    "huge-exponent": b'{"a":1e400,"b":-1e400,"c":1e-400}\n',
    "nan-infinity": b'{"a":NaN,"b":Infinity,"c":-Infinity}\n[NaN]',
    "duplicate-keys": b'{"a":1,"a":2}\n',
    "floats": b"[0.1,-0.0,1E5,1.7976931348623157e308,5e-324,2.5e+3]\n",
    "deep": b"[" * 1500 + b"]" * 1500 + b"\n",
    "invalid": b'{"a":}\n[1,]\n{"a":1,}\n',
    "control-in-string": b'{"a":"\x01"}\n',
    "form-feed": b'{"a":1}\x0c\n{"b":2}\n',
    "bom": b'\xef\xbb\xbf{"a":1}\n{"b":2}\n',
    "nul-second": b'[\x001]\n{"\x00":1}\n',
    "bracket-ended-junk": b'{"a":1]\n[1}\n{"a":[}\n',
    "pretty-then-line": b'{\n  "a": 1\n}\n{"b":2}\n',
    "no-newline-at-end": b'{"a":1}\n{"b":2}',
}


@pytest.mark.parametrize("stream", LINE_CASES.values(), ids=LINE_CASES.keys())
def test_whole_document_lines_give_the_frames_of_any_split(stream: bytes) -> None:
    """A chunk of whole lines gives what any other chunking gives, text and sizes included."""
    whole = shapes(decode([stream]))
    assert shapes(decode(every(stream, 1))) == whole
    for i in range(len(stream) + 1):
        assert shapes(decode([stream[:i], stream[i:]])) == whole, i


@pytest.mark.parametrize("stream", LINE_CASES.values(), ids=LINE_CASES.keys())
def test_documents_are_json_loads_of_the_text_as_received(stream: bytes) -> None:
    """Each Document is json.loads of its text, which is its bytes in the stream, decoded."""
    rest = stream
    for frame in decode([stream]):
        if isinstance(frame, Document):
            data = frame.text.encode()
            assert len(data) == frame.nbytes
            assert data in rest
            rest = rest[rest.index(data) + len(data) :]
            assert json.dumps(frame.value) == json.dumps(json.loads(frame.text))


def test_lone_surrogates_nan_and_big_numbers_read_as_json_reads_them() -> None:
    frames = decode([LINE_CASES["lone-surrogate"] + LINE_CASES["nan-infinity"]])
    assert [f.value for f in frames[:1] if isinstance(f, Document)] == [{"a": "\ud800 and \udfff"}]
    nan = frames[1]
    assert isinstance(nan, Document)
    assert math.isnan(nan.value["a"])
    assert (nan.value["b"], nan.value["c"]) == (math.inf, -math.inf)
    [big] = decode([LINE_CASES["big-integers"]])
    assert big == Document({"a": 123456789012345678901234567890, "b": -18446744073709551616}, 62)


def test_a_line_of_two_documents_gives_both() -> None:
    assert decode([b'{"a":1}{"b":2}\n']) == [Document({"a": 1}, 7), Document({"b": 2}, 7)]


def test_a_document_keeps_the_text_it_came_in_as() -> None:
    """Spacing and escapes as sent: the spool stores the text, not a re-encoding."""
    line = '{ "a" : [1, 2.50],\t"é": "\\u00e9\\n" }'
    for stream in (line.encode(), line.encode() + b"\n", b"\n" + line.encode() + b"  \r\n"):
        [doc] = decode([stream])
        assert isinstance(doc, Document)
        assert (doc.text, doc.nbytes) == (line, len(line.encode()))


line_fragments = st.sampled_from(
    [
        *(b'{"a":1}', b"[1,2]", b'{"s":"}]"}', b"[]", b"{}", b"\n", b"\r\n", b" ", b"\t", b"x"),
        *(b'{"a":NaN}', b"[Infinity]", b"[1e400]", b"[123456789012345678901234567890]"),
        *(b'["\\ud800"]', b'["\xe9"]', '["€"]'.encode(), b"\xef\xbb\xbf", b"\x00", b"\x0c"),
        *(b"[" * 1100 + b"]" * 1100, b"[" + b"9" * 4400 + b"]", b"{", b"}", b"]", b'"'),
    ]
)


@pytest.mark.parametrize("mode", ["auto", "newline"])
@given(parts=st.lists(line_fragments, max_size=30), data=st.data())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_split_of_lines_gives_the_same_frames_text_included(
    mode: Framing, parts: list[bytes], data: st.DataObject
) -> None:
    """Documents, NaN, big numbers, surrogates, bad bytes and junk on lines, cut anywhere."""
    stream = b"\n" + b"".join(parts)  # the leading newline keeps auto mode on JSON text
    whole = shapes(decode([stream], mode))
    assert shapes(decode(every(stream, 1), mode)) == whole
    assert shapes(decode(data.draw(splits_of(stream), label="chunks"), mode)) == whole


# -- empty input ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "stream"),
    [(mode, b"") for mode in MODES]
    + [(mode, b" \t\r\n\n  \r\n") for mode in ("auto", "eof", "newline")],
)
def test_empty_and_whitespace_input_give_no_frames(mode: Framing, stream: bytes) -> None:
    """Classic UDP may send an empty datagram; Go may write an empty payload."""
    assert decode([stream], mode) == []
    assert decode(every(stream, 1), mode) == []


def test_empty_feed_is_harmless() -> None:
    decoder = Decoder("auto", LIMIT)
    assert decoder.feed(b"") == []
    assert values(decoder.feed(CLASSIC)) == [json.loads(CLASSIC)]
    assert decoder.feed(b"") == []
    assert decoder.close() == []


# -- eof mode -------------------------------------------------------------------


def test_eof_mode_parses_the_whole_stream_once() -> None:
    decoder = Decoder("eof", LIMIT)
    assert decoder.feed(CLASSIC) == []
    assert decoder.close() == [Document(json.loads(CLASSIC), len(CLASSIC))]
    assert values(decode(every(GO_PRETTY, 3), "eof")) == [json.loads(GO_PRETTY)]


def test_eof_mode_rejects_concatenated_documents() -> None:
    [frame] = decode([b'{"a":1}{"b":2}'], "eof")
    assert frame == Rejected(
        RejectReason.INVALID_JSON,
        "invalid JSON: Extra data at line 1 column 8",
        14,
        '{"a":1}{"b":2}',
    )


# -- newline mode -----------------------------------------------------------------


def test_newline_mode_one_document_per_line() -> None:
    stream = b'{"a":1}\r\n\n   \n{"b":\n{"c":3}'
    for size in (1, 2, len(stream)):
        frames = decode(every(stream, size), "newline")
        assert frames[0] == Document({"a": 1}, 7)
        assert isinstance(frames[1], Rejected)
        assert frames[1].preview == '{"b":'
        assert frames[2] == Document({"c": 3}, 7)  # the unterminated last line


def test_newline_mode_does_not_join_pretty_printed_lines() -> None:
    frames = decode([b'{\n"a": 1\n}\n'], "newline")
    assert [type(f) for f in frames] == [Rejected, Rejected, Rejected]


# -- length mode ------------------------------------------------------------------


def test_length_prefixed_frames() -> None:
    stream = length_prefixed(CLASSIC, GO_PRETTY, b"not json")
    for mode in ("length", "auto"):
        for size in (1, 3, 4, 5, len(stream)):
            frames = decode(every(stream, size), mode)
            assert frames[:2] == [
                Document(json.loads(CLASSIC), len(CLASSIC)),
                Document(json.loads(GO_PRETTY), len(GO_PRETTY)),
            ]
            assert frames[2] == Rejected(
                RejectReason.INVALID_JSON,
                "invalid JSON: Expecting value at line 1 column 1",
                8,
                "not json",
            )


def test_length_prefixed_payload_may_hold_newlines_and_concatenations() -> None:
    """One length-prefixed frame is one document: nothing inside it is split."""
    [frame] = decode([length_prefixed(b'{"a":1}\n{"b":2}')], "length")
    assert isinstance(frame, Rejected)
    assert frame.reason.startswith("invalid JSON: Extra data")


def test_zero_length_frame_is_rejected() -> None:
    frames = decode([length_prefixed(b"", b"[1]")], "length")
    assert frames == [Rejected(RejectReason.TRUNCATED, "empty frame", 0, ""), Document([1], 3)]


def test_truncated_length_frame_at_close() -> None:
    stream = length_prefixed(b"[1]") + struct.pack(">I", 10) + b"[1,2"
    assert decode([stream], "length") == [
        Document([1], 3),
        Rejected(
            RejectReason.TRUNCATED, "truncated length-prefixed frame: got 4 of 10 bytes", 4, "[1,2"
        ),
    ]


def test_truncated_length_prefix_at_close() -> None:
    assert decode([b"\x00\x00"], "auto") == [
        Rejected(
            RejectReason.TRUNCATED, "truncated length prefix: got 2 of 4 bytes", 2, "\\x00\\x00"
        )
    ]


_DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("mode", "stream", "kind", "words"),
    [
        ("auto", b'{"a":}\n', RejectReason.INVALID_JSON, "invalid JSON: "),
        ("auto", b"CheckHTTP CRITICAL\n", RejectReason.INVALID_JSON, "invalid JSON: "),
        ("auto", _DEEP, RejectReason.INVALID_JSON, "invalid JSON: nested too deeply"),
        ("newline", b"1" * 5_000 + b"\n", RejectReason.INVALID_JSON, "invalid JSON: Exceeds"),
        ("eof", b'{"a":1}{"b":2}', RejectReason.INVALID_JSON, "invalid JSON: Extra data"),
        ("length", length_prefixed(b"{x}"), RejectReason.INVALID_JSON, "invalid JSON: "),
        ("auto", b'{"a":"caf\xe9"}', RejectReason.NOT_UTF8, "not UTF-8: "),
        ("newline", b"\xff\n", RejectReason.NOT_UTF8, "not UTF-8: "),
        ("eof", b"\xff", RejectReason.NOT_UTF8, "not UTF-8: "),
        ("length", length_prefixed(b'"\xff"'), RejectReason.NOT_UTF8, "not UTF-8: "),
        ("auto", b'{"a":[1', RejectReason.TRUNCATED, "incomplete JSON at end of stream"),
        ("length", b"\x00\x00", RejectReason.TRUNCATED, "truncated length prefix"),
        ("length", length_prefixed(b"[1,2]")[:-1], RejectReason.TRUNCATED, "truncated length-"),
        ("length", length_prefixed(b""), RejectReason.TRUNCATED, "empty frame"),
    ],
)
def test_each_rejection_carries_its_reason(
    mode: Framing, stream: bytes, kind: RejectReason, words: str
) -> None:
    """The metric label is decided here, with the words for the log beside it."""
    for chunks in ([stream], every(stream, 3)):
        [frame] = decode(chunks, mode)
        assert isinstance(frame, Rejected)
        assert frame.kind is kind
        assert frame.reason.startswith(words)


def test_auto_mode_first_byte_decides() -> None:
    """0x00 means length-prefixed; anything else, even 0x01, means JSON text."""
    assert values(decode([length_prefixed(b"[1]")], "auto")) == [[1]]
    [frame] = decode([b"\x01\x00\x00\x03[1]"], "auto")
    assert isinstance(frame, Rejected)


# -- max_frame_bytes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "stream"),
    [
        ("auto", b'{"a":"' + b"x" * 100 + b'"}'),
        ("auto", b"[" + b"1," * 100 + b"1]"),
        ("auto", b"plain text line " * 10 + b"\n"),
        ("eof", b'{"a":"' + b"x" * 100 + b'"}'),
        ("newline", b'{"a":"' + b"x" * 100 + b'"}\n'),
        ("length", length_prefixed(b"[" + b"1," * 100 + b"1]")),
    ],
)
def test_frame_over_the_limit_raises_in_any_chunking(mode: Framing, stream: bytes) -> None:
    for size in (1, 16, len(stream)):
        with pytest.raises(FrameTooLarge) as info:
            decode(every(stream, size), mode, limit=64)
        assert info.value.limit == 64
        assert info.value.size > 64


def test_limit_is_checked_before_the_frame_completes() -> None:
    """A runaway document is stopped once it passes the limit, not at its end."""
    decoder = Decoder("auto", 100)
    assert decoder.feed(b'{"a":"' + b"x" * 90) == []
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(b"x" * 10)
    assert info.value.size == 106


def test_length_prefix_over_the_limit_raises_before_the_payload() -> None:
    decoder = Decoder("length", 100)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(struct.pack(">I", 101))
    assert (info.value.size, info.value.limit) == (101, 100)


def test_documents_at_the_limit_pass() -> None:
    doc = b'{"a":"' + b"x" * 92 + b'"}'
    assert len(doc) == 100
    for mode in MODES:
        stream = {"length": length_prefixed(doc), "eof": doc}.get(mode, doc + b"\n")
        assert values(decode([stream], mode, limit=100)) == [{"a": "x" * 92}]
        assert values(decode(every(stream, 1), mode, limit=100)) == [{"a": "x" * 92}]


def test_whitespace_between_documents_does_not_count_toward_the_limit() -> None:
    stream = b'{"a":1}' + b" " * 1000 + b'{"b":2}'
    assert values(decode(every(stream, 10), "auto", limit=10)) == [{"a": 1}, {"b": 2}]


@pytest.mark.parametrize("mode", ["auto", "newline", "length"])
def test_frames_before_an_oversized_one_in_the_same_chunk_are_kept(mode: Framing) -> None:
    """Good frames the chunk completed before the oversized one travel with the exception."""
    good = [b'{"a":1}', b'{"b":2}']
    big = b'{"c":"' + b"x" * 200 + b'"}'
    if mode == "length":
        chunk = b"".join(length_prefixed(frame) for frame in [*good, big])
    else:
        chunk = b"\n".join([*good, big]) + b"\n"
    decoder = Decoder(mode, 100)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(chunk)
    assert values(info.value.frames) == [{"a": 1}, {"b": 2}]
    # A chunk whose first frame is the oversized one has nothing before it.
    decoder = Decoder(mode, 100)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(length_prefixed(big) if mode == "length" else big + b"\n")
    assert info.value.frames == []


@pytest.mark.parametrize("mode", MODES)
def test_decoder_refuses_use_after_frame_too_large(mode: Framing) -> None:
    decoder = Decoder(mode, 4)
    stream = length_prefixed(b"[1,2,3]") if mode == "length" else b"[1,2,3]\n"
    with pytest.raises(FrameTooLarge):
        decoder.feed(stream)
    with pytest.raises(RuntimeError, match="FrameTooLarge"):
        decoder.feed(b"[]")
    with pytest.raises(RuntimeError, match="FrameTooLarge"):
        decoder.close()


def test_decoder_refuses_use_after_close() -> None:
    decoder = Decoder("auto", LIMIT)
    decoder.close()
    with pytest.raises(RuntimeError, match="closed"):
        decoder.feed(b"[]")


def test_unknown_mode_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown framing mode"):
        Decoder("lines", LIMIT)  # type: ignore[arg-type]


# -- preview --------------------------------------------------------------------


def test_preview_escapes_newlines_and_control_characters() -> None:
    assert preview(b"line one\nline two\r\n\tend\x00\x1b[31m\x7f") == (
        "line one\\nline two\\r\\n\\tend\\x00\\x1b[31m\\x7f"
    )


def test_preview_escapes_unicode_line_separators_but_keeps_printable_text() -> None:
    assert preview("café € 😀 a\u2028b\u0085c".encode()) == "café € 😀 a\\u2028b\\x85c"


def test_preview_shows_invalid_bytes_as_hex() -> None:
    assert preview(b"ok \xff\xfe") == "ok \\xff\\xfe"


def test_preview_truncates_with_marker() -> None:
    assert preview(b"a" * 200) == "a" * 120 + "…(+80 bytes)"
    assert preview(b"abcdef", limit=4) == "abcd…(+2 bytes)"
    assert preview(b"abcd", limit=4) == "abcd"
    assert preview(b"") == ""


def test_preview_cut_inside_a_character_stays_one_line() -> None:
    assert preview("ab€".encode(), limit=3) == "ab\\xe2…(+2 bytes)"


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=200))
def test_preview_is_always_one_printable_line(data: bytes, limit: int) -> None:
    text = preview(data, limit)
    assert text.replace("…", "").isprintable()
    assert "\n" not in text
    assert "\r" not in text


# -- properties: a chunk boundary anywhere gives the same result ------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(
        alphabet=st.sampled_from('{}[]"\\ \n\t/éé€😀\x00\u2028ab') | st.characters(codec="utf-8")
    )
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


def ndjson(docs: list[Any], ensure_ascii: bool) -> bytes:
    return b"".join(json.dumps(d, ensure_ascii=ensure_ascii).encode() + b"\n" for d in docs)


def compact(docs: list[Any], ensure_ascii: bool) -> bytes:
    return b"".join(
        json.dumps(d, ensure_ascii=ensure_ascii, separators=(",", ":")).encode() for d in docs
    )


def pretty(docs: list[Any], ensure_ascii: bool) -> bytes:
    return b"\n".join(json.dumps(d, ensure_ascii=ensure_ascii, indent=2).encode() for d in docs)


def length(docs: list[Any], ensure_ascii: bool) -> bytes:
    return length_prefixed(*(json.dumps(d, ensure_ascii=ensure_ascii).encode() for d in docs))


ENCODINGS: dict[str, Callable[[list[Any], bool], bytes]] = {
    "ndjson": ndjson,
    "compact": compact,
    "pretty": pretty,
    "length": length,
}


def splits_of(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """Any cutting of ``data`` into chunks, biased towards many small ones."""
    points = st.lists(st.integers(min_value=0, max_value=len(data)), max_size=40)
    return points.map(lambda p: cut(data, p)) | st.integers(1, 8).map(lambda n: every(data, n))


@pytest.mark.parametrize("encoding", ENCODINGS)
@given(docs=st.lists(json_objects, max_size=5), ensure_ascii=st.booleans(), data=st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_split_gives_the_same_documents(
    encoding: str, docs: list[Any], ensure_ascii: bool, data: st.DataObject
) -> None:
    """NDJSON, concatenated, pretty-printed and length-prefixed (auto-detected) streams."""
    stream = ENCODINGS[encoding](docs, ensure_ascii)
    whole = decode([stream])
    assert values(whole) == docs
    assert decode(data.draw(splits_of(stream), label="chunks")) == whole


garbage_lines = st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")) | st.sampled_from(
    [b"hello world", b"}", b"{", b'{"a": nope}', b"\xff\xfe", b'"', b"\\", b"[1,2", b" "]
)
line_items = st.lists(
    json_objects.map(lambda d: json.dumps(d, ensure_ascii=False).encode()) | garbage_lines,
    max_size=8,
)


@pytest.mark.parametrize("mode", ["newline", "auto"])
@given(lines=line_items, eol=st.sampled_from([b"\n", b"\r\n"]), data=st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_split_gives_the_same_frames_with_rejects_mixed_in(
    mode: Framing, lines: list[bytes], eol: bytes, data: st.DataObject
) -> None:
    """Documents and junk lines: the same Documents and Rejecteds whatever the chunking."""
    stream = b"\n" + eol.join(lines)  # the leading newline keeps auto mode on JSON text
    whole = decode([stream], mode)
    assert decode(data.draw(splits_of(stream), label="chunks"), mode) == whole
    if mode == "newline":
        assert len(whole) == sum(1 for line in lines if line.strip(b" \t\r"))


def run_until_error(chunks: Iterable[bytes], mode: Framing, limit: int) -> tuple[list[Frame], bool]:
    """Frames returned before FrameTooLarge (if any), and whether it was raised."""
    decoder = Decoder(mode, limit)
    frames: list[Frame] = []
    try:
        for chunk in chunks:
            frames += decoder.feed(chunk)
        frames += decoder.close()
    except FrameTooLarge:
        return frames, True
    return frames, False


fragments = st.sampled_from(
    [
        *(b"{", b"}", b"[", b"]", b'"', b"\\", b'\\"', b"\n", b"\r\n", b" ", b":", b",", b"1"),
        *(b"null", b"hello", b"\xff", "€".encode(), b'{"a":"}"}', b'[1,"]"]', b"\x00"),
    ]
) | st.binary(max_size=4)


@pytest.mark.parametrize("mode", MODES)
@given(
    parts=st.lists(fragments, max_size=40),
    limit=st.sampled_from([8, 32, LIMIT]),
    data=st.data(),
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_bytes_any_split_same_outcome(
    mode: Framing, parts: list[bytes], limit: int, data: st.DataObject
) -> None:
    """Arbitrary byte soup: chunking never changes the frames or whether the limit trips.

    When the limit trips, a finer chunking may have returned some frames
    first; those are always a prefix of what byte-at-a-time feeding returns.
    """
    stream = b"".join(parts)
    whole, whole_raised = run_until_error([stream], mode, limit)
    finest, finest_raised = run_until_error(every(stream, 1), mode, limit)
    split, split_raised = run_until_error(data.draw(splits_of(stream), label="chunks"), mode, limit)
    assert whole_raised == finest_raised == split_raised
    if whole_raised:
        assert split == finest[: len(split)]
    else:
        assert whole == finest == split


FEED_EACH_INPUTS = [
    ("auto", CLASSIC + b"\n" + CLASSIC + b"\n" + b"nope\n" + CLASSIC + b"\n"),
    ("auto", CLASSIC + GO_PRETTY + b'{"cut":'),
    ("auto", length_prefixed(CLASSIC, b"", b"{bad")),
    ("newline", CLASSIC + b"\r\n{bad\n" + CLASSIC + b"\n"),
    ("eof", CLASSIC),
]


@pytest.mark.parametrize(("mode", "data"), FEED_EACH_INPUTS)
@pytest.mark.parametrize("size", [1, 7, 100, 1 << 16])
def test_feed_each_emits_what_feed_returns(mode: Framing, data: bytes, size: int) -> None:
    """The same frames, in the same order, whatever the chunks."""
    listed, each = Decoder(mode, LIMIT), Decoder(mode, LIMIT)
    emitted: list[Frame] = []
    expected: list[Frame] = []
    for chunk in every(data, size):
        expected += listed.feed(chunk)
        each.feed_each(chunk, emitted.append)
    assert emitted == expected
    assert each.close() == listed.close()


def test_feed_each_hands_each_document_on_before_it_decodes_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reader that handles each frame as it comes never holds a chunk's documents at once."""
    steps: list[str] = []
    real = jsontext.loads_utf8

    def loads_utf8(data: bytes | bytearray, text: str) -> Any:
        steps.append("decoded")
        return real(data, text)

    monkeypatch.setattr(framing, "loads_utf8", loads_utf8)
    Decoder("auto", LIMIT).feed_each(
        CLASSIC + b"\n" + CLASSIC + b"\n" + CLASSIC, lambda frame: steps.append("emitted")
    )
    assert steps == ["decoded", "emitted"] * 3


def test_feed_each_past_the_limit_has_emitted_the_frames_before() -> None:
    """The oversized frame raises; the frames before it were emitted, none ride on the error."""
    emitted: list[Frame] = []
    decoder = Decoder("auto", len(CLASSIC))
    with pytest.raises(FrameTooLarge) as raised:
        decoder.feed_each(
            CLASSIC + b"\n" + CLASSIC + b" " * 3 + b"[" + CLASSIC + b"]\n", emitted.append
        )
    assert values(emitted) == [json.loads(CLASSIC)] * 2
    assert raised.value.frames == []
    with pytest.raises(RuntimeError):
        decoder.feed_each(b"{}", emitted.append)
