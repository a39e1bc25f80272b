"""The node's counters, rates and latency windows, and their /diagnostics message."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

WINDOW = 300  # frames kept for rates and latency percentiles


class _Window:
    """The last WINDOW values with their monotonic arrival times."""

    def __init__(self) -> None:
        self.times: deque[float] = deque(maxlen=WINDOW)
        self.values: deque[float] = deque(maxlen=WINDOW)

    def add(self, value: float = 0.0, now: float | None = None) -> None:
        self.times.append(time.monotonic() if now is None else now)
        self.values.append(value)

    def rate_hz(self, now: float, span_s: float = 5.0) -> float:
        recent = [t for t in self.times if now - t <= span_s]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-9)

    def percentiles(self) -> tuple[float, float]:
        if not self.values:
            return float("nan"), float("nan")
        median, p99 = np.percentile(np.fromiter(self.values, dtype=np.float64), [50, 99])
        return float(median), float(p99)


class NodeStats:
    """Thread-safe counters of the node (callbacks and the processing thread both write)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.dropped = 0  # replaced by a newer cloud before processing
        self.malformed: Counter[str] = Counter()
        self.overlay_errors: Counter[str] = Counter()
        self.nonfinite_points = 0
        self.people_last = 0
        self._input = _Window()
        self._output = _Window()
        self._end_to_end = _Window()
        self._stages: dict[str, _Window] = {}
        self.frames: deque[tuple[int, float, int]] = deque(maxlen=WINDOW)  # (stamp_ns, end-to-end ms, people)

    def on_input(self) -> None:
        with self._lock:
            self.received += 1
            self._input.add()

    def on_dropped(self) -> None:
        with self._lock:
            self.dropped += 1

    def on_malformed(self, reason: str) -> None:
        with self._lock:
            self.malformed[reason] += 1

    def on_overlay_error(self, reason: str) -> None:
        with self._lock:
            self.overlay_errors[reason] += 1

    def on_output(self, stamp_ns: int, end_to_end_ms: float, stages_ms: dict[str, float], people: int,
                  nonfinite: int) -> None:
        with self._lock:
            self.frames.append((stamp_ns, end_to_end_ms, people))
            self.processed += 1
            self.people_last = people
            self.nonfinite_points += nonfinite
            self._output.add()
            self._end_to_end.add(end_to_end_ms)
            for stage, ms in stages_ms.items():
                self._stages.setdefault(stage, _Window()).add(float(ms))

    def recent_frames(self) -> list[tuple[int, float, int]]:
        """(input stamp ns, end-to-end latency ms, people) of the last WINDOW processed clouds."""
        with self._lock:
            return list(self.frames)

    def snapshot(self) -> dict[str, Any]:
        """Every number as a flat dict (names are the /diagnostics keys)."""
        now = time.monotonic()
        with self._lock:
            median, p99 = self._end_to_end.percentiles()
            out: dict[str, Any] = {
                "input_rate_hz": self._input.rate_hz(now),
                "output_rate_hz": self._output.rate_hz(now),
                "clouds_received": self.received,
                "clouds_processed": self.processed,
                "clouds_dropped_newer_arrived": self.dropped,
                "clouds_malformed": sum(self.malformed.values()),
                "nonfinite_points_dropped": self.nonfinite_points,
                "people": self.people_last,
                "latency_end_to_end_median_ms": median,
                "latency_end_to_end_p99_ms": p99,
            }
            for stage, window in sorted(self._stages.items()):
                stage_median, stage_p99 = window.percentiles()
                out[f"latency_{stage}_median_ms"] = stage_median
                out[f"latency_{stage}_p99_ms"] = stage_p99
            for reason, count in sorted(self.malformed.items()):
                out[f"malformed_{reason}"] = count
            for reason, count in sorted(self.overlay_errors.items()):
                out[f"overlay_error_{reason}"] = count
        return out


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def diagnostic_array(stamp: Time, node_name: str, snapshot: dict[str, Any], extra: dict[str, Any]) -> DiagnosticArray:
    """One DiagnosticStatus for the node: OK, or WARN when clouds arrive but none come out."""
    values = {**snapshot, **extra}
    status = DiagnosticStatus(name=f"{node_name}: pipeline", hardware_id=node_name)
    if values["input_rate_hz"] > 0.0 and values["output_rate_hz"] == 0.0 and values["clouds_received"] > 2:
        status.level, status.message = DiagnosticStatus.WARN, "clouds arrive but none are processed"
    else:
        status.level = DiagnosticStatus.OK
        status.message = f"{values['output_rate_hz']:.1f} Hz, {values['people']} people"
    status.values = [KeyValue(key=key, value=_format(value)) for key, value in values.items()]
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])
