"""The local agent: the pure session (dicts in, dicts out), the keypad, and the real endpoint."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect

from relay import serving as relay_server
from relay.local import audio
from relay.local import session as local_session
from relay.local.agent import LocalSession, Pacing, local_agent_endpoint
from relay.local.audio import FRAME_BYTES
from relay.local.keypad import Keypad, example_arguments, pressed_key
from tests.helpers import bound_socket, run_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


PCMU = {"encoding": "audio/pcmu"}
GREETING = "Hi, thanks for calling. How can I help?"
FAST = Pacing(speed=math.inf)
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "name": "lookup_order", "description": "Look up an order.",
     "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                    "required": ["order_id"]}},
    {"type": "function", "name": "transfer_call",
     "parameters": {"type": "object", "properties": {"number": {"type": "string"}},
                    "required": ["number"]}},
    {"type": "function", "name": "current_time", "parameters": {"type": "object",
                                                                "properties": {}}},
    {"type": "function", "name": "generate_random_number",
     "parameters": {"type": "object", "properties": {"minimum": {"type": "integer"},
                                                     "maximum": {"type": "integer"}},
                    "required": ["minimum", "maximum"]}},
    {"type": "function", "name": "end_call", "parameters": {"type": "object",
                                                            "properties": {}}},
]
SPEECH = audio.tone(300, 1000, 0.4)


def update(**session: Any) -> dict[str, Any]:
    base = {"system_prompt": "test", "input": {"format": PCMU},
            "output": {"voice": "ivy", "format": PCMU}, "tools": TOOLS}
    return {"type": "session.update", "session": {**base, **session}}


def audio_in(ulaw: bytes) -> dict[str, str]:
    return {"type": "input.audio", "audio": base64.b64encode(ulaw).decode()}


def types(messages: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in messages]


def reply_audio(messages: list[dict[str, Any]]) -> bytes:
    return b"".join(base64.b64decode(m["data"]) for m in messages
                    if m["type"] == "reply.audio")


def ready(pacing: Pacing = FAST, **session: Any) -> LocalSession:
    agent = LocalSession(pacing=pacing, session_id="sess_test")
    out = agent.receive(update(**session), 0.0)
    assert types(out)[0] == "session.ready"
    agent.poll(0.0)
    return agent


def talk(agent: LocalSession, ulaw: bytes, now: float = 1.0) -> list[dict[str, Any]]:
    """Send ``ulaw`` as Twilio does, 20 ms at a time, polling after each frame."""
    out: list[dict[str, Any]] = []
    for i in range(0, len(ulaw), FRAME_BYTES):
        out += agent.receive(audio_in(ulaw[i:i + FRAME_BYTES]), now)
        out += agent.poll(now)
    return out


# ---------------------------------------------------------------------- session set-up


def test_session_update_must_come_first() -> None:
    agent = LocalSession(pacing=FAST)
    for early in (audio_in(audio.silence(20)), {"type": "reply.create"}, {"type": "x"}):
        (error,) = agent.receive(early, 0.0)
        assert (error["type"], error["code"]) == ("session.error", "invalid_format")
    assert agent.close_code is None
    assert agent.poll(0.0) == []
    assert types(agent.receive(update(), 0.0)) == ["session.ready"]


@pytest.mark.parametrize("session", [
    {"input": {"format": {"encoding": "audio/pcm"}}},
    {"output": {"voice": "ivy"}},
    {"input": {"format": {"encoding": "audio/pcmu", "sample_rate": 16000}}},
    {"tools": [{"type": "function"}]},
])
def test_first_update_requires_pcmu_and_a_valid_config(session: dict[str, Any]) -> None:
    agent = LocalSession(pacing=FAST)
    (error,) = agent.receive(update(**session), 0.0)
    assert (error["type"], error["code"]) == ("session.error", "invalid_config")
    assert agent.close_code == 1008
    assert agent.receive(audio_in(b"\xff" * 160), 0.1) == []


def test_stored_agents_and_resume_are_refused() -> None:
    agent = LocalSession()
    (error,) = agent.receive({"type": "session.update", "session": {"agent_id": "a1"}}, 0.0)
    assert (error["code"], agent.close_code) == ("agent_not_found", 1008)
    agent = LocalSession()
    (error,) = agent.receive({"type": "session.resume", "session_id": "sess_x"}, 0.0)
    assert (error["code"], agent.close_code) == ("session_not_found", 1008)


def test_ready_reports_the_session_and_resolved_config() -> None:
    agent = LocalSession(pacing=FAST, session_id="sess_test")
    (ready_msg,) = agent.receive(update(), 0.0)
    assert ready_msg["session_id"] == "sess_test"
    assert ready_msg["resume_token"]
    config = ready_msg["config"]
    assert config["input"]["format"] == {"encoding": "audio/pcmu", "sample_rate": 8000}
    assert config["output"] == {"voice": "ivy", "format": {"encoding": "audio/pcmu",
                                                           "sample_rate": 8000}}
    assert [t["name"] for t in config["tools"]] == [t["name"] for t in TOOLS]
    assert agent.next_wakeup() is None  # no greeting: the agent listens first


def test_greeting_is_a_chime_reply_with_the_greeting_as_transcript() -> None:
    agent = LocalSession(pacing=FAST)
    first = agent.receive(update(greeting=GREETING), 0.0)
    assert types(first) == ["session.ready", "reply.started"]
    rest = agent.poll(0.0)
    assert types(rest)[-2:] == ["transcript.agent", "reply.done"]
    assert set(types(rest)[:-2]) == {"reply.audio"}
    reply_id = first[1]["reply_id"]
    assert all(m["reply_id"] == reply_id for m in rest)
    assert rest[-2]["text"] == GREETING and rest[-2]["interrupted"] is False
    assert rest[-1]["status"] == "completed"
    chime = reply_audio(rest)
    assert chime == local_session.CHIME
    assert 0.8 <= audio.duration(chime) <= 1.2
    assert audio.frame_energy(chime) > 1000
    assert all(len(base64.b64decode(m["data"])) <= 320 for m in rest[:-2])


def test_real_time_pacing_runs_at_most_the_lead_ahead() -> None:
    agent = LocalSession(pacing=Pacing(speed=1.0, lead=0.2, chunk_ms=40))
    agent.receive(update(greeting=GREETING), 10.0)
    sent = b""
    now = 10.0
    while True:
        out = agent.poll(now)
        sent += reply_audio(out)
        assert audio.duration(sent) <= (now - 10.0) + 0.2 + 0.04 + 1e-9
        if out and out[-1]["type"] == "reply.done":
            break
        wakeup = agent.next_wakeup()
        assert wakeup is not None and wakeup > now
        now = wakeup
    assert sent == local_session.CHIME
    assert 10.5 < now < 10.9  # the whole chime took about its own length
    assert agent.next_wakeup() is None


# ---------------------------------------------------------------------- echo and barge-in


def test_echo_plays_back_exactly_what_the_caller_said() -> None:
    agent = ready()
    before = talk(agent, audio.silence(300))
    assert before == []
    during = talk(agent, SPEECH)
    assert types(during) == ["input.speech.started"]
    after = talk(agent, audio.silence(800))
    assert types(after)[:4] == ["input.speech.stopped", "transcript.user", "reply.started",
                                "reply.audio"]
    assert after[1]["text"] == "(1.0 s of speech)"
    assert after[-2] == {"type": "transcript.agent", "reply_id": after[2]["reply_id"],
                         "item_id": after[2]["item_id"], "text": "(echo of 1.0 s)",
                         "interrupted": False}
    assert after[-1]["status"] == "completed"
    # 100 ms before the speech, the speech itself, 100 ms after: byte for byte.
    assert reply_audio(after) == audio.silence(100) + SPEECH + audio.silence(100)


def test_short_noises_are_not_speech() -> None:
    agent = ready()
    assert talk(agent, (audio.tone(500, 40) + audio.silence(60)) * 20) == []


def test_a_turn_ends_after_ten_seconds_even_if_the_caller_does_not_stop() -> None:
    agent = ready(Pacing(speed=1.0, lead=0.2))
    out = talk(agent, audio.tone(300, 10_500, 0.4))
    assert types(out)[:4] == ["input.speech.started", "input.speech.stopped",
                              "transcript.user", "reply.started"]
    assert out[2]["text"] == "(10.0 s of speech)"
    # Still talking: speech starts again at once and cuts the 10 s echo off.
    assert types(out)[-3:] == ["input.speech.started", "transcript.agent", "reply.done"]
    assert out[-2]["text"] == "(echo of 10.0 s, cut off after 0.0 s)"
    assert out[-1] == {"type": "reply.done", "reply_id": out[3]["reply_id"],
                       "status": "interrupted"}
    assert audio.duration(reply_audio(out)) <= 0.25


def test_talking_over_a_reply_interrupts_it() -> None:
    agent = LocalSession(pacing=Pacing(speed=1.0, lead=0.2))
    started = agent.receive(update(greeting=GREETING), 0.0)[1]
    first = agent.poll(0.0)
    assert types(first) == ["reply.audio"] * 6
    out = talk(agent, SPEECH[:FRAME_BYTES * 5], now=0.3)
    cut = types(out).index("input.speech.started")
    assert set(types(out[:cut])) == {"reply.audio"}  # released while the caller began
    out = out[cut:]
    assert types(out) == ["input.speech.started", "transcript.agent", "reply.done"]
    assert out[1]["interrupted"] is True and out[1]["reply_id"] == started["reply_id"]
    assert out[2] == {"type": "reply.done", "reply_id": started["reply_id"],
                      "status": "interrupted"}
    assert GREETING.startswith(out[1]["text"]) and out[1]["text"] != GREETING
    assert agent.poll(5.0) == []  # none of the greeting's audio follows


def test_a_new_reply_replaces_one_still_playing() -> None:
    agent = LocalSession(pacing=Pacing(speed=1.0))
    agent.receive(update(greeting=GREETING), 0.0)
    agent.poll(0.0)
    out = agent.receive({"type": "reply.create"}, 0.1)
    assert types(out) == ["transcript.agent", "reply.done", "reply.started"]
    assert out[1]["status"] == "interrupted"


# ---------------------------------------------------------------------- keypad and tools


def test_keys_call_tools_by_the_documented_mapping() -> None:
    keypad = Keypad.from_tools(TOOLS)
    assert keypad.describe() == ("0=end_call 1=current_time 2=generate_random_number "
                                 "3=lookup_order")
    assert keypad.keys["2"].arguments == {"minimum": 1, "maximum": 6}
    assert keypad.keys["3"].arguments == {"order_id": "test"}
    assert "transfer_call" not in keypad.describe()


def test_keypad_without_a_clock_uses_the_first_tool_without_required_parameters() -> None:
    tools = [TOOLS[0], {"name": "weather", "parameters": {"properties": {
        "city": {"type": "string"}}}}, {"name": "random_number", "parameters": {}}]
    assert Keypad.from_tools(tools).describe() == "1=weather 2=random_number 3=lookup_order"
    assert Keypad.from_tools([]).describe() == "none"


@pytest.mark.parametrize(("text", "key"), [
    ("The caller pressed the key 5 on their phone keypad.", "5"),
    ("The caller pressed the key # on their phone keypad.", "#"),
    ("Caller presses 0", "0"),
    ("Tell the caller we're still processing the transfer.", None),
    ("Call 911", None),
    (None, None),
])
def test_pressed_key(text: str | None, key: str | None) -> None:
    assert pressed_key(text) == key


def test_example_arguments_follow_the_schema() -> None:
    schema = {"type": "object", "required": ["kind", "count", "flag", "n"], "properties": {
        "kind": {"type": "string", "enum": ["a", "b"]},
        "count": {"type": "integer", "minimum": 3},
        "flag": {"type": "boolean"},
        "n": {"type": ["null", "number"], "default": 2.5},
        "min": {"type": "number", "minimum": 2},
        "max_value": {"type": "integer", "maximum": 4},
        "note": {"type": "string"},
    }}
    assert example_arguments(schema) == {"kind": "a", "count": 3, "flag": True, "n": 2.5,
                                         "min": 2, "max_value": 4}
    assert example_arguments(None) == {}
    described = {"required": ["place", "zone"], "properties": {
        "place": {"type": "string", "description": "Place name: 'Paris', 'Springfield, IL'"},
        "zone": {"type": "string", "description": "IANA timezone, e.g. Europe/London"}}}
    assert example_arguments(described) == {"place": "Paris", "zone": "Europe/London"}


def test_a_key_press_makes_a_tool_turn_and_the_result_a_success_tone() -> None:
    agent = ready()
    text = "The caller pressed the key 1 on their phone keypad."
    out = agent.receive({"type": "reply.create", "instructions": text}, 1.0)
    assert types(out) == ["reply.started", "tool.call", "reply.done"]
    call = out[1]
    assert (call["name"], call["arguments"]) == ("current_time", {})
    assert out[2] == {"type": "reply.done", "reply_id": out[0]["reply_id"],
                      "status": "completed"}
    result = {"type": "tool.result", "call_id": call["call_id"],
              "result": '{"time":"12:00"}', "is_error": False}
    spoken = agent.receive(result, 1.2) + agent.poll(1.2)
    assert types(spoken)[0] == "reply.started"
    assert reply_audio(spoken) == local_session.SUCCESS
    assert spoken[-2]["text"] == 'Tool current_time returned: {"time":"12:00"}'
    (error,) = agent.receive(result, 1.3)  # each call is answered once
    assert (error["code"], error["param"]) == ("invalid_value", "call_id")
    assert agent.close_code is None


def test_a_failed_tool_gets_a_low_buzz() -> None:
    agent = ready()
    out = agent.receive({"type": "reply.create",
                         "instructions": "The caller pressed the key 2 on their keypad."}, 1.0)
    assert out[1]["arguments"] == {"minimum": 1, "maximum": 6}
    spoken = agent.receive({"type": "tool.result", "call_id": out[1]["call_id"],
                            "result": '{"error":"boom"}', "is_error": True}, 1.1)
    spoken += agent.poll(1.1)
    assert reply_audio(spoken) == local_session.FAILURE
    assert spoken[-2]["text"] == 'Tool generate_random_number failed: {"error":"boom"}'


def test_reply_create_without_a_key_or_tool_speaks_a_short_tone() -> None:
    agent = ready()
    plain = agent.receive({"type": "reply.create", "instructions": "Say hi."}, 1.0)
    plain += agent.poll(1.0)
    assert reply_audio(plain) == local_session.BEEP
    assert plain[-1]["status"] == "completed"
    unused = agent.receive({"type": "reply.create", "instructions": "pressed the key 9"}, 2.0)
    unused += agent.poll(2.0)
    assert reply_audio(unused) == local_session.NO_TOOL
    assert unused[-2]["text"] == "(no tool on key 9)"
    assert "tool.call" not in types(plain + unused)


def test_later_updates_replace_tools_but_not_the_greeting() -> None:
    agent = ready(greeting=GREETING)
    out = agent.receive({"type": "session.update", "session": {"tools": [TOOLS[2]]}}, 1.0)
    assert types(out) == ["session.updated"]
    assert agent.keypad.describe() == "1=current_time"
    (error,) = agent.receive({"type": "session.update", "session": {"greeting": "Bye"}}, 1.0)
    assert (error["code"], agent.close_code) == ("immutable_field", None)


# ---------------------------------------------------------------------- errors and the end


def test_bad_input_is_reported_and_the_session_stays_open() -> None:
    agent = ready()
    cases = [
        ({"type": "input.audio", "audio": "not base64!"}, "invalid_audio"),
        ({"type": "input.audio"}, "invalid_format"),
        ({"type": "what.is.this"}, "invalid_format"),
        ({"type": "tool.result", "call_id": "c1", "result": {"not": "a string"}},
         "invalid_format"),
        (["not", "an", "object"], "invalid_format"),
    ]
    for message, code in cases:
        (error,) = agent.receive(message, 1.0)
        assert (error["type"], error["code"], error["session_id"]) == (
            "session.error", code, "sess_test")
    assert agent.receive_text("{not json", 1.0)[0]["code"] == "invalid_format"
    assert agent.receive_text(b"\x00\x01", 1.0)[0]["code"] == "invalid_format"
    assert agent.close_code is None


def test_session_end_reports_durations_and_closes_normally() -> None:
    agent = LocalSession(pacing=FAST)
    agent.receive(update(), 2.0)
    talk(agent, audio.silence(1500), now=3.0)
    (ended,) = agent.receive({"type": "session.end"}, 12.5)
    assert ended == {"type": "session.ended", "session_duration_seconds": 10.5,
                     "audio_duration_seconds": 1.5}
    assert agent.close_code == 1000
    assert agent.receive(audio_in(audio.silence(20)), 13.0) == []


# ---------------------------------------------------------------------- over a real socket


@contextlib.asynccontextmanager
async def serve(pacing: Pacing, done: asyncio.Event | None = None) -> AsyncIterator[str]:
    """uvicorn on 127.0.0.1:0 with the endpoint mounted; yields its URL."""
    endpoint = local_agent_endpoint("k", pacing=pacing)

    async def tracked(websocket: WebSocket) -> None:
        await endpoint(websocket)
        if done is not None:
            done.set()

    app = Starlette(routes=[WebSocketRoute("/local-agent", tracked)])
    sock = bound_socket()
    port = sock.getsockname()[1]
    async with run_server(relay_server.config(app, lifespan="off", log_level="warning"), sock):
        yield f"ws://127.0.0.1:{port}/local-agent"


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(message).decode())  # a str: the API takes text frames only


async def until(ws: ClientConnection, kind: str) -> list[dict[str, Any]]:
    """Messages up to and including the first of type ``kind``."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(3):
        while not seen or seen[-1]["type"] != kind:
            seen.append(orjson.loads(await ws.recv()))
    return seen


def open_agent(url: str, key: str = "k") -> connect:
    return connect(url, additional_headers={"Authorization": f"Bearer {key}"},
                   compression=None, open_timeout=3, close_timeout=1)


@pytest.mark.anyio
async def test_end_to_end_greeting_echo_tool_and_end() -> None:
    async with serve(Pacing(speed=20.0, lead=0.2)) as url, open_agent(url) as ws:
        await send(ws, update(greeting=GREETING))
        greeting = await until(ws, "reply.done")
        assert types(greeting)[:2] == ["session.ready", "reply.started"]
        assert reply_audio(greeting) == local_session.CHIME
        assert greeting[-2]["text"] == GREETING

        caller = audio.silence(200) + SPEECH[:FRAME_BYTES * 30] + audio.silence(800)
        for i in range(0, len(caller), FRAME_BYTES):
            await send(ws, audio_in(caller[i:i + FRAME_BYTES]))
        echo = await until(ws, "reply.done")
        assert types(echo)[:4] == ["input.speech.started", "input.speech.stopped",
                                   "transcript.user", "reply.started"]
        assert echo[2]["text"] == "(0.6 s of speech)"
        assert reply_audio(echo) == (audio.silence(100) + SPEECH[:FRAME_BYTES * 30]
                                     + audio.silence(100))

        await send(ws, {"type": "reply.create",
                        "instructions": "The caller pressed the key 1 on their phone keypad."})
        turn = await until(ws, "reply.done")
        assert types(turn) == ["reply.started", "tool.call", "reply.done"]
        await send(ws, {"type": "tool.result", "call_id": turn[1]["call_id"],
                        "result": '{"time":"noon"}', "is_error": False})
        answer = await until(ws, "reply.done")
        assert reply_audio(answer) == local_session.SUCCESS

        await ws.send('{"type":"session.end"}')
        (ended,) = await until(ws, "session.ended")
        assert ended["audio_duration_seconds"] == audio.duration(caller)
        with pytest.raises(websockets.ConnectionClosedOK):
            await ws.recv()
        assert ws.close_code == 1000


@pytest.mark.anyio
async def test_end_to_end_bad_config_is_an_error_then_close_1008() -> None:
    async with serve(FAST) as url, open_agent(url) as ws:
        await send(ws, update(input={"format": {"encoding": "audio/pcm"}}))
        (error,) = await until(ws, "session.error")
        assert error["code"] == "invalid_config"
        with pytest.raises(websockets.ConnectionClosedError):
            await ws.recv()
        assert ws.close_code == 1008


@pytest.mark.anyio
async def test_end_to_end_wrong_key_is_refused_before_accept() -> None:
    async with serve(FAST) as url:
        for key in ("wrong", ""):
            with pytest.raises(websockets.InvalidStatus) as info:
                async with open_agent(url, key):
                    pass
            assert info.value.response.status_code == 403
        with pytest.raises(websockets.InvalidStatus):
            async with connect(url, compression=None, open_timeout=3):
                pass


@pytest.mark.anyio
async def test_hang_up_mid_reply_ends_the_session_promptly() -> None:
    done = asyncio.Event()
    async with serve(Pacing(speed=1.0), done) as url:
        async with open_agent(url) as ws:
            await send(ws, update(greeting=GREETING))
            first = await until(ws, "reply.audio")
            assert types(first) == ["session.ready", "reply.started", "reply.audio"]
        async with asyncio.timeout(0.3):  # the chime had most of a second still to play
            await done.wait()
