"""Attention through jax.nn.dot_product_attention ('xla') equals the einsum path: in training (values
and gradients), and with the KV cache over ragged rows; cuDNN asked for where it cannot run is a
one-line error."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import attention, decode, objectives
from gptjax import kv_cache as kvc
from gptjax import model as M
from gptjax.errors import GptjaxError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Grouped-query (4 query heads share 2 K/V heads), so the head grouping is covered too.
EINSUM = M.GPTConfig(vocab_size=16, block_size=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
XLA = dataclasses.replace(EINSUM, attention_impl='xla')
# Issue 14's Llama-style block: RoPE rotates q and k before either attention path sees them (and at
# each row's own cache positions when decoding), QK-norm normalizes them first.
LLAMA = dataclasses.replace(EINSUM, pos_encoding='rope', norm='rmsnorm', mlp='swiglu', qk_norm=True, bias=False)
MODELS = {'gpt2': EINSUM, 'llama': LLAMA}


def scaled_params(config):
  # Weights x8 so attention is far from uniform: a wrong mask or head grouping shows in the logits.
  p = M.init_params(config, jax.random.PRNGKey(0))
  return jax.tree.map(lambda x: x * 8 if x.ndim == 2 else x, p)


@pytest.fixture(scope='module')
def params():
  return scaled_params(EINSUM)


def loss_and_grads(config, params, tokens):
  def loss_fn(p):
    inputs, targets = objectives.next_token_split(tokens)
    logits = M.GPT(config).apply({'params': p}, inputs)
    return objectives.cross_entropy(logits, targets)[0], logits
  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)


# Both paths compute float32 scores and softmax; they differ in operation order only (a softmax over
# the masked row vs over -inf-filled logits, other matmul layouts): a few ulps of values of size ~10.
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('model', ['gpt2', 'llama'])
@pytest.mark.parametrize('causal', [True, False])  # False: the masked-LM models' bidirectional attention
def test_training_forward_and_gradients_match_the_einsum_path(model, causal):
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 41), 0, 16)
  einsum = dataclasses.replace(MODELS[model], causal=causal)
  xla = dataclasses.replace(einsum, attention_impl='xla')
  params = scaled_params(einsum)
  (loss_e, logits_e), grads_e = loss_and_grads(einsum, params, tokens)
  (loss_x, logits_x), grads_x = loss_and_grads(xla, params, tokens)
  np.testing.assert_allclose(np.asarray(logits_x), np.asarray(logits_e), **TOL)
  np.testing.assert_allclose(loss_x, loss_e, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_x), jax.tree.leaves(grads_e)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('model', ['gpt2', 'llama'])
def test_kv_cache_over_ragged_rows_matches_the_einsum_path(model):
  """Prefill right-padded prompts of lengths 9, 3, 14 into a 40-slot cache, then 5 single-token
  steps: logits and the cache itself agree with the einsum path at every step."""
  einsum = MODELS[model]
  params = scaled_params(einsum)
  prompts = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (3, 14), 0, 16), np.int32)
  lengths = jnp.asarray([9, 3, 14], jnp.int32)
  nexts = jax.random.randint(jax.random.PRNGKey(3), (5, 3), 0, 16)

  def run(config):
    @jax.jit
    def go(params):
      last, cache = decode.prefill(params, config, jnp.asarray(prompts), lengths, kvc.init(config, 3, 40))
      out = [last]
      for t in range(5):
        logits, cache = M.GPT(config).apply({'params': params}, nexts[t][:, None], cache=cache)
        out.append(logits[:, 0])
      return jnp.stack(out), cache
    return go(params)

  logits_e, cache_e = run(einsum)
  logits_x, cache_x = run(dataclasses.replace(einsum, attention_impl='xla'))
  np.testing.assert_allclose(np.asarray(logits_x), np.asarray(logits_e), **TOL)
  assert cache_x.pos.tolist() == cache_e.pos.tolist() == [14, 8, 19]
  for a, b in zip(cache_x.k + cache_x.v, cache_e.k + cache_e.v):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL)
  # The ragged rows really differ from a batch of equal lengths (the mask matters here).
  assert float(jnp.abs(logits_e[:, 1] - logits_e[:, 0]).max()) > 1.0


def test_greedy_generation_is_the_same_with_either_path(params):
  prompts = [[1, 2, 3, 4, 5], [7], [3, 3, 8, 9]]
  out_e = decode.generate(params, EINSUM, prompts, jax.random.PRNGKey(0), max_new_tokens=12, temperature=0)
  out_x = decode.generate(params, XLA, prompts, jax.random.PRNGKey(0), max_new_tokens=12, temperature=0)
  assert out_x.tokens.tolist() == out_e.tokens.tolist()


def test_cudnn_where_it_cannot_run_is_an_error_not_a_fallback(params):
  cudnn = dataclasses.replace(EINSUM, attention_impl='cudnn', dtype='bfloat16')
  assert jax.devices()[0].platform == 'cpu'
  with pytest.raises(GptjaxError, match=r"model.attention_impl='cudnn' needs an NVIDIA GPU, and this device is cpu"):
    M.GPT(cudnn).apply({'params': params}, jnp.zeros((1, 4), jnp.int32))
  # The conditions cuDNN's flash kernel has on an NVIDIA GPU (a stand-in device object).
  h100 = type('Device', (), {'platform': 'gpu', 'compute_capability': '9.0', 'device_kind': 'NVIDIA H100'})()
  t4 = type('Device', (), {'platform': 'gpu', 'compute_capability': '7.5', 'device_kind': 'Tesla T4'})()
  assert attention.cudnn_problem(cudnn, h100) is None  # head size 8, bfloat16
  assert 'bfloat16' in attention.cudnn_problem(dataclasses.replace(cudnn, dtype='float32'), h100)
  assert 'multiple of 8' in attention.cudnn_problem(dataclasses.replace(cudnn, n_embd=40, n_head=4), h100)
  assert 'at most 256' in attention.cudnn_problem(dataclasses.replace(cudnn, n_embd=1024, n_head=2), h100)
  assert 'compute capability 8.0' in attention.cudnn_problem(cudnn, t4)


def test_train_command_refuses_cudnn_on_cpu_in_one_line(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'gptjax.train', f'--config={ROOT}/configs/tiny.py',
                         f'--workdir={tmp_path}/run', '--config.model.attention_impl=cudnn',
                         '--config.model.dtype=bfloat16', '--noprogress'], capture_output=True, text=True,
                        cwd=ROOT, env={**os.environ, 'XLA_FLAGS': ''}, timeout=300)
  err = proc.stderr.strip()
  assert proc.returncode == 2 and err.startswith('error: ') and len(err.splitlines()) == 1, proc.stderr
  assert "model.attention_impl='cudnn' needs an NVIDIA GPU, and this device is cpu" in err, err
  assert not os.path.exists(tmp_path / 'run')  # refused before anything is written


def test_attention_without_einsum_refuses_dropout():
  with pytest.raises(ValueError, match="attention_impl='xla' has no dropout of attention weights"):
    dataclasses.replace(XLA, dropout=0.1)
