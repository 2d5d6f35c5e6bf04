"""HipChat's request rules (pure): field types, lengths, enumerations, required fields.

Each rule raises :class:`Reject` carrying the 400 HipChat gave for it;
section numbers (§) and source ids (S…) point into ``docs/hipchat-api.md``
(v1: §3, v2 notification and card: §4, room names: §5, open questions: §11).
Cards are checked against :data:`~hipchatd.emulator.cards.CARD_SCHEMA` by
:func:`check_schema`; an error names the card path it found (``field`` is
e.g. ``card.attributes[2].label``) *[inferred: HipChat's path spelling]*.
Validation messages other than the two observed ones (notify type, colour
enumeration) follow the wording of the same schema validator, whose templates
those two messages match ("Length of value ... must be less than or equal to
...", "Required field '...' is missing").
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl

from hipchatd.emulator.cards import CARD_HTML_TAGS, CARD_SCHEMA, disallowed_tag, holds_html
from hipchatd.emulator.wire import ApiError, Json, py2_repr

COLORS = ("yellow", "green", "red", "purple", "gray", "random")  # §4.1, order as in S37
MESSAGE_FORMATS = ("html", "text")
V2_MESSAGE_MAX = 10_000  # §4.1
V2_ROOM_MESSAGE_MAX = 1_000  # §7, send_message
V2_FROM_MAX = 64  # §11 q1 default
V2_FROM_MAX_STRICT = 25  # §11 q1 strict mode
V1_FROM_MAX = 15  # §11 q2: 1-15
V1_MESSAGE_MAX = 10_000  # §3.1
ATTACH_TO_MAX = 36  # §4.1
ROOM_PATH_MAX = 100  # §5: the path value is 1-100 characters
ROOM_NAME_MAX = 50  # §5: names are at most 50 characters when created
HISTORY_DEFAULT = 75  # §13, inferred
HISTORY_MAX = 1000
#: Levels of arrays and objects a v2 body may nest. A notification nests 6
#: (body, card, attributes, attribute, value, icon); a deeper body is refused
#: before any field is read, so an error never echoes deep junk. The
#: emulator's own bound *[inferred]*: HipChat's is unknown.
BODY_NESTING_MAX = 32


@dataclass(frozen=True, slots=True)
class Rules:
    """The switches between HipChat's behaviours where the record differs (§11)."""

    #: v2 ``from`` is at most 25 characters instead of 64 (§11 q1)
    strict_from_25: bool = False
    #: ``notify`` may be the strings "true"/"false" (§11 q3)
    lenient_notify: bool = False
    #: v2 form bodies are parsed instead of refused (§11 q4)
    parse_form_v2: bool = False

    @property
    def from_max(self) -> int:
        """The longest v2 ``from`` accepted."""
        return V2_FROM_MAX_STRICT if self.strict_from_25 else V2_FROM_MAX


class Reject(Exception):
    """Stops handling one request with an error answer."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def type_error(name: str, value: Json, expected: Json) -> Reject:
    """``name`` holds ``value``, which is not of type ``expected``.

    ``expected`` is a type name, or for a field that takes one of several
    shapes the list of their schema fragments (a card's ``description`` or
    ``icon``, §4.3).
    """
    # Observed shape (S39): expected_type, field, validation, value; S39b shows
    # a schema fragment there, printed in the message as Python 2 printed it.
    shown = f"'{expected}'" if isinstance(expected, str) else repr(expected)
    return Reject(
        ApiError(
            400,
            f"Value {py2_repr(value)} for field '{name}' is not of type {shown}",
            {"expected_type": expected, "field": name, "validation": "type", "value": value},
        )
    )


def enum_error(name: str, value: Json, options: Sequence[str]) -> Reject:
    """``name`` holds ``value``, which is none of ``options``."""
    # Observed shape (S37): field, options.
    return Reject(
        ApiError(
            400,
            f"Value {py2_repr(value)} for field '{name}' is not in the enumeration: "
            f"{list(options)!r}",
            {"field": name, "options": list(options)},
        )
    )


def length_error(name: str, value: str, bound: int, *, too_long: bool) -> Reject:
    """``name``'s ``value`` is longer (``too_long``) or shorter than ``bound`` allows."""
    kind, relation = ("maxLength", "less") if too_long else ("minLength", "greater")
    return Reject(
        ApiError(
            400,
            f"Length of value {py2_repr(value)} for field '{name}' must be "
            f"{relation} than or equal to {bound}",
            {"field": name, kind: bound, "validation": kind, "value": value},
        )
    )


def items_error(name: str, count: int, bound: int) -> Reject:
    """The list ``name`` has ``count`` items, more than ``bound``.

    The bound is the emulator's own (:data:`~hipchatd.emulator.cards.CARD_ATTRIBUTES_MAX`),
    so the answer is too: it states the count instead of echoing the list.
    """
    return Reject(
        ApiError(
            400,
            f"Field '{name}' has {count} items; at most {bound} are accepted",
            {"field": name, "maxItems": bound, "validation": "maxItems"},
        )
    )


def html_error(name: str, value: str, tag: str) -> Reject:
    """The card HTML in ``name`` uses ``tag``, which cards do not allow (§4.2) *[inferred]*."""
    allowed = sorted(CARD_HTML_TAGS)
    return Reject(
        ApiError(
            400,
            f"Value {py2_repr(value)} for field '{name}' uses the tag <{tag}>; "
            f"HTML in a card may use only {', '.join(allowed)}",
            {"field": name, "options": allowed, "validation": "html", "value": value},
        )
    )


def required_error(name: str) -> Reject:
    """The required field ``name`` is missing."""
    return Reject(
        ApiError(
            400,
            f"Required field '{name}' is missing",
            {"field": name, "validation": "required"},
        )
    )


def string(
    body: Mapping[str, Json],
    name: str,
    *,
    required: bool = False,
    min_len: int = 0,
    max_len: int | None = None,
) -> str | None:
    """``body[name]`` as a string within the length bounds; None when absent and optional."""
    if name not in body:
        if required:
            raise required_error(name)
        return None
    value = body[name]
    if not isinstance(value, str):
        raise type_error(name, value, "string")
    if len(value) < min_len:
        raise length_error(name, value, min_len, too_long=False)
    if max_len is not None and len(value) > max_len:
        raise length_error(name, value, max_len, too_long=True)
    return value


def enum(body: Mapping[str, Json], name: str, options: Sequence[str], default: str) -> str:
    """``body[name]``, one of ``options``; ``default`` when absent."""
    if name not in body:
        return default
    value = body[name]
    if not isinstance(value, str) or value not in options:
        raise enum_error(name, value, options)
    return value


def boolean(body: Mapping[str, Json], name: str, *, lenient: bool) -> bool:
    """``body[name]`` as a boolean, False when absent; ``lenient`` takes "true"/"false"."""
    if name not in body:
        return False
    value = body[name]
    if isinstance(value, bool):
        return value
    # §11 q3: lenient mode accepts what Grafana sent for years ("true").
    if lenient and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise type_error(name, value, "boolean")


def parse_v2_body(content_type: str, body: bytes, *, parse_form: bool) -> dict[str, Json]:
    """The v2 request body as a dict, or raise ``Reject`` with a 400.

    Form bodies are refused unless ``parse_form`` (§11 q4); then every value
    is a string, so ``notify`` fails its boolean check as it did on HipChat.
    An empty body is an empty object (the missing ``message`` is reported).
    A body nested deeper than :data:`BODY_NESTING_MAX` is refused.
    """
    media = content_type.partition(";")[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        if not parse_form:
            raise Reject(
                ApiError(400, "Form-encoded bodies are not accepted: send JSON (application/json)")
            )
        text = body.decode("utf-8", errors="replace")
        return dict(parse_qsl(text, keep_blank_values=True))
    if not body.strip():
        return {}
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Reject(ApiError(400, "The request body is not valid JSON")) from None
    except RecursionError:  # the parser gives up at the interpreter's recursion limit
        raise Reject(_TOO_DEEP) from None
    if not isinstance(data, dict):
        raise Reject(ApiError(400, "The request body must be a JSON object"))
    if _nests_deeper(data, BODY_NESTING_MAX):
        raise Reject(_TOO_DEEP)
    return data


_TOO_DEEP = ApiError(400, f"The request body nests more than {BODY_NESTING_MAX} levels")


def _nests_deeper(data: Json, bound: int) -> bool:
    """Whether ``data`` nests arrays and objects more than ``bound`` levels.

    One level at a time, never a recursion as deep as the junk: each pass
    gathers the containers one level down, so the whole walk touches each
    container once and costs less than parsing the body did.
    """
    level = [data]
    for _ in range(bound):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


@dataclass(frozen=True, slots=True)
class Notification:
    """A validated v2 room notification."""

    message: str
    message_format: str
    color: str
    notify: bool
    sender: str
    attach_to: str | None
    #: the card as sent, after :data:`~hipchatd.emulator.cards.CARD_SCHEMA` accepted it
    card: dict[str, Json] | None = None


def validate_notification(
    body: Mapping[str, Json], *, from_max: int, lenient_notify: bool
) -> Notification:
    """Apply the §4.1/§4.2 rules; raise ``Reject`` on the first violation.

    Unknown top-level fields are ignored (hipchat-rb sends a stray ``room_id``);
    a ``card`` of ``null`` is no card.
    """
    message = string(body, "message", required=True, min_len=1, max_len=V2_MESSAGE_MAX)
    message_format = enum(body, "message_format", MESSAGE_FORMATS, "html")
    color = enum(body, "color", COLORS, "yellow")
    notify = boolean(body, "notify", lenient=lenient_notify)
    sender = string(body, "from", max_len=from_max)
    attach_to = string(body, "attach_to", max_len=ATTACH_TO_MAX)
    card = body.get("card")
    if card is not None:
        check_schema(CARD_SCHEMA, card, "card")
    assert message is not None
    return Notification(message, message_format, color, notify, sender or "", attach_to, card)


_JSON_TYPES: Mapping[str, type | tuple[type, ...]] = {
    "string": str,
    "object": dict,
    "array": list,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
}


def _is_type(value: Json, name: str) -> bool:
    # A JSON true is a Python int too: only "boolean" takes it.
    if isinstance(value, bool):
        return name == "boolean"
    return isinstance(value, _JSON_TYPES[name])


def check_schema(schema: Mapping[str, Json], value: Json, field: str) -> None:
    """Check ``value`` (at path ``field``) against a fragment of a HipChat schema.

    The dialect of the card schema (:mod:`~hipchatd.emulator.cards`): ``type``
    (a name, or a list of alternative schemas), ``enum``, ``minLength`` and
    ``maxLength``, ``properties`` (required unless ``optional``), ``items`` and
    ``maxItems``; other keys are documentation. For a list of alternatives the
    one matching the value's JSON type is checked, so an error names the exact
    part (``card.description.value``) *[inferred: HipChat named only the
    outer field, §4.3]*; a value of no listed type gets a type error carrying the
    alternatives. The walk follows the schema, never the value, so its depth
    is the schema's; unknown keys are not looked at. Raises ``Reject`` on the
    first violation.
    """
    kind = schema.get("type")
    if isinstance(kind, list):
        for alternative in kind:
            if _is_type(value, alternative["type"]):
                check_schema(alternative, value, field)
                return
        raise type_error(field, value, kind)
    # As for `color`: a value outside an enumeration is an enumeration error, whatever its type.
    if "enum" in schema and value not in schema["enum"]:
        raise enum_error(field, value, schema["enum"])
    if kind is not None and not _is_type(value, kind):
        raise type_error(field, value, kind)
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise length_error(field, value, schema["minLength"], too_long=False)
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise length_error(field, value, schema["maxLength"], too_long=True)
    elif isinstance(value, dict):
        _check_properties(schema.get("properties", {}), value, field)
    elif isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise items_error(field, len(value), schema["maxItems"])
        if "items" in schema:
            for index, item in enumerate(value):
                check_schema(schema["items"], item, f"{field}[{index}]")


def _check_properties(
    properties: Mapping[str, Mapping[str, Json]], value: Mapping[str, Json], field: str
) -> None:
    for name, schema in properties.items():
        path = f"{field}.{name}"
        if name not in value:
            if not schema.get("optional", False):
                raise required_error(path)
            continue
        check_schema(schema, value[name], path)
        # §4.2: HTML in a card is limited to a few tags.
        if holds_html(path, value):
            tag = disallowed_tag(value[name])
            if tag is not None:
                raise html_error(path, value[name], tag)


@dataclass(frozen=True, slots=True)
class V1Message:
    """A validated v1 ``rooms/message`` call."""

    room_id: str
    sender: str
    message: str
    message_format: str
    color: str
    notify: bool


_V1_FROM_CHARS = re.compile(r"[\w -]+")


def validate_v1_message(params: Mapping[str, str]) -> V1Message:
    """Apply the §3.1 rules to merged query and form parameters.

    Empty values mean the default: python-simple-hipchat sends ``color=``.
    v1 messages other than the observed "From name ..." text are ours *[inferred]*.
    """
    room_id = params.get("room_id", "")
    if not room_id:
        raise Reject(ApiError(400, "Room ID is required."))
    sender = params.get("from", "")
    if not 1 <= len(sender) <= V1_FROM_MAX:
        raise Reject(ApiError(400, "From name must be between 1 and 15 characters."))  # S20
    # The doc allows letters, digits, -, _ and spaces; S21 implies non-ASCII letters.
    if not _V1_FROM_CHARS.fullmatch(sender):
        raise Reject(
            ApiError(400, "From name may only contain letters, numbers, -, _, and spaces.")
        )
    message = params.get("message", "")
    if not 1 <= len(message) <= V1_MESSAGE_MAX:
        raise Reject(ApiError(400, "Message must be between 1 and 10,000 characters."))
    message_format = params.get("message_format") or "html"
    if message_format not in MESSAGE_FORMATS:
        raise Reject(ApiError(400, "Invalid message_format. Valid values are html and text."))
    color = params.get("color") or "yellow"
    if color not in COLORS:
        raise Reject(
            ApiError(
                400, "Invalid color. Valid colors are yellow, green, red, purple, gray, random."
            )
        )
    notify = params.get("notify") or "0"
    if notify not in ("0", "1"):
        raise Reject(ApiError(400, "Notify must be 0 or 1."))
    return V1Message(room_id, sender, message, message_format, color, notify == "1")


def number(body: Mapping[str, Json], name: str) -> float | None:
    """``body[name]`` as a non-negative number, None when absent."""
    if name not in body:
        return None
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise type_error(name, value, "non-negative number")
    return float(value)


def count(body: Mapping[str, Json], name: str) -> int | None:
    """``body[name]`` as a non-negative integer, None when absent."""
    if name not in body:
        return None
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise type_error(name, value, "non-negative integer")
    return value


def history_limit(query: Mapping[str, str]) -> int:
    """``max-results``: a decimal integer up to :data:`HISTORY_MAX`."""
    raw = query.get("max-results", str(HISTORY_DEFAULT))
    if not raw.isascii() or not raw.isdigit():
        raise type_error("max-results", raw, "integer")
    limit = int(raw)
    if limit > HISTORY_MAX:
        raise Reject(
            ApiError(
                400,
                f"Value {limit} for field 'max-results' is greater than maximum value: "
                f"{HISTORY_MAX}",
                {"field": "max-results", "validation": "maximum", "value": limit},
            )
        )
    return limit


def history_date(value: str) -> float | None:
    """A v2 ``history`` ``date``: None for ``recent``, else the Unix time (UTC when zoneless)."""
    if value == "recent":
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise Reject(
            ApiError(
                400,
                f"Value {py2_repr(value)} for field 'date' is not an ISO 8601 date or 'recent'",
                {"field": "date", "value": value},
            )
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
