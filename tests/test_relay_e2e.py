"""The real server over real sockets: fake Twilio calls in, the strict fake agent behind."""

from __future__ import annotations

import asyncio
import gc

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from relay.agent_link import AgentLink
from relay.bridge import CallBridge
from relay.local.caller import SimulatedCall
from relay.outcome_records import read_outcome
from relay.outcomes import Outcome
from relay.security import twilio_signature
from relay.store import MemoryStore
from tests.conftest import AUTH_TOKEN, MS
from tests.fakes import AgentSession, FakeAgent
from tests.helpers import frame, greet

pytestmark = pytest.mark.anyio


async def test_audio_is_relayed_byte_for_byte_both_ways(make_relay) -> None:
    async with FakeAgent(echo=True, script=greet).running() as agent, make_relay(agent) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            session = await agent.session()
            await session.ready.wait()
            greeting = await call.wait_for("media", 3)
            assert [m["media"]["payload"] for m in greeting] == [frame(900 + i) for i in range(3)]
            assert all(m["streamSid"] == call.stream_sid for m in greeting)
            # the greeting is followed by a mark, echoed once played
            (mark,) = await call.wait_for("mark")
            sent = [frame(i) for i in range(100)]
            for payload in sent:
                await call.send_media(payload)
            echoed = await call.wait_for("media", 103)
            assert [m["media"]["payload"] for m in echoed[3:]] == sent
            assert [m["audio"] for m in session.of_type("input.audio")] == sent
            update = session.received[0]
            assert update["type"] == "session.update"
            assert update["session"]["greeting"] == "Hello from the test agent."
            assert update["session"]["output"]["format"] == {"encoding": "audio/pcmu"}
            await call.hang_up()
            await asyncio.wait_for(session.closed.wait(), 3 * MS)
        assert session.ended.is_set(), "the relay must end the session (session.end) on hang-up"
        assert session.violations == []


async def test_greeting_reaches_the_caller_right_after_start(make_relay) -> None:
    async with FakeAgent(script=greet).running() as agent, make_relay(agent) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            await call.wait_for("media", 3)
            session = await agent.session()
            # the agent socket was opened before start; session.update only after it
            assert session.received[0]["type"] == "session.update"
            assert session.violations == []


async def test_barge_in_clears_and_drops_late_audio_of_the_interrupted_reply(make_relay) -> None:
    go = asyncio.Event()

    async def script(session: AgentSession) -> None:
        await session.send({"type": "reply.started", "reply_id": "r1"})
        for i in range(3):
            await session.send({"type": "reply.audio", "reply_id": "r1", "data": frame(i)})
        await go.wait()
        await session.send({"type": "input.speech.started"})
        await session.send({"type": "reply.audio", "reply_id": "r1", "data": frame(3)})
        await session.send({"type": "transcript.agent", "reply_id": "r1", "text": "It's", "interrupted": True})
        await session.send({"type": "reply.done", "reply_id": "r1", "status": "interrupted"})
        await session.send({"type": "reply.audio", "reply_id": "r1", "data": frame(4)})
        await session.send({"type": "reply.audio", "reply_id": "r1", "data": frame(5)})
        await session.send({"type": "reply.started", "reply_id": "r2"})
        await session.send({"type": "reply.audio", "reply_id": "r2", "data": frame(6)})

    async with FakeAgent(script=script).running() as agent, make_relay(agent) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            await call.wait_for("media", 3)
            go.set()
            await call.wait_for("media", 5)
            events = [(r.message["event"], r.message.get("media", {}).get("payload"))
                      for r in call.received]
            assert events == [
                ("media", frame(0)), ("media", frame(1)), ("media", frame(2)),
                ("clear", None), ("media", frame(3)), ("clear", None), ("media", frame(6)),
            ]


async def test_caller_hang_up_without_stop_ends_the_agent_session(make_relay) -> None:
    async with FakeAgent().running() as agent, make_relay(agent) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            session = await agent.session()
            await session.ready.wait()
            await call.ws.close()  # a dropped socket, no stop message
            await asyncio.wait_for(session.closed.wait(), 3 * MS)
        assert session.ended.is_set()


async def test_agent_ending_the_session_hangs_up_the_call(make_relay) -> None:
    async def script(session: AgentSession) -> None:
        await session.send({"type": "session.ended", "session_duration_seconds": 0.1})
        await session.ws.close(1000)

    async with FakeAgent(script=script).running() as agent, make_relay(agent) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            assert await call.wait_closed(3 * MS) == 1000
        session = await agent.session()
        assert not session.ended.is_set()  # no session.end after the agent already ended


async def test_agent_refusing_the_connection_hangs_up_and_the_server_lives_on(make_relay) -> None:
    async with FakeAgent(refuse_status=503).running() as agent, make_relay(agent) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            assert await call.wait_closed(3 * MS) == 1011
        async with httpx.AsyncClient() as http:
            assert (await http.get(relay.base_url + "/healthz")).status_code == 200


async def test_fatal_agent_error_hangs_up(make_relay) -> None:
    async def script(session: AgentSession) -> None:
        await session.send({"type": "session.error", "code": "internal_error", "message": "x"})

    async with FakeAgent(script=script).running() as agent, make_relay(agent) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            assert await call.wait_closed(3 * MS) == 1011


async def test_observer_is_told_why_the_agent_was_unreachable(make_relay) -> None:
    async with FakeAgent(refuse_status=503).running() as agent, make_relay(agent) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN,
                                      webhook_path="/twiml?observe=1") as call:
            assert await call.wait_closed(3 * MS) == 1011
        (end,) = [m for m in call.events("relay.log") if m["kind"] == "call.end"]
        assert "agent failed" in end["text"] and "503" in end["text"]


async def test_wrong_agent_key_hangs_up(make_relay) -> None:
    async with FakeAgent().running() as agent, make_relay(agent, assemblyai_api_key="wrong") as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            assert await call.wait_closed(3 * MS) is not None


async def test_stalled_agent_never_ready_drops_audio_and_still_ends_cleanly(make_relay) -> None:
    async with FakeAgent(ready=False).running() as agent, make_relay(agent) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            session = await agent.session()
            await session.wait_for("session.update")
            for i in range(5):
                await call.send_media(frame(i))
            await call.hang_up()
            await asyncio.wait_for(session.closed.wait(), 3 * MS)
        assert session.of_type("input.audio") == []
        assert session.violations == []


async def test_dtmf_reaches_the_agent(make_relay) -> None:
    async with FakeAgent().running() as agent, make_relay(agent) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            session = await agent.session()
            await session.ready.wait()
            await call.send_dtmf("7")
            (create,) = await session.wait_for("reply.create")
            assert "7" in create["instructions"]


async def test_forged_webhook_signature_is_rejected(make_relay) -> None:
    async with FakeAgent().running() as agent, make_relay(agent) as relay:
        with pytest.raises(httpx.HTTPStatusError) as info:
            async with SimulatedCall.dial(relay.base_url, auth_token="not-the-token"):
                pass
        assert info.value.response.status_code == 403
        async with httpx.AsyncClient() as http:
            unsigned = await http.post(relay.base_url + "/twiml", data={"CallSid": "CA1"})
        assert unsigned.status_code == 403


async def test_webhook_signature_is_checked_against_public_url_not_request_url(make_relay) -> None:
    async with FakeAgent().running() as agent, make_relay(agent) as relay:
        params = {"CallSid": "CA1", "From": "+15550001111", "To": "+15550002222"}
        local = relay.base_url + "/twiml"
        public = "https://relay.example.com/twiml"
        async with httpx.AsyncClient() as http:
            bad = await http.post(local, data=params, headers={
                "X-Twilio-Signature": twilio_signature(AUTH_TOKEN, public, params)})
            assert bad.status_code == 403  # signed for another URL than PUBLIC_URL
    async with FakeAgent().running() as agent, make_relay(agent, public_url="https://relay.example.com") as relay:
        async with httpx.AsyncClient() as http:
            good = await http.post(f"http://127.0.0.1:{relay.settings.port}/twiml", data=params,
                                   headers={"X-Twilio-Signature": twilio_signature(AUTH_TOKEN, public, params)})
        assert good.status_code == 200
        assert '<Stream url="wss://relay.example.com/media">' in good.text
        assert "?" not in good.text.split('url="')[1].split('"')[0]


async def test_forged_upgrade_is_rejected_before_accept(make_relay) -> None:
    async with FakeAgent().running() as agent, make_relay(agent) as relay:
        url = relay.settings.stream_url
        for headers in ({}, {"x-twilio-signature": "forged"}):
            with pytest.raises(InvalidStatus) as info:
                async with connect(url, additional_headers=headers):
                    pass
            assert info.value.response.status_code == 403
        assert agent.connections == 0


async def test_stream_without_a_valid_token_never_opens_an_agent_session(make_relay) -> None:
    cases = ({}, {"token": "1999999999.forged"}, {"token": "not a token"})
    async with FakeAgent().running() as agent, make_relay(agent) as relay:
        url = relay.settings.stream_url
        for i, params in enumerate(cases):
            ws = await connect(url, additional_headers={
                "x-twilio-signature": twilio_signature(AUTH_TOKEN, url, {})})
            # The relay dials the agent when the upgrade is accepted: wait for that socket, so
            # a session.update sent for the forged start would reach it.
            session = await agent.session(i, timeout=3 * MS)
            await ws.send(orjson.dumps({"event": "connected"}), text=True)
            await ws.send(orjson.dumps({"event": "start", "streamSid": "MZ1", "start": {
                "streamSid": "MZ1", "callSid": "CA1", "customParameters": params}}), text=True)
            await asyncio.wait_for(ws.wait_closed(), 3 * MS)
            assert ws.close_code == 1008
            await asyncio.wait_for(session.closed.wait(), 3 * MS)
            assert session.received == [], f"no session.update for a forged stream ({params})"
            assert session.violations == []
        assert len(agent.sessions) == len(cases)


async def test_token_of_another_call_is_rejected(make_relay) -> None:
    async with FakeAgent().running() as agent, make_relay(agent) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            await call.ws.close()
        ws = await connect(relay.settings.stream_url, additional_headers={
            "x-twilio-signature": twilio_signature(AUTH_TOKEN, relay.settings.stream_url, {})})
        await ws.send(orjson.dumps({"event": "start", "streamSid": "MZ1", "start": {
            "streamSid": "MZ1", "callSid": "CA-other", "customParameters": call.stream.parameters}}),
            text=True)
        await asyncio.wait_for(ws.wait_closed(), 3 * MS)
        assert ws.close_code == 1008


async def test_bad_input_is_survived_and_never_affects_another_call(make_relay) -> None:
    async with FakeAgent(echo=True).running() as agent, make_relay(agent) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as good, \
                SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as bad:
            for s in (await agent.session(0), await agent.session(1)):
                await s.ready.wait()
            junk = ["{not json", "[1,2]", '"text"', '{"event": "nonsense"}',
                    '{"event": "media", "media": {"payload": "%%%not base64%%%"}}',
                    '{"event": "media", "media": {}}', '{"event": "dtmf", "dtmf": {}}',
                    '{"event": "mark"}', '{"event": "start", "start": {}}']
            for text in junk:
                await bad.ws.send(text)
            await bad.ws.send(b"\x00\x01binary")
            await bad.send_media(frame(1))
            await good.send_media(frame(2))
            assert (await bad.wait_for("media"))[0]["media"]["payload"] == frame(1)
            assert (await good.wait_for("media"))[0]["media"]["payload"] == frame(2)
            # an oversized message ends only the call that sent it
            await bad.ws.send("x" * (65 * 1024))
            assert await bad.wait_closed(3 * MS) == 1009
            await good.send_media(frame(3))
            assert (await good.wait_for("media", 2))[1]["media"]["payload"] == frame(3)
        assert all(s.violations == [] for s in agent.sessions)


async def test_bad_agent_messages_are_survived(make_relay) -> None:
    async def script(session: AgentSession) -> None:
        await session.ws.send("{broken")
        await session.send({"type": "reply.audio", "data": "!!not base64!!"})
        await session.send({"type": "something.new"})
        await session.send({"type": "session.error", "code": "invalid_audio", "message": "x"})
        await session.send({"type": "reply.audio", "data": frame(5)})

    async with FakeAgent(script=script).running() as agent, make_relay(agent) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            (m,) = await call.wait_for("media")
            assert m["media"]["payload"] == frame(5)


async def test_agent_that_never_answers_session_end_is_closed_within_the_timeout(make_relay) -> None:
    agent = FakeAgent(answer_end=False)
    async with agent.running(), make_relay(agent, agent_close_timeout=0.3 * MS) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            session = await agent.session()
            await session.ready.wait()
            await call.hang_up()
            await asyncio.wait_for(session.closed.wait(), 3 * MS)
        assert session.ended.is_set()


async def test_no_tasks_or_sockets_leak_after_many_calls(make_relay) -> None:
    async with FakeAgent(echo=True).running() as agent, make_relay(agent) as relay:
        async def one_call(i: int) -> None:
            async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
                await call.send_media(frame(i))
                if i % 3 == 0:
                    await call.hang_up()
                elif i % 3 == 1:
                    await call.ws.close()
                else:
                    await call.send({"event": "stop"})
                await call.wait_closed(3 * MS)

        await asyncio.gather(*(one_call(i) for i in range(10)))
        baseline = len(asyncio.all_tasks())
        for batch in range(5):
            await asyncio.gather(*(one_call(batch * 20 + i) for i in range(20)))
        await asyncio.sleep(0.1)
        assert len(asyncio.all_tasks()) <= baseline
        assert all(s.closed.is_set() for s in agent.sessions)
        assert len(agent.sessions) == 110
        # nothing of a finished call stays reachable: its bridge, protocol and agent socket
        gc.collect()
        alive = [o for o in gc.get_objects() if isinstance(o, CallBridge | AgentLink)]
        assert alive == []


async def test_observers_see_call_events_and_twilio_never_does(make_relay) -> None:
    async with FakeAgent(script=greet).running() as agent, make_relay(agent) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN,
                                      webhook_path="/twiml?observe=1") as watched:
            assert watched.stream.parameters["observe"] == "1"
            await watched.wait_for("media", 3)
            await watched.hang_up()
        kinds = [m["kind"] for m in watched.events("relay.log")]
        assert kinds[:3] == ["agent.ready", "audio.agent", "transcript.agent"]
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as plain:
            await plain.wait_for("mark")
            await plain.hang_up()
        assert {r.message["event"] for r in plain.received} <= {"media", "mark", "clear"}


async def test_a_second_hang_up_while_a_goodbye_is_pending_asks_for_no_second_goodbye(
        make_relay) -> None:
    async with FakeAgent().running() as agent, \
            make_relay(agent, hangup_timeout=1 * MS) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call, \
                httpx.AsyncClient(base_url=relay.base_url, timeout=5) as page:
            session = await agent.session()
            await session.ready.wait()
            hang_up = f"/api/calls/{call.call_sid}/hangup"
            assert (await page.post(hang_up, json={})).status_code == 202
            await session.wait_for("reply.create")
            assert (await page.post(hang_up, json={})).status_code == 202
            # The agent never says the goodbye: the first request's deadline ends the call.
            assert await call.wait_closed(5 * MS) == 1000
        assert len(session.of_type("reply.create")) == 1
        assert session.violations == []


async def test_the_caller_is_let_go_before_the_agent_session_is_ended(make_relay) -> None:
    # An agent that never answers session.end holds its session for AGENT_CLOSE_TIMEOUT (twice:
    # the wait for session.ended, then the close handshake); the caller must not wait for it.
    agent = FakeAgent(answer_end=False)
    store = MemoryStore()
    async with agent.running(), make_relay(agent, agent_close_timeout=2 * MS,
                                           store=store) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call, \
                httpx.AsyncClient(base_url=relay.base_url, timeout=5) as page:
            session = await agent.session()
            await session.ready.wait()
            response = await page.post(f"/api/calls/{call.call_sid}/hangup?now=1",
                                       headers={"X-Relay-Request": "1"})
            assert response.status_code == 202
            assert await call.wait_closed(1 * MS) == 1000
            assert not session.closed.is_set()  # still being ended, behind the caller's back
            # What the <Connect action> request, right after the close, reads is there.
            record = await read_outcome(store, call.call_sid)
            assert record is not None and record.outcome is Outcome.OPERATOR_HUNG_UP
            await asyncio.wait_for(session.closed.wait(), 6 * MS)
        assert session.ended.is_set()  # session.end was still sent
        assert session.violations == []
