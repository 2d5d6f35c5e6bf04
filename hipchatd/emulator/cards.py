"""HipChat's card rules (pure data): the card schema, and the HTML a card may hold.

The schema is written in the JSON-schema dialect HipChat's own card schema
used when it leaked in an error body (docs/hipchat-api.md §4.2, S39b): every
property is required unless it says ``"optional": true``, and a ``type`` may
be a list of alternative schemas (a string, or an object). A fragment of it
is what a 400 for a card field carries as ``expected_type`` (§4.3);
:func:`hipchatd.emulator.validation.check_schema` walks it. Descriptions are
quoted from the leaked schema where it shows them; limits whose source is
the documentation or client-side validators rather than the leak are noted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from hipchatd.emulator.wire import Json

CARD_STYLES = ("file", "image", "application", "link", "media")  # §4.2
CARD_FORMATS = ("compact", "medium")  # §4.2, S39b
DESCRIPTION_FORMATS = ("html", "text")  # §4.2
#: An attribute value's ``style``: the lozenges HipChat's clients drew (§4.2).
LOZENGE_STYLES = (
    "lozenge-success",
    "lozenge-error",
    "lozenge-current",
    "lozenge-complete",
    "lozenge-moved",
    "lozenge",
)
CARD_TITLE_MAX = 500  # §4.2
CARD_DESCRIPTION_MAX = 1_000  # §4.2
CARD_FORMAT_MAX = 25  # S39b: the format's own maxLength, unreachable past the enumeration
THUMBNAIL_URL_MAX = 250  # §4.2, S39b
ATTRIBUTE_LABEL_MAX = 50  # §4.2
#: Attributes one card may carry. No source gives HipChat's limit; this is the
#: emulator's own bound, so that a card of 100,000 attributes is refused on its
#: length before any attribute is looked at (§4.2). A card shows a handful.
CARD_ATTRIBUTES_MAX = 100

#: The tags HTML inside a card may use (§4.2, S6); anything else is refused.
CARD_HTML_TAGS = frozenset({"a", "b", "i", "strong", "span"})

_ICON: Mapping[str, Json] = {
    "optional": True,
    "type": [
        {"type": "string"},
        {
            "additionalProperties": True,
            "properties": {
                "url": {
                    "description": "The url where the icon is",
                    "minLength": 1,
                    "type": "string",
                },
                "url@2x": {
                    "description": "The url for the icon in retina",
                    "minLength": 1,
                    "optional": True,
                    "type": "string",
                },
            },
            "type": "object",
        },
    ],
}

_DESCRIPTION: Mapping[str, Json] = {
    "optional": True,
    "type": [
        # The bound of the plain form is the object's value bound [inferred].
        {"maxLength": CARD_DESCRIPTION_MAX, "minLength": 1, "type": "string"},
        {
            "properties": {
                "format": {"enum": list(DESCRIPTION_FORMATS), "type": "string"},
                "value": {"maxLength": CARD_DESCRIPTION_MAX, "minLength": 1, "type": "string"},
            },
            "type": "object",
        },
    ],
}

_THUMBNAIL: Mapping[str, Json] = {
    "additionalProperties": True,
    "optional": True,
    "properties": {
        "url": {
            "description": "The thumbnail url",
            "maxLength": THUMBNAIL_URL_MAX,
            "minLength": 1,
            "type": "string",
        },
        "url@2x": {
            "description": "The thumbnail url in retina",
            "maxLength": THUMBNAIL_URL_MAX,
            "minLength": 1,
            "optional": True,
            "type": "string",
        },
        "width": {
            "description": "The original width of the image",
            "optional": True,
            "type": "number",
        },
        "height": {
            "description": "The original height of the image",
            "optional": True,
            "type": "number",
        },
    },
    "type": "object",
}

_ACTIVITY: Mapping[str, Json] = {
    "description": "The activity will generate a collapsable card of one line showing the html\n"
    "and the ability to maximize to see  all the content.",
    "optional": True,
    "properties": {
        "html": {
            "description": "Html for the activity to show in one line a summary of the action "
            "that happened",
            "minLength": 1,
            "type": "string",
        },
        "icon": _ICON,
    },
    "type": "object",
}

_ATTRIBUTE: Mapping[str, Json] = {
    "properties": {
        "label": {
            "maxLength": ATTRIBUTE_LABEL_MAX,
            "minLength": 1,
            "optional": True,
            "type": "string",
        },
        "value": {
            "properties": {
                "label": {"minLength": 1, "type": "string"},
                "url": {"optional": True, "type": "string"},
                "style": {"enum": list(LOZENGE_STYLES), "optional": True, "type": "string"},
                "icon": _ICON,
            },
            "type": "object",
        },
    },
    "type": "object",
}

#: The card, in the order its fields are checked: the required ones first.
CARD_SCHEMA: Mapping[str, Json] = {
    "properties": {
        "style": {"enum": list(CARD_STYLES), "type": "string"},
        "title": {"maxLength": CARD_TITLE_MAX, "minLength": 1, "type": "string"},
        "id": {
            "description": "An id that will help HipChat recognise the same card when it is "
            "sent multiple times",
            "minLength": 1,
            "type": "string",
        },
        "format": {
            "description": "Application cards can be compact (1 to 2 lines) or medium "
            "(1 to 5 lines)",
            "enum": list(CARD_FORMATS),
            "maxLength": CARD_FORMAT_MAX,
            "minLength": 1,
            "optional": True,
            "type": "string",
        },
        "description": _DESCRIPTION,
        "url": {"optional": True, "type": "string"},
        # Milliseconds since the epoch, as an integer [inferred].
        "date": {"optional": True, "type": "integer"},
        "thumbnail": _THUMBNAIL,
        "activity": _ACTIVITY,
        "attributes": {
            "description": "List of attributes to show below the card. "
            "Sample {label}:{value.icon} {value.label}",
            "items": _ATTRIBUTE,
            "maxItems": CARD_ATTRIBUTES_MAX,
            "optional": True,
            "type": "array",
        },
        "icon": _ICON,
    },
    "type": "object",
}

# The HTML tokenizer's rule: a tag opens with "<" or "</" and an ASCII letter;
# "< b>" or "a < b" is text. One pass, linear in the length.
_TAG = re.compile(r"</?([A-Za-z][^\s/>]*)")


def holds_html(field: str, parent: Mapping[str, Json]) -> bool:
    """Whether the string at ``field``, a property of ``parent``, is card HTML (§4.2).

    ``activity.html`` always is; ``description.value`` is when the
    description's ``format`` is ``html`` (a text description is shown as text).
    """
    if field == "card.activity.html":
        return True
    return field == "card.description.value" and parent.get("format") == "html"


def disallowed_tag(html: str) -> str | None:
    """The first tag in ``html`` that a card may not use (lowercased), else None."""
    for match in _TAG.finditer(html):
        name = match.group(1).lower()
        if name not in CARD_HTML_TAGS:
            return name
    return None
