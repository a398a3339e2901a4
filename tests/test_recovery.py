"""Getting an agent and getting it back: the pure decisions, with the clock passed in."""

from __future__ import annotations

import pytest

from relay.config import Settings
from relay.recovery import (
    Attempt,
    Failure,
    GiveUp,
    Kind,
    Mode,
    Recovery,
    operator_setting,
    retryable,
)

BUDGET_HEARD = 8.0  # the promise: agent or fallback within 8 s
# What reaching the fallback costs after the relay gives up: closing the stream, Twilio's
# action request and the start of its <Say>. Generous for a real network.
FALLBACK_LATENCY = 0.8


def recovery(settings: Settings | None = None) -> Recovery:
    s = settings or Settings()
    return Recovery(open_timeout=s.agent_open_timeout, ready_timeout=s.agent_ready_timeout,
                    retry_backoff=s.agent_retry_backoff, resume_timeout=s.agent_resume_timeout,
                    budget=s.agent_wait_budget)


def http(status: int) -> Failure:
    return Failure(Kind.HTTP, f"HTTP {status}", status=status)


def error(code: str, param: str | None = None, detail: str = "") -> Failure:
    return Failure(Kind.ERROR, detail or code, code=code, param=param)


TIMEOUT = Failure(Kind.TIMEOUT, "no session.ready")
NETWORK = Failure(Kind.NETWORK, "connection refused")


@pytest.mark.parametrize("failure", [NETWORK, TIMEOUT, Failure(Kind.CLOSED, "closed 1006"),
                                     http(429), http(500), http(503), error("at_capacity"),
                                     error("CONCURRENCY_EXCEEDED"), error("internal_error"),
                                     error("server_error")])
def test_what_a_retry_can_help_is_retried_once_after_the_backoff(failure: Failure) -> None:
    r = recovery()
    first = r.begin(Mode.FIRST, now=100.0)
    assert (first.mode, first.delay, first.number) == (Mode.FIRST, 0.0, 1)
    step = r.failed(failure, now=100.5)
    assert isinstance(step.next, Attempt)
    assert (step.next.mode, step.next.number) == (Mode.FIRST, 2)
    assert step.next.delay == Settings().agent_retry_backoff
    assert step.level == "INFO" and "retrying" in step.text and failure.label in step.text
    final = r.failed(failure, now=101.0)
    assert isinstance(final.next, GiveUp) and final.level == "ERROR"
    assert "fallback" in final.text and "caller waited 1.0 s" in final.text


@pytest.mark.parametrize(("failure", "setting"), [
    (http(401), "ASSEMBLYAI_API_KEY"), (http(403), "ASSEMBLYAI_API_KEY"),
    (error("unauthorized"), "ASSEMBLYAI_API_KEY"), (error("FORBIDDEN"), "ASSEMBLYAI_API_KEY"),
    (error("invalid_value", "output.voice", "Unknown voice 'claire'"), "AGENT_VOICE"),
    (error("invalid_value", None, "Unknown voice 'claire'"), "AGENT_VOICE"),
])
def test_operator_errors_are_never_retried_and_name_the_setting(failure: Failure,
                                                                setting: str) -> None:
    assert operator_setting(failure) == setting and not retryable(failure)
    r = recovery()
    r.begin(Mode.FIRST, now=0.0)
    step = r.failed(failure, now=0.2)
    assert isinstance(step.next, GiveUp)
    assert step.level == "ERROR" and f"Check {setting}." in step.text


def test_other_errors_are_not_retried() -> None:
    r = recovery()
    r.begin(Mode.FIRST, now=0.0)
    assert isinstance(r.failed(error("agent_init_failed"), now=0.1).next, GiveUp)
    r.begin(Mode.FIRST, now=0.0)
    assert isinstance(r.failed(http(400), now=0.1).next, GiveUp)


def test_a_retry_is_made_only_if_it_can_finish_inside_the_budget() -> None:
    r = recovery(Settings(agent_wait_budget=4.0, agent_open_timeout=3.0))
    r.begin(Mode.FIRST, now=0.0)
    late = r.failed(TIMEOUT, now=3.5)  # 0.5 s left minus the backoff: no attempt can finish
    assert isinstance(late.next, GiveUp)
    r.begin(Mode.FIRST, now=0.0)
    step = r.failed(TIMEOUT, now=1.0)
    assert isinstance(step.next, Attempt)
    assert step.next.open_timeout == pytest.approx(2.7)  # cut to what is left of the budget
    assert step.next.deadline == 4.0


def test_the_defaults_keep_every_first_session_fault_inside_8_s() -> None:
    """Worst cases with the default settings: each wait runs to its timeout."""
    s = Settings()
    for first_wait, second_wait in [
        (s.agent_open_timeout, s.agent_open_timeout),  # hangs in the handshake twice
        (s.agent_ready_timeout, s.agent_ready_timeout),  # never sends session.ready
        (s.agent_open_timeout, s.agent_open_timeout + s.agent_ready_timeout),  # both
    ]:
        r = recovery(s)
        now = 0.0
        attempt = r.begin(Mode.FIRST, now)
        now += min(first_wait, attempt.deadline - now)
        step = r.failed(TIMEOUT, now)
        assert isinstance(step.next, Attempt)
        now += step.next.delay + min(second_wait, step.next.deadline - now - step.next.delay)
        final = r.failed(TIMEOUT, now)
        assert isinstance(final.next, GiveUp)
        assert now <= s.agent_wait_budget
        assert now + FALLBACK_LATENCY < BUDGET_HEARD


def test_a_drop_resumes_then_opens_a_fresh_session_then_falls_back() -> None:
    s = Settings()
    r = recovery(s)
    resume = r.begin(Mode.RESUME, now=50.0)
    assert resume.mode is Mode.RESUME and resume.delay == 0
    assert resume.deadline == 50.0 + s.agent_resume_timeout
    for refusal in (error("session_not_found"), error("session_forbidden"), TIMEOUT,
                    error("unauthorized")):  # even the resume token refused: try fresh
        r.begin(Mode.RESUME, now=50.0)
        step = r.failed(refusal, now=50.0 + s.agent_resume_timeout, session_id="sess_1")
        assert isinstance(step.next, Attempt) and step.next.mode is Mode.FRESH
        assert step.next.delay == 0 and step.next.deadline == 50.0 + s.agent_wait_budget
        assert "sess_1" in step.text and "fresh session" in step.text
    r.begin(Mode.RESUME, now=50.0)
    r.failed(TIMEOUT, now=50.0 + s.agent_resume_timeout)
    silent_fresh = 50.0 + s.agent_resume_timeout + s.agent_ready_timeout
    final = r.failed(TIMEOUT, now=silent_fresh)  # no time left for the fresh one's retry
    assert isinstance(final.next, GiveUp)
    assert f"caller waited {silent_fresh - 50:.1f} s" in final.text
    # with a longer budget, the fresh session gets its retry, cut to the budget
    r = recovery(Settings(agent_wait_budget=8.0))
    r.begin(Mode.RESUME, now=50.0)
    r.failed(TIMEOUT, now=50.0 + s.agent_resume_timeout)
    step = r.failed(TIMEOUT, now=silent_fresh)
    assert isinstance(step.next, Attempt) and step.next.number == 2
    assert step.next.deadline == 58.0


def test_a_fresh_session_refused_by_the_operator_falls_back() -> None:
    r = recovery()
    r.begin(Mode.RESUME, now=0.0)
    r.failed(error("session_not_found"), now=0.1)
    step = r.failed(http(401), now=0.2)
    assert isinstance(step.next, GiveUp) and "Check ASSEMBLYAI_API_KEY." in step.text


def test_ready_says_how_long_the_caller_waited() -> None:
    r = recovery()
    r.begin(Mode.RESUME, now=10.0)
    assert r.ready(now=10.4) == "agent session resumed after 0.4 s"
    r.begin(Mode.RESUME, now=10.0)
    r.failed(error("session_not_found"), now=10.1)
    assert r.ready(now=11.0) == "fresh agent session after 1.0 s"
