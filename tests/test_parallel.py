"""The mesh strategy on 8 fake CPU devices: the same losses and parameters as one device under data,
FSDP and tensor parallelism, the state really split, shapes a mesh cannot split refused, and
checkpoints that move between strategies and device counts."""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from conftest import tiny_run_config
from gptjax import objectives, parallel
from gptjax import train as T
from gptjax.config import resolve
from gptjax.errors import GptjaxError
from gptjax.metrics import read_jsonl
from gptjax.model import GPT, GPTConfig, init_params, param_axes
from gptjax.sample import sample_from_workdir

# Enough heads for tensor = 4, and every split dimension divisible by 8.
CONFIG = GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=4, n_embd=32)
BATCH, STEPS = 16, 12


def _optimizer():
  # Global-norm clipping (active here: the gradient norm starts above 0.5) needs the norm over every
  # shard of every gradient. Then plain SGD, whose update is linear in the gradient: Adam divides by
  # sqrt(v), so a weight whose true gradient is zero (the key bias: softmax ignores it) moves by
  # rounding noise scaled up to ~lr, differently under each layout. AdamW under the mesh is compared
  # through the losses of whole runs in test_checkpoints_move_between_strategies_and_device_counts.
  return optax.chain(optax.clip_by_global_norm(0.5), optax.sgd(0.5))


def _batches():
  """Two random batches, alternating: the model can learn them within a few steps."""
  two = np.asarray(jax.random.randint(jax.random.PRNGKey(7), (2, BATCH, CONFIG.block_size + 1), 0,
                                      CONFIG.vocab_size))
  return np.concatenate([two] * (STEPS // 2))


@functools.cache
def _one_device():
  tx = _optimizer()
  step = jax.jit(functools.partial(T.train_steps, model=GPT(CONFIG), tx=tx, axis_name=None))
  state, metrics = step(T.init_state(CONFIG, tx, seed=0), _batches())
  return np.asarray(metrics['loss']), jax.device_get(state.params)


def _mesh(data, fsdp, tensor):
  pc = ml_collections.ConfigDict({'strategy': 'mesh', 'data': data, 'fsdp': fsdp, 'tensor': tensor})
  return parallel.make_layout(pc, jax.devices())


@pytest.mark.parametrize('shape', [(2, 2, 2), (1, 8, 1), (2, 1, 4)])
def test_mesh_matches_one_device(shape):
  assert jax.device_count() == 8, 'conftest sets 8 fake CPU devices'
  layout, tx = _mesh(*shape), _optimizer()
  shardings = layout.state_shardings(T.state_axes(CONFIG, tx))
  step = layout.compile_train(functools.partial(T.train_steps, model=GPT(CONFIG), tx=tx, axis_name=None),
                              shardings)
  state = T.init_state(CONFIG, tx, seed=0, shardings=shardings)
  state, metrics = step(state, layout.put_batch(_batches(), BATCH))
  losses = layout.read(metrics['loss'])
  want_losses, want_params = _one_device()
  # Same global batches and initial values; only float32 summation order differs (partial sums
  # over shards combined by all-reduces): ~1e-7 relative per step, 1e-5 leaves room for 12 steps.
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
  assert losses[-1] < losses[0] - 0.1  # it trained: agreement is not trivial
  # Parameters: SGD moves them by lr * clipped gradient, so rounding-level gradient differences
  # stay at rounding level (measured <= 1.2e-7); 1e-6 absolute, on weights that moved by up to 0.08.
  for path, got in jax.tree_util.tree_leaves_with_path(state.params):
    want = _at(want_params, path)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    assert got.sharding == _at(shardings.params, path)  # and it stayed where the layout put it


def _at(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


def test_fsdp_splits_parameters_and_optimizer_state():
  layout = _mesh(1, 8, 1)
  tx = T.make_optimizer(resolve(tiny_run_config()).train)[0]  # training's clip + AdamW chain
  shardings = layout.state_shardings(T.state_axes(CONFIG, tx))
  state = T.init_state(CONFIG, tx, seed=0, shardings=shardings)
  adam = state.opt_state[1][0]  # chain(clip, adamw); adamw = chain(scale_by_adam, ...)
  mu, nu = adam.mu, adam.nu
  axes = T.state_axes(CONFIG, tx)
  is_spec = lambda x: isinstance(x, PartitionSpec)
  for tree, names in ((state.params, axes.params), (mu, axes.params), (nu, axes.params)):
    specs = jax.tree.leaves(names, is_leaf=is_spec)
    for (path, x), spec in zip(jax.tree_util.tree_leaves_with_path(tree), specs):
      per_device = {s.data.size for s in x.addressable_shards}
      # Every array with a model-width dimension is split 8 ways; the rest (biases of the qkv, MLP
      # and vocabulary widths) are tensor-parallel axes, whole on each device when tensor = 1.
      want = x.size // 8 if 'embed' in spec else x.size
      assert per_device == {want}, (jax.tree_util.keystr(path), per_device)
  leaves = jax.tree.leaves((state.params, state.opt_state))
  whole = sum(x.nbytes for x in leaves)
  on_device0 = sum(s.data.nbytes for x in leaves for s in x.addressable_shards if s.device == jax.devices()[0])
  # 1/8 of the state plus those biases, which are 1.4% of this tiny model's parameters (0.1% of
  # GPT-2 small's: experiments/bench_parallel.py): device 0 holds 14% of the state.
  assert whole / 8 < on_device0 < 0.15 * whole


@pytest.mark.parametrize('options', [
    {},
    {'tie_embeddings': True, 'pos_encoding': 'sinusoidal', 'n_kv_head': 2},  # lm_head_bias alone
    {'head_bias': False},
    {'tie_embeddings': True, 'head_bias': False},
    # Llama-style: RMSNorm scales, SwiGLU's c_gate, QK-norm's q_norm / k_norm, no biases.
    {'pos_encoding': 'rope', 'norm': 'rmsnorm', 'mlp': 'swiglu', 'qk_norm': True, 'bias': False},
    {'norm': 'rmsnorm', 'qk_norm': True, 'n_kv_head': 2, 'mlp_hidden': 48},
])
def test_every_parameter_has_logical_axis_names(options):
  config = GPTConfig(vocab_size=32, block_size=16, n_layer=1, n_head=4, n_embd=32, **options)
  params, axes = init_params(config, jax.random.PRNGKey(0)), param_axes(config)
  is_spec = lambda x: isinstance(x, PartitionSpec)
  assert jax.tree.structure(axes, is_leaf=is_spec) == jax.tree.structure(params)
  ruled = {name for name, _ in parallel.RULES}
  for (path, names), p in zip(jax.tree_util.tree_leaves_with_path(axes, is_leaf=is_spec), jax.tree.leaves(params)):
    # One name per dimension, each one RULES decides on (split over a mesh axis, or kept whole).
    assert len(names) == p.ndim and set(names) <= ruled, (jax.tree_util.keystr(path), names, p.shape)
    assert isinstance(p, jax.Array)  # plain arrays: no boxes leak out


def test_llama_style_gradients_on_the_mesh_match_one_device():
  """RoPE, RMSNorm, SwiGLU (c_gate), QK-norm (q_norm, k_norm) and grouped-query attention, split over
  data 2 x fsdp 2 x tensor 2: the loss and every gradient equal one device's."""
  config = GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, bias=False,
                     pos_encoding='rope', norm='rmsnorm', mlp='swiglu', qk_norm=True)
  layout, model = _mesh(2, 2, 2), GPT(config)
  tokens = _batches()[0]  # [16, 17]
  params = init_params(config, jax.random.PRNGKey(0))

  def loss_and_grads(params, tokens):
    loss_fn = lambda p: objectives.cross_entropy(model.apply({'params': p}, tokens[:, :-1]), tokens[:, 1:])[0]
    return jax.value_and_grad(loss_fn)(params)

  want = jax.jit(loss_and_grads)(params, tokens)
  param_shardings = nn.logical_to_mesh_sharding(param_axes(config), layout.mesh, parallel.RULES)
  rows = NamedSharding(layout.mesh, PartitionSpec(('data', 'fsdp')))  # [batch, seq + 1]: rows split
  got = layout.jit(loss_and_grads, (param_shardings, rows), (layout.replicated, param_shardings))(
      jax.device_put(params, param_shardings), tokens)
  # Only the order of float32 partial sums differs (shards combined by all-reduces): ~1e-7 relative.
  np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
  for path, g in jax.tree_util.tree_leaves_with_path(got[1]):
    np.testing.assert_allclose(np.asarray(g), np.asarray(_at(want[1], path)), rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))
  assert got[1]['h_0']['mlp']['c_gate']['kernel'].sharding.spec == PartitionSpec('fsdp', 'tensor')


@pytest.mark.parametrize('overrides, words', [
    ({'parallel.tensor': 4}, ['model.n_head=2 (attention heads) is not divisible by parallel.tensor=4']),
    ({'parallel.tensor': 2, 'model.vocab_size': 257},
     ['model.vocab_size=257 (embedding rows) is not divisible by parallel.tensor=2',
      '--config.model.vocab_size=258']),
    ({'parallel.fsdp': 3}, ['parallel.fsdp=3', 'cannot fill the 8 devices']),
    ({'parallel.data': 2, 'parallel.fsdp': 2, 'parallel.tensor': 1},
     ['make a mesh of 4 devices but the run has 8']),
])
def test_mesh_refuses_what_it_cannot_split_before_anything_runs(tmp_path, overrides, words):
  config = tiny_run_config(**{'parallel.strategy': 'mesh', **overrides})
  workdir = tmp_path / 'run'
  with pytest.raises(GptjaxError) as e:
    T.train_and_evaluate(config, str(workdir), progress=False)
  message = str(e.value)
  assert '\n' not in message
  for w in words:
    assert w in message, message
  assert not workdir.exists()  # nothing written


@pytest.mark.parametrize('variables, words', [
    ({'JAX_NUM_PROCESSES': '2'}, ['JAX_COORDINATOR_ADDRESS and JAX_PROCESS_ID not set']),
    ({'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1', 'JAX_NUM_PROCESSES': 'two', 'JAX_PROCESS_ID': '0'},
     ["JAX_NUM_PROCESSES='two'", 'must be integers']),
    ({'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1', 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '2'},
     ['JAX_PROCESS_ID=2 must be in 0..1']),
])
def test_multi_host_variables_are_checked_before_joining(monkeypatch, variables, words):
  for name, value in variables.items():
    monkeypatch.setenv(name, value)
  with pytest.raises(GptjaxError) as e:
    parallel.initialize()
  assert all(w in str(e.value) for w in words), str(e.value)


def _train(workdir, steps, devices, **overrides):
  config = tiny_run_config(**{'train.max_steps': steps, 'train.decay_steps': 40, 'train.devices': devices,
                              'train.checkpoint_interval': 10, **overrides})
  T.train_and_evaluate(config, str(workdir), progress=False)
  records = read_jsonl(str(workdir / 'metrics.jsonl'))
  return [(r['step'], r.get('train_loss'), r.get('val_loss')) for r in records]


def test_checkpoints_move_between_strategies_and_device_counts(tmp_path):
  """pmap on 2 -> FSDP over 4 -> tensor 2 x data 2 -> 1 device, 10 steps each, equals one
  uninterrupted run on 1 device; the result samples like any run."""
  full = _train(tmp_path / 'full', 40, 1)
  run = tmp_path / 'moved'
  _train(run, 10, 2)  # pmap, 2 devices
  _train(run, 20, 4, **{'parallel.strategy': 'mesh', 'parallel.fsdp': -1, 'parallel.data': 1})
  _train(run, 30, 4, **{'parallel.strategy': 'mesh', 'parallel.tensor': 2, 'parallel.data': 2})
  moved = _train(run, 40, 1)
  assert [s for s, *_ in moved] == [s for s, *_ in full] == [0, 10, 20, 30, 40]
  # Each run restores the previous one's state exactly; only summation order differs between the
  # layouts (1e-7 relative per step), so 40 steps agree to 1e-5. (The moved run also evaluates at
  # the end of each leg, steps 10 and 30: compared where both evaluated.)
  np.testing.assert_allclose([l for _, l, _ in moved[1:]], [l for _, l, _ in full[1:]], rtol=1e-5)
  np.testing.assert_allclose([moved[i][2] for i in (0, 2, 4)], [full[i][2] for i in (0, 2, 4)], rtol=1e-5)
  text = sample_from_workdir(str(run), 'def ', max_new_tokens=8, temperature=0.0)
  assert text == sample_from_workdir(str(tmp_path / 'full'), 'def ', max_new_tokens=8, temperature=0.0)
