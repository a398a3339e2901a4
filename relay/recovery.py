"""Getting an agent, and getting it back: the pure decisions, clock passed in.

A call needs an agent session from Twilio's ``start`` on, and again after a drop mid-call. Each
try is an ``Attempt``: open a link and send its first message (``session.update``, or
``session.resume`` after a drop), then wait for ``session.ready``. ``relay.agent_links``
performs attempts and reports how each failed (a ``Failure``); ``Recovery`` decides what comes
next:

* the first session, or a fresh one: **retry once**, after ``AGENT_RETRY_BACKOFF``, when a
  retry can help (network errors, timeouts, HTTP 429 and 5xx, ``at_capacity``,
  ``concurrency_exceeded``, ``internal_error``/``server_error``) and can still finish inside
  the budget; never for operator errors (HTTP 401/403, ``unauthorized``, ``forbidden``, an
  invalid voice or configuration), which are logged at ERROR naming the setting to fix;
* after a drop: **resume** first (the saved ``session_id``, authenticated with the latest
  ``resume_token``), and if that fails in any way, a **fresh session** (which may retry once);
* when nothing is left: **the fallback** (the caller hears ``FALLBACK_MESSAGE``).

Every wait is bounded by the budget: ``AGENT_WAIT_BUDGET`` seconds from the start of the effort
(the stream's start, or the drop). An attempt's timeouts are cut to what is left of it, and an
attempt that would have less than ``MIN_ATTEMPT`` seconds is not made.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from relay.config import Settings

# Below this, an attempt cannot succeed in practice (a handshake and a session.ready).
MIN_ATTEMPT = 1.0

# session.error codes (compared lower-case) after which trying again can help.
RETRYABLE_CODES = frozenset({"at_capacity", "concurrency_exceeded", "internal_error",
                             "server_error"})
# Errors only the operator can fix, and the setting to look at.
OPERATOR_CODES = {
    "unauthorized": "ASSEMBLYAI_API_KEY",
    "forbidden": "ASSEMBLYAI_API_KEY",
    "agent_id_not_first": "the agent configuration",
    "invalid_config": "the agent configuration (AGENT_SYSTEM_PROMPT, AGENT_GREETING, the tools)",
    "invalid_format": "the agent configuration (AGENT_SYSTEM_PROMPT, AGENT_GREETING, the tools)",
}
OPERATOR_STATUSES = {401: "ASSEMBLYAI_API_KEY", 403: "ASSEMBLYAI_API_KEY",
                     404: "AGENT_WS_URL"}


class Mode(StrEnum):
    FIRST = "first"  # the call's first session: session.update with the greeting
    RESUME = "resume"  # after a drop: session.resume with the saved session_id
    FRESH = "fresh"  # after a failed resume: session.update with the reconnect greeting


class Kind(StrEnum):
    NETWORK = "network"  # DNS, TCP, TLS, a connection lost during the handshake
    TIMEOUT = "timeout"  # no handshake within the open timeout, or no session.ready in time
    HTTP = "http"  # the upgrade was answered with an HTTP status
    ERROR = "error"  # session.error before session.ready
    CLOSED = "closed"  # the socket closed before session.ready, without an error


@dataclass(frozen=True, slots=True)
class Failure:
    kind: Kind
    detail: str  # one line: what happened, for the log
    status: int | None = None  # the HTTP status, for Kind.HTTP
    code: str | None = None  # the session.error code, for Kind.ERROR
    param: str | None = None  # the session.error param (e.g. output.voice)
    close_code: int | None = None

    @property
    def label(self) -> str:
        """The error or close code, as the fault's log line names it."""
        if self.status is not None:
            return f"HTTP {self.status}"
        if self.code is not None:
            return self.code
        if self.close_code is not None:
            return f"close {self.close_code}"
        return str(self.kind)


def operator_setting(failure: Failure) -> str | None:
    """The setting an operator must fix for this failure, or None when it is not theirs."""
    if failure.kind is Kind.HTTP and failure.status is not None:
        return OPERATOR_STATUSES.get(failure.status)
    if failure.kind is Kind.ERROR and failure.code is not None:
        code = failure.code.lower()
        if code == "invalid_value":
            voice = "voice" in (failure.param or "") or "voice" in failure.detail.lower()
            return "AGENT_VOICE" if voice else OPERATOR_CODES["invalid_config"]
        return OPERATOR_CODES.get(code)
    return None


def retryable(failure: Failure) -> bool:
    if failure.kind in (Kind.NETWORK, Kind.TIMEOUT, Kind.CLOSED):
        return True
    if failure.kind is Kind.HTTP:
        return failure.status == 429 or (failure.status or 0) >= 500
    return (failure.code or "").lower() in RETRYABLE_CODES


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at a session: wait ``delay``, open within ``open_timeout``, then send the first
    message and wait for ``session.ready`` until ``deadline`` (monotonic seconds)."""

    mode: Mode
    delay: float
    open_timeout: float
    ready_timeout: float
    deadline: float
    number: int = 1  # within its mode: 2 is the retry


@dataclass(frozen=True, slots=True)
class GiveUp:
    """No agent: the fallback."""

    reason: str


@dataclass(frozen=True, slots=True)
class Step:
    """What to do after a failure, and the one log line the fault gets."""

    next: Attempt | GiveUp
    level: str  # INFO, or ERROR for operator errors and the fallback
    text: str


class Recovery:
    """The effort of one call to get (or get back) an agent session."""

    def __init__(self, *, open_timeout: float, ready_timeout: float, retry_backoff: float,
                 resume_timeout: float, budget: float) -> None:
        self._open = open_timeout
        self._ready = ready_timeout
        self._backoff = retry_backoff
        self._resume = resume_timeout
        self._budget = budget
        self.began = 0.0
        self.deadline = 0.0
        self.current: Attempt | None = None

    @classmethod
    def with_defaults(cls) -> Recovery:
        """The default settings' timeouts (tests of the pure layer)."""
        return cls.from_settings(Settings())

    @classmethod
    def from_settings(cls, s: Settings) -> Recovery:
        """From ``Settings``: the ``AGENT_*`` timeouts and ``AGENT_WAIT_BUDGET``."""
        return cls(open_timeout=s.agent_open_timeout, ready_timeout=s.agent_ready_timeout,
                   retry_backoff=s.agent_retry_backoff, resume_timeout=s.agent_resume_timeout,
                   budget=s.agent_wait_budget)

    def waited(self, now: float) -> float:
        """How long the caller has waited for an agent in this effort."""
        return max(0.0, now - self.began)

    def begin(self, mode: Mode, now: float) -> Attempt:
        """Start an effort: the call's first session, or getting one back after a drop."""
        self.began, self.deadline = now, now + self._budget
        attempt = self._attempt(mode, now, 0.0, 1)
        assert attempt is not None  # a whole budget always fits one attempt
        return attempt

    def _attempt(self, mode: Mode, now: float, delay: float, number: int) -> Attempt | None:
        starts = now + delay
        left = self.deadline - starts
        if left < min(MIN_ATTEMPT, self._budget):
            return None
        if mode is Mode.RESUME:
            window = min(self._resume, left)
            attempt = Attempt(mode, delay, window, window, starts + window, number)
        else:
            attempt = Attempt(mode, delay, min(self._open, left), min(self._ready, left),
                              self.deadline, number)
        self.current = attempt
        return attempt

    def failed(self, failure: Failure, now: float, *, session_id: str | None = None) -> Step:
        """The current attempt failed: the next attempt, or the fallback."""
        attempt = self.current
        assert attempt is not None, "failed() without an attempt"
        waited = self.waited(now)
        # The decision first (what the caller gets), then the details.
        label = failure.label
        details = f"session {session_id or '-'}; {failure.detail}"
        if attempt.mode is Mode.RESUME:
            fresh = self._attempt(Mode.FRESH, now, 0.0, 1)
            if fresh is not None:
                return Step(fresh, "INFO", f"agent resume failed: {label}: opening a fresh "
                            f"session (caller waiting {waited:.1f} s); {details}")
            return self._give_up(f"resume failed: {label}", None, label, details, waited)
        setting = operator_setting(failure)
        if setting is not None:
            return self._give_up(f"agent refused: {label}", setting, label, details, waited)
        if retryable(failure) and attempt.number == 1:
            retry = self._attempt(attempt.mode, now, self._backoff, 2)
            if retry is not None:
                return Step(retry, "INFO", f"agent attempt failed: {label}: retrying in "
                            f"{self._backoff:g} s (caller waiting {waited:.1f} s); {details}")
        why = "no agent after a retry" if attempt.number > 1 else "no agent"
        return self._give_up(f"{why}: {label}", None, label, details, waited)

    def ready(self, now: float) -> str:
        """The session is ready: the line that says so, for a recovery (not the first)."""
        attempt = self.current
        self.current = None
        mode = attempt.mode if attempt is not None else Mode.FIRST
        if mode is Mode.RESUME:
            return f"agent session resumed after {self.waited(now):.1f} s"
        if mode is Mode.FRESH:
            return f"fresh agent session after {self.waited(now):.1f} s"
        return f"agent ready after {self.waited(now):.1f} s"

    def _give_up(self, reason: str, setting: str | None, label: str, details: str,
                 waited: float) -> Step:
        self.current = None
        fix = f" Check {setting}." if setting else ""
        return Step(GiveUp(reason), "ERROR",
                    f"agent failed: {label}: fallback (caller waited {waited:.1f} s).{fix} "
                    f"{details[0].upper()}{details[1:]}")
