"""Admission at /twiml and single-use stream tokens: the pure decisions, then the real server."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from relay.admission import (
    AGENT_SESSIONS,
    DRAINING,
    MAX_CALLS,
    RATE_LIMITED,
    Admission,
    Refusal,
    load_refusal,
    places_name,
    refusal_twiml,
    token_id,
)
from relay.config import Settings
from relay.errors import ConfigError
from relay.local.caller import SimulatedCall, new_sid
from relay.outcomes import Outcome
from relay.redis_store import RedisStore
from relay.security import StreamTokens, twilio_signature
from tests import conftest
from tests.conftest import AUTH_TOKEN, MS
from tests.fakes import FakeAgent
from tests.helpers import GatedStore, parse, post_twiml, refused

FALLBACK = "+15550009999"


# ---------------------------------------------------------------------- pure


def test_load_refusal_names_draining_first_then_lag() -> None:
    assert load_refusal(draining=True, lag_ms=500, max_lag_ms=20) is DRAINING
    overloaded = load_refusal(draining=False, lag_ms=35, max_lag_ms=20)
    assert overloaded is not None and overloaded.outcome is Outcome.REFUSED_BUSY
    assert "35 ms" in overloaded.reason
    assert load_refusal(draining=False, lag_ms=19.9, max_lag_ms=20) is None
    assert load_refusal(draining=False, lag_ms=10_000, max_lag_ms=None) is None


def test_capacity_refusals_overflow_to_the_fallback_and_rate_limited_callers_never_do() -> None:
    busy = parse(refusal_twiml(MAX_CALLS, None))
    assert [(e.tag, e.attrib) for e in busy] == [("Reject", {"reason": "busy"})]
    dial = parse(refusal_twiml(MAX_CALLS, FALLBACK))
    assert [(e.tag, e.text) for e in dial] == [("Dial", FALLBACK)]
    limited = parse(refusal_twiml(RATE_LIMITED, FALLBACK))
    assert [(e.tag, e.attrib) for e in limited] == [("Reject", {"reason": "busy"})]
    assert RATE_LIMITED.outcome is Outcome.REFUSED_RATE_LIMITED
    assert not RATE_LIMITED.for_capacity and Refusal("x").for_capacity
    outbound = parse(refusal_twiml(MAX_CALLS, FALLBACK, outbound=True))
    assert [e.tag for e in outbound] == ["Hangup"]


def test_the_store_keeps_a_digest_of_a_used_token_never_the_token() -> None:
    token = "1700000000.abcdefghijklmnopqrstuvwxyz012345"
    assert token_id(token) == token_id(token) and token not in token_id(token)
    assert token_id(token) != token_id(token + "x")


def test_each_stream_of_a_call_has_places_of_its_own() -> None:
    assert places_name("CA1", 0, set()) == "CA1"  # the first renews those /twiml took
    assert places_name("CA1", 1, {"CA1"}) == "CA1#1"
    assert places_name("CA1", 1, set()) == "CA1#1"  # a re-stream, whoever held the first
    assert places_name("CA1", 0, {"CA1"}) == "CA1#0"  # a second webhook's stream
    assert places_name("CA1", 1, {"CA1", "CA1#1"}) == "CA1#1.2"
    assert places_name("CA1", 0, {"CA1#0", "CA1#0.2"}) == "CA1"
    assert places_name("CA1", 0, {"CA1", "CA1#0", "CA1#0.2"}) == "CA1#0.3"  # never a taken one


@pytest.mark.anyio
async def test_a_renewal_in_flight_never_outlives_the_stream_that_ended() -> None:
    settings = conftest.test_settings(0, "ws://127.0.0.1:9", agent_max_sessions=2)
    store = GatedStore()
    admission = Admission(settings, store)
    tokens = StreamTokens("secret")
    first = await admission.open_stream("CA1", tokens.mint("CA1", now=time.time(), ttl=60))
    again = await admission.open_stream("CA1", tokens.mint("CA1", now=time.time(), ttl=61), 1)
    assert (first, again) == ("CA1", "CA1#1")
    assert sorted(await store.holders(AGENT_SESSIONS)) == ["CA1", "CA1#1"]
    store.gate = gate = asyncio.Event()
    renewal = asyncio.create_task(admission.renew("CA1", 15))
    await asyncio.wait_for(store.at_gate.wait(), 2)  # renewing one of the two
    await admission.close_stream("CA1")  # the replaced stream ends meanwhile
    await admission.close_stream("CA1#1")
    store.gate = None
    gate.set()
    await asyncio.wait_for(renewal, 2)
    assert await store.holders(AGENT_SESSIONS) == []
    assert await admission.open_stream("CA1", tokens.mint("CA1", now=time.time(), ttl=62)) \
        == "CA1"  # nothing of the call is left open here


def test_admission_settings_are_read_and_checked() -> None:
    s = Settings.from_env({"MAX_CONCURRENT_CALLS": "40", "AGENT_MAX_SESSIONS": "10",
                           "ADMISSION_MAX_LAG_MS": "30", "CALLER_RATE_LIMIT": "5/minute",
                           "DRAIN_SECONDS": "120"})
    assert (s.max_concurrent_calls, s.agent_max_sessions, s.admission_max_lag_ms,
            s.caller_rate_limit, s.drain_seconds) == (40, 10, 30.0, "5/minute", 120.0)
    off = Settings.from_env({"ADMISSION_MAX_LAG_MS": "off", "CALLER_RATE_LIMIT": "off"})
    assert off.admission_max_lag_ms is None and off.caller_rate_limit is None
    default = Settings.from_env({})
    assert default.max_concurrent_calls is None and default.caller_rate_limit == "10/minute"
    assert default.token_ttl == 60.0
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"MAX_CONCURRENT_CALLS": "0", "CALLER_RATE_LIMIT": "lots",
                           "ADMISSION_MAX_LAG_MS": "-1"})
    for key in ("MAX_CONCURRENT_CALLS", "CALLER_RATE_LIMIT", "ADMISSION_MAX_LAG_MS"):
        assert key in str(info.value)


# ---------------------------------------------------------------------- the real server


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "relay.admission" and "refused" in r.getMessage()]


@pytest.mark.anyio
async def test_max_concurrent_calls_refuses_the_next_call_and_admits_once_one_ends(
        make_relay, caplog) -> None:
    caplog.set_level(logging.INFO)
    async with FakeAgent().running() as agent, \
            make_relay(agent, max_concurrent_calls=1) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as first:
            await (await agent.session()).ready.wait()
            sid, doc = await post_twiml(relay.base_url)
            assert refused(doc) == "busy"
            (line,) = refusal_lines(caplog)
            assert sid in line and "refused_busy" in line and "MAX_CONCURRENT_CALLS" in line
            assert "+1555***1111" in line
            await first.hang_up()
            await asyncio.wait_for((await agent.session()).closed.wait(), 3 * MS)
        await asyncio.sleep(0.05)
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as second:
            await (await agent.session(1)).wait_for("session.update")
            await second.hang_up()


@pytest.mark.anyio
async def test_capacity_refusal_overflows_to_the_fallback_number(make_relay) -> None:
    async with FakeAgent().running() as agent, \
            make_relay(agent, max_concurrent_calls=1, fallback_number=FALLBACK) as relay:
        _, doc = await post_twiml(relay.base_url)
        assert refused(doc) is None
        _, doc = await post_twiml(relay.base_url)
        assert refused(doc) == f"dial:{FALLBACK}"


@pytest.mark.anyio
async def test_a_call_whose_stream_never_comes_frees_its_place_when_its_token_expires(
        make_relay) -> None:
    ttl = 1.0 * MS
    async with FakeAgent().running() as agent, \
            make_relay(agent, max_concurrent_calls=2, token_ttl=ttl) as relay:
        for _ in range(2):  # a burst of webhooks whose streams never arrive
            _, doc = await post_twiml(relay.base_url)
            assert refused(doc) is None
        _, doc = await post_twiml(relay.base_url)
        assert refused(doc) == "busy", "webhooks without streams still count"
        await asyncio.sleep(ttl + 0.1)
        _, doc = await post_twiml(relay.base_url)
        assert refused(doc) is None


@pytest.mark.anyio
async def test_agent_max_sessions_refuses_politely_and_admits_once_a_session_ends(
        make_relay, caplog) -> None:
    caplog.set_level(logging.INFO)
    async with FakeAgent().running() as agent, make_relay(agent, agent_max_sessions=1) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as first:
            await (await agent.session()).ready.wait()
            sid, doc = await post_twiml(relay.base_url, caller="+15550003333")
            assert refused(doc) == "busy"
            (line,) = refusal_lines(caplog)
            assert sid in line and "AGENT_MAX_SESSIONS" in line
            assert agent.connections == 1, "a refused call never reaches the agent"
            await first.hang_up()
            await asyncio.wait_for((await agent.session()).closed.wait(), 3 * MS)
        await asyncio.sleep(0.05)
        _, doc = await post_twiml(relay.base_url)
        assert refused(doc) is None


@pytest.mark.anyio
async def test_rate_limited_caller_is_rejected_busy_others_are_not_and_room_comes_back(
        make_relay, caplog) -> None:
    caplog.set_level(logging.INFO)
    async with FakeAgent().running() as agent, \
            make_relay(agent, caller_rate_limit="2/second", fallback_number=FALLBACK) as relay:
        pest, other = "+15550004444", "+15550005555"
        for _ in range(2):
            _, doc = await post_twiml(relay.base_url, caller=pest)
            assert refused(doc) is None
        sid, doc = await post_twiml(relay.base_url, caller=pest)
        assert refused(doc) == "busy", "never sent to the fallback number"
        (line,) = refusal_lines(caplog)
        assert sid in line and "refused_rate_limited" in line and pest not in line
        _, doc = await post_twiml(relay.base_url, caller=other)
        assert refused(doc) is None
        await asyncio.sleep(1.1)
        _, doc = await post_twiml(relay.base_url, caller=pest)
        assert refused(doc) is None


@pytest.mark.anyio
async def test_lag_gate_refuses_while_the_loop_runs_late_and_admits_once_it_recovers(
        make_relay, caplog) -> None:
    caplog.set_level(logging.INFO)
    loop = asyncio.get_running_loop()
    busy = True

    def hog() -> None:  # real work on the server's loop: 80 ms of every 85
        deadline = time.perf_counter() + 0.08
        while time.perf_counter() < deadline:
            pass
        if busy:
            loop.call_later(0.005, hog)

    async with FakeAgent().running() as agent, \
            make_relay(agent, admission_max_lag_ms=20) as relay:
        _, doc = await post_twiml(relay.base_url)
        assert refused(doc) is None
        hog()
        await asyncio.sleep(1.2)
        sid, doc = await post_twiml(relay.base_url)
        assert refused(doc) == "busy"
        (line,) = refusal_lines(caplog)
        assert sid in line and "overloaded: event loop lag" in line
        busy = False
        await asyncio.sleep(1.2)
        _, doc = await post_twiml(relay.base_url)
        assert refused(doc) is None


@pytest.mark.anyio
async def test_readyz_is_200_until_draining(make_relay) -> None:
    async with FakeAgent().running() as agent, make_relay(agent) as relay:
        async with httpx.AsyncClient() as http:
            assert (await http.get(relay.base_url + "/readyz")).status_code == 200
            relay.server.config.app.state.relay.start_draining()  # what the drain does first
            assert (await http.get(relay.base_url + "/readyz")).status_code == 503
            assert (await http.get(relay.base_url + "/healthz")).status_code == 200
        _, doc = await post_twiml(relay.base_url)
        assert refused(doc) == "busy"


# ---------------------------------------------------------------------- single-use tokens


async def second_stream(relay, call: SimulatedCall, params: dict[str, str]):
    url = relay.settings.stream_url
    ws = await connect(url, additional_headers={
        "x-twilio-signature": twilio_signature(AUTH_TOKEN, url, {})})
    await ws.send(orjson.dumps({"event": "connected"}), text=True)
    await ws.send(orjson.dumps({"event": "start", "streamSid": "MZsecond", "start": {
        "streamSid": "MZsecond", "callSid": call.call_sid, "customParameters": params}}),
        text=True)
    return ws


@pytest.mark.anyio
async def test_a_used_token_opens_no_second_stream_and_the_first_call_goes_on(
        make_relay, caplog) -> None:
    caplog.set_level(logging.INFO)
    async with FakeAgent(echo=True).running() as agent, make_relay(agent) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            first = await agent.session()
            await first.ready.wait()
            ws = await second_stream(relay, call, call.stream.parameters)
            await asyncio.wait_for(ws.wait_closed(), 3 * MS)
            assert ws.close_code == 1008
            replay = await agent.session(1)
            await asyncio.wait_for(replay.closed.wait(), 3 * MS)
            assert replay.received == [], "no session.update for a replayed token"
            assert any("its token already opened a stream" in r.getMessage()
                       for r in caplog.records)
            # The refused stream never started a call: the live one stays watched and listed.
            assert len([r for r in caplog.records
                        if getattr(r, "event", None) == "call.started"]) == 1
            async with httpx.AsyncClient(base_url=relay.base_url, timeout=5) as page:
                live = (await page.get("/api/calls")).json()["live"]
            assert [c["call_sid"] for c in live] == [call.call_sid]
            await call.send_media("AAAA")
            (echo,) = await call.wait_for("media")
            assert echo["media"]["payload"] == "AAAA" and echo["streamSid"] == call.stream_sid
            await call.hang_up()
        assert first.violations == [] and replay.violations == []


@pytest.mark.anyio
async def test_a_second_stream_for_one_call_sid_is_logged(make_relay, caplog) -> None:
    caplog.set_level(logging.INFO)
    async with FakeAgent().running() as agent, make_relay(agent) as relay:
        sid = new_sid("CA")
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN, call_sid=sid) as a:
            await (await agent.session(0)).ready.wait()
            # the same TwiML again (as on a handover): the same token, refused
            ws = await second_stream(relay, a, a.stream.parameters)
            await asyncio.wait_for(ws.wait_closed(), 3 * MS)
            assert ws.close_code == 1008
            await asyncio.sleep(1.05)  # a second webhook for the call mints a new token
            async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN,
                                          call_sid=sid) as b:
                assert b.stream.parameters["token"] != a.stream.parameters["token"]
                await (await agent.session(2)).ready.wait()
        lines = [r.getMessage() for r in caplog.records if "second stream" in r.getMessage()]
        assert lines == [
            f"[{sid}] a second stream for this CallSid refused: its token already opened a stream",
            f"[{sid}] a second stream for this CallSid let in: it has a token of its own (a second webhook)",
        ]


@pytest.mark.anyio
async def test_instances_sharing_a_redis_store_share_agent_sessions_and_used_tokens(
        make_relay, redis_server) -> None:
    store = RedisStore.from_url(redis_server.url, timeout=1.0)
    try:
        async with FakeAgent().running() as agent, \
                make_relay(agent, agent_max_sessions=1, store=store) as a, \
                make_relay(agent, agent_max_sessions=1, store=store) as b:
            async with SimulatedCall.dial(a.base_url, auth_token=AUTH_TOKEN) as call:
                await (await agent.session()).ready.wait()
                _, doc = await post_twiml(b.base_url)
                assert refused(doc) == "busy", "the account's one session is in use on A"
                # A's token, presented to B (its stream URL and signature), opens nothing
                url = b.settings.stream_url
                ws = await connect(url, additional_headers={
                    "x-twilio-signature": twilio_signature(AUTH_TOKEN, url, {})})
                await ws.send(orjson.dumps({"event": "start", "streamSid": "MZx", "start": {
                    "streamSid": "MZx", "callSid": call.call_sid,
                    "customParameters": call.stream.parameters}}), text=True)
                await asyncio.wait_for(ws.wait_closed(), 3 * MS)
                assert ws.close_code == 1008
                await call.hang_up()
                await asyncio.wait_for((await agent.session()).closed.wait(), 3 * MS)
            await asyncio.sleep(0.05)
            _, doc = await post_twiml(b.base_url)
            assert refused(doc) is None
    finally:
        await store.aclose()
