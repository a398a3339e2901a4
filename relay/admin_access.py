"""Who may read ``/metrics``, the calls page and ``/api/*``, and who may change a call.

Readers: a client on this machine (a loopback peer that asked for a loopback host name, with
no proxy in between), or anyone presenting ``ADMIN_TOKEN``, as a Bearer token (scripts,
Prometheus) or as the password of HTTP Basic (a browser elsewhere; any user name). Forwarded
headers are never trusted to make a client local: a request a proxy or tunnel on this machine
forwards is treated as coming from elsewhere. Without ``ADMIN_TOKEN`` only this machine reads.

Writers (hang-up) must also be readers, and must send what a page on another site cannot send
without the browser asking first (CORS preflight): a JSON body or the ``X-Relay-Request``
header; a browser's ``Origin``, when present, must be this server. So a web page open in a
browser on the relay's own machine cannot hang up calls, although the browser is local.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse, Response

from relay.netaddr import is_local_client

REALM = 'Basic realm="relay admin", Bearer realm="relay admin"'
CUSTOM_HEADER = "x-relay-request"


def presented_token(authorization: str) -> str | None:
    """The Bearer token, or the password of HTTP Basic, of an ``Authorization`` header."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    return basic_password(authorization)


def basic_password(authorization: str) -> str | None:
    """The password of an HTTP Basic ``Authorization`` header (any user name), or None."""
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, colon, password = decoded.partition(":")
    return password if colon else None


def matches(given: str | None, secret: str) -> bool:
    """Is ``given`` the secret? Compared in constant time."""
    return given is not None and hmac.compare_digest(given.encode(), secret.encode())


def may_read(conn: HTTPConnection, admin_token: str | None) -> bool:
    if is_local_client(conn):
        return True
    if not admin_token:
        return False
    return matches(presented_token(conn.headers.get("authorization", "")), admin_token)


def refuse_reader(conn: HTTPConnection, admin_token: str | None) -> Response | None:
    """None when this client may read, else the 401 that asks for the token."""
    if may_read(conn, admin_token):
        return None
    text = ("Needs ADMIN_TOKEN (Bearer, or as the HTTP Basic password).\n" if admin_token
            else "Open to this machine only: set ADMIN_TOKEN to read it from elsewhere.\n")
    return PlainTextResponse(text, status_code=401, headers={"WWW-Authenticate": REALM})


def is_cross_site(conn: HTTPConnection) -> bool:
    """Could a page on another site have sent this request without a CORS preflight?"""
    headers = conn.headers
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and CUSTOM_HEADER not in headers:
        return True
    if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return True
    return not same_origin(conn)


def same_origin(conn: HTTPConnection) -> bool:
    """False when a browser says the request comes from a page on another site (``Origin``)."""
    origin = conn.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == conn.headers.get("host", "").lower()


def refuse_writer(conn: HTTPConnection, admin_token: str | None) -> Response | None:
    """None when this client may change a call, else the 401 or 403 refusing it."""
    refused = refuse_reader(conn, admin_token)
    if refused is not None:
        return refused
    if is_cross_site(conn):
        return PlainTextResponse(
            "Refused: send a JSON body or the X-Relay-Request header, from this server's own "
            "pages.\n", status_code=403)
    return None
