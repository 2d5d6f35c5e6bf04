"""@mentions in messages: the configured ones prefixed, those in event text made harmless. Pure.

HipChat turns ``@name`` into a mention (and ``@all``/``@here`` into a page
of the whole room) only in ``text`` messages; ``html`` messages show it as
plain text (docs/hipchat-api.md §3.1, the ``message_format`` row; the same
holds for v2 notifications:
https://developer.atlassian.com/hipchat/guide/sending-messages). So:

* A message whose target carries a mention is sent as ``text``, whatever
  ``message_format`` says (:func:`sent_format`), with the mentions first:
  ``@all CRITICAL web-01/check-disk: ...``.
* In every text message, each ``@`` that could start a mention is followed
  by a zero-width space (U+200B), so check output, a notification, a check
  or client name, or a playbook cannot page a room. A mention is ``@`` then
  a mention name; the characters a name may start with are those the
  configuration accepts in one (:mod:`hipchatd.sensu.links`): a word
  character, ``.`` or ``-``. What comes before the ``@`` does not matter:
  ``user@example.com`` is neutralised too. Whether HipChat needed a word
  boundary before the ``@`` is documented nowhere, and the two mistakes
  differ in cost: a neutralised e-mail address gains one invisible
  character, a missed mention pages a room.
* Html messages are left alone: HipChat shows ``@all`` in them as text.

Neutralising adds one character per such ``@``: :func:`neutralized_width`
counts it, so the built-in layout cuts its body with the final length in
view; :func:`finish_text` still enforces the limit for any text (a
template's) that was measured otherwise.
"""

from __future__ import annotations

import re
from typing import Final

from hipchatd.delivery.routing import Target
from hipchatd.sensu.events import MessageFormat

__all__ = [
    "ZERO_WIDTH_SPACE",
    "finish_text",
    "mention_prefix",
    "neutralize",
    "neutralized_width",
    "sent_format",
]

#: U+200B: invisible, and not a mention-name character, so ``@\u200ball`` pages nobody.
ZERO_WIDTH_SPACE: Final = "\u200b"
#: An ``@`` followed by a character a mention name may start with (see the module docstring).
_MENTION_START: Final = re.compile(r"@(?=[\w.\-])")
_NEUTRALIZED: Final = "@" + ZERO_WIDTH_SPACE
_ELLIPSIS: Final = "…"


def sent_format(target: Target) -> MessageFormat:
    """The format a message to ``target`` is sent in: ``text`` when it carries a mention."""
    return "text" if target.mention else target.message_format


def neutralize(text: str) -> str:
    """``text`` with a zero-width space after each ``@`` that could start a mention.

    Idempotent: an ``@`` already followed by the zero-width space is left as it is.
    """
    if "@" not in text:
        return text
    return _MENTION_START.sub(_NEUTRALIZED, text)


def neutralized_width(text: str, index: int) -> int:
    """Characters ``text[index]`` takes once neutralised: 2 for an ``@`` that gets one, else 1.

    An ``@`` is judged by the character after it in ``text``.
    """
    if text[index] != "@":
        return 1
    return 2 if _MENTION_START.match(text, index) else 1


def mention_prefix(target: Target) -> str:
    """What goes before the message text: the target's mentions and a space, or ""."""
    return f"{target.mention} " if target.mention else ""


def finish_text(text: str, target: Target, limit: int) -> str:
    """The text sent to ``target``: in text, neutralised then prefixed with the mentions.

    Html is returned unchanged. The result is at most ``limit`` characters:
    text that no longer fits after neutralising and prefixing is cut at the
    end with an ellipsis (the built-in layout reserves the room, so only text
    measured without it, such as a template's, is ever cut here).
    """
    if sent_format(target) == "html":
        return text
    prefix = mention_prefix(target)
    finished = prefix + neutralize(text)
    if len(finished) <= limit:
        return finished
    # A cut between an ``@`` and its zero-width space leaves "@…": no mention either.
    return finished[: limit - len(_ELLIPSIS)] + _ELLIPSIS
