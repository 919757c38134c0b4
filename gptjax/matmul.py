"""The Dense layers' matrix product, with a weight gradient laid out for XLA:CPU's fast matmuls.

    y = x W                x [tokens, in], W [in, out]
    dx = dy W^T            the same on every platform
    dW = x^T dy            on CPU: x^T is written out first (a copy of x, [in, tokens])

Why: XLA:CPU runs a matmul through YNNPACK only when the left operand's contracted dimension is its
last one; otherwise it falls back to Eigen. The forward product and dx qualify, but dW contracts
the tokens dimension, which is x's first, so the weight gradients of every Dense layer went to
Eigen, at ~150 GFLOP/s on one core where YNNPACK does the same shapes at ~240 (the profile in
experiments/step_profile.py). Writing x^T out costs a copy of x and gives YNNPACK a [in, tokens] x
[tokens, out] product; `optimization_barrier` keeps XLA from folding the transpose back into the dot.
GPUs and TPUs multiply transposed operands natively, so elsewhere dW is the plain product. The
arithmetic is the same contraction either way; only the summation order inside the kernel differs.

Used as `nn.Dense(..., dot_general=dense_dot_general)`: the parameters are unchanged.
"""

from __future__ import annotations

import jax
from jax import lax


@jax.custom_vjp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x [tokens, in] @ w [in, out] -> [tokens, out]."""
  return x @ w


def _matmul_fwd(x, w):
  return x @ w, (x, w)


def _weight_grad_cpu(x, dy):
  return lax.optimization_barrier(x.T) @ dy  # [in, tokens] @ [tokens, out]


def _weight_grad(x, dy):
  return x.T @ dy


def _matmul_bwd(residuals, dy):
  x, w = residuals
  dw = lax.platform_dependent(x, dy, cpu=_weight_grad_cpu, default=_weight_grad)
  return (dy @ w.T).astype(x.dtype), dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """lax.dot_general, through `matmul` for what a Dense layer on a 2-D input asks: [n, k] . [k, m]."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  plain = (lhs.ndim == 2 and rhs.ndim == 2 and tuple(lhs_contract) == (1,) and tuple(rhs_contract) == (0,)
           and not lhs_batch and not rhs_batch and precision is None and preferred_element_type is None
           and lhs.dtype == rhs.dtype)
  if plain:
    return matmul(lhs, rhs)
  return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                         preferred_element_type=preferred_element_type)
