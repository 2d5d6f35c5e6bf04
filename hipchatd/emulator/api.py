"""HipChat's endpoints: a route table whose entries hold their handlers, and the dispatch.

A request path is split into raw segments and matched against :data:`ROUTES`
(``*`` is one non-empty segment, the path parameter). A path that matches
no endpoint gets 404; a known path with the wrong method gets 405 with
``Allow``. Both use the v2 shape unless under ``/v1/`` *[inferred]*. Before
an API handler runs, the dispatch authenticates the token, applies an
injected failure and counts the request against the token's rate limit;
v1 ``auth_test=true`` answers 202 with the v2 body *[inferred]* and
performs nothing. Section numbers (§) and source ids (S…) point into
``docs/hipchat-api.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal
from urllib.parse import parse_qsl

from hipchatd.clock import unix_now
from hipchatd.emulator import control
from hipchatd.emulator.limits import Call
from hipchatd.emulator.records import ReceivedMessage
from hipchatd.emulator.rooms import Room, new_id
from hipchatd.emulator.site import Exchange, Site
from hipchatd.emulator.validation import (
    HISTORY_DEFAULT,
    MESSAGE_FORMATS,
    V2_MESSAGE_MAX,
    V2_ROOM_MESSAGE_MAX,
    Reject,
    boolean,
    enum,
    history_date,
    history_limit,
    parse_v2_body,
    string,
    validate_notification,
    validate_v1_message,
)
from hipchatd.emulator.wire import (
    XML,
    ApiError,
    Json,
    Target,
    decode_segment,
    error_response,
    iso_time,
    json_response,
    v1_json,
    v1_time,
    v1_xml,
    v2_json,
)
from hipchatd.http11 import Request, Response

V2_UNAUTHORIZED = "Invalid OAuth session"  # S28
V1_UNAUTHORIZED = "Auth token invalid. Please see: https://www.hipchat.com/docs/api/auth"  # S24
# The v2 API ran on Werkzeug: S50's 405 text is Werkzeug's; its 404 text is the sibling.
NOT_FOUND_TEXT = (
    "The requested URL was not found on the server. "
    "If you entered the URL manually please check your spelling and try again."
)
METHOD_NOT_ALLOWED_TEXT = "The method is not allowed for the requested URL."
AUTH_TEST_BODY = (
    b'{"success":{"code":202,"message":"This auth_token has access to use this method.",'
    b'"type":"Accepted"}}'
)  # §2, S3/S32: sent byte for byte

#: The token owner, shown where HipChat shows the token's user (send_message, history).
TOKEN_OWNER: dict[str, Json] = {"id": 1, "mention_name": "SensuBot", "name": "Sensu Bot"}

#: What an endpoint's handler does: the answer to an authenticated, counted request.
Handler = Callable[[Exchange], Response]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint: its path pattern, its methods and the handler that answers it."""

    name: str
    pattern: tuple[str, ...]
    methods: tuple[str, ...]
    handler: Handler
    #: where the room it addresses is named, so that ``room_latency`` applies
    room: Literal["path", "room_id"] | None = None

    @property
    def control(self) -> bool:
        """A ``/_emulator/`` control endpoint: no token, not counted, not recorded."""
        return self.pattern[:1] == ("_emulator",)


@dataclass(frozen=True, slots=True)
class Route:
    """A path matched to its endpoint, with the raw path parameter (``*``)."""

    endpoint: Endpoint
    param: str | None = None

    @property
    def name(self) -> str:
        """The endpoint's name."""
        return self.endpoint.name

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods the endpoint allows."""
        return self.endpoint.methods


def match_route(segments: Sequence[str]) -> Route | None:
    """The endpoint for raw path segments; ``*`` matches one non-empty segment."""
    for endpoint in ROUTES:
        if len(endpoint.pattern) != len(segments):
            continue
        param = None
        for want, got in zip(endpoint.pattern, segments, strict=True):
            if want == "*":
                if not got:
                    break
                param = got
            elif want != got:
                break
        else:
            return Route(endpoint, param)
    return None


# --- dispatch ----------------------------------------------------------------


def answer_api(site: Site, request: Request, target: Target) -> Response:
    """Answer one API request, with its rate-limit headers, and record it."""
    call = Call(target.api)
    try:
        response = _dispatch(site, call, request, target)
    except Reject as exc:
        response = error_response(call.api, exc.error, xml=call.fmt == "xml")
    site.limits.decorate(call, response)
    site.record(request.method, target.path, response.status, call.presented)
    return response


def answer_control(site: Site, request: Request, target: Target) -> Response:
    """Answer one ``/_emulator/`` request: no token, no limits, not recorded."""
    try:
        route = _route(request, target)
        return route.endpoint.handler(Exchange(site, Call("v2"), request, target))
    except Reject as exc:
        return error_response("v2", exc.error)


def room_delay(site: Site, request: Request, target: Target) -> float:
    """The ``room_latency`` of the room the request addresses, 0 when none."""
    if not site.room_latency:
        return 0.0
    route = match_route(target.segments)
    if route is None or route.endpoint.room is None:
        return 0.0
    if route.endpoint.room == "room_id":
        name = v1_params(request, target).get("room_id", "")
    else:
        name = decode_segment(route.param or "")
    return site.room_latency.get(site.rooms.name_of(name), 0.0)


def _route(request: Request, target: Target) -> Route:
    route = match_route(target.segments)
    if route is None:
        raise Reject(ApiError(404, NOT_FOUND_TEXT))
    if request.method not in route.methods:
        allow = (("Allow", ", ".join(route.methods)),)
        raise Reject(ApiError(405, METHOD_NOT_ALLOWED_TEXT, headers=allow))
    return route


def _dispatch(site: Site, call: Call, request: Request, target: Target) -> Response:
    params = v1_params(request, target) if call.api == "v1" else {}
    token = params.get("auth_token") if call.api == "v1" else _v2_token(request, target)
    call.presented = token
    if site.token_ok(token):
        call.token = token  # from here on the rate headers describe this token
    route = _route(request, target)
    if call.api == "v1":
        fmt = params.get("format") or "json"
        if fmt not in ("json", "xml"):
            raise Reject(ApiError(406, "Invalid format. Valid formats are json and xml."))
        call.fmt = "json" if fmt == "json" else "xml"
    failure = site.faults.take_failure()
    if failure is not None:
        raise Reject(failure)
    if call.token is None:
        raise Reject(ApiError(401, V1_UNAUTHORIZED if call.api == "v1" else V2_UNAUTHORIZED))
    site.limits.take_rate(call)
    auth_test = params.get("auth_test") if call.api == "v1" else target.query.get("auth_test")
    if auth_test is not None and auth_test.lower() == "true":
        return json_response(202, AUTH_TEST_BODY)
    param = decode_segment(route.param) if route.param is not None else ""
    return route.endpoint.handler(Exchange(site, call, request, target, param, params))


def v1_params(request: Request, target: Target) -> dict[str, str]:
    """v1 parameters: the query, then a form body over it."""
    # §3.1: clients send fields in the query, the form body, or both; the
    # body wins on a clash, as in PHP's $_REQUEST.
    params = dict(target.query)
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if request.body and media in ("", "application/x-www-form-urlencoded"):
        text = request.body.decode("utf-8", errors="replace")
        params.update(parse_qsl(text, keep_blank_values=True))
    return params


def _v2_token(request: Request, target: Target) -> str | None:
    # §11 q11: a Bearer header wins over ?auth_token=; other schemes are ignored (S8).
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    return target.query.get("auth_token")


def _v2_body(ex: Exchange) -> dict[str, Json]:
    content_type = ex.request.headers.get("content-type", "")
    return parse_v2_body(content_type, ex.request.body, parse_form=ex.site.rules.parse_form_v2)


# --- v2 handlers -------------------------------------------------------------


def _v2_notification(ex: Exchange) -> Response:
    site = ex.site
    room = site.rooms.v2_room(ex.param)
    ex.call.flood_key = ("room", str(room.id))
    note = validate_notification(
        _v2_body(ex), from_max=site.rules.from_max, lenient_notify=site.rules.lenient_notify
    )
    site.limits.take_flood(ex.call, ("room", str(room.id)))
    site.rooms.deliver_notification("v2", room, note)
    return Response(204)


def _v2_room_message(ex: Exchange) -> Response:
    room = ex.site.rooms.v2_room(ex.param)
    ex.call.flood_key = ("room", str(room.id))
    # §7: send_message caps the message at 1,000 characters and ignores `from`.
    text = string(_v2_body(ex), "message", required=True, min_len=1, max_len=V2_ROOM_MESSAGE_MAX)
    assert text is not None
    ex.site.limits.take_flood(ex.call, ("room", str(room.id)))
    message = ReceivedMessage(
        kind="room_message",
        api_version="v2",
        room_id=room.id,
        room=room.name,
        user=None,
        sender="",
        message=text,
        color=None,
        notify=False,
        message_format="text",
        date=unix_now(),
        id=new_id(),
    )
    ex.site.rooms.deliver(message)
    return json_response(201, v2_json({"id": message.id, "timestamp": iso_time(message.date)}))


def _v2_user_message(ex: Exchange) -> Response:
    user, rules = ex.param, ex.site.rules
    ex.call.flood_key = ("user", user)
    body = _v2_body(ex)
    text = string(body, "message", required=True, min_len=1, max_len=V2_MESSAGE_MAX)
    assert text is not None
    notify = boolean(body, "notify", lenient=rules.lenient_notify)
    message_format = enum(body, "message_format", MESSAGE_FORMATS, "text")
    ex.site.limits.take_flood(ex.call, ("user", user))
    ex.site.rooms.deliver(
        ReceivedMessage(
            kind="user_message",
            api_version="v2",
            room_id=None,
            room=None,
            user=user,
            sender="",
            message=text,
            color=None,
            notify=notify,
            message_format=message_format,
            date=unix_now(),
            id=new_id(),
        )
    )
    return Response(204)


def _v2_room_get(ex: Exchange) -> Response:
    room = ex.site.rooms.v2_room(ex.param)
    base = ex.site.base(ex.request)
    link = f"{base}/v2/room/{room.id}"
    created = room.created if room.created is not None else unix_now()
    body = {
        "id": room.id,
        "name": room.name,
        "topic": room.topic,
        "privacy": "public",
        "is_archived": False,
        "is_guest_accessible": False,
        "guest_access_url": None,
        "created": iso_time(created),
        "last_active": iso_time(ex.site.rooms.last_active(room)),
        "owner": _user(base),
        "participants": [],
        "links": {
            "self": link,
            "webhooks": f"{link}/webhook",
            "members": f"{link}/member",
            "participants": f"{link}/participant",
        },
    }
    return json_response(200, v2_json(body))


def _v2_room_list(ex: Exchange) -> Response:
    base = ex.site.base(ex.request)
    items = [
        {
            "id": r.id,
            "name": r.name,
            "links": {
                "self": f"{base}/v2/room/{r.id}",
                "webhooks": f"{base}/v2/room/{r.id}/webhook",
            },
        }
        for r in ex.site.rooms
    ]
    body = {
        "items": items,
        "startIndex": 0,
        "maxResults": len(items),
        "links": {"self": f"{base}/v2/room"},
    }
    return json_response(200, v2_json(body))


def _v2_history_latest(ex: Exchange) -> Response:
    """``history/latest``: the newest messages, from ``not-before`` (an id) when given."""
    room = ex.site.rooms.v2_room(ex.param)
    limit = history_limit(ex.target.query)
    in_room = ex.site.rooms.in_room(room)
    not_before = ex.target.query.get("not-before")
    ids = [m.id for m in in_room]
    if not_before and not_before in ids:  # an unknown id filters nothing [inferred]
        in_room = in_room[ids.index(not_before) :]
    return _history_page(ex, room, in_room, limit, "history/latest")


def _v2_history(ex: Exchange) -> Response:
    """``history`` (HypChat's history()): ``date`` is ``recent`` or an ISO 8601 time.

    The time is the newest a message may be; a time without a zone is UTC
    and ``timezone`` is ignored [inferred].
    """
    room = ex.site.rooms.v2_room(ex.param)
    limit = history_limit(ex.target.query)
    in_room = ex.site.rooms.in_room(room)
    newest = history_date(ex.target.query.get("date", "recent"))
    if newest is not None:
        in_room = [m for m in in_room if m.date <= newest]
    return _history_page(ex, room, in_room, limit, "history")


def _history_page(
    ex: Exchange, room: Room, in_room: list[ReceivedMessage], limit: int, path: str
) -> Response:
    base = ex.site.base(ex.request)
    chosen = in_room[-limit:] if limit else []
    body = {
        "items": [_history_item(m, base) for m in chosen],
        "startIndex": 0,
        "maxResults": limit,
        "links": {"self": f"{base}/v2/room/{room.id}/{path}"},
    }
    return json_response(200, v2_json(body))


def _user(base: str) -> dict[str, Json]:
    """The token owner as HipChat shows a user inside a room or message: with ``links.self``."""
    return {**TOKEN_OWNER, "links": {"self": f"{base}/v2/user/{TOKEN_OWNER['id']}"}}


def _history_item(message: ReceivedMessage, base: str) -> dict[str, Json]:
    item: dict[str, Json] = {
        "id": message.id,
        "date": iso_time(message.date),
        "message": message.message,
        "message_format": message.message_format,
        "mentions": [],
    }
    if message.kind == "notification":
        item.update({"type": "notification", "from": message.sender, "color": message.color})
        if message.card is not None:  # the card as sent [inferred]
            item["card"] = message.card
    else:
        item.update({"type": "message", "from": _user(base)})
    return item


# --- v1 handlers -------------------------------------------------------------


def _v1_body(call: Call, obj: Mapping[str, Json]) -> Response:
    if call.fmt == "xml":
        return Response(200, v1_xml(obj), XML)
    return json_response(200, v1_json(obj))


def _v1_message(ex: Exchange) -> Response:
    fields = validate_v1_message(ex.params)
    room = ex.site.rooms.v1_room(fields.room_id)
    ex.site.limits.take_flood(ex.call, ("room", str(room.id)))
    ex.site.rooms.deliver_notification("v1", room, fields)
    return _v1_body(ex.call, {"status": "sent"})


def _v1_rooms_list(ex: Exchange) -> Response:
    rooms = ex.site.rooms
    listed = []
    for room in rooms:
        created = room.created if room.created is not None else unix_now()
        listed.append(
            {
                "room_id": room.id,
                "name": room.name,
                "topic": room.topic,
                "last_active": int(rooms.last_active(room)),
                "created": int(created),
                "owner_user_id": TOKEN_OWNER["id"],
                "is_archived": False,
                "is_private": False,
                "guest_access_url": None,
            }
        )
    return _v1_body(ex.call, {"rooms": listed})


def _v1_history(ex: Exchange) -> Response:
    room_id = ex.params.get("room_id", "")
    if not room_id:
        raise Reject(ApiError(400, "Room ID is required."))
    day = ex.params.get("date", "")
    wanted: date | None = None
    if day != "recent":
        try:
            wanted = datetime.strptime(day, "%Y-%m-%d").date()
        except ValueError:
            raise Reject(ApiError(400, "Invalid date. Use YYYY-MM-DD or recent.")) from None
    room = ex.site.rooms.v1_room(room_id)
    in_room = ex.site.rooms.in_room(room)
    if wanted is None:
        chosen = in_room[-HISTORY_DEFAULT:]
    else:  # dates are read in UTC; the `timezone` parameter is ignored [inferred]
        chosen = [m for m in in_room if datetime.fromtimestamp(m.date, UTC).date() == wanted]
    return _v1_body(ex.call, {"messages": [_v1_history_item(m) for m in chosen]})


def _v1_history_item(message: ReceivedMessage) -> dict[str, Json]:
    if message.kind == "notification":
        sender: dict[str, Json] = {"name": message.sender, "user_id": "api"}
    else:
        sender = {"name": TOKEN_OWNER["name"], "user_id": TOKEN_OWNER["id"]}
    return {"date": v1_time(message.date), "from": sender, "message": message.message}


#: Every endpoint, first match wins.
ROUTES: tuple[Endpoint, ...] = (
    Endpoint("v2_room_list", ("v2", "room"), ("GET",), _v2_room_list),
    # S49: a `#` cut a POST down to /v2/room/, which answered 405.
    Endpoint("v2_room_list", ("v2", "room", ""), ("GET",), _v2_room_list),
    Endpoint("v2_room_get", ("v2", "room", "*"), ("GET",), _v2_room_get, "path"),
    Endpoint(
        "v2_notification", ("v2", "room", "*", "notification"), ("POST",), _v2_notification, "path"
    ),
    Endpoint(
        "v2_room_message", ("v2", "room", "*", "message"), ("POST",), _v2_room_message, "path"
    ),
    Endpoint("v2_history_view", ("v2", "room", "*", "history"), ("GET",), _v2_history, "path"),
    Endpoint(
        "v2_history", ("v2", "room", "*", "history", "latest"), ("GET",), _v2_history_latest, "path"
    ),
    Endpoint("v2_user_message", ("v2", "user", "*", "message"), ("POST",), _v2_user_message),
    Endpoint("v1_message", ("v1", "rooms", "message"), ("GET", "POST"), _v1_message, "room_id"),
    Endpoint("v1_rooms_list", ("v1", "rooms", "list"), ("GET",), _v1_rooms_list),
    Endpoint("v1_history", ("v1", "rooms", "history"), ("GET",), _v1_history),
    Endpoint("admin_messages", ("_emulator", "messages"), ("GET",), control.messages),
    Endpoint("admin_requests", ("_emulator", "requests"), ("GET",), control.requests),
    Endpoint("admin_faults", ("_emulator", "faults"), ("POST",), control.faults),
    Endpoint("admin_reset", ("_emulator", "reset"), ("POST",), control.reset),
)
