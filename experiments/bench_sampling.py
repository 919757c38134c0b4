"""Sampling filters: decode.top_k_mask / top_p_mask (bisection over the float bits, no sort) against
the sorting definitions they replace (jax.lax.top_k; argsort + cumsum), per decode step.

  python experiments/bench_sampling.py [--repeats=5]

For the decoding benchmark's vocabulary (65) and GPT-2's padded one (50,304), batch 1 and 16, top_k=40
and top_p=0.95: each filter runs 16 times in one compiled loop (the decode loop's XLA:CPU options);
medians of `repeats` calls after a warm-up. Also checks that both ways keep the same tokens.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import cpu_name, median_seconds  # noqa: E402

from gptjax import decode  # noqa: E402

ROUNDS = 16


def sorting_top_k_mask(logits, k):
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def sorting_top_p_mask(logits, p):
  order = jnp.argsort(-logits, axis=-1)
  probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
  keep_sorted = jnp.cumsum(probs, axis=-1) - probs < p
  keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
  return jnp.where(keep, logits, -jnp.inf)


def per_call(fn, logits, repeats):
  """Median seconds of one filter call, from a compiled loop of ROUNDS calls."""
  loop = jax.jit(lambda x: jax.lax.fori_loop(
      0, ROUNDS, lambda i, acc: acc + 1e-9 * jnp.isfinite(fn(x + acc)).sum(-1, keepdims=True), jnp.zeros(
          (x.shape[0], 1))), compiler_options=decode.CPU_DECODE_OPTIONS)
  return median_seconds(lambda: jax.block_until_ready(loop(logits)), repeats) / ROUNDS


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  print(f'{cpu_name()}; jax {jax.__version__}; load average {os.getloadavg()[0]:.1f}; wall time, one thread')
  print('| batch | vocab | filter | bisection, us | sorting, us | speed-up | same tokens kept |')
  print('|---|---|---|---|---|---|---|')
  filters = [('top_k=40', lambda x: decode.top_k_mask(x, 40), lambda x: sorting_top_k_mask(x, 40)),
             ('top_p=0.95', lambda x: decode.top_p_mask(x, 0.95), lambda x: sorting_top_p_mask(x, 0.95))]
  for vocab in (65, 50304):
    for batch in (1, 16):
      logits = 3 * jax.random.normal(jax.random.PRNGKey(batch), (batch, vocab), jnp.float32)
      for name, new, old in filters:
        same = bool(np.array_equal(np.isfinite(new(logits)), np.isfinite(old(logits))))
        t_new, t_old = per_call(new, logits, args.repeats), per_call(old, logits, args.repeats)
        print(f'| {batch} | {vocab:,} | {name} | {t_new * 1e6:,.1f} | {t_old * 1e6:,.1f} | {t_old / t_new:.0f}x '
              f'| {same} |', flush=True)


if __name__ == '__main__':
  main()
