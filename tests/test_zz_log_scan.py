"""The log of the whole test run holds no full phone number and no configured secret.

Named to run last: by then the run's log (``conftest.RunLog``) has every line the server wrote
during the suite. The test first places calls of its own that log numbers every way the server
does (a call's start, a refusal, a status callback, a tool's own ``ctx.log`` line, a transfer
announced by the protocol), so it scans something even when run alone.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from relay.local.caller import SimulatedCall
from relay.security import twilio_signature
from relay.tools import ToolContext
from tests.conftest import AUTH_TOKEN, MS, RunLog
from tests.fakes import KEY, AgentSession, FakeAgent
from tests.helpers import post_twiml, refused

pytestmark = pytest.mark.anyio
FULL_NUMBER = re.compile(r"\+[1-9]\d{6,14}")
CALLER, CALLED, OTHER = "+15551230001", "+15551230002", "+15551230003"


async def lookup_customer(ctx: ToolContext, phone: str) -> str:
    """Look a customer up by phone number."""
    ctx.log.info("looking up the customer at %s", phone)
    return f"found the customer at {phone}"


async def test_the_whole_runs_log_has_no_full_number_and_no_secret(make_relay, run_log: RunLog
                                                                   ) -> None:
    async def script(session: AgentSession) -> None:
        await session.tool_call("c1", "lookup_customer", arguments=f'{{"phone": "{OTHER}"}}')

    async with FakeAgent(script=script).running() as agent, \
            make_relay(agent, tools=[lookup_customer], caller_rate_limit="1/minute",
                       tool_result_timing="immediate") as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN, caller=CALLER,
                                      called=CALLED) as call:
            session = await agent.session()
            await session.wait_for("tool.result", timeout=3 * MS)
            await call.hang_up()
        _, doc = await post_twiml(relay.base_url, caller=CALLER)
        assert refused(doc) == "busy"
        form = {"CallSid": call.call_sid, "CallStatus": "completed", "From": CALLER,
                "To": CALLED}
        url = relay.base_url + "/call-status"
        async with httpx.AsyncClient() as http:
            status = await http.post(url, data=form, headers={
                "X-Twilio-Signature": twilio_signature(AUTH_TOKEN, url, form)})
        assert status.status_code == 204
        await asyncio.sleep(0.05)
    run_log.handler.flush()
    text = run_log.path.read_text(encoding="utf-8")
    assert "looking up the customer at +1555***0003" in text, "the scan sees this test's lines"
    assert "+1555***0001" in text
    assert FULL_NUMBER.findall(text) == []
    for secret in (AUTH_TOKEN, KEY):
        assert secret not in text
