"""The ``<Connect action>``: outcome records by CallSid, and the TwiML the action answers."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import httpx
import pytest

from relay import twiml
from relay.local.caller import SimulatedCall, parse_next, parse_stream
from relay.outcome_records import OutcomeRecord, answer, read_outcome, record_outcome
from relay.outcomes import Outcome
from relay.security import twilio_signature
from relay.store import MemoryStore
from tests.conftest import AUTH_TOKEN, MS
from tests.fakes import FakeAgent

SORRY = "Sorry, no agent."


def decide(record: OutcomeRecord | None, status: str = "in-progress",
           number: str | None = None) -> str:
    return answer(record, call_status=status, fallback_message=SORRY,
                  fallback_number=number).twiml


def test_goodbye_hangs_up_transfer_dials_and_anything_else_falls_back() -> None:
    for outcome in (Outcome.COMPLETED, Outcome.AGENT_ENDED, Outcome.MAX_DURATION):
        assert parse_next(decide(OutcomeRecord(outcome))) == parse_next(twiml.hang_up())
        assert parse_next(decide(OutcomeRecord(outcome))).hangs_up
    step = parse_next(decide(OutcomeRecord(Outcome.TRANSFERRED, "+15550009999")))
    assert (step.says, step.dials, step.hangs_up) == ((), "+15550009999", False)
    for record in (None, OutcomeRecord(Outcome.AGENT_FAILED)):
        step = parse_next(decide(record))
        assert (step.says, step.dials, step.hangs_up) == ((SORRY,), None, True)
        step = parse_next(decide(record, number="+15550001234"))
        assert (step.says, step.dials, step.hangs_up) == ((SORRY,), "+15550001234", False)


def test_a_completed_call_is_hung_up_whatever_was_recorded() -> None:
    for record in (None, OutcomeRecord(Outcome.AGENT_FAILED),
                   OutcomeRecord(Outcome.TRANSFERRED, "+15550009999")):
        step = parse_next(decide(record, status="completed", number="+15550001234"))
        assert (step.says, step.dials, step.hangs_up) == ((), None, True)


def test_a_transfer_without_a_number_falls_back() -> None:
    assert parse_next(decide(OutcomeRecord(Outcome.TRANSFERRED))).says == (SORRY,)


@pytest.mark.anyio
async def test_records_are_kept_by_call_sid_and_expire() -> None:
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    await record_outcome(store, "CA1", Outcome.TRANSFERRED, ttl=300, number="+15550009999")
    await record_outcome(store, "CA2", Outcome.COMPLETED, ttl=300)
    assert await read_outcome(store, "CA1") == OutcomeRecord(Outcome.TRANSFERRED, "+15550009999")
    assert await read_outcome(store, "CA2") == OutcomeRecord(Outcome.COMPLETED)
    assert await read_outcome(store, "CA3") is None
    now[0] += 301
    assert await read_outcome(store, "CA1") is None
    await store.put("outcome:CA4", "not json", 60)
    assert await read_outcome(store, "CA4") is None  # unreadable: the fallback, never a crash


def test_connect_stream_names_the_action() -> None:
    doc = twiml.connect_stream("wss://x/media", {"token": "t"}, action="https://x/call-action")
    connect = ET.fromstring(doc).find("./Connect")
    assert connect is not None and connect.get("action") == "https://x/call-action"
    assert connect.get("method") == "POST"
    assert parse_stream(doc).action == "https://x/call-action"


async def post_action(base_url: str, form: dict[str, str], *,
                      token: str = AUTH_TOKEN) -> httpx.Response:
    url = base_url + "/call-action"
    headers = {"X-Twilio-Signature": twilio_signature(token, url, form)}
    async with httpx.AsyncClient() as http:
        return await http.post(url, data=form, headers=headers)


def twilio_form(call_sid: str, status: str = "in-progress") -> dict[str, str]:
    return {"CallSid": call_sid, "AccountSid": "AC" + "0" * 32, "From": "+15550001111",
            "To": "+15550002222", "CallStatus": status, "Direction": "inbound",
            "ApiVersion": "2010-04-01"}


@pytest.mark.anyio
async def test_webhook_answers_connect_with_the_signed_action_url(make_relay) -> None:
    async with FakeAgent().running() as agent, make_relay(agent) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            assert call.stream.action == relay.base_url + "/call-action"


@pytest.mark.anyio
async def test_forged_action_request_is_rejected(make_relay) -> None:
    async with FakeAgent().running() as agent, make_relay(agent) as relay:
        forged = await post_action(relay.base_url, twilio_form("CA1"), token="not-the-token")
        assert forged.status_code == 403
        async with httpx.AsyncClient() as http:
            unsigned = await http.post(relay.base_url + "/call-action", data=twilio_form("CA1"))
        assert unsigned.status_code == 403
        assert "<Say>" not in forged.text + unsigned.text


@pytest.mark.anyio
async def test_unknown_outcome_gets_the_fallback_as_after_the_relay_process_died(
        make_relay) -> None:
    async with FakeAgent().running() as agent:
        async with make_relay(agent, fallback_number="+15550001234") as first:
            async with SimulatedCall.dial(first.base_url, auth_token=AUTH_TOKEN) as call:
                await (await agent.session()).ready.wait()
                call_sid = call.call_sid
        # The process that held the stream is gone; another one answers Twilio's action.
        async with make_relay(agent, fallback_number="+15550001234") as second:
            started = time.monotonic()
            response = await post_action(second.base_url, twilio_form(call_sid))
            elapsed = time.monotonic() - started
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/xml")
    step = parse_next(response.text)
    assert step.says == (second.settings.fallback_message,)
    assert step.dials == "+15550001234"
    assert elapsed < 1 * MS


@pytest.mark.anyio
async def test_action_after_the_caller_hung_up_answers_hangup(make_relay) -> None:
    async with FakeAgent().running() as agent, make_relay(agent) as relay:
        response = await post_action(relay.base_url, twilio_form("CA404", "completed"))
    step = parse_next(response.text)
    assert (step.says, step.dials, step.hangs_up) == ((), None, True)
