"""Scaling laws: fit L(N) = a * N^(-alpha) + c to (size, loss) points, with a bootstrap interval for alpha.

For a fixed alpha the law is linear in (a, c), so the least-squares fit is a one-dimensional search
over alpha with a closed-form (a, c) at each value (variable projection): no starting guess to get
wrong, and the constraints a >= 0, c >= 0 (a loss floor cannot be negative) are exact.

    law = fit_power_law(n_params, losses)          # PowerLaw(a, alpha, c, rss)
    lo, hi = bootstrap_alpha(n_params, losses)     # 95% interval, resampling the points
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from scipy import optimize

from gptjax.errors import GptjaxError


@dataclasses.dataclass(frozen=True)
class PowerLaw:
  a: float
  alpha: float
  c: float
  rss: float  # residual sum of squares of the fit

  def __call__(self, n):
    return self.a * np.power(np.asarray(n, np.float64), -self.alpha) + self.c


def _linear_fits(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """For each row of x [k, points]: (a, c, rss) minimising sum (a x + c - y)^2 with a >= 0, c >= 0.

  The constrained minimum is the unconstrained one when that is feasible, else on an edge (c = 0 or
  a = 0), whichever fits better.
  """
  xm, ym = x.mean(axis=1, keepdims=True), y.mean()
  sxx = np.sum((x - xm) ** 2, axis=1)
  a_free = np.sum((x - xm) * (y - ym), axis=1) / np.where(sxx > 0, sxx, np.inf)
  c_free = ym - a_free * xm[:, 0]
  a_edge = np.maximum(np.sum(x * y, axis=1) / np.sum(x * x, axis=1), 0.0)  # c = 0
  candidates = [(a_free, c_free), (a_edge, np.zeros_like(a_edge)),
                (np.zeros_like(a_edge), np.full_like(a_edge, max(ym, 0.0)))]  # a = 0
  best_a, best_c, best_rss = None, None, None
  for a, c in candidates:
    rss = np.sum((a[:, None] * x + c[:, None] - y) ** 2, axis=1)
    rss = np.where((a >= 0) & (c >= 0), rss, np.inf)
    if best_rss is None:
      best_a, best_c, best_rss = a, c, rss
    else:
      better = rss < best_rss
      best_a, best_c, best_rss = (np.where(better, a, best_a), np.where(better, c, best_c),
                                  np.where(better, rss, best_rss))
  return best_a, best_c, best_rss


def fit_power_law(n: Sequence[float], loss: Sequence[float], alpha_range: tuple[float, float] = (1e-3, 3.0)
                  ) -> PowerLaw:
  """Least-squares fit of loss = a * n^(-alpha) + c (a, c >= 0; alpha in alpha_range)."""
  n, loss = np.asarray(n, np.float64), np.asarray(loss, np.float64)
  if n.shape != loss.shape or n.ndim != 1:
    raise GptjaxError(f'fit_power_law needs two equal-length lists, got shapes {n.shape} and {loss.shape}')
  if len(np.unique(n)) < 3:
    raise GptjaxError(f'fitting a * N^-alpha + c needs at least 3 distinct sizes, got {len(np.unique(n))}')
  if not (np.all(n > 0) and np.all(np.isfinite(loss))):
    raise GptjaxError('fit_power_law needs sizes > 0 and finite losses')
  log_n = np.log(n) - np.mean(np.log(n))  # sizes relative to their geometric mean: well conditioned

  def fits(alphas):
    return _linear_fits(np.exp(-np.outer(alphas, log_n)), loss)

  grid = np.linspace(*alpha_range, 400)
  rss = fits(grid)[2]
  i = int(np.argmin(rss))
  lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
  refined = optimize.minimize_scalar(lambda a: fits(np.array([a]))[2][0], bounds=(lo, hi), method='bounded',
                                     options={'xatol': 1e-9}).x
  alpha = refined if fits(np.array([refined]))[2][0] <= rss[i] else grid[i]
  a, c, r = (v[0] for v in fits(np.array([alpha])))
  return PowerLaw(a=float(a * np.exp(np.mean(np.log(n))) ** alpha), alpha=float(alpha), c=float(c),
                  rss=float(r))


def bootstrap_alpha(n: Sequence[float], loss: Sequence[float], samples: int = 2000, seed: int = 0,
                    level: float = 0.95) -> tuple[float, float, np.ndarray]:
  """A percentile bootstrap interval for alpha: refit on `samples` resamples (with replacement) of
  the points; resamples with fewer than 4 distinct sizes (which a 3-parameter law fits exactly)
  are drawn again. Returns (low, high, the alphas)."""
  n, loss = np.asarray(n, np.float64), np.asarray(loss, np.float64)
  if len(np.unique(n)) < 4:
    raise GptjaxError(f'a bootstrap interval needs at least 4 distinct sizes, got {len(np.unique(n))}')
  rng = np.random.default_rng(seed)
  alphas = []
  while len(alphas) < samples:
    idx = rng.integers(0, len(n), len(n))
    if len(np.unique(n[idx])) < 4:
      continue
    alphas.append(fit_power_law(n[idx], loss[idx]).alpha)
  alphas = np.asarray(alphas)
  tail = (1 - level) / 2
  return float(np.quantile(alphas, tail)), float(np.quantile(alphas, 1 - tail)), alphas
