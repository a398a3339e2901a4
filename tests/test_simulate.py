"""The terminal simulator end to end: the real relay with its built-in local agent, real sockets."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from array import array
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.call_control import end_call
from relay.local.audio import FRAME_BYTES, RATE, read_wav, silence, ulaw_decode
from relay.simulate import (
    Options,
    Result,
    SimulationError,
    default_caller,
    main,
    parse_dtmf,
    simulate,
    speech_like,
)
from relay.tools import Registry
from tests.conftest import AUTH_TOKEN, RunningRelay, run_relay
from tests.conftest import test_settings as settings_for
from tests.helpers import NetworkPath
from tools.clock import current_time

WAIT, SPEECH, AFTER = 1.0, 0.8, 1.0  # the caller: greeting, a short turn, time for the echo
LOUD = 300  # mean absolute amplitude of a frame the caller can hear (the local agent's VAD)


@contextlib.asynccontextmanager
async def local_relay(**overrides: Any) -> AsyncIterator[RunningRelay]:
    """The relay as ``python app.py`` runs it without ASSEMBLYAI_API_KEY: its own local agent."""
    values: dict[str, Any] = {"assemblyai_api_key": None, "agent_greeting": "Hello"}
    values.update(overrides)
    async with run_relay(lambda port: settings_for(port, "ws://unused", **values),
                         Registry([current_time, end_call])) as relay:
        assert relay.settings.local_agent
        yield relay


async def call(relay: RunningRelay, lines: list[str], **options: Any) -> Result:
    values: dict[str, Any] = {"url": relay.base_url, "auth_token": AUTH_TOKEN, "tail": 0.5}
    values.update(options)
    return await simulate(Options(**values), out=lines.append)


def loud_seconds(samples: array[int], start: float, end: float) -> float:
    """Seconds of 20 ms frames between ``start`` and ``end`` that the caller could hear."""
    loud = 0
    for i in range(round(start * RATE), min(len(samples), round(end * RATE)), FRAME_BYTES):
        frame = samples[i:i + FRAME_BYTES]
        loud += sum(map(abs, frame)) / len(frame) >= LOUD
    return loud * FRAME_BYTES / RATE


def details(result: Result, kind: str) -> list[str]:
    return [event.detail for event in result.events if event.kind == kind]


@pytest.mark.anyio
async def test_a_call_records_the_greeting_and_the_echo(tmp_path: Path) -> None:
    speech = speech_like(round(SPEECH * 1000))
    recording = tmp_path / "heard.wav"
    lines: list[str] = []
    async with local_relay() as relay:
        result = await call(relay, lines, audio=default_caller(WAIT, SPEECH, AFTER),
                            record=recording)

    assert result.ok and result.hung_up_by == "caller", result.reason
    kinds = result.kinds()
    for kind in ("webhook", "stream", "agent.ready", "audio.first", "audio.caller",
                 "transcript.user", "transcript.agent", "reply.heard", "audio.done", "hang-up"):
        assert kind in kinds, f"no {kind} in the timeline:\n" + "\n".join(lines)
    assert kinds.index("agent.ready") < kinds.index("transcript.user") < kinds.index("hang-up")
    assert kinds[-1] == "hang-up"
    assert details(result, "transcript.user") == [f"({SPEECH:.1f} s of speech)"]
    assert details(result, "transcript.agent") == ["Hello", f"(echo of {SPEECH:.1f} s)"]
    times = [event.ms for event in result.events]
    assert times == sorted(times), "the timeline is printed in time order"
    assert [event.line() for event in result.events] == [
        line for line in lines if line.lstrip()[:1].isdigit()]
    assert any(line.startswith("summary") for line in lines)
    assert result.sent_seconds >= WAIT + SPEECH + AFTER

    # The echo is the caller's own audio, byte for byte, through the relay both ways.
    assert speech in result.received
    # The recording is what the caller heard, on the stream's clock.
    samples, rate = read_wav(recording)
    assert rate == RATE and samples == ulaw_decode(result.heard)
    assert abs(len(samples) / RATE - result.events[-1].ms / 1000) < 0.3
    assert loud_seconds(samples, 0, WAIT) >= 0.6, "the greeting chime plays before the caller"
    assert loud_seconds(samples, WAIT, WAIT + SPEECH + 0.4) == 0, "silence while the caller talks"
    echo = loud_seconds(samples, WAIT + SPEECH, len(samples) / RATE)
    assert abs(echo - SPEECH) <= 0.1, f"the echo lasts {echo:.2f} s, the caller spoke {SPEECH} s"
    assert abs(result.heard_seconds - (0.85 + SPEECH + 0.2)) < 0.1  # chime + echo with margins


@pytest.mark.anyio
async def test_a_stream_lost_mid_call_is_followed_into_its_new_stream() -> None:
    wait, cut_at = 2.5, 0.9  # the stream is cut after the greeting, before the caller speaks
    speech = speech_like(round(SPEECH * 1000))
    lines: list[str] = []
    async with local_relay() as relay, NetworkPath(relay.settings.port) as path:
        async def cut() -> None:
            await asyncio.sleep(cut_at)
            path.cut()

        cutting = asyncio.create_task(cut())
        result = await call(relay, lines, audio=default_caller(wait, SPEECH, AFTER),
                            connect_to=f"ws://127.0.0.1:{path.port}")
        await cutting
    assert result.ok and result.hung_up_by == "caller", "\n".join(lines)
    kinds = result.kinds()
    assert kinds.count("stream") == 2, "\n".join(lines)
    (restreamed,) = [line for line in lines if "stream again" in line]
    assert "restream 1" in restreamed
    assert any("caller hears next" in line and "streams the call again" in line
               for line in lines), lines
    # The local agent keeps no sessions: the new stream's fresh session hears the caller,
    # and the echo comes back byte for byte through the new stream.
    assert speech in result.received
    assert result.sent_seconds >= wait + SPEECH + AFTER - 0.1


@pytest.mark.anyio
async def test_keys_call_tools_and_zero_lets_the_agent_hang_up() -> None:
    lines: list[str] = []
    async with local_relay() as relay:
        result = await call(relay, lines, audio=silence(1000), dtmf=parse_dtmf("1@1.0, 0@2.2"))

    assert result.ok and result.hung_up_by == "relay", result.reason
    assert result.close_code == 1000 and "agent ended the call" in result.reason
    assert details(result, "dtmf.sent") == ["1 (DTMF)", "0 (DTMF)"]
    assert len(details(result, "dtmf")) == 2  # the relay passed both keys to the agent
    calls, results = details(result, "tool.call"), details(result, "tool.result")
    assert [c.split()[0] for c in calls] == ["current_time", "end_call"], lines
    assert len(results) == 2 and all("succeeded" in r for r in results)
    kinds = result.kinds()
    assert kinds.index("tool.call") < kinds.index("tool.result") < kinds.index("hang-up")
    assert result.recording is None
    # then, as Twilio would, it asked the <Connect action> what the caller hears next
    assert result.next_step is not None and result.next_step.hangs_up
    assert result.next_step.says == () and result.next_step.dials is None
    assert kinds.index("hang-up") < kinds.index("action")
    assert details(result, "action") == ["hangs up"]


@pytest.mark.anyio
async def test_refused_calls_say_why_in_one_line() -> None:
    async with local_relay() as relay:
        with pytest.raises(SimulationError, match="auth token differs") as wrong:
            await call(relay, [], auth_token="not-the-token")
        with pytest.raises(SimulationError, match="--auth-token"):
            await call(relay, [], auth_token=None)
    assert "\n" not in str(wrong.value)


@pytest.mark.anyio
async def test_a_stream_closed_with_an_error_code_is_a_failure() -> None:
    # The relay cannot reach its agent, so it ends the call with 1011 (internal error).
    async with run_relay(lambda port: settings_for(port, "ws://127.0.0.1:1"),
                         Registry()) as relay:
        result = await call(relay, [], audio=silence(200))
    assert not result.ok and result.hung_up_by == "relay"
    assert result.error is not None and "closed the stream with code 1011" in result.error
    assert "\n" not in result.error



@pytest.mark.anyio
async def test_the_simulator_shows_the_fallback_the_caller_hears_when_no_agent_answers() -> None:
    lines: list[str] = []
    async with run_relay(lambda port: settings_for(
            port, "ws://127.0.0.1:1", fallback_message="Sorry, nobody is here.",
            fallback_number="+15550001234", agent_retry_backoff=0.05), Registry()) as relay:
        result = await call(relay, lines, audio=silence(200))
    step = result.next_step
    assert step is not None and step.says == ("Sorry, nobody is here.",)
    assert step.dials == "+15550001234"
    (shown,) = [line for line in lines if "caller hears next" in line]
    assert "Twilio says 'Sorry, nobody is here.', then dials +15550001234" in shown
    assert any("agent fault" in line and "retrying" in line for line in lines), lines


def test_an_unreachable_relay_is_one_line_and_a_non_zero_exit(capsys) -> None:
    assert main(["--url", "http://127.0.0.1:1", "--no-record"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("relay.simulate: error: the relay is unreachable at http://127.0.0.1:1")


def test_dtmf_option() -> None:
    assert parse_dtmf("1@4.0,#@6.5") == [(4.0, "1"), (6.5, "#")]
    for bad in ("1", "x@1", "12@1", "1@-1", "1@soon"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_dtmf(bad)
