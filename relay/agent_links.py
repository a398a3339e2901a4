"""LinkAttempts: opening a call's agent link, and opening the next one when it is lost.

The link is replaceable: the protocol asks for one (``OpenLink``), and ``LinkAttempts`` opens
it (an ``AgentLink``), waits for ``session.ready`` within the attempt's timeouts
(``open_timeout``, ``ready_timeout``, the attempt's ``deadline``: all from ``relay.recovery``)
and reports how it went (``link_opened``, ``link_ready``, ``link_failed``); a ready link that
closes without ``session.ended`` is reported as ``link_lost``. What comes next (retry, resume,
a fresh session, or the fallback) is the protocol's decision, never this module's. A replaced
link's message callback is detached (``_ignore``) and the link aborted, so none of its audio
still in flight reaches the caller.

It owns the current link, the current attempt's wait for ``session.ready``, the task of the
first attempt (cancelled when a re-stream takes over the session of the call's lost stream) and
``done``, the current link's end (``session.ended`` received, or the link gone), which the
bridge's teardown waits for. It owns no task of its own: attempts run in the call's TaskGroup
(``spawn``), actions go through the bridge's ``perform``, and the link the bridge writes the
call's messages to is handed over through ``use`` whenever it changes, so the audio path keeps
one attribute of the bridge and the link calls the bridge's ``on_message`` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from websockets.exceptions import InvalidHandshake, InvalidStatus

from relay.actions import Action, OpenLink
from relay.agent_link import AgentLink, LinkClosed, Message
from relay.config import Settings
from relay.errors import CallEnded
from relay.outcomes import Outcome
from relay.protocol import CallProtocol
from relay.recovery import Failure, Kind, Mode

AGENT_MAX_MESSAGE = 1 << 20


def _ignore(raw: Message) -> None:
    """The message callback of a replaced link: what it still delivers is dropped."""


class LinkAttempts:
    """The agent links of one call: one attempt at a time, each reported to the protocol."""

    def __init__(
        self,
        *,
        settings: Settings,
        protocol: CallProtocol,
        perform: Callable[[list[Action]], None],
        spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None] | None],
        on_message: Callable[[Message], None],
        use: Callable[[AgentLink | None], None],
        opened: Callable[[asyncio.Future[LinkClosed]], None],
        until_started: Callable[[], Awaitable[None]],
        end: Callable[[CallEnded], None],
    ) -> None:
        self._settings = settings
        self._protocol = protocol
        self._perform = perform  # the bridge's: every write happens now
        self._spawn = spawn  # a task of the call (None when the call is already ending)
        self._on_message = on_message  # each link's message callback, the bridge's own
        self._use = use  # tells the bridge which link the call's messages go to
        self._opened = opened  # the monitor counts agent sockets from here
        self._until_started = until_started  # Twilio's start checked out (or the call ended)
        self._end = end  # ends the call from a callback (the first reason wins)
        self._link: AgentLink | None = None
        self._first_attempt: asyncio.Task[None] | None = None  # opening the first link
        # The current attempt's wait: None once session.ready came, or why it failed.
        self._ready_wait: asyncio.Future[Failure | None] | None = None
        self.done = asyncio.Event()  # session.ended received, or the link is gone
        self._released = False  # the call is ending: nothing is reported any more

    # ------------------------------------------------------------------ the protocol's actions

    def open(self, action: OpenLink) -> None:
        """``OpenLink``: start the attempt as a task of the call."""
        task = self._spawn(self._attempt(action), f"agent link ({action.attempt.mode})")
        if action.attempt.mode is Mode.FIRST:
            self._first_attempt = task

    def ready(self) -> None:
        """``LinkReady``: the current attempt succeeded; the protocol is told so."""
        if self._ready_wait is not None and not self._ready_wait.done():
            self._ready_wait.set_result(None)
        self._perform(self._protocol.link_ready(time.monotonic()))

    def failed(self, failure: Failure) -> None:
        """``LinkFailed``: the current attempt failed before ``session.ready``."""
        if self._ready_wait is not None and not self._ready_wait.done():
            self._ready_wait.set_result(failure)

    # ------------------------------------------------------------------ from the bridge

    def give_up_first(self) -> None:
        """Cancel the first attempt and let go of its link: another session takes its place."""
        first, self._first_attempt = self._first_attempt, None
        if first is not None:
            first.cancel()  # the link opened for a first session is not needed
        if self._link is not None:
            self._drop(self._link)

    def release(self) -> AgentLink | None:
        """The call is ending: hand over the current link, for its teardown, and report no more."""
        self._released = True
        link = self._link
        self._set(None)
        return link

    # ------------------------------------------------------------------ attempts

    async def _attempt(self, action: OpenLink) -> None:
        """One attempt at an agent session; its outcome goes back to the protocol."""
        attempt = action.attempt
        if attempt.delay:
            await asyncio.sleep(attempt.delay)
        failure = await self._try(action)
        if failure is None:
            return
        if attempt.mode is Mode.FIRST:
            await self._until_started()  # so an observer is told why
        self._perform(self._protocol.link_failed(failure, time.monotonic()))

    async def _try(self, action: OpenLink) -> Failure | None:
        """Open a link and wait for its ``session.ready``: None, or why there is none."""
        s, attempt = self._settings, action.attempt
        try:
            link = await AgentLink.open(
                s.agent_url,
                headers={"Authorization": f"Bearer {action.credential or s.agent_key}"},
                on_message=self._on_message,
                ping_interval=s.agent_ping_interval,
                open_timeout=max(0.0, min(attempt.open_timeout,
                                          attempt.deadline - time.monotonic())),
                max_size=AGENT_MAX_MESSAGE,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            return Failure(Kind.HTTP, f"the upgrade was answered HTTP {status}", status=status)
        except TimeoutError:
            return Failure(Kind.TIMEOUT, f"no handshake within {attempt.open_timeout:g} s")
        except (OSError, InvalidHandshake) as exc:
            return Failure(Kind.NETWORK, f"unreachable: {type(exc).__name__}: {exc}")
        loop = asyncio.get_running_loop()
        self._ready_wait = wait = loop.create_future()
        self._set(link)
        self.done = asyncio.Event()
        link.closed.add_done_callback(functools.partial(self._closed, link))
        self._opened(link.closed)
        try:
            self._perform(self._protocol.link_opened())
            if attempt.mode is Mode.FIRST:  # the session.update goes once start checked out
                await self._until_started()
            left = max(0.0, min(attempt.ready_timeout, attempt.deadline - time.monotonic()))
            failure: Failure | None = Failure(
                Kind.TIMEOUT, f"no session.ready within {left:.1f} s")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    failure = await asyncio.shield(wait)
            if failure is None:
                return None
        finally:
            self._ready_wait = None
        self._drop(link)
        return failure

    # ------------------------------------------------------------------ links

    def _set(self, link: AgentLink | None) -> None:
        self._link = link
        self._use(link)

    def _drop(self, link: AgentLink) -> None:
        """Let go of a failed link: nothing it still sends reaches the call."""
        link.on_message = _ignore
        if self._link is link:
            self._set(None)
        link.abort()

    def _closed(self, link: AgentLink, closed: asyncio.Future[LinkClosed]) -> None:
        if link is not self._link:
            return  # a link already replaced or let go
        self.done.set()
        if closed.cancelled() or self._released:  # the call is over
            return
        result = closed.result()
        wait = self._ready_wait
        if wait is not None and not wait.done():  # its attempt reports it
            wait.set_result(Failure(Kind.CLOSED, str(result), close_code=result.code))
            return
        if self._protocol.ended:
            self._end(CallEnded("agent ended the session", 1000, Outcome.AGENT_ENDED))
            return
        self._drop(link)  # a drop: keep the caller and get the session back
        try:
            self._perform(self._protocol.link_lost(str(result), time.monotonic()))
        except CallEnded as ended:
            self._end(ended)
