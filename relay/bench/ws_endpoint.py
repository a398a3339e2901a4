"""WebSocket endpoints for the load side: the ``websockets`` sans-I/O protocol on asyncio.

The load generator and the fake agent handle as many messages per second as the relay they
measure, so instead of the ``websockets`` asyncio API (an awaited ``recv()`` per message) they
drive its sans-I/O protocol from a plain ``asyncio.Protocol``: each message received is handed
to ``on_message`` within ``data_received``, each message sent is written at once. ``websockets``
does the handshake, framing, masking, pings and the closing handshake; this module reassembles
fragmented messages and closes TCP when the protocol says so. No extension is offered, so there
is no compression.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from http import HTTPStatus
from typing import cast

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN, Protocol
from websockets.server import ServerProtocol
from websockets.uri import WebSocketURI

CLOSE_TIMEOUT = 5.0
"""Seconds to wait for the peer to finish the closing handshake before aborting TCP."""

_TEXT, _BINARY, _CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT


class Endpoint(asyncio.Protocol):
    """Feeds the socket to ``ws`` and writes what it answers. Subclasses handle messages."""

    transport: asyncio.Transport

    def __init__(self, ws: Protocol) -> None:
        self.ws = ws
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fragments: list[bytes] = []
        self._close_timer: asyncio.TimerHandle | None = None

    @property
    def open(self) -> bool:
        """Handshake done and no close frame sent or received."""
        return self.ws.state is OPEN

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        events = ws.events_received()
        self._flush()  # pongs, the echo of a close frame
        if ws.close_expected():
            self._expect_close()
        on_message = self.on_message
        for event in events:
            if not isinstance(event, Frame):
                self.on_handshake(event)
                continue
            opcode = event.opcode
            if opcode is _TEXT or opcode is _BINARY:
                if event.fin:
                    on_message(bytes(event.data))
                else:
                    self._fragments = [bytes(event.data)]
            elif opcode is _CONT:
                self._fragments.append(bytes(event.data))
                if event.fin:
                    message = b"".join(self._fragments)
                    self._fragments = []
                    on_message(message)
            # ping, pong, close: ``ws`` has answered already

    def eof_received(self) -> None:
        self.ws.receive_eof()
        self._flush()
        # Returning None lets asyncio close the transport.

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()  # idempotent; the protocol is CLOSED after it
        if self._close_timer is not None:
            self._close_timer.cancel()
        if not self.closed.done():
            self.closed.set_result(None)
        self.on_closed()

    # -- driving the protocol ---------------------------------------------------------
    def _flush(self) -> None:
        transport = self.transport
        for data in self.ws.data_to_send():
            if data:
                transport.write(data)
            elif not transport.is_closing():  # SEND_EOF: half-close; the peer closes in turn
                if transport.can_write_eof():
                    transport.write_eof()
                else:
                    transport.close()

    def _expect_close(self) -> None:
        if self._close_timer is None:
            self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.abort)

    # -- API --------------------------------------------------------------------------
    def send(self, message: bytes) -> None:
        """Send one text frame (``message`` is UTF-8 JSON). Dropped unless open."""
        ws = self.ws
        if ws.state is OPEN:
            ws.send_text(message)
            self._flush()

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake; TCP closes when it completes or CLOSE_TIMEOUT passes."""
        if self.ws.state is OPEN:
            self.ws.send_close(code)
            self._flush()
            self._expect_close()

    def abort(self) -> None:
        self.transport.abort()

    async def wait_closed(self, within: float) -> None:
        """Wait up to ``within`` seconds for TCP to close, then force it."""
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), within)
        except TimeoutError:
            self.abort()

    # -- hooks ------------------------------------------------------------------------
    def on_handshake(self, event: Request | Response) -> None:
        """The upgrade request (server) or response (client) arrived."""
        raise NotImplementedError

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
        self._flush()

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
        self._flush()
        if response.status_code != 101:
            self._expect_close()

    def refuse(self, request: Request) -> HTTPStatus | None:
        """Return an HTTP status (``HTTPStatus.UNAUTHORIZED``) to refuse the upgrade, or None."""
        return None
