"""Where a training step's time goes: nanoGPT's CPU recipe, gptjax and its PyTorch peer, part by part.

Shapes of configs/shakespeare_char.py (4 layers, 4 heads, 128 wide, vocab 65, batch 12 x 64 tokens),
one CPU device, float32. Each row is a median over several timed calls after a warm-up; the torch
column times the same part of experiments/nanogpt_peer.py in the same run.

  forward            loss only
  forward+backward   loss and gradients
  step, 1 per call   forward+backward+clip+AdamW, one jit (or torch) call per step: dispatch included
  step, 10 per call  gptjax's train_steps (a lax.scan of 10 steps in one call), per step
  step, pmapped      the same inside jax.pmap on one device, as `gptjax.train` runs it, per step
  host batches       drawing 10 global batches with data.batch_at and sharding them, per step
  eval, 20 batches   one evaluation of 20 val batches (eval_iters of the recipe), per evaluation

  pip install -e '.[bench]'
  python experiments/step_profile.py [--repeats=30]

The GFLOP/s column uses metrics.flops_per_token (6N + attention, as nanoGPT's MFU does).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gptjax import data as data_lib
from gptjax import objectives, parallel
from gptjax import train as train_lib
from gptjax.config import resolve
from gptjax.metrics import flops_per_token
from gptjax.model import GPT, GPTConfig
from timing import median_seconds

BATCH, SEQ, VOCAB, CALL = 12, 64, 65, 10


def median_ms(fn, repeats, per=1):
  """Median ms of fn(), divided by the `per` steps one call makes."""
  return median_seconds(fn, repeats) * 1e3 / per


def gptjax_rows(repeats):
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs'))
  import shakespeare_char
  config = shakespeare_char.get_config()
  config.model.vocab_size = VOCAB
  config = resolve(config)
  cfg = GPTConfig(vocab_size=VOCAB, block_size=SEQ, n_layer=4, n_head=4, n_embd=128, bias=False,
                  tie_embeddings=True)
  model = GPT(cfg)
  tx, _ = train_lib.make_optimizer(config.train)
  state = train_lib.init_state(cfg, tx, 0)
  ids = np.random.default_rng(0).integers(0, VOCAB, 100_000).astype(np.uint16)
  tokens = jnp.asarray(data_lib.batch_at(ids, seed=0, step=0, batch_size=BATCH, seq_len=SEQ))
  inputs, targets = objectives.next_token_split(tokens)
  loss = lambda p: objectives.cross_entropy(model.apply({'params': p}, inputs), targets)[0]
  fwd = jax.jit(loss)
  fwd_bwd = jax.jit(jax.value_and_grad(loss))
  rows = {}
  rows['forward'] = median_ms(lambda: fwd(state.params).block_until_ready(), repeats)
  rows['forward+backward'] = median_ms(lambda: jax.block_until_ready(fwd_bwd(state.params)), repeats)

  one = jax.jit(functools.partial(train_lib.train_step, model=model, tx=tx, axis_name=None), donate_argnums=0)
  multi = jax.jit(functools.partial(train_lib.train_steps, model=model, tx=tx, axis_name=None),
                  donate_argnums=0)
  chunk = jnp.stack([tokens] * CALL)
  holder = {'s': state}

  def run_one():
    holder['s'], m = one(holder['s'], tokens)
    float(m['loss'])  # the loop reads metrics back, as a training loop does

  def run_multi():
    holder['s'], m = multi(holder['s'], chunk)
    np.asarray(m['loss'])

  rows['step, 1 per call'] = median_ms(run_one, repeats)
  rows['step, 10 per call'] = median_ms(run_multi, repeats, per=CALL)

  devices = jax.local_devices()[:1]
  p_train = jax.pmap(functools.partial(train_lib.train_steps, model=model, tx=tx), axis_name=parallel.AXIS,
                     devices=devices, donate_argnums=(0,))
  holder['p'] = parallel.replicate(holder['s'], devices)
  p_chunk = parallel.shard(np.asarray(chunk), 1, axis=1)

  def run_pmap():
    holder['p'], m = p_train(holder['p'], p_chunk)
    np.asarray(m['loss'])

  rows['step, pmapped'] = median_ms(run_pmap, repeats, per=CALL)

  def host_batches():
    glob = np.stack([data_lib.batch_at(ids, seed=0, step=s, batch_size=BATCH, seq_len=SEQ) for s in range(CALL)])
    jax.block_until_ready(jax.device_put(parallel.shard(glob, 1, axis=1), devices[0]))

  rows['host batches'] = median_ms(host_batches, repeats, per=CALL)
  p_eval = jax.pmap(functools.partial(train_lib.eval_step, model=model), axis_name=parallel.AXIS,
                    devices=devices)
  evals = parallel.shard(np.stack([np.asarray(tokens)] * 20), 1, axis=1)
  params = jax.tree.map(lambda x: x[None], holder['s'].params)  # [1, ...]: one device's replica
  rows['eval, 20 batches'] = median_ms(lambda: jax.block_until_ready(p_eval(params, evals)), max(5, repeats // 3))
  return rows, flops_per_token(cfg, SEQ) * BATCH * SEQ


def torch_rows(repeats):
  try:
    import torch
    import nanogpt_peer
  except ImportError:
    return None
  torch.manual_seed(0)
  model = nanogpt_peer.NanoGPT(VOCAB, SEQ, 4, 4, 128)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
  x = torch.randint(0, VOCAB, (BATCH, SEQ))
  y = torch.randint(0, VOCAB, (BATCH, SEQ))

  def forward():
    with torch.no_grad():
      model(x, y)[1].item()

  def forward_backward():
    model(x, y)[1].backward()
    model.zero_grad(set_to_none=True)

  def step():
    _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    loss.item()

  def evaluate():
    with torch.no_grad():
      for _ in range(20):
        model(x, y)[1].item()

  return {'forward': median_ms(forward, repeats), 'forward+backward': median_ms(forward_backward, repeats),
          'step, 1 per call': median_ms(step, repeats), 'eval, 20 batches': median_ms(evaluate, max(5, repeats // 3))}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=30)
  args = parser.parse_args()
  ours, flops_per_step = gptjax_rows(args.repeats)
  theirs = torch_rows(args.repeats) or {}
  print(f'jax {jax.__version__}, 1 CPU device; medians of {args.repeats} calls (ms)')
  print('| part | gptjax ms | GFLOP/s | torch ms | torch / gptjax |')
  print('|---|---|---|---|---|')
  for part, ms in ours.items():
    train_part = part.startswith('step') or part == 'forward+backward'
    gflops = f'{flops_per_step / ms / 1e6:.0f}' if train_part else ('' if part != 'forward' else
                                                                       f'{flops_per_step / 3 / ms / 1e6:.0f}')
    t = theirs.get(part)
    print(f'| {part} | {ms:.2f} | {gflops} | {"" if t is None else f"{t:.2f}"} | '
          f'{"" if t is None else f"{t / ms:.2f}x"} |')


if __name__ == '__main__':
  main()
