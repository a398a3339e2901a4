"""How the relay is served: uvicorn's sans-I/O WebSocket protocol, tuned for media streams.

A media stream is fifty small JSON messages a second each way, so the per-message costs of
uvicorn's protocol matter, and the relay's streams avoid them:

* Receiving goes through a queue and a task switch per message, and uvicorn stops reading the
  socket after each one until the app has taken it (two ``epoll_ctl`` system calls per frame).
  Streams get the ASGI extension ``relay.receive_text``: a function taking a callback, which
  from then on gets each text message's UTF-8 bytes from ``data_received``, with no queue and
  no pause; ASGI ``receive`` then carries only the disconnect (and binary messages), as
  uvicorn delivers them. Register it before accepting the stream. The bytes are not checked
  for UTF-8 on the way (uvicorn decodes each message; websockets' sans-I/O layer does not
  check): the receiver's JSON decoder rejects them, and the receiver then closes the stream
  with 1007 (``relay.bridge``), as RFC 6455 §8.1 asks.
* Sending goes through ASGI's ``send`` (a coroutine, several wrappers, and a ``str`` that is
  encoded again). Streams also get the ASGI extension ``relay.send_text``: a plain function
  that frames UTF-8 JSON ``bytes`` as a text message and writes it at once. It raises
  ``ClientDisconnected`` once the stream is closing, and ``StreamStalled`` (aborting the
  stream) when the peer has stopped reading with ``MAX_UNSENT`` bytes still queued, rather
  than buffering without end.

The handshake and keepalive pings are uvicorn's own; closing is bounded: a stream whose peer
has stopped reading, or fails a keepalive ping, or does not answer a close in time, is aborted
rather than left waiting for its buffer to drain.

uvicorn's internals used
------------------------
``MediaStreamProtocol`` extends ``WebSocketsSansIOProtocol`` of
``uvicorn/protocols/websockets/websockets_sansio_impl.py``, private API that changes between
releases: it is tested with uvicorn 0.54 (line numbers below are 0.54.0's) and websockets 17,
pinned in ``pyproject.toml``, and ``check_uvicorn()`` stops the start-up with one line when the
installed base class lacks any of it (``.ci/newest-deps`` tries the newest releases).

Overridden, each calling uvicorn's own method first or for every other case:

* ``handle_connect`` (223–270): adds the two extensions to ``scope["extensions"]`` (265) once
  ``self.response`` (225) is a 101.
* ``send_receive_event_to_app`` (289–308): for text messages of a stream with a callback, it
  joins ``self.frames`` as uvicorn does (290–291) and calls the callback instead of queueing
  the decoded text and pausing the reads (296–308).
* ``send`` (432–549): before a close whose peer stopped reading (``self.writable`` clear, set
  by ``pause_writing``, 165–175) it aborts instead of waiting (433); after a close it replaces
  the ``close_timer`` uvicorn set to ``transport.close`` (520) with one that aborts.
* ``keepalive_timeout`` (362–373): after uvicorn's ``conn.fail(1011)`` and close, reports the
  stream lost (1006, on ``self.queue``, as ``connection_lost`` does for a drop) and aborts.

Mirrored: ``send_text_now`` is the text branch of ``send`` (496–506: ``conn.send_text``,
``conn.data_to_send``, ``transport.write``), with its guards: ``disconnected`` (435–436),
``close_sent`` and ``handshake_complete`` (496), and ``InvalidState`` as
``ClientDisconnected`` (525–526).

Read: ``transport``, ``conn`` (websockets' ``ServerProtocol``), ``loop``, ``scope``,
``response``, ``handshake_complete``, ``close_sent``, ``disconnected``, ``close_timer``,
``close_timeout``, ``writable``, ``frames``, ``curr_msg_data_type`` (set in ``__init__``,
67–126, ``connection_made``, 128–139, and ``handle_connect``), and ``ClientDisconnected`` from
``uvicorn/protocols/utils.py``.
"""

from __future__ import annotations

import dis
import types
from collections.abc import Callable, Iterator
from importlib.metadata import version
from typing import Any, cast

import uvicorn
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.http11 import Request

from relay.errors import ConfigError

SEND_TEXT = "relay.send_text"
RECEIVE_TEXT = "relay.receive_text"
# Unsent bytes to the caller before the stream counts as stalled: about 30 s of audio.
MAX_UNSENT = 512 * 1024
# Twilio's largest message is `start` with its <Parameter>s: a few KiB.
MAX_MESSAGE = 64 * 1024


TESTED = "uvicorn 0.54 with websockets 17"
# What MediaStreamProtocol overrides or calls of uvicorn's protocol, and the state it reads.
BASE_METHODS = ("handle_connect", "send", "keepalive_timeout", "send_receive_event_to_app",
                "connection_lost")
BASE_STATE = ("transport", "conn", "loop", "scope", "response", "handshake_complete", "queue",
              "close_sent", "disconnected", "close_timer", "close_timeout", "writable", "frames",
              "curr_msg_data_type")


def check_uvicorn(base: type = WebSocketsSansIOProtocol) -> None:
    """Fail at start-up, in one line, when ``base`` lacks what ``MediaStreamProtocol`` uses.

    A method must be there; an attribute must be a class attribute or be assigned
    (``self.x = …``) by one of the class's methods.

    Raises:
        ConfigError: naming what is missing, the installed versions and the tested ones.
    """
    missing = lacking(base, BASE_METHODS, BASE_STATE)
    if missing:
        raise ConfigError(
            f"relay.serving needs {', '.join(missing)} of uvicorn's {base.__name__}, which "
            f"uvicorn {version('uvicorn')} with websockets {version('websockets')} lacks; "
            f"it is tested with {TESTED}: pip install -e . installs those")


def lacking(cls: type, methods: tuple[str, ...], state: tuple[str, ...]) -> list[str]:
    """Which of ``methods`` and ``state`` ``cls`` lacks (see ``check_uvicorn``)."""
    missing = [name for name in methods if not callable(getattr(cls, name, None))]
    assigned = set(_assigned(cls))
    missing += [name for name in state if name not in assigned and not hasattr(cls, name)]
    return missing


def _assigned(cls: type) -> Iterator[str]:
    """Attribute names that the methods of ``cls`` (and its bases) assign to."""
    for klass in cls.__mro__:
        for member in vars(klass).values():
            code = getattr(member, "__code__", None)
            if isinstance(code, types.CodeType):
                yield from _stores(code)


def _stores(code: types.CodeType) -> Iterator[str]:
    for instruction in dis.get_instructions(code):
        if instruction.opname == "STORE_ATTR":
            yield instruction.argval
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _stores(const)


class StreamStalled(ClientDisconnected):
    """The peer stopped reading: too much is waiting to be sent to it."""


class MediaStreamProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with a direct receive and send for streams."""

    on_text: Callable[[bytes], None] | None = None

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:
            extensions = cast(dict[str, Any], self.scope["extensions"])
            extensions[SEND_TEXT] = self.send_text_now
            extensions[RECEIVE_TEXT] = self.receive_text_with

    def receive_text_with(self, callback: Callable[[bytes], None]) -> None:
        self.on_text = callback

    def send_text_now(self, data: bytes) -> None:
        transport = self.transport
        if (self.disconnected or self.close_sent or not self.handshake_complete
                or transport.is_closing()):
            raise ClientDisconnected()
        if transport.get_write_buffer_size() > MAX_UNSENT:
            transport.abort()
            raise StreamStalled("the caller's stream stopped reading")
        try:
            self.conn.send_text(data)
        except InvalidState:
            raise ClientDisconnected() from None
        transport.write(b"".join(self.conn.data_to_send()))

    async def send(self, message: Any) -> None:
        if (message["type"] == "websocket.close" and self.handshake_complete
                and not self.close_sent and not self.writable.is_set()):
            # The peer stopped reading: a closing handshake cannot get through, and uvicorn
            # would wait for the buffer to drain forever. Drop the connection instead.
            self.close_sent = True
            self.transport.abort()
            return
        await super().send(message)
        if message["type"] == "websocket.close" and self.close_timer is not None:
            # uvicorn's timer closes the transport, which waits for unsent data: abort instead
            self.close_timer.cancel()
            self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)

    def keepalive_timeout(self) -> None:
        failing = not (self.close_sent or self.transport.is_closing())
        super().keepalive_timeout()
        if failing:
            # The peer went silent (a line cut without FIN or RST): the connection is lost,
            # 1006, not closed (uvicorn's connection_lost would say 1005, as for a hang-up).
            if self.handshake_complete:
                self._report_lost()
            self.transport.abort()  # a dead peer never takes the buffered data: do not wait

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handshake_complete and not self.close_sent and self.conn.close_rcvd is None:
            # Lost without a close frame: 1006 (RFC 6455 §7.1.5). uvicorn reports 1005, which
            # is also what a close frame without a code gives, so a drop would read as a hang-up.
            self._report_lost()
        super().connection_lost(exc)

    def _report_lost(self) -> None:
        """Tell the app its stream was lost, not closed: 1006 (RFC 6455 §7.1.5)."""
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1006})

    def send_receive_event_to_app(self) -> None:
        on_text = self.on_text
        if on_text is None or self.curr_msg_data_type != "text" or self.close_sent:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        on_text(data)


def config(app: Any, *, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info",
           **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration the relay is served with, by ``app.py`` and by the tests.

    Raises:
        ConfigError: the installed uvicorn lacks what ``MediaStreamProtocol`` uses.
    """
    check_uvicorn()
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "ws": MediaStreamProtocol,
        "ws_per_message_deflate": False,  # base64 audio does not compress; it only costs CPU
        "ws_max_size": MAX_MESSAGE,
        "log_level": log_level,
        "timeout_graceful_shutdown": 10,
        "log_config": None,
        "workers": 1,  # WORKERS (relay/workers.py) decides, never uvicorn's WEB_CONCURRENCY
        **overrides,
    }
    return uvicorn.Config(app, **options)
