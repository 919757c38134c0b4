"""The KV cache pytree: allocation, per-row writes, and what each new token may see."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY
from gptjax import kv_cache as kvc


def test_init_allocates_per_layer_buffers():
  cache = kvc.init(TINY, batch=3, max_len=10)
  assert len(cache.k) == len(cache.v) == TINY.n_layer
  assert cache.k[0].shape == (3 * TINY.kv_heads, 10, TINY.head_dim)  # [batch * kv_heads, max_len, head_dim]
  k, v = cache.layer(1, TINY.kv_heads)
  assert k.shape == v.shape == (3, TINY.kv_heads, 10, TINY.head_dim)
  assert cache.pos.tolist() == [0, 0, 0]
  assert cache.batch == 3 and cache.max_len == 10
  leaves = jax.tree.leaves(cache)  # a pytree: it can be a scan carry or a jit argument
  assert len(leaves) == 2 * TINY.n_layer + 1


def test_init_refuses_more_slots_than_positions():
  with pytest.raises(ValueError, match='exceeds the 32 positions'):
    kvc.init(TINY, batch=1, max_len=33)


def test_write_puts_each_row_at_its_own_position():
  buf = jnp.zeros((4, 6, 1))  # batch 2 x 2 heads, 6 slots, head_dim 1
  new = jnp.array([[1.0, 2.0], [5.0, 6.0], [3.0, 4.0], [7.0, 8.0]])[..., None]  # [4 rows, seq 2, 1]
  out = kvc.write(buf, new, jnp.array([1, 3]))
  assert out[..., 0].tolist() == [[0, 1, 2, 0, 0, 0], [0, 5, 6, 0, 0, 0],  # row 0, both heads at 1, 2
                                  [0, 0, 0, 3, 4, 0], [0, 0, 0, 7, 8, 0]]  # row 1, both heads at 3, 4


def test_write_past_the_end_is_dropped_not_clamped():
  out = kvc.write(jnp.zeros((1, 4, 1)), jnp.ones((1, 2, 1)), jnp.array([3]))
  assert out[0, :, 0].tolist() == [0, 0, 0, 1]  # slot 4 does not exist; slot 2 is left alone


def test_visible_mask_is_causal_from_each_rows_position():
  mask = np.asarray(kvc.visible(jnp.array([0, 2]), seq_len=2, max_len=5))
  assert mask[0].astype(int).tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0]]
  assert mask[1].astype(int).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]


def test_decode_writes_in_place_inside_scan():
  """A lax.scan over cache writes keeps one buffer: the compiled loop never copies a cache buffer."""
  cache = kvc.init(TINY, batch=2, max_len=32)

  def body(c, x):
    k = tuple(kvc.write(b, jnp.full((b.shape[0], 1, b.shape[2]), x), c.pos) for b in c.k)
    return c.replace(k=k, pos=c.pos + 1), None

  run = jax.jit(lambda c: jax.lax.scan(body, c, jnp.arange(32.0))[0], donate_argnums=0)
  hlo = run.lower(cache).compile().as_text()
  out = run(cache)
  assert out.k[0][1, :, 0].tolist() == list(range(32))
  shape = 'f32[%d,32,%d]' % (2 * TINY.kv_heads, TINY.head_dim)
  assert re.search(re.escape(shape) + r'\{[0-9,]*\} (scatter|dynamic-update-slice)\(', hlo)  # updated...
  assert not re.search(re.escape(shape) + r'\{[0-9,]*\} copy\(', hlo)  # ...in place, never copied


def test_resize_grows_with_empty_slots_and_cuts_to_a_prefix():
  cache = kvc.init(TINY, batch=2, max_len=4)
  cache = cache.replace(k=tuple(b + 1 for b in cache.k), pos=jnp.array([3, 1]))
  grown = kvc.resize(cache, 10)
  assert grown.max_len == 10 and grown.pos.tolist() == [3, 1]
  assert float(grown.k[0][:, :4].min()) == 1 and float(abs(grown.k[0][:, 4:]).max()) == 0  # new slots empty
  cut = kvc.resize(grown, 3)
  assert cut.max_len == 3 and float(cut.k[1].min()) == 1  # the first 3 slots, as they were


def test_set_row_replaces_one_rows_prefix_and_position():
  cache = kvc.init(TINY, batch=3, max_len=6)
  cache = cache.replace(k=tuple(b + 7 for b in cache.k), pos=jnp.array([6, 6, 5]))
  part = kvc.init(TINY, batch=1, max_len=2)
  part = part.replace(k=tuple(b - 1 for b in part.k), pos=jnp.array([2]))
  out = kvc.set_row(cache, jnp.int32(1), part)
  k = np.asarray(out.layer(0, TINY.kv_heads)[0])  # [batch, heads, max_len, head_dim]
  assert (k[1, :, :2] == -1).all() and (k[1, :, 2:] == 7).all()  # row 1: new prefix, stale rest
  assert (k[[0, 2]] == 7).all() and out.pos.tolist() == [6, 2, 5]  # other rows untouched
