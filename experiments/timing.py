"""The one timing rule the benchmarks share: a warm-up call (compilation), then the median of timed calls."""

from __future__ import annotations

import time

import numpy as np


def median_seconds(fn, repeats: int) -> float:
  """Median wall time of fn() over `repeats` calls after one untimed warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))
