"""A GPT in Flax linen, readable top to bottom.

    tokens [batch, seq]
      -> X = E[tokens] + P[positions]          token embedding plus positional encoding
      -> n_layer x Block: x + attn(ln_1(x)), then x + mlp(ln_2(x))
      -> ln_f -> h W_O + b_O                    logits [batch, seq, vocab]; softmax gives P(w_i | w_<i)

One forward serves training and decoding:

    logits = GPT(config).apply({'params': params}, tokens)                      # full sequence
    logits, cache = GPT(config).apply({'params': params}, tokens, cache=cache)  # with a KV cache

With a cache, each row's new tokens are written at that row's `cache.pos` and attend over the
cached prefix; see `kv_cache.py`. The model holds no state between calls.

How it computes (GPTConfig fields that change no parameter, see EXECUTION_FIELDS): `dtype` is the
activations' and matmuls' dtype ('bfloat16' = mixed precision: parameters stay `param_dtype`, matmuls
accumulate in float32, LayerNorm/RMSNorm statistics, RoPE and the softmax are float32, and the output
head returns float32 logits; `float32_einsum` rounds their cotangents back for the backward's
matmuls); `remat` rematerializes each block in the backward pass (REMAT_POLICIES); `attention_impl`
picks `attention` below or jax.nn.dot_product_attention (gptjax/attention.py).

The defaults build GPT-2's block. Llama-style options, each a GPTConfig switch that changes nothing
(parameter names, values or logits) while it is off:

    pos_encoding='rope'   no P in the input: q and k of each head are rotated by their token's position
    norm='rmsnorm'        ln_1, ln_2, ln_f as RMSNorm: x / rms(x) * g, no mean, no bias
    mlp='swiglu'          silu(x W_gate) * (x W_fc), then W_proj; hidden width 8/3 d (see mlp_width)
    qk_norm=True          RMSNorm of each head's q and k before RoPE and the dot product
    bias=False            no biases anywhere;  n_kv_head < n_head: grouped-query attention

Every parameter's initializer names its dimensions with logical axes ('vocab', 'embed', 'qkv',
'heads', 'mlp', 'position', 'head_dim'); `gptjax/parallel.py` maps those names to mesh axes.
`init_params` returns plain arrays and `param_axes` the names, so nothing else sees the annotations.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from gptjax import attention as attention_lib
from gptjax import kv_cache as kvc
from gptjax.matmul import dense_dot_general

# Rematerialization (activation checkpointing) of each block: which of its intermediate values the
# backward pass keeps; the rest it recomputes from the block's input. 'full' keeps none (memory of
# one block's activations at a time, one more forward pass of compute); 'dots_saveable' keeps every
# matmul output (elementwise ops, LayerNorms and softmax are recomputed);
# 'dots_with_no_batch_dims_saveable' keeps only the weight matmuls' outputs (not attention's).
REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots_saveable': jax.checkpoint_policies.dots_saveable,
    'dots_with_no_batch_dims_saveable': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

# GPTConfig fields that choose how the model computes, not what its parameters are: a checkpoint
# written under one value loads and resumes under any other.
EXECUTION_FIELDS = ('dtype', 'remat', 'attention_impl')


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """Model shape. Names follow GPT-2/nanoGPT; defaults are GPT-2 small."""

  vocab_size: int = 50304
  block_size: int = 1024  # the positions the model supports: the longest sequence it can see
  n_layer: int = 12
  n_head: int = 12
  n_kv_head: int = 0  # 0: same as n_head (multi-head); fewer: grouped-query attention
  n_embd: int = 768
  dropout: float = 0.0
  bias: bool = True  # biases in Dense layers and LayerNorms, and b_O in the output head
  head_bias: bool = True  # b_O in the output head (only where `bias` is on); GPT-2 has none
  tie_embeddings: bool = False  # W_O = E^T (the token embedding read backwards)
  pos_encoding: str = 'learned'  # 'learned' (a table P), 'sinusoidal' (fixed, Vaswani et al.) or 'rope'
  rope_theta: float = 10000.0  # RoPE: pair i of a head turns by position * rope_theta^(-2i / head_dim)
  norm: str = 'layernorm'  # or 'rmsnorm'
  mlp: str = 'gelu'  # or 'swiglu'
  mlp_hidden: int = 0  # the MLP's hidden width; 0: mlp_width's default for the mlp kind
  qk_norm: bool = False  # RMSNorm each head's queries and keys before the dot product
  causal: bool = True  # False gives bidirectional attention (for a masked-LM objective)
  dtype: str = 'float32'  # compute dtype of activations and matmuls ('bfloat16': mixed precision)
  param_dtype: str = 'float32'
  remat: str = 'none'  # recompute each block's activations in the backward pass: a REMAT_POLICIES name
  attention_impl: str = 'einsum'  # 'einsum' (`attention` below), or jax.nn.dot_product_attention's 'xla'/'cudnn'

  def __post_init__(self):
    problems = []
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      kind = {'int': int, 'float': (int, float), 'bool': bool, 'str': str}[f.type]
      if not isinstance(value, kind) or (f.type in ('int', 'float') and isinstance(value, bool)):
        raise ValueError(f'{f.name}={value!r} must be of type {f.type}')
    for name in ('vocab_size', 'block_size', 'n_layer', 'n_head', 'n_embd'):
      if getattr(self, name) < 1:
        problems.append(f'{name}={getattr(self, name)} must be >= 1')
    if self.n_head >= 1 and self.n_embd % self.n_head:
      problems.append(f'n_embd={self.n_embd} is not divisible by n_head={self.n_head}')
    if self.n_kv_head < 0 or (self.n_kv_head and self.n_head % self.n_kv_head):
      problems.append(f'n_kv_head={self.n_kv_head} must be 0 or divide n_head={self.n_head}')
    if not 0.0 <= self.dropout < 1.0:
      problems.append(f'dropout={self.dropout} must be in [0, 1)')
    if self.pos_encoding not in ('learned', 'sinusoidal', 'rope'):
      problems.append(f"pos_encoding={self.pos_encoding!r} must be 'learned', 'sinusoidal' or 'rope'")
    if self.pos_encoding == 'sinusoidal' and self.n_embd % 2:
      problems.append(f'sinusoidal positions need an even n_embd, got {self.n_embd}')
    if self.pos_encoding == 'rope' and self.n_head >= 1 and (self.n_embd // self.n_head) % 2:
      problems.append(f'rope needs an even head_dim (n_embd / n_head), got {self.n_embd // max(self.n_head, 1)}')
    if not self.rope_theta > 0:
      problems.append(f'rope_theta={self.rope_theta} must be > 0')
    if self.norm not in ('layernorm', 'rmsnorm'):
      problems.append(f"norm={self.norm!r} must be 'layernorm' or 'rmsnorm'")
    if self.mlp not in ('gelu', 'swiglu'):
      problems.append(f"mlp={self.mlp!r} must be 'gelu' or 'swiglu'")
    if self.mlp_hidden < 0:
      problems.append(f'mlp_hidden={self.mlp_hidden} must be >= 1 (or 0 for the default width)')
    for name in ('dtype', 'param_dtype'):
      if getattr(self, name) not in ('float32', 'bfloat16', 'float16'):
        problems.append(f"{name}={getattr(self, name)!r} must be 'float32', 'bfloat16' or 'float16'")
    if self.remat not in REMAT_POLICIES:
      problems.append(f'remat={self.remat!r} must be one of {", ".join(map(repr, REMAT_POLICIES))}')
    if self.attention_impl not in attention_lib.IMPLEMENTATIONS:
      problems.append(f'attention_impl={self.attention_impl!r} must be one of '
                      f'{", ".join(map(repr, attention_lib.IMPLEMENTATIONS))}')
    elif self.attention_impl != 'einsum' and self.dropout:
      problems.append(f'attention_impl={self.attention_impl!r} has no dropout of attention weights: use '
                      "attention_impl='einsum' for dropout > 0, or dropout=0")
    if problems:
      raise ValueError('; '.join(problems))

  @property
  def head_dim(self) -> int:
    return self.n_embd // self.n_head

  @property
  def kv_heads(self) -> int:
    return self.n_kv_head or self.n_head

  @property
  def mlp_width(self) -> int:
    """The MLP's hidden width: mlp_hidden, or by default 4 d for gelu (two d x 4d matrices, 8 d^2) and
    8/3 d rounded up to a multiple of 8 for swiglu (three d x h matrices: 8 d^2 again, +0.8% at d=128)."""
    if self.mlp_hidden:
      return self.mlp_hidden
    return 8 * -(-self.n_embd // 3) if self.mlp == 'swiglu' else 4 * self.n_embd


def float32_einsum(spec: str, a, b):
  """jnp.einsum(spec, a, b) of two lower-precision (bfloat16) operands with float32 products and a
  float32 result: the logits feed a softmax over the whole vocabulary, the attention scores one over
  the keys, where bfloat16's 8-bit mantissa would round them by ~0.1. spec is a matmul-like 'A,B->C'
  (every index of an operand is in the other operand or the result).

  The backward rounds the float32 cotangent to the operands' dtype before its two matmuls (accumulated
  in float32, returned in each operand's dtype), as autocast does. Left to autodiff, a float32
  cotangent makes both backward matmuls float32: in GPT-2 small's head on an H200 (experiments/
  gpu_run.py --profile_calls) they ran as TF32 GEMMs, 8.0 ms of a 39.7 ms step, against 2.2 ms for the
  forward's bfloat16 one of the same size. Two float32 operands take the plain einsum.
  """
  if a.dtype == b.dtype == jnp.float32:
    return jnp.einsum(spec, a, b)
  return _low_precision_einsum(spec, a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _low_precision_einsum(spec: str, a, b):
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _float32_einsum_fwd(spec, a, b):
  return _low_precision_einsum(spec, a, b), (a, b)


def _float32_einsum_bwd(spec, residuals, g):
  a, b = residuals
  inputs, out = spec.replace(' ', '').split('->')
  in_a, in_b = inputs.split(',')
  g = g.astype(a.dtype)
  da = jnp.einsum(f'{out},{in_b}->{in_a}', g, b, preferred_element_type=jnp.float32)
  db = jnp.einsum(f'{out},{in_a}->{in_b}', g, a, preferred_element_type=jnp.float32)
  return da.astype(a.dtype), db.astype(b.dtype)


_low_precision_einsum.defvjp(_float32_einsum_fwd, _float32_einsum_bwd)


def _float32_dot(lhs, rhs, dimension_numbers, precision=None, **kwargs):
  """The head's dot_general for nn.Dense in lower precision: [tokens, n_embd] @ [n_embd, vocab] through
  `float32_einsum` (float32 logits, a backward in the compute dtype)."""
  if dimension_numbers != (((1,), (0,)), ((), ())) or lhs.ndim != 2 or rhs.ndim != 2 or kwargs:
    raise ValueError(f'the float32 head expects [tokens, n_embd] @ [n_embd, vocab], got {lhs.shape} @ '
                     f'{rhs.shape} with {dimension_numbers}')
  return float32_einsum('td,dv->tv', lhs, rhs)


def _named(init, *axes):
  """`init` with a logical axis name for each dimension of the parameter it makes."""
  return nn.with_logical_partitioning(init, axes)


def _split_as(x, *axes):
  """Asks the partitioner to lay activation x out by logical axis names ('batch' rows over the data
  axes, 'heads'/'mlp'/'vocab' over tensor, None whole). A no-op outside the mesh strategy's rules."""
  return nn.with_logical_constraint(x, axes)


def sinusoidal_positions(n_pos: int, d: int) -> jax.Array:
  """P[pos, 2i] = sin(pos / 10000^(2i/d)), P[pos, 2i+1] = cos(pos / 10000^(2i/d)); [n_pos, d]."""
  pos = jnp.arange(n_pos, dtype=jnp.float32)[:, None]
  freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, d, 2, dtype=jnp.float32) / d)[None, :]
  return jnp.stack([jnp.sin(pos * freq), jnp.cos(pos * freq)], axis=-1).reshape(n_pos, d)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding (Su et al., 2021): x [batch, seq, heads, head_dim] at positions
  [batch or 1, seq] -> x with each pair (x_i, x_{i + head_dim/2}) turned by the angle
  position * theta^(-2i / head_dim) (the half-split pairing of GPT-NeoX and Hugging Face's Llama).

  Rotations compose, so a query at position m and a key at position n score (R_m q)^T (R_n k) =
  q^T R_{n-m} k: attention sees only the offset n - m, whatever the absolute positions.
  Computed in float32 and returned in x's dtype.
  """
  half = x.shape[-1] // 2
  freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [head_dim / 2]
  angle = positions.astype(jnp.float32)[:, :, None, None] * freq  # [batch, seq, 1, head_dim / 2]
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


def norm(config: GPTConfig, name: str | None = None, kind: str | None = None, axis: str = 'embed') -> nn.Module:
  """LayerNorm (GPT-2: (x - mean) / std * g + b) or RMSNorm (Llama: x / rms(x) * g), over the last
  axis, whose logical name is `axis`; `kind` ('layernorm' or 'rmsnorm') defaults to config.norm."""
  ones, zeros = _named(nn.initializers.ones, axis), _named(nn.initializers.zeros, axis)
  if (kind or config.norm) == 'rmsnorm':
    return nn.RMSNorm(epsilon=1e-5, dtype=config.dtype, param_dtype=config.param_dtype, scale_init=ones,
                      name=name)
  return nn.LayerNorm(epsilon=1e-5, use_bias=config.bias, dtype=config.dtype, param_dtype=config.param_dtype,
                      scale_init=ones, bias_init=zeros, name=name)


def attention(q, k, v, mask, dropout: nn.Module, deterministic: bool):
  """Softmax(Q K^T / sqrt(d)) V; returns [batch, seq, n_head * head_dim].

  q: [batch, seq, n_head, head_dim]; k, v: [batch, n_kv_head, kv_len, head_dim] (the KV cache's
  [batch * n_kv_head, ...] buffers, viewed per row); mask: [batch, seq, kv_len], True where a query
  may attend. Each K/V head serves n_head // n_kv_head query heads (grouped-query attention when
  n_kv_head < n_head).
  """
  batch, seq, n_head, head_dim = q.shape
  n_kv = k.shape[1]
  group = n_head // n_kv
  # [batch, n_kv, group * seq, head_dim]: each K/V head with all the queries it serves.
  q = q.reshape(batch, seq, n_kv, group, head_dim).transpose(0, 2, 3, 1, 4)
  q = q.reshape(batch, n_kv, group * seq, head_dim)
  scores = float32_einsum('bnqd,bnld->bnql', q, k) / math.sqrt(head_dim)
  scores = scores.reshape(batch, n_kv, group, seq, -1)
  scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = dropout(jax.nn.softmax(scores, axis=-1), deterministic=deterministic)
  probs = probs.reshape(batch, n_kv, group * seq, -1).astype(v.dtype)
  out = jnp.einsum('bnql,bnld->bnqd', probs, v)  # [batch, n_kv, group * seq, head_dim]
  out = out.reshape(batch, n_kv, group, seq, head_dim).transpose(0, 3, 1, 2, 4)
  return out.reshape(batch, seq, n_head * head_dim)


class CausalSelfAttention(nn.Module):
  config: GPTConfig

  @nn.compact
  def __call__(self, x, mask, kv=None, pos=None, positions=None, *, deterministic=True):
    """x: [batch * seq, n_embd]; mask: [batch, seq, kv_len] (kv_len = seq, or the cache's max_len).

    kv: this layer's cached (k, v) buffers [batch * n_kv_head, max_len, head_dim] or None;
    pos: [batch] slots already filled; positions: [batch or 1, seq] each token's position (for RoPE).
    Returns (y [batch * seq, n_embd], updated kv or None).
    """
    c = self.config
    batch, seq, _ = mask.shape
    dense = lambda features, std, axes, name: nn.Dense(
        features, use_bias=c.bias, dtype=c.dtype, param_dtype=c.param_dtype,
        kernel_init=_named(nn.initializers.normal(std), *axes),
        bias_init=_named(nn.initializers.zeros, axes[1]), dot_general=dense_dot_general, name=name)
    # [q | k | v] heads side by side: 'qkv' is the fused (n_head + 2 * n_kv_head) * head_dim axis.
    qkv = dense((c.n_head + 2 * c.kv_heads) * c.head_dim, 0.02, ('embed', 'qkv'), 'c_attn')(x)
    q, k, v = jnp.split(qkv, [c.n_head * c.head_dim, (c.n_head + c.kv_heads) * c.head_dim], axis=-1)
    q = _split_as(q.reshape(batch, seq, c.n_head, c.head_dim), 'batch', None, 'heads', None)
    k = k.reshape(batch, seq, c.kv_heads, c.head_dim)
    if c.qk_norm:  # unit-RMS queries and keys (times a learned gain): attention logits stay bounded
      q, k = (norm(c, name, 'rmsnorm', axis='head_dim')(t) for name, t in (('q_norm', q), ('k_norm', k)))
    if c.pos_encoding == 'rope':  # each token at its own position (its row's cache slot when decoding)
      q, k = rope(q, positions, c.rope_theta), rope(k, positions, c.rope_theta)
    to_heads = lambda t: _split_as(t.reshape(batch, seq, c.kv_heads, c.head_dim).transpose(0, 2, 1, 3),
                                   'batch', 'heads', None, None)
    k, v = to_heads(k), to_heads(v)  # [batch, n_kv_head, seq, head_dim]
    if kv is not None:  # decoding: write the new keys/values, then attend over the whole buffer
      rows = lambda t: t.reshape(batch * c.kv_heads, seq, c.head_dim)  # the cache's layout
      kv = (kvc.write(kv[0], rows(k), pos), kvc.write(kv[1], rows(v), pos))
      k, v = (t.reshape(batch, c.kv_heads, -1, c.head_dim) for t in kv)
    if c.attention_impl == 'einsum':
      y = attention(q, k, v, mask, nn.Dropout(c.dropout), deterministic)
    else:  # jax.nn.dot_product_attention; causal self-attention needs no mask (cuDNN skips masked tiles)
      attention_lib.check(c)  # cuDNN where it cannot run: a one-line error, not a fallback
      y = attention_lib.dot_product(q, k, v, None if kv is None else mask, causal=kv is None and c.causal,
                                    implementation=c.attention_impl)
    y = y.reshape(batch * seq, -1)
    # Residual projections start smaller (GPT-2): the residual stream sums 2 * n_layer of them.
    y = dense(c.n_embd, 0.02 / math.sqrt(2 * c.n_layer), ('heads', 'embed'), 'c_proj')(y)
    return nn.Dropout(c.dropout)(y, deterministic=deterministic), kv


class MLP(nn.Module):
  """gelu(x W_fc) W_proj (GPT-2), or (silu(x W_gate) * x W_fc) W_proj (SwiGLU, Shazeer 2020)."""

  config: GPTConfig

  @nn.compact
  def __call__(self, x, *, deterministic=True):
    c = self.config
    dense = lambda features, std, axes, name: nn.Dense(
        features, use_bias=c.bias, dtype=c.dtype, param_dtype=c.param_dtype,
        kernel_init=_named(nn.initializers.normal(std), *axes),
        bias_init=_named(nn.initializers.zeros, axes[1]), dot_general=dense_dot_general, name=name)
    h = dense(c.mlp_width, 0.02, ('embed', 'mlp'), 'c_fc')(x)  # [batch * seq, mlp_width]
    if c.mlp == 'swiglu':
      h = nn.silu(dense(c.mlp_width, 0.02, ('embed', 'mlp'), 'c_gate')(x)) * h
    else:
      h = nn.gelu(h, approximate=True)
    h = _split_as(h, 'batch', 'mlp')
    x = dense(c.n_embd, 0.02 / math.sqrt(2 * c.n_layer), ('mlp', 'embed'), 'c_proj')(h)
    return nn.Dropout(c.dropout)(x, deterministic=deterministic)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

  config: GPTConfig

  @nn.compact
  def __call__(self, x, mask, kv=None, pos=None, positions=None, deterministic=True):
    c = self.config
    y, kv = CausalSelfAttention(c, name='attn')(norm(c, 'ln_1')(x), mask, kv, pos, positions,
                                                deterministic=deterministic)
    x = x + y
    x = x + MLP(c, name='mlp')(norm(c, 'ln_2')(x), deterministic=deterministic)
    return x, kv


def remat_block(c: GPTConfig):
  """Block, or Block rematerialized under the policy c.remat. Blocks are named explicitly (h_0,
  h_1, ...), so the parameter names are the same either way and checkpoints cross."""
  if c.remat == 'none':
    return Block
  # static_argnums counts self as 0: `deterministic` (6) is a Python bool that Dropout branches on.
  return nn.remat(Block, policy=REMAT_POLICIES[c.remat], static_argnums=(6,))


class GPT(nn.Module):
  config: GPTConfig

  def setup(self):
    c = self.config
    table = lambda rows, n_rows, name: nn.Embed(
        n_rows, c.n_embd, embedding_init=_named(nn.initializers.normal(0.02), rows, 'embed'),
        dtype=c.dtype, param_dtype=c.param_dtype, name=name)
    self.wte = table('vocab', c.vocab_size, 'wte')  # E: [vocab, n_embd]
    if c.pos_encoding == 'learned':
      self.wpe = table('position', c.block_size, 'wpe')  # P: [block_size, n_embd]
    self.drop = nn.Dropout(c.dropout)
    self.h = [remat_block(c)(c, name=f'h_{i}') for i in range(c.n_layer)]
    self.ln_f = norm(c)
    if c.tie_embeddings:
      if c.bias and c.head_bias:
        self.b_O = self.param('lm_head_bias', _named(nn.initializers.zeros, 'vocab'), (c.vocab_size,),
                              c.param_dtype)
    else:
      # The head's matmul accumulates and returns float32 whatever c.dtype is: logits feed a softmax
      # over the whole vocabulary, where bfloat16's 8 bits of mantissa would round them by ~0.1.
      self.lm_head = nn.Dense(c.vocab_size, use_bias=c.bias and c.head_bias, dtype=c.dtype,
                              param_dtype=c.param_dtype,
                              kernel_init=_named(nn.initializers.normal(0.02), 'embed', 'vocab'),
                              bias_init=_named(nn.initializers.zeros, 'vocab'),
                              # float32 logits: the CPU-laid-out product (gptjax/matmul.py) where the
                              # compute is float32 already, else one that accumulates and returns float32
                              dot_general=dense_dot_general if c.dtype == 'float32' else _float32_dot)

  def embed(self, tokens, positions):
    """X = E[tokens] + P[positions]: tokens, positions [batch, seq] -> [batch, seq, n_embd].

    With RoPE, X = E[tokens]: positions enter through the rotation of q and k in every layer.
    """
    c = self.config
    if c.pos_encoding == 'rope':
      return self.wte(tokens)
    if c.pos_encoding == 'learned':
      p = self.wpe(positions)
    else:
      p = sinusoidal_positions(c.block_size, c.n_embd)[positions].astype(c.dtype)
    return self.wte(tokens) + p

  def __call__(self, tokens, *, cache: kvc.KVCache | None = None, deterministic: bool = True):
    """tokens [batch, seq] int -> logits [batch, seq, vocab] float32 (and the updated cache if given).

    Without a cache, positions are 0..seq-1 and attention is causal over the sequence. With a cache,
    the tokens of row b take positions cache.pos[b] .. cache.pos[b] + seq - 1 and attend over that
    row's cached prefix too; the returned cache has them written and pos advanced by seq.
    """
    c = self.config
    batch, seq = tokens.shape
    if cache is None:
      positions = jnp.arange(seq)[None, :]
      mask = jnp.ones((batch, seq, seq), bool)
      mask = jnp.tril(mask) if c.causal else mask
    else:
      positions = cache.pos[:, None] + jnp.arange(seq)[None, :]
      mask = kvc.visible(cache.pos, seq, cache.max_len)

    x = self.drop(self.embed(tokens, positions), deterministic=deterministic)
    # The residual stream is kept 2-D, [batch * seq, n_embd]: every Dense is then a plain matrix
    # product, for which XLA:CPU picks much faster layouts than for 3-D dot_generals (a train step
    # of nanoGPT's CPU recipe went from ~72 to ~56 ms here).
    x = _split_as(x.reshape(batch * seq, c.n_embd), 'batch', None)
    new_k, new_v = [], []
    for i, block in enumerate(self.h):
      kv = None if cache is None else (cache.k[i], cache.v[i])
      x, kv = block(x, mask, kv, None if cache is None else cache.pos, positions, deterministic)
      x = _split_as(x, 'batch', None)
      if cache is not None:
        new_k.append(kv[0])
        new_v.append(kv[1])
    x = self.ln_f(x)

    if c.tie_embeddings:
      # h E^T, as Embed.attend computes it but accumulated and returned in float32 (see lm_head).
      e = self.wte.embedding.astype(c.dtype)
      logits = jnp.dot(x, e.T) if c.dtype == 'float32' else float32_einsum('td,vd->tv', x.astype(c.dtype), e)
      if c.bias and c.head_bias:
        logits = logits + self.b_O.astype(jnp.float32)
    else:
      logits = self.lm_head(x)  # h W_O + b_O
    logits = _split_as(logits.astype(jnp.float32).reshape(batch, seq, -1), 'batch', None, 'vocab')
    if cache is None:
      return logits
    return logits, kvc.KVCache(k=tuple(new_k), v=tuple(new_v), pos=cache.pos + seq)


def init_params(config: GPTConfig, rng: jax.Array) -> dict:
  """Fresh parameters for `config` (a plain nested dict of arrays). Pure: jit it with out_shardings
  to create them already sharded (see `gptjax.train.init_state`)."""
  tokens = jnp.zeros((1, min(config.block_size, 8)), jnp.int32)
  return jax.jit(lambda key: nn.unbox(GPT(config).init(key, tokens)['params']))(rng)


def param_axes(config: GPTConfig) -> dict:
  """The logical axis names of every parameter: the params' tree with a PartitionSpec of names
  (e.g. P('embed', 'mlp')) at each leaf. Computed from shapes only; nothing is allocated."""
  tokens = jax.ShapeDtypeStruct((1, min(config.block_size, 8)), jnp.int32)
  boxed = jax.eval_shape(GPT(config).init, jax.random.PRNGKey(0), tokens)['params']
  return nn.get_partition_spec(boxed)


def count_params(params, exclude_positions: bool = True) -> int:
  """Number of parameters (by default without the position table, as GPT-2/nanoGPT count them).
  Takes plain arrays or `GPT.init`'s output as is (its logical-axis boxes are looked through)."""
  params = nn.unbox(params)
  n = sum(x.size for x in jax.tree.leaves(params))
  if exclude_positions and 'wpe' in params:
    n -= params['wpe']['embedding'].size
  return n
