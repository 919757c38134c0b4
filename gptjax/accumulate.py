"""Gradient accumulation: one optimizer step's gradient computed over micro-batches in a `lax.scan`.

A step on a batch of B rows with `train.grad_accum_steps` = n runs the forward and backward pass on n
micro-batches of B / n rows one after the other, summing their losses and gradients, and divides by n:
only one micro-batch's activations are alive at a time. The loss is a mean over the targets of its
batch, and every micro-batch has the same number of targets (seq_len per row), so the mean of the n
micro-batch means is the mean over the whole batch and the step equals one on the whole batch (up to
the order of float additions). The batch, its rows and the data order are what they are without
accumulation; only the way its gradient is computed changes.

Micro-batch i takes rows i, i + n, i + 2n, ... of the batch a device (pmap) or the mesh (jit) holds:
under a mesh, whose devices each hold a contiguous block of rows, every device then contributes
B / n / devices rows to every micro-batch, and the split moves no data between devices.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def micro_batches(tokens: jax.Array, n: int) -> jax.Array:
  """[rows, ...] -> [n, rows // n, ...], micro-batch i holding rows i, i + n, i + 2n, ..."""
  rows = tokens.shape[0]
  if rows % n:
    raise ValueError(f'{rows} rows cannot be split into {n} micro-batches')
  return tokens.reshape((rows // n, n) + tokens.shape[1:]).swapaxes(0, 1)


def loss_and_grads(fn: Callable, tokens: jax.Array, rng: jax.Array, n: int):
  """(loss, grads) of fn(tokens, rng) -> (loss, grads) averaged over n micro-batches of tokens.

  n = 1 calls fn on the whole batch with rng itself (so a run without accumulation is unchanged);
  otherwise micro-batch i gets fold_in(rng, i). Gradients are summed in float32 whatever their dtype.
  """
  if n == 1:
    return fn(tokens, rng)
  parts = micro_batches(tokens, n)
  shapes = jax.eval_shape(fn, parts[0], rng)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.promote_types(s.dtype, jnp.float32)), shapes)

  def add(total, i_part):
    i, part = i_part
    out = fn(part, jax.random.fold_in(rng, i))
    return jax.tree.map(lambda t, x: t + x.astype(t.dtype), total, out), None

  total, _ = jax.lax.scan(add, zeros, (jnp.arange(n), parts))
  return jax.tree.map(lambda t, s: (t / n).astype(s.dtype), total, shapes)
