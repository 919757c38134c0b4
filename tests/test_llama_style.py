"""The Llama-style block options: cached decoding per option, RoPE's relative positions, learning with
every option on, and nothing changed with every option off (against a fixture made by the code that
predates the options, tests/fixtures/make_gpt2_style_run.py)."""

import dataclasses
import functools
import importlib.util
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_run_config
from gptjax import config as config_lib
from gptjax import decode
from gptjax import kv_cache as kvc
from gptjax import model as M
from gptjax import sample
from gptjax import train as T
from gptjax.metrics import read_jsonl

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')
BASE = M.GPTConfig(vocab_size=16, block_size=24, n_layer=2, n_head=2, n_embd=32)
ALL_ON = dict(pos_encoding='rope', norm='rmsnorm', mlp='swiglu', qk_norm=True, bias=False, n_head=4, n_kv_head=2)
OPTIONS = {'rope': dict(pos_encoding='rope'), 'rmsnorm': dict(norm='rmsnorm'), 'swiglu': dict(mlp='swiglu'),
           'qk_norm': dict(qk_norm=True), 'no_bias': dict(bias=False), 'gqa': dict(n_head=4, n_kv_head=2),
           'all': ALL_ON}


def _fixture_module():
  spec = importlib.util.spec_from_file_location('make_gpt2_style_run', os.path.join(FIXTURES, 'make_gpt2_style_run.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@functools.partial(jax.jit, static_argnames=('config', 'n_steps'))
def _full_and_cached(params, tokens, prompts, lengths, *, config, n_steps):
  """Logits of the full forward, and of a prefill of the right-padded prompts followed by n_steps
  one-token decode steps that feed each row its next true token (teacher forcing)."""
  gpt = M.GPT(config)
  full = gpt.apply({'params': params}, tokens)
  cache = kvc.init(config, tokens.shape[0], tokens.shape[1])
  prefill_logits, cache = gpt.apply({'params': params}, prompts, cache=cache)
  cache = cache.replace(pos=lengths)

  def step(cache, _):
    token = jnp.take_along_axis(tokens, cache.pos[:, None], axis=1)  # each row's token at its own position
    logits, cache = gpt.apply({'params': params}, token, cache=cache)
    return cache, logits[:, 0]

  _, stepped = jax.lax.scan(step, cache, length=n_steps)
  return full, prefill_logits, stepped.transpose(1, 0, 2)  # [batch, n_steps, vocab]


@pytest.mark.parametrize('option', OPTIONS)
def test_cached_decoding_equals_the_full_forward_with_ragged_rows(option):
  config = dataclasses.replace(BASE, **OPTIONS[option])
  # Larger-than-default weights: logits far from uniform, so a wrong position or mask shows.
  params = jax.tree.map(lambda x: x * 4 if x.ndim == 2 else x, M.init_params(config, jax.random.PRNGKey(0)))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 20), 0, config.vocab_size)
  lengths = np.array([5, 9, 2], np.int32)
  prompts = np.asarray(tokens[:, :9]).copy()
  for row, n in enumerate(lengths):
    prompts[row, n:] = (prompts[row, n:] + 7) % config.vocab_size  # padding unlike the true tokens
  n_steps = 10
  full, prefill_logits, stepped = jax.device_get(_full_and_cached(
      params, tokens, jnp.asarray(prompts), jnp.asarray(lengths), config=config, n_steps=n_steps))
  # fp32; the cached path attends over all 20 slots (masked ones are exact zeros) in another order
  # than the full forward: differences of a few ulps of logits of size ~10 (measured <= 4e-6).
  tol = dict(atol=2e-5, rtol=2e-5)
  for row, n in enumerate(lengths):
    np.testing.assert_allclose(prefill_logits[row, :n], full[row, :n], **tol)
    np.testing.assert_allclose(stepped[row], full[row, n:n + n_steps], **tol)
  assert np.abs(full[0, 1:] - full[0, :-1]).max() > 1.0  # positions differ: the match means something


def test_every_option_on_is_still_causal():
  config = dataclasses.replace(BASE, **ALL_ON)
  params = M.init_params(config, jax.random.PRNGKey(1))
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 12), 0, config.vocab_size)
  changed = tokens.at[:, 6].set((tokens[:, 6] + 1) % config.vocab_size)
  a, b = (np.asarray(M.GPT(config).apply({'params': params}, t)) for t in (tokens, changed))
  np.testing.assert_array_equal(a[:, :6], b[:, :6])  # no path from position 6 to earlier ones
  assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-3


def test_rope_attention_scores_depend_only_on_the_offset():
  """(R_m q)^T (R_n k) = q^T R_(n-m) k: moving every position by the same shift leaves the scores."""
  q = jax.random.normal(jax.random.PRNGKey(0), (1, 12, 2, 16))
  k = jax.random.normal(jax.random.PRNGKey(1), (1, 12, 2, 16))
  positions = jnp.arange(12)[None]
  scores = lambda p: jnp.einsum('bqhd,bkhd->bhqk', M.rope(q, p, 10000.0), M.rope(k, p, 10000.0))
  base = np.asarray(scores(positions))
  for shift in (1, 37, 1000):
    # float32 angles up to ~1000 rad carry ~6e-5 of rounding; scores are sums of 16 products ~1.
    np.testing.assert_allclose(np.asarray(scores(positions + shift)), base, atol=5e-4, rtol=1e-4)
  # Not a trivial invariance: the scores do depend on the offset, and rotating changes q.
  unrotated = np.asarray(jnp.einsum('bqhd,bkhd->bhqk', q, k))
  assert np.abs(base - unrotated).max() > 0.5
  np.testing.assert_allclose(np.asarray(M.rope(q, jnp.zeros((1, 12), jnp.int32), 10000.0)), np.asarray(q))


def test_rope_model_has_no_position_table_and_sees_order():
  config = dataclasses.replace(BASE, pos_encoding='rope')
  params = M.init_params(config, jax.random.PRNGKey(0))
  assert 'wpe' not in params
  tokens = jnp.array([[1, 2, 3, 4, 5, 6]])
  swapped = jnp.array([[2, 1, 3, 4, 5, 6]])
  a, b = (np.asarray(M.GPT(config).apply({'params': params}, t)) for t in (tokens, swapped))
  assert np.abs(a[0, 2:] - b[0, 2:]).max() > 1e-4  # order of earlier tokens matters without a table


def test_each_option_builds_the_documented_parameters():
  shapes = lambda **kw: jax.eval_shape(lambda: M.init_params(dataclasses.replace(BASE, **kw), jax.random.PRNGKey(0)))
  assert set(shapes(norm='rmsnorm')['h_0']['ln_1']) == {'scale'}  # RMSNorm: a gain, no bias
  mlp = shapes(mlp='swiglu')['h_0']['mlp']
  assert {k: v['kernel'].shape for k, v in mlp.items()} == {'c_fc': (32, 88), 'c_gate': (32, 88), 'c_proj': (88, 32)}
  assert shapes(mlp='swiglu', mlp_hidden=40)['h_0']['mlp']['c_gate']['kernel'].shape == (32, 40)
  attn = shapes(qk_norm=True, n_head=4)['h_0']['attn']
  assert attn['q_norm']['scale'].shape == attn['k_norm']['scale'].shape == (8,)  # per head_dim, shared by heads
  # SwiGLU's default width keeps the MLP's parameters at 8 d^2: 8/3 d rounded up to a multiple of 8.
  assert M.GPTConfig(n_embd=128, n_head=4, mlp='swiglu').mlp_width == 344
  assert M.GPTConfig(n_embd=768, mlp='swiglu').mlp_width == 2048


def test_the_benchmark_configs_have_equal_parameter_counts():
  """configs/llama_style_char.py against configs/shakespeare_char.py, position table counted: within 2%."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  counts = []
  for name in ('shakespeare_char', 'llama_style_char'):
    config = config_lib.model_config(config_lib.load_file(os.path.join(root, 'configs', f'{name}.py')),
                                     65)  # tiny Shakespeare has 65 characters
    shapes = jax.eval_shape(M.GPT(config).init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
    counts.append(sum(x.size for x in jax.tree.leaves(shapes)))
  assert counts[0] == 804_096  # nanoGPT's 0.80M plus the 64 x 128 position table
  assert abs(counts[1] / counts[0] - 1) < 0.02, counts


def test_every_option_on_overfits_a_batch():
  config = dataclasses.replace(BASE, **ALL_ON)
  tx = optax.adam(1e-2)
  state = T.init_state(config, tx, seed=0)
  batch = jax.random.randint(jax.random.PRNGKey(1), (4, 17), 0, config.vocab_size)  # 64 targets
  step = jax.jit(functools.partial(T.train_steps, model=M.GPT(config), tx=tx, axis_name=None))
  state, metrics = step(state, jnp.broadcast_to(batch, (300,) + batch.shape))
  losses = np.asarray(metrics['loss'])
  assert losses[0] > 2.0  # starts near log(16) = 2.77
  assert losses[-1] < 0.05  # memorised: 64 random tokens predicted with p > 0.95 on average


# ---------------------------------------------------------------------------------------------
# Every option off: the model as it was


def _flat(params):
  return {'/'.join(k.key for k in path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.mark.parametrize('name', ['gpt2', 'variant'])
def test_options_off_give_bit_identical_params_and_logits(name):
  """Against init_params and logits saved by the code before the options existed. (Measured
  bit-identical on AVX-512 and with XLA limited to AVX2; only SSE4.2-only code generation differs,
  by 4e-8.)"""
  fixture = _fixture_module()
  reference = np.load(fixture.NPZ)
  config = M.GPTConfig(**fixture.REFERENCE_MODELS[name])
  params = M.init_params(config, jax.random.PRNGKey(0))
  saved = {k[len(name) + len('/params/'):]: reference[k] for k in reference.files if k.startswith(f'{name}/params/')}
  flat = _flat(params)
  assert sorted(flat) == sorted(saved)  # the same parameter names
  for key, value in flat.items():
    assert value.shape == saved[key].shape and value.dtype == saved[key].dtype, key
    np.testing.assert_array_equal(value, saved[key], err_msg=key)
  logits = M.GPT(config).apply({'params': params}, jnp.asarray(fixture.REFERENCE_TOKENS))
  np.testing.assert_array_equal(np.asarray(logits), reference[f'{name}/logits'])


def test_an_old_run_loads_samples_and_resumes(tmp_path):
  fixture = _fixture_module()
  workdir = str(tmp_path / 'run')
  shutil.copytree(fixture.RUN, workdir)
  saved_model = json.load(open(os.path.join(workdir, 'config.json')))['model']
  assert 'norm' not in saved_model and 'qk_norm' not in saved_model  # written before the options existed
  params, config, tokenizer, step = sample.load_run(workdir)
  assert step == 10 and config.norm == 'layernorm' and config.pos_encoding == 'learned'
  tokens = jnp.asarray(fixture.REFERENCE_TOKENS % config.vocab_size)
  np.testing.assert_array_equal(np.asarray(M.GPT(config).apply({'params': params}, tokens)),
                                np.load(fixture.NPZ)['run/logits'])
  out = decode.generate(params, config, [tokenizer.encode('The cat')], jax.random.PRNGKey(0), max_new_tokens=5,
                        temperature=0.0)
  assert out.tokens.shape == (1, 5)
  # Training resumes from the old checkpoint with today's code (same config, 5 more steps).
  overrides = {**fixture.RUN_OVERRIDES, 'data.path': os.path.join(FIXTURES, 'gpt2_style_corpus.txt'),
               'train.max_steps': 15, 'train.decay_steps': 10}
  T.train_and_evaluate(tiny_run_config(**overrides), workdir, progress=False)
  steps = [r['step'] for r in read_jsonl(os.path.join(workdir, 'metrics.jsonl'))]
  assert steps == [0, 5, 10, 15]
