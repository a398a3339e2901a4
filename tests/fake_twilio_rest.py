"""A fake of Twilio's REST API for calls: a real HTTP server on 127.0.0.1:0, in a thread.

It answers like ``api.twilio.com`` for what the relay uses, with HTTP Basic auth:
``POST …/Calls.json`` (201 and a call resource, status ``queued``), ``GET …/Calls/{sid}.json``
and ``POST …/Calls/{sid}.json`` (a live call's new TwiML, or ``Status=completed``; a call it did
not create counts as a live inbound call). It refuses what Twilio refuses, with Twilio's error
JSON: bad credentials (20003), an invalid ``To`` (21211) or ``From`` (21212), a ``From`` that is
neither a number of the account nor a verified caller ID (21210), on a trial account a ``To``
that is not verified (21219), and with ``refuse`` an update of a call that is over (21220).
``hang`` holds every request unanswered until the server stops, as a stuck connection would.
Every request is recorded (unknown paths also in ``unexpected``), and ``send_status`` posts a
signed status callback as Twilio would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import httpx

from relay.security import twilio_signature

ACCOUNT_SID = "AC" + "0" * 32
TWILIO_NUMBER = "+15017122661"
CREATE = re.compile(r"^/2010-04-01/Accounts/(?P<account>AC\w+)/Calls\.json$")
CALL = re.compile(r"^/2010-04-01/Accounts/(?P<account>AC\w+)/Calls/(?P<sid>CA\w+)\.json$")
E164 = re.compile(r"^\+[1-9]\d{6,14}$")


@dataclass
class Recorded:
    method: str
    path: str
    form: dict[str, list[str]]
    authorization: str = ""
    at: float = 0.0  # monotonic time the request arrived

    def one(self, name: str) -> str:
        (value,) = self.form[name]
        return value

    @property
    def account_sid(self) -> str:
        match = CREATE.match(self.path) or CALL.match(self.path)
        return match["account"] if match else ""

    @property
    def call_sid(self) -> str:
        match = CALL.match(self.path)
        return match["sid"] if match else ""


class TwilioError(Exception):
    def __init__(self, status: int, code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.body = {"code": code, "message": message,
                     "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status,
                     **extra}
        self.status = status


def valid_number(number: str) -> bool:
    """E.164, and for +1 a real NANP shape (area code and exchange start with 2-9)."""
    if not E164.match(number):
        return False
    return not number.startswith("+1") or bool(re.match(r"^\+1[2-9]\d\d[2-9]\d{6}$", number))


@dataclass
class FakeTwilioRest:
    """``verified`` set: a trial account that may only call those numbers."""

    auth_token: str
    account_sid: str = ACCOUNT_SID
    numbers: Iterable[str] = (TWILIO_NUMBER,)
    verified: Iterable[str] | None = None
    refuse: bool = False  # answer call updates as Twilio does for a call that already ended
    hang: bool = False  # never answer (until the server stops)
    # Statuses the call moves through, one per fetch: (status, duration in seconds or None).
    progress: list[tuple[str, int | None]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list, init=False)
    unexpected: list[str] = field(default_factory=list, init=False)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict, init=False)
    _server: ThreadingHTTPServer | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _release: threading.Event = field(default_factory=threading.Event, init=False)

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @contextlib.contextmanager
    def running(self) -> Iterator[FakeTwilioRest]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake._serve(self)

            def do_POST(self) -> None:
                fake._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
        thread.start()
        self._server = server
        try:
            yield self
        finally:
            self._release.set()
            server.shutdown()
            thread.join(5)
            server.server_close()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[FakeTwilioRest]:
        """``running()``, for an ``async with`` beside other asynchronous context managers."""
        with self.running():
            yield self

    def created(self) -> list[Recorded]:
        """The recorded ``POST …/Calls.json`` requests."""
        return [r for r in self.requests if r.method == "POST" and CREATE.match(r.path)]

    def updates(self) -> list[Recorded]:
        """The recorded ``POST …/Calls/{sid}.json`` requests (transfers, hang-ups)."""
        return [r for r in self.requests if r.method == "POST" and CALL.match(r.path)]

    async def wait_for(self, count: int = 1, within: float = 3.0) -> list[Recorded]:
        """At least ``count`` requests, within ``within`` seconds."""
        async with asyncio.timeout(within):
            while len(self.requests) < count:  # noqa: ASYNC110 (they arrive on the server's thread)
                await asyncio.sleep(0.005)
        return self.requests

    async def send_status(self, sid: str, event: str, status: str,
                          **extra: str) -> httpx.Response:
        """Post a signed status callback for call ``sid`` to its ``StatusCallback``."""
        call = self.calls[sid]
        form = {"CallSid": sid, "AccountSid": self.account_sid, "From": call["from"],
                "To": call["to"], "CallStatus": status, "Direction": "outbound-api",
                "ApiVersion": "2010-04-01", "CallbackSource": "call-progress-events",
                "StatusCallbackEvent": event, "Timestamp": formatdate(usegmt=True),
                "SequenceNumber": str(call["_sequence"]), **extra}
        call["_sequence"] += 1
        url = call["_status_callback"]
        async with httpx.AsyncClient(timeout=5) as http:
            return await http.post(url, data=form, headers={
                "X-Twilio-Signature": twilio_signature(self.auth_token, url, form)})

    # ------------------------------------------------------------------ serving

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length).decode() if length else ""
        path = handler.path.partition("?")[0]
        record = Recorded(handler.command, path, parse_qs(body, keep_blank_values=True),
                          handler.headers.get("Authorization", ""), time.monotonic())
        if self.hang:
            with self._lock:
                self.requests.append(record)
            self._release.wait(30)
            return
        with self._lock:
            self.requests.append(record)
            try:
                status, payload = self._route(record, handler.headers.get("Authorization", ""))
            except TwilioError as exc:
                status, payload = exc.status, exc.body
        raw = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)

    def _route(self, record: Recorded, authorization: str) -> tuple[int, dict[str, Any]]:
        create, call = CREATE.match(record.path), CALL.match(record.path)
        match = create or call
        if match is None:
            self.unexpected.append(f"{record.method} {record.path}")
            raise TwilioError(404, 20404, "The requested resource was not found")
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if authorization != f"Basic {expected}" or match["account"] != self.account_sid:
            raise TwilioError(401, 20003, "Authenticate",
                              detail="Your AccountSid or AuthToken was incorrect.")
        if create and record.method == "POST":
            return 201, self._create(record)
        if call and record.method == "GET":
            return 200, self._fetch(call["sid"])
        if call and record.method == "POST":
            return 200, self._update(call["sid"], record)
        self.unexpected.append(f"{record.method} {record.path}")
        raise TwilioError(405, 20004, "Method not allowed")

    def _create(self, record: Recorded) -> dict[str, Any]:
        form = {name: values[-1] for name, values in record.form.items()}
        to, from_ = form.get("To", ""), form.get("From", "")
        if not to:
            raise TwilioError(400, 21201, "No 'To' number is specified")
        if not from_:
            raise TwilioError(400, 21213, "No 'From' number is specified")
        if not (form.get("Url") or form.get("Twiml") or form.get("ApplicationSid")):
            raise TwilioError(400, 21205, "Url is required")
        if not valid_number(to):
            raise TwilioError(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not valid_number(from_):
            raise TwilioError(400, 21212, f"The 'From' number {from_} is not a valid phone "
                                          "number, shortcode, or alphanumeric sender ID.")
        if from_ not in set(self.numbers):
            raise TwilioError(400, 21210, f"The source phone number provided, {from_}, is not "
                                          "yet verified for your account. You may only make "
                                          "calls from phone numbers that you've verified or "
                                          "purchased from Twilio.")
        if self.verified is not None and to not in set(self.verified):
            raise TwilioError(400, 21219, f"The number {to} is unverified. Trial accounts may "
                                          "only make calls to verified numbers.")
        sid = "CA" + secrets.token_hex(16)
        now = formatdate(usegmt=True)
        self.calls[sid] = {
            "sid": sid, "account_sid": self.account_sid, "to": to, "to_formatted": to,
            "from": from_, "from_formatted": from_, "status": "queued",
            "direction": "outbound-api", "api_version": "2010-04-01", "duration": None,
            "start_time": None, "end_time": None, "date_created": now, "date_updated": now,
            "parent_call_sid": None, "answered_by": None, "price": None, "price_unit": "USD",
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{sid}.json",
            "_status_callback": form.get("StatusCallback", ""), "_sequence": 0,
        }
        return self._public(sid)

    def _fetch(self, sid: str) -> dict[str, Any]:
        if sid not in self.calls:
            raise TwilioError(404, 20404, f"The requested resource /2010-04-01/Accounts/"
                                          f"{self.account_sid}/Calls/{sid}.json was not found")
        if self.progress:
            status, duration = self.progress.pop(0)
            self.calls[sid].update(status=status,
                                   duration=None if duration is None else str(duration))
        return self._public(sid)

    def _update(self, sid: str, record: Recorded) -> dict[str, Any]:
        if self.refuse:
            raise TwilioError(400, 21220, "Call is not in-progress. Cannot redirect.")
        if sid not in self.calls:  # a live inbound call
            now = formatdate(usegmt=True)
            self.calls[sid] = {
                "sid": sid, "account_sid": self.account_sid, "to": "+15550002222",
                "from": "+15550001111", "status": "in-progress", "direction": "inbound",
                "api_version": "2010-04-01", "duration": None, "date_created": now,
                "date_updated": now, "start_time": now, "end_time": None,
                "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{sid}.json",
            }
        status = record.form.get("Status", [""])[-1]
        if status in ("completed", "canceled"):
            self.calls[sid]["status"] = status
        return self._public(sid)

    def _public(self, sid: str) -> dict[str, Any]:
        return {k: v for k, v in self.calls[sid].items() if not k.startswith("_")}
