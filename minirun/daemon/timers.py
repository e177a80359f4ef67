"""The daemon loop's timers: a due time per key (a container id) on a heap. Setting a key
again or cancelling it leaves its old heap entry behind, skipped when it comes up, so
both are O(log n) and nothing is searched."""

from __future__ import annotations

import heapq
import itertools
import time


class Timers:
    def __init__(self) -> None:
        self.heap: list[tuple[float, int, str]] = []
        self.due: dict[str, float] = {}  # key -> when (monotonic); a key not here is off
        self.seq = itertools.count()  # ties go in order of setting

    def set(self, key: str, delay: float) -> None:
        when = time.monotonic() + delay
        self.due[key] = when
        heapq.heappush(self.heap, (when, next(self.seq), key))

    def cancel(self, key: str) -> None:
        self.due.pop(key, None)

    def pop_due(self) -> str | None:
        """A key whose time has come (it is then off), or None."""
        while self.heap:
            when, _, key = self.heap[0]
            if self.due.get(key) != when:
                heapq.heappop(self.heap)  # cancelled or set again
                continue
            if when > time.monotonic():
                return None
            heapq.heappop(self.heap)
            del self.due[key]
            return key
        return None

    def next_in(self) -> float | None:
        """Seconds until the next key is due (0 if one is), None if none is set."""
        while self.heap and self.due.get(self.heap[0][2]) != self.heap[0][0]:
            heapq.heappop(self.heap)
        return max(0.0, self.heap[0][0] - time.monotonic()) if self.heap else None
