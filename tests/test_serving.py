"""relay.serving: the tuned uvicorn protocol keeps RFC 6455, and refuses a uvicorn it does not fit."""

from __future__ import annotations

import asyncio
from importlib.metadata import version

import pytest

from relay import serving
from relay.errors import ConfigError
from relay.local.caller import SimulatedCall
from tests.conftest import AUTH_TOKEN, MS
from tests.fakes import FakeAgent

pytestmark = pytest.mark.anyio


async def test_invalid_utf8_from_twilio_closes_the_stream_with_1007(make_relay) -> None:
    async with FakeAgent().running() as agent, make_relay(agent) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            session = await agent.session()
            await asyncio.wait_for(session.ready.wait(), 3 * MS)
            # A text frame whose payload is not UTF-8 (RFC 6455 §8.1: fail with 1007).
            await call.ws.send(b'{"event": "mark", "mark": {"name": "\xff\xfe"}}', text=True)
            assert await call.wait_closed(3 * MS) == 1007
            await asyncio.wait_for(session.closed.wait(), 3 * MS)
        assert session.ended.is_set() and session.violations == []


def test_the_installed_uvicorn_has_what_the_protocol_uses() -> None:
    serving.check_uvicorn()  # the default: uvicorn's own WebSocketsSansIOProtocol


class _Base:
    """A stand-in for a uvicorn release whose protocol changed."""

    frames: list[bytes] = []  # a class attribute counts

    def __init__(self) -> None:
        self.transport = self.conn = self.loop = self.scope = self.response = None
        self.handshake_complete = self.close_sent = self.disconnected = False
        self.close_timer = self.close_timeout = self.writable = self.queue = None

    def handle_connect(self) -> None:
        self.curr_msg_data_type = "text"  # assigned in any method counts

    def send(self) -> None: ...

    def keepalive_timeout(self) -> None: ...

    def send_receive_event_to_app(self) -> None: ...

    def connection_lost(self) -> None: ...


class _LacksAMethod(_Base):
    keepalive_timeout = None  # type: ignore[assignment]


class _LacksState:
    """_Base without ``writable``: never assigned, not a class attribute."""

    frames: list[bytes] = []
    handle_connect = send = keepalive_timeout = send_receive_event_to_app = _Base.send
    connection_lost = _Base.send

    def __init__(self) -> None:
        self.transport = self.conn = self.loop = self.scope = self.response = None
        self.handshake_complete = self.close_sent = self.disconnected = False
        self.close_timer = self.close_timeout = self.curr_msg_data_type = self.queue = None


def test_a_base_class_with_all_of_it_passes() -> None:
    serving.check_uvicorn(_Base)


@pytest.mark.parametrize(("base", "missing"), [
    (_LacksAMethod, "keepalive_timeout"),
    (type("_Bare", (), {}), "handle_connect, send, keepalive_timeout"),
])
def test_a_missing_method_stops_the_start_up_in_one_line(base: type, missing: str) -> None:
    with pytest.raises(ConfigError) as info:
        serving.check_uvicorn(base)
    message = str(info.value)
    assert "\n" not in message
    assert f"needs {missing}" in message
    assert "tested with uvicorn 0.54 with websockets 17" in message
    installed = f"uvicorn {version('uvicorn')} with websockets {version('websockets')}"
    assert installed in message


def test_missing_state_is_named() -> None:
    with pytest.raises(ConfigError, match=r"needs writable of uvicorn's _LacksState"):
        serving.check_uvicorn(_LacksState)
