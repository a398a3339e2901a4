"""``python -m relay.report [DIR] [--since 24h|7d] [--json]``: a summary of the call records.

Reads every ``calls-*.jsonl`` in DIR (default ``CALL_LOG_DIR``), keeps the records that started
within ``--since`` (all of them without it) and prints calls by outcome, duration and latency
percentiles, the slowest calls, tool error rates and the most common end reasons; ``--json``
prints the same as one JSON object (its shape is in the README). ``summarize`` is pure:
records and the time in, the summary out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
from dotenv import load_dotenv

from relay.call_record import percentile
from relay.config import Settings
from relay.errors import ConfigError
from relay.record_log import iter_records, record_files

SLOWEST = 5
TOP_REASONS = 5
_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> dt.timedelta:
    """``90s``, ``30m``, ``24h``, ``7d``.

    Raises:
        ValueError: anything else.
    """
    found = _SINCE.match(text.strip())
    if not found:
        raise ValueError(f"{text!r} is not a duration like 24h or 7d")
    return dt.timedelta(seconds=float(found.group(1)) * _UNIT[found.group(2)])


def _started(record: Mapping[str, Any]) -> dt.datetime | None:
    value = record.get("started_at")
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 0.5), "p90": percentile(values, 0.9),
            "p99": percentile(values, 0.99), "max": max(values) if values else None}


def _numbers(records: Iterable[Mapping[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in records if isinstance(r.get(key), int | float)]


def summarize(records: Iterable[Mapping[str, Any]], *, now: dt.datetime,
              since: dt.timedelta | None = None) -> dict[str, Any]:
    """The report of ``records`` that started within ``since`` of ``now`` (all with None)."""
    cutoff = now - since if since is not None else None
    kept = [r for r in records
            if cutoff is None or ((started := _started(r)) is not None and started >= cutoff)]
    outcomes = Counter(str(r.get("outcome")) for r in kept)
    responses = [float(v) for r in kept for v in r.get("response_seconds") or ()
                 if isinstance(v, int | float)]
    tools: dict[str, dict[str, Any]] = {}
    for record in kept:
        for call in record.get("tool_calls") or ():
            entry = tools.setdefault(str(call.get("name")), {"calls": 0, "errors": 0, "_s": []})
            entry["calls"] += 1
            entry["errors"] += call.get("error") is not None
            if isinstance(call.get("duration_seconds"), int | float):
                entry["_s"].append(call["duration_seconds"])
    for entry in tools.values():
        durations = entry.pop("_s")
        entry["error_rate"] = round(entry["errors"] / entry["calls"], 4)
        entry["p50_seconds"] = percentile(durations, 0.5)
        entry["max_seconds"] = max(durations) if durations else None

    def slowness(r: Mapping[str, Any]) -> float:
        values = [r.get("response_max_seconds"), r.get("first_audio_seconds")]
        return max((float(v) for v in values if isinstance(v, int | float)), default=-1.0)

    slowest = sorted((r for r in kept if slowness(r) >= 0), key=slowness, reverse=True)[:SLOWEST]
    reasons = Counter(str(r.get("end_reason")) for r in kept if r.get("end_reason"))
    return {
        "calls": len(kept),
        "since": cutoff.isoformat().replace("+00:00", "Z") if cutoff else None,
        "outcomes": dict(outcomes.most_common()),
        "duration_seconds": _stats(_numbers(kept, "duration_seconds")),
        "first_audio_seconds": _stats(_numbers(kept, "first_audio_seconds")),
        "response_seconds": _stats(responses),
        "barge_ins": sum(int(r.get("barge_ins") or 0) for r in kept),
        "slowest": [{key: r.get(key) for key in (
            "call_sid", "started_at", "outcome", "duration_seconds", "first_audio_seconds",
            "response_p50_seconds", "response_max_seconds")} for r in slowest],
        "tools": dict(sorted(tools.items())),
        "end_reasons": [{"reason": reason, "calls": n}
                        for reason, n in reasons.most_common(TOP_REASONS)],
    }


def _ms(value: Any) -> str:
    return "–" if value is None else f"{value * 1000:.0f}"


def render(summary: Mapping[str, Any]) -> str:
    """The summary as tables for a terminal."""
    lines = [f"{summary['calls']} calls" + (f" since {summary['since']}" if summary["since"]
                                             else "")]
    if not summary["calls"]:
        return lines[0] + "\n"
    lines += ["", f"{'outcome':<24}{'calls':>7}{'share':>8}"]
    for outcome, n in summary["outcomes"].items():
        lines.append(f"{outcome:<24}{n:>7}{n / summary['calls']:>8.0%}")
    lines += ["", f"{'':<24}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}"]
    d = summary["duration_seconds"]
    lines.append(f"{'duration (s)':<24}" + "".join(
        f"{'–' if d[k] is None else format(d[k], '.1f'):>9}" for k in ("p50", "p90", "p99", "max")))
    for key, label in (("first_audio_seconds", "first audio (ms)"),
                       ("response_seconds", "response (ms)")):
        s = summary[key]
        lines.append(f"{label:<24}" + "".join(f"{_ms(s[k]):>9}" for k in ("p50", "p90", "p99",
                                                                           "max")))
    lines.append(f"barge-ins: {summary['barge_ins']}")
    if summary["slowest"]:
        lines += ["", "slowest calls", f"{'call':<36}{'outcome':<22}{'first audio':>12}"
                  f"{'resp. p50':>10}{'resp. max':>10}"]
        for r in summary["slowest"]:
            lines.append(f"{str(r['call_sid']):<36}{str(r['outcome']):<22}"
                         f"{_ms(r['first_audio_seconds']):>12}{_ms(r['response_p50_seconds']):>10}"
                         f"{_ms(r['response_max_seconds']):>10}")
    if summary["tools"]:
        lines += ["", f"{'tool':<28}{'calls':>7}{'errors':>8}{'rate':>7}{'p50 ms':>9}"]
        for name, t in summary["tools"].items():
            lines.append(f"{name:<28}{t['calls']:>7}{t['errors']:>8}{t['error_rate']:>7.0%}"
                         f"{_ms(t['p50_seconds']):>9}")
    if summary["end_reasons"]:
        lines += ["", "top end reasons"]
        lines += [f"{r['calls']:>7}  {r['reason']}" for r in summary["end_reasons"]]
    return "\n".join(lines) + "\n"


def call_log_dir(env: Mapping[str, str] | None, parser: argparse.ArgumentParser) -> str | None:
    """``CALL_LOG_DIR`` as the relay reads it: from ``.env`` and the environment by default."""
    if env is None:
        load_dotenv()
        env = os.environ
    try:
        return Settings.from_env(env).call_log_dir
    except ConfigError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relay.report",
                                     description="Summarize the relay's call records.")
    parser.add_argument("dir", nargs="?", help="the records' folder (default: CALL_LOG_DIR)")
    parser.add_argument("--since", help="only calls that started this long ago or later: "
                        "90s, 30m, 24h, 7d (default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    args = parser.parse_args(argv)
    directory = args.dir or call_log_dir(env, parser)
    if not directory:
        parser.error("no folder given and CALL_LOG_DIR is not set")
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        parser.error(str(exc))
    if not os.path.isdir(directory):
        print(f"relay.report: {directory} is not a folder", file=sys.stderr)
        return 2
    if not record_files(directory):
        print(f"relay.report: no calls-*.jsonl files in {directory}", file=sys.stderr)
    summary = summarize(iter_records(directory), now=dt.datetime.now(dt.UTC), since=since)
    if args.json:
        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
