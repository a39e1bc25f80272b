"""The node's health for an operator: the /diagnostics level and message from its values and parameters.

Every problem found is listed in the message, worst first; the level is the worst one.
"""

from __future__ import annotations

import math
from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus

from kp3d_ros.ros.diagnostics import RECENT_S

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


def assess(values: dict[str, Any], params: dict[str, Any], state: str, configure_error: str = "") -> tuple[int, str]:
    """(level, message) of a node in lifecycle ``state`` with these /diagnostics values.

    Not active: OK with the state, or ERROR with the reason of a failed configure. Active: ERROR after
    diagnostics.budget_error_frames frames in a row over diagnostics.frame_budget_ms; WARN for a frame over
    budget in the last RECENT_S, stale input (no cloud for diagnostics.stale_input_s), an input rate below
    diagnostics.min_input_rate_hz, clouds that arrive but are not processed, clouds lost before the callback.
    """
    if state != "active":
        if configure_error:
            return ERROR, f"{state}: configure failed: {configure_error}"
        return OK, f"{state}: not processing clouds"
    problems: list[tuple[int, str]] = []
    budget = params["diagnostics.frame_budget_ms"]
    in_a_row = values["frames_over_budget_in_a_row"]
    if in_a_row >= params["diagnostics.budget_error_frames"]:
        problems.append((ERROR, f"{in_a_row} frames in a row over the {budget:g} ms budget"))
    elif values["frames_over_budget_recently"] > 0:
        problems.append((WARN, f"{values['frames_over_budget_recently']} frames over the {budget:g} ms budget "
                               f"in the last {RECENT_S:.0f} s"))
    since = values["seconds_since_last_cloud"]
    stale_s = params["diagnostics.stale_input_s"]
    if math.isnan(since) or since > stale_s:
        waited = values.get("seconds_active", 0.0)
        if not math.isnan(since) or waited > stale_s:
            text = "no cloud yet" if math.isnan(since) else f"no cloud for {since:.1f} s"
            problems.append((WARN, f"stale input: {text} (diagnostics.stale_input_s {stale_s:g})"))
    else:
        rate, minimum = values["input_rate_hz"], params["diagnostics.min_input_rate_hz"]
        if minimum > 0 and values["clouds_received"] > 2 and rate < minimum:
            problems.append((WARN, f"input rate {rate:.1f} Hz below {minimum:g} Hz"))
    if values["input_rate_hz"] > 0.0 and values["output_rate_hz"] == 0.0 and values["clouds_received"] > 2:
        problems.append((WARN, "clouds arrive but none are processed"))
    elif values.get("clouds_lost_recently", 0) > 0:
        problems.append((WARN, f"{values['clouds_lost_recently']} clouds lost before the callback in the last "
                               f"{RECENT_S:.0f} s (stamp gaps)"))
    summary = f"{values['output_rate_hz']:.1f} Hz, {values['people']} people"
    if not problems:
        return OK, summary
    problems.sort(key=lambda problem: problem[0], reverse=True)  # levels are bytes (b"\x00" ...): comparable
    return problems[0][0], "; ".join(text for _, text in problems) + f"; {summary}"
