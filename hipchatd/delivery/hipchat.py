"""The HipChat HTTP client: v1 and v2 requests, each answer made an Outcome.

The only module that knows httpx. It never raises: every attempt becomes an
Outcome, a HipChat answer, a transport failure and a bug alike (a bug is also
logged at ERROR with its traceback). Only trio's cancellation and
KeyboardInterrupt-class exceptions propagate.

Everything a server sends is bounded before it is believed:

* A response body is read up to :data:`MAX_BODY_BYTES`, then the response is
  closed; a body that ends early (reset, truncated) still gives the outcome
  its status names.
* A wait the server names (``Retry-After``, ``X-Ratelimit-Reset``,
  ``X-FloodControl-Reset``) is never believed beyond :data:`MAX_SERVER_WAIT`.
  Such a wait, a limit of 0, a remaining count above the limit, and a
  malformed or negative value are protocol errors: logged at WARNING
  (``hipchat.protocol_error``, at most once per header per
  :data:`PROTOCOL_WARNING_INTERVAL`), and the whole header family (or the
  ``Retry-After``) is ignored, so the budget counts the request itself over
  its configured window and a retry waits the normal backoff.

The answer becomes an Outcome in :mod:`hipchatd.delivery.outcome` (pure, no
httpx), whose names this module re-exports: they are what the client returns.

Requests (see the HipChat API reference shipped with the project):

* v2 room: ``POST {base}/v2/room/{room}/notification``, JSON, ``Authorization: Bearer``.
* v2 user: ``POST {base}/v2/user/{user}/message``, JSON, ``Authorization: Bearer``.
* v1 room: ``POST {base}/v1/rooms/message?format=json``, form body carrying
  ``auth_token``. The token never goes in a URL: URLs end up in logs.

``{room}`` and ``{user}`` are percent-encoded as one path segment with nothing
left unescaped (:func:`room_path`) and sent to the server byte for byte.
"""

from __future__ import annotations

import json
import math
import os
import re
import ssl
import sys
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import structlog
import trio

from hipchatd import __version__
from hipchatd.clock import unix_now
from hipchatd.config import ApiVersion, HipChatSettings, ProxySetting, ProxyUrl
from hipchatd.delivery.egress import Route, route, scrub_proxy
from hipchatd.delivery.outcome import (
    MAX_SERVER_WAIT,
    Outcome,
    OutcomeKind,
    ProtocolWarn,
    RateInfo,
    classify,
    header,
    parse_rate_info,
    parse_retry_after,
)
from hipchatd.delivery.render import Message
from hipchatd.delivery.routing import Target
from hipchatd.errors import ConfigError
from hipchatd.jsontext import dumps
from hipchatd.redaction import scrub

# httpx's __init__ tries to import its command line client (click, then pygments, then
# rich) and falls back on ImportError; whichever of them is installed stays loaded, though
# the daemon never runs that client: about 2 MB of a daemon's memory where Flask's click and
# pytest's pygments are installed (https://github.com/encode/httpx/blob/master/httpx/__init__.py).
# A None in sys.modules makes that one import raise ModuleNotFoundError at once
# (https://docs.python.org/3/reference/import.html#the-module-cache); typeshed types the
# values as modules only.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
import httpx  # noqa: E402

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_SERVER_WAIT",
    "HipChatClient",
    "Outcome",
    "OutcomeKind",
    "RateInfo",
    "make_http_client",
    "parse_rate_info",
    "parse_retry_after",
    "room_path",
]

log = structlog.get_logger()

#: Characters of error text kept in an Outcome: one log line, not an HTML page.
MAX_ERROR_CHARS = 200
#: Bytes of a response body read at most. HipChat's bodies are small JSON (an
#: error object of a few hundred bytes, v1's ``{"status": "sent"}``); the rest
#: of a longer one is never read, so an endless or huge body costs no memory.
MAX_BODY_BYTES = 64 * 1024
#: Seconds a 2xx answer's body may take to arrive. The status already proves
#: delivery; the body is read only so the connection can be reused, and one
#: that drips must not turn a delivered message into a timeout and a duplicate.
SENT_BODY_GRACE = 1.0
#: Seconds between two protocol-error WARNINGs about the same header: a broken
#: server answers every request the same way.
PROTOCOL_WARNING_INTERVAL = 60.0
#: Exceptions followed down a ``raise ... from`` chain to find a description.
_MAX_CAUSES = 8
#: Request URLs a client keeps made (one per room or user path): making one parses it
#: again (~25 µs), once per message otherwise; rooms named once in event data are dropped.
_URLS_KEPT = 256
#: The message ``auth_test`` requests carry; HipChat validates it but posts nothing.
AUTH_TEST_MESSAGE = "hipchatd auth test"
#: v1 requires ``from`` (1-15 characters); ``auth_test`` has no Message to take it from.
AUTH_TEST_SENDER = "hipchatd"

_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
_SURROGATE = re.compile("[\ud800-\udfff]")


# v1 has no private-message method (docs/hipchat-api.md §13); refuse
# without a request so a misconfiguration reads as what it is.
_V1_HAS_NO_USER_MESSAGES = Outcome(
    OutcomeKind.BAD_REQUEST,
    error="HipChat API v1 cannot message a user; set hipchat.api_version to v2",
)


def room_path(name: str) -> str:
    """Percent-encode a room name (or user id / e-mail) as a single path segment.

    Nothing is left unescaped (docs/hipchat-api.md §5): ``my room`` -> ``my%20room``,
    ``ops/alerts`` -> ``ops%2Falerts``, ``#x`` -> ``%23x``, ``a+b`` -> ``a%2Bb``,
    ``Café`` -> ``Caf%C3%A9``. HipChat decodes the segment exactly once.
    """
    return quote(_wire_text(name), safe="")


def make_http_client(settings: HipChatSettings, concurrency: int) -> httpx.AsyncClient:
    """The one AsyncClient for the process: pool sized to ``concurrency``, ``ca_file`` trusted.

    * No httpx timeouts. Each attempt runs inside the caller's
      ``trio.move_on_after(settings.timeout)``, which bounds pool wait, connect,
      TLS, write and read together; httpx's per-phase timeouts would only
      repeat that deadline under another name (a pool timeout shorter than it
      would report our own queueing as a HipChat failure). A caller that
      forgets its scope can wait forever: always wrap.
    * ``trust_env=False``: ``HTTPS_PROXY``, ``SSL_CERT_FILE`` and ``.netrc`` are
      ignored, so the daemon behaves the same under systemd and in a shell.
      ``hipchat.proxy`` ``"env"`` reads the proxy variables alone, as
      :mod:`hipchatd.delivery.egress` describes; never ``SSL_CERT_FILE``,
      ``SSL_CERT_DIR`` or ``.netrc``.
    * ``ca_file`` *replaces* the default CA bundle (like ``curl --cacert``):
      HipChat Server with a private CA. Without it, httpx's bundled CAs are used.
    * Through a proxy, a request to an https:// server goes in a CONNECT
      tunnel: the proxy sees ``CONNECT host:port`` (and ``Proxy-Authorization``
      when the proxy URL has credentials), then only TLS, and ``ca_file``
      verifies HipChat's certificate inside the tunnel. An https:// proxy's
      own certificate is verified with the same trust. A request to an
      http:// server is sent to the proxy whole, token included. A proxy's
      failure (refused connection, ``407``, a refused CONNECT) is a transport
      error naming the proxy, never its credentials.
    * Redirects are not followed: a redirect means ``server_url`` is wrong, and
      a POST must not be replayed elsewhere.
    * ``Accept-Encoding: identity``: bodies are read raw and bounded
      (:data:`MAX_BODY_BYTES`); a compressed one could inflate far beyond that.

    Raises ConfigError when ``ca_file`` cannot be read as PEM CA certificates,
    or when ``proxy`` is ``"env"`` and a proxy variable holds no usable proxy.
    """
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    verify = _ssl_context(settings.ca_file)
    # Direct: the transport httpx would make itself.
    transport = _egress(settings.proxy, verify, limits) or httpx.AsyncHTTPTransport(
        verify=verify, trust_env=False, limits=limits
    )
    return _Client(
        transport,
        headers={
            "User-Agent": f"hipchatd/{__version__}",
            "Accept": "application/json",
            "Accept-Encoding": "identity",
        },
        timeout=httpx.Timeout(None),
        trust_env=False,
        follow_redirects=False,
    )


class _Client(httpx.AsyncClient):
    """An AsyncClient that builds requests for :class:`HipChatClient` to send through ``transport``.

    ``AsyncClient.send`` adds what the API never uses: auth and redirect flows,
    and cookies (about a sixth of a request's CPU). Every request carries the token.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport, **settings: Any) -> None:
        super().__init__(transport=transport, **settings)
        self.transport = transport


def _egress(
    setting: ProxySetting, verify: ssl.SSLContext | bool, limits: httpx.Limits
) -> httpx.AsyncBaseTransport | None:
    """The transport for ``setting``; None (httpx's own) when every request goes direct."""
    chosen = route(setting, os.environ)
    if chosen is None:
        return None
    # httpx's bundled CAs, as ``verify=True`` means with trust_env off.
    trust = (
        verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(trust_env=False)
    )

    def open_transport(proxy: ProxyUrl | None) -> httpx.AsyncBaseTransport:
        via = None
        if proxy is not None:
            # An ssl_context for an http:// proxy is refused by httpcore.
            context = trust if proxy.scheme == "https" else None
            via = httpx.Proxy(str(proxy), ssl_context=context, auth=proxy.auth())
        return httpx.AsyncHTTPTransport(verify=trust, trust_env=False, limits=limits, proxy=via)

    return _Egress(chosen, open_transport)


class _Egress(httpx.AsyncBaseTransport):
    """Sends each request direct or through the proxy its route names; failures name the proxy."""

    def __init__(
        self, chosen: Route, open_transport: Callable[[ProxyUrl | None], httpx.AsyncBaseTransport]
    ) -> None:
        self._route = chosen
        self._open = open_transport
        self._transports: dict[ProxyUrl | None, httpx.AsyncBaseTransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        proxy = self._route(request.url.scheme, request.url.host)
        transport = self._transports.get(proxy)
        if transport is None:
            transport = self._transports[proxy] = self._open(proxy)
        if proxy is None:
            return await transport.handle_async_request(request)
        try:
            response = await transport.handle_async_request(request)
        except httpx.ProxyError as exc:
            text = f"proxy {proxy} refused CONNECT: {_cause_text(exc) or 'no reason given'}"
            raise httpx.ProxyError(scrub_proxy(text, proxy)) from exc
        except httpx.TransportError as exc:
            text = f"via proxy {proxy}: {_cause_text(exc) or type(exc).__name__}"
            raise type(exc)(scrub_proxy(text, proxy)) from exc
        if response.status_code == httpx.codes.PROXY_AUTHENTICATION_REQUIRED:
            # A forwarded http:// request; through a tunnel this is a ProxyError above.
            await response.aclose()
            text = f"proxy {proxy} refused the request: 407 {response.reason_phrase}"
            raise httpx.ProxyError(scrub_proxy(text, proxy))
        return response

    async def aclose(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()


class HipChatClient:
    """Posts messages to HipChat; one instance per process (per reload)."""

    def __init__(self, settings: HipChatSettings, http: httpx.AsyncClient) -> None:
        self._settings = settings
        self._http = http
        self._direct = http.transport if isinstance(http, _Client) else None
        self._api_version: ApiVersion = settings.api_version
        base = httpx.URL(settings.server_url)
        self._origin = base.copy_with(raw_path=b"/", fragment=None)
        # Keep a path prefix (HipChat Server behind a proxy) but never double the
        # slash: HipChat does not collapse "//" (docs/hipchat-api.md §11 q10).
        self._prefix = base.raw_path.partition(b"?")[0].rstrip(b"/")
        #: header name (lower case) -> (Unix time of its last WARNING, suppressed since).
        self._warned: dict[str, tuple[float, int]] = {}
        #: path -> its request URL, the oldest first; at most _URLS_KEPT.
        self._urls: dict[bytes, httpx.URL] = {}

    @property
    def http(self) -> httpx.AsyncClient:
        """The shared AsyncClient (a reloaded client reuses it)."""
        return self._http

    async def send(self, target: Target, message: Message) -> Outcome:
        """Post ``message`` to ``target`` once and classify the answer.

        Takes no timeout: the caller wraps it in ``trio.move_on_after``.
        Cancellation propagates; every other failure is an Outcome.
        """
        if self._api_version == "v1":
            if target.kind == "user":
                return _V1_HAS_NO_USER_MESSAGES
            return await self._post_form(
                {
                    "room_id": _wire_text(target.name),
                    "from": _wire_text(message.sender),
                    "message": _wire_text(message.text),
                    "message_format": message.message_format,
                    "color": message.color,
                    "notify": "1" if message.notify else "0",
                }
            )
        if target.kind == "user":
            return await self._post_json(
                _user_path(target.name),
                {
                    "message": _wire_text(message.text),
                    "notify": bool(message.notify),
                    "message_format": message.message_format,
                },
            )
        body: dict[str, Any] = {
            "message": _wire_text(message.text),
            "color": message.color,
            "notify": bool(message.notify),
            "message_format": message.message_format,
            "from": _wire_text(message.sender),
        }
        if message.card is not None:
            # Only a v2 room notification takes a card (docs/hipchat-api.md §4.1);
            # ``message`` stays, for clients that cannot show one.
            body["card"] = message.card
        return await self._post_json(_room_path(target.name), body)

    async def auth_test(self, target: Target) -> Outcome:
        """Ask HipChat whether the token may post to ``target``, without posting.

        v2 sends the real request with ``?auth_test=true`` (docs/hipchat-api.md §2):
        HipChat checks token, scope and recipient and answers 202 instead of
        delivering. v1 documents no such answer; ``auth_test=true`` in the
        ``rooms/message`` form is the nearest equivalent. Should a server
        ignore the flag, the body is a quiet gray text notice. Any 2xx is
        SENT. Same contract as :meth:`send`: the caller owns the deadline,
        cancellation propagates.
        """
        if self._api_version == "v1":
            if target.kind == "user":
                return _V1_HAS_NO_USER_MESSAGES
            return await self._post_form(
                {
                    "auth_test": "true",
                    "room_id": _wire_text(target.name),
                    "from": AUTH_TEST_SENDER,
                    "message": AUTH_TEST_MESSAGE,
                    "message_format": "text",
                    "color": "gray",
                    "notify": "0",
                }
            )
        body: dict[str, Any] = {
            "message": AUTH_TEST_MESSAGE,
            "notify": False,
            "message_format": "text",
        }
        path = _user_path(target.name) if target.kind == "user" else _room_path(target.name)
        return await self._post_json(path + b"?auth_test=true", body)

    async def _post_json(self, path: bytes, body: dict[str, Any]) -> Outcome:
        token = self._settings.api_token.reveal()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        return await self._post(path, token, headers=headers, content=dumps(body))

    async def _post_form(self, fields: dict[str, str]) -> Outcome:
        token = self._settings.api_token.reveal()
        return await self._post(
            b"/v1/rooms/message?format=json", token, form={"auth_token": token, **fields}
        )

    async def _post(
        self,
        path: bytes,
        token: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        form: dict[str, str] | None = None,
    ) -> Outcome:
        try:
            url = self._url(path)
            request = self._http.build_request(
                "POST", url, headers=headers, content=content, data=form
            )
            if self._direct is None:
                response = await self._http.send(request, stream=True)
            elif self._http.is_closed:
                raise RuntimeError("the HTTP client is closed")
            else:
                response = await self._direct.handle_async_request(request)
        except httpx.TimeoutException as exc:
            # Only with a client that has httpx timeouts (ours has none).
            return Outcome(OutcomeKind.TIMEOUT, error=_clean(_describe(exc), token))
        except httpx.RequestError as exc:
            # TransportError (refused, reset, TLS, protocol) and DecodingError.
            return Outcome(OutcomeKind.TRANSPORT_ERROR, error=_clean(_describe(exc), token))
        except Exception as exc:
            return _unexpected(exc, token)
        try:
            content = await _read_body(response)
            return _classify(
                response.status_code,
                response.headers,
                content,
                now=unix_now(),
                token=token,
                warn=self._warn,
            )
        except Exception as exc:
            return _unexpected(exc, token)
        finally:
            # Unread bytes are never read: httpx closes the connection instead.
            await response.aclose()

    def _url(self, path: bytes) -> httpx.URL:
        """The request URL for ``path`` under the server's prefix, made once while kept."""
        url = self._urls.get(path)
        if url is None:
            if len(self._urls) >= _URLS_KEPT:
                del self._urls[next(iter(self._urls))]
            # raw_path keeps the percent-encoding exactly as room_path() made it.
            url = self._urls[path] = self._origin.copy_with(raw_path=self._prefix + path)
        return url

    def _warn(self, header: str, value: str, problem: str, instead: str) -> None:
        """Log a protocol error, at most once per header per PROTOCOL_WARNING_INTERVAL."""
        now = unix_now()
        last, suppressed = self._warned.get(header.lower(), (-math.inf, 0))
        if now - last < PROTOCOL_WARNING_INTERVAL:
            self._warned[header.lower()] = (last, suppressed + 1)
            return
        self._warned[header.lower()] = (now, 0)
        log.warning(
            "hipchat.protocol_error",
            header=header,
            value=value[:_MAX_VALUE_CHARS],
            problem=problem,
            instead=instead,
            suppressed=suppressed,
        )


#: Characters of a bad header value quoted in a protocol-error WARNING.
_MAX_VALUE_CHARS = 64


async def _read_body(response: httpx.Response) -> bytes:
    """Up to MAX_BODY_BYTES of the body, as sent (no decompression: see make_http_client).

    A body that breaks off (reset, truncated) yields what arrived. A 2xx body
    gets SENT_BODY_GRACE seconds, then what arrived.
    """
    if response.is_stream_consumed:
        # Read already by a transport that buffers (httpx.MockTransport).
        return response.content[:MAX_BODY_BYTES]
    chunks: list[bytes] = []
    size = 0
    grace = SENT_BODY_GRACE if response.is_success else math.inf
    with trio.move_on_after(grace) as scope:
        try:
            async for chunk in response.aiter_raw():
                if size < MAX_BODY_BYTES:
                    chunks.append(chunk[: MAX_BODY_BYTES - size])
                    size += len(chunks[-1])
                if size >= MAX_BODY_BYTES:
                    # Not ``break``: that would abandon httpx's stream generators
                    # unclosed. Cancelled, the next read raises through all of
                    # them, and httpcore closes the connection on its way out.
                    scope.cancel()
        except httpx.RequestError:
            pass  # the status line and headers arrived; they decide the outcome
    if response.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        return b""  # asked for identity; a compressed body is not ours to inflate
    return b"".join(chunks)


def _unexpected(exc: Exception, token: str) -> Outcome:
    """A bug (ours or a library's) in one attempt: logged loud, retried like a transport error."""
    error = _clean(f"unexpected {type(exc).__name__}: {exc}", token)
    log.error("hipchat.request_failed", error=error, exc_info=True)
    return Outcome(OutcomeKind.TRANSPORT_ERROR, error=error)


def _room_path(name: str) -> bytes:
    return f"/v2/room/{room_path(name)}/notification".encode("ascii")


def _user_path(name: str) -> bytes:
    return f"/v2/user/{room_path(name)}/message".encode("ascii")


def _classify(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    now: float,
    token: str,
    warn: ProtocolWarn,
) -> Outcome:
    # HipChat's error text is read only from a failed answer's body.
    error = "" if 200 <= status < 300 else _clean(_error_text(status, headers, content), token)
    return classify(status, headers, error, now=now, warn=warn)


def _error_text(status: int, headers: Mapping[str, str], content: bytes) -> str:
    message = _hipchat_message(content)
    if message is not None:
        return message
    reason = httpx.codes.get_reason_phrase(status)
    text = f"{status} {reason}" if reason else f"HTTP {status}"
    location = header(headers, "Location")
    if 300 <= status < 400 and location:
        text += f" to {location}"
    body = _TAG.sub(" ", content.decode("utf-8", errors="replace"))
    return f"{text}: {body}" if body.strip() else text


def _hipchat_message(content: bytes) -> str | None:
    """``error.message`` of HipChat's error shape (v1 compact, v2 pretty), else None."""
    if not content.strip():
        return None
    try:
        document = json.loads(content)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    error = document.get("error")
    if not isinstance(error, dict):
        return None
    message = error.get("message")
    if not isinstance(message, str) or not message.strip():
        return None
    return message


def _describe(exc: Exception) -> str:
    # httpx re-raises httpcore's error, which wraps trio's, which wraps the OS or
    # TLS error; the outer ones often have no text (a failed TLS handshake is a
    # bare "ConnectError"). Name the httpx class, quote the first text in the chain.
    text = _cause_text(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _cause_text(exc: BaseException) -> str:
    """The first text down ``exc``'s chain of causes, or ""."""
    cause: BaseException | None = exc
    for _ in range(_MAX_CAUSES):
        if cause is None:
            break
        text = str(cause).strip()
        if text:
            return text
        cause = cause.__cause__ or cause.__context__
    return ""


def _clean(text: str, token: str) -> str:
    """Error text for an Outcome: the token removed, one line, at most MAX_ERROR_CHARS."""
    # The token as typed, and escaped or quoted as it appears in a URL, a form
    # body, a header's bytes repr or a JSON string.
    text = _SPACE.sub(" ", scrub(text, token)).strip()
    # Redact again: collapsing whitespace may have joined what the first pass missed.
    text = scrub(text, token)
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    return text


def _wire_text(text: str) -> str:
    # A lone surrogate (valid in JSON input, not in UTF-8) would make httpx
    # raise while encoding the request; send U+FFFD instead of crashing.
    return _SURROGATE.sub("\ufffd", text)


def _ssl_context(ca_file: str | None) -> ssl.SSLContext | bool:
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            [
                f"hipchat.ca_file: cannot load CA certificates from {ca_file!r} ({reason}); "
                "expected a readable PEM file of CA certificates"
            ]
        ) from exc
