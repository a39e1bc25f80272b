"""What /diagnostics tells an operator (kp3d_ros.ros.health, NodeStats): frame budget, stale input, input rate,
lifecycle state and a failed configure."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("diagnostic_msgs")

from diagnostic_msgs.msg import DiagnosticStatus

from kp3d_ros.core.params import defaults
from kp3d_ros.ros.diagnostics import NodeStats
from kp3d_ros.ros.health import assess

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
PARAMS = {**defaults(), "diagnostics.frame_budget_ms": 100.0, "diagnostics.budget_error_frames": 3,
          "diagnostics.stale_input_s": 1.0, "diagnostics.min_input_rate_hz": 5.0}


def _stats_after(latencies_ms: list[float], period_s: float = 0.1) -> NodeStats:
    """NodeStats fed one cloud per latency, period_s apart in stamps (the arrival times are now)."""
    stats = NodeStats()
    for i, latency in enumerate(latencies_ms):
        stats.on_input(int(i * period_s * 1e9))
        stats.on_output(int(i * period_s * 1e9), latency, {}, 1, 0, PARAMS["diagnostics.frame_budget_ms"])
    return stats


def _values(stats: NodeStats, **changes) -> dict:
    return {**stats.snapshot(), "seconds_active": 10.0, **changes}


def test_frames_over_budget_warn_then_error_in_a_row():
    assert assess(_values(_stats_after([50, 60, 40]), input_rate_hz=10.0), PARAMS, "active")[0] == OK
    stats = _stats_after([50, 150, 40])
    level, message = assess(_values(stats, input_rate_hz=10.0), PARAMS, "active")
    assert level == WARN and "1 frames over the 100 ms budget" in message
    stats = _stats_after([50, 150, 160, 170])
    assert stats.over_budget == 3 and stats.over_budget_streak == 3
    level, message = assess(_values(stats, input_rate_hz=10.0), PARAMS, "active")
    assert level == ERROR and message.startswith("3 frames in a row over the 100 ms budget")
    stats.on_output(0, 20.0, {}, 1, 0, 100.0)  # one frame within the budget ends the run
    assert stats.over_budget_streak == 0
    assert assess(_values(stats, input_rate_hz=10.0), PARAMS, "active")[0] == WARN


def test_stale_input_warns_after_the_set_time():
    stats = _stats_after([50, 50])
    assert assess(_values(stats, input_rate_hz=10.0), PARAMS, "active")[0] == OK
    stats.last_input_s = time.monotonic() - 2.5
    level, message = assess(_values(stats), PARAMS, "active")
    assert level == WARN and "stale input: no cloud for 2.5 s" in message
    fresh = NodeStats()  # active and never a cloud: stale once the node has waited longer than the limit
    assert assess({**fresh.snapshot(), "seconds_active": 0.5}, PARAMS, "active")[0] == OK
    level, message = assess({**fresh.snapshot(), "seconds_active": 3.0}, PARAMS, "active")
    assert level == WARN and "no cloud yet" in message


def test_input_rate_below_the_minimum_warns():
    stats = _stats_after([50] * 6)
    level, message = assess(_values(stats, input_rate_hz=2.0), PARAMS, "active")
    assert level == WARN and "input rate 2.0 Hz below 5 Hz" in message
    assert assess(_values(stats, input_rate_hz=2.0), {**PARAMS, "diagnostics.min_input_rate_hz": 0.0},
                  "active")[0] == OK


def test_states_other_than_active_and_a_failed_configure():
    stats = NodeStats()
    level, message = assess(_values(stats), PARAMS, "inactive")
    assert level == OK and message == "inactive: not processing clouds"
    level, message = assess(_values(stats), PARAMS, "unconfigured", "invalid parameters: input.max_points: ...")
    assert level == ERROR and "configure failed: invalid parameters: input.max_points" in message


def test_overlay_offsets_and_skips_are_counted():
    stats = NodeStats()
    stats.on_overlay(-20_000_000)
    stats.on_overlay(None)
    stats.on_overlay(35_000_000)
    values = stats.snapshot()
    assert values["overlays_published"] == 2 and values["overlay_skipped_no_image_in_time"] == 1
    assert values["overlay_offset_max_ms"] == pytest.approx(35.0)
