"""Shared benchmark plumbing: one row type and one timing loop, so every section reports alike."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable


@dataclasses.dataclass
class Row:
    """One benchmark result: ours beside the peer measured in the same run, and their ratio."""

    section: str
    name: str
    unit: str
    ours: float
    peer: float | None = None
    peer_name: str = ""
    target: str = ""
    notes: str = ""

    @property
    def ratio(self) -> float | None:
        return None if not self.peer else self.ours / self.peer

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "ratio": self.ratio}


def best_rate(step: Callable[[], object], units_per_step: float, warmup: int = 2, repeats: int = 5,
              min_seconds: float = 1.0) -> float:
    """Units per second of `step` (which must block until done), best of `repeats` timed windows.

    Best-of rather than mean: on a shared 2-core machine the slow windows measure the neighbours.
    """
    for _ in range(warmup):
        step()
    best = 0.0
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            step()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = max(best, calls * units_per_step / elapsed)
    return best
