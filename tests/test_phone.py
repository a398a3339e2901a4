"""The browser softphone: who may open it, the tokens it mints, and a real call from Chromium.

The end-to-end test runs Debian's ``chromium`` headless with a fake microphone fed from a WAV
file, drives it over the DevTools protocol and calls the strict fake agent through the relay.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.requests import Request
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from relay.config import Settings
from relay.local import audio
from relay.local.softphone import phone_access, phone_routes
from relay.security import StreamTokens, twilio_signature
from relay.tools import Registry
from tests import conftest
from tests.browser import CHROMIUM, chromium, speech_like_wav
from tests.conftest import AUTH_TOKEN, MS, RunningRelay
from tests.fakes import AgentSession, FakeAgent

pytestmark = pytest.mark.anyio

GREETING = "Hello from the test agent"


def lucky_number() -> int:
    """Today's lucky number."""
    return 7


@contextlib.asynccontextmanager
async def phone_relay(agent: FakeAgent, **overrides: Any) -> AsyncIterator[RunningRelay]:
    """The real app with the softphone mounted, served on 127.0.0.1:0 by uvicorn."""
    async with conftest.run_relay(
        lambda port: conftest.test_settings(port, agent.url, phone_enabled=True, **overrides),
        Registry([lucky_number]), extra_routes=phone_routes,
    ) as relay:
        yield relay


# ---------------------------------------------------------------------- access rules


def request(client: str, headers: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "GET", "path": "/phone", "raw_path": b"/phone",
                    "query_string": b"", "headers": raw, "client": (client, 1234),
                    "server": ("relay.example.com", 443), "scheme": "https", "root_path": "",
                    "http_version": "1.1"})


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


REMOTE = "203.0.113.5"
PUBLIC = {"Host": "relay.example.com"}


def test_remote_clients_are_refused_without_a_configured_password() -> None:
    refused = phone_access(request(REMOTE, PUBLIC | basic("x", "anything")), Settings())
    assert refused is not None and refused.status_code == 403
    assert b"PHONE_PASSWORD" in refused.body


def test_remote_clients_need_the_password() -> None:
    settings = Settings(phone_password="open sesame")
    refused = phone_access(request(REMOTE, PUBLIC), settings)
    assert refused is not None and refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Basic realm="relay phone"'
    assert phone_access(request(REMOTE, PUBLIC | basic("anyone", "open sesame")), settings) is None
    assert phone_access(request(REMOTE, PUBLIC | basic("", "open sesame")), settings) is None
    for headers in (basic("anyone", "open sesame!"), basic("open sesame", ""),
                    {"Authorization": "Basic !!!"}, {"Authorization": "Bearer open sesame"}):
        refused = phone_access(request(REMOTE, PUBLIC | headers), settings)
        assert refused is not None and refused.status_code == 401, headers


def test_this_machine_needs_no_password_unless_proxied_or_rebound() -> None:
    settings = Settings()
    for host in ("localhost:8080", "127.0.0.1:8080", "[::1]:8080", "localhost"):
        assert phone_access(request("127.0.0.1", {"Host": host}), settings) is None, host
    assert phone_access(request("::1", {"Host": "[::1]:8080"}), settings) is None
    # a page whose own domain resolves to 127.0.0.1, and a tunnel forwarding the internet
    for headers in ({"Host": "attacker.example:8080"},
                    {"Host": "localhost:8080", "X-Forwarded-For": REMOTE},
                    {"Host": "localhost:8080", "Forwarded": f"for={REMOTE}"}):
        refused = phone_access(request("127.0.0.1", headers), settings)
        assert refused is not None and refused.status_code == 403, headers


# ---------------------------------------------------------------------- HTTP


async def test_page_is_served_to_this_machine_and_loads_nothing_from_elsewhere() -> None:
    async with FakeAgent().running() as agent, phone_relay(agent) as relay:
        async with httpx.AsyncClient(base_url=relay.base_url) as http:
            page = await http.get("/phone")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert "default-src 'none'" in page.headers["content-security-policy"]
            assert re.search(r'<button id="call"[^>]*>Call</button>', page.text)
            assert 'id="transcript"' in page.text
            scripts = re.findall(r'src="([^"]+)"', page.text)
            assert scripts == ["/phone/phone.js"]
            for name in ("phone.js", "worklet.js", "g711.js"):
                asset = await http.get(f"/phone/{name}")
                assert asset.status_code == 200
                assert asset.headers["content-type"].startswith("text/javascript")
                assert not re.search(r"https?://", asset.text), name
            assert not re.search(r"https?://", page.text)
            assert not re.search(r"(?:src|href)\s*=\s*[\"']?//", page.text)
            # through a tunnel (forwarded) or a rebound domain, this machine is no longer trusted
            for headers in ({"X-Forwarded-For": REMOTE}, {"Host": "evil.example"}):
                assert (await http.get("/phone", headers=headers)).status_code == 403, headers


async def test_session_mints_a_phone_token_only() -> None:
    async with FakeAgent().running() as agent, phone_relay(agent) as relay:
        async with httpx.AsyncClient(base_url=relay.base_url) as http:
            assert (await http.get("/phone/session")).status_code == 405
            other_site = {"Origin": "http://evil.example"}
            assert (await http.post("/phone/session", headers=other_site)).status_code == 403
            response = await http.post("/phone/session", headers={"Origin": relay.base_url})
        assert response.status_code == 200
        body = response.json()
        assert re.fullmatch(r"CA[0-9a-f]{32}", body["call_sid"])
        assert re.fullmatch(r"MZ[0-9a-f]{32}", body["stream_sid"])
        assert body["stream_url"] == relay.base_url.replace("http://", "ws://") + "/phone/media"
        tokens = StreamTokens(relay.settings.relay_secret)
        now = time.time()
        assert tokens.verify(body["token"], body["call_sid"], now=now, purpose="phone")
        assert not tokens.verify(body["token"], body["call_sid"], now=now, purpose="twilio")
        assert not tokens.verify(body["token"], "CA" + "0" * 32, now=now, purpose="phone")
        assert not tokens.verify(body["token"], body["call_sid"], now=now + 61, purpose="phone")


async def test_the_action_answer_needs_the_calls_action_token() -> None:
    async with FakeAgent().running() as agent, phone_relay(
            agent, fallback_message="Sorry.", fallback_number="+15550001234") as relay:
        async with httpx.AsyncClient(base_url=relay.base_url) as http:
            body = (await http.post("/phone/session")).json()
            ask = {"call_sid": body["call_sid"], "action_token": body["action_token"]}
            answer = await http.post("/phone/action", json=ask)
            forged = await http.post("/phone/action", json={**ask, "call_sid": "CA" + "0" * 32})
            stream_token = await http.post("/phone/action",
                                           json={**ask, "action_token": body["token"]})
            cross_site = await http.post("/phone/action", json=ask,
                                         headers={"Origin": "http://evil.example"})
    assert answer.status_code == 200
    # a call that never streamed has no outcome: the fallback, as Twilio's action would get
    assert answer.json()["says"] == ["Sorry."] and answer.json()["dials"] == "+15550001234"
    assert forged.status_code == stream_token.status_code == cross_site.status_code == 403


async def test_session_from_elsewhere_needs_the_password() -> None:
    async with FakeAgent().running() as agent, phone_relay(agent, phone_password="pw") as relay:
        async with httpx.AsyncClient(base_url=relay.base_url,
                                     headers={"Host": "relay.example.com"}) as http:
            refused = await http.post("/phone/session")
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == 'Basic realm="relay phone"'
            assert (await http.post("/phone/session", auth=("me", "wrong"))).status_code == 401
            response = await http.post("/phone/session", auth=("me", "pw"))
            assert response.status_code == 200
            assert response.json()["stream_url"] == "ws://relay.example.com/phone/media"
            assert (await http.get("/phone", auth=("", "pw"))).status_code == 200


async def closed_with(ws: ClientConnection) -> int | None:
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(3 * MS):
            async for _ in ws:
                pass
    return ws.close_code


def start_message(call_sid: str, token: str) -> dict[str, Any]:
    return {"event": "start", "sequenceNumber": "1", "streamSid": "MZ" + "1" * 32, "start": {
        "accountSid": "AC" + "0" * 32, "streamSid": "MZ" + "1" * 32, "callSid": call_sid,
        "tracks": ["inbound"], "customParameters": {"token": token, "caller": "browser"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}


@pytest.mark.parametrize("case", ["twilio token", "forged token", "no token",
                                  "phone token on /media"])
async def test_streams_without_a_phone_token_open_no_agent_session(case: str) -> None:
    call_sid = "CA" + "2" * 32
    async with FakeAgent().running() as agent, phone_relay(agent) as relay:
        tokens = StreamTokens(relay.settings.relay_secret)
        url = relay.base_url.replace("http://", "ws://") + "/phone/media"
        headers: dict[str, str] = {}
        token = {
            "twilio token": tokens.mint(call_sid, now=time.time(), ttl=60, purpose="twilio"),
            "forged token": f"{int(time.time()) + 60}.{'A' * 32}",
            "no token": "",
            "phone token on /media": tokens.mint(call_sid, now=time.time(), ttl=60,
                                                  purpose="phone"),
        }[case]
        if case == "phone token on /media":
            url = relay.settings.stream_url
            headers = {"x-twilio-signature": twilio_signature(AUTH_TOKEN, url, {})}
        async with connect(url, additional_headers=headers, compression=None) as ws:
            await ws.send(orjson.dumps({"event": "connected", "protocol": "Call",
                                        "version": "1.0.0"}).decode())
            await ws.send(orjson.dumps(start_message(call_sid, token)).decode())
            assert await closed_with(ws) == 1008
        for session in agent.sessions:
            await asyncio.wait_for(session.closed.wait(), 3 * MS)
            assert session.received == [], "no session.update may reach the agent"


# ---------------------------------------------------------------------- Chromium


def mulaw_frames(ulaw: bytes) -> list[str]:
    size = audio.FRAME_BYTES
    return [base64.b64encode(ulaw[i:i + size]).decode() for i in range(0, len(ulaw), size)]


async def softphone_agent(session: AgentSession) -> None:
    """Greets with audio, answers the key 5 with a tool call, then a long reply is barged in on."""
    await session.send({"type": "reply.started", "reply_id": "greet"})
    for payload in mulaw_frames(audio.tone(440, 500)):
        await session.send({"type": "reply.audio", "reply_id": "greet", "data": payload})
    await session.send({"type": "transcript.agent", "reply_id": "greet", "text": GREETING})
    await session.send({"type": "reply.done", "reply_id": "greet", "status": "completed"})
    while not any("key 5" in m.get("instructions", "") for m in session.of_type("reply.create")):
        await session.wait_for("reply.create", len(session.of_type("reply.create")) + 1, 15)
    await session.send({"type": "reply.started", "reply_id": "tool"})
    await session.tool_call("t1", "lucky_number", arguments={})
    await session.send({"type": "reply.done", "reply_id": "tool", "status": "completed"})
    await session.wait_for("tool.result", 1, 15)
    await session.send({"type": "reply.started", "reply_id": "long"})
    for payload in mulaw_frames(audio.tone(330, 3000)):
        await session.send({"type": "reply.audio", "reply_id": "long", "data": payload})
    await session.send({"type": "reply.done", "reply_id": "long", "status": "completed"})
    await session.send({"type": "input.speech.started"})


@pytest.mark.timeout(60)
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package "
                    "(apt-get install chromium) for the in-browser softphone test")
async def test_softphone_call_in_headless_chromium(tmp_path: Path) -> None:
    started = time.monotonic()
    microphone = tmp_path / "caller.wav"
    speech_like_wav(microphone)
    async with (FakeAgent(script=softphone_agent).running() as agent, phone_relay(agent) as relay,
                chromium(tmp_path, microphone) as browser):
        page = await browser.open(relay.base_url + "/phone")

        # the page's codec is G.711 exactly as the relay's
        codec = await browser.evaluate(page, """import('/phone/g711.js').then((g) => {
            const encoded = [];
            for (let s = -32768; s < 32768; s++) encoded.push(g.ulawEncode(s));
            const decoded = [];
            for (let b = 0; b < 256; b++) decoded.push(g.ulawDecode(b));
            return {encoded: btoa(String.fromCharCode(...encoded)), decoded};
        })""")
        samples = list(range(-32768, 32768))
        assert base64.b64decode(codec["encoded"]) == audio.ulaw_encode(samples)
        assert codec["decoded"] == list(audio.ulaw_decode(bytes(range(256))))

        await browser.evaluate(page, "document.getElementById('call').click()")
        session = await agent.session(timeout=5 * MS)
        frames = await session.wait_for("input.audio", 40, 5 * MS)
        assert session.received[0]["type"] == "session.update"
        heard = [base64.b64decode(m["audio"], validate=True) for m in frames]
        assert all(len(f) == audio.FRAME_BYTES for f in heard)
        assert max(audio.frame_energy(f) for f in heard) > 500, "the microphone should be heard"

        await browser.wait_until(
            page, f"document.getElementById('transcript').textContent.includes({GREETING!r})",
            5 * MS)
        # the greeting's mark comes back only once its audio has played
        await browser.wait_until(page, "(phoneStats.events['reply.heard'] || 0) >= 1", 5 * MS)
        stats = await browser.evaluate(page, "phoneStats")
        assert stats["framesReceived"] == 25 and stats["bytesReceived"] == 25 * 160
        assert stats["state"] == "connected"
        (greeting_mark,) = stats["marks"]
        assert greeting_mark["at"] - stats["firstAudioAt"] >= 450, "0.5 s of audio came first"

        await browser.evaluate(page, "document.querySelector('#keypad [data-digit=\"5\"]').click()")
        await browser.wait_until(page, "phoneStats.clears >= 1", 8 * MS)
        # the long reply's mark returns at once: the clear discarded its 3 s of audio
        await browser.wait_until(page, "phoneStats.marksEchoed === 3", 1 * MS)
        # the relay accounts for every echoed mark; the silent tool reply's mark may come back
        # before or after the clear, so it is reported heard or flushed
        await browser.wait_until(
            page, "(phoneStats.events['reply.heard'] || 0)"
            " + (phoneStats.events['reply.flushed'] || 0) >= 3", 1 * MS)
        stats = await browser.evaluate(page, "phoneStats")
        assert stats["framesReceived"] == 25 + 150 and stats["events"]["reply.heard"] >= 1
        assert stats["events"]["reply.flushed"] >= 1, "the long reply was cut short"
        text = await browser.evaluate(page, "document.getElementById('transcript').innerText")
        for expected in ("caller pressed 5", "tool call lucky_number (t1)",
                         "tool t1 succeeded: 7", "barge-in"):
            assert expected in text, text

        await browser.evaluate(page, "document.getElementById('hangup').click()")
        await asyncio.wait_for(session.ended.wait(), 3 * MS)
        status = await browser.evaluate(page, "document.getElementById('status').textContent")
        assert "you hung up" in status
        assert session.violations == []
        assert browser.console == [], browser.console
    assert time.monotonic() - started < 20 * MS


async def agent_hangs_up(session: AgentSession) -> None:
    await session.wait_for("input.audio", 5, 5)
    await session.send({"type": "session.ended", "session_duration_seconds": 0.5})
    await session.ws.close(1000)


@pytest.mark.timeout(60)
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package "
                    "(apt-get install chromium) for the in-browser softphone test")
async def test_softphone_shows_a_denied_microphone_and_the_relay_hanging_up(tmp_path: Path) -> None:
    microphone = tmp_path / "caller.wav"
    speech_like_wav(microphone, seconds=0.5)
    async with (FakeAgent(script=agent_hangs_up).running() as agent, phone_relay(agent) as relay,
                chromium(tmp_path, microphone) as browser):
        page = await browser.open(relay.base_url + "/phone")
        status = "document.getElementById('status').textContent"
        # what the browser answers when the user refuses the microphone
        await browser.evaluate(page, "navigator.mediaDevices.getUserMedia = () => Promise.reject("
                                     "new DOMException('Permission denied', 'NotAllowedError'))")
        await browser.evaluate(page, "document.getElementById('call').click()")
        await browser.wait_until(page, "phoneStats.state === 'error'", 5 * MS)
        assert "microphone: access was denied" in await browser.evaluate(page, status)
        assert agent.sessions == [], "no stream without a microphone"

        await browser.evaluate(page, "delete navigator.mediaDevices.getUserMedia")
        await browser.evaluate(page, "document.getElementById('call').click()")
        await browser.wait_until(page, "phoneStats.state === 'ended'", 5 * MS)
        text = await browser.evaluate(page, status)
        assert text == "Call ended by the relay, close code 1000 (agent ended the session)."
        # as Twilio would, the page asked the <Connect action> what the caller hears next
        await browser.wait_until(page, "!!phoneStats.next", 5 * MS)
        assert await browser.evaluate(page, "phoneStats.next.hangs_up") is True
        transcript = await browser.evaluate(page, "document.getElementById('transcript')"
                                                  ".innerText")
        assert "Next, the caller hears: hangs up." in transcript
        assert (await agent.session()).violations == []
        assert browser.console == [], browser.console
