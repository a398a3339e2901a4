"""HTTP and WebSocket routes, the lifespan and the one error boundary around each call.

Routes: ``GET /healthz`` (liveness), ``GET /readyz`` (readiness: 503 while draining),
``POST /twiml`` (Twilio's voice webhook), ``POST /call-action`` (the
``<Connect action>``: what the caller hears once the stream ends), ``POST /call-status`` (call
status callbacks) and the ``/media`` stream; ``app.py`` adds the local agent and the softphone.
Every webhook and every upgrade is authenticated before anything happens: Twilio signatures
over ``PUBLIC_URL`` when the auth token is configured, clients on this machine only
(``relay.netaddr``) when it is not.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketState

from relay import twiml
from relay.admission import Admission, refusal_twiml
from relay.bridge import CallBridge
from relay.calls_page import calls_routes
from relay.config import Settings
from relay.draining import DRAINED_REASON, GOODBYE_INSTRUCTIONS, LiveCalls
from relay.load import LagMonitor
from relay.masking import mask_number
from relay.monitor import CallEndedHook, Monitor
from relay.netaddr import is_local_client
from relay.outcome_records import answer, read_outcome
from relay.outcomes import Outcome
from relay.security import StreamTokens, is_from_twilio
from relay.serving import RECEIVE_TEXT, SEND_TEXT
from relay.shared_state import SharedState
from relay.store import Store
from relay.takeover import MAX_RESTREAMS, RESTREAM, restream_parameters
from relay.tools import Registry

log = logging.getLogger("relay.routes")

# Twilio <Parameter> values must stay under 500 characters (name + value).
MAX_PARAMETER = 480
# Webhook query parameters that become the call's <Parameter>s; the query is signed by Twilio.
# ``observe=1`` also sends the call's events (transcripts, tools) on the stream: simulator only.
PER_CALL_OPTIONS = ("greeting", "prompt", "observe")
# Left on an answering machine by outbound calls placed with ``amd=message`` and no ``amd_message``.
DEFAULT_MACHINE_MESSAGE = ("Hello, this is an automated call. Sorry we missed you; "
                           "we will try again later. Goodbye.")


class Relay:
    """The application's shared state: settings, tools, token keys and process-wide clients."""

    def __init__(self, settings: Settings, registry: Registry,
                 store: Store | None = None,
                 call_ended: CallEndedHook | None = None) -> None:
        self.settings = settings
        self.registry = registry
        # Cross-call state: in this process, or shared by every instance (REDIS_URL).
        self.shared = SharedState.from_settings(settings)
        # Outcome records for the <Connect action> request (and other cross-call state).
        self.store: Store = store if store is not None else self.shared.store
        self.monitor = Monitor(
            call_log_dir=settings.call_log_dir, redact_transcripts=settings.redact_transcripts,
            call_ended=call_ended, hook_timeout=settings.call_ended_hook_timeout,
            tool_names=frozenset(registry.names()))
        self.shared.register_metrics(self.monitor.metrics.registry)
        self.tokens = StreamTokens(settings.relay_secret)
        self.lag = LagMonitor()
        self.admission = Admission(settings, self.store, lag_ms=self.lag.lag_ms,
                                   limiter_storage=self.shared.limiter_storage,
                                   limited=self.shared.limited)
        self.shared.directory.renewals.append(self.admission.renew)
        self.calls = LiveCalls()
        self.http: httpx.AsyncClient | None = None

    def signed(self, conn: HTTPConnection, url: str, params: Mapping[str, Any]) -> bool:
        """Is this request from Twilio? Without an auth token, only local clients pass."""
        settings = self.settings
        if not settings.verify_signatures or settings.twilio_auth_token is None:
            return is_local_client(conn)
        return is_from_twilio(settings.twilio_auth_token, url, params,
                              conn.headers.get("x-twilio-signature", ""))

    def public_url(self, request: Request) -> str:
        """The URL Twilio signed: ``PUBLIC_URL`` + path (+ query), never the URL we saw."""
        url = self.settings.public_base + request.url.path
        return f"{url}?{request.url.query}" if request.url.query else url

    def stream_parameters(self, call_sid: str, form: Mapping[str, Any],
                          extra: Mapping[str, str]) -> dict[str, str]:
        direction = str(form.get("Direction", "inbound"))
        params = {
            "token": self.tokens.mint(call_sid, now=time.time(), ttl=self.settings.token_ttl),
            "caller": str(form.get("From", "")),
            "called": str(form.get("To", "")),
            "direction": "outbound" if direction.startswith("outbound") else "inbound",
        }
        for name, value in extra.items():
            params[name] = value[:MAX_PARAMETER - len(name)]
        return params

    async def twiml(self, request: Request) -> Response:
        form = await request.form()
        if not self.signed(request, self.public_url(request), form):
            log.warning("rejected /twiml request: bad or missing X-Twilio-Signature")
            self.monitor.metrics.refused(Outcome.REFUSED_UNAUTHORIZED)
            return PlainTextResponse("invalid signature", status_code=403)
        call_sid = form.get("CallSid")
        if not isinstance(call_sid, str) or not call_sid:
            return PlainTextResponse("CallSid is required", status_code=400)
        answered_by, amd = str(form.get("AnsweredBy", "")), request.query_params.get("amd")
        if amd in ("hangup", "message") and answered_by.startswith(("machine", "fax")):
            leave_message = amd == "message" and answered_by != "fax"
            log.info("[%s] answered by %s: %s", call_sid, answered_by,
                     "leaving a message" if leave_message else "hanging up")
            message = ((request.query_params.get("amd_message") or DEFAULT_MACHINE_MESSAGE)
                       if leave_message else "")
            return Response(twiml.fallback(message, None), media_type="text/xml")
        outbound = str(form.get("Direction", "")).startswith("outbound")
        refusal = await self.admission.admit(call_sid, str(form.get("From", "")),
                                             outbound=outbound)
        if refusal is not None:
            self.monitor.metrics.refused(refusal.outcome)
            return Response(refusal_twiml(refusal, self.settings.fallback_number,
                                          outbound=outbound), media_type="text/xml")
        extra = {k: v for k, v in request.query_params.items() if k in PER_CALL_OPTIONS}
        params = self.stream_parameters(call_sid, form, extra)
        log.info("[%s] incoming call from %s to %s: connecting the stream", call_sid,
                 mask_number(params["caller"]) or "unknown",
                 mask_number(params["called"]) or "unknown")
        return Response(twiml.connect_stream(self.settings.stream_url, params,
                                             action=self.settings.action_url),
                        media_type="text/xml")

    async def call_action(self, request: Request) -> Response:
        """``<Connect action>``: the stream has ended; answer what the caller hears next.

        The outcome was recorded by CallSid before the stream was closed, possibly by another
        instance; without a record (that process died) the caller gets the fallback.
        """
        form = await request.form()
        if not self.signed(request, self.public_url(request), form):
            log.warning("rejected /call-action request: bad or missing X-Twilio-Signature")
            return PlainTextResponse("invalid signature", status_code=403)
        call_sid = form.get("CallSid")
        if not isinstance(call_sid, str) or not call_sid:
            return PlainTextResponse("CallSid is required", status_code=400)
        status = str(form.get("CallStatus", ""))
        record = None if status == "completed" else await read_outcome(self.store, call_sid)
        if record is None and status != "completed":
            again = await self._take_over(call_sid, status)
            if again is not None:
                return again
        s = self.settings
        result = answer(record, call_status=status, fallback_message=s.fallback_message,
                        fallback_number=s.fallback_number)
        log.info("[%s] stream ended (call %s): the caller hears %s", call_sid,
                 status or "status unknown", result.says)
        return Response(result.twiml, media_type="text/xml")

    async def _take_over(self, call_sid: str, status: str) -> Response | None:
        """No outcome: if the call's instance died with its agent session live, stream the
        call again (``relay.takeover``) so that the new stream resumes that session."""
        entry = await self.shared.directory.find(call_sid)
        params = restream_parameters(entry, status)
        if entry is None or params is None:
            return None
        s = self.settings
        # A token of its own (tokens are single-use): one that expires later than the
        # call's earlier ones, which were minted no later than now with the same TTL.
        params["token"] = self.tokens.mint(call_sid, now=time.time(),
                                           ttl=s.token_ttl + int(params[RESTREAM]))
        log.warning("[%s] stream lost without an outcome (held by %s, which died or lost "
                    "Twilio's stream): streaming the call again (%s of %d) to resume agent "
                    "session %s", call_sid, entry.instance, params[RESTREAM], MAX_RESTREAMS,
                    entry.session_id)
        return Response(twiml.connect_stream(s.stream_url, params, action=s.action_url),
                        media_type="text/xml")

    async def call_status(self, request: Request) -> Response:
        """Twilio's status callback: log each transition of a call."""
        form = await request.form()
        if not self.signed(request, self.public_url(request), form):
            log.warning("rejected /call-status request: bad or missing X-Twilio-Signature")
            return PlainTextResponse("invalid signature", status_code=403)
        details = [f"{key}={form[key]}" for key in ("CallDuration", "AnsweredBy") if form.get(key)]
        log.info("[%s] call status: %s%s", form.get("CallSid") or "unknown",
                 form.get("CallStatus") or "unknown", f" ({', '.join(details)})" if details else "")
        return Response(status_code=204)

    async def media(self, ws: WebSocket) -> None:
        if not self.signed(ws, self.settings.stream_url, {}):
            log.warning("rejected media stream upgrade: bad or missing x-twilio-signature")
            self.monitor.metrics.refused(Outcome.REFUSED_UNAUTHORIZED)
            await ws.close(code=1008)
            return
        await self.serve_call(ws, purpose="twilio")

    async def serve_call(self, ws: WebSocket, *, purpose: str) -> None:
        """Accept a stream and bridge it; the error boundary of one call."""
        if not {SEND_TEXT, RECEIVE_TEXT} <= set(ws.scope.get("extensions") or {}):
            log.error("media streams need the server protocol of relay.serving: serve the app "
                      "with `python app.py` or relay.serving.config()")
            await ws.close(code=1011)
            return
        bridge = CallBridge(ws, settings=self.settings, registry=self.registry, http=self.http,
                            tokens=self.tokens, purpose=purpose, monitor=self.monitor,
                            open_stream=self.admission.open_stream if purpose == "twilio" else None,
                            store=self.store, directory=self.shared.directory)
        self.calls.add(bridge)
        try:
            await bridge.run()
        except Exception:
            bridge.log.exception("call failed")
            if ws.application_state is WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await ws.close(1011)
        finally:
            self.calls.discard(bridge)
            if bridge.places is not None:
                await self.admission.close_stream(bridge.places)

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(self, request: Request) -> Response:
        """Readiness: 503 once draining, so a load balancer sends new calls elsewhere."""
        if self.admission.draining:
            return PlainTextResponse("draining", status_code=503)
        return PlainTextResponse("ready")

    def start_draining(self) -> None:
        self.admission.draining = True

    async def end_calls(self) -> int:
        """The drain deadline: hand each call to FALLBACK_NUMBER, or end it after a goodbye.

        Either way the call ends as ``drained``; its ``<Connect action>`` then dials the
        fallback number, or hangs up.
        """
        number, count = self.settings.fallback_number, 0
        for call in self.calls:
            count += 1
            if number and call.opened_call_sid is not None:
                log.info("[%s] drain deadline: handing the call to %s", call.opened_call_sid,
                         mask_number(number))
                call.end_now(DRAINED_REASON, Outcome.DRAINED, number)
            else:
                call.say_goodbye_and_end(GOODBYE_INSTRUCTIONS, DRAINED_REASON, Outcome.DRAINED)
        return count

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with (httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http,
                    self.shared.running()):
            self.http = http
            # What start-up built (modules, tools, routes) lives as long as the process: keep
            # it out of the collector's full passes, which would otherwise pause every call.
            gc.collect()
            gc.freeze()
            self.lag.start()
            try:
                async with self.monitor.running():
                    yield
            finally:
                self.lag.stop()
                self.http = None


def create_app(
    settings: Settings,
    registry: Registry,
    *,
    extra_routes: Callable[[Relay], list[BaseRoute]] | None = None,
    store: Store | None = None,
    call_ended: CallEndedHook | None = None,
) -> Starlette:
    """The app. ``call_ended``: a coroutine function given each finished call's record."""
    relay = Relay(settings, registry, store, call_ended)
    routes: list[BaseRoute] = [
        Route("/healthz", relay.healthz, methods=["GET"]),
        Route("/readyz", relay.readyz, methods=["GET"]),
        Route("/twiml", relay.twiml, methods=["POST"]),
        Route("/call-action", relay.call_action, methods=["POST"]),
        Route("/call-status", relay.call_status, methods=["POST"]),
        WebSocketRoute("/media", relay.media),
        *calls_routes(relay),
    ]
    if extra_routes is not None:
        routes += extra_routes(relay)
    app = Starlette(routes=routes, lifespan=relay.lifespan)
    app.state.relay = relay
    return app
