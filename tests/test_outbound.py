"""Outbound calls against a fake of Twilio's REST API, and end to end through the real relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from relay.config import Settings
from relay.local.caller import parse_stream
from relay.outbound import CallError, CallOptions, build_call_request, main, place_call
from relay.security import twilio_signature
from tests.conftest import AUTH_TOKEN, MS
from tests.fake_twilio_rest import ACCOUNT_SID, TWILIO_NUMBER, FakeTwilioRest
from tests.fakes import FakeAgent
from tests.helpers import frame, greet

CALLEE = "+15558675310"
GREETING = "Hi Sam, this is Ada from the clinic, calling about tomorrow's appointment."
PROMPT = "You are Ada, a clinic assistant. Confirm the appointment at 10 am; be brief."


def closed_port_url() -> str:
    """A local URL where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def env_for(twilio: FakeTwilioRest, public_url: str, **overrides: str) -> dict[str, str]:
    env = {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
           "TWILIO_PHONE_NUMBER": TWILIO_NUMBER, "PUBLIC_URL": public_url,
           "TWILIO_API_BASE_URL": twilio.base_url}
    env.update(overrides)
    return {k: v for k, v in env.items() if v}


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = dict(public_url="https://relay.example.com",
                                  twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
                                  twilio_phone_number=TWILIO_NUMBER)
    return Settings(**(values | overrides))


async def webhook(url: str, form: dict[str, str]) -> httpx.Response:
    """Twilio requesting a webhook URL, signed with the auth token."""
    async with httpx.AsyncClient(timeout=5) as http:
        return await http.post(url, data=form, headers={
            "X-Twilio-Signature": twilio_signature(AUTH_TOKEN, url, form)})


@contextlib.asynccontextmanager
async def answer(url: str, form: dict[str, str]) -> AsyncIterator[ClientConnection]:
    """What Twilio does when the callee answers: fetch the TwiML, open the stream, send start."""
    response = await webhook(url, form)
    response.raise_for_status()
    stream = parse_stream(response.text)
    assert stream.parameters["direction"] == "outbound"
    headers = {"x-twilio-signature": twilio_signature(AUTH_TOKEN, stream.url, {})}
    async with connect(stream.url, additional_headers=headers, compression=None) as ws:
        await ws.send(orjson.dumps({"event": "connected", "protocol": "Call",
                                    "version": "1.0.0"}), text=True)
        await ws.send(orjson.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
                                    "start": {
            "accountSid": ACCOUNT_SID, "streamSid": "MZ1", "callSid": form["CallSid"],
            "tracks": ["inbound"], "customParameters": stream.parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}),
            text=True)
        yield ws


# ---------------------------------------------------------------------- the request (pure)

def test_call_request_carries_the_call_and_its_options_in_the_webhook_url() -> None:
    request = build_call_request(settings(), CALLEE, CallOptions(
        greeting=GREETING, prompt=PROMPT, timeout=25, machine_detection="message",
        machine_message="Please call us back."))
    url = urlsplit(request.pop("url"))
    assert (url.scheme, url.netloc, url.path) == ("https", "relay.example.com", "/twiml")
    assert parse_qs(url.query) == {"greeting": [GREETING], "prompt": [PROMPT],
                                   "amd": ["message"], "amd_message": ["Please call us back."]}
    assert request == {
        "to": CALLEE, "from_": TWILIO_NUMBER, "method": "POST",
        "status_callback": "https://relay.example.com/call-status",
        "status_callback_event": ["initiated", "ringing", "answered", "completed"],
        "status_callback_method": "POST", "timeout": 25, "machine_detection": "DetectMessageEnd",
    }
    plain = build_call_request(settings(), CALLEE, CallOptions(from_="+15017122662"))
    assert plain["url"] == "https://relay.example.com/twiml"
    assert plain["from_"] == "+15017122662" and "timeout" not in plain


@pytest.mark.parametrize(("options", "message"), [
    ({"to": "5558675310"}, "is not an E.164 number"),
    ({"from_": "+1 501 712 2661"}, "is not an E.164 number"),
    ({"greeting": "x" * 473}, "greeting can be at most 472"),
    ({"prompt": "x" * 475}, "prompt can be at most 474"),
    ({"timeout": 601}, "1 to 600 seconds"),
    ({"machine_detection": "beep"}, "must be one of hangup, message"),
    ({"machine_detection": "hangup", "machine_message": "hi"}, "needs machine detection"),
])
def test_invalid_calls_are_refused_before_any_request(options: dict[str, Any],
                                                      message: str) -> None:
    to = options.pop("to", CALLEE)
    with pytest.raises(CallError, match=message):
        build_call_request(settings(), to, CallOptions(**options))


def test_a_local_public_url_is_refused_for_real_twilio() -> None:
    with pytest.raises(CallError, match="PUBLIC_URL is http://localhost:8080, which Twilio"):
        build_call_request(settings(public_url="http://localhost:8080"), CALLEE)
    with pytest.raises(CallError, match="TWILIO_PHONE_NUMBER is not set"):
        build_call_request(settings(twilio_phone_number=None), CALLEE)


# ---------------------------------------------------------------------- end to end

@pytest.mark.anyio
async def test_outbound_call_end_to_end_the_agent_greets_with_the_per_call_options(
        make_relay, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay.routes")
    with FakeTwilioRest(AUTH_TOKEN).running() as twilio:
        async with FakeAgent(script=greet).running() as agent, make_relay(
                agent, twilio_api_base_url=twilio.base_url,
                twilio_phone_number=TWILIO_NUMBER) as relay:
            sid = await asyncio.to_thread(place_call, CALLEE,
                                          CallOptions(greeting=GREETING, prompt=PROMPT),
                                          settings=relay.settings)
            (created,) = twilio.created()
            assert created.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json"
            assert (created.one("To"), created.one("From")) == (CALLEE, TWILIO_NUMBER)
            assert created.one("StatusCallback") == relay.base_url + "/call-status"
            assert created.form["StatusCallbackEvent"] == ["initiated", "ringing", "answered",
                                                           "completed"]
            url = created.one("Url")
            assert url.startswith(relay.base_url + "/twiml?")
            assert (await twilio.send_status(sid, "ringing", "ringing")).status_code == 204

            form = {"CallSid": sid, "AccountSid": ACCOUNT_SID, "From": TWILIO_NUMBER,
                    "To": CALLEE, "CallStatus": "in-progress", "Direction": "outbound-api",
                    "ApiVersion": "2010-04-01"}
            async with answer(url, form) as ws:
                async with asyncio.timeout(3 * MS):
                    heard = [orjson.loads(await ws.recv()) for _ in range(3)]
                assert [m["media"]["payload"] for m in heard] == [frame(900 + i) for i in range(3)]
                session = await agent.session()
                update = session.received[0]
                assert update["type"] == "session.update"
                assert update["session"]["greeting"] == GREETING
                assert update["session"]["system_prompt"] == PROMPT
                await ws.send(orjson.dumps({"event": "stop", "sequenceNumber": "2",
                                            "streamSid": "MZ1", "stop": {"callSid": sid}}),
                              text=True)
                await asyncio.wait_for(session.closed.wait(), 3 * MS)
            assert session.ended.is_set() and session.violations == []
            completed = await twilio.send_status(sid, "completed", "completed", CallDuration="7")
            assert completed.status_code == 204
    assert f"[{sid}] call status: ringing" in caplog.text
    assert f"[{sid}] call status: completed (CallDuration=7)" in caplog.text


@pytest.mark.anyio
async def test_main_prints_the_sid_and_follows_the_call_with_wait(
        make_relay, capsys: pytest.CaptureFixture[str]) -> None:
    progress = [("ringing", None), ("ringing", None), ("in-progress", None), ("completed", 42)]
    with FakeTwilioRest(AUTH_TOKEN, progress=progress).running() as twilio:
        async with FakeAgent().running() as agent, make_relay(agent) as relay:
            argv = [CALLEE, "--greeting", GREETING, "--timeout", "20", "--wait",
                    "--poll-interval", "0.01"]
            code = await asyncio.to_thread(main, argv, env_for(twilio, relay.base_url))
    out, err = capsys.readouterr()
    (created,) = twilio.created()
    assert (code, err) == (0, "")
    assert out.splitlines() == [next(iter(twilio.calls)), "ringing", "answered",
                                "completed after 42 s"]
    assert created.one("Timeout") == "20"
    assert parse_qs(urlsplit(created.one("Url")).query) == {"greeting": [GREETING]}


def test_wait_exits_non_zero_when_nobody_answers(capsys: pytest.CaptureFixture[str]) -> None:
    progress: list[tuple[str, int | None]] = [("ringing", None), ("no-answer", 0)]
    with FakeTwilioRest(AUTH_TOKEN, progress=progress).running() as twilio:
        code = main([CALLEE, "--wait", "--poll-interval", "0.01"],
                    env_for(twilio, closed_port_url()))
    out, err = capsys.readouterr()
    assert code == 1
    assert out.splitlines()[1:] == ["ringing", "no-answer"]
    assert err.splitlines()[-1].endswith("was not answered (no-answer)")


# ---------------------------------------------------------------------- errors

def test_a_bad_number_exits_non_zero_without_any_request(
        capsys: pytest.CaptureFixture[str]) -> None:
    with FakeTwilioRest(AUTH_TOKEN).running() as twilio:
        code = main(["555-867-5310"], env_for(twilio, closed_port_url()))
    _, err = capsys.readouterr()
    assert code == 1
    assert err == ("error: the number to call '555-867-5310' is not an E.164 number like "
                   "+15551234567\n")
    assert twilio.requests == []


def test_missing_configuration_names_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeTwilioRest(AUTH_TOKEN).running() as twilio:
        env = env_for(twilio, "", TWILIO_AUTH_TOKEN="", TWILIO_PHONE_NUMBER="")
        code = main([CALLEE], env)
        assert main([CALLEE, "--greeting", "x" * 500], env_for(twilio, "https://r.example")) == 1
    _, err = capsys.readouterr()
    assert code == 1
    first, second = err.splitlines()
    assert first == ("error: TWILIO_AUTH_TOKEN, TWILIO_PHONE_NUMBER, PUBLIC_URL not set: add them "
                     "to .env or the environment (see .env.example)")
    assert second.startswith("error: the greeting is 500 characters long")
    assert twilio.requests == []


def test_an_unreachable_relay_warns_but_the_call_is_placed(
        capsys: pytest.CaptureFixture[str]) -> None:
    public = closed_port_url()
    with FakeTwilioRest(AUTH_TOKEN).running() as twilio:
        code = main([CALLEE], env_for(twilio, public))
    out, err = capsys.readouterr()
    assert code == 0
    assert out == f"{next(iter(twilio.calls))}\n"
    (warning,) = err.splitlines()
    assert warning.startswith(f"warning: the relay is not reachable at {public}/healthz")


@pytest.mark.parametrize(("fake", "argv", "env", "code", "advice"), [
    ({"verified": [TWILIO_NUMBER]}, [], {}, 21219,
     f"Twilio error 21219: The number {CALLEE} is unverified. Trial accounts may only make calls "
     f"to verified numbers. A trial account only calls verified numbers: verify {CALLEE} in "
     "the Twilio console"),
    ({}, ["--from", "+15017122662"], {}, 21210,
     "Twilio error 21210: The source phone number provided, +15017122662, is not yet verified "
     "for your account."),
    ({}, ["--from", "+10005550100"], {}, 21212,
     "Twilio error 21212: The 'From' number +10005550100 is not a valid phone number, "
     "shortcode, or alphanumeric sender ID. Set TWILIO_PHONE_NUMBER (or --from) to a"),
    ({}, [], {"TWILIO_AUTH_TOKEN": "not-the-token"}, 20003,
     "Twilio error 20003: Authenticate. Check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"),
])
def test_twilio_errors_exit_non_zero_with_what_to_do(
        capsys: pytest.CaptureFixture[str], fake: dict[str, Any], argv: list[str],
        env: dict[str, str], code: int, advice: str) -> None:
    with FakeTwilioRest(AUTH_TOKEN, **fake).running() as twilio:
        assert main([CALLEE, *argv], env_for(twilio, closed_port_url(), **env)) == 1
        settings = Settings.from_env(env_for(twilio, "https://relay.example.com", **env))
        with pytest.raises(CallError) as raised:
            place_call(CALLEE, CallOptions(from_=argv[1] if argv else None), settings=settings)
    assert raised.value.code == code
    out, err = capsys.readouterr()
    *_, line = err.splitlines()
    assert out == "" and "Traceback" not in err
    assert line.startswith("error: " + advice), line
    assert len(twilio.created()) == 2


# ---------------------------------------------------------------------- the relay's side

@pytest.mark.anyio
async def test_call_status_rejects_a_forged_signature(make_relay) -> None:
    async with FakeAgent().running() as agent, make_relay(agent) as relay:
        url = relay.base_url + "/call-status"
        form = {"CallSid": "CA" + "1" * 32, "CallStatus": "ringing", "AccountSid": ACCOUNT_SID}
        async with httpx.AsyncClient(timeout=5) as http:
            forged = await http.post(url, data=form, headers={
                "X-Twilio-Signature": twilio_signature("not-the-token", url, form)})
            unsigned = await http.post(url, data=form)
        assert (forged.status_code, unsigned.status_code) == (403, 403)
        assert (await webhook(url, form)).status_code == 204


@pytest.mark.anyio
@pytest.mark.parametrize(("mode", "answered_by", "expected"), [
    ("hangup", "machine_start", ["Hangup"]),
    ("message", "machine_end_beep", ["Say", "Hangup"]),
    ("message", "fax", ["Hangup"]),
    ("hangup", "human", ["Connect"]),
])
async def test_answering_machine_detection(make_relay, mode: str, answered_by: str,
                                           expected: list[str]) -> None:
    # A loopback PUBLIC_URL is only accepted when TWILIO_API_BASE_URL names a stand-in for Twilio.
    async with FakeAgent().running() as agent, make_relay(
            agent, twilio_api_base_url="http://127.0.0.1:9",
            twilio_phone_number=TWILIO_NUMBER) as relay:
        message = "Please call the clinic back." if mode == "message" else None
        request = build_call_request(relay.settings, CALLEE, CallOptions(
            machine_detection=mode, machine_message=message))
        response = await webhook(request["url"], {
            "CallSid": "CA" + "2" * 32, "AccountSid": ACCOUNT_SID, "From": TWILIO_NUMBER,
            "To": CALLEE, "CallStatus": "in-progress", "Direction": "outbound-api",
            "AnsweredBy": answered_by})
    assert response.status_code == 200
    root = ET.fromstring(response.text)
    assert [node.tag for node in root] == expected
    if expected[0] == "Say":
        assert root[0].text == "Please call the clinic back."
    assert (root.find("./Connect/Stream") is not None) == (expected == ["Connect"])
