"""serve(): the one place the daemon's task tree is built, from the signals down.

::

    serve                         SIGTERM/SIGINT: graceful stop, a second one: stop now;
    │                             SIGHUP: _reload
    ├── systemd.watchdog          WATCHDOG=1 every half WatchdogSec (started before recovery)
    ├── _report_status            STATUS= every STATUS_INTERVAL
    ├── _stop_gracefully          after the first SIGTERM/SIGINT: App.stop within shutdown_grace
    └── run
        ├── emulator.serve        (only with --emulator)
        └── services
            ├── dispatcher.run    one lane task per room or user with work (reaped when idle)
            ├── owner.run         (a shared PostgreSQL spool) lane leases; reads the lanes held
            │                     from the shared queue; LISTEN wake-ups
            ├── spool.run         group commits; Intake.committed hands them to the lanes
            ├── reject_log.run    reports rejection lines suppressed per peer
            ├── skip_log.run      reports skip lines held back by their line budget
            ├── connections       one ConnectionHandler task per Sensu connection
            │                     (outlives accepting)
            ├── ingest scope
            │   ├── listeners.serve_tcp  accept loops
            │   └── listeners.serve_udp  one datagram loop per UDP socket
            └── http.serve_http    /metrics and /healthz (only with hipchatd.metrics)

The listeners hand each decoded document to ``Intake.accept``
(:mod:`hipchatd.ingest.intake`: parse, filter, route, spool) in the task
that read it. An event is accepted once the spool has committed it.
``App.stop`` is the graceful half of shutdown: stop accepting, let open
connections finish and in-flight deliveries complete; what is left stays
in the spool.
"""

from __future__ import annotations

import dataclasses
import gc
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import structlog
import trio

from hipchatd.config import Config, DaemonSettings, HipChatSettings, Listen
from hipchatd.delivery.hipchat import HipChatClient, make_http_client
from hipchatd.delivery.lanes import Dispatcher
from hipchatd.delivery.ownership import LeaseManager
from hipchatd.delivery.shared_budget import BudgetStore, connect_store, make_budget
from hipchatd.delivery.spool import Spool, open_budget_store, open_spool
from hipchatd.errors import ConfigError, StartupError
from hipchatd.ingest.intake import Intake
from hipchatd.ingest.listeners import ConnectionHandler, serve_tcp, serve_udp
from hipchatd.ingest.peers import reject_log, warn_if_exposed
from hipchatd.metrics import NOTIFICATIONS, Metrics
from hipchatd.ops import logconfig, systemd
from hipchatd.ops.systemd import InheritedSocket

if TYPE_CHECKING:
    from hipchatd.config import LoadResult

__all__ = ["App", "run", "serve"]

log = structlog.get_logger()


@dataclass(eq=False)
class App:
    """A running daemon, as handed to ``nursery.start(run, ...)`` callers."""

    config: Config
    metrics: Metrics
    client: HipChatClient
    spool: Spool
    dispatcher: Dispatcher
    intake: Intake
    connections: ConnectionHandler
    tcp_addresses: list[tuple[str, int]] = field(default_factory=list)
    udp_address: tuple[str, int] | None = None
    metrics_addresses: list[str] = field(default_factory=list)
    emulator_url: str | None = None
    #: Where HipChat's budget is shared with other instances (None: this process's own).
    budget_store: BudgetStore | None = None
    stopping: bool = False
    _ingest: trio.CancelScope = field(default_factory=trio.CancelScope)

    def health(self) -> tuple[bool, str]:
        """For ``/healthz``: listeners serving and the spool writable, else why not.

        Healthy with a reason starting with ``DEGRADED``: accepting into the
        local spool while PostgreSQL is unreachable.
        """
        if self.stopping:
            return False, "stopping"
        if self._ingest.cancel_called:
            return False, "not listening"
        if self.spool.closed:
            return False, "spool closed"
        if not self.spool.writable:
            return False, f"spool not writable: {self.spool.path}"
        if (lost := self.spool.file_problem()) is not None:
            return False, lost
        if (stuck := self.dispatcher.stuck()) is not None:
            return False, stuck
        if (degraded := self.spool.degraded) is not None:
            from hipchatd.ops.http import DEGRADED

            return True, f"{DEGRADED}{degraded}"
        return True, "ok"

    def status_line(self) -> str:
        """A short summary for systemd's STATUS=."""
        m = self.metrics
        sent = sum(m.value(NOTIFICATIONS, api_version=v) for v in ("v1", "v2"))
        counts = self.spool.counts()
        return (
            f"{counts['pending']} pending, {counts['dead']} dead-lettered, "
            f"{int(sent)} messages sent"
        )

    def reload(self, new: Config) -> list[str]:
        """Adopt ``new`` (rooms, token, filters, limits) without touching listeners or spool.

        Returns the keys whose change needs a restart to take effect.
        """
        old = self.config
        logconfig.register_config_secrets(new)
        restart = [
            f"hipchatd.{name}"
            for name in _RESTART_KEYS
            if getattr(old.daemon, name) != getattr(new.daemon, name)
        ]
        # The HTTP client is made once, at start, from ca_file and proxy.
        for name in ("ca_file", "proxy"):
            if getattr(old.hipchat, name) != getattr(new.hipchat, name):
                restart.append(f"hipchat.{name}")
        # Keys that need a restart keep their running values.
        kept = dataclasses.replace(
            new.daemon, **{name: getattr(old.daemon, name) for name in _RESTART_KEYS}
        )
        hipchat = dataclasses.replace(
            new.hipchat, ca_file=old.hipchat.ca_file, proxy=old.hipchat.proxy
        )
        self.config = dataclasses.replace(new, daemon=kept, hipchat=hipchat)
        self.client = HipChatClient(hipchat, self.client.http)
        budget = None
        if _budget_key(old.hipchat) != _budget_key(hipchat):
            # HipChat counts per token: a new token (or new limits) starts a new budget.
            budget = make_budget(hipchat, self.budget_store)
        self.dispatcher.reconfigure(max_age=kept.max_age, budget=budget)
        return restart

    async def stop(self) -> None:
        """Stop accepting; wait for open connections, then for in-flight deliveries.

        The caller bounds this with ``shutdown_grace`` and then cancels ``run``.
        """
        self.stopping = True
        self._ingest.cancel()
        await self.connections.wait_idle()
        await self.dispatcher.drain()


#: Bytes of kernel receive buffer asked for the UDP socket.
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024

#: Daemon settings read once at start: listeners, the spool, the pool.
_RESTART_KEYS = (
    "tcp",
    "udp",
    "metrics",
    "state_dir",
    "spool",
    "concurrency",
    "max_connections",
    "framing",
    "max_frame_bytes",
    "idle_timeout",
    "max_spool_events",
    "queue_size",
)


def _budget_key(settings: HipChatSettings) -> tuple[object, ...]:
    return (settings.api_token, settings.server_url, settings.rate_limit, settings.flood_limit)


def _spool_count(spool: Spool, state: str) -> float:
    return spool.counts()[state]


def _fallback_count(spool: Spool, what: str) -> float:
    return spool.fallback_counts()[what]


async def _bind_udp(listen: Listen) -> trio.socket.SocketType:
    infos = await trio.socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_DGRAM)
    family, type_, proto, _, address = infos[0]
    sock = trio.socket.socket(family, type_, proto)
    try:
        # A burst of datagrams waits in the kernel while the loop is busy;
        # the kernel caps the size at net.core.rmem_max.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        await sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(
    config: Config,
    *,
    with_emulator: bool = False,
    inherited: Sequence[InheritedSocket] = (),
    load: Callable[[], LoadResult],
) -> None:
    """The daemon from start to exit: ``run`` under the watchdog, signals and status.

    systemd hears READY=1 once ``run`` serves and STATUS= every
    STATUS_INTERVAL. SIGHUP adopts what ``load`` returns (see ``_reload``);
    SIGTERM or SIGINT stops gracefully within ``shutdown_grace``, and a
    second one stops at once. Returns once everything has stopped.
    """
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            # Pings start before recovery so a long spool recovery is not a hang.
            await nursery.start(systemd.watchdog)
            running: App = await nursery.start(
                partial(run, config, with_emulator=with_emulator, inherited=inherited)
            )
            # What start-up built lives as long as the daemon: keep it out of
            # every later collection (httpx's per-request cycles are collected often).
            gc.collect()
            gc.freeze()
            systemd.ready(running.status_line())
            nursery.start_soon(_report_status, running)
            stopping = False
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    if not stopping:
                        await _reload(running, load)
                    continue
                if not stopping:
                    stopping = True
                    # As reloaded: shutdown_grace needs no restart.
                    grace = running.config.daemon.shutdown_grace
                    systemd.stopping()
                    log.info("daemon.stopping", signal=name, shutdown_grace=grace)
                    nursery.start_soon(_stop_gracefully, running, grace, nursery.cancel_scope)
                else:
                    # A second signal: stop now. The spool is consistent at any point.
                    log.warning("daemon.stopping_now", signal=name)
                    nursery.cancel_scope.cancel()


async def _stop_gracefully(running: App, grace: float, scope: trio.CancelScope) -> None:
    with trio.move_on_after(grace) as waited:
        await running.stop()
    if waited.cancelled_caught:
        log.warning("daemon.grace_expired", shutdown_grace=grace)
    scope.cancel()


#: Seconds between STATUS= updates to systemd.
STATUS_INTERVAL = 30.0


async def _report_status(running: App) -> None:
    while True:
        await trio.sleep(STATUS_INTERVAL)
        systemd.status(running.status_line())


async def _reload(running: App, load: Callable[[], LoadResult]) -> None:
    """Adopt the configuration as it is now; on any failure keep the running one.

    A SIGHUP must never stop the daemon: an invalid configuration is refused
    with one ERROR line per problem, and anything unexpected while loading
    (a bug) is logged with its traceback; both keep the old configuration.
    """
    systemd.reloading()
    try:
        result = await trio.to_thread.run_sync(load)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("config.reload_failed", problem=problem)
        for warning in exc.warnings:
            log.warning("config.warning", warning=warning)
        systemd.ready("reload failed, configuration unchanged; " + running.status_line())
        return
    except Exception as exc:
        log.error(
            "config.reload_failed",
            problem=f"unexpected {type(exc).__name__} while loading the configuration (a bug)",
            exc_info=True,
        )
        systemd.ready("reload failed, configuration unchanged; " + running.status_line())
        return
    for warning in result.warnings:
        log.warning("config.warning", warning=warning)
    restart = running.reload(result.config)
    if restart:
        log.warning("config.reload_needs_restart", keys=restart)
    log.info(
        "config.reloaded",
        rooms=list(running.config.hipchat.room),
        api_version=running.config.hipchat.api_version,
        server_url=running.config.hipchat.server_url,
    )
    systemd.ready(running.status_line())


async def run(
    config: Config,
    *,
    with_emulator: bool = False,
    inherited: Sequence[InheritedSocket] = (),
    task_status: trio.TaskStatus[App] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until cancelled; ``task_status.started(app)`` once listeners serve.

    ``with_emulator`` starts an in-process HipChat emulator on loopback and
    points the client at it, creating rooms on demand. ``inherited`` are
    sockets passed by systemd: they replace the configured ``tcp``/``udp``.
    """
    logconfig.register_config_secrets(config)
    async with trio.open_nursery() as root:
        emulator_url = None
        if with_emulator:
            config = await _start_emulator(root, config)
            emulator_url = config.hipchat.server_url
        daemon = config.daemon
        hipchat = config.hipchat
        metrics = Metrics()
        store = open_budget_store(daemon.spool)
        spool = await open_spool(
            daemon.state_dir, max_events=daemon.max_spool_events, settings=daemon.spool
        )
        try:
            # Degraded: the server did not answer the spool; the first send tries the store.
            if spool.degraded is None:
                await connect_store(store)
            async with make_http_client(hipchat, daemon.concurrency) as http:
                app: App
                budget = make_budget(hipchat, store)
                # A spool shared by several instances: send only for the lanes leased here.
                leases = spool.lane_leases()
                owner = None if leases is None else LeaseManager(leases, metrics)
                dispatcher = Dispatcher(
                    lambda: app.config.hipchat,
                    lambda: app.client,
                    spool,
                    budget,
                    metrics,
                    concurrency=daemon.concurrency,
                    max_age=daemon.max_age,
                    memory_events=daemon.queue_size,
                    lease_left=None if owner is None else owner.lease_left,
                )
                intake = Intake(
                    lambda: app.config, metrics, spool, dispatcher if owner is None else owner
                )
                connections = ConnectionHandler(
                    daemon,
                    intake.accept,
                    metrics,
                    spool.wait_for_room,
                    allow_from=lambda: app.config.daemon.allow_from,
                )
                app = App(
                    config,
                    metrics,
                    HipChatClient(hipchat, http),
                    spool,
                    dispatcher,
                    intake,
                    connections,
                    emulator_url=emulator_url,
                    budget_store=store,
                )
                for state in ("pending", "dead"):
                    metrics.spool_events.labels(state=state).set_function(
                        partial(_spool_count, spool, state)
                    )
                metrics.spool_local.set_function(partial(_fallback_count, spool, "held"))
                metrics.spool_forwarded.set_function(partial(_fallback_count, spool, "forwarded"))
                async with trio.open_nursery() as services:
                    await services.start(dispatcher.run)
                    if owner is None:
                        intake.recover(await spool.load_pending())
                    else:
                        # The owner reads its lanes' entries from the shared queue.
                        await services.start(owner.run, dispatcher)
                    await services.start(
                        partial(spool.run, intake.committed, on_refused=intake.refused)
                    )
                    services.start_soon(reject_log(metrics).run)
                    services.start_soon(intake.skip_log.run)
                    await _start_ingest(services, app, inherited)
                    if daemon.metrics is not None:
                        from hipchatd.ops.http import serve_http

                        http_listeners = await _open_metrics(daemon.metrics)
                        app.metrics_addresses = await services.start(
                            serve_http, http_listeners, metrics, app.health
                        )
                    log.info(
                        "daemon.started",
                        tcp=[f"{h}:{p}" for h, p in app.tcp_addresses],
                        udp=f"{app.udp_address[0]}:{app.udp_address[1]}"
                        if app.udp_address
                        else None,
                        server_url=hipchat.server_url,
                        proxy=None if hipchat.proxy is None else str(hipchat.proxy),
                        api_version=hipchat.api_version,
                        rooms=list(hipchat.room),
                        state_dir=daemon.state_dir,
                    )
                    task_status.started(app)
        finally:
            with trio.move_on_after(2, shield=True):
                if store is not None:
                    await trio.to_thread.run_sync(store.close)
                await spool.aclose()
        root.cancel_scope.cancel()


async def _open_sockets(
    daemon: DaemonSettings, inherited: Sequence[InheritedSocket]
) -> tuple[list[trio.SocketListener], list[trio.socket.SocketType]]:
    if inherited:
        streams = [
            trio.SocketListener(trio.socket.from_stdlib_socket(s.sock))
            for s in inherited
            if s.kind == "stream"
        ]
        datagrams = [
            trio.socket.from_stdlib_socket(s.sock) for s in inherited if s.kind == "datagram"
        ]
        log.info(
            "systemd.sockets_adopted",
            sockets=[f"{s.name}:{s.kind}:{_address(s.sock.getsockname())}" for s in inherited],
        )
        return streams, datagrams
    streams = []
    datagrams = []
    if daemon.tcp is not None:
        try:
            streams = await trio.open_tcp_listeners(daemon.tcp.port, host=daemon.tcp.host)
        except OSError as exc:
            raise _cannot_listen(exc, "tcp", daemon.tcp) from exc
    if daemon.udp is not None:
        try:
            datagrams = [await _bind_udp(daemon.udp)]
        except OSError as exc:
            for listener in streams:
                listener.socket.close()
            raise _cannot_listen(exc, "udp", daemon.udp) from exc
    return streams, datagrams


def _cannot_listen(exc: OSError, transport: str, listen: Listen) -> StartupError:
    fix = f"choose another port (hipchatd.{transport}.port, or `hipchatd serve --port N`)"
    return StartupError.cannot_listen(
        exc, transport, f"hipchatd.{transport}", listen.host, listen.port, fix_port=fix
    )


async def _open_metrics(listen: Listen) -> list[trio.SocketListener]:
    from hipchatd.ops.http import open_http_listeners

    try:
        return await open_http_listeners(listen)
    except OSError as exc:
        fix = "choose another port (hipchatd.metrics.port)"
        raise StartupError.cannot_listen(
            exc, "http", "hipchatd.metrics", listen.host, listen.port, fix_port=fix
        ) from exc


def _address(sockname: object) -> str:
    if isinstance(sockname, tuple):
        return f"{sockname[0]}:{sockname[1]}"
    return str(sockname)


async def _start_ingest(
    services: trio.Nursery, app: App, inherited: Sequence[InheritedSocket]
) -> None:
    streams, datagrams = await _open_sockets(app.config.daemon, inherited)
    warn_if_exposed(
        app.config.daemon.allow_from,
        [("tcp", s.socket.getsockname()) for s in streams]
        + [("udp", s.getsockname()) for s in datagrams],
    )

    async def ingest(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Connections live in ``conns``, outside the accept loops: cancelling
        # ``app._ingest`` stops accepting while open connections are read to their
        # end, and ``conns`` closes only after every accept loop has returned, so no
        # connection is ever accepted with nowhere to run.
        async with trio.open_nursery() as conns:
            with app._ingest:
                async with trio.open_nursery() as nursery:
                    if streams:
                        for listener in streams:
                            host, port = listener.socket.getsockname()[:2]
                            app.tcp_addresses.append((host, port))
                        await nursery.start(
                            partial(serve_tcp, streams, app.connections, handler_nursery=conns)
                        )
                    for sock in datagrams:
                        if app.udp_address is None:
                            host, port = sock.getsockname()[:2]
                            app.udp_address = (host, port)
                        nursery.start_soon(_serve_udp_owned, sock, app)
                    task_status.started()

    await services.start(ingest)


async def _serve_udp_owned(sock: trio.socket.SocketType, app: App) -> None:
    with sock:
        await serve_udp(
            sock,
            app.config.daemon,
            app.intake.accept,
            app.metrics,
            app.spool.wait_for_room,
            allow_from=lambda: app.config.daemon.allow_from,
        )


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
