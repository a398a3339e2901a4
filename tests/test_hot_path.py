"""The audio path's edges: whole messages from fragments, peers that stop reading, keepalive.

The relay writes each frame at once instead of queueing it (``relay.agent_link``,
``relay.serving``); these tests check that the writes stay bounded: a peer that stops reading
ends its own call, and only its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from relay.agent_link import AgentLink, LinkClosed
from relay.local.caller import SimulatedCall
from relay.tools import Registry
from tests.conftest import AUTH_TOKEN, MS, run_relay
from tests.conftest import test_settings as relay_settings
from tests.fakes import AgentSession, FakeAgent

pytestmark = pytest.mark.anyio

# A large but legal media payload (Twilio's stream accepts messages up to 64 KiB): fills
# socket buffers in a few hundred messages.
BIG = base64.b64encode(bytes(range(256)) * 140).decode()


async def test_fragmented_agent_messages_reach_the_caller_whole(make_relay) -> None:
    payload = base64.b64encode(bytes(range(160))).decode()
    text = orjson.dumps({"type": "reply.audio", "reply_id": "r1", "data": payload}).decode()

    async def script(session: AgentSession) -> None:
        await session.ws.send([text[:10], text[10:50], text[50:]])  # one message, three frames

    async with FakeAgent(script=script).running() as agent, make_relay(agent) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            (media,) = await call.wait_for("media", 1, 3 * MS)
            assert media["media"]["payload"] == payload


async def test_an_agent_that_stops_reading_loses_only_its_own_link(make_relay) -> None:
    async def script(session: AgentSession) -> None:
        if session is agent.sessions[0]:
            session.ws.transport.pause_reading()  # a stalled agent: its buffers fill up

    async with (FakeAgent(script=script, echo=True).running() as agent,
                make_relay(agent) as relay):
        async with (SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as stalled,
                    SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as healthy):
            await (await agent.session(0)).ready.wait()
            await (await agent.session(1)).ready.wait()
            async with asyncio.timeout(10 * MS):
                while len(agent.sessions) < 3:  # the stalled link is let go, then resumed
                    await stalled.send_media(BIG)
            agent.sessions[0].ws.transport.resume_reading()  # let it see the close
            resumed = await agent.session(2)
            await asyncio.wait_for(resumed.ready.wait(), 3 * MS)
            assert resumed.resumed and resumed.session_id == agent.sessions[0].session_id
            assert not stalled.closed.is_set()  # the caller stayed on the line
            payload = base64.b64encode(b"\x01" * 160).decode()
            await healthy.send_media(payload)
            (echo,) = await healthy.wait_for("media", 1, 3 * MS)
            assert echo["media"]["payload"] == payload


async def test_a_caller_that_stops_reading_ends_the_call(make_relay) -> None:
    async def flood(session: AgentSession) -> None:
        with contextlib.suppress(ConnectionClosed):
            for i in range(5000):
                await session.send({"type": "reply.audio", "reply_id": f"r{i}", "data": BIG})

    async with FakeAgent(script=flood).running() as agent, make_relay(agent) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            call.ws.transport.pause_reading()  # the caller's side stops taking audio
            session = await agent.session()
            await asyncio.wait_for(session.closed.wait(), 10 * MS)
            call.ws.transport.resume_reading()  # let it see the close
        assert session.ended.is_set(), "the relay ends the agent session (session.end)"
        assert session.violations == []


async def test_a_caller_whose_line_went_dead_is_dropped_by_keepalive(make_relay) -> None:
    async def burst(session: AgentSession) -> None:  # audio on its way when the line dies
        for i in range(8):
            await session.send({"type": "reply.audio", "reply_id": f"r{i}", "data": BIG})

    keepalive = {"ws_ping_interval": 0.2, "ws_ping_timeout": 0.2}
    async with (FakeAgent(script=burst).running() as agent,
                make_relay(agent, server=keepalive) as relay):
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            call.ws.transport.pause_reading()  # nothing is read, no ping is answered
            session = await agent.session()
            await asyncio.wait_for(session.closed.wait(), 5 * MS)
            call.ws.transport.resume_reading()
        # A line that went silent is lost, not hung up: the relay closes the agent socket but
        # keeps the session (no session.end) for the re-stream Twilio's action request gets.
        assert not session.ended.is_set() and not session.of_type("session.end")


# ---------------------------------------------------------------------- AgentLink itself


@contextlib.asynccontextmanager
async def ws_server(handler):  # type: ignore[no-untyped-def]
    async with serve(handler, "127.0.0.1", 0, compression=None, close_timeout=0.5) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/"


async def test_link_closes_when_keepalive_pings_go_unanswered() -> None:
    done = asyncio.Event()

    async def deaf(ws: ServerConnection) -> None:
        ws.transport.pause_reading()  # pings are never read, so never answered
        await done.wait()
        ws.transport.resume_reading()

    async with ws_server(deaf) as url:
        link = await AgentLink.open(url, headers={}, on_message=lambda m: None,
                                    open_timeout=2 * MS, ping_interval=0.1)
        closed = await asyncio.wait_for(link.closed, 2 * MS)
        assert closed.code == 1006 and not closed.clean
        done.set()


async def test_after_the_agents_close_frame_sends_fail_with_its_code() -> None:
    async def leaving(ws: ServerConnection) -> None:
        ws.transport.pause_reading()  # so the TCP close waits for close_timeout
        await ws.close(1001, "going away")

    async with ws_server(leaving) as url:
        link = await AgentLink.open(url, headers={}, on_message=lambda m: None,
                                    open_timeout=2 * MS)
        async with asyncio.timeout(2 * MS):
            while True:  # caller audio keeps coming while the agent's close frame arrives
                try:
                    link.send(b"{}")
                except LinkClosed as exc:
                    gone = exc
                    break
                await asyncio.sleep(0.01)
        assert not link.closed.done(), "the TCP connection is still open"
        assert (gone.code, gone.clean, str(gone)) == (1001, True, "the agent closed the connection")
        await link.close(close_timeout=2 * MS)


async def test_link_stays_open_while_pings_are_answered_and_closes_cleanly() -> None:
    loop = asyncio.get_running_loop()
    echoed: asyncio.Future[bytes] = loop.create_future()
    authorization: list[str | None] = []

    async def echo(ws: ServerConnection) -> None:
        assert ws.request is not None
        authorization.append(ws.request.headers.get("Authorization"))
        async for message in ws:
            await ws.send(message)

    async with ws_server(echo) as url:
        link = await AgentLink.open(url, headers={"Authorization": "Bearer k"},
                                    on_message=lambda m: echoed.set_result(bytes(m)),
                                    open_timeout=2 * MS, ping_interval=0.05)
        await asyncio.sleep(0.3)  # several pings, all answered
        assert not link.closed.done()
        link.send(b'{"n":1}')
        assert await asyncio.wait_for(echoed, 2 * MS) == b'{"n":1}'
        assert authorization == ["Bearer k"]
        closed = await link.close(close_timeout=2 * MS)
        assert closed.clean and closed.code == 1000


async def test_link_goes_through_the_http_proxy_the_environment_names(monkeypatch) -> None:
    """Like the ``websockets`` client: ``CONNECT`` through ``ws_proxy``/``http_proxy``."""
    requests: list[bytes] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        requests.append(request.split(b"\r\n")[0])
        host, port = request.split()[1].decode().rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    loop = asyncio.get_running_loop()
    echoed: asyncio.Future[bytes] = loop.create_future()
    proxy_server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    async with proxy_server, ws_server(echo) as url:
        proxy_port = proxy_server.sockets[0].getsockname()[1]
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("ws_proxy", f"http://127.0.0.1:{proxy_port}")
        link = await AgentLink.open(url, headers={}, open_timeout=2 * MS,
                                    on_message=lambda m: echoed.set_result(bytes(m)))
        link.send(b'{"via":"proxy"}')
        assert await asyncio.wait_for(echoed, 2 * MS) == b'{"via":"proxy"}'
        assert requests == [f"CONNECT {url[5:].rstrip('/')} HTTP/1.1".encode()]
        await link.close(close_timeout=2 * MS)


@pytest.mark.parametrize("setting", ["proxy.example:3128", "socks5://127.0.0.1:1080"])
async def test_a_proxy_setting_the_link_cannot_use_is_a_clear_error(monkeypatch, setting) -> None:
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ws_proxy", setting)
    with pytest.raises(OSError, match="invalid proxy setting|proxies are not supported"):
        await AgentLink.open("ws://127.0.0.1:9/", headers={}, on_message=lambda m: None,
                             open_timeout=2 * MS)


@pytest.mark.parametrize("setting", ["ftp://relay:s3cret@proxy.example:1",
                                     "http://relay:s3cret@proxy.example:99999"])
async def test_a_proxy_password_never_reaches_the_logs(monkeypatch, caplog, setting) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # the simulated Twilio connects directly
    monkeypatch.setenv("ws_proxy", setting)  # the relay's agent link, to "localhost", may not
    async with FakeAgent().running() as agent, run_relay(
            lambda port: relay_settings(port, agent.url.replace("127.0.0.1", "localhost")),
            Registry([])) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            await call.wait_closed(5 * MS)  # no agent link: the call ends with the fallback
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "invalid proxy setting" in text and "proxy.example" in text
    assert "s3cret" not in text
