"""HipChat's wire shapes (pure): request targets, v1 and v2 bodies, error bodies.

v2 bodies are pretty-printed JSON (2-space indent, sorted keys) and errors
``{"error": {"code", "message", "type", ...}}``; v1 bodies are compact JSON
with ``/`` escaped as ``\\/``, errors with keys in the order code, type,
message, or XML with ``format=xml`` (docs/hipchat-api.md §3.2, §4.3).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote
from xml.sax.saxutils import escape as xml_escape

from hipchatd.http11 import Response, status_phrase

Api = Literal["v1", "v2"]
Json = Any

JSON = "application/json"
XML = "application/xml; charset=utf-8"


@dataclass(frozen=True, slots=True)
class ApiError:
    """An error answer before it is given a v1 or v2 shape."""

    status: int
    message: str
    #: Extra keys for the v2 body (validation details), sorted in with the rest.
    extra: Mapping[str, Json] = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()


def py2_repr(value: Json) -> str:
    """``repr`` as the Python 2 server printed JSON values: ``u'Red'``, ``True``, ``None``."""
    if isinstance(value, str):
        return "u" + ascii(value)
    if isinstance(value, list):
        return "[" + ", ".join(py2_repr(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{py2_repr(k)}: {py2_repr(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    return repr(value)


def v2_json(obj: Json) -> bytes:
    """A v2 JSON body: 2-space indent, sorted keys (§4.3)."""
    return json.dumps(obj, indent=2, sort_keys=True).encode()


def v2_error_body(error: ApiError) -> bytes:
    """``{"error": {"code", "message", "type", ...extra}}``, pretty and sorted (§4.3)."""
    inner = dict(error.extra)
    # HipChat's error ``type`` is the status's standard reason phrase.
    inner.update(code=error.status, message=error.message, type=status_phrase(error.status))
    return v2_json({"error": inner})


def v1_json(obj: Json) -> bytes:
    """A v1 JSON body: compact, ``/`` escaped as ``\\/`` like PHP's json_encode (§3.2).

    Replacing ``/`` in the serialised text is safe: JSON has no ``/`` outside strings.
    """
    return json.dumps(obj, separators=(",", ":")).replace("/", "\\/").encode()


def v1_error_body(error: ApiError) -> bytes:
    """The compact v1 error, keys in the order code, type, message (§3.2)."""
    return v1_json({"error": _v1_error(error)})


def _v1_error(error: ApiError) -> dict[str, Json]:
    return {"code": error.status, "type": status_phrase(error.status), "message": error.message}


def compact_json(obj: Json) -> bytes:
    """Plain compact JSON, as the ``/_emulator/*`` control endpoints answer."""
    return json.dumps(obj, separators=(",", ":")).encode()


def _xml_element(name: str, value: Json) -> str:
    if isinstance(value, dict):
        inner = "".join(_xml_element(k, v) for k, v in value.items())
    elif isinstance(value, list):
        child = name[:-1] if name.endswith("s") else "item"
        inner = "".join(_xml_element(child, item) for item in value)
    elif isinstance(value, bool):
        inner = "true" if value else "false"
    elif value is None:
        inner = ""
    else:
        inner = xml_escape(str(value))
    return f"<{name}>{inner}</{name}>"


def v1_xml(obj: Mapping[str, Json]) -> bytes:
    """A v1 ``format=xml`` body *[inferred]*: ``{"rooms": [...]}`` -> ``<rooms><room>...``.

    A single key holding a container becomes the root; anything else is
    wrapped in ``<response>``, e.g. ``<response><status>sent</status></response>``.
    """
    if len(obj) == 1:
        ((key, value),) = obj.items()
        if isinstance(value, dict | list):
            root = _xml_element(key, value)
        else:
            root = _xml_element("response", dict(obj))
    else:
        root = _xml_element("response", dict(obj))
    return ('<?xml version="1.0" encoding="utf-8"?>\n' + root + "\n").encode()


def json_response(status: int, body: bytes) -> Response:
    """An answer with a JSON body."""
    return Response(status, body, JSON)


def error_response(api: Api, error: ApiError, *, xml: bool = False) -> Response:
    """``error`` in its API's shape: v2 pretty JSON, v1 compact JSON or, with ``xml``, v1 XML."""
    if api == "v2":
        response = json_response(error.status, v2_error_body(error))
    elif xml:
        response = Response(error.status, v1_xml({"error": _v1_error(error)}), XML)
    else:
        response = json_response(error.status, v1_error_body(error))
    response.headers.extend(error.headers)
    return response


def iso_time(ts: float) -> str:
    """A v2 timestamp: ISO 8601 in UTC with microseconds."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="microseconds")


def v1_time(ts: float) -> str:
    """A v1 timestamp: ISO 8601 in UTC to the second, offset without a colon."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S%z")


# --- request target ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A request target split before any decoding."""

    #: the raw path as sent, still percent-encoded
    path: str
    #: ``path`` split on ``/`` (leading slash dropped); segments are not decoded
    segments: tuple[str, ...]
    #: the query string decoded as form data (``+`` is a space here, as in any query)
    query: dict[str, str]

    @property
    def api(self) -> Api:
        """The API whose shapes answer this target: v1 under ``/v1/``, else v2."""
        return "v1" if self.segments[:1] == ("v1",) else "v2"

    @property
    def control(self) -> bool:
        """Whether this is a ``/_emulator/`` control endpoint."""
        return self.segments[:1] == ("_emulator",)


def split_target(raw: bytes) -> Target:
    """Split a raw request target into path segments and query parameters.

    The path is split on ``/`` *before* percent-decoding, so ``%2F`` stays
    inside its segment and ``//`` yields an empty segment (never collapsed).
    """
    text = raw.decode("latin-1")
    path, _, query = text.partition("?")
    segments = tuple(path[1:].split("/")) if path.startswith("/") else ()
    params = dict(parse_qsl(query, keep_blank_values=True, encoding="utf-8", errors="replace"))
    return Target(path=path, segments=segments, query=params)


def decode_segment(segment: str) -> str:
    """Percent-decode one path segment exactly once, as UTF-8; ``+`` stays ``+`` (§5)."""
    return unquote(segment, encoding="utf-8", errors="replace")
