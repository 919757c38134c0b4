"""Attention through `jax.nn.dot_product_attention`: XLA's path on any device, cuDNN's fused kernel on NVIDIA GPUs.

`GPTConfig.attention_impl` picks how the model computes softmax(Q K^T / sqrt(d)) V:

  einsum  `model.attention`: two einsums and a softmax, on the KV cache's own layout. The default:
          on CPU it is as fast as 'xla' for training and faster for decoding
          (experiments/bench_precision.py), and the only path with dropout of attention weights.
  xla     jax.nn.dot_product_attention(implementation='xla'): the same arithmetic, any device.
  cudnn   jax.nn.dot_product_attention(implementation='cudnn'): cuDNN's fused flash-attention kernel,
          which never materializes the [seq, seq] scores and skips the tiles a causal mask hides.
          It runs only on NVIDIA GPUs (compute capability 8.0+), in bfloat16 or float16, with head
          sizes that are a multiple of 8 and at most 128 (256 from Hopper, compute capability 9.0).
          Asked for where it cannot run, it is an error naming the reason, never a silent fallback.

The model's keys and values are [batch, n_kv_head, kv_len, head_dim] views of the KV cache's
[batch * n_kv_head, kv_len, head_dim] buffers; jax.nn.dot_product_attention takes [batch, kv_len,
n_kv_head, head_dim], so they are transposed on the way in (in training XLA folds this into the
transpose that made them).
"""

from __future__ import annotations

import jax

from gptjax.errors import GptjaxError

IMPLEMENTATIONS = ('einsum', 'xla', 'cudnn')


def cudnn_problem(config, device=None) -> str | None:
  """Why cuDNN's fused attention cannot run `config` (a GPTConfig) on `device` (default: the first
  JAX device), or None if it can. The conditions are those jax checks when it lowers the call."""
  device = device or jax.devices()[0]
  capability = getattr(device, 'compute_capability', None)
  try:
    major_minor = tuple(int(x) for x in str(capability).split('.')[:2])
  except ValueError:
    major_minor = None
  if device.platform != 'gpu' or major_minor is None:
    return f'an NVIDIA GPU, and this device is {device.device_kind} ({device.platform})'
  if major_minor < (8, 0):
    return f'compute capability 8.0 or newer, and {device.device_kind} has {capability}'
  if config.dtype not in ('bfloat16', 'float16'):
    return f"model.dtype 'bfloat16' or 'float16', not {config.dtype!r}"
  most = 256 if major_minor >= (9, 0) else 128
  if config.head_dim % 8 or config.head_dim > most:
    return (f'a head size (n_embd / n_head) that is a multiple of 8 and at most {most} on '
            f'{device.device_kind}, not {config.head_dim}')
  return None


def check(config, device=None) -> None:
  """Raises GptjaxError if config.attention_impl is 'cudnn' and cuDNN cannot run it here."""
  if config.attention_impl != 'cudnn':
    return
  problem = cudnn_problem(config, device)
  if problem:
    raise GptjaxError(f"model.attention_impl='cudnn' needs {problem}; use model.attention_impl='xla' "
                      "(any device) or 'einsum'")


def dot_product(q, k, v, mask, *, causal: bool, implementation: str) -> jax.Array:
  """softmax(Q K^T / sqrt(head_dim)) V through jax.nn.dot_product_attention.

  q: [batch, seq, n_head, head_dim]; k, v: [batch, n_kv_head, kv_len, head_dim], or the same in the
  KV cache's [batch * n_kv_head, kv_len, head_dim]. mask: [batch, seq, kv_len] bool (True: may
  attend) or None; causal: query i sees keys 0..i (with mask None, as in training; cuDNN then uses
  its causal kernel). Returns [batch, seq, n_head * head_dim].
  """
  batch, seq, n_head, head_dim = q.shape
  # -> [batch, kv_len, n_kv, head_dim], in q's dtype (a cache may hold another).
  to_bskh = lambda t: t.reshape(batch, -1, t.shape[-2], head_dim).transpose(0, 2, 1, 3).astype(q.dtype)
  out = jax.nn.dot_product_attention(
      q, to_bskh(k), to_bskh(v), mask=None if mask is None else mask[:, None], is_causal=causal,
      implementation=implementation)  # [batch, seq, n_head, head_dim]
  return out.reshape(batch, seq, n_head * head_dim)


def cudnn_available(config) -> bool:
  """True where config's shape and dtype can use cuDNN's fused attention on the first device."""
  return cudnn_problem(config) is None
