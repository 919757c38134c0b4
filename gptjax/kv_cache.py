"""The KV cache: keys and values of every token seen so far, as an explicit pytree.

Decoding one token at a time would recompute the keys and values of the whole prefix at every
step (O(n^2) work per token once attention is counted). Keeping them here makes each step compute
Q, K, V for the new token only and attend once over the cached prefix (O(n) per token).

The cache is plain data: `init` makes one, the model takes it in and returns an updated one, and
nothing is stored on a module between calls. Each row of the batch is its own sequence with its own
write position, so prompts of different lengths share one batch.

A step attends over every slot of the cache it is given, so its cost follows `max_len`, not what is
filled: decoding (`decode.py`) keeps the cache only as long as the longest row needs, growing it in
a few steps (`resize`), so a step costs what the filled prefix costs. `set_row` puts back a row that
was re-encoded on its own (a sliding window re-prefilled at positions 0..).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class KVCache:
  """Per-layer key and value buffers, preallocated once, plus each row's write position.

  k, v: one array per layer, each [batch * n_kv_head, max_len, head_dim]: row b's head h is
        k[b * n_kv_head + h]. Each head's keys are one contiguous [max_len, head_dim] matrix, which
        attention reads as is (with positions before heads, XLA:CPU transposed the whole cache at
        every decode step: ~2 ms of a ~3 ms step at batch 16), and batch and heads are one axis so
        that batch 1 has no unit axis (XLA drops it from the attention matmul, and the reshaped
        cache then got copied at every step: ~60% of a batch-1 step).
  pos:  [batch] int32: how many slots of each row are filled, i.e. where the next token is written
        and which position (0-based) it has in its sequence.
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  pos: jax.Array

  @property
  def batch(self) -> int:
    return self.pos.shape[0]

  @property
  def max_len(self) -> int:
    return self.k[0].shape[1]

  def layer(self, i: int, n_kv_head: int) -> tuple[jax.Array, jax.Array]:
    """Layer i's keys and values as [batch, n_kv_head, max_len, head_dim] (a view for inspection)."""
    shape = (self.batch, n_kv_head) + self.k[i].shape[1:]
    return self.k[i].reshape(shape), self.v[i].reshape(shape)


def init(config, batch: int, max_len: int, dtype=None) -> KVCache:
  """An empty cache for `batch` rows of up to `max_len` tokens for a model of `config` (a GPTConfig).

  dtype defaults to the model's compute dtype (keys and values are stored as computed).
  """
  if max_len > config.block_size:
    raise ValueError(f'max_len={max_len} exceeds the {config.block_size} positions the model supports')
  dtype = jnp.dtype(dtype or config.dtype)
  shape = (batch * config.kv_heads, max_len, config.head_dim)  # [batch * n_kv_head, max_len, head_dim]
  zeros = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layer))
  return KVCache(k=zeros(), v=zeros(), pos=jnp.zeros((batch,), jnp.int32))


def write(buffer: jax.Array, new: jax.Array, pos: jax.Array) -> jax.Array:
  """Writes new [batch * n_kv_head, seq, head_dim] into buffer [batch * n_kv_head, max_len, head_dim]
  at slots pos[b] .. pos[b] + seq - 1 of every head of row b.

  Writes past max_len are dropped, never wrapped or clamped onto earlier slots (callers check the
  length first). Inside a jit/scan with the buffer carried or donated, XLA updates it in place.
  """
  rows, seq = new.shape[0], new.shape[1]
  slots = jnp.repeat(pos, rows // pos.shape[0])[:, None] + jnp.arange(seq)[None, :]  # [rows, seq]
  return buffer.at[jnp.arange(rows)[:, None], slots].set(new.astype(buffer.dtype), mode='drop')


def visible(pos: jax.Array, seq_len: int, max_len: int) -> jax.Array:
  """[batch, seq, max_len] bool: slot j is visible to new token i of a row iff j <= pos + i.

  The new tokens are written at slots pos .. pos + seq - 1 before attending, so each one sees the
  cached prefix and itself, never a later token or a stale slot beyond its row's length (padding
  of a shorter prompt, or never written).
  """
  query_pos = pos[:, None] + jnp.arange(seq_len)[None, :]  # [batch, seq]
  return jnp.arange(max_len)[None, None, :] <= query_pos[:, :, None]


def resize(cache: KVCache, max_len: int) -> KVCache:
  """The cache with max_len slots: grown with empty slots at the end, or cut to its first max_len.

  Cutting drops slots past max_len, so callers cut only slots no row has filled (pos <= max_len).
  """
  have = cache.max_len
  if max_len > have:
    change = lambda b: jnp.pad(b, ((0, 0), (0, max_len - have), (0, 0)))
  else:
    change = lambda b: b[:, :max_len]
  return cache.replace(k=tuple(map(change, cache.k)), v=tuple(map(change, cache.v)))


def set_row(cache: KVCache, row: jax.Array, part: KVCache) -> KVCache:
  """Row `row` (a traced int) of the cache replaced by the one-row cache `part`: its first
  part.max_len slots take part's keys and values and its pos becomes part.pos[0]. Slots after them
  keep stale values, which the new pos hides."""
  n_kv = part.k[0].shape[0]  # a one-row cache holds n_kv_head rows of [max_len, head_dim]
  put = lambda buffer, new: jax.lax.dynamic_update_slice(buffer, new.astype(buffer.dtype), (row * n_kv, 0, 0))
  return KVCache(k=tuple(map(put, cache.k, part.k)), v=tuple(map(put, cache.v, part.v)),
                 pos=cache.pos.at[row].set(part.pos[0]))
