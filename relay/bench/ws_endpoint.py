"""WebSocket endpoints for the load side, on the relay's ``SansIOWebSocket``.

The load generator and the fake agent handle as many messages per second as the relay they
measure, so instead of the ``websockets`` asyncio API (an awaited ``recv()`` per message) they
drive its sans-I/O protocol as the relay's agent link does: each message received is handed to
``on_message`` within ``data_received``, each message sent is written at once. This module adds
what the load side needs on top: the server side of the handshake, and a bounded close (TCP is
aborted when the peer does not finish the closing handshake in time). No extension is offered,
so there is no compression.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from http import HTTPStatus

from websockets.client import ClientProtocol
from websockets.http11 import Request, Response
from websockets.protocol import OPEN, Protocol
from websockets.server import ServerProtocol
from websockets.uri import WebSocketURI

from relay.sansio_ws import SansIOWebSocket

CLOSE_TIMEOUT = 5.0
"""Seconds to wait for the peer to finish the closing handshake before aborting TCP."""


class Endpoint(SansIOWebSocket):
    """A load-side connection. Subclasses handle messages and the handshake."""

    def __init__(self, ws: Protocol) -> None:
        super().__init__(ws)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._close_timer: asyncio.TimerHandle | None = None

    @property
    def open(self) -> bool:
        """Handshake done and no close frame sent or received."""
        return self.ws.state is OPEN

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.ws.close_expected():
            self._expect_close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._close_timer is not None:
            self._close_timer.cancel()
        if not self.closed.done():
            self.closed.set_result(None)
        self.on_closed()

    def _expect_close(self) -> None:
        if self._close_timer is None:
            self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.abort)

    # -- API --------------------------------------------------------------------------
    def send(self, message: bytes) -> None:
        """Send one text frame (``message`` is UTF-8 JSON). Dropped unless open."""
        ws = self.ws
        if ws.state is OPEN:
            ws.send_text(message)
            self.flush()

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake; TCP closes when it completes or CLOSE_TIMEOUT passes."""
        if self.ws.state is OPEN:
            self.ws.send_close(code)
            self.flush()
            self._expect_close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self, within: float) -> None:
        """Wait up to ``within`` seconds for TCP to close, then force it."""
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), within)
        except TimeoutError:
            self.abort()

    # -- hooks ------------------------------------------------------------------------
    def on_message(self, message: bytes) -> None:
        raise NotImplementedError

    def on_closed(self) -> None:
        """Called once TCP is gone."""


class ClientEndpoint(Endpoint):
    """Client side: sends the upgrade request on connect; ``opened`` resolves on the 101."""

    def __init__(self, uri: WebSocketURI, headers: Mapping[str, str]) -> None:
        self.client = ClientProtocol(uri)
        super().__init__(self.client)
        self._headers = headers
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        request = self.client.connect()
        for name, value in self._headers.items():
            request.headers[name] = value
        self.client.send_request(request)
        self.flush()

    def on_handshake(self, event: Request | Response) -> None:
        if self.opened.done():
            return
        exc = self.client.handshake_exc
        if exc is None:
            self.opened.set_result(None)
        else:
            self.opened.set_exception(ConnectionError(f"upgrade refused: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during handshake: {exc}"))
        super().connection_lost(exc)


class ServerEndpoint(Endpoint):
    """Server side: answers the upgrade unless ``refuse`` gives a status."""

    def __init__(self) -> None:
        self.server = ServerProtocol()
        super().__init__(self.server)

    def on_handshake(self, event: Request | Response) -> None:
        assert isinstance(event, Request)
        response = self.server.accept(event)
        if response.status_code == 101 and (status := self.refuse(event)) is not None:
            response = self.server.reject(status, f"{status.phrase}\n")
        self.server.send_response(response)
        self.flush()
        if response.status_code != 101:
            self._expect_close()

    def refuse(self, request: Request) -> HTTPStatus | None:
        """Return an HTTP status (``HTTPStatus.UNAUTHORIZED``) to refuse the upgrade, or None."""
        return None
