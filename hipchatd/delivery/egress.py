"""Which proxy, if any, a request to HipChat goes through. Pure.

``hipchat.proxy`` decides (:class:`~hipchatd.config.ProxySetting`):

* unset: no proxy, and the environment is ignored, so the daemon behaves the
  same under systemd as in a shell;
* a URL: every request goes through that proxy; ``NO_PROXY`` does not apply;
* ``"env"``: the proxy variables as curl reads them
  (https://everything.curl.dev/usingcurl/proxies/env), read once when the
  HTTP client is made: ``https_proxy`` (then ``HTTPS_PROXY``) for an https://
  server, ``http_proxy`` (then ``HTTP_PROXY``) for an http:// one, else
  ``all_proxy`` (then ``ALL_PROXY``); an empty value counts as unset.
  ``no_proxy`` (then ``NO_PROXY``) lists hosts that go direct, comma-separated:
  ``*`` is every host; a name matches that host and every host under it
  (a leading dot is ignored: ``.example.com`` and ``example.com`` both match
  ``example.com`` and ``hipchat.example.com``, never ``notexample.com``); an
  IP address matches itself, an IP network (``10.0.0.0/8``) every address
  in it; an entry's port is ignored. Unlike curl, ``HTTP_PROXY`` in upper
  case is honoured: curl ignores it because a CGI script's environment gets
  ``HTTP_PROXY`` from a request's ``Proxy:`` header (httpoxy), and hipchatd
  is never a CGI script. A proxy variable must hold ``http://host:port`` or
  ``https://host:port`` (``host:port`` means http://); anything else refuses
  to start, naming the variable.

Nothing else from the environment is read: not ``SSL_CERT_FILE`` nor
``SSL_CERT_DIR`` (``hipchat.ca_file`` alone changes the trusted CAs), not
``.netrc``.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hipchatd.config import PROXY_FROM_ENV, ProxySetting, ProxyUrl
from hipchatd.errors import ConfigError
from hipchatd.redaction import scrub

__all__ = ["EnvironmentProxies", "Route", "bypassed", "route", "scrub_proxy"]

#: Which proxy a request to ``(scheme, host)`` takes: a proxy, or None for direct.
Route = Callable[[str, str], ProxyUrl | None]

#: The variables naming a proxy for each scheme, first found wins.
_PROXY_VARIABLES: Mapping[str, tuple[str, ...]] = {
    "https": ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"),
    "http": ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"),
}
_NO_PROXY_VARIABLES = ("no_proxy", "NO_PROXY")


@dataclass(frozen=True, slots=True)
class EnvironmentProxies:
    """The proxy variables of one environment: a proxy per scheme, and the hosts that go direct."""

    #: scheme -> (the variable that named it, the proxy).
    proxies: Mapping[str, tuple[str, ProxyUrl]]
    #: the entries of NO_PROXY, lower case, without a leading dot.
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def read(cls, environ: Mapping[str, str]) -> EnvironmentProxies:
        """Read the variables. Raises ConfigError naming a variable that holds no usable proxy."""
        proxies: dict[str, tuple[str, ProxyUrl]] = {}
        problems: list[str] = []
        for scheme, names in _PROXY_VARIABLES.items():
            name = next((n for n in names if environ.get(n, "").strip()), None)
            if name is None:
                continue
            text = environ[name].strip()
            text = text if "://" in text else f"http://{text}"
            try:
                proxies[scheme] = (name, ProxyUrl.parse(text))
            except ValueError as exc:
                problems.append(
                    f"{name}: {exc} (value hidden); expected http://host:port or"
                    f' https://host:port, as hipchat.proxy is "{PROXY_FROM_ENV}"'
                )
        if problems:
            raise ConfigError(sorted(set(problems)))
        listed = next((environ[n] for n in _NO_PROXY_VARIABLES if environ.get(n, "").strip()), "")
        entries = (_without_port(entry.strip().lower().lstrip(".")) for entry in listed.split(","))
        return cls(proxies, tuple(entry for entry in entries if entry))

    def proxy_for(self, scheme: str, host: str) -> ProxyUrl | None:
        """The proxy for a request to ``scheme://host``, or None: direct."""
        named = self.proxies.get(scheme.lower())
        if named is None or bypassed(host, self.no_proxy):
            return None
        return named[1]


def bypassed(host: str, no_proxy: tuple[str, ...]) -> bool:
    """Whether ``host`` is listed in ``no_proxy`` (entries as EnvironmentProxies keeps them)."""
    host = host.lower().strip("[]").rstrip(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy:
        if entry == "*":
            return True
        if address is not None and "/" in entry:
            try:
                if address in ipaddress.ip_network(entry.strip("[]"), strict=False):
                    return True
            except ValueError:
                pass  # not a network: a name no IP address matches
            continue
        entry = entry.strip("[]").rstrip(".")
        if host == entry or (address is None and host.endswith("." + entry)):
            return True
    return False


def _without_port(entry: str) -> str:
    """A NO_PROXY entry without its port, if any: ``host:8080``, ``[::1]:8080``."""
    if entry.startswith("[") and "]:" in entry:
        return entry.partition("]:")[0] + "]"
    if entry.count(":") == 1:
        return entry.partition(":")[0]
    return entry


def route(setting: ProxySetting, environ: Mapping[str, str]) -> Route | None:
    """How requests reach HipChat under ``setting``: None when every request goes direct.

    ``environ`` is read only for ``"env"``. Raises ConfigError as
    :meth:`EnvironmentProxies.read` does.
    """
    if isinstance(setting, ProxyUrl):
        proxy = setting

        def always(scheme: str, host: str) -> ProxyUrl:
            return proxy

        return always
    if setting is None:
        return None
    proxies = EnvironmentProxies.read(environ)
    return proxies.proxy_for if proxies.proxies else None


def scrub_proxy(text: str, proxy: ProxyUrl) -> str:
    """``text`` (about ``proxy``) with every form of the proxy's credentials removed.

    Error texts come from the proxy or the network, and a proxy could quote
    the ``Proxy-Authorization`` it was sent.
    """
    auth = proxy.auth()
    if proxy.credentials is None or auth is None:
        return text
    basic = base64.b64encode(":".join(auth).encode()).decode("ascii")
    # Not the user name alone: a common word (say "proxy") would be scrubbed everywhere.
    for secret in (proxy.credentials.reveal(), basic, auth[1]):
        text = scrub(text, secret)
    return text
