"""Who may send, and how much a peer's rejected input may write to the log.

A socket handler has no authentication: ``hipchatd.allow_from`` is the only
thing between a reachable port and the ops rooms. :func:`allowed` decides
from the peer's address alone, before a byte of its input is parsed. A peer
on a dual-stack socket appears as an IPv4-mapped IPv6 address
(``::ffff:10.1.2.3``) and is matched as the IPv4 address it is (and as
written, so an IPv6 network of mapped addresses matches too); a link-local
peer's scope (``fe80::1%eth0``) is not part of its address.

:class:`RejectLog` keeps bad input from filling the disk: each peer host
gets a few WARNING lines per window, the rest are counted and reported as
one ``input.rejected_suppressed`` line when the window ends. Its table of
peers has a fixed size, and an IPv6 peer is keyed by its /64 (the block one
host is normally given), so a peer cycling source ports or addresses cannot
grow it. Counters are kept by the caller and still count every rejection.
"""

from __future__ import annotations

import ipaddress
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from hipchatd.config import Network
from hipchatd.metrics import Metrics

__all__ = [
    "LOG_LINES_PER_PEER",
    "LOG_LINES_TOTAL",
    "LOG_WINDOW",
    "MAX_PEERS_TRACKED",
    "AllowFrom",
    "RejectLog",
    "allowed",
    "exposed",
    "peer_address",
    "peer_key",
    "reject_log",
    "warn_if_exposed",
]

log = structlog.get_logger()

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Reads the running ``allow_from`` (a SIGHUP reload can change it).
AllowFrom = Callable[[], tuple[Network, ...] | None]

#: Seconds per rate-limit window: a flood's start and its size show once a minute.
LOG_WINDOW = 60.0
#: WARNING lines per peer host per window: enough to show what a peer sends wrong.
LOG_LINES_PER_PEER = 10
#: WARNING lines per window from all peers together: many peers cannot add up to a flood.
LOG_LINES_TOTAL = 100
#: Peer hosts tracked at once; past it the oldest window is closed early (and reported).
MAX_PEERS_TRACKED = 1024
#: IPv6 peers share a line budget per /64: one host usually holds a whole /64.
_IPV6_KEY_PREFIX = 64


def peer_address(host: object) -> IPAddress | None:
    """The IP address of a socket address's host part: scope dropped, IPv4-mapped unmapped.

    None when ``host`` is not an IP address (nothing a network can match).
    """
    if not isinstance(host, str):
        return None
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def allowed(networks: Sequence[Network] | None, host: object) -> bool:
    """Whether a peer whose address has host part ``host`` may send.

    ``networks`` None allows any peer. Otherwise a peer whose address cannot
    be read (it went away, or it is not IP) is not allowed: it cannot be
    shown to be inside.
    """
    if networks is None:
        return True
    address = peer_address(host)
    if address is None:
        return False
    candidates: list[IPAddress] = [address]
    if isinstance(host, str) and address.version == 4 and ":" in host:
        # As written too: an allow_from entry may name the mapped form.
        candidates.append(ipaddress.IPv6Address(host.partition("%")[0]))
    return any(a in net for a in candidates for net in networks if a.version == net.version)


def peer_key(peer: str) -> str:
    """The rate-limit key of a peer as logged (``host:port`` or ``[v6]:port``): its host.

    IPv6 hosts are keyed by their /64; a peer that is not an IP address is
    keyed by what is left once the port is dropped.
    """
    if peer.startswith("["):
        host = peer[1:].partition("]")[0]
    else:
        host = peer.rpartition(":")[0] if peer.count(":") == 1 else peer
    address = peer_address(host)
    if address is None:
        return host
    if address.version == 6:
        return str(ipaddress.IPv6Network((address, _IPV6_KEY_PREFIX), strict=False))
    return str(address)


@dataclass(slots=True)
class _Window:
    start: float
    logged: int = 0
    suppressed: int = 0


class RejectLog:
    """Decides which rejection WARNINGs are written: a few per peer host per window.

    Windows are on trio's clock. A peer's window opens at its first line and
    closes :data:`LOG_WINDOW` seconds later; its suppressed lines are then
    reported as one ``input.rejected_suppressed`` line. When
    :data:`LOG_LINES_TOTAL` lines have been written in a window, closing
    reports from further peers are added up into one line with ``peers``.
    """

    def __init__(
        self,
        *,
        window: float = LOG_WINDOW,
        per_peer: int = LOG_LINES_PER_PEER,
        total: int = LOG_LINES_TOTAL,
        max_peers: int = MAX_PEERS_TRACKED,
    ) -> None:
        self.window = window
        self.per_peer = per_peer
        self.total = total
        self.max_peers = max_peers
        #: oldest window first: windows only open at the end.
        self._peers: OrderedDict[str, _Window] = OrderedDict()
        self._total_start = -float("inf")
        self._total_logged = 0
        #: suppressed lines of closed windows not yet reported (the total budget was spent).
        self._unreported_peers = 0
        self._unreported = 0

    def __len__(self) -> int:
        return len(self._peers)

    def admit(self, peer: str) -> bool:
        """Whether to write the next rejection line of ``peer``; counts it when not."""
        now = trio.current_time()
        self.flush(now)
        key = peer_key(peer)
        window = self._peers.get(key)
        if window is None:
            if len(self._peers) >= self.max_peers:
                self._close(*self._peers.popitem(last=False))
            window = self._peers[key] = _Window(now)
        if window.logged >= self.per_peer or self._total_logged >= self.total:
            window.suppressed += 1
            return False
        window.logged += 1
        self._total_logged += 1
        return True

    def flush(self, now: float | None = None) -> None:
        """Close the windows that have ended and report what they suppressed."""
        if now is None:
            now = trio.current_time()
        if now >= self._total_start + self.window:
            self._total_start = now
            self._total_logged = 0
            if self._unreported:
                log.warning(
                    "input.rejected_suppressed",
                    peers=self._unreported_peers,
                    suppressed=self._unreported,
                    window=self.window,
                )
                self._total_logged += 1
                self._unreported_peers = self._unreported = 0
        while self._peers:
            key, window = next(iter(self._peers.items()))
            if now < window.start + self.window:
                break
            del self._peers[key]
            self._close(key, window)

    def _close(self, key: str, window: _Window) -> None:
        if not window.suppressed:
            return
        if self._total_logged < self.total:
            self._total_logged += 1
            log.warning(
                "input.rejected_suppressed",
                peer=key,
                suppressed=window.suppressed,
                window=self.window,
            )
        else:
            self._unreported_peers += 1
            self._unreported += window.suppressed

    async def run(self) -> None:
        """Report suppressed lines within a sixth of a window of its end, quiet peers too."""
        while True:
            await trio.sleep(self.window / 6)
            self.flush()


#: One table per daemon (per Metrics): daemons sharing a process (tests) keep apart.
_reject_logs: weakref.WeakKeyDictionary[Metrics, RejectLog] = weakref.WeakKeyDictionary()


def reject_log(metrics: Metrics) -> RejectLog:
    """The :class:`RejectLog` of the daemon that owns ``metrics``."""
    found = _reject_logs.get(metrics)
    if found is None:
        found = _reject_logs[metrics] = RejectLog()
    return found


def warn_limited(metrics: Metrics, event: str, *, peer: str, **fields: Any) -> None:
    """Log a WARNING about ``peer``'s input unless its share of the log is spent."""
    if reject_log(metrics).admit(peer):
        log.warning(event, peer=peer, **fields)


def exposed(sockname: object) -> bool:
    """Whether a listener bound to ``sockname`` is reachable from beyond this host."""
    if not isinstance(sockname, tuple) or not sockname:
        return False
    address = peer_address(sockname[0])
    # An unspecified address (0.0.0.0, ::) listens on every interface.
    return address is None or not address.is_loopback


def warn_if_exposed(
    allow_from: Sequence[Network] | None, listeners: Iterable[tuple[str, object]]
) -> None:
    """At start: one WARNING per listener beyond loopback when any peer may send.

    ``listeners`` are (transport, sockname) pairs.
    """
    if allow_from is not None:
        return
    for transport, sockname in listeners:
        if not exposed(sockname):
            continue
        host, port = sockname[:2] if isinstance(sockname, tuple) else (sockname, None)
        log.warning(
            "listener.exposed",
            transport=transport,
            address=f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}",
            reason=(
                "not bound to loopback and hipchatd.allow_from is not set: any host that can "
                "reach this address can post messages to the HipChat rooms"
            ),
            fix='set hipchatd.allow_from to the Sensu backends, e.g. ["10.0.0.0/24"]',
        )
