"""HTTPS for the emulator: a throwaway certificate from a throwaway CA (trustme)."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable

#: Every name a local client may use for the emulator; the throwaway certificate covers each.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
#: How to get what ``--tls`` needs: the extra that pulls in trustme.
TLS_INSTALL_HINT = "pip install 'hipchatd[emulator-tls]'"


class TLSUnavailable(RuntimeError):
    """``--tls`` needs trustme (which makes the throwaway CA), and it is not installed."""


def throwaway_tls(
    ca_path: str | os.PathLike[str], hosts: Iterable[str] = LOOPBACK_NAMES
) -> ssl.SSLContext:
    """A server context with a fresh certificate for ``hosts``, signed by a fresh CA.

    Writes the CA's certificate (PEM) to ``ca_path``, for clients to trust:
    hipchatd's ``hipchat.ca_file``, ``curl --cacert``, httpx's ``verify``. The
    CA's private key never leaves memory, so the certificate is worthless once
    the process ends. Raises TLSUnavailable when trustme is not installed,
    OSError when ``ca_path`` cannot be written.
    """
    try:
        import trustme
    except ImportError as exc:
        raise TLSUnavailable(
            f"--tls needs the trustme package: {TLS_INSTALL_HINT} "
            "(or give your own certificate with --tls-cert and --tls-key)"
        ) from exc
    authority = trustme.CA(organization_name="hipchatd emulator")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(*dict.fromkeys(hosts)).configure_cert(context)
    authority.cert_pem.write_to_path(os.fspath(ca_path))
    return context
