"""Pairs each processed cloud with the camera image nearest to it in time (ROS-free).

Images go into a bounded buffer (newest kept). A cloud waits until the pairing is decided: an image
stamped at or after the cloud has arrived (images arrive in stamp order, so no later one can be
nearer), or the cloud has waited ``wait_ns`` of monotonic time. The nearest buffered image is its pair
if it is at most ``max_offset_ns`` away; otherwise the cloud has no image close enough.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

EXTRA_WAIT_NS = 200_000_000  # beyond max_offset: how long a cloud waits for a later image (transport, sim time)


@dataclass
class Pairing:
    cloud: Any  # what was given with the cloud
    image: Any | None  # the image nearest in time, None when none is within the offset
    offset_ns: int | None  # image stamp - cloud stamp


class NearestImage:
    """A bounded image buffer and the clouds waiting for their image (not thread-safe)."""

    def __init__(self, max_offset_ns: int, capacity: int = 10, wait_ns: int | None = None,
                 max_pending: int = 10) -> None:
        self.max_offset_ns = int(max_offset_ns)
        self.wait_ns = self.max_offset_ns + EXTRA_WAIT_NS if wait_ns is None else int(wait_ns)
        self.images: deque[tuple[int, Any]] = deque(maxlen=capacity)
        self.pending: deque[tuple[int, Any, int]] = deque()  # (stamp, cloud, deadline monotonic ns)
        self.max_pending = max_pending

    def add_image(self, stamp_ns: int, image: Any) -> None:
        if self.images and stamp_ns < self.images[-1][0]:  # a restarted camera (or a looping bag): start again
            self.images.clear()
        self.images.append((int(stamp_ns), image))

    def add_cloud(self, stamp_ns: int, cloud: Any, now_ns: int) -> None:
        """Queue a cloud for its image; ready() gives its pairing once it is decided."""
        self.pending.append((int(stamp_ns), cloud, now_ns + self.wait_ns))

    def ready(self, now_ns: int) -> list[Pairing]:
        """The pairings that can be decided now, oldest cloud first (the oldest when too many wait)."""
        decided = []
        while len(self.pending) > self.max_pending:
            decided.append(self._decide(*self.pending.popleft()[:2]))
        newest = self.images[-1][0] if self.images else None
        while self.pending:
            stamp, cloud, deadline = self.pending[0]
            if not ((newest is not None and newest >= stamp) or now_ns >= deadline):
                break
            self.pending.popleft()
            decided.append(self._decide(stamp, cloud))
        return decided

    def clear(self) -> None:
        self.images.clear()
        self.pending.clear()

    def _decide(self, stamp: int, cloud: Any) -> Pairing:
        if not self.images:
            return Pairing(cloud, None, None)
        image_stamp, image = min(self.images, key=lambda item: abs(item[0] - stamp))
        offset = image_stamp - stamp
        if abs(offset) > self.max_offset_ns:
            return Pairing(cloud, None, offset)
        return Pairing(cloud, image, offset)
