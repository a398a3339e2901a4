"""The lag window and the drain's schedule: pure, with times passed in."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from relay.draining import DrainTimes, drain_step
from relay.load import LagMonitor, LagWindow
from relay.masking import MaskedLog, NumberMask, mask_number, mask_numbers


def test_lag_window_is_the_mean_of_the_last_second() -> None:
    w = LagWindow(1.0)
    assert w.mean_ms(0.0) == 0.0
    for i in range(10):
        w.add(i * 0.1, 10.0)
    assert w.mean_ms(0.95) == pytest.approx(10.0)
    w.add(1.0, 120.0)  # the sample at 0.0 leaves the window
    assert w.mean_ms(1.0) == pytest.approx((9 * 10 + 120) / 10)
    assert w.max_ms(1.0) == 120.0
    assert w.mean_ms(2.5) == 0.0, "nothing measured in the last second: no lag"


@pytest.mark.anyio
async def test_lag_monitor_sees_a_loop_that_runs_late() -> None:
    monitor = LagMonitor(interval=0.02)
    monitor.start()
    try:
        assert monitor.lag_ms() == 0.0, "no figure before a whole window was measured"
        await asyncio.sleep(1.1)
        idle = monitor.lag_ms()
        for _ in range(20):  # longer than the window: only busy samples are left
            time.sleep(0.06)  # noqa: ASYNC251 -- the point: a loop kept busy
            await asyncio.sleep(0)
        busy = monitor.lag_ms()
    finally:
        monitor.stop()
    assert idle < 15
    assert busy > 30


def test_drain_waits_for_calls_then_ends_them_at_the_deadline_then_lingers() -> None:
    t = DrainTimes(drain_seconds=300, goodbye_seconds=20, action_grace=5)

    def step(now: float, active: int, last_end: float | None = None, asked: bool = False) -> str:
        return drain_step(t, now=now, started=0.0, active=active, last_end=last_end,
                          asked_to_end=asked)

    assert step(0, active=0) == "exit", "nothing to wait for"
    assert step(10, active=3) == "wait"
    assert step(299.9, active=1) == "wait"
    assert step(300, active=1) == "end_calls"
    assert step(301, active=1, asked=True) == "wait"
    assert step(320, active=1, asked=True) == "exit", "the goodbye is bounded"
    # the last call ended on its own: Twilio's action request may follow
    assert step(100, active=0, last_end=98) == "wait"
    assert step(103, active=0, last_end=98) == "exit"


def test_numbers_are_masked() -> None:
    assert mask_number("+15551234567") == "+1555***4567"
    assert mask_number("") == ""
    text = "from +15551234567 to +442071838750, call CA123, 12:00 +0000"
    assert mask_numbers(text) == "from +1555***4567 to +4420***8750, call CA123, 12:00 +0000"


def test_log_filter_and_tool_logger_mask_what_others_write(caplog) -> None:
    caplog.set_level(logging.INFO)
    logger = logging.getLogger("test.masking")
    record = logger.makeRecord("x", logging.INFO, "f", 1, "Query Params: %s",
                               ({"To": "+15551234567"},), None)
    assert NumberMask().filter(record)
    assert record.getMessage() == "Query Params: {'To': '+1555***4567'}"
    MaskedLog(logging.LoggerAdapter(logger, {})).info("calling %s now", "+15557654321")
    assert caplog.records[-1].getMessage() == "calling +1555***4321 now"
