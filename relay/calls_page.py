"""Monitoring routes: ``/metrics``, the calls page and the JSON API behind it.

* ``GET /metrics``: Prometheus text format (``relay.metrics``).
* ``GET /calls``, ``GET /calls/{sid}``: one static page (``static/calls.html`` and
  ``calls.js``, no build step) that lists live and recent calls and shows one call's
  transcript and timeline; it reads the API below and updates from ``/api/events``.
* ``GET /api/calls``: ``{"live": [...], "recent": [...]}``; ``GET /api/calls/{sid}``: one
  call's record (live or finished); ``POST /api/calls/{sid}/hangup``: the agent says a short
  goodbye and the call hangs up once it is heard (bounded by ``HANGUP_TIMEOUT``), or at once
  with ``?now=1`` (a call another instance holds is asked to hang up through the shared
  store's bus); ``GET /api/events``: server-sent events, one ``calls`` event with the live
  list whenever it changes (and every second, for the durations); ``?call={sid}``: ``call``
  events with that call's record instead, then ``end`` once it is over.

With a shared store (``REDIS_URL``) the live list also shows the calls other instances hold,
from the live-call directory (``relay.call_directory``): what their entries say, no more.

Every route is for the readers ``relay.admin_access`` allows; the hang-up also refuses
anything a page on another site could send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from relay import admin_access
from relay.call_directory import LiveEntry
from relay.masking import mask_number
from relay.metrics import CONTENT_TYPE
from relay.monitor import CallWatch, Monitor

if TYPE_CHECKING:
    from relay.routes import Relay

STATIC = Path(__file__).parent / "static"
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


def elsewhere_summary(entry: LiveEntry, now: float) -> dict[str, Any]:
    """A live call another instance holds, from its directory entry (less than a local one)."""
    return {"call_sid": entry.call_sid, "direction": entry.direction,
            "caller": mask_number(entry.parameters.get("caller", "")),
            "called": mask_number(entry.parameters.get("called", "")),
            "duration_seconds": round(max(0.0, now - entry.started_at), 1),
            "activity": "on another instance", "last_line": "", "barge_ins": None,
            "first_audio_seconds": None, "live": True, "instance": entry.instance}


def recent_summary(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("call_sid", "direction", "caller", "called", "started_at", "duration_seconds",
            "outcome", "end_reason", "first_audio_seconds", "response_p50_seconds",
            "response_max_seconds", "barge_ins")
    return {key: record.get(key) for key in keys}


def calls_routes(relay: Relay) -> list[BaseRoute]:
    monitor: Monitor = relay.monitor
    directory = relay.shared.directory
    token = relay.settings.admin_token
    page = (STATIC / "calls.html").read_bytes()
    script = (STATIC / "calls.js").read_bytes()

    def loop_time() -> float:
        return asyncio.get_running_loop().time()

    async def live_list() -> list[dict[str, Any]]:
        """This instance's live calls, then those the directory knows of on other instances."""
        now = loop_time()
        here = [live_summary(w, now) for w in monitor.live()]
        if not relay.shared.shared:
            return here
        mine = {call["call_sid"] for call in here}
        wall = time.time()
        return here + [elsewhere_summary(e, wall) for e in await directory.all()
                       if e.call_sid not in mine and e.instance != directory.instance]

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
        return JSONResponse({"live": await live_list(),
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
        sid = request.path_params["sid"]
        record = call_record(sid)
        if record is None:
            elsewhere = await directory.find(sid)
            if elsewhere is not None and elsewhere.instance != directory.instance:
                return JSONResponse(elsewhere_summary(elsewhere, time.time()),
                                    headers={"Cache-Control": "no-store"})
            return JSONResponse({"error": "no such call"}, status_code=404)
        return JSONResponse(record, headers={"Cache-Control": "no-store"})

    async def api_hangup(request: Request) -> Response:
        refused = admin_access.refuse_writer(request, token)
        if refused is not None:
            return refused
        sid = request.path_params["sid"]
        watch = monitor.find(sid)
        now = request.query_params.get("now") in ("1", "true")
        if watch is not None:
            watch.call.hang_up(now=now)
        elif await directory.find(sid) is None:
            return JSONResponse({"error": "no such live call"}, status_code=404)
        elif not await directory.hang_up(sid, now=now):  # held by another instance
            return JSONResponse({"error": "the instance holding the call cannot be reached"},
                                status_code=503)
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
                    yield b"event: calls\ndata: " + orjson.dumps(await live_list()) + b"\n\n"
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
