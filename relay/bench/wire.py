"""A minimal RFC 6455 WebSocket endpoint on ``asyncio.Protocol``, for the load side only.

The load generator and the fake agent handle as many messages per second as the relay they
measure, so they use this lean framing instead of a full WebSocket library: text frames, no
extensions (so no compression), ping answered with pong, the closing handshake, fragmented
messages reassembled. Client frames are masked as the RFC requires. It is not a general
purpose WebSocket implementation: it trusts its loopback peer and checks little.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import struct
from collections.abc import Mapping
from typing import cast

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets ships the C extension on CPython

    def apply_mask(data: bytes, mask: bytes) -> bytes:
        n = len(data)
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_HEADER = 16384
_getrandbits = random.getrandbits


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def encode_frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        header = bytes((0x80 | opcode, bit | n))
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, bit | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, bit | 127, n)
    if not mask:
        return header + payload
    key = _getrandbits(32).to_bytes(4, "little")
    return header + key + apply_mask(payload, key)


class WebSocketProtocol(asyncio.Protocol):
    """Shared framing. Subclasses implement the handshake and ``on_message``."""

    is_client = False

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.closing = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_op = 0

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.closed.done():
            self.closed.set_result(None)
        self.on_closed()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEADER:
                    self.abort()
                return
            head = bytes(buf[: end + 4])
            del buf[: end + 4]
            if not self.handshake(head):
                return
        self._parse()

    # -- framing ----------------------------------------------------------------------
    def _parse(self) -> None:
        buf = self._buf
        size = len(buf)
        pos = 0
        while size - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if size - start < 2:
                    break
                length = (buf[start] << 8) | buf[start + 1]
                start += 2
            elif length == 127:
                if size - start < 8:
                    break
                length = int.from_bytes(buf[start : start + 8], "big")
                start += 8
            if b1 & 0x80:
                if size - start < 4:
                    break
                key = bytes(buf[start : start + 4])
                start += 4
                end = start + length
                if end > size:
                    break
                payload = apply_mask(bytes(buf[start:end]), key)
            else:
                end = start + length
                if end > size:
                    break
                payload = bytes(buf[start:end])
            pos = end
            self._frame(b0, payload)
            if self.transport is None or self.transport.is_closing():
                break
        if pos:
            del buf[:pos]

    def _frame(self, b0: int, payload: bytes) -> None:
        opcode = b0 & 0x0F
        if opcode in (OP_TEXT, OP_BINARY):
            if b0 & 0x80:
                self.on_message(payload)
            else:
                self._fragment_op = opcode
                self._fragments = [payload]
        elif opcode == OP_CONT:
            self._fragments.append(payload)
            if b0 & 0x80:
                message = b"".join(self._fragments)
                self._fragments = []
                self.on_message(message)
        elif opcode == OP_PING:
            self._write(OP_PONG, payload)
        elif opcode == OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not self.closing:
                self.closing = True
                self._write(OP_CLOSE, payload[:2])
            self.open = False
            if not self.is_client and self.transport is not None:
                self.transport.close()

    def _write(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(opcode, payload, mask=self.is_client))

    # -- API --------------------------------------------------------------------------
    def send(self, message: bytes) -> None:
        """Send one text frame (``message`` is UTF-8 JSON). Dropped once closing."""
        if self.open and not self.closing:
            self.transport.write(encode_frame(OP_TEXT, message, mask=self.is_client))  # type: ignore[union-attr]

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake; the server closes TCP when it answers."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        self._write(OP_CLOSE, code.to_bytes(2, "big"))
        if not self.is_client:
            self.transport.close()

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
    def handshake(self, head: bytes) -> bool:
        raise NotImplementedError

    def on_message(self, message: bytes) -> None:
        raise NotImplementedError

    def on_closed(self) -> None:
        """Called once TCP is gone."""


class ClientProtocol(WebSocketProtocol):
    """Client side: sends the upgrade request on connect, then frames masked messages."""

    is_client = True

    def __init__(self, host: str, path: str, headers: Mapping[str, str]) -> None:
        super().__init__()
        self._key = base64.b64encode(os.urandom(16))
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self._key.decode()}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        self._request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport.write(self._request)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during handshake: {exc}"))
        super().connection_lost(exc)

    def handshake(self, head: bytes) -> bool:
        status, _, rest = head.partition(b"\r\n")
        headers = _parse_headers(rest)
        if b" 101 " not in status + b" " or headers.get(b"sec-websocket-accept") != accept_key(
            self._key
        ):
            if not self.opened.done():
                self.opened.set_exception(ConnectionError(status.decode(errors="replace")))
            self.abort()
            return False
        self.open = True
        self.opened.set_result(None)
        return True


class ServerProtocol(WebSocketProtocol):
    """Server side: answers the upgrade when ``accept_request`` approves the request."""

    def handshake(self, head: bytes) -> bool:
        request, _, rest = head.partition(b"\r\n")
        headers = _parse_headers(rest)
        key = headers.get(b"sec-websocket-key")
        if not request.startswith(b"GET ") or key is None:
            self._refuse(b"400 Bad Request")
            return False
        refusal = self.accept_request(request.split(b" ")[1].decode(), headers)
        if refusal:
            self._refuse(refusal.encode())
            return False
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
        )
        self.open = True
        self.on_open()
        return True

    def _refuse(self, status: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
        self.transport.close()

    def accept_request(self, path: str, headers: Mapping[bytes, bytes]) -> str | None:
        """Return an HTTP status line (``"401 Unauthorized"``) to refuse, or None."""
        return None

    def on_open(self) -> None:
        """Called after the 101 response was written."""


def _parse_headers(block: bytes) -> dict[bytes, bytes]:
    headers: dict[bytes, bytes] = {}
    for line in block.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers
