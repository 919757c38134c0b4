"""CPU step time of the accelerator options on nanoGPT's Shakespeare recipe: bfloat16 vs float32, remat
vs none, dot_product_attention ('xla') vs the einsum path; and decoding with each attention path.

Training: configs/shakespeare_char.py's model and batch (4 layers, 4 heads, 128 wide, block 64,
batch 12, char-level tiny Shakespeare, the recipe's AdamW and schedule), one CPU device, 10 steps per
compiled call as `gptjax.train` runs it. Every variant trains from the same initial parameters on the
same batches; the calls are interleaved (variant A's call 1, B's call 1, ..., A's call 2, ...), so
machine noise hits them alike. Reported: the median ms/step over the timed calls (the first,
compiling call excluded) and the mean training loss of the last 50 steps (same batches: the loss
column shows what an option does to training).

Decoding: the same model shape with block 256, greedy, a 16-token prompt and 240 new tokens, batch 1
and 16, einsum vs 'xla' attention (interleaved repeats, median).

  python experiments/bench_precision.py --data=../shared/data/tinyshakespeare.txt [--steps=500]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gptjax import data as data_lib  # noqa: E402
from gptjax import decode, model as M  # noqa: E402
from gptjax import train as train_lib  # noqa: E402
from gptjax.config import resolve  # noqa: E402
from timing import cpu_name, median_seconds  # noqa: E402

VARIANTS = {  # label: GPTConfig overrides of the recipe's model
    'float32, einsum, no remat (default)': {},
    'bfloat16': {'dtype': 'bfloat16'},
    'remat full': {'remat': 'full'},
    'remat dots_saveable': {'remat': 'dots_saveable'},
    "attention 'xla'": {'attention_impl': 'xla'},
    "bfloat16, attention 'xla'": {'dtype': 'bfloat16', 'attention_impl': 'xla'},
}


def training(data_path: str, steps: int):
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs'))
  import shakespeare_char
  config = resolve(shakespeare_char.get_config())
  config.train.max_steps = config.train.decay_steps = steps
  text = open(data_path, 'rb').read()
  tokenizer, ids = data_lib.encode_corpus(text, 'char', data_path)
  train_ids = ids[:int(len(ids) * 0.9)]
  tc, call = config.train, 10
  batches = [np.stack([data_lib.batch_at(train_ids, seed=0, step=s, batch_size=tc.batch_size, seq_len=tc.seq_len)
                       for s in range(c * call, (c + 1) * call)]) for c in range(steps // call)]
  base = resolve(config).model.to_dict()
  base['vocab_size'] = tokenizer.vocab_size
  tx, _ = train_lib.make_optimizer(tc)
  runs = {}
  for label, overrides in VARIANTS.items():
    model_config = M.GPTConfig(**{**base, **overrides})
    step = jax.jit(functools.partial(train_lib.train_steps, model=M.GPT(model_config), tx=tx, axis_name=None),
                   donate_argnums=(0,))
    runs[label] = dict(step=step, state=train_lib.init_state(model_config, tx, config.seed), ms=[], losses=[])
  for i, batch in enumerate(batches):
    for label, run in runs.items():
      t0 = time.perf_counter()
      run['state'], metrics = run['step'](run['state'], batch)
      losses = np.asarray(metrics['loss'])  # waits for the call
      if i > 0:  # the first call compiles
        run['ms'].append(1e3 * (time.perf_counter() - t0) / call)
      run['losses'].extend(losses.tolist())
  tokens = tc.batch_size * tc.seq_len
  base_ms = np.median(runs['float32, einsum, no remat (default)']['ms'])
  print(f'\nTraining, Shakespeare recipe ({tc.batch_size} x {tc.seq_len} tokens a step, {steps} steps, '
        f'{call} per call), {len(batches) - 1} timed calls per variant, interleaved; medians:')
  print('| variant | ms/step | tokens/s | vs default | train loss, last 50 steps |')
  print('|---|---|---|---|---|')
  for label, run in runs.items():
    ms = float(np.median(run['ms']))
    print(f'| {label} | {ms:.2f} | {tokens / ms * 1e3:,.0f} | {ms / base_ms:.2f}x | '
          f'{np.mean(run["losses"][-50:]):.4f} |')
  return base


def decoding(base: dict, repeats: int):
  config = M.GPTConfig(**{**base, 'block_size': 256})
  params = M.init_params(config, jax.random.PRNGKey(0))
  cases = {}
  for batch in (1, 16):
    prompts = np.zeros((batch, 16), np.int32)
    for impl in ('einsum', 'xla'):
      c = dataclasses.replace(config, attention_impl=impl)
      cases[(batch, impl)] = lambda c=c, prompts=prompts: jax.block_until_ready(decode.generate(
          params, c, prompts, jax.random.PRNGKey(0), max_new_tokens=240, temperature=0.0).tokens)
  times = {k: [] for k in cases}
  for _ in range(repeats):
    for k, fn in cases.items():
      times[k].append(median_seconds(fn, 1))
  print(f'\nDecoding (greedy, 16-token prompt + 240 new tokens, 256-slot cache), {repeats} interleaved '
        'repeats; medians:')
  print('| batch | attention | ms per call | us per decode step | tokens/s |')
  print('|---|---|---|---|---|')
  for (batch, impl), ts in times.items():
    s = float(np.median(ts))
    print(f'| {batch} | {impl} | {1e3 * s:.1f} | {1e6 * s / 240:.0f} | {batch * 240 / s:,.0f} |')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', required=True, help='tinyshakespeare.txt')
  parser.add_argument('--steps', type=int, default=500)
  parser.add_argument('--repeats', type=int, default=7, help='decoding repeats')
  args = parser.parse_args()
  print(f'{cpu_name()}; jax {jax.__version__}, {jax.devices()[0].device_kind}')
  base = training(args.data, args.steps)
  decoding(base, args.repeats)


if __name__ == '__main__':
  main()
