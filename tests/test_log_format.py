"""LOG_FORMAT: ``python app.py`` as a real process, a call through it, and every line it printed."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import orjson
import pytest

from relay.local.caller import SimulatedCall
from relay.log_format import JsonFormatter
from relay.record_log import read_records
from tests.conftest import MS
from tests.instances import RelayProcess

CALLER = "+15550001111"


def test_a_record_becomes_one_object_with_the_call_sid_as_a_field() -> None:
    record = logging.LogRecord("relay.call", logging.WARNING, __file__, 1,
                               "[%s] bad input ignored: %s", ("CA" + "a" * 32, "junk"), None)
    record.outcome = "caller_hung_up"  # as passed with extra=
    line = orjson.loads(JsonFormatter().format(record))
    assert line["level"] == "WARNING" and line["logger"] == "relay.call"
    assert line["call_sid"] == "CA" + "a" * 32
    assert line["message"] == "bad input ignored: junk"
    assert line["outcome"] == "caller_hung_up"
    assert line["time"].endswith("Z")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        failed = logging.LogRecord("relay", logging.ERROR, __file__, 1, "failed", (),
                                   sys.exc_info())
    assert "ValueError: boom" in orjson.loads(JsonFormatter().format(failed))["exc_info"]


@pytest.mark.anyio
async def test_json_logs_every_line_of_a_real_process_including_uvicorns(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay.log", LOG_FORMAT="json", WEB_CONCURRENCY="1",
                         CALL_LOG_DIR=str(tmp_path / "calls"))
    await relay.start()
    try:
        async with SimulatedCall.dial(relay.base_url, caller=CALLER) as call:
            await call.wait_for("media", timeout=10 * MS)
            await call.send_dtmf("5")
            await call.hang_up()
            await call.wait_closed(5 * MS)
        async with httpx.AsyncClient() as http:
            assert (await http.get(relay.base_url + "/metrics")).status_code == 200
        await relay.wait_for_log(r"call ended")
    finally:
        await relay.stop()  # SIGTERM: uvicorn shuts down, then re-raises the signal
    lines = [line for line in relay.log().splitlines() if line.strip()]
    parsed = [orjson.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(p) for p in parsed)
    loggers = {p["logger"] for p in parsed}
    assert {"relay", "relay.call", "uvicorn.error"} <= loggers, loggers
    assert any(p["message"].startswith("Finished server process") for p in parsed)
    call_lines = [p for p in parsed if p["logger"] == "relay.call"]
    assert call_lines and all(p.get("call_sid") == call.call_sid for p in call_lines)
    assert any(p["message"].startswith("call started: inbound from +1555***1111")
               and p["event"] == "call.started" and p["direction"] == "inbound"
               for p in call_lines)
    (ended,) = [p for p in call_lines if p.get("event") == "call.ended"]
    assert ended["outcome"] == "caller_hung_up" and ended["duration_seconds"] > 0
    assert any(p.get("event") == "agent.ready" for p in call_lines)
    assert CALLER not in relay.log() and "\\u001b" not in relay.log()
    (record,) = read_records(tmp_path / "calls")
    assert record["call_sid"] == call.call_sid and record["outcome"] == "caller_hung_up"
    assert record["agent_session_ids"] and record["first_audio_seconds"] is not None
    assert [e["event"] for e in record["events"] if e["event"] == "dtmf"] == ["dtmf"]
