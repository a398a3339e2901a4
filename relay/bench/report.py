"""Machine information, the results table (ours, floor, ratio per level) and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

# (header, width, decimals, how to read it from a level)
COLUMNS: tuple[tuple[str, int, int, Callable[[dict[str, Any]], Any]], ...] = (
    ("calls", 5, 0, lambda lv: lv["calls"]),
    ("relay", 5, 0, lambda lv: lv["relay"]),
    ("frames/s", 8, 0, lambda lv: lv.get("frames_per_s")),
    ("µs/frame", 8, 1, lambda lv: lv.get("cpu_us_per_frame")),
    ("CPU%", 5, 1, lambda lv: lv.get("cpu_pct")),
    ("core%", 5, 0, lambda lv: lv.get("relay_core_busy_pct")),
    ("RSS MB", 6, 1, lambda lv: lv.get("rss_load_mb")),
    ("KB/call", 7, 1, lambda lv: lv.get("rss_per_call_kb")),
    ("p50 ms", 6, 2, lambda lv: _lat(lv, "p50")),
    ("p99 ms", 6, 2, lambda lv: _lat(lv, "p99")),
    ("max ms", 7, 2, lambda lv: _lat(lv, "max")),
    ("lost", 4, 0, lambda lv: _acc(lv, "lost")),
    ("dup", 3, 0, lambda lv: _acc(lv, "duplicated")),
    ("reord", 5, 0, lambda lv: _acc(lv, "reordered")),
    ("alt", 3, 0, lambda lv: _acc(lv, "altered")),
    ("load%", 5, 0, lambda lv: lv.get("load_cpu_pct")),
    ("other%", 6, 0, lambda lv: lv.get("other_cpu_pct")),
    ("steal%", 6, 1, lambda lv: lv.get("steal_pct")),
)
# ours/floor ratios: (column header, key of a level or of its latency_ms)
RATIOS = (("µs/frame", "cpu_us_per_frame"), ("CPU%", "cpu_pct"), ("RSS MB", "rss_load_mb"),
          ("KB/call", "rss_per_call_kb"), ("p50 ms", "p50"), ("p99 ms", "p99"),
          ("max ms", "max"))


def _lat(level: dict[str, Any], key: str) -> Any:
    return (level.get("latency_ms") or {}).get(key)


def _acc(level: dict[str, Any], key: str) -> Any:
    return (level.get("frames") or {}).get(key)


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                         "")
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for dist in ("websockets", "uvicorn", "starlette", "uvloop", "httptools", "orjson"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "packages": versions,
    }


def machine_line(info: dict[str, Any]) -> str:
    pk = info["packages"]
    return (f"machine: {info['cores']} cores ({info['cpu_model'] or 'unknown CPU'}), "
            f"{info['implementation']} {info['python']}, {info['platform']}\n"
            f"packages: " + ", ".join(f"{k} {v}" for k, v in pk.items() if v))


def _fmt(value: Any, width: int, digits: int) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, float):
        text = f"{value:.{digits}f}"
    else:
        text = str(value)
    return text.rjust(width)


def _row(level: dict[str, Any]) -> str:
    flag = " E" if "error" in level else ""
    flag += " L" if level.get("load_saturated") else ""
    flag += " N" if level.get("noisy") else ""
    return "  ".join(_fmt(get(level), w, d) for _, w, d, get in COLUMNS) + flag


def ratios(ours: dict[str, Any], floor: dict[str, Any]) -> dict[str, float | None]:
    """ours / floor for the cost and latency figures."""
    out: dict[str, float | None] = {}
    for _, key in RATIOS:
        a = ours.get(key, _lat(ours, key))
        b = floor.get(key, _lat(floor, key))
        ok = isinstance(a, int | float) and isinstance(b, int | float) and b > 0
        out[key] = round(a / b, 2) if ok else None
    return out


def _ratio_row(r: dict[str, float | None]) -> str:
    by_header = {header: key for header, key in RATIOS}
    cells = []
    for header, width, _, _ in COLUMNS:
        if header == "relay":
            text = "ratio"
        elif header in by_header:
            value = r.get(by_header[header])
            text = "-" if value is None else f"{value:.2f}x"
        else:
            text = ""
        cells.append(text.rjust(width))
    return "  ".join(cells).rstrip()


def table(levels: list[dict[str, Any]]) -> str:
    """Per concurrency level: ours, floor and ours/floor."""
    header = "  ".join(name.rjust(w) for name, w, _, _ in COLUMNS)
    lines = [header, "-" * len(header)]
    by_calls: dict[int, dict[str, dict[str, Any]]] = {}
    for level in levels:
        by_calls.setdefault(level["calls"], {})[level["relay"]] = level
    for calls in sorted(by_calls):
        group = by_calls[calls]
        lines.extend(_row(group[kind]) for kind in ("ours", "floor") if kind in group)
        if "ours" in group and "floor" in group:
            lines.append(_ratio_row(ratios(group["ours"], group["floor"])))
    lines.append("flags: L = load side saturated (its process > 90 % of its core, or the core "
                 "> 97 % busy): figures bound by the load, not the relay; N = noisy: other "
                 "work on the machine (other%) or steal was high, even after a rerun; E = level "
                 "failed (see JSON)")
    return "\n".join(lines)


def find_max_lines(results: list[dict[str, Any]]) -> str:
    lines = []
    by_kind = {r["relay"]: r for r in results}
    for r in results:
        note = " (load side saturated: a lower bound)" if r["load_limited"] else ""
        note += " (busy machine: a lower bound)" if r.get("noisy") else ""
        lines.append(f"max calls on one core, p99 < 20 ms and no loss: {r['relay']} "
                     f"{r['max_calls']} (first failing: {r['first_failing']}){note}")
    if "ours" in by_kind and "floor" in by_kind and by_kind["floor"]["max_calls"]:
        lines.append(f"calls per core ours/floor: "
                     f"{by_kind['ours']['max_calls'] / by_kind['floor']['max_calls']:.2f}")
    return "\n".join(lines)


def speech_line(s: dict[str, Any]) -> str:
    return (f"start of speech (ours, agent greets at session.ready, {s['measured']}/{s['calls']}"
            f" calls): p50 {s['p50_ms']} ms, max {s['max_ms']} ms from Twilio start to first "
            f"media")


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
