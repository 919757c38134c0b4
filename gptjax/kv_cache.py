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

  k, v: one array per layer, each [batch, max_len, n_kv_head, head_dim].
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


def init(config, batch: int, max_len: int, dtype=None) -> KVCache:
  """An empty cache for `batch` rows of up to `max_len` tokens for a model of `config` (a GPTConfig).

  dtype defaults to the model's compute dtype (keys and values are stored as computed).
  """
  if max_len > config.block_size:
    raise ValueError(f'max_len={max_len} exceeds the {config.block_size} positions the model supports')
  dtype = jnp.dtype(dtype or config.dtype)
  shape = (batch, max_len, config.kv_heads, config.head_dim)  # [batch, max_len, n_kv_head, head_dim]
  zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layer))
  return KVCache(k=zeros, v=tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layer)),
                 pos=jnp.zeros((batch,), jnp.int32))


def write(buffer: jax.Array, new: jax.Array, pos: jax.Array) -> jax.Array:
  """Writes new [batch, seq, n_kv_head, head_dim] into buffer [batch, max_len, ...] at each row's pos.

  Callers make sure pos + seq <= max_len (dynamic_update_slice would clamp the start otherwise).
  """
  new = new.astype(buffer.dtype)
  return jax.vmap(lambda b, n, p: jax.lax.dynamic_update_slice(b, n, (p, 0, 0)))(buffer, new, pos)


def visible(pos: jax.Array, seq_len: int, max_len: int) -> jax.Array:
  """[batch, seq, max_len] bool: slot j is visible to new token i of a row iff j <= pos + i.

  The new tokens are written at slots pos .. pos + seq - 1 before attending, so each one sees the
  cached prefix and itself, never a later token or a stale slot beyond its row's length.
  """
  query_pos = pos[:, None] + jnp.arange(seq_len)[None, :]  # [batch, seq]
  return jnp.arange(max_len)[None, None, :] <= query_pos[:, :, None]
