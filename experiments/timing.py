"""The one timing rule the benchmarks share: a warm-up call (compilation), then the median of timed calls."""

from __future__ import annotations

import platform
import resource
import subprocess
import time

import numpy as np


def median_seconds(fn, repeats: int, clock=time.perf_counter) -> float:
  """Median time of fn() over `repeats` calls after one untimed warm-up call (wall time, or the CPU
  time with clock=cpu_seconds)."""
  fn()
  times = []
  for _ in range(repeats):
    t0 = clock()
    fn()
    times.append(clock() - t0)
  return float(np.median(times))


def cpu_seconds() -> float:
  """CPU time this process has used, all its threads (user + system)."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def interleaved_medians(fns: dict, repeats: dict | int, clock=time.perf_counter, pause: float = 0.0) -> dict:
  """{name: median seconds} of each fn(), one untimed warm-up call each, then `repeats` rounds in
  which every fn runs once in turn, so that a busy machine slows all of them alike. repeats may be
  a {name: count} dict (a fn leaves the rounds once it has its count). clock=cpu_seconds measures
  the CPU time each call uses instead of the wall time it takes. pause: seconds to wait before each
  timed call, so that no call starts while the previous one's threads still spin (PyTorch's OpenMP
  workers busy-wait for a while after each parallel region)."""
  counts = repeats if isinstance(repeats, dict) else {name: repeats for name in fns}
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for round_ in range(max(counts.values())):
    for name, fn in fns.items():
      if round_ < counts[name]:
        time.sleep(pause)
        t0 = clock()
        fn()
        times[name].append(clock() - t0)
  return {name: float(np.median(ts)) for name, ts in times.items()}


def cpu_name() -> str:
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(':', 1) for line in out.splitlines() if ':' in line)
    return f"{fields['Model name'].strip()}, {fields['CPU(s)'].strip()} CPUs"
  except (OSError, subprocess.CalledProcessError, KeyError):
    return platform.processor() or 'unknown CPU'
