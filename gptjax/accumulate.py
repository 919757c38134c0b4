"""Gradient accumulation: one optimizer step's gradient computed over micro-batches in a `lax.scan`.

A step on a batch of B rows with `train.grad_accum_steps` = n runs the forward and backward pass on n
micro-batches of B / n rows one after the other and sums their losses and gradients: only one
micro-batch's activations are alive at a time. The loss function is written as each micro-batch's
share of the whole batch's loss (its summed per-target loss over the whole batch's target count, see
`train.train_step`), so the sum is the whole batch's mean loss exactly, whatever each micro-batch's
count of targets (masked-LM picks differ from row to row), and the step equals one on the whole batch
up to the order of float additions. The batch, its rows, its corruption and the data order are what
they are without accumulation; only the way its gradient is computed changes.

Micro-batch i takes rows i, i + n, i + 2n, ... of the batch a device (pmap) or the mesh (jit) holds:
under a mesh, whose devices each hold a contiguous block of rows, every device then contributes
B / n / devices rows to every micro-batch, and the split moves no data between devices.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def micro_batches(x: jax.Array, n: int) -> jax.Array:
  """[rows, ...] -> [n, rows // n, ...], micro-batch i holding rows i, i + n, i + 2n, ..."""
  rows = x.shape[0]
  if rows % n:
    raise ValueError(f'{rows} rows cannot be split into {n} micro-batches')
  return x.reshape((rows // n, n) + x.shape[1:]).swapaxes(0, 1)


def value_and_grad(loss_fn: Callable, params, batch, rng: jax.Array, n: int):
  """(loss, grads) of loss_fn(params, batch, rng), summed over n micro-batches of `batch`.

  batch: a pytree of [rows, ...] arrays split along rows (`micro_batches`); loss_fn must be additive
  over rows (a micro-batch's share of the batch's loss). n = 1 differentiates loss_fn on the whole
  batch with rng itself, so a run without accumulation is unchanged; otherwise micro-batch i gets
  fold_in(rng, i) (its dropout differs from the whole batch's). Gradients are summed in float32
  (or wider) whatever the parameters' dtype, and returned in it.
  """
  grad_fn = jax.value_and_grad(loss_fn)
  if n == 1:
    return grad_fn(params, batch, rng)
  parts = jax.tree.map(lambda x: micro_batches(x, n), batch)
  wide = lambda x: jnp.zeros(x.shape, jnp.promote_types(x.dtype, jnp.float32))
  zeros = (jnp.zeros((), jnp.float32), jax.tree.map(wide, params))

  def add(total, i_part):
    i, part = i_part
    out = grad_fn(params, part, jax.random.fold_in(rng, i))
    return jax.tree.map(lambda t, x: t + x.astype(t.dtype), total, out), None

  (loss, grads), _ = jax.lax.scan(add, zeros, (jnp.arange(n), parts))
  return loss, jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
