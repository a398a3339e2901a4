"""Is this address on this machine? One answer, for host names, URLs and HTTP clients.

Local means a loopback address (``127.0.0.0/8``, ``::1``, and ``::ffff:127.x.y.z`` as a
dual-stack socket reports an IPv4 peer) or the name ``localhost``. A client is local only when
all three agree: its socket peer is loopback, it asked for a loopback host name (a page whose
own domain was made to resolve to 127.0.0.1, DNS rebinding, did not), and no proxy or tunnel
on this machine forwarded the request (forwarded headers are never trusted to make a client
local, only to make it not).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP address (brackets and a trailing dot allowed)."""
    host = host.strip().removeprefix("[").removesuffix("]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_local_url(url: str) -> bool:
    """The URL names this machine (``http://localhost:8080``, ``http://[::1]/``, …)."""
    return is_loopback_host(urlsplit(url).hostname or "")


def is_local_client(conn: HTTPConnection) -> bool:
    """A client on this machine, talking to this server directly (see the module docstring)."""
    peer = conn.client.host if conn.client else ""
    if not is_loopback_host(peer):
        return False
    if not is_loopback_host(urlsplit("//" + conn.headers.get("host", "")).hostname or ""):
        return False
    return not any(name in conn.headers for name in FORWARDING_HEADERS)
