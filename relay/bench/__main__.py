"""``python -m relay.bench``: load-test the real relay next to a bare relay (the floor).

Each level runs N simulated Twilio calls at real-time pace (one 20 ms μ-law frame per call)
through a freshly started relay process pinned to core 0, with the load generator and a fake
agent that echoes every frame in this process, pinned to core 1. It prints, per level, the
relay's CPU time per relayed frame, its CPU and memory, the echo round-trip latency, frame
loss/duplication/reordering/alteration, the load side's own CPU and hypervisor steal, for our
relay ("ours": ``python app.py``, calls set up through the signed ``/twiml`` webhook) and for the
floor (``relay/bench/floor.py``, a bare websockets relay with no webhook: calls go straight to
its ``/media`` socket), with the ratio ours/floor; and writes everything to a JSON file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

try:
    import psutil  # noqa: F401  (the bench extra: CPU and memory of the measured processes)
except ImportError:  # pragma: no cover - depends on what is installed
    sys.exit('python -m relay.bench needs the "bench" extra: pip install -e ".[bench]"')

from relay.bench import report  # noqa: E402
from relay.bench.fake_agent import FakeAgent  # noqa: E402
from relay.bench.runner import LevelOptions, find_max, measure, speech_start  # noqa: E402
from relay.bench.target import LOAD_CORE, PROJECT_ROOT, RELAY_CORE, can_pin  # noqa: E402

RELAYS = ("ours", "floor")


def _calls(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or any(v < 1 or v > 10000 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of call counts, 1..10000")
    return values


def _relays(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    if not values or any(v not in RELAYS for v in values):
        raise argparse.ArgumentTypeError("a comma-separated subset of: ours,floor")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m relay.bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Columns: frames/s = frames crossing the relay per second, both directions (an "
            "echoed frame counts twice); µs/frame = relay CPU time (user+system) per such frame; "
            "CPU% = relay CPU, % of one core; core% = how busy the relay's core was, kernel "
            "network work (softirq) included; RSS MB = relay peak RSS under load; KB/call = "
            "(RSS under load - idle RSS) / calls; p50/p99/max = round trip load generator -> "
            "relay -> fake agent -> relay -> load generator on loopback, for frames sent in the "
            "window; lost/dup/reord/alt = frames lost, duplicated, reordered, altered; load% = "
            "CPU of the load side (load generator + fake agent, one process), % of one core; "
            "other% = CPU used by other processes (high means a busy machine: figures "
            "disturbed), % of one core; steal% = hypervisor steal over the window. The "
            "ratio row is ours/floor."
        ),
    )
    p.add_argument("--calls", type=_calls, default=[10, 50, 100, 200], metavar="N,N,…",
                   help="concurrency levels: calls streaming at once (default 10,50,100,200)")
    p.add_argument("--seconds", type=float, default=10.0,
                   help="measurement window per level, after warm-up (default 10)")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of steady streaming before the window opens (default 2)")
    p.add_argument("--relays", type=_relays, default=list(RELAYS), metavar="ours,floor",
                   help="which relays to run (default both: ours,floor)")
    p.add_argument("--find-max", action="store_true",
                   help="also search the most calls one core sustains with p99 < 20 ms and no "
                        "loss, for each relay (doubling, then bisection; ~2 min per relay)")
    p.add_argument("--find-max-seconds", type=float, default=5.0,
                   help="measurement window of each --find-max probe (default 5)")
    p.add_argument("--find-max-start", type=int, default=25,
                   help="first --find-max probe, in calls (default 25)")
    p.add_argument("--find-max-limit", type=int, default=1600,
                   help="highest --find-max probe, in calls (default 1600)")
    p.add_argument("--speech-calls", type=int, default=10,
                   help="calls for the start-of-speech probe of ours, greeting on; 0 skips it "
                        "(default 10)")
    p.add_argument("--noise-limit", type=float, default=10.0, metavar="PCT",
                   help="a level is 'noisy' when CPU used by neither the relay nor the load side "
                        "exceeds PCT %% of a core, or steal exceeds 5 %% (default 10)")
    p.add_argument("--noisy-retries", type=int, default=1, metavar="N",
                   help="run a noisy level again up to N times and keep the quietest "
                        "(default 1)")
    p.add_argument("--json", type=Path, default=Path("bench-results.json"), metavar="PATH",
                   help="where to write all results as JSON (default bench-results.json)")
    p.add_argument("--log-dir", type=Path, default=None,
                   help="where the relays' output goes, one file per level (default: a new "
                        "temporary directory, kept and printed)")
    p.add_argument("--no-pin", action="store_true",
                   help=f"do not pin the relay to core {RELAY_CORE} and the load side to core "
                        f"{LOAD_CORE}")
    return p.parse_args(argv)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    info = report.machine_info()
    pinned = can_pin() and not args.no_pin
    info["pinned"] = (f"relay on core {RELAY_CORE}, load generator + fake agent on core "
                      f"{LOAD_CORE}" if pinned else "not pinned")
    print(report.machine_line(info))
    print(f"pinning: {info['pinned']}; relay logs: {args.log_dir}")
    if "ours" in args.relays and not (PROJECT_ROOT / "app.py").exists():
        raise SystemExit(f"no app.py in {PROJECT_ROOT}: run with --relays floor")
    opts = LevelOptions(seconds=args.seconds, warmup=args.warmup, log_dir=args.log_dir,
                        pin=pinned, noise_limit=args.noise_limit,
                        noisy_retries=args.noisy_retries)
    data: dict[str, Any] = {"machine": info, "settings": {
        "calls": args.calls, "seconds": args.seconds, "warmup": args.warmup,
        "relays": args.relays, "frame_ms": 20, "frame_bytes": 160,
        "noise_limit_pct": args.noise_limit, "noisy_retries": args.noisy_retries,
    }, "levels": []}
    started = time.monotonic()
    async with FakeAgent() as agent:
        for calls in args.calls:
            for kind in args.relays:
                print(f"level: {kind}, {calls} calls, {args.seconds:g} s …", flush=True)
                result = await measure(kind, calls, agent, opts)
                data["levels"].append(result)
        if "ours" in args.relays and args.speech_calls > 0:
            print(f"start of speech: ours, {args.speech_calls} calls …", flush=True)
            data["start_of_speech"] = await speech_start(agent, args.speech_calls, opts)
        if args.find_max:
            fm_opts = LevelOptions(seconds=args.find_max_seconds, warmup=1.0,
                                   log_dir=args.log_dir, pin=pinned,
                                   noise_limit=args.noise_limit,
                                   noisy_retries=args.noisy_retries)
            data["find_max"] = [
                await find_max(kind, agent, fm_opts, start=args.find_max_start,
                               limit=args.find_max_limit)
                for kind in args.relays
            ]
    data["runtime_s"] = round(time.monotonic() - started, 1)
    return data


def print_report(data: dict[str, Any]) -> None:
    print()
    print(report.machine_line(data["machine"]))
    print(f"pinning: {data['machine']['pinned']}")
    print(report.table(data["levels"]))
    if "start_of_speech" in data:
        print(report.speech_line(data["start_of_speech"]))
    if "find_max" in data:
        print(report.find_max_lines(data["find_max"]))
    for level in data["levels"]:
        if level.get("problems") or "error" in level:
            print(f"{level['relay']} {level['calls']}: {level.get('error', '')} "
                  f"{level.get('problems', [])[:3]}")
        findings = level.get("relay_log") or {}
        if findings.get("errors"):
            print(f"{level['relay']} {level['calls']}: {findings['errors']} error line(s) in "
                  f"{level['log']}: {findings['examples'][:2]}")
    print(f"runtime {data['runtime_s']} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.log_dir is None:
        args.log_dir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    args.log_dir.mkdir(parents=True, exist_ok=True)
    if can_pin() and not args.no_pin:
        os.sched_setaffinity(0, {LOAD_CORE})
    run: Callable[[Coroutine[Any, Any, dict[str, Any]]], dict[str, Any]] = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        run = uvloop.run
    data = run(bench(args))
    report.write_json(args.json, data)
    print_report(data)
    print(f"results: {args.json}")
    return 1 if any("error" in level for level in data["levels"]) else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
