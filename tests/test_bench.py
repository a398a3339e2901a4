"""Smoke test of ``python -m relay.bench``: a short run through our relay and the floor.

It checks that frames crossed both relays intact (nothing lost, duplicated, reordered or
altered), that our relay marked the agent's replies and that the greeting reached the caller;
it never judges the timing figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "relay.bench", "--calls", "3", "--seconds", "2", "--warmup", "0.5",
         "--speech-calls", "2", "--noisy-retries", "0", "--json", str(out),
         "--log-dir", str(tmp_path / "logs")],
        cwd=ROOT, capture_output=True, text=True, timeout=50, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())

    levels = {level["relay"]: level for level in data["levels"]}
    assert set(levels) == {"ours", "floor"}
    for kind, level in levels.items():
        assert "error" not in level, (kind, level["error"])
        frames = level["frames"]
        assert frames["calls_open"] == 3 and frames["calls_failed"] == 0, (kind, frames)
        assert frames["calls_silent"] == 0, (kind, frames)
        assert frames["frames_echoed"] > 0 and level["frames_per_s"] > 0, (kind, frames)
        assert (frames["lost"], frames["duplicated"], frames["reordered"],
                frames["altered"]) == (0, 0, 0, 0), (kind, frames)
        assert level["agent"]["bad_messages"] == 0, (kind, level["agent"])
        assert level["latency_ms"]["samples"] > 0
        if kind == "ours":  # the agent ends a reply every 2 s: the relay marks each one
            assert level["agent"]["turns"] > 0 and frames["marks"] > 0, (frames, level["agent"])

    speech = data["start_of_speech"]
    assert speech["measured"] == 2, speech
