"""Sensu Classic 1.x and Sensu Go (``core/v2``) events -> one immutable Event.

Pure and synchronous: no I/O, no trio. The shape decides the flavour:
Classic has top-level ``client`` and ``action``; Go has ``entity`` and
``check.metadata.name`` and no ``action``.

What is required and what is lenient:

- Required, with a precise EventError naming the key path when missing or of
  the wrong type: Classic ``client`` (object), ``client.name``, ``check``
  (object), ``check.name``, ``check.status`` (integer), ``action``; Go
  ``entity`` (object), ``entity.metadata.name``, ``check`` (object),
  ``check.metadata.name``, ``check.status`` (integer).
- Everything else is optional: missing, null or of the wrong type means the
  default. HipChat attributes carried by an event are event data, not
  configuration, so a bad value is ignored rather than rejected.

Where Classic-style attributes come from (``handle``, ``handle_when``,
``hipchat``, ``hipchat_room``, ``contact``/``contacts``, ``notification``,
``playbook``):

- Classic: the ``check`` and ``client`` objects themselves.
- Go: the check (entity) object, updated with the JSON object held in its
  ``sensu.io.json_attributes`` annotation, as sensu-translator writes it and
  sensu-plugin's ``map_go_event_into_ruby`` reads it. Then the hipchat plugin
  annotations ``sensu.io/plugins/hipchat/config/<key>`` win key by key:
  ``room``, ``notify``, ``username``, ``message_format``, ``contacts`` on the
  check and the entity; ``handle_when``, ``notification``, ``playbook`` on the
  check. ``playbook`` also reads a plain ``playbook`` check annotation first.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeGuard

from hipchatd.errors import EventError

__all__ = [
    "ANNOTATION_PREFIX",
    "JSON_ATTRIBUTES_ANNOTATION",
    "Action",
    "Event",
    "EventError",
    "HandleWhen",
    "MessageFormat",
    "Overrides",
    "Severity",
    "parse_event",
    "severity",
]

Action = Literal["create", "resolve", "flapping"]
MessageFormat = Literal["html", "text"]
Severity = Literal["ok", "warning", "critical", "unknown"]


@dataclass(frozen=True, slots=True)
class Overrides:
    """Per-check, per-client or per-contact HipChat attributes; ``None`` = not named."""

    room: tuple[str, ...] | None = None
    notify: bool | None = None
    username: str | None = None
    message_format: MessageFormat | None = None


#: Enterprise ``handle_when`` defaults: notify from the first occurrence, remind every 30 min.
DEFAULT_HANDLE_WHEN_OCCURRENCES = 1
DEFAULT_HANDLE_WHEN_RESET = 1800

#: sensu-plugin-sdk's override keyspace, ``sensu.io/plugins/<plugin>/config/<option>``.
ANNOTATION_PREFIX: Final = "sensu.io/plugins/hipchat/config/"
#: Where sensu-translator stores a Classic check's custom attributes (a JSON string).
JSON_ATTRIBUTES_ANNOTATION: Final = "sensu.io.json_attributes"
#: Sensu maps any status it does not know to "unknown"; 3 is that status.
UNKNOWN_STATUS: Final = 3

#: Sensu's severity of each status it names; every other status is "unknown".
_SEVERITIES: Final[dict[int, Severity]] = {0: "ok", 1: "warning", 2: "critical"}

_CLASSIC: Final = "Sensu Classic"
_GO: Final = "Sensu Go"
_ACTIONS: Final[tuple[Action, ...]] = ("create", "resolve", "flapping")
_FORMATS: Final[tuple[MessageFormat, ...]] = ("html", "text")
#: Classic history entries are strings such as "2"; anything else is not a status.
_NUMERIC = re.compile(r"\s*[+-]?[0-9]+\s*")
#: The whitespace json.loads skips around a document.
_JSON_BLANKS: Final = " \t\n\r"
#: Top-level keys listed in the "not a Sensu event" message; the rest are elided.
_MAX_KEYS_SHOWN = 12
#: Characters of each key shown in that message.
_MAX_KEY_CHARS = 40
_MISSING: Final = object()
#: Shared: it is frozen, and most checks and entities name no HipChat attributes.
_NO_OVERRIDES: Final = Overrides()
#: The only type a valid Go history status has; ``bool`` and ``float`` take the slow path.
_INT_ONLY: Final = frozenset({int})
#: Digits of the longest history entry read as a status: exit codes are 0-255, and
#: int() refuses a string over sys.get_int_max_str_digits() (4,300) with ValueError.
_MAX_STATUS_DIGITS: Final = 10
#: A lone UTF-16 surrogate: JSON's ``\ud800``-``\udfff`` escapes decode to one, and no
#: UTF-8 encoder (log output, SQLite, HTTP) accepts it.
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
#: Characters of the longest room or contact name an event may give: twice HipChat's
#: 50-character limit on room names. A longer string never names a room, and as a URL
#: path segment it could not even be sent.
MAX_NAME_CHARS: Final = 100

# sensu-plugin-sdk looks an option up lowercased first, then as written
# (``SetAnnotationValue``). Every option name here is lowercase, so both are one key.
_ROOM: Final = ANNOTATION_PREFIX + "room"
_NOTIFY: Final = ANNOTATION_PREFIX + "notify"
_USERNAME: Final = ANNOTATION_PREFIX + "username"
_MESSAGE_FORMAT: Final = ANNOTATION_PREFIX + "message_format"
_CONTACTS: Final = ANNOTATION_PREFIX + "contacts"
_HANDLE_WHEN: Final = ANNOTATION_PREFIX + "handle_when"
_NOTIFICATION: Final = ANNOTATION_PREFIX + "notification"
_PLAYBOOK: Final = ANNOTATION_PREFIX + "playbook"
#: Every annotation read from an entity; most events carry none of them (Slack's, labels ...).
_ENTITY_ANNOTATIONS: Final = frozenset(
    {JSON_ATTRIBUTES_ANNOTATION, _ROOM, _NOTIFY, _USERNAME, _MESSAGE_FORMAT, _CONTACTS}
)
#: Every annotation read from a check: the entity's, plus ``playbook`` (plain and plugin),
#: ``notification`` and ``handle_when``.
_CHECK_ANNOTATIONS: Final = _ENTITY_ANNOTATIONS | {
    "playbook",
    _PLAYBOOK,
    _NOTIFICATION,
    _HANDLE_WHEN,
}


@dataclass(frozen=True, slots=True)
class HandleWhen:
    """The check's ``handle_when`` attribute (Sensu Enterprise)."""

    occurrences: int = DEFAULT_HANDLE_WHEN_OCCURRENCES
    reset: int = DEFAULT_HANDLE_WHEN_RESET


#: Shared: it is frozen, and most checks have no ``handle_when``.
_DEFAULT_HANDLE_WHEN: Final = HandleWhen()


@dataclass(frozen=True, slots=True)
class Event:
    """One Sensu event, whichever version sent it."""

    #: the event ``id`` as sent; "" when absent (Go omits an empty id). Not an incident key.
    id: str
    flavor: Literal["classic", "go"]
    #: proxy ``check.source`` / ``check.proxy_entity_name`` if set, else client/entity name.
    source: str
    check: str
    status: int
    output: str
    notification: str | None
    playbook: str | None
    action: Action
    #: consecutive results with this status (Classic top-level, Go ``check.occurrences``).
    occurrences: int
    #: the highest ``occurrences`` of the incident; never below ``occurrences``.
    occurrences_watermark: int
    #: ``check.interval`` in seconds; None for cron checks or when absent.
    interval: int | None
    silenced: bool
    #: statuses, oldest first, including the current result.
    history: tuple[int, ...]
    #: Go namespace (``metadata.namespace`` or the entity's); None for Classic.
    namespace: str | None
    #: epoch seconds: the event's ``timestamp``, else ``check.executed``, else 0.0.
    timestamp: float
    #: ``check.handle`` (Go: the check or its json_attributes); False means "never handle".
    handle: bool
    handle_when: HandleWhen
    #: HipChat attributes named by the check (``check.hipchat``, ``hipchat_room``, annotations).
    check_overrides: Overrides
    #: HipChat attributes named by the client / entity.
    client_overrides: Overrides
    #: contact names from ``contact``/``contacts`` on the check, then the client, deduplicated.
    contacts: tuple[str, ...]

    @property
    def incident_key(self) -> tuple[str, str, str]:
        """(namespace, source, check): Go ids change every event, so incidents key by this."""
        return (self.namespace or "", self.source, self.check)


def severity(status: int) -> Severity:
    """Sensu's severity of a check status: 0 ok, 1 warning, 2 critical, anything else unknown."""
    return _SEVERITIES.get(status, "unknown")


def parse_event(document: Any) -> Event:
    """Build an Event from a decoded JSON document.

    Raises EventError with a specific message (what is missing or of the
    wrong type, at which key) when the document is not a Sensu event. No
    other exception escapes for any JSON-decodable input.
    """
    if not _is_mapping(document):
        raise EventError(f"not a Sensu event: expected a JSON object, got {_json_type(document)}")
    if "client" in document and "action" in document:
        return _parse_classic(document)
    if "entity" in document:
        return _parse_go(document)
    hint = ' ("client" is present but "action" is missing)' if "client" in document else ""
    raise EventError(
        'not a Sensu event: expected "client"+"action" (Sensu Classic) or '
        f'"entity"+"check.metadata.name" (Sensu Go); top-level keys: {_keys(document)}{hint}'
    )


# --- Sensu Classic ---------------------------------------------------------------------------


def _parse_classic(doc: Mapping[str, Any]) -> Event:
    client = _required_object(doc, "client", "client", _CLASSIC)
    check = _required_object(doc, "check", "check", _CLASSIC)
    client_name = _required_name(client, "name", "client.name", _CLASSIC)
    check_name = _required_name(check, "name", "check.name", _CLASSIC)
    status = _required_int(check, "status", "check.status", _CLASSIC)
    action = _classic_action(doc.get("action"))
    occurrences = _count(doc.get("occurrences"))
    contacts = _attribute_contacts(check) + _attribute_contacts(client)
    return Event(
        id=_string(doc.get("id")),
        flavor="classic",
        source=_text(check.get("source")) or client_name,
        check=check_name,
        status=status,
        output=_string(check.get("output")),
        notification=_text(check.get("notification")),
        playbook=_text(check.get("playbook")),
        action=action,
        occurrences=occurrences,
        occurrences_watermark=_watermark(doc.get("occurrences_watermark"), occurrences),
        interval=_interval(check.get("interval")),
        silenced=doc.get("silenced") is True,
        history=_classic_history(check.get("history")),
        namespace=None,
        timestamp=_timestamp(doc.get("timestamp"), check.get("executed")),
        handle=check.get("handle") is not False,
        handle_when=_handle_when(check.get("handle_when")),
        check_overrides=_attribute_overrides(check),
        client_overrides=_attribute_overrides(client),
        contacts=_unique(contacts) if contacts else (),
    )


def _classic_action(value: object) -> Action:
    for action in _ACTIONS:
        if value == action:
            return action
    # Cut a long value: the message is logged, and the document is not ours to echo.
    got = json.dumps(value[:40]) if isinstance(value, str) else _json_type(value)
    raise EventError(
        f'{_CLASSIC} event: action: expected one of "create", "resolve", "flapping", got {got}'
    )


def _classic_history(value: object) -> tuple[int, ...]:
    """Classic history is a list of status strings; a non-number is unknown (3)."""
    if not isinstance(value, list):
        return ()
    # ASCII digits are what _NUMERIC matches with no sign or blanks: the usual entry.
    return tuple(
        [
            int(entry)
            if type(entry) is str
            and entry.isascii()
            and entry.isdigit()
            and len(entry) <= _MAX_STATUS_DIGITS
            else _classic_status(entry)
            for entry in value
        ]
    )


def _classic_status(entry: object) -> int:
    if _is_int(entry):
        return entry
    if isinstance(entry, str) and len(entry) <= _MAX_STATUS_DIGITS and _NUMERIC.fullmatch(entry):
        return int(entry)
    return UNKNOWN_STATUS


# --- Sensu Go --------------------------------------------------------------------------------


def _parse_go(doc: Mapping[str, Any]) -> Event:
    entity = _required_object(doc, "entity", "entity", _GO)
    entity_meta = _required_object(entity, "metadata", "entity.metadata", _GO)
    entity_name = _required_name(entity_meta, "name", "entity.metadata.name", _GO)
    if doc.get("check") is None:
        kind = " (metrics-only event)" if doc.get("metrics") is not None else ""
        raise EventError(f'{_GO} event for entity "{entity_name}" has no check{kind}')
    check = _required_object(doc, "check", "check", _GO)
    check_meta = _required_object(check, "metadata", "check.metadata", _GO)
    check_name = _required_name(check_meta, "name", "check.metadata.name", _GO)
    status = _required_int(check, "status", "check.status", _GO)
    history = _go_history(check.get("history"))
    occurrences = _count(check.get("occurrences"))

    check_ann = _read_annotations(check_meta, _CHECK_ANNOTATIONS)
    if check_ann is None:
        check_attrs = check
        notification = _text(check.get("notification"))
        playbook = _text(check.get("playbook"))
        handle_when = _handle_when(check.get("handle_when"))
        check_overrides = _attribute_overrides(check)
        check_contacts = _attribute_contacts(check)
    else:
        check_attrs = _with_json_attributes(check, check_ann)
        notification = _annotation(check_ann, _NOTIFICATION) or _text(
            check_attrs.get("notification")
        )
        playbook = (
            _annotation(check_ann, "playbook")
            or _annotation(check_ann, _PLAYBOOK)
            or _text(check_attrs.get("playbook"))
        )
        handle_when_value = _json_value(_annotation(check_ann, _HANDLE_WHEN), "{")
        handle_when = _handle_when(
            handle_when_value if _is_mapping(handle_when_value) else check_attrs.get("handle_when")
        )
        check_overrides = _annotation_overrides(check_ann, _attribute_overrides(check_attrs))
        check_contacts = _annotation_contacts(check_ann) + _attribute_contacts(check_attrs)

    entity_ann = _read_annotations(entity_meta, _ENTITY_ANNOTATIONS)
    if entity_ann is None:
        client_overrides = _attribute_overrides(entity)
        entity_contacts = _attribute_contacts(entity)
    else:
        entity_attrs = _with_json_attributes(entity, entity_ann)
        client_overrides = _annotation_overrides(entity_ann, _attribute_overrides(entity_attrs))
        entity_contacts = _annotation_contacts(entity_ann) + _attribute_contacts(entity_attrs)

    contacts = check_contacts + entity_contacts
    silenced_ids = check.get("silenced")
    return Event(
        id=_string(doc.get("id")),
        flavor="go",
        source=_text(check.get("proxy_entity_name")) or entity_name,
        check=check_name,
        status=status,
        output=_string(check.get("output")),
        notification=notification,
        playbook=playbook,
        action=_go_action(check.get("state"), status, history),
        occurrences=occurrences,
        occurrences_watermark=_watermark(check.get("occurrences_watermark"), occurrences),
        interval=_interval(check.get("interval")),
        silenced=check.get("is_silenced") is True
        or (isinstance(silenced_ids, list) and len(silenced_ids) > 0),
        history=history,
        namespace=_go_namespace(doc, entity_meta, check_meta),
        timestamp=_timestamp(doc.get("timestamp"), check.get("executed")),
        handle=check_attrs.get("handle") is not False,
        handle_when=handle_when,
        check_overrides=check_overrides,
        client_overrides=client_overrides,
        contacts=_unique(contacts) if contacts else (),
    )


def _go_history(value: object) -> tuple[int, ...]:
    """Go history is a list of ``{status, executed}``; a malformed entry is unknown (3)."""
    if not isinstance(value, list):
        return ()
    # Nearly every history is well-formed: read it in one pass, check the types once.
    try:
        statuses = tuple([entry["status"] for entry in value if type(entry) is dict])
    except KeyError:
        pass
    else:
        if len(statuses) == len(value) and _INT_ONLY.issuperset(map(type, statuses)):
            return statuses
    return tuple([_go_status(entry) for entry in value])


def _go_status(entry: object) -> int:
    status = entry.get("status") if _is_mapping(entry) else None
    return status if _is_int(status) else UNKNOWN_STATUS


def _go_action(state: object, status: int, history: tuple[int, ...]) -> Action:
    """Derive the Classic action the way Sensu Go's filter helpers do (core ``v2/event.go``).

    ``state == "passing"`` is not a resolution: every OK result passes. A
    resolution is an OK whose previous result (``history[-2]``; the current
    result is already ``history[-1]``) was not OK. Any other OK stays
    ``create`` with status 0, for the filters to drop.
    """
    if state == "flapping":
        return "flapping"
    if status == 0 and len(history) >= 2 and history[-2] != 0:
        return "resolve"
    return "create"


def _go_namespace(
    doc: Mapping[str, Any], entity_meta: Mapping[str, Any], check_meta: Mapping[str, Any]
) -> str:
    # Old Go versions send ``metadata: {}``; the entity and check carry it too.
    top = doc.get("metadata")
    if _is_mapping(top) and (text := _text(top.get("namespace"))):
        return text
    return _text(entity_meta.get("namespace")) or _text(check_meta.get("namespace")) or "default"


def _read_annotations(
    metadata: Mapping[str, Any], wanted: frozenset[str]
) -> Mapping[str, Any] | None:
    """``metadata.annotations`` if it holds any key in ``wanted``, else None.

    Values are not checked here: read them with :func:`_annotation`.
    """
    annotations = metadata.get("annotations")
    if _is_mapping(annotations) and not annotations.keys().isdisjoint(wanted):
        return annotations
    return None


def _annotation(annotations: Mapping[str, Any], key: str) -> str | None:
    """The annotation ``key``; a value that is not a string, or is empty, counts as absent."""
    value = annotations.get(key)
    return _utf8(value) if isinstance(value, str) and value else None


def _with_json_attributes(
    obj: Mapping[str, Any], annotations: Mapping[str, Any]
) -> Mapping[str, Any]:
    """``obj`` updated with its ``sensu.io.json_attributes`` object, as sensu-plugin merges it."""
    extra = _json_value(_annotation(annotations, JSON_ATTRIBUTES_ANNOTATION), "{")
    if not _is_mapping(extra):
        return obj
    return {**obj, **extra}


def _annotation_overrides(annotations: Mapping[str, Any], base: Overrides) -> Overrides:
    """``base`` with each key an annotation names (and that parses) replaced."""
    room = _annotation(annotations, _ROOM)
    notify_raw = _annotation(annotations, _NOTIFY)
    username = _annotation(annotations, _USERNAME)
    message_format_raw = _annotation(annotations, _MESSAGE_FORMAT)
    if room is None and notify_raw is None and username is None and message_format_raw is None:
        return base
    notify = _json_bool(notify_raw)
    rooms = _strings(_list_value(room)) if room is not None else None
    return Overrides(
        room=rooms if rooms is not None else base.room,
        notify=notify if notify is not None else base.notify,
        username=username or base.username,
        message_format=_message_format(message_format_raw) or base.message_format,
    )


def _annotation_contacts(annotations: Mapping[str, Any]) -> tuple[str, ...]:
    raw = _annotation(annotations, _CONTACTS)
    return (_strings(_list_value(raw)) or ()) if raw is not None else ()


def _list_value(raw: str) -> object:
    """A list option's annotation: a JSON array is a list, anything else one string."""
    value = _json_value(raw, "[")
    return value if isinstance(value, list) else raw


def _json_bool(raw: str | None) -> bool | None:
    """``raw`` decoded as a JSON boolean, or None when absent or anything else."""
    if raw is None:
        return None
    # What json.loads accepts as a boolean, without paying for its error on "yes" or "1".
    literal = raw.strip(_JSON_BLANKS)
    if literal == "true":
        return True
    if literal == "false":
        return False
    return None


def _json_value(raw: str | None, opener: str) -> object:
    """``raw`` decoded as JSON if it starts with ``opener`` ("[" or "{"), else None.

    Annotation values are mostly plain words: checking the first character
    skips json.loads, and its ValueError, for those.
    """
    if raw is None or not raw.lstrip(_JSON_BLANKS).startswith(opener):
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


# --- Classic-style attributes (both flavours) ------------------------------------------------


def _attribute_overrides(attrs: Mapping[str, Any]) -> Overrides:
    """The ``hipchat`` object, with the community plugin's ``hipchat_room`` as a room fallback."""
    hipchat = attrs.get("hipchat")
    legacy_room = attrs.get("hipchat_room")
    if hipchat is None and legacy_room is None:
        return _NO_OVERRIDES
    if not _is_mapping(hipchat):
        return Overrides(room=_strings(legacy_room))
    notify = hipchat.get("notify")
    room = _strings(hipchat.get("room"))
    return Overrides(
        room=room if room is not None else _strings(legacy_room),
        notify=notify if isinstance(notify, bool) else None,
        username=_text(hipchat.get("username")),
        message_format=_message_format(hipchat.get("message_format")),
    )


def _attribute_contacts(attrs: Mapping[str, Any]) -> tuple[str, ...]:
    contact = attrs.get("contact")
    contacts = attrs.get("contacts")
    if contact is None and contacts is None:
        return ()
    return (_strings(contact) or ()) + (_strings(contacts) or ())


def _handle_when(value: object) -> HandleWhen:
    """``value`` read key by key if it is an object; bad keys keep their default."""
    if not _is_mapping(value):
        return _DEFAULT_HANDLE_WHEN
    occurrences = value.get("occurrences")
    reset = value.get("reset")
    return HandleWhen(
        occurrences=occurrences
        if _is_int(occurrences) and occurrences >= 1
        else DEFAULT_HANDLE_WHEN_OCCURRENCES,
        reset=reset if _is_int(reset) and reset >= 0 else DEFAULT_HANDLE_WHEN_RESET,
    )


def _message_format(value: object) -> MessageFormat | None:
    if isinstance(value, str):
        lowered = value.strip().lower()
        for fmt in _FORMATS:
            if lowered == fmt:
                return fmt
    return None


def _strings(value: object) -> tuple[str, ...] | None:
    """A string or a list of strings, stripped and deduplicated; None if it names nothing.

    Integers are accepted as strings: HipChat room ids are numbers. A name
    longer than MAX_NAME_CHARS is ignored like any other bad value.
    """
    if value is None:
        return None
    if type(value) is str:
        name = _utf8(value.strip())
        return (name,) if name and len(name) <= MAX_NAME_CHARS else None
    items = value if isinstance(value, list) else [value]
    names = [_utf8(str(item).strip()) for item in items if isinstance(item, str) or _is_int(item)]
    unique = _unique(name for name in names if name and len(name) <= MAX_NAME_CHARS)
    return unique or None


# --- small readers ---------------------------------------------------------------------------


def _is_mapping(value: object) -> TypeGuard[Mapping[Any, Any]]:
    """A JSON object: decoded JSON gives a dict, which skips the slower ABC check."""
    return type(value) is dict or isinstance(value, Mapping)


def _required_object(
    parent: Mapping[str, Any], key: str, path: str, flavor: str
) -> Mapping[str, Any]:
    value = parent.get(key, _MISSING)
    if not _is_mapping(value):
        raise _wrong(flavor, path, "an object", value)
    return value


def _required_name(parent: Mapping[str, Any], key: str, path: str, flavor: str) -> str:
    value = parent.get(key, _MISSING)
    if not isinstance(value, str) or not value:
        raise _wrong(flavor, path, "a non-empty string", value)
    return _utf8(value)


def _required_int(parent: Mapping[str, Any], key: str, path: str, flavor: str) -> int:
    value = parent.get(key, _MISSING)
    if not _is_int(value):
        raise _wrong(flavor, path, "an integer", value)
    return value


def _wrong(flavor: str, path: str, expected: str, value: object) -> EventError:
    if value is _MISSING:
        return EventError(f"{flavor} event: {path} is missing (expected {expected})")
    got = "an empty string" if value == "" else _json_type(value)
    return EventError(f"{flavor} event: {path}: expected {expected}, got {got}")


def _is_int(value: object) -> TypeGuard[int]:
    """A JSON integer: ``bool`` is an ``int`` subclass in Python, and not one."""
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def _count(value: object) -> int:
    """An occurrence count: a non-negative integer, else 1 (sensu-plugin's default)."""
    return value if _is_int(value) and value >= 0 else 1


def _watermark(value: object, occurrences: int) -> int:
    # Go before 5.9 sent a broken watermark (0); it can never be below the current run.
    if _is_int(value):
        return max(value, occurrences)
    return occurrences


def _interval(value: object) -> int | None:
    return value if _is_int(value) and value > 0 else None


def _timestamp(*candidates: object) -> float:
    for value in candidates:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer JSON allows but no clock reaches
                continue
            if math.isfinite(number):
                return number
    return 0.0


def _string(value: object) -> str:
    return _utf8(value) if isinstance(value, str) else ""


def _text(value: object) -> str | None:
    """A non-empty string, else None."""
    return _utf8(value) if isinstance(value, str) and value else None


def _utf8(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD, as Go's encoding/json decodes it.

    Every string an Event holds goes through here, so logging, the spool
    and HipChat never meet a character UTF-8 cannot encode.
    """
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _keys(document: Mapping[Any, Any]) -> str:
    # A key is the sender's text: cut it, or one key could make the log line a megabyte.
    keys = sorted(_cut(str(key)) for key in document)
    if not keys:
        return "(none)"
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    if len(keys) > _MAX_KEYS_SHOWN:
        shown += f", … ({len(keys) - _MAX_KEYS_SHOWN} more)"
    return shown


def _cut(key: str) -> str:
    return key if len(key) <= _MAX_KEY_CHARS else f"{key[:_MAX_KEY_CHARS]}…"
