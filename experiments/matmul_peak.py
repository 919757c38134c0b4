"""What this machine's matrix multiply reaches, for XLA (jit) and PyTorch, in GFLOP/s.

The training benchmark's speed-up over PyTorch is bounded by how much faster XLA multiplies
matrices here than PyTorch does: this measures both at 2048^3 and at the shapes of nanoGPT's CPU
recipe (768 tokens x 128 wide, MLP 512). Medians of 20 calls after a warm-up; a chain of 20
products inside one jit call for XLA so dispatch does not count.

  pip install -e '.[bench]'
  python experiments/matmul_peak.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from timing import median_seconds  # experiments/timing.py

REPEATS = 20


def xla(m, k, n, dtype, chain=20):
  # `chain` different left operands (random, so XLA can neither fold nor merge the products).
  a = jax.random.normal(jax.random.PRNGKey(0), (chain, m, k), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (k, n), jnp.float32).astype(dtype)

  @jax.jit
  def run(a, b):
    out = jnp.zeros((m, n), jnp.float32)
    for i in range(chain):  # independent products, summed: no dispatch between them
      out = out + jnp.dot(a[i], b, preferred_element_type=jnp.float32)
    return out

  seconds = median_seconds(lambda: jax.block_until_ready(run(a, b)), REPEATS)
  return 2 * m * k * n * chain / seconds / 1e9


def torch_gflops(m, k, n):
  import torch
  a, b = torch.randn(m, k), torch.randn(k, n)
  return 2 * m * k * n / median_seconds(lambda: a @ b, REPEATS) / 1e9


def main():
  shapes = {'2048 x 2048 x 2048': (2048, 2048, 2048), 'recipe MLP up: 768 x 128 x 512': (768, 128, 512),
            'recipe MLP down: 768 x 512 x 128': (768, 512, 128)}
  print('| shape | XLA float32 | XLA bfloat16 in, float32 out | PyTorch float32 |')
  print('|---|---|---|---|')
  for name, (m, k, n) in shapes.items():
    chain = 4 if m == 2048 else 20
    try:
      torch_result = f'{torch_gflops(m, k, n):.0f}'
    except ImportError:
      torch_result = 'not installed'
    print(f'| {name} | {xla(m, k, n, jnp.float32, chain):.0f} | {xla(m, k, n, jnp.bfloat16, chain):.0f} '
          f'| {torch_result} |', flush=True)


if __name__ == '__main__':
  main()
