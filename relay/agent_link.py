"""AgentLink: the agent WebSocket of one call, driven by callbacks rather than a read loop.

The framing, masking, handshake and close handshake are the ``websockets`` library's sans-I/O
``ClientProtocol``, driven by ``SansIOWebSocket``. Each complete text message is handed to
``on_message`` from ``data_received`` and ``send`` writes at once, so a frame crosses the
relay without a task switch or a queue. Writes are bounded: an agent that stops reading past
``MAX_UNSENT`` bytes is treated as gone rather than buffered without end.

A call holds at most one link, in one attribute of its bridge. A link that drops is replaced,
not repaired: the protocol decides what the next one is for (``session.resume`` of the same
session, or a fresh one), and ``relay.agent_links`` opens it in the old one's place.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
from collections.abc import Callable

from websockets.asyncio.client import connect_http_proxy
from websockets.client import ClientProtocol
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidProxy,
    InvalidURI,
)
from websockets.http11 import Request, Response
from websockets.protocol import OPEN, State
from websockets.proxy import Proxy, get_proxy, parse_proxy
from websockets.uri import WebSocketURI, parse_uri

from relay.sansio_ws import SansIOWebSocket

# Unsent bytes to the agent before it counts as stalled: about 20 s of caller audio.
MAX_UNSENT = 256 * 1024
USER_AGENT = "relay (websockets sans-I/O)"
Message = bytes  # one complete text message: UTF-8 JSON


class LinkClosed(Exception):
    """The link cannot carry messages any more; the message says why."""

    def __init__(self, reason: str, code: int = 1006, *, clean: bool = False) -> None:
        super().__init__(reason)
        self.code = code
        self.clean = clean  # a closing handshake with 1000 or 1001 on both sides


class AgentLink(SansIOWebSocket):
    """One agent WebSocket. Open it with ``AgentLink.open``."""

    def __init__(self, protocol: ClientProtocol, headers: dict[str, str],
                 on_message: Callable[[Message], None], ping_interval: float) -> None:
        super().__init__(protocol)
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._client = protocol
        self._headers = headers
        self.on_message = on_message
        self._opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[LinkClosed] = loop.create_future()
        self._ping_interval = ping_interval
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None

    @classmethod
    async def open(cls, url: str, *, headers: dict[str, str],
                   on_message: Callable[[Message], None], open_timeout: float,
                   max_size: int = 1 << 20, ping_interval: float = 20.0) -> AgentLink:
        """Connect and complete the handshake within ``open_timeout`` seconds.

        Like the ``websockets`` client, it goes through the proxy the environment names for the
        URL, chosen as that client chooses (``websockets.proxy.get_proxy``: ``no_proxy``, then
        ``wss_proxy``/``ws_proxy``, ``socks_proxy``, ``https_proxy``, ``http_proxy``); only HTTP(S)
        proxies are supported.

        Raises:
            OSError: the connection failed or was lost during the handshake, or the proxy
                setting is invalid or unsupported.
            InvalidHandshake: the server refused the WebSocket (e.g. HTTP 401).
            TimeoutError: no handshake within ``open_timeout``.
        """
        try:
            uri = parse_uri(url)
        except InvalidURI as exc:
            raise OSError(f"invalid agent URL: {exc}") from None
        protocol = ClientProtocol(uri, max_size=max_size)
        loop = asyncio.get_running_loop()
        link = cls(protocol, headers, on_message, ping_interval)
        context = _tls_context() if uri.secure else None
        proxy: str | None = None
        try:
            proxy = get_proxy(uri)
            parsed_proxy = parse_proxy(proxy) if proxy is not None else None
        except (InvalidProxy, ValueError) as exc:  # ValueError: a port out of range
            # Never the URL itself: its user:password@ would reach the call's fault line.
            why = exc.msg if isinstance(exc, InvalidProxy) else str(exc)
            raise OSError(f"invalid proxy setting {_without_userinfo(proxy)}: {why}") from None
        tunnel: asyncio.Transport | None = None
        try:
            async with asyncio.timeout(open_timeout):
                if parsed_proxy is None:
                    await loop.create_connection(lambda: link, uri.host, uri.port, ssl=context,
                                                 server_hostname=uri.host if context else None)
                else:
                    tunnel = await _through_proxy(parsed_proxy, uri)
                    tunnel.set_protocol(link)
                    if context is not None:
                        tunnel = await loop.start_tls(tunnel, link, context,
                                                      server_hostname=uri.host)
                    assert tunnel is not None
                    link.connection_made(tunnel)
                await link._opened
        except BaseException:
            link._opened.cancel()  # nobody waits for it any more
            link.abort()
            if tunnel is not None:
                tunnel.abort()
            raise
        return link

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        request = self._client.connect()
        request.headers["User-Agent"] = USER_AGENT
        for name, value in self._headers.items():
            request.headers[name] = value
        self._client.send_request(request)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_ping()
        super().connection_lost(exc)
        if not self._opened.done():
            self._opened.set_exception(ConnectionResetError(
                "connection closed during the WebSocket handshake"))
        if not self.closed.done():
            ws = self.ws
            closed = ws.close_exc if ws.state is State.CLOSED else None
            if closed is None:
                error = LinkClosed("connection lost", 1006)
            else:
                error = _link_closed(closed)
            self.closed.set_result(error)

    def on_handshake(self, event: Request | Response) -> None:
        if self._opened.done():
            return
        error = self._client.handshake_exc
        if error is not None:
            self._opened.set_exception(error)
            return
        self._opened.set_result(None)
        self._schedule_ping()

    def on_pong(self, data: bytes) -> None:
        if data == self._ping_payload:
            self._ping_payload = None

    # ------------------------------------------------------------------ sending

    def send(self, data: bytes) -> None:
        """Send one text message (UTF-8 JSON) now.

        Raises:
            LinkClosed: the link is closing or closed, or the agent stopped reading.
        """
        ws, transport = self.ws, self.transport
        if ws.state is not OPEN or transport is None or transport.is_closing():
            raise self._gone()
        if transport.get_write_buffer_size() > MAX_UNSENT:
            self.abort()
            raise LinkClosed("the agent stopped reading", 1011)
        ws.send_text(data)
        transport.write(b"".join(ws.data_to_send()))

    def _gone(self) -> LinkClosed:
        if self.closed.done():
            return self.closed.result()
        received = self.ws.close_rcvd  # the agent's close frame came before the TCP close
        if received is not None:
            if received.code in (1000, 1001):
                return LinkClosed("the agent closed the connection", received.code, clean=True)
            return LinkClosed(f"agent connection lost (close code {received.code})",
                              received.code)
        return LinkClosed("connection closing", 1006)

    # ------------------------------------------------------------------ keepalive and closing

    def _schedule_ping(self) -> None:
        if self._ping_interval > 0:
            self._ping_timer = self._loop.call_later(self._ping_interval, self._keepalive)

    def _keepalive(self) -> None:
        """Ping; when the previous ping is still unanswered, the connection is dead."""
        if self.ws.state is not OPEN:
            return
        if self._ping_payload is not None:
            self.abort()
            return
        self._ping_payload = os.urandom(4)
        self.ws.send_ping(self._ping_payload)
        self.flush()
        self._schedule_ping()

    def _cancel_ping(self) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None

    async def close(self, *, close_timeout: float) -> LinkClosed:
        """Close handshake with code 1000, waiting at most ``close_timeout`` before aborting."""
        if self.transport is None:
            return LinkClosed("never connected")
        if self.ws.state is OPEN:
            self.ws.send_close(1000)
            self.flush()
        try:
            async with asyncio.timeout(close_timeout):
                return await asyncio.shield(self.closed)
        except TimeoutError:
            self.abort()
            return await asyncio.shield(self.closed)

    def abort(self) -> None:
        self._cancel_ping()
        if self.transport is not None:
            self.transport.abort()


def _without_userinfo(proxy: str | None) -> str:
    """A proxy URL fit for a log line: its scheme and host, never a ``user:password@``."""
    if proxy is None:
        return ""
    scheme, sep, rest = proxy.partition("://")
    if not sep:
        scheme, rest = "", proxy
    # Everything up to the last "@" may be userinfo (a password can hold "/", "@", "://").
    host = rest.rpartition("@")[2].split("/", 1)[0]
    return f"{scheme}{sep}{host}"


async def _through_proxy(proxy: Proxy, uri: WebSocketURI) -> asyncio.Transport:
    """A tunnel to the agent through an HTTP(S) proxy (``CONNECT``), by ``websockets``."""
    if not proxy.scheme.startswith("http"):
        raise OSError(f"{proxy.scheme} proxies are not supported for the agent connection; "
                      "set no_proxy for its host")
    secure = {"ssl": _tls_context()} if proxy.scheme == "https" else {}
    return await connect_http_proxy(proxy, uri, user_agent_header=USER_AGENT, **secure)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One context for every call: loading the CA store per call would cost CPU."""
    return ssl.create_default_context()


def _link_closed(exc: ConnectionClosed) -> LinkClosed:
    code = exc.rcvd.code if exc.rcvd else 1006
    if isinstance(exc, ConnectionClosedOK):
        return LinkClosed("the agent closed the connection", code, clean=True)
    return LinkClosed(f"agent connection lost (close code {code})", code)


__all__ = ["AgentLink", "InvalidHandshake", "LinkClosed", "MAX_UNSENT", "Message"]
