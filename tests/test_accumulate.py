"""Gradient accumulation: 4 micro-batches give the step one whole batch gives, under pmap and under
the mesh; the FLOPs count behind MFU matches a hand count; MFU is null where the peak is unknown."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import ml_collections
import pytest

from conftest import TINY, tiny_run_config
from gptjax import accumulate, hardware, metrics, objectives, parallel
from gptjax import config as config_lib
from gptjax.errors import GptjaxError
from gptjax import train as T
from gptjax.model import GPT, GPTConfig

BATCHES = np.asarray(jax.random.randint(jax.random.PRNGKey(3), (4, 16, 33), 0, TINY.vocab_size))


def test_micro_batches_take_strided_rows():
  tokens = jnp.arange(8)[:, None] * jnp.ones((1, 3), jnp.int32)  # row r holds r
  parts = accumulate.micro_batches(tokens, 4)
  assert parts.shape == (4, 2, 3)
  assert parts[:, :, 0].tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]  # every device block feeds every part


# Masked LM: a bidirectional Llama-style model, 30% of positions picked, so every micro-batch holds
# a different number of scored targets (the accumulation must weight targets, not micro-batches).
LLAMA_MLM = dataclasses.replace(TINY, pos_encoding='rope', norm='rmsnorm', mlp='swiglu', qk_norm=True, bias=False,
                                causal=False)
MLM = objectives.Objective('mlm', mask_id=15, n_real=15, mask_prob=0.3)


def pmap_run(n_devices, accum, tx, batches=BATCHES, config=TINY, objective=objectives.NEXT_TOKEN):
  devices = jax.local_devices()[:n_devices]
  step = jax.pmap(functools.partial(T.train_steps, model=GPT(config), tx=tx, grad_accum_steps=accum,
                                    objective=objective), axis_name=parallel.AXIS, devices=devices)
  state = parallel.replicate(T.init_state(config, tx, seed=0), devices)
  state, out = step(state, parallel.shard(batches, n_devices, axis=1))
  return parallel.unreplicate(state), np.asarray(out['loss'][0]), np.asarray(out['grad_norm'][0])


def assert_same_step(a, b, config=TINY):
  """Two (state, losses, grad norms) results of the same global batches, from config's initial state."""
  (state_a, loss_a, norm_a), (state_b, loss_b, norm_b) = a, b
  # The same arithmetic in another order: the batch mean is a mean of 4 micro-batch means (of 2 rows
  # each per device) instead of one mean over 8 rows: float32 rounding, ~1e-7 relative per step.
  # Plain SGD keeps updates linear in the gradient, so 1e-5 holds over 4 steps (Adam would divide
  # rounding-level gradients by their own size; see test_train.py).
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  np.testing.assert_allclose(norm_a, norm_b, rtol=1e-5)
  for x, y in zip(jax.tree.leaves(state_a.params), jax.tree.leaves(state_b.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
  moved = max(float(jnp.abs(x - y).max()) for x, y in
              zip(jax.tree.leaves(state_a.params), jax.tree.leaves(T.init_state(config, optax.sgd(0), 0).params)))
  assert moved > 1e-3  # the parameters did move: agreement is not trivial


def test_four_micro_batches_equal_the_whole_batch_under_pmap():
  tx = optax.sgd(0.5)
  whole = pmap_run(2, 1, tx)
  assert_same_step(pmap_run(2, 4, tx), whole)


def test_four_micro_batches_equal_the_whole_batch_for_a_masked_lm_under_pmap():
  tx = optax.sgd(0.5)
  # The corruption is drawn on the whole batch before it is split: micro-batches really differ in
  # how many targets they score (else weighting by micro-batch would pass too).
  _, _, weights = objectives.examples(MLM, BATCHES[0, :8], jax.random.PRNGKey(0))
  counts = np.asarray(weights).reshape(2, 4, 32).sum(axis=(0, 2))  # per micro-batch of the first device
  assert len(set(counts.tolist())) > 1, counts
  whole = pmap_run(2, 1, tx, config=LLAMA_MLM, objective=MLM)
  assert_same_step(pmap_run(2, 4, tx, config=LLAMA_MLM, objective=MLM), whole, LLAMA_MLM)


def mesh_run(shape, accum, tx, config=TINY, batches=BATCHES):
  """The step as parallel.strategy='mesh' runs it (gptjax.parallel.MeshLayout): jit over a (data,
  fsdp, tensor) mesh, parameters and moments sharded by the layout's rules, rows over data x fsdp."""
  pc = ml_collections.ConfigDict({'strategy': 'mesh', 'data': shape[0], 'fsdp': shape[1], 'tensor': shape[2]})
  layout = parallel.make_layout(pc, jax.devices()[:math.prod(shape)])
  shardings = layout.state_shardings(T.state_axes(config, tx))
  step = layout.compile_train(functools.partial(T.train_steps, model=GPT(config), tx=tx, axis_name=None,
                                                grad_accum_steps=accum), shardings)
  state, out = step(T.init_state(config, tx, 0, shardings), layout.put_batch(batches, batches.shape[1]))
  return jax.device_get(state), layout.read(out['loss']), layout.read(out['grad_norm'])


def test_four_micro_batches_with_remat_under_fsdp_and_tensor_parallelism_equal_the_whole_batch():
  """Accumulation and remat inside the mesh step: FSDP over 2 devices x tensor parallelism over 2,
  each step's gradient summed over 4 micro-batches of rematerialized blocks == pmap's whole batch."""
  tx = optax.sgd(0.5)
  remat = dataclasses.replace(TINY, remat='full')
  assert_same_step(mesh_run((1, 2, 2), 4, tx, remat), pmap_run(2, 1, tx))


def test_flops_per_token_matches_a_hand_count():
  # n_layer 2, n_head 2, n_embd 32, vocab 16, seq_len 32; forward FLOPs of one token, 2 per multiply-add:
  per_layer = 2 * (32 * 96  # c_attn: 32 -> q, k, v (3 x 32)
                   + 32 * 32  # attn c_proj
                   + 32 * 128 + 128 * 32)  # MLP
  attention = 2 * (32 * 32) * 2  # Q K^T over 32 keys and softmax x V, 2 heads x 16 dims = 32 wide
  head = 2 * 32 * 16
  forward = 2 * (per_layer + attention) + head
  assert metrics.flops_per_token(TINY, 32) == 3 * forward  # backward = 2x forward
  # And with grouped-query attention: the K/V projections shrink, the attention term does not.
  gqa = dataclasses.replace(TINY, n_head=4, n_kv_head=1)  # head_dim 8, K and V 8 wide each
  forward_gqa = 2 * (2 * (32 * (32 + 8 + 8) + 32 * 32 + 32 * 128 + 128 * 32) + attention) + head
  assert metrics.flops_per_token(gqa, 32) == 3 * forward_gqa
  # SwiGLU: three 32 x 88 matrices (8/3 x 32 rounded up to a multiple of 8), no biases (they are not counted).
  swiglu = dataclasses.replace(TINY, mlp='swiglu', bias=False)
  forward_swiglu = 2 * (2 * (32 * 96 + 32 * 32 + 3 * 32 * 88) + attention) + head
  assert metrics.flops_per_token(swiglu, 32) == 3 * forward_swiglu


@pytest.mark.parametrize('config', [TINY, dataclasses.replace(TINY, n_head=4, n_kv_head=1, tie_embeddings=True),
                                    LLAMA_MLM, dataclasses.replace(TINY, mlp_hidden=48)],
                         ids=['gpt2', 'gqa_tied', 'llama_mlm', 'mlp_hidden'])
def test_flops_per_token_matches_the_matmuls_of_the_compiled_forward(config):
  """Sums 2 x (output size) x (contracted size) over every dot_general of the model's forward, as
  traced: an independent count of what the formula claims (3x it is one training token)."""
  from test_mixed_precision import all_dots
  params = jax.eval_shape(lambda: T.init_state(config, optax.sgd(0), 0).params)
  tokens = jnp.zeros((2, 32), jnp.int32)
  total = 0
  for eqn in all_dots(jax.make_jaxpr(lambda p: GPT(config).apply({'params': p}, tokens))(params).jaxpr):
    (contract, _), _ = eqn.params['dimension_numbers']
    lhs = eqn.invars[0].aval.shape
    total += 2 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in contract])
  assert 3 * total / tokens.size == metrics.flops_per_token(config, 32)


def test_mfu_is_null_where_the_peak_is_unknown_and_uses_the_table_where_known():
  config = GPTConfig()  # GPT-2 small
  assert hardware.peak_flops('cpu', 'float32') is None
  assert hardware.peak_flops('NVIDIA L40S', 'bfloat16') is None  # not an L4
  assert hardware.total_peak_flops(jax.devices(), 'bfloat16') is None  # this machine's CPU devices
  assert metrics.mfu(1e5, config, 1024, None) is None
  assert metrics.throughput(1000, 1.0, 10, config, 1024, None)['mfu'] is None
  assert hardware.peak_flops('NVIDIA H100 80GB HBM3', 'bfloat16') == 989.5e12
  assert hardware.peak_flops('NVIDIA H100 PCIe', 'bfloat16') == 756e12
  assert hardware.peak_flops('NVIDIA H200', 'float32') == 494.5e12  # TF32: JAX's default for float32
  assert hardware.peak_flops('NVIDIA A100-SXM4-80GB', 'bfloat16') == 312e12
  assert hardware.peak_flops('NVIDIA L4', 'bfloat16') == 121e12
  for kind, peak in (('TPU v4', 275e12), ('TPU v5 lite', 197e12), ('TPU v5', 459e12), ('TPU v5p', 459e12),
                     ('TPU v6 lite', 918e12)):
    assert hardware.peak_flops(kind, 'bfloat16') == hardware.peak_flops(kind, 'float32') == peak
  # GPT-2 small at 1024 tokens: 6 N + 12 L T d = 6 * 123.5M + 113M = 854M FLOPs a token; 500k tokens/s
  # on one H100 is 4.27e14 FLOP/s, 43% of 989.5 TFLOP/s.
  assert metrics.mfu(5e5, config, 1024, 989.5e12) == pytest.approx(0.4317, abs=1e-3)


def test_config_refuses_accumulation_that_does_not_split_each_devices_rows_in_one_line():
  config_lib.validate(tiny_run_config(**{'train.grad_accum_steps': 4}), 2)  # 8 rows: 4 a device, 1 a micro-batch
  with pytest.raises(GptjaxError, match=r'^train.grad_accum_steps=3 does not divide the 4 rows each device gets '
                                        r'\(train.batch_size=8 over the 2 devices\); use a divisor of it, or a larger batch$'):
    config_lib.validate(tiny_run_config(**{'train.grad_accum_steps': 3}), 2)
  with pytest.raises(GptjaxError, match=r'^train.grad_accum_steps=0 must be >= 1$'):
    config_lib.validate(tiny_run_config(**{'train.grad_accum_steps': 0}), 1)
  with pytest.raises(GptjaxError, match=r"^model: remat='some' must be one of 'none', 'full', 'dots_saveable'"):
    config_lib.validate(tiny_run_config(**{'model.remat': 'some'}), 1)
