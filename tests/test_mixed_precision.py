"""Mixed precision and rematerialization: bfloat16 compute tracks float32 training; remat changes
memory, not results; checkpoints cross between remat on and off."""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import TINY, tiny_run_config
from gptjax import checkpoint as ckpt_lib
from gptjax import objectives
from gptjax import train as T
from gptjax.config import get_config
from gptjax.data import ByteTokenizer
from gptjax.errors import GptjaxError
from gptjax.model import GPT, REMAT_POLICIES, float32_einsum


def markov_batches(steps, batch, seq, vocab=16, seed=0):
  """[steps, batch, seq + 1] from a seeded Markov chain where each token has 2 equally likely
  successors: a learnable stream whose loss falls from log(16) = 2.77 towards log(2) = 0.69."""
  rng = np.random.default_rng(seed)
  successors = rng.integers(0, vocab, (vocab, 2))
  n = steps * batch * (seq + 1)
  ids, pick = np.zeros(n, np.int32), rng.integers(0, 2, n)
  for i in range(1, n):
    ids[i] = successors[ids[i - 1], pick[i]]
  return jnp.asarray(ids.reshape(steps, batch, seq + 1))


def train_losses(config, batches, tx):
  state = T.init_state(config, tx, seed=0)
  step = jax.jit(functools.partial(T.train_steps, model=GPT(config), tx=tx, axis_name=None))
  state, metrics = step(state, batches)
  return state, np.asarray(metrics['loss'])


def test_bfloat16_training_tracks_float32_with_float32_params_logits_and_loss():
  tc = get_config().train
  tc.learning_rate, tc.warmup_steps, tc.decay_steps = 1e-2, 5, 60
  tx, _ = T.make_optimizer(tc)  # the run's AdamW, clipping and schedule
  batches = markov_batches(60, 8, 32)
  bf16 = dataclasses.replace(TINY, dtype='bfloat16')
  state32, losses32 = train_losses(TINY, batches, tx)
  state16, losses16 = train_losses(bf16, batches, tx)
  assert losses32[0] > 2.5 and losses32[-1] < 0.8  # it learned (the chain's entropy is 0.69)
  # bfloat16 keeps 8 bits of mantissa: each matmul input is rounded by up to 2^-9 = 0.2% relative.
  # Measured here: at most 0.0017 nats (0.22%) apart over the 60 steps. 1% of the loss allows 4x
  # that drift while a real precision bug (bf16 logits or loss: errors ~0.1 nats) fails it.
  np.testing.assert_allclose(losses16, losses32, rtol=0.01)
  # Parameters and the optimizer's moments stay float32; so do the logits and the loss.
  assert {x.dtype for x in jax.tree.leaves((state16.params, state16.opt_state))} <= {jnp.dtype('float32'),
                                                                                    jnp.dtype('int32')}
  params = state16.params
  logits = jax.eval_shape(lambda p: GPT(bf16).apply({'params': p}, batches[0, :, :-1]), params)
  loss = jax.eval_shape(lambda p: objectives.cross_entropy(
      GPT(bf16).apply({'params': p}, batches[0, :, :-1]), batches[0, :, 1:])[0], params)
  assert logits.dtype == jnp.float32 and loss.dtype == jnp.float32
  # ... while the matmuls really take bfloat16 inputs (all of them: the check is not vacuous).
  dots = all_dots(jax.make_jaxpr(lambda p: GPT(bf16).apply({'params': p}, batches[0, :, :-1]))(params).jaxpr)
  assert len(dots) == TINY.n_layer * 6 + 1  # qkv, 2 attention einsums, c_proj, c_fc, mlp c_proj; head
  assert all(e.invars[0].aval.dtype == jnp.bfloat16 for e in dots)
  assert dots[-1].outvars[0].aval.dtype == jnp.float32  # the head: bfloat16 in, float32 products out
  # The backward's matmuls take bfloat16 operands too: the float32 cotangents of the logits and the
  # attention scores are rounded before them (a float32 operand here made the H200 run TF32 GEMMs).
  grad_fn = lambda p: jax.grad(lambda p: objectives.cross_entropy(
      GPT(bf16).apply({'params': p}, batches[0, :, :-1]), batches[0, :, 1:])[0])(p)
  grad_dots = all_dots(jax.make_jaxpr(grad_fn)(params).jaxpr)
  assert len(grad_dots) >= 3 * len(dots)  # each forward matmul and its two transposes (at least)
  assert all(v.aval.dtype == jnp.bfloat16 for e in grad_dots for v in e.invars[:2])


def test_float32_einsum_returns_float32_and_rounds_only_the_cotangent_in_its_backward():
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  x = jax.random.normal(keys[0], (64, 32), jnp.float32)
  w = jax.random.normal(keys[1], (32, 48), jnp.float32)
  g = jax.random.normal(keys[2], (64, 48), jnp.float32)
  x16, w16 = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  out, vjp = jax.vjp(lambda a, b: float32_einsum('td,dv->tv', a, b), x16, w16)
  assert out.dtype == jnp.float32
  # Forward: bfloat16 inputs, exact float32 products and sums (each product of two 8-bit mantissas
  # is exact in float32, so only the summation order can differ from numpy's float64: < 1e-5).
  ref = np.asarray(x16, np.float64) @ np.asarray(w16, np.float64)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
  dx, dw = vjp(g)
  assert dx.dtype == dw.dtype == jnp.bfloat16
  # Backward: the cotangent rounded to bfloat16, then float32 matmuls rounded once at the end, so
  # each gradient is within one bfloat16 rounding (2^-8 relative, 2x the half-ulp for the sum's own
  # rounding) of the float64 product of the rounded operands; a float32 cotangent, bfloat16
  # accumulation or a wrong transpose is further off (checked below against the unrounded g).
  g16 = np.asarray(g.astype(jnp.bfloat16), np.float64)
  for got, want in ((dx, g16 @ np.asarray(w16, np.float64).T), (dw, np.asarray(x16, np.float64).T @ g16)):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2 ** -8, atol=1e-6)
  # It is the cotangent that was rounded: against the exact g the error is larger than that bound.
  exact = np.asarray(g, np.float64) @ np.asarray(w16, np.float64).T
  assert np.max(np.abs(np.asarray(dx, np.float64) - exact) / np.abs(exact)) > 2 ** -8
  # Two float32 operands: the plain einsum, bit for bit, forward and backward.
  out32, vjp32 = jax.vjp(lambda a, b: float32_einsum('td,dv->tv', a, b), x, w)
  ref32, ref_vjp = jax.vjp(lambda a, b: jnp.einsum('td,dv->tv', a, b), x, w)
  np.testing.assert_array_equal(np.asarray(out32), np.asarray(ref32))
  for a, b in zip(vjp32(g), ref_vjp(g)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def all_eqns(jaxpr):
  """Every equation of a jaxpr, those inside nested calls (pjit, remat, ...) too, in order."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, 'jaxpr', sub)  # a ClosedJaxpr's Jaxpr
        if hasattr(sub, 'eqns'):
          yield from all_eqns(sub)


def all_dots(jaxpr):
  return [e for e in all_eqns(jaxpr) if e.primitive.name == 'dot_general']


# Issue 14's options together, bidirectional and trained as a masked LM (BERT's corruption, 30% picked).
LLAMA_MLM = dataclasses.replace(TINY, pos_encoding='rope', norm='rmsnorm', mlp='swiglu', qk_norm=True, bias=False,
                                n_head=4, n_kv_head=2, causal=False)
MLM = objectives.Objective('mlm', mask_id=15, n_real=15, mask_prob=0.3)


def test_bfloat16_masked_llama_style_model_keeps_float32_logits_and_loss_and_tracks_float32():
  """One forward/backward of the Llama-style masked LM: bfloat16 matmuls (SwiGLU's gate included),
  float32 logits and loss, and loss and gradients near float32's."""
  batch = markov_batches(1, 8, 32)[0]
  inputs, targets, weights = objectives.examples(MLM, batch, jax.random.PRNGKey(5))
  params = T.init_state(LLAMA_MLM, optax.sgd(0), seed=0).params

  def loss_fn(config):
    return lambda p: objectives.cross_entropy(GPT(config).apply({'params': p}, inputs), targets, weights)[0]

  bf16 = dataclasses.replace(LLAMA_MLM, dtype='bfloat16')
  loss32, grads32 = jax.jit(jax.value_and_grad(loss_fn(LLAMA_MLM)))(params)
  loss16, grads16 = jax.jit(jax.value_and_grad(loss_fn(bf16)))(params)
  assert loss16.dtype == jnp.float32 and {g.dtype for g in jax.tree.leaves(grads16)} == {jnp.dtype('float32')}
  logits = jax.eval_shape(lambda p: GPT(bf16).apply({'params': p}, inputs), params)
  assert logits.dtype == jnp.float32
  dots = all_dots(jax.make_jaxpr(lambda p: GPT(bf16).apply({'params': p}, inputs))(params).jaxpr)
  assert len(dots) == TINY.n_layer * 7 + 1  # qkv, 2 attention einsums, c_proj, c_fc, c_gate, mlp c_proj; head
  assert all(e.invars[0].aval.dtype == jnp.bfloat16 for e in dots)
  # Matmul inputs rounded to 8 bits of mantissa (2^-9 relative) through 2 layers: measured 1e-5
  # relative apart in loss and 0.47% (relative L2) in the gradient here. 1e-3 and 5% leave 10-100x
  # room, while a loss rounded to bfloat16 (2^-9 of 2.8 = 0.4%) or a wrong op in the bf16 path fails.
  np.testing.assert_allclose(loss16, loss32, rtol=1e-3)
  flat = lambda g: np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(g)])
  assert np.linalg.norm(flat(grads16) - flat(grads32)) < 0.05 * np.linalg.norm(flat(grads32))


@pytest.mark.parametrize('base', [TINY, LLAMA_MLM], ids=['gpt2', 'llama_mlm'])
def test_remat_gives_the_same_loss_and_gradients_and_rematerializes_each_block(base):
  batch = markov_batches(1, 4, 32)[0]
  params = T.init_state(base, optax.sgd(0.1), seed=0).params
  objective = objectives.NEXT_TOKEN if base.causal else MLM
  inputs, targets, weights = objectives.examples(objective, batch, jax.random.PRNGKey(5))

  def loss_and_grads(config):
    def loss_fn(p):
      return objectives.cross_entropy(GPT(config).apply({'params': p}, inputs), targets, weights)[0]
    return jax.value_and_grad(loss_fn), loss_fn

  ref_loss, ref_grads = jax.jit(loss_and_grads(base)[0])(params)
  for policy in ('full', 'dots_saveable'):
    config = dataclasses.replace(base, remat=policy)
    fn, loss_fn = loss_and_grads(config)
    # The same parameter tree: remat'd blocks keep their names (h_0, h_1), so checkpoints cross.
    assert jax.tree.structure(T.init_state(config, optax.sgd(0.1), seed=0).params) == jax.tree.structure(params)
    loss, grads = jax.jit(fn)(params)
    # Recomputation repeats the same float32 operations; XLA may fuse them differently, which moves
    # results by rounding (~1e-7 relative). 1e-5 is far below any real difference.
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    # And the remat is really there: one checkpointed region per block in the gradient's program.
    eqns = all_eqns(jax.make_jaxpr(jax.grad(loss_fn))(params).jaxpr)
    assert sum(e.primitive.name.startswith('remat') for e in eqns) == base.n_layer, policy
  eqns = all_eqns(jax.make_jaxpr(jax.grad(loss_and_grads(base)[1]))(params).jaxpr)
  assert not any(e.primitive.name.startswith('remat') for e in eqns)  # and not there without it
  assert set(REMAT_POLICIES) == {'none', 'full', 'dots_saveable', 'dots_with_no_batch_dims_saveable'}


def test_checkpoint_written_with_remat_resumes_without_it(tmp_path):
  """10 steps with remat='full', saved, restored under remat='none' and trained 10 more == 20 steps
  with 'none'; and a workdir trained with one is resumable with the other."""
  tx = optax.adamw(1e-2)
  batches = markov_batches(20, 4, 32)
  step = lambda config: jax.jit(functools.partial(T.train_steps, model=GPT(config), tx=tx, axis_name=None))
  remat = dataclasses.replace(TINY, remat='full')
  plain_step = step(TINY)  # one program of 10 steps, for the reference and the resumed run
  ref, _ = plain_step(T.init_state(TINY, tx, seed=0), batches[:10])
  ref, ref_metrics = plain_step(ref, batches[10:])
  half, _ = step(remat)(T.init_state(remat, tx, seed=0), batches[:10])
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / 'checkpoints'))
  checkpointer.save(10, half)
  checkpointer.wait()
  restored = checkpointer.restore(10, T.init_state(TINY, tx, seed=0))
  checkpointer.close()
  resumed, metrics = plain_step(restored, batches[10:])
  assert int(resumed.step) == 20
  # remat repeats the same float32 operations: equal up to rounding (see the test above).
  np.testing.assert_allclose(np.asarray(metrics['loss']), np.asarray(ref_metrics['loss']), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(ref.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  # The run's own guard lets a workdir resume with remat, dtype or attention changed, not the shape.
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  T.save_run_files(workdir, tiny_run_config(), remat, ByteTokenizer())
  for change in ({'remat': 'none'}, {'dtype': 'bfloat16'}, {'attention_impl': 'xla'}):
    T.check_resumable(workdir, dataclasses.replace(remat, **change), ByteTokenizer())
  with pytest.raises(GptjaxError, match='model.n_layer=2 .config asks 3.'):
    T.check_resumable(workdir, dataclasses.replace(remat, n_layer=3), ByteTokenizer())
