"""Who may read /metrics, /calls and /api/*, and who may hang up a call.

The app is driven in-process through ``httpx.ASGITransport``, which lets each request come
from the client address a test names (loopback, or a remote one) without leaving this machine.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest

from relay.routes import create_app
from relay.tools import Registry
from tests import conftest

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-admin-token"
REMOTE = ("203.0.113.5", 40000)
LOCAL = ("127.0.0.1", 40000)
READS = ["/metrics", "/calls", "/calls/CA123", "/api/calls", "/api/calls/CA123"]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def client(client_addr: tuple[str, int], *, admin_token: str | None = TOKEN,
           host: str = "127.0.0.1:8080") -> httpx.AsyncClient:
    app = create_app(conftest.test_settings(8080, "ws://127.0.0.1:9/v1/ws", admin_token=admin_token),
                     Registry([]))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=client_addr),
                             base_url=f"http://{host}")


@pytest.fixture
def paths() -> Iterator[list[str]]:
    yield READS


async def status(http: httpx.AsyncClient, path: str, **headers: str) -> int:
    response = await http.get(path, headers=headers)
    return response.status_code


async def test_this_machine_reads_without_a_token(paths: list[str]) -> None:
    async with client(LOCAL, admin_token=None) as http:
        assert [await status(http, p) for p in paths] == [200, 200, 200, 200, 404]


async def test_elsewhere_reads_with_the_token_as_bearer_or_basic_password(paths: list[str]) -> None:
    async with client(REMOTE, host="relay.example.com") as http:
        for path in paths:
            expected = 404 if path == "/api/calls/CA123" else 200
            assert await status(http, path, Authorization=f"Bearer {TOKEN}") == expected
            assert await status(http, path, **basic("anyone", TOKEN)) == expected


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Bearer {TOKEN}x"},
    basic("admin", "wrong"),
    basic(TOKEN, ""),  # the token as the user name is not the password
    {"Authorization": f"Token {TOKEN}"},
    {"Authorization": "Basic !!!"},
])
async def test_elsewhere_without_the_right_token_gets_401_with_a_challenge(
        paths: list[str], headers: dict[str, str]) -> None:
    async with client(REMOTE, host="relay.example.com") as http:
        for path in paths:
            response = await http.get(path, headers=headers)
            assert response.status_code == 401, path
            assert "Basic" in response.headers["www-authenticate"]
            assert "relay_calls" not in response.text


async def test_without_an_admin_token_only_this_machine_reads() -> None:
    async with client(REMOTE, admin_token=None, host="relay.example.com") as http:
        assert await status(http, "/metrics") == 401
        assert await status(http, "/metrics", Authorization="Bearer ") == 401


@pytest.mark.parametrize("headers", [
    {"X-Forwarded-For": "203.0.113.5"},  # a local proxy or tunnel forwarded it
    {"Forwarded": "for=203.0.113.5"},
    {"X-Real-IP": "203.0.113.5"},
    {"Host": "evil.example.com"},  # DNS rebinding: another site's name resolving to us
])
async def test_a_loopback_peer_is_not_local_through_a_proxy_or_another_name(
        headers: dict[str, str]) -> None:
    async with client(LOCAL, admin_token=None) as http:
        assert await status(http, "/api/calls", **headers) == 401


@pytest.mark.parametrize(("headers", "body", "expected"), [
    ({}, None, 403),  # a plain form post, as any page can send
    ({"Content-Type": "text/plain"}, b"{}", 403),
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"a=1", 403),
    ({"Content-Type": "application/json", "Origin": "https://evil.example.com"}, b"{}", 403),
    ({"X-Relay-Request": "1", "Origin": "http://evil.example.com"}, None, 403),
    ({"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, b"{}", 403),
    ({"Content-Type": "application/json"}, b"{}", 404),  # allowed: the call is unknown
    ({"X-Relay-Request": "1"}, None, 404),
    ({"Content-Type": "application/json", "Origin": "http://127.0.0.1:8080"}, b"{}", 404),
])
async def test_hang_up_refuses_what_a_cross_site_page_could_send(
        headers: dict[str, str], body: bytes | None, expected: int) -> None:
    async with client(LOCAL, admin_token=None) as http:
        response = await http.post("/api/calls/CA123/hangup", headers=headers, content=body)
    assert response.status_code == expected, response.text


async def test_hang_up_from_elsewhere_needs_the_token_too() -> None:
    async with client(REMOTE, host="relay.example.com") as http:
        refused = await http.post("/api/calls/CA1/hangup", json={})
        allowed = await http.post("/api/calls/CA1/hangup", json={},
                                  headers={"Authorization": f"Bearer {TOKEN}"})
    assert refused.status_code == 401 and allowed.status_code == 404


async def test_the_calls_page_loads_nothing_from_elsewhere() -> None:
    async with client(LOCAL) as http:
        page = await http.get("/calls")
        script = await http.get("/calls/calls.js")
    assert page.status_code == 200 and "default-src 'none'" in page.headers[
        "content-security-policy"]
    assert "http" not in page.text.replace("http://www.w3.org", "")
    assert script.status_code == 200 and "EventSource" in script.text
