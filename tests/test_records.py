"""Call records: the recorder's rules with a hand-driven clock, the file format, and the report."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay import report
from relay.call_record import CallRecorder, percentile
from relay.outcomes import Outcome
from relay.record_log import RecordLog, read_records

DAY = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def recorded_call(*, sid: str = "CA1", start: float = 100.0, wall: float | None = None,
                  response: float = 0.6, tool_error: str | None = None,
                  reason: str = "caller hung up",
                  outcome: Outcome = Outcome.CALLER_HUNG_UP) -> dict[str, Any]:
    """A call driven through the recorder as the bridge drives it, on a hand-made clock."""
    r = CallRecorder()
    r.dialing(start - 0.05)
    r.started(call_sid=sid, direction="inbound", caller="+15551234567", called="+15559876543",
              now=start, wall=DAY.timestamp() if wall is None else wall)
    r.event("agent.ready", {"session_id": "sess_1"}, start + 0.1)
    r.event("reply.started", {"reply_id": "r1"}, start + 0.1)
    r.event("reply.audio", {"reply_id": "r1"}, start + 0.2)
    r.event("transcript.agent", {"reply_id": "r1", "text": "Hi!"}, start + 0.5)
    r.event("reply.heard", {"reply_id": "r1"}, start + 0.8)
    r.event("speech.started", {}, start + 1.0)
    r.event("speech.stopped", {}, start + 2.0)
    r.event("transcript.user", {"text": "order 42 please"}, start + 2.1)
    r.event("reply.started", {"reply_id": "r2"}, start + 2.2)  # the tool turn: no audio
    r.tool_started("c1", "lookup_order", {"order_id": "42"}, start + 2.2)
    r.tool_finished("c1", start + 2.4, error=tool_error)
    r.event("reply.started", {"reply_id": "r3"}, start + 2.4)
    r.event("reply.audio", {"reply_id": "r3"}, start + 2.0 + response)
    r.event("agent.reconnect", {"result": "resumed"}, start + 3.0)
    r.ended(reason, start + 5.0, {"to_agent": 250, "to_caller": 100,
                                  "dropped_before_ready": 3, "dropped_muted": 0}, outcome)
    return r.record()


def test_response_latency_runs_to_the_first_audio_after_the_callers_turn() -> None:
    record = recorded_call(response=0.7)
    # The tool turn's reply had no audio: the caller waited until the next reply spoke.
    assert record["response_seconds"] == [0.7]
    assert record["first_audio_seconds"] == 0.2
    assert record["agent_reconnects"] == ["resumed"]
    assert {"t": 3.0, "event": "agent.reconnected", "result": "resumed"} in record["events"]
    assert record["agent_connect_seconds"] == 0.15
    assert record["duration_seconds"] == 5.0
    assert record["started_at"] == "2026-12-01T12:00:00.000Z"
    assert record["ended_at"] == "2026-12-01T12:00:05.000Z"
    assert record["caller"] == "+1555***4567"
    assert record["transcript"][1] == {"role": "caller", "text": "order 42 please",
                                       "offset_seconds": 1.0, "interrupted": False,
                                       "heard_seconds": None}
    assert record["tool_calls"] == [{"name": "lookup_order", "argument_keys": ["order_id"],
                                     "offset_seconds": 2.2, "duration_seconds": 0.2,
                                     "error": None}]


def test_an_interrupted_reply_is_cut_where_the_caller_stopped_hearing_it() -> None:
    r = CallRecorder()
    r.started(call_sid="CA1", direction="inbound", caller="", called="", now=0.0, wall=0.0)
    r.event("reply.started", {"reply_id": "r1"}, 1.0)
    for word, end_ms in [("The", 150), ("weather", 500), ("is", 700), ("sunny", 1200)]:
        r.event("agent.words", {"reply_id": "r1", "text": word, "end_ms": end_ms}, 1.0)
    r.event("reply.audio", {"reply_id": "r1"}, 1.1)
    r.event("barge-in", {}, 1.9)  # 0.8 s after the caller started hearing it
    r.event("transcript.agent", {"reply_id": "r1", "text": "The weather is sunny",
                                 "interrupted": True}, 1.95)
    r.event("reply.interrupted", {"reply_id": "r1"}, 1.95)
    (turn,) = r.record(2.0)["transcript"]
    assert turn == {"role": "agent", "text": "The weather is", "offset_seconds": 1.1,
                    "interrupted": True, "heard_seconds": 0.8}
    assert r.record(2.0)["barge_ins"] == 1


def test_a_reply_whose_mark_came_back_flushed_counts_as_interrupted() -> None:
    r = CallRecorder()
    r.started(call_sid="CA1", direction="inbound", caller="", called="", now=0.0, wall=0.0)
    r.event("reply.started", {"reply_id": "r1"}, 0.5)
    r.event("reply.audio", {"reply_id": "r1"}, 0.5)
    r.event("transcript.agent", {"reply_id": "r1", "text": "A long answer."}, 0.6)
    r.event("barge-in", {}, 1.5)
    r.event("reply.flushed", {"reply_id": "r1"}, 1.52)
    (turn,) = r.record(2.0)["transcript"]
    assert turn["interrupted"] is True and turn["heard_seconds"] == 1.0
    assert turn["text"] == "A long answer."  # no word timings: the agent's text is kept


def test_transcripts_are_redacted_unless_turned_off() -> None:
    for redacting, expected in ((True, "card [redacted] at 10:30"),
                                (False, "card 4111 1111 1111 1111 at 10:30")):
        r = CallRecorder(redact_transcripts=redacting)
        r.started(call_sid="CA1", direction="inbound", caller="", called="", now=0, wall=0)
        r.event("transcript.user", {"text": "card 4111 1111 1111 1111 at 10:30"}, 1.0)
        assert r.record(1.0)["transcript"][0]["text"] == expected


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.99) == 4.0


# ---------------------------------------------------------------------- the files


def test_records_go_to_a_file_per_utc_day(tmp_path: Path) -> None:
    log = RecordLog(tmp_path / "calls")
    late = dt.datetime(2026, 12, 1, 23, 59, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    assert log.append({"call_sid": "CA1"}, now=late).name == "calls-2026-12-02.jsonl"
    assert log.append({"call_sid": "CA2"}, now=DAY).name == "calls-2026-12-01.jsonl"
    assert [r["call_sid"] for r in read_records(tmp_path / "calls")] == ["CA2", "CA1"]


WRITER = """
import sys
from relay.record_log import RecordLog
log = RecordLog(sys.argv[1])
record = {"call_sid": "CA", "transcript": [{"text": "x" * 20000}]}
print("ready", flush=True)
n = 0
while True:
    n += 1
    log.append({**record, "n": n})
"""


def test_a_writer_killed_mid_write_leaves_valid_json_lines(tmp_path: Path) -> None:
    directory = tmp_path / "calls"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)],
                            stdout=subprocess.PIPE, cwd=Path(__file__).parent.parent)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(0.3)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        proc.stdout.close() if proc.stdout else None
    (path,) = directory.iterdir()
    RecordLog(directory).repair()  # what start-up does (and every append, under its lock)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # the file ends with a whole line
    numbers = [orjson.loads(line)["n"] for line in lines[:-1]]
    assert len(numbers) > 3 and numbers == list(range(1, len(numbers) + 1))
    RecordLog(directory).append({"n": "next"})
    assert orjson.loads(path.read_bytes().split(b"\n")[-2]) == {"n": "next"}


def test_a_torn_tail_is_cut_by_the_next_append(tmp_path: Path) -> None:
    log = RecordLog(tmp_path)
    path = log.append({"n": 1}, now=DAY)
    with path.open("ab") as f:
        f.write(b'{"n": 2, "transcr')  # a writer killed mid-line
    log.append({"n": 3}, now=DAY)
    assert [r["n"] for r in read_records(tmp_path)] == [1, 3]
    assert path.read_bytes().count(b"\n") == 2


# ---------------------------------------------------------------------- the report


def write_history(directory: Path) -> None:
    log = RecordLog(directory)
    old = (DAY - dt.timedelta(days=3)).timestamp()
    log.append(recorded_call(sid="CAold", wall=old, response=2.5), now=DAY - dt.timedelta(days=3))
    for i, response in enumerate([0.4, 0.5, 0.6, 0.9]):
        log.append(recorded_call(sid=f"CA{i}", wall=DAY.timestamp() + i, response=response,
                                 tool_error="no such order" if i == 3 else None,
                                 reason="agent ended the call" if i == 0 else "caller hung up",
                                 outcome=Outcome.COMPLETED if i == 0 else Outcome.CALLER_HUNG_UP),
                   now=DAY)


def test_the_report_summarizes_outcomes_latencies_tools_and_reasons(tmp_path: Path,
                                                                   capsys) -> None:
    write_history(tmp_path)
    assert report.main([str(tmp_path), "--json"], env={}) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["calls"] == 5 and summary["since"] is None
    assert summary["outcomes"] == {"caller_hung_up": 4, "completed": 1}
    assert summary["response_seconds"] == {"p50": 0.6, "p90": 2.5, "p99": 2.5, "max": 2.5}
    assert summary["first_audio_seconds"]["p50"] == 0.2
    assert summary["duration_seconds"]["max"] == 5.0
    assert [r["call_sid"] for r in summary["slowest"]] == ["CAold", "CA3", "CA2", "CA1", "CA0"]
    assert summary["tools"] == {"lookup_order": {"calls": 5, "errors": 1, "error_rate": 0.2,
                                                 "p50_seconds": 0.2, "max_seconds": 0.2}}
    assert summary["end_reasons"] == [{"reason": "caller hung up", "calls": 4},
                                      {"reason": "agent ended the call", "calls": 1}]


def test_the_report_since_keeps_recent_calls_only() -> None:
    records = [recorded_call(sid="CAold", wall=(DAY - dt.timedelta(days=3)).timestamp()),
               recorded_call(sid="CAnew", wall=DAY.timestamp())]
    now = DAY + dt.timedelta(hours=1)
    assert report.summarize(records, now=now, since=report.parse_since("24h"))["calls"] == 1
    assert report.summarize(records, now=now, since=report.parse_since("7d"))["calls"] == 2
    with pytest.raises(ValueError):
        report.parse_since("yesterday")


def test_the_report_prints_tables_from_the_command_line(tmp_path: Path) -> None:
    write_history(tmp_path)
    done = subprocess.run([sys.executable, "-m", "relay.report", str(tmp_path)],
                          capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("5 calls\n")
    assert "caller_hung_up" in out and "80%" in out
    assert "lookup_order" in out and "20%" in out
    assert "slowest calls" in out and "CAold" in out
    empty = subprocess.run([sys.executable, "-m", "relay.report", str(tmp_path), "--since",
                            "1s"], capture_output=True, text=True, timeout=30,
                           cwd=Path(__file__).parent.parent)
    assert empty.stdout == "0 calls since " + empty.stdout.split("since ")[1]


def test_the_last_records_come_from_the_newest_days(tmp_path: Path) -> None:
    log = RecordLog(tmp_path)
    for day in range(3):
        for i in range(3):
            log.append({"call_sid": f"CA{day}{i}"}, now=DAY + dt.timedelta(days=day))
    with (tmp_path / "calls-2026-12-03.jsonl").open("ab") as f:
        f.write(b"{not json\n")  # a line a full disk cut short
    assert [r["call_sid"] for r in read_records(tmp_path, limit=4)] == [
        "CA12", "CA20", "CA21", "CA22"]
    assert len(read_records(tmp_path)) == 9
