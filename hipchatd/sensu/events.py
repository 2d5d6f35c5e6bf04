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

This module recognises the shape and reads it; the model it builds is
:mod:`hipchatd.sensu.model` (re-exported here, so callers import both from
one place), and the lenient value readers both shapes share are
:mod:`hipchatd.sensu.readers`.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Mapping
from typing import Any, Final

from hipchatd.errors import EventError
from hipchatd.jsontext import loads
from hipchatd.sensu.model import (
    UNKNOWN_STATUS,
    Action,
    BySeverity,
    Event,
    HandleWhen,
    MessageFormat,
    Overrides,
    Repeat,
    Severity,
    new_event,
    severity,
)
from hipchatd.sensu.readers import (
    ATTRIBUTE_KEYS,
    DEFAULT_HANDLE_WHEN,
    MAX_NAME_CHARS,
    NO_OVERRIDES,
    attribute_contacts,
    attribute_overrides,
    first_timestamp,
    interval_seconds,
    is_int,
    is_mapping,
    json_type,
    occurrence_count,
    read_dashboard_url,
    read_handle_when,
    read_mentions,
    read_message_format,
    read_names,
    read_notify,
    read_repeat,
    required_int,
    required_name,
    required_object,
    string_or_empty,
    text_or_none,
    unique,
    utf8,
    watermark,
)

__all__ = [
    "ANNOTATION_PREFIX",
    "JSON_ATTRIBUTES_ANNOTATION",
    "MAX_NAME_CHARS",
    "Action",
    "BySeverity",
    "Event",
    "EventError",
    "HandleWhen",
    "MessageFormat",
    "Overrides",
    "Repeat",
    "Severity",
    "parse_event",
    "severity",
]

#: sensu-plugin-sdk's override keyspace, ``sensu.io/plugins/<plugin>/config/<option>``.
ANNOTATION_PREFIX: Final = "sensu.io/plugins/hipchat/config/"
#: Where sensu-translator stores a Classic check's custom attributes (a JSON string).
JSON_ATTRIBUTES_ANNOTATION: Final = "sensu.io.json_attributes"

#: Shared: most Go checks carry no Classic repeat attributes.
_NO_REPEAT: Final = Repeat()
_HANDLE_WHEN_REPEAT: Final = Repeat(handle_when_given=True)

#: Every key the parsers read from a check as Classic-style attributes, ``check.occurrences``
#: and ``check.refresh`` (Classic repeat attributes) aside.
_CHECK_ATTRIBUTE_KEYS: Final = ATTRIBUTE_KEYS | {"handle_when", "notification", "playbook"}

_NO_CONTACTS: Final[tuple[str, ...]] = ()

_CLASSIC: Final = "Sensu Classic"
_GO: Final = "Sensu Go"
_ACTIONS: Final[tuple[Action, ...]] = ("create", "resolve", "flapping")
#: Classic history entries are strings such as "2"; anything else is not a status.
_NUMERIC = re.compile(r"\s*[+-]?[0-9]+\s*")
#: The whitespace json.loads skips around a document.
_JSON_BLANKS: Final = " \t\n\r"
#: Top-level keys listed in the "not a Sensu event" message; the rest are elided.
_MAX_KEYS_SHOWN = 12
#: Characters of each key shown in that message.
_MAX_KEY_CHARS = 40
#: The only type a valid Go history status has; ``bool`` and ``float`` take the slow path.
_INT_ONLY: Final = frozenset({int})
_STATUS: Final = operator.itemgetter("status")
#: Digits of the longest history entry read as a status: exit codes are 0-255, and
#: int() refuses a string over sys.get_int_max_str_digits() (4,300) with ValueError.
_MAX_STATUS_DIGITS: Final = 10

# sensu-plugin-sdk looks an option up lowercased first, then as written
# (``SetAnnotationValue``). Every option name here is lowercase, so both are one key.
_ROOM: Final = ANNOTATION_PREFIX + "room"
_NOTIFY: Final = ANNOTATION_PREFIX + "notify"
_USERNAME: Final = ANNOTATION_PREFIX + "username"
_MESSAGE_FORMAT: Final = ANNOTATION_PREFIX + "message_format"
_MENTIONS: Final = ANNOTATION_PREFIX + "mentions"
_CARD: Final = ANNOTATION_PREFIX + "card"
_DASHBOARD_URL: Final = ANNOTATION_PREFIX + "dashboard_url"
_TEMPLATE: Final = ANNOTATION_PREFIX + "template"
_LEGACY_OCCURRENCES: Final = ANNOTATION_PREFIX + "legacy_occurrences"
#: The per-target keys an annotation may override, besides ``room``.
_OVERRIDE_ANNOTATIONS: Final = (
    _NOTIFY,
    _USERNAME,
    _MESSAGE_FORMAT,
    _MENTIONS,
    _CARD,
    _DASHBOARD_URL,
    _TEMPLATE,
    _LEGACY_OCCURRENCES,
)
_CONTACTS: Final = ANNOTATION_PREFIX + "contacts"
_HANDLE_WHEN: Final = ANNOTATION_PREFIX + "handle_when"
_NOTIFICATION: Final = ANNOTATION_PREFIX + "notification"
_PLAYBOOK: Final = ANNOTATION_PREFIX + "playbook"
#: Every annotation read from an entity; most events carry none of them (Slack's, labels ...).
_ENTITY_ANNOTATIONS: Final = frozenset(
    {JSON_ATTRIBUTES_ANNOTATION, _ROOM, _CONTACTS, *_OVERRIDE_ANNOTATIONS}
)
#: Every annotation read from a check: the entity's, plus ``playbook`` (plain and plugin),
#: ``notification`` and ``handle_when``.
_CHECK_ANNOTATIONS: Final = _ENTITY_ANNOTATIONS | {
    "playbook",
    _PLAYBOOK,
    _NOTIFICATION,
    _HANDLE_WHEN,
}


def parse_event(document: Any) -> Event:
    """Build an Event from a decoded JSON document.

    Raises EventError with a specific message (what is missing or of the
    wrong type, at which key) when the document is not a Sensu event. No
    other exception escapes for any JSON-decodable input.
    """
    if not is_mapping(document):
        raise EventError(f"not a Sensu event: expected a JSON object, got {json_type(document)}")
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
    client = required_object(doc, "client", "client", _CLASSIC)
    check = required_object(doc, "check", "check", _CLASSIC)
    client_name = required_name(client, "name", "client.name", _CLASSIC)
    check_name = required_name(check, "name", "check.name", _CLASSIC)
    status = required_int(check, "status", "check.status", _CLASSIC)
    action = _classic_action(doc.get("action"))
    occurrences = occurrence_count(doc.get("occurrences"))
    if check.keys().isdisjoint(_CHECK_ATTRIBUTE_KEYS):
        notification = playbook = None
        handle_when = DEFAULT_HANDLE_WHEN
        check_overrides, check_contacts = NO_OVERRIDES, _NO_CONTACTS
    else:
        notification = text_or_none(check.get("notification"))
        playbook = text_or_none(check.get("playbook"))
        handle_when = read_handle_when(check.get("handle_when"))
        check_overrides, check_contacts = _attributes(check)
    client_overrides, client_contacts = _attributes(client)
    contacts = check_contacts + client_contacts
    return new_event(
        id=string_or_empty(doc.get("id")),
        flavor="classic",
        source=text_or_none(check.get("source")) or client_name,
        check=check_name,
        status=status,
        output=string_or_empty(check.get("output")),
        notification=notification,
        playbook=playbook,
        action=action,
        occurrences=occurrences,
        occurrences_watermark=watermark(doc.get("occurrences_watermark"), occurrences),
        interval=interval_seconds(check.get("interval")),
        silenced=doc.get("silenced") is True,
        history=_classic_history(check.get("history")),
        namespace=None,
        timestamp=first_timestamp(doc.get("timestamp"), check.get("executed")),
        handle=check.get("handle") is not False,
        handle_when=handle_when,
        check_overrides=check_overrides,
        client_overrides=client_overrides,
        contacts=unique(contacts) if contacts else (),
        client=client_name,
        repeat=read_repeat(check, None),
    )


def _attributes(attrs: Mapping[str, Any]) -> tuple[Overrides, tuple[str, ...]]:
    """The HipChat attributes and the contacts ``attrs`` names; most objects name neither."""
    if attrs.keys().isdisjoint(ATTRIBUTE_KEYS):
        return NO_OVERRIDES, _NO_CONTACTS
    return attribute_overrides(attrs), attribute_contacts(attrs)


def _classic_action(value: object) -> Action:
    for action in _ACTIONS:
        if value == action:
            return action
    # Cut a long value: the message is logged, and the document is not ours to echo.
    got = json.dumps(value[:40]) if isinstance(value, str) else json_type(value)
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
    if is_int(entry):
        return entry
    if isinstance(entry, str) and len(entry) <= _MAX_STATUS_DIGITS and _NUMERIC.fullmatch(entry):
        return int(entry)
    return UNKNOWN_STATUS


# --- Sensu Go --------------------------------------------------------------------------------


def _parse_go(doc: Mapping[str, Any]) -> Event:
    entity = required_object(doc, "entity", "entity", _GO)
    entity_meta = required_object(entity, "metadata", "entity.metadata", _GO)
    entity_name = required_name(entity_meta, "name", "entity.metadata.name", _GO)
    if doc.get("check") is None:
        kind = " (metrics-only event)" if doc.get("metrics") is not None else ""
        raise EventError(f'{_GO} event for entity "{entity_name}" has no check{kind}')
    check = required_object(doc, "check", "check", _GO)
    check_meta = required_object(check, "metadata", "check.metadata", _GO)
    check_name = required_name(check_meta, "name", "check.metadata.name", _GO)
    status = required_int(check, "status", "check.status", _GO)
    history = _go_history(check.get("history"))
    occurrences = occurrence_count(check.get("occurrences"))

    check_ann = _read_annotations(check_meta, _CHECK_ANNOTATIONS)
    if check_ann is None and check.keys().isdisjoint(_CHECK_ATTRIBUTE_KEYS):
        check_attrs = check
        notification = playbook = None
        handle_when = DEFAULT_HANDLE_WHEN
        check_overrides, check_contacts = NO_OVERRIDES, _NO_CONTACTS
        repeat = _NO_REPEAT
    elif check_ann is None:
        check_attrs = check
        notification = text_or_none(check.get("notification"))
        playbook = text_or_none(check.get("playbook"))
        handle_when = read_handle_when(check.get("handle_when"))
        check_overrides, check_contacts = _attributes(check)
        repeat = _HANDLE_WHEN_REPEAT if is_mapping(check.get("handle_when")) else _NO_REPEAT
    else:
        extra = _json_attributes(check_ann)
        check_attrs = check if extra is None else {**check, **extra}
        notification = _annotation(check_ann, _NOTIFICATION) or text_or_none(
            check_attrs.get("notification")
        )
        playbook = (
            _annotation(check_ann, "playbook")
            or _annotation(check_ann, _PLAYBOOK)
            or text_or_none(check_attrs.get("playbook"))
        )
        handle_when_value = _json_value(_annotation(check_ann, _HANDLE_WHEN), "{")
        handle_when = read_handle_when(
            handle_when_value if is_mapping(handle_when_value) else check_attrs.get("handle_when")
        )
        # Go's own check.occurrences is a count: the threshold comes only from the
        # translated Classic attributes.
        repeat = read_repeat(
            {"handle_when": handle_when_value or check.get("handle_when")}, extra or {}
        )
        check_overrides = _annotation_overrides(check_ann, attribute_overrides(check_attrs))
        check_contacts = _annotation_contacts(check_ann) + attribute_contacts(check_attrs)

    entity_ann = _read_annotations(entity_meta, _ENTITY_ANNOTATIONS)
    if entity_ann is None:
        client_overrides, entity_contacts = _attributes(entity)
    else:
        entity_attrs = _with_json_attributes(entity, entity_ann)
        client_overrides = _annotation_overrides(entity_ann, attribute_overrides(entity_attrs))
        entity_contacts = _annotation_contacts(entity_ann) + attribute_contacts(entity_attrs)

    contacts = check_contacts + entity_contacts
    silenced_ids = check.get("silenced")
    return new_event(
        id=string_or_empty(doc.get("id")),
        flavor="go",
        source=text_or_none(check.get("proxy_entity_name")) or entity_name,
        check=check_name,
        status=status,
        output=string_or_empty(check.get("output")),
        notification=notification,
        playbook=playbook,
        action=_go_action(check.get("state"), status, history),
        occurrences=occurrences,
        occurrences_watermark=watermark(check.get("occurrences_watermark"), occurrences),
        interval=interval_seconds(check.get("interval")),
        silenced=check.get("is_silenced") is True
        or (isinstance(silenced_ids, list) and len(silenced_ids) > 0),
        history=history,
        namespace=_go_namespace(doc, entity_meta, check_meta),
        timestamp=first_timestamp(doc.get("timestamp"), check.get("executed")),
        handle=check_attrs.get("handle") is not False,
        handle_when=handle_when,
        check_overrides=check_overrides,
        client_overrides=client_overrides,
        contacts=unique(contacts) if contacts else (),
        client=entity_name,
        repeat=repeat,
    )


def _go_history(value: object) -> tuple[int, ...]:
    """Go history is a list of ``{status, executed}``; a malformed entry is unknown (3)."""
    if not isinstance(value, list):
        return ()
    # Nearly every history is well-formed: read it in one pass, check the types once. Of
    # the JSON types, only an object has a "status" (a list or a string raises TypeError).
    try:
        statuses = tuple(map(_STATUS, value))
    except (KeyError, TypeError):
        pass
    else:
        if _INT_ONLY.issuperset(map(type, statuses)):
            return statuses
    return tuple([_go_status(entry) for entry in value])


def _go_status(entry: object) -> int:
    status = entry.get("status") if is_mapping(entry) else None
    return status if is_int(status) else UNKNOWN_STATUS


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
    if is_mapping(top) and (text := text_or_none(top.get("namespace"))):
        return text
    return (
        text_or_none(entity_meta.get("namespace"))
        or text_or_none(check_meta.get("namespace"))
        or "default"
    )


def _read_annotations(
    metadata: Mapping[str, Any], wanted: frozenset[str]
) -> Mapping[str, Any] | None:
    """``metadata.annotations`` if it holds any key in ``wanted``, else None.

    Values are not checked here: read them with :func:`_annotation`.
    """
    annotations = metadata.get("annotations")
    if is_mapping(annotations) and not annotations.keys().isdisjoint(wanted):
        return annotations
    return None


def _annotation(annotations: Mapping[str, Any], key: str) -> str | None:
    """The annotation ``key``; a value that is not a string, or is empty, counts as absent."""
    value = annotations.get(key)
    return utf8(value) if isinstance(value, str) and value else None


def _json_attributes(annotations: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``sensu.io.json_attributes`` object, or None when absent or not an object."""
    extra = _json_value(_annotation(annotations, JSON_ATTRIBUTES_ANNOTATION), "{")
    return extra if is_mapping(extra) else None


def _with_json_attributes(
    obj: Mapping[str, Any], annotations: Mapping[str, Any]
) -> Mapping[str, Any]:
    """``obj`` updated with its ``sensu.io.json_attributes`` object, as sensu-plugin merges it."""
    extra = _json_attributes(annotations)
    return obj if extra is None else {**obj, **extra}


def _annotation_overrides(annotations: Mapping[str, Any], base: Overrides) -> Overrides:
    """``base`` with each key an annotation names (and that parses) replaced.

    Scalars are read as sensu-plugin-sdk reads them (``true``, a plain
    string); ``notify`` and ``mentions`` may also hold a JSON object by severity.
    """
    room = _annotation(annotations, _ROOM)
    raw = {key: _annotation(annotations, key) for key in _OVERRIDE_ANNOTATIONS}
    if room is None and not any(raw.values()):
        return base
    rooms = read_names(_list_value(room)) if room is not None else None
    notify_raw = raw[_NOTIFY]
    notify: bool | BySeverity[bool] | None = _json_bool(notify_raw)
    if notify is None:
        notify = read_notify(_json_value(notify_raw, "{"))
    card = _json_bool(raw[_CARD])
    legacy = _json_bool(raw[_LEGACY_OCCURRENCES])
    mentions = read_mentions(_json_value(raw[_MENTIONS], "{"))
    template = read_names(raw[_TEMPLATE])
    return Overrides(
        room=rooms if rooms is not None else base.room,
        notify=notify if notify is not None else base.notify,
        username=raw[_USERNAME] or base.username,
        message_format=read_message_format(raw[_MESSAGE_FORMAT]) or base.message_format,
        mentions=mentions or base.mentions,
        card=card if card is not None else base.card,
        dashboard_url=read_dashboard_url(raw[_DASHBOARD_URL]) or base.dashboard_url,
        template=template[0] if template is not None else base.template,
        legacy_occurrences=legacy if legacy is not None else base.legacy_occurrences,
    )


def _annotation_contacts(annotations: Mapping[str, Any]) -> tuple[str, ...]:
    raw = _annotation(annotations, _CONTACTS)
    return (read_names(_list_value(raw)) or ()) if raw is not None else ()


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
        return loads(raw)
    except (ValueError, RecursionError):
        return None


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
