"""The KV cache: keys and values of every token seen so far, as an explicit pytree.

Decoding one token at a time would recompute the keys and values of the whole prefix at every
step (O(n^2) work per token once attention is counted). Keeping them here makes each step compute
Q, K, V for the new token only and attend once over the cached prefix (O(n) per token).

The cache is plain data: `init` makes one, the model takes it in and returns an updated one, and
nothing is stored on a module between calls. Each row of the batch is its own sequence with its own
write position, so prompts of different lengths share one batch.
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
