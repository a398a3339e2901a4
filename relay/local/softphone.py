"""The browser softphone: a page that calls the agent from a browser, as Twilio would.

Routes (mounted with ``create_app(..., extra_routes=phone_routes)`` when ``PHONE_ENABLED``):

* ``GET /phone``: the page; its scripts are ``/phone/phone.js``, ``/phone/worklet.js`` (the
  audio thread) and ``/phone/g711.js`` (the μ-law codec).
* ``POST /phone/session``: mints one call: a ``CA``/``MZ`` pair, the media stream URL and a
  stream token for purpose ``phone`` that expires a minute later.
* ``/phone/media``: the page's stream. It speaks the Twilio Media Streams protocol and is
  bridged by the same code as a Twilio stream; the minted token is its authentication.
* ``POST /phone/action``: what Twilio's ``<Connect action>`` request would answer once the
  relay has closed the stream (the same outcome record and the same decision), as JSON for the
  page to show and speak: words, a dial, a hang-up. It needs the call's ``action_token``.

The page and the mint are open to this machine (a loopback client that asked for a loopback
host name, not through a proxy), and to others only with HTTP Basic authentication whose
password is ``PHONE_PASSWORD`` (any user name). Browsers only give a page the microphone in a
secure context, so from another machine the page must be served over HTTPS.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from relay.admin_access import basic_password, matches, same_origin
from relay.config import Settings
from relay.local.caller import new_sid, parse_next
from relay.netaddr import is_local_client
from relay.outcome_records import answer, read_outcome
from relay.routes import Relay

STATIC = Path(__file__).parent / "static"
# The page asks for its session and opens the stream at once: a minute is plenty.
PHONE_TOKEN_TTL = 60
REALM = 'Basic realm="relay phone"'
UNSAFE_IN_HOST = re.compile(r"[^A-Za-z0-9.:\[\]_-]")
# The page loads nothing from elsewhere and may only talk to the server it came from.
CSP = ("default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self' {ws}; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
# Scripts the page loads, by URL name under /phone/ and file name in static/.
ASSETS = {"phone.js": "phone.js", "worklet.js": "phone-worklet.js", "g711.js": "g711.js"}


def phone_access(conn: HTTPConnection, settings: Settings) -> Response | None:
    """None when this client may use the softphone, else the response refusing it."""
    if is_local_client(conn):
        return None
    expected = settings.phone_password
    if not expected:
        return PlainTextResponse(
            "The softphone is only open to browsers on this machine (http://localhost:"
            f"{settings.port}/phone). To use it from elsewhere, set PHONE_PASSWORD and serve "
            "it over HTTPS.\n", status_code=403)
    if matches(basic_password(conn.headers.get("authorization", "")), expected):
        return None
    return PlainTextResponse("The softphone needs a password (PHONE_PASSWORD).\n",
                             status_code=401, headers={"WWW-Authenticate": REALM})


def refuse_call_request(request: Request, settings: Settings) -> Response | None:
    """None when the page may start or follow a call: an allowed client, from the page itself."""
    refused = phone_access(request, settings)
    if refused is None and not same_origin(request):
        refused = PlainTextResponse("cross-site request refused\n", status_code=403)
    return refused


def stream_url(request: Request) -> str:
    """The ``/phone/media`` URL on the host the page was loaded from."""
    scheme = "wss" if request.url.scheme in ("https", "wss") else "ws"
    host = UNSAFE_IN_HOST.sub("", request.headers.get("host") or request.url.netloc)
    return f"{scheme}://{host}/phone/media"


def phone_routes(relay: Relay) -> list[BaseRoute]:
    """The softphone's routes, for ``create_app(..., extra_routes=phone_routes)``."""
    settings = relay.settings
    page = (STATIC / "phone.html").read_bytes()

    async def phone_page(request: Request) -> Response:
        refused = phone_access(request, settings)
        if refused is not None:
            return refused
        headers = {**PAGE_HEADERS, "Content-Security-Policy": CSP.format(ws=stream_url(request))}
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    def asset(name: str) -> Route:
        body = (STATIC / ASSETS[name]).read_bytes()

        async def serve(request: Request) -> Response:
            return Response(body, media_type="text/javascript; charset=utf-8",
                            headers={"Cache-Control": "no-cache",
                                     "X-Content-Type-Options": "nosniff"})

        return Route(f"/phone/{name}", serve, methods=["GET"])

    async def phone_session(request: Request) -> Response:
        refused = refuse_call_request(request, settings)
        if refused is not None:
            return refused
        call_sid, stream_sid = new_sid("CA"), new_sid("MZ")
        now = time.time()
        token = relay.tokens.mint(call_sid, now=now, ttl=PHONE_TOKEN_TTL, purpose="phone")
        # Asks what happens after the stream ends: valid as long as that can be asked.
        action_token = relay.tokens.mint(
            call_sid, now=now, ttl=settings.max_call_seconds + settings.outcome_ttl,
            purpose="phone-action")
        return JSONResponse({"stream_url": stream_url(request), "call_sid": call_sid,
                             "stream_sid": stream_sid, "token": token,
                             "action_token": action_token},
                            headers={"Cache-Control": "no-store"})

    async def phone_action(request: Request) -> Response:
        refused = refuse_call_request(request, settings)
        if refused is not None:
            return refused
        try:
            body = await request.json()
            call_sid, token = str(body["call_sid"]), str(body["action_token"])
        except (ValueError, KeyError, TypeError):
            return PlainTextResponse("call_sid and action_token are required\n", status_code=400)
        if not relay.tokens.verify(token, call_sid, now=time.time(), purpose="phone-action"):
            return PlainTextResponse("invalid action token\n", status_code=403)
        result = answer(await read_outcome(relay.store, call_sid), call_status="in-progress",
                        fallback_message=settings.fallback_message,
                        fallback_number=settings.fallback_number)
        step = parse_next(result.twiml)
        return JSONResponse({"says": list(step.says), "dials": step.dials,
                             "hangs_up": step.hangs_up, "describe": step.describe(),
                             "twiml": result.twiml}, headers={"Cache-Control": "no-store"})

    async def phone_media(ws: WebSocket) -> None:
        await relay.serve_call(ws, purpose="phone")

    return [
        Route("/phone", phone_page, methods=["GET"]),
        Route("/phone/session", phone_session, methods=["POST"]),
        Route("/phone/action", phone_action, methods=["POST"]),
        *(asset(name) for name in ASSETS),
        WebSocketRoute("/phone/media", phone_media),
    ]
