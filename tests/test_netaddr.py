"""One answer to "is this address on this machine?"."""

from __future__ import annotations

import httpx
import pytest
from starlette.requests import Request

from relay.config import Settings
from relay.netaddr import is_local_client, is_local_url, is_loopback_host
from tests.fakes import FakeAgent


@pytest.mark.parametrize("host", [
    "localhost", "LOCALHOST", "localhost.", "127.0.0.1", "127.8.9.10", "::1", "[::1]",
    "::ffff:127.0.0.1",
])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", [
    "", "relay.example.com", "localhost.example.com", "mylocalhost", "10.0.0.1", "0.0.0.0",
    "::", "::ffff:10.0.0.1", "192.168.1.2", "testclient",
])
def test_other_hosts(host: str) -> None:
    assert not is_loopback_host(host)


def test_urls() -> None:
    assert is_local_url("http://localhost:8080")
    assert is_local_url("http://127.0.0.2/")
    assert is_local_url("https://[::1]:8443/x")
    assert not is_local_url("https://relay.example.com")
    assert not is_local_url("https://abc.ngrok-free.app")
    assert not is_local_url("not a url")


def request(peer: str, headers: dict[str, str]) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "client": (peer, 50000),
                    "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})


@pytest.mark.parametrize(("peer", "headers"), [
    ("127.0.0.1", {"Host": "localhost:8080"}),
    ("127.0.0.1", {"Host": "127.0.0.1:8080"}),
    ("::1", {"Host": "[::1]:8080"}),
    ("::ffff:127.0.0.1", {"Host": "localhost"}),
])
def test_local_clients(peer: str, headers: dict[str, str]) -> None:
    assert is_local_client(request(peer, headers))


@pytest.mark.parametrize(("peer", "headers"), [
    ("203.0.113.7", {"Host": "localhost:8080"}),  # from elsewhere
    ("127.0.0.1", {"Host": "rebound.example:8080"}),  # DNS rebinding
    ("127.0.0.1", {}),  # no Host at all
    ("127.0.0.1", {"Host": "localhost", "X-Forwarded-For": "203.0.113.7"}),  # a local tunnel
    ("127.0.0.1", {"Host": "localhost", "Forwarded": "for=203.0.113.7"}),
    ("127.0.0.1", {"Host": "localhost", "X-Real-IP": "203.0.113.7"}),
    ("127.0.0.1", {"Host": "localhost", "X-Forwarded-Host": "relay.example.com"}),
])
def test_clients_that_are_not_local(peer: str, headers: dict[str, str]) -> None:
    assert not is_local_client(request(peer, headers))


@pytest.mark.parametrize("url", ["http://127.0.0.2:8080", "http://[::1]:8080", "http://localhost."])
def test_a_local_public_url_needs_no_auth_token(url: str) -> None:
    assert Settings.from_env({"PUBLIC_URL": url}).public_url == url


@pytest.mark.anyio
async def test_without_an_auth_token_a_forwarded_webhook_is_refused(make_relay) -> None:
    async with FakeAgent().running() as agent, \
            make_relay(agent, twilio_auth_token=None, twilio_account_sid=None) as relay:
        form = {"CallSid": "CA" + "1" * 32, "From": "+15550001111", "To": "+15550002222"}
        async with httpx.AsyncClient(base_url=relay.base_url, timeout=5) as http:
            assert (await http.post("/twiml", data=form)).status_code == 200
            tunneled = await http.post("/twiml", data=form,
                                       headers={"X-Forwarded-For": "203.0.113.7"})
            assert tunneled.status_code == 403  # a local tunnel forwarded it: not this machine
