"""The calls page in headless Chromium, with a real call through the fakes.

A simulated Twilio caller talks to the strict fake agent through the relay; Chromium (driven
over the DevTools protocol, as in ``test_phone``) opens ``/calls``, sees the live call, hangs
it up with the page's button, then opens the finished call and finds its timeline drawn.
Screenshots go to ``$RELAY_TEST_ARTIFACTS`` (default: the test's temporary folder).
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import orjson
import pytest

from relay.local.caller import SimulatedCall
from tests.browser import CHROMIUM, DevTools, chromium, speech_like_wav
from tests.conftest import AUTH_TOKEN, MS
from tests.fakes import AgentSession, FakeAgent
from tests.helpers import conversation, lookup_order, speak, wait_for_records

pytestmark = pytest.mark.anyio


async def talk_then_say_goodbye(session: AgentSession) -> None:
    await conversation(session)
    await session.wait_for("reply.create", timeout=20 * MS)  # the operator hung up
    await speak(session, "bye", 3, "Goodbye, thanks for calling.", first=900)


async def open_page(devtools: DevTools, url: str) -> str:
    target = await devtools.call("Target.createTarget", url=url)
    page = (await devtools.call("Target.attachToTarget", targetId=target["targetId"],
                                flatten=True))["sessionId"]
    await devtools.call("Runtime.enable", page)
    return page


async def screenshot(devtools: DevTools, page: str, folder: Path, name: str) -> Path:
    shot = await devtools.call("Page.captureScreenshot", page, format="png")
    path = folder / name
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("RELAY_TEST_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def js(value: object) -> str:
    return orjson.dumps(value).decode()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package "
                    "(apt-get install chromium)")
async def test_calls_page_shows_a_live_call_hangs_it_up_and_draws_its_timeline(
        make_relay, tmp_path: Path) -> None:
    speech_like_wav(tmp_path / "silence.wav", seconds=0.5)
    shots = artifacts(tmp_path)
    async with FakeAgent(script=talk_then_say_goodbye).running() as agent, \
            make_relay(agent, tools=[lookup_order], call_log_dir=str(tmp_path / "calls"),
                       hangup_timeout=10 * MS) as relay, \
            chromium(tmp_path, tmp_path / "silence.wav") as devtools:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            session = await agent.session()
            await call.wait_for("clear", 4, timeout=5 * MS)  # the conversation is over
            sid = call.call_sid
            row = f"document.querySelector('tr.live-call[data-sid={js(sid)}]')"
            page = await open_page(devtools, relay.base_url + "/calls")
            await devtools.wait_until(page, f"{row} && {row}.innerText", 10 * MS)
            text = await devtools.evaluate(page, f"{row}.innerText")
            assert "+1555***1111" in text and "inbound" in text
            assert "Write to [redacted]" in text or "agent: I" in text  # the last line said
            assert "+15550001111" not in await devtools.evaluate(page, "document.body.innerHTML")
            await screenshot(devtools, page, shots, "calls-live.png")
            # The live call's own view, open while the call goes on.
            view = await open_page(devtools, relay.base_url + f"/calls/{sid}")
            turns = "document.querySelectorAll('#transcript .turn').length"
            await devtools.wait_until(view, f"{turns} === 5", 10 * MS)
            assert await devtools.evaluate(view, "document.getElementById('call-title')"
                                           ".textContent") == f"{sid} (live)"

            await devtools.evaluate(page, f"{row}.querySelector('button.hangup').click()")
            (ask,) = await session.wait_for("reply.create", timeout=5 * MS)
            assert "goodbye" in ask["instructions"]
            assert await call.wait_closed(10 * MS) == 1000
        (record,) = await wait_for_records(tmp_path / "calls", 1)
        assert record["outcome"] == "operator_hung_up"
        recent = f"document.querySelector('tr.recent-call[data-sid={js(sid)}]')"
        await devtools.wait_until(page, f"!{row} && {recent} && {recent}.innerText", 10 * MS)
        assert "operator_hung_up" in await devtools.evaluate(page, f"{recent}.innerText")
        await screenshot(devtools, page, shots, "calls-recent.png")

        # The view follows the call to its end without a reload: the goodbye, the outcome.
        title = "document.getElementById('call-title').textContent"
        await devtools.wait_until(view, f"{title}.endsWith('(operator_hung_up)')", 10 * MS)
        drawn = await devtools.evaluate(view, """JSON.stringify({
            caller: document.querySelectorAll('svg#timeline rect.caller').length,
            agent: document.querySelectorAll('svg#timeline rect.agent').length,
            tools: [...document.querySelectorAll('svg#timeline rect.tool title')]
                .map(t => t.textContent),
            bargeIns: document.querySelectorAll('svg#timeline line.barge-in').length,
            heard: document.querySelectorAll('svg#timeline circle.heard').length,
            turns: [...document.querySelectorAll('#transcript .turn')].map(t => t.innerText),
            title: document.getElementById('call-title').textContent})""")
        await screenshot(devtools, view, shots, "call-view.png")
    drawn = orjson.loads(drawn)
    assert drawn["caller"] == 3  # the caller spoke three times
    assert drawn["agent"] >= 4  # greeting, answer, the interrupted reply, the goodbye
    assert drawn["bargeIns"] == 1
    assert drawn["heard"] >= 3  # greeting, answer, goodbye
    (tool_title,) = drawn["tools"]
    assert tool_title.startswith("lookup_order: ") and tool_title.endswith("(error)")
    assert drawn["title"] == f"{sid} (operator_hung_up)"
    assert len(drawn["turns"]) == 6 and "Goodbye, thanks for calling." in drawn["turns"][-1]
    assert "(interrupted)" in drawn["turns"][4]
    assert all((shots / name).stat().st_size > 1000
               for name in ("calls-live.png", "calls-recent.png", "call-view.png"))
    await asyncio.sleep(0)
