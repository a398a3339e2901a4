"""SansIOWebSocket: the ``websockets`` library's sans-I/O protocol driven by an asyncio.Protocol.

``websockets`` does the handshake, framing, masking, answers to pings and the closing
handshake. This class feeds it the socket, writes what it answers (half-closing TCP when it
says so), reassembles fragmented text messages and hands each complete one to ``on_message``
from ``data_received``: no queue and no task switch per message. The agent link is built on
it, and so is the benchmark's load side, which must keep pace with the relay it measures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Protocol

_TEXT, _CONT, _PONG = Opcode.TEXT, Opcode.CONT, Opcode.PONG


class SansIOWebSocket(asyncio.Protocol):
    """One WebSocket connection; subclasses set ``on_message`` and handle the handshake."""

    on_message: Callable[[bytes], None]  # one complete text message: UTF-8 JSON

    def __init__(self, ws: Protocol) -> None:
        self.ws = ws
        self.transport: asyncio.Transport | None = None
        self._fragments: list[bytes] = []

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        self.flush()  # pongs and the closing handshake
        self._dispatch()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self.flush()
        self._dispatch()  # e.g. a refused handshake's response ends at the end of the stream
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()  # idempotent; the protocol is CLOSED after it
        self._dispatch()

    # ------------------------------------------------------------------ driving the protocol

    def flush(self) -> None:
        """Write what the protocol has to send; an empty chunk means half-close."""
        transport = self.transport
        if transport is None:
            return
        for chunk in self.ws.data_to_send():
            if chunk:
                transport.write(chunk)
            elif not transport.is_closing() and transport.can_write_eof():
                transport.write_eof()

    def _dispatch(self) -> None:
        for event in self.ws.events_received():
            if isinstance(event, Frame):
                self._frame(event)
            else:
                self.on_handshake(event)

    def _frame(self, frame: Frame) -> None:
        # The parser hands out ``bytes``; ``Frame`` only types its data more loosely.
        opcode, data = frame.opcode, cast(bytes, frame.data)
        if opcode is _TEXT:
            if frame.fin:
                self.on_message(data)
            else:
                self._fragments = [data]
        elif opcode is _CONT and self._fragments:
            self._fragments.append(data)
            if frame.fin:
                message, self._fragments = b"".join(self._fragments), []
                self.on_message(message)
        elif opcode is _PONG:
            self.on_pong(data)
        # ping and close: the protocol has answered already

    # ------------------------------------------------------------------ hooks

    def on_handshake(self, event: Request | Response) -> None:
        """The upgrade request (server side) or its response (client side) arrived."""

    def on_pong(self, data: bytes) -> None:
        """A pong arrived."""
