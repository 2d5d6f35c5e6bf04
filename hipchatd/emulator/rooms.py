"""The emulator's world: rooms, the users written to, and the messages accepted.

Section numbers (§) and source ids (S…) point into ``docs/hipchat-api.md``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import trio

from hipchatd.clock import unix_now
from hipchatd.emulator.records import ReceivedMessage, echo_line
from hipchatd.emulator.validation import (
    ROOM_NAME_MAX,
    ROOM_PATH_MAX,
    Notification,
    Reject,
    V1Message,
    length_error,
)
from hipchatd.emulator.wire import Api, ApiError


@dataclass(slots=True)
class Room:
    """A room: its id, its name, when it was created (Unix time) and its topic."""

    id: int
    name: str
    created: float | None
    topic: str = ""


class Rooms:
    """The rooms by id and by name, the users written to, and the messages accepted.

    ``echo``, when set, is given one line per accepted message.
    """

    def __init__(
        self, names: Iterable[str], *, auto_create: bool, echo: Callable[[str], None] | None
    ) -> None:
        self.auto_create = auto_create
        self.echo = echo
        self.messages: list[ReceivedMessage] = []
        self._by_id: dict[int, Room] = {}
        self._ids: dict[str, int] = {}
        self._next_id = 1
        self._arrivals = trio.lowlevel.ParkingLot()
        for name in names:
            self.add(name)

    def __iter__(self) -> Iterator[Room]:
        return iter(self._by_id.values())

    def add(self, name: str) -> int:
        """Create a room and return its id (1, 2, ...); an existing name returns its id."""
        if not 1 <= len(name) <= ROOM_NAME_MAX:
            raise ValueError(f"room names are 1-{ROOM_NAME_MAX} characters, got {name!r}")
        if name in self._ids:
            return self._ids[name]
        room = Room(self._next_id, name, _now_or_none())
        self._next_id += 1
        self._by_id[room.id] = room
        self._ids[name] = room.id
        return room.id

    def open(self) -> None:
        """Date the rooms created before trio ran: the server has started."""
        for room in self._by_id.values():
            if room.created is None:
                room.created = unix_now()

    def name_of(self, name: str) -> str:
        """The room name that ``name`` (a numeric id or a name) stands for."""
        if name.isascii() and name.isdigit() and int(name) in self._by_id:
            return self._by_id[int(name)].name
        return name

    def lookup(self, name: str) -> Room | None:
        """The room for a numeric id, else the exact name; made when auto-creating."""
        # §11 q6: numeric id first, then the exact, case-sensitive name.
        if name.isascii() and name.isdigit() and int(name) in self._by_id:
            return self._by_id[int(name)]
        room_id = self._ids.get(name)
        if room_id is not None:
            return self._by_id[room_id]
        if self.auto_create and 1 <= len(name) <= ROOM_NAME_MAX:
            return self._by_id[self.add(name)]
        return None

    def v2_room(self, name: str) -> Room:
        """The room a v2 path names; raise Reject (400 for a long name, else 404)."""
        if len(name) > ROOM_PATH_MAX:
            raise length_error("room_id_or_name", name, ROOM_PATH_MAX, too_long=True)
        room = self.lookup(name)
        if room is None:
            raise Reject(ApiError(404, f"Room {name} not found"))  # S48
        return room

    def v1_room(self, room_id: str) -> Room:
        """The room a v1 ``room_id`` names; raise Reject with 404."""
        room = self.lookup(room_id)
        if room is None:
            raise Reject(ApiError(404, "Room not found"))  # S31
        return room

    def last_active(self, room: Room) -> float:
        """The newest message's time in ``room``, else when it was created."""
        dates = [m.date for m in self.messages if m.room_id == room.id]
        if dates:
            return max(dates)
        return room.created if room.created is not None else unix_now()

    def in_room(self, room: Room) -> list[ReceivedMessage]:
        """The messages accepted for ``room``, oldest first."""
        return [m for m in self.messages if m.room_id == room.id]

    def deliver(self, message: ReceivedMessage) -> None:
        """Accept ``message``: record it, wake its waiters, echo it."""
        self.messages.append(message)
        self._arrivals.unpark_all()
        if self.echo is not None:
            self.echo(echo_line(message))

    def deliver_notification(self, api: Api, room: Room, note: Notification | V1Message) -> None:
        """Deliver a room notification: a v2 notification (with its card) or a v1 rooms/message."""
        self.deliver(
            ReceivedMessage(
                kind="notification",
                api_version=api,
                room_id=room.id,
                room=room.name,
                user=None,
                sender=note.sender,
                message=note.message,
                color=note.color,
                notify=note.notify,
                message_format=note.message_format,
                date=unix_now(),
                id=new_id(),
                card=note.card if isinstance(note, Notification) else None,
            )
        )

    async def wait_for(self, count: int) -> None:
        """Return once at least ``count`` messages were accepted; wakes on arrival."""
        if len(self.messages) >= count:
            await trio.lowlevel.checkpoint()
            return
        while len(self.messages) < count:
            await self._arrivals.park()

    def describe(self) -> str:
        """``name (id N)`` for every room, for the startup line."""
        return ", ".join(f"{name} (id {room_id})" for name, room_id in self._ids.items())


def new_id() -> str:
    """A fresh message id, as shown in room history and accepted by ``attach_to``."""
    return str(uuid.uuid4())


def _now_or_none() -> float | None:
    try:
        return unix_now()
    except RuntimeError:  # outside trio.run: dated by Rooms.open() when serving starts
        return None
