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
RECENT_S = 5.0  # span of the rates and of "lost recently"


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


class StampGaps:
    """Clouds lost before the subscription callback (in DDS, or never sent), estimated from header stamps.

    The sensor period is the median of the last PERIOD_HISTORY stamp intervals. An interval of k periods
    (k >= 1.5, rounded) means k - 1 clouds were lost. Estimates start after MIN_INTERVALS intervals. A
    stamp that goes back, or jumps by more than MAX_PERIODS periods, is a restart or pause of the stream:
    counted in ``restarts``, the history starts again. Repeated stamps are ignored. The estimate is right
    while fewer than half the clouds are lost (the median then is the period).
    """

    PERIOD_HISTORY = 64
    MIN_INTERVALS = 8
    MAX_PERIODS = 50.0

    def __init__(self) -> None:
        self.last_ns: int | None = None
        self.intervals: deque[int] = deque(maxlen=self.PERIOD_HISTORY)
        self.lost = 0
        self.restarts = 0

    def period_ns(self) -> float:
        """The median stamp interval, NaN before MIN_INTERVALS intervals."""
        if len(self.intervals) < self.MIN_INTERVALS:
            return float("nan")
        return float(np.median(np.fromiter(self.intervals, dtype=np.float64)))

    def add(self, stamp_ns: int) -> int:
        """Take the next cloud's stamp; return how many clouds are missing just before it."""
        last, self.last_ns = self.last_ns, stamp_ns
        if last is None:
            return 0
        delta = stamp_ns - last
        if delta == 0:
            return 0
        periods = delta / self.period_ns() if len(self.intervals) >= self.MIN_INTERVALS else 1.0
        if delta < 0 or periods > self.MAX_PERIODS:
            self.restarts += 1
            self.intervals.clear()
            return 0
        self.intervals.append(delta)
        lost = round(periods) - 1 if periods >= 1.5 else 0
        self.lost += lost
        return lost


class NodeStats:
    """Thread-safe counters of the node (callbacks and the processing thread both write)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.dropped = 0  # replaced by a newer cloud before processing
        self.gaps = StampGaps()
        self._lost_times: deque[tuple[float, int]] = deque()  # (monotonic s, clouds lost) of recent gaps
        self.malformed: Counter[str] = Counter()
        self.overlay_errors: Counter[str] = Counter()
        self.nonfinite_points = 0
        self.people_last = 0
        self.over_budget = 0  # frames whose end-to-end time exceeded the frame budget
        self.over_budget_streak = 0  # ... in a row, up to the last processed frame
        self._over_budget_times: deque[float] = deque()  # monotonic s of recent frames over budget
        self.last_input_s: float | None = None  # monotonic s of the last cloud
        self.overlays = 0
        self.overlay_skipped = 0  # clouds with no image within camera.max_offset_s
        self.overlay_offset_max_ms = 0.0  # largest |image - cloud| stamp offset of a published overlay
        self._input = _Window()
        self._output = _Window()
        self._end_to_end = _Window()
        self._stages: dict[str, _Window] = {}
        self.frames: deque[tuple[int, float, int]] = deque(maxlen=WINDOW)  # (stamp_ns, end-to-end ms, people)

    def on_input(self, stamp_ns: int | None = None) -> None:
        """A cloud reached the callback; its header stamp (when given) feeds the lost-cloud estimate."""
        with self._lock:
            self.received += 1
            now = time.monotonic()
            self.last_input_s = now
            self._input.add(now=now)
            if stamp_ns is not None:
                lost = self.gaps.add(stamp_ns)
                if lost:
                    self._lost_times.append((now, lost))

    def on_dropped(self) -> None:
        with self._lock:
            self.dropped += 1

    def on_malformed(self, reason: str) -> None:
        with self._lock:
            self.malformed[reason] += 1

    def on_overlay_error(self, reason: str) -> None:
        with self._lock:
            self.overlay_errors[reason] += 1

    def on_overlay(self, offset_ns: int | None) -> None:
        """An overlay published with this image-cloud offset, or (None) a cloud with no image in time."""
        with self._lock:
            if offset_ns is None:
                self.overlay_skipped += 1
            else:
                self.overlays += 1
                self.overlay_offset_max_ms = max(self.overlay_offset_max_ms, abs(offset_ns) / 1e6)

    def on_output(self, stamp_ns: int, end_to_end_ms: float, stages_ms: dict[str, float], people: int,
                  nonfinite: int, budget_ms: float = float("inf")) -> None:
        with self._lock:
            if end_to_end_ms > budget_ms:
                self.over_budget += 1
                self.over_budget_streak += 1
                self._over_budget_times.append(time.monotonic())
            else:
                self.over_budget_streak = 0
            self.frames.append((stamp_ns, end_to_end_ms, people))
            self.processed += 1
            self.people_last = people
            self.nonfinite_points += nonfinite
            self._output.add()
            self._end_to_end.add(end_to_end_ms)
            for stage, ms in stages_ms.items():
                self._stages.setdefault(stage, _Window()).add(float(ms))

    def _lost_recently(self, now: float) -> int:
        """Clouds lost before the callback in the last RECENT_S (caller holds the lock)."""
        while self._lost_times and now - self._lost_times[0][0] > RECENT_S:
            self._lost_times.popleft()
        return sum(lost for _, lost in self._lost_times)

    def _over_budget_recently(self, now: float) -> int:
        """Frames over the budget in the last RECENT_S (caller holds the lock)."""
        while self._over_budget_times and now - self._over_budget_times[0] > RECENT_S:
            self._over_budget_times.popleft()
        return len(self._over_budget_times)

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
                "clouds_lost_before_callback": self.gaps.lost,
                "clouds_lost_recently": self._lost_recently(now),
                "input_stamp_period_ms": self.gaps.period_ns() / 1e6,
                "input_stamp_restarts": self.gaps.restarts,
                "clouds_malformed": sum(self.malformed.values()),
                "nonfinite_points_dropped": self.nonfinite_points,
                "people": self.people_last,
                "seconds_since_last_cloud": float("nan") if self.last_input_s is None else now - self.last_input_s,
                "frames_over_budget": self.over_budget,
                "frames_over_budget_recently": self._over_budget_recently(now),
                "frames_over_budget_in_a_row": self.over_budget_streak,
                "overlays_published": self.overlays,
                "overlay_skipped_no_image_in_time": self.overlay_skipped,
                "overlay_offset_max_ms": self.overlay_offset_max_ms,
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


def diagnostic_array(stamp: Time, node_name: str, values: dict[str, Any], level: int, message: str) -> DiagnosticArray:
    """One DiagnosticStatus for the node with every value (level and message from kp3d_ros.ros.health)."""
    status = DiagnosticStatus(name=f"{node_name}: pipeline", hardware_id=node_name, level=level, message=message)
    status.values = [KeyValue(key=key, value=_format(value)) for key, value in values.items()]
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])
