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

Every parameter's initializer names its dimensions with logical axes ('vocab', 'embed', 'qkv',
'heads', 'mlp', 'position'); `gptjax/parallel.py` maps those names to mesh axes. `init_params`
returns plain arrays and `param_axes` the names, so nothing else sees the annotations.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from gptjax import kv_cache as kvc


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
  pos_encoding: str = 'learned'  # 'learned' (a table P) or 'sinusoidal' (fixed, Vaswani et al.)
  causal: bool = True  # False gives bidirectional attention (for a masked-LM objective)
  dtype: str = 'float32'  # compute dtype of activations and matmuls
  param_dtype: str = 'float32'

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
    if self.pos_encoding not in ('learned', 'sinusoidal'):
      problems.append(f"pos_encoding={self.pos_encoding!r} must be 'learned' or 'sinusoidal'")
    if self.pos_encoding == 'sinusoidal' and self.n_embd % 2:
      problems.append(f'sinusoidal positions need an even n_embd, got {self.n_embd}')
    for name in ('dtype', 'param_dtype'):
      if getattr(self, name) not in ('float32', 'bfloat16', 'float16'):
        problems.append(f"{name}={getattr(self, name)!r} must be 'float32', 'bfloat16' or 'float16'")
    if problems:
      raise ValueError('; '.join(problems))

  @property
  def head_dim(self) -> int:
    return self.n_embd // self.n_head

  @property
  def kv_heads(self) -> int:
    return self.n_kv_head or self.n_head


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
  scores = jnp.einsum('bnqd,bnld->bnql', q, k, preferred_element_type=jnp.float32) / math.sqrt(head_dim)
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
  def __call__(self, x, mask, kv=None, pos=None, *, deterministic=True):
    """x: [batch * seq, n_embd]; mask: [batch, seq, kv_len] (kv_len = seq, or the cache's max_len).

    kv: this layer's cached (k, v) buffers [batch * n_kv_head, max_len, head_dim] or None;
    pos: [batch] slots already filled. Returns (y [batch * seq, n_embd], updated kv or None).
    """
    c = self.config
    batch, seq, _ = mask.shape
    dense = lambda features, std, axes, name: nn.Dense(
        features, use_bias=c.bias, dtype=c.dtype, param_dtype=c.param_dtype,
        kernel_init=_named(nn.initializers.normal(std), *axes),
        bias_init=_named(nn.initializers.zeros, axes[1]), name=name)
    # [q | k | v] heads side by side: 'qkv' is the fused (n_head + 2 * n_kv_head) * head_dim axis.
    qkv = dense((c.n_head + 2 * c.kv_heads) * c.head_dim, 0.02, ('embed', 'qkv'), 'c_attn')(x)
    q, k, v = jnp.split(qkv, [c.n_head * c.head_dim, (c.n_head + c.kv_heads) * c.head_dim], axis=-1)
    q = _split_as(q.reshape(batch, seq, c.n_head, c.head_dim), 'batch', None, 'heads', None)
    to_heads = lambda t: _split_as(t.reshape(batch, seq, c.kv_heads, c.head_dim).transpose(0, 2, 1, 3),
                                   'batch', 'heads', None, None)
    k, v = to_heads(k), to_heads(v)  # [batch, n_kv_head, seq, head_dim]
    if kv is not None:  # decoding: write the new keys/values, then attend over the whole buffer
      rows = lambda t: t.reshape(batch * c.kv_heads, seq, c.head_dim)  # the cache's layout
      kv = (kvc.write(kv[0], rows(k), pos), kvc.write(kv[1], rows(v), pos))
      k, v = (t.reshape(batch, c.kv_heads, -1, c.head_dim) for t in kv)
    y = attention(q, k, v, mask, nn.Dropout(c.dropout), deterministic).reshape(batch * seq, -1)
    # Residual projections start smaller (GPT-2): the residual stream sums 2 * n_layer of them.
    y = dense(c.n_embd, 0.02 / math.sqrt(2 * c.n_layer), ('heads', 'embed'), 'c_proj')(y)
    return nn.Dropout(c.dropout)(y, deterministic=deterministic), kv


class MLP(nn.Module):
  config: GPTConfig

  @nn.compact
  def __call__(self, x, *, deterministic=True):
    c = self.config
    x = nn.Dense(4 * c.n_embd, use_bias=c.bias, dtype=c.dtype, param_dtype=c.param_dtype,
                 kernel_init=_named(nn.initializers.normal(0.02), 'embed', 'mlp'),
                 bias_init=_named(nn.initializers.zeros, 'mlp'), name='c_fc')(x)
    x = _split_as(nn.gelu(x, approximate=True), 'batch', 'mlp')  # [batch * seq, 4 * n_embd]
    x = nn.Dense(c.n_embd, use_bias=c.bias, dtype=c.dtype, param_dtype=c.param_dtype,
                 kernel_init=_named(nn.initializers.normal(0.02 / math.sqrt(2 * c.n_layer)), 'mlp', 'embed'),
                 bias_init=_named(nn.initializers.zeros, 'embed'), name='c_proj')(x)
    return nn.Dropout(c.dropout)(x, deterministic=deterministic)


def layer_norm(c: GPTConfig, name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-5, use_bias=c.bias, dtype=c.dtype, param_dtype=c.param_dtype,
                      scale_init=_named(nn.initializers.ones, 'embed'),
                      bias_init=_named(nn.initializers.zeros, 'embed'), name=name)


class Block(nn.Module):
  """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

  config: GPTConfig

  @nn.compact
  def __call__(self, x, mask, kv=None, pos=None, *, deterministic=True):
    c = self.config
    ln = lambda name: layer_norm(c, name)
    y, kv = CausalSelfAttention(c, name='attn')(ln('ln_1')(x), mask, kv, pos, deterministic=deterministic)
    x = x + y
    x = x + MLP(c, name='mlp')(ln('ln_2')(x), deterministic=deterministic)
    return x, kv


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
    self.h = [Block(c, name=f'h_{i}') for i in range(c.n_layer)]
    self.ln_f = layer_norm(c)
    if c.tie_embeddings:
      if c.bias and c.head_bias:
        self.b_O = self.param('lm_head_bias', _named(nn.initializers.zeros, 'vocab'), (c.vocab_size,),
                              c.param_dtype)
    else:
      self.lm_head = nn.Dense(c.vocab_size, use_bias=c.bias and c.head_bias, dtype=c.dtype,
                              param_dtype=c.param_dtype,
                              kernel_init=_named(nn.initializers.normal(0.02), 'embed', 'vocab'),
                              bias_init=_named(nn.initializers.zeros, 'vocab'))  # W_O, b_O

  def embed(self, tokens, positions):
    """X = E[tokens] + P[positions]: tokens, positions [batch, seq] -> [batch, seq, n_embd]."""
    c = self.config
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
      x, kv = block(x, mask, kv, None if cache is None else cache.pos, deterministic=deterministic)
      x = _split_as(x, 'batch', None)
      if cache is not None:
        new_k.append(kv[0])
        new_v.append(kv[1])
    x = self.ln_f(x)

    if c.tie_embeddings:
      logits = self.wte.attend(x)  # h E^T
      if c.bias and c.head_bias:
        logits = logits + self.b_O
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
  """Number of parameters (by default without the position table, as GPT-2/nanoGPT count them)."""
  n = sum(x.size for x in jax.tree.leaves(params))
  if exclude_positions and 'wpe' in params:
    n -= params['wpe']['embedding'].size
  return n
