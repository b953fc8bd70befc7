"""Wall-clock timing of a call, shared by the run-time speed choices and the benches (no torch import)."""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["call_times"]


def call_times(fn: Callable[[], object], repeats: int) -> list[float]:
    """Seconds taken by each of ``repeats`` calls of ``fn``, after one warm-up call. Callers take the minimum
    (least noisy on a shared machine) or the median (typical), and say which."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times
