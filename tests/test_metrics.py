"""The metrics registry on its own: frame counters read at scrape time, bounded labels."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from relay.metrics import MAX_ERROR_CODES, Metrics
from relay.outcomes import Outcome


@dataclass
class Counts:
    frames_to_agent: int = 0
    frames_to_caller: int = 0
    dropped_before_ready: int = 0
    dropped_muted: int = 0


@dataclass
class Live:
    counters: Counts


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_frames_are_read_from_the_live_calls_and_kept_once_a_call_ends() -> None:
    live: list[Live] = []
    sessions = [0]
    metrics = Metrics(lambda: live, lambda: sessions[0], process_collectors=False)
    call = Live(Counts(frames_to_agent=10, frames_to_caller=7, dropped_before_ready=2))
    live.append(call)
    sessions[0] = 1
    call.counters.frames_to_agent += 5  # the hot path: a plain increment, nothing else
    s = samples(metrics)
    assert s[("relay_frames_total", (("direction", "to_agent"),))] == 15
    assert s[("relay_frames_dropped_total", (("reason", "before_ready"),))] == 2
    assert s[("relay_calls_active", ())] == 1 and s[("relay_agent_sessions_open", ())] == 1
    live.remove(call)  # as the monitor does, in the same step as counting the call
    metrics.call_ended(Outcome.CALLER_HUNG_UP, call.counters)
    sessions[0] = 0
    s = samples(metrics)
    assert s[("relay_frames_total", (("direction", "to_agent"),))] == 15
    assert s[("relay_frames_total", (("direction", "to_caller"),))] == 7
    assert s[("relay_calls_active", ())] == 0
    assert s[("relay_calls_total", (("outcome", "caller_hung_up"),))] == 1
    assert all(("relay_calls_total", (("outcome", o.value),)) in s for o in Outcome)


def test_labels_stay_bounded() -> None:
    metrics = Metrics(list, lambda: 0, process_collectors=False)
    for i in range(MAX_ERROR_CODES + 10):
        metrics.agent_error(f"code_{i}")
    metrics.agent_reconnected("resumed")
    s = samples(metrics)
    codes = {dict(labels)["code"] for name, labels in s if name == "relay_agent_errors_total"}
    assert len(codes) == MAX_ERROR_CODES + 1 and "other" in codes
    assert s[("relay_agent_errors_total", (("code", "other"),))] == 10
    assert s[("relay_agent_reconnects_total", (("result", "resumed"),))] == 1
