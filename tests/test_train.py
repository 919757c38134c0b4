"""Training: the step functions (overfitting, data parallelism) and the loop (determinism, resume)."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import TINY, tiny_run_config
from gptjax import parallel
from gptjax import train as T
from gptjax.config import resolve
from gptjax.metrics import read_jsonl
from gptjax.model import GPT


def test_tiny_model_overfits_one_batch():
  tx = optax.adam(1e-2)
  state = T.init_state(TINY, tx, seed=0)
  batch = jax.random.randint(jax.random.PRNGKey(1), (4, 17), 0, TINY.vocab_size)  # 64 targets
  step = jax.jit(functools.partial(T.train_steps, model=GPT(TINY), tx=tx, axis_name=None))
  state, metrics = step(state, jnp.broadcast_to(batch, (300,) + batch.shape))
  losses = np.asarray(metrics['loss'])
  assert losses[0] > 2.0  # starts near log(16) = 2.77
  assert losses[-1] < 0.05  # memorised: 64 random tokens predicted with p > 0.95 on average


def _run_data_parallel(n_devices, batches, tx):
  devices = jax.local_devices()[:n_devices]
  p_step = jax.pmap(functools.partial(T.train_steps, model=GPT(TINY), tx=tx),
                    axis_name=parallel.AXIS, devices=devices)
  state = parallel.replicate(T.init_state(TINY, tx, seed=0), devices)
  state, metrics = p_step(state, parallel.shard(batches, n_devices, axis=1))
  return parallel.unreplicate(state), np.asarray(metrics['loss'][0])


def test_eight_devices_match_one_device():
  assert jax.local_device_count() == 8, 'conftest sets 8 fake CPU devices'
  # Plain SGD keeps the comparison tight: an update is linear in the gradient. (Adam divides by
  # sqrt(v), so for a weight whose gradient is at rounding level a different summation order can
  # move it by up to lr; test_devices_do_not_change_the_result covers AdamW through the losses.)
  tx = optax.sgd(0.5)
  batches = np.asarray(jax.random.randint(jax.random.PRNGKey(3), (5, 16, 17), 0, TINY.vocab_size))
  state1, losses1 = _run_data_parallel(1, batches, tx)
  state8, losses8 = _run_data_parallel(8, batches, tx)
  # The same global batch: the only difference is float32 summation order (a mean over 16 rows vs a
  # pmean of 8 means of 2), ~1e-7 relative per step; 1e-6 leaves room for 5 steps of it.
  np.testing.assert_allclose(losses8, losses1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(state8.params), jax.tree.leaves(state1.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  assert int(state8.step) == int(state1.step) == 5
  # And the parameters did move, so agreement is not trivial.
  fresh = T.init_state(TINY, tx, seed=0)
  assert max(float(jnp.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(state8.params), jax.tree.leaves(fresh.params))) > 1e-3


def test_nonfinite_updates_are_skipped_when_asked():
  tx = optax.sgd(0.1)
  state = T.init_state(TINY, tx, seed=0)
  batch = jnp.zeros((1, 2, 9), jnp.int32)
  params = jax.tree.map(lambda p: p, state.params)
  params['lm_head']['bias'] = params['lm_head']['bias'].at[0].set(jnp.nan)
  state = state.replace(params=params)
  step = functools.partial(T.train_steps, model=GPT(TINY), tx=tx, axis_name=None)
  skipped, metrics = jax.jit(functools.partial(step, skip_nonfinite=True))(state, batch)
  assert not np.isfinite(metrics['loss']).any()
  for a, b in zip(jax.tree.leaves(skipped.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # update dropped
  assert int(skipped.step) == 1  # but the step (and its batch) is consumed


def test_optimizer_decays_only_matrices():
  config = resolve(tiny_run_config())
  tx, schedule = T.make_optimizer(config.train)
  params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones((2,))}
  zero = jax.tree.map(jnp.zeros_like, params)
  opt_state = tx.init(params)
  for _ in range(config.train.warmup_steps + 1):  # get past the warm-up's lr = 0 at step 0
    updates, opt_state = tx.update(zero, opt_state, params)
  assert float(jnp.abs(updates['kernel']).max()) > 0  # weight decay shrinks the matrix
  assert float(jnp.abs(updates['bias']).max()) == 0  # and leaves the bias alone
  assert float(schedule(config.train.warmup_steps)) == pytest.approx(config.train.learning_rate)
  assert float(schedule(config.train.max_steps)) == pytest.approx(config.train.min_lr)
  assert float(schedule(config.train.max_steps // 2)) > 2 * config.train.min_lr  # decays over all steps


# ---------------------------------------------------------------------------------------------
# The loop, on the tiny config (the standard library's sources as data)


def _train(workdir, **overrides):
  config = tiny_run_config(**{'train.devices': 1, **overrides})
  return T.train_and_evaluate(config, str(workdir), progress=False)


def _losses(workdir, key='train_loss'):
  return [(r['step'], r[key]) for r in read_jsonl(os.path.join(workdir, 'metrics.jsonl')) if key in r]


def test_same_seed_same_losses(tmp_path):
  _train(tmp_path / 'a')
  _train(tmp_path / 'b')
  assert _losses(tmp_path / 'a') == _losses(tmp_path / 'b')  # bit for bit
  assert _losses(tmp_path / 'a', 'val_loss') == _losses(tmp_path / 'b', 'val_loss')
  _train(tmp_path / 'c', seed=1)
  assert _losses(tmp_path / 'c') != _losses(tmp_path / 'a')


def test_steps_per_call_does_not_change_the_result(tmp_path):
  _train(tmp_path / 'a', **{'train.steps_per_call': 1, 'train.max_steps': 20})
  _train(tmp_path / 'b', **{'train.steps_per_call': 10, 'train.max_steps': 20})
  a, b = _losses(tmp_path / 'a'), _losses(tmp_path / 'b')
  assert [s for s, _ in a] == [s for s, _ in b] == [10, 20]
  # One update per call vs ten inside a lax.scan: the same HLO per step, but XLA may fuse the scan
  # body differently; float32 differences stay at rounding level (1e-6 relative).
  np.testing.assert_allclose([l for _, l in a], [l for _, l in b], rtol=1e-6)


def test_devices_do_not_change_the_result(tmp_path):
  _train(tmp_path / 'one', **{'train.max_steps': 20})
  _train(tmp_path / 'eight', **{'train.max_steps': 20, 'train.devices': 8})
  # Same global batches; only the summation order differs (see test_eight_devices_match_one_device).
  np.testing.assert_allclose([l for _, l in _losses(tmp_path / 'eight')],
                             [l for _, l in _losses(tmp_path / 'one')], rtol=1e-5)


def test_gradient_accumulation_does_not_change_the_result(tmp_path):
  _train(tmp_path / 'whole', **{'train.max_steps': 20})
  _train(tmp_path / 'accum', **{'train.max_steps': 20, 'train.grad_accum_steps': 4})  # 4 x 2 rows a step
  # The same batches, each step's gradient summed over 4 micro-batches: rounding-level differences,
  # which AdamW can carry to ~1e-6 relative in 20 steps (see test_devices_do_not_change_the_result).
  for key in ('train_loss', 'val_loss'):
    whole, accum = _losses(tmp_path / 'whole', key), _losses(tmp_path / 'accum', key)
    assert [s for s, _ in whole] == [s for s, _ in accum] and len(whole) >= 2
    np.testing.assert_allclose([l for _, l in accum], [l for _, l in whole], rtol=1e-5)


def test_workdir_holds_config_tokenizer_metrics_and_checkpoints(tmp_path):
  result = _train(tmp_path)
  assert sorted(os.listdir(tmp_path)) == ['checkpoints', 'config.json', 'data', 'metrics.jsonl',
                                          'provenance.jsonl', 'tensorboard', 'tokenizer.json']
  saved = json.load(open(tmp_path / 'config.json'))
  assert saved['model']['vocab_size'] == 256  # resolved from the byte tokenizer
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['20', '40']
  records = read_jsonl(str(tmp_path / 'metrics.jsonl'))
  assert [r['step'] for r in records] == [0, 10, 20, 30, 40]
  assert all(set(r) >= {'train_loss', 'lr'} for r in records[1:])
  timed = [r for r in records if 'tokens_per_sec' in r]  # MFU beside throughput: null, no CPU has a peak
  assert timed and all(r['mfu'] is None and r['tokens_per_sec'] > 0 for r in timed)
  assert records[-1]['val_loss'] == pytest.approx(result['val_loss'])
  assert records[-1]['val_loss'] < records[0]['val_loss'] - 0.5  # it learned something
  assert any(f.startswith('events') for f in os.listdir(tmp_path / 'tensorboard'))


def test_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path):
  _train(tmp_path / 'full', **{'train.max_steps': 40})
  first = _train(tmp_path / 'split', **{'train.max_steps': 20, 'train.decay_steps': 40})  # same schedule
  assert first['step'] == 20
  _train(tmp_path / 'split', **{'train.max_steps': 40})
  # Resuming restores params, optimizer state, step and rng; the sampler needs only the step.
  assert _losses(tmp_path / 'split') == _losses(tmp_path / 'full')
  assert _losses(tmp_path / 'split', 'val_loss') == _losses(tmp_path / 'full', 'val_loss')


def test_finished_run_is_not_retrained(tmp_path):
  _train(tmp_path, **{'train.max_steps': 20})
  before = open(tmp_path / 'metrics.jsonl').read()
  result = _train(tmp_path, **{'train.max_steps': 20})
  assert result['step'] == 20
  assert open(tmp_path / 'metrics.jsonl').read() == before


def test_training_compiles_a_fixed_number_of_programs_whatever_its_length(tmp_path):
  """Each shape is compiled once: a run of 12 calls lowers exactly as many programs to XLA as a run of
  one (a step that recompiles on its second call, e.g. because the state it returns is placed
  differently from the state it was given, would add at least one)."""
  lowered = []
  listener = lambda event, duration, **kw: lowered.append(event) if event.endswith(
      'jaxpr_to_mlir_module_duration') else None
  _train(tmp_path / 'warm', **{'train.max_steps': 20})  # process-wide caches (eager ops) filled once
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    counts = []
    for steps in (5, 60):  # 1 and 12 calls of train_steps (5 steps each), 2 and 4 evaluations
      lowered.clear()
      _train(tmp_path / str(steps), **{'train.max_steps': steps})
      counts.append(len(lowered))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert counts[0] >= 2, counts  # the listener sees the step and eval programs of a fresh run
  assert counts[0] == counts[1], counts
