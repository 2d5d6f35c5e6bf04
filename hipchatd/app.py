"""run(): the one place the daemon's nursery tree is built.

::

    run
    ├── emulator.serve         (only with --emulator)
    ├── dispatcher.run         delivery tasks, one per accepted event
    ├── server.serve_tcp       accept loop + one task per connection
    └── server.serve_udp       datagram loop
"""

from __future__ import annotations

import dataclasses
import json
import socket
from dataclasses import dataclass, field

import structlog
import trio

from hipchatd import logconfig
from hipchatd.config import Config, Listen
from hipchatd.dispatch import Dispatcher, Job
from hipchatd.errors import EventError
from hipchatd.events import parse_event
from hipchatd.filters import skip_reason
from hipchatd.framing import Document, preview
from hipchatd.hipchat import HipChatClient, make_http_client
from hipchatd.metrics import Metrics
from hipchatd.routing import route
from hipchatd.server import serve_tcp, serve_udp

__all__ = ["App", "run"]

log = structlog.get_logger()


@dataclass
class App:
    """A running daemon, as handed to ``nursery.start(run, ...)`` callers."""

    config: Config
    metrics: Metrics
    client: HipChatClient
    dispatcher: Dispatcher
    tcp_addresses: list[tuple[str, int]] = field(default_factory=list)
    udp_address: tuple[str, int] | None = None
    emulator_url: str | None = None

    def accept(self, document: Document, peer: str, transport: str) -> None:
        """Sink for the listeners: parse, filter, route, queue. Never blocks."""
        try:
            event = parse_event(document.value)
        except EventError as exc:
            self.metrics.events_rejected.labels(reason="not_event").inc()
            log.warning(
                "input.rejected",
                peer=peer,
                transport=transport,
                nbytes=document.nbytes,
                reason=str(exc),
                preview=preview(json.dumps(document.value, ensure_ascii=False)[:400].encode()),
            )
            return
        settings = self.config.hipchat
        reason = skip_reason(event, settings)
        if reason is not None:
            self.metrics.events_skipped.labels(reason=reason).inc()
            log.debug(
                "event.skipped",
                event_id=event.id,
                source=event.source,
                check=event.check,
                status=event.status,
                action=event.action,
                reason=reason,
            )
            return
        targets = route(event, settings, self.config.contacts)
        self.dispatcher.submit(Job(event, targets, trio.current_time()))


async def _bind_udp(listen: Listen) -> trio.socket.SocketType:
    infos = await trio.socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_DGRAM)
    family, type_, proto, _, address = infos[0]
    sock = trio.socket.socket(family, type_, proto)
    try:
        await sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


async def run(
    config: Config,
    *,
    with_emulator: bool = False,
    task_status: trio.TaskStatus[App] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until cancelled; ``task_status.started(app)`` once listeners serve.

    ``with_emulator`` starts an in-process HipChat emulator on loopback and
    points the client at it, creating the configured rooms on demand.
    """
    logconfig.register_secret(config.hipchat.api_token.reveal())
    async with trio.open_nursery() as nursery:
        emulator_url = None
        if with_emulator:
            config = await _start_emulator(nursery, config)
            emulator_url = config.hipchat.server_url
        daemon = config.daemon
        metrics = Metrics()
        async with make_http_client(config.hipchat, daemon.concurrency) as http:
            client = HipChatClient(config.hipchat, http)
            app: App
            dispatcher = Dispatcher(
                lambda: app.config.hipchat,
                lambda: app.client,
                metrics,
                queue_size=daemon.queue_size,
                concurrency=daemon.concurrency,
            )
            app = App(config, metrics, client, dispatcher, emulator_url=emulator_url)
            async with trio.open_nursery() as inner:
                await inner.start(dispatcher.run)
                if daemon.tcp is not None:
                    listeners = await trio.open_tcp_listeners(daemon.tcp.port, host=daemon.tcp.host)
                    await inner.start(serve_tcp, listeners, daemon, app.accept, metrics)
                    for listener in listeners:
                        host, port = listener.socket.getsockname()[:2]
                        app.tcp_addresses.append((host, port))
                if daemon.udp is not None:
                    sock = await _bind_udp(daemon.udp)
                    inner.start_soon(_serve_udp_owned, sock, app)
                    host, port = sock.getsockname()[:2]
                    app.udp_address = (host, port)
                log.info(
                    "daemon.started",
                    tcp=[f"{h}:{p}" for h, p in app.tcp_addresses],
                    udp=f"{app.udp_address[0]}:{app.udp_address[1]}" if app.udp_address else None,
                    server_url=config.hipchat.server_url,
                    api_version=config.hipchat.api_version,
                    rooms=list(config.hipchat.room),
                )
                task_status.started(app)
        nursery.cancel_scope.cancel()


async def _serve_udp_owned(sock: trio.socket.SocketType, app: App) -> None:
    with sock:
        await serve_udp(sock, app.config.daemon, app.accept, app.metrics)


async def _start_emulator(nursery: trio.Nursery, config: Config) -> Config:
    from hipchatd.emulator import Emulator

    hipchat = config.hipchat
    token = hipchat.api_token
    if not token:
        token = type(token)("hipchatd-emulator-token")
        logconfig.register_secret(token.reveal())
    emulator = Emulator(
        tokens=[token.reveal()],
        rooms=hipchat.room,
        auto_create_rooms=True,
        echo=lambda line: print(line, flush=True),
    )
    url: str = await nursery.start(emulator.serve, "127.0.0.1", 0)
    log.info("emulator.started", url=url)
    return dataclasses.replace(
        config, hipchat=dataclasses.replace(hipchat, server_url=url, api_token=token)
    )
