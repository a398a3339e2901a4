"""Monitoring routes: ``/metrics``, the calls page and the JSON API behind it.

* ``GET /metrics``: Prometheus text format (``relay.metrics``).
* ``GET /calls``, ``GET /calls/{sid}``: one static page (``static/calls.html`` and
  ``calls.js``, no build step) that lists live and recent calls and shows one call's
  transcript and timeline; it reads the API below and updates from ``/api/events``.
* ``GET /api/calls``: ``{"live": [...], "recent": [...]}``; ``GET /api/calls/{sid}``: one
  call's record (live or finished); ``POST /api/calls/{sid}/hangup``: the agent says a short
  goodbye and the call hangs up once it is heard (bounded by ``HANGUP_TIMEOUT``), or at once
  with ``?now=1``; ``GET /api/events``: server-sent events, one ``calls`` event with the live
  list whenever it changes (and every second, for the durations); ``?call={sid}``: ``call``
  events with that call's record instead, then ``end`` once it is over.

Every route is for the readers ``relay.admin_access`` allows; the hang-up also refuses
anything a page on another site could send.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from relay import admin_access
from relay.metrics import CONTENT_TYPE
from relay.monitor import CallWatch, Monitor

if TYPE_CHECKING:
    from relay.routes import Relay

STATIC = Path(__file__).parent / "static"
CALL_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")
CSP = ("default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; "
       "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff", "Content-Security-Policy": CSP}
# An event stream ends after this long and the browser reconnects: a shutting-down server
# never waits long for an open page.
EVENTS_LIFETIME = 20.0
EVENTS_INTERVAL = 1.0


def live_summary(watch: CallWatch, now: float) -> dict[str, Any]:
    r = watch.recorder
    return {"call_sid": r.call_sid, "direction": r.direction, "caller": r.caller,
            "called": r.called, "duration_seconds": round(r.duration(now), 1),
            "activity": r.activity, "last_line": r.last_line, "barge_ins": r.barge_ins,
            "first_audio_seconds": (round(r.first_audio_seconds, 3)
                                    if r.first_audio_seconds is not None else None),
            "live": True}


def recent_summary(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("call_sid", "direction", "caller", "called", "started_at", "duration_seconds",
            "outcome", "end_reason", "first_audio_seconds", "response_p50_seconds",
            "response_max_seconds", "barge_ins")
    return {key: record.get(key) for key in keys}


def calls_routes(relay: Relay) -> list[BaseRoute]:
    monitor: Monitor = relay.monitor
    token = relay.settings.admin_token
    page = (STATIC / "calls.html").read_bytes()
    script = (STATIC / "calls.js").read_bytes()

    def loop_time() -> float:
        return asyncio.get_running_loop().time()

    def live_list() -> list[dict[str, Any]]:
        now = loop_time()
        return [live_summary(w, now) for w in monitor.live()]

    async def metrics(request: Request) -> Response:
        refused = admin_access.refuse_reader(request, token)
        if refused is not None:
            return refused
        return Response(monitor.metrics.exposition(), media_type=CONTENT_TYPE)

    async def calls_page(request: Request) -> Response:
        refused = admin_access.refuse_reader(request, token)
        if refused is not None:
            return refused
        return Response(page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    async def calls_script(request: Request) -> Response:
        return Response(script, media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    async def api_calls(request: Request) -> Response:
        refused = admin_access.refuse_reader(request, token)
        if refused is not None:
            return refused
        return JSONResponse({"live": live_list(),
                             "recent": [recent_summary(r) for r in monitor.recent()]},
                            headers={"Cache-Control": "no-store"})

    def call_record(sid: str) -> dict[str, Any] | None:
        watch = monitor.find(sid)
        if watch is not None:
            return {**watch.recorder.record(loop_time()), "live": True}
        found = monitor.find_record(sid)
        return None if found is None else {**found, "live": False}

    async def api_call(request: Request) -> Response:
        refused = admin_access.refuse_reader(request, token)
        if refused is not None:
            return refused
        record = call_record(request.path_params["sid"])
        if record is None:
            return JSONResponse({"error": "no such call"}, status_code=404)
        return JSONResponse(record, headers={"Cache-Control": "no-store"})

    async def api_hangup(request: Request) -> Response:
        refused = admin_access.refuse_writer(request, token)
        if refused is not None:
            return refused
        sid = request.path_params["sid"]
        watch = monitor.find(sid)
        if watch is None:
            return JSONResponse({"error": "no such live call"}, status_code=404)
        now = request.query_params.get("now") in ("1", "true")
        watch.call.hang_up(now=now)
        return JSONResponse({"call_sid": sid, "hanging_up": "now" if now else "after goodbye"},
                            status_code=202)

    async def api_events(request: Request) -> Response:
        refused = admin_access.refuse_reader(request, token)
        if refused is not None:
            return refused

        sid = request.query_params.get("call")

        async def stream() -> AsyncIterator[bytes]:
            yield b"retry: 1000\n\n"
            until = loop_time() + EVENTS_LIFETIME
            while loop_time() < until:
                if sid is None:
                    yield b"event: calls\ndata: " + orjson.dumps(live_list()) + b"\n\n"
                else:
                    record = call_record(sid)
                    yield b"event: call\ndata: " + orjson.dumps(record) + b"\n\n"
                    if record is None or not record["live"]:
                        yield b"event: end\ndata: {}\n\n"  # the page stops listening
                        return
                await monitor.changed(EVENTS_INTERVAL)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    return [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/calls", calls_page, methods=["GET"]),
        Route("/calls/calls.js", calls_script, methods=["GET"]),
        Route("/calls/{sid}", calls_page, methods=["GET"]),
        Route("/api/calls", api_calls, methods=["GET"]),
        Route("/api/calls/{sid}", api_call, methods=["GET"]),
        Route("/api/calls/{sid}/hangup", api_hangup, methods=["POST"]),
        Route("/api/events", api_events, methods=["GET"]),
    ]
