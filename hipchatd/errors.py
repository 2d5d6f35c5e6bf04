"""The exceptions hipchatd raises.

::

    HipchatdError
    ├── ConfigError         the configuration cannot be used (one line per problem)
    ├── EventError          a JSON document is not a Sensu event
    └── FrameTooLarge       a frame is over ``max_frame_bytes``; the connection is closed

Expected failures at the edges (a bad frame, a HipChat error answer) are not
exceptions in the rest of the program: they become logged outcomes where they
are scoped. These classes are for the places that must stop one unit of work.
"""

from __future__ import annotations

from collections.abc import Sequence


class HipchatdError(Exception):
    """Base class of every hipchatd error."""


class ConfigError(HipchatdError):
    """The configuration is invalid.

    ``problems`` holds one human-readable line per problem, each naming the
    file, the key path, the bad value and what is expected.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


class EventError(HipchatdError):
    """A JSON document is not a Sensu event; the message says what is missing."""


class FrameTooLarge(HipchatdError):
    """A frame exceeds ``max_frame_bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"frame of at least {size} bytes exceeds max_frame_bytes={limit}")
