"""GPT-2-style vs Llama-style blocks at equal parameter count on nanoGPT's Shakespeare CPU recipe.

Both contenders are the README's training command with a config file: configs/shakespeare_char.py
(GPT-2 block: learned positions, LayerNorm, GELU MLP 4d, multi-head attention) and
configs/llama_style_char.py (RoPE, RMSNorm, SwiGLU, QK-norm, grouped-query attention, SwiGLU width
set for equal parameters). Same data, width, depth, optimizer, schedule, batches and steps; each seed
runs both, one after the other as fresh processes (their order alternating between seeds), so machine
noise hits them alike. Reports the parameter count (the position table included), the val loss at the
last step over the same `eval_iters` validation batches (each seed's run), and the median ms/step over
the 50-step log windows (compilation excluded) as tokens/s. Run-level speeds on a shared machine are
noisy, so the script then also times the two compiled train steps in one process, their calls
interleaved (10 steps per call, as gptjax.train runs them; median of --speed_repeats calls each).

  python experiments/bench_llama_style.py --data=../shared/data/tinyshakespeare.txt --seeds=0,1,2

--ablations adds one row per Llama-style option switched on alone in the GPT-2 block (parameter
counts then differ: see the params column).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's gptjax (the runs, started in ROOT with -m, import it too)
sys.path.insert(0, os.path.join(ROOT, 'experiments'))

from bench_train import run_gptjax  # noqa: E402
from timing import cpu_name  # noqa: E402
GPT2 = 'GPT-2 style'
CONTENDERS = {GPT2: ('configs/shakespeare_char.py', {}),
              'Llama style': ('configs/llama_style_char.py', {})}
ABLATIONS = {'GPT-2 + RoPE': {'model.pos_encoding': 'rope'},
             'GPT-2 + RMSNorm': {'model.norm': 'rmsnorm'},
             'GPT-2 + SwiGLU (8/3 d)': {'model.mlp': 'swiglu'},
             'GPT-2 + QK-norm': {'model.qk_norm': True},
             'GPT-2 + GQA (2 K/V heads)': {'model.n_kv_head': 2}}


def load_config(path, overrides, vocab_size):
  from gptjax import config as config_lib
  config = config_lib.load_file(os.path.join(ROOT, path))
  for key, value in overrides.items():
    section, field = key.split('.')
    config[section][field] = value
  return config_lib.model_config(config, vocab_size)


def count_parameters(path, overrides, vocab_size):
  """All parameters, the position table included (RoPE has none), from shapes alone."""
  import jax
  from gptjax.model import GPT
  import jax.numpy as jnp
  model_config = load_config(path, overrides, vocab_size)
  shapes = jax.eval_shape(GPT(model_config).init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


def run(config, overrides, data, seed, steps, eval_iters, devices):
  """The README's training command for one contender and seed (experiments/bench_train.py's runner)."""
  flags = [f'--config.seed={seed}', f'--config.train.eval_interval={steps}']
  return run_gptjax(data, steps, eval_iters, devices, config, flags + [f'--config.{k}={v}' for k, v in overrides.items()])


def step_timing(contenders, vocab_size, repeats):
  """Median ms per step of each contender's jitted train_steps (10 steps of the recipe's batch per
  call, one device), calls interleaved A, B, A, B, ... after a warm-up (compilation) call each."""
  import functools
  import time as time_lib
  import jax
  from gptjax import config as config_lib
  from gptjax import train as train_lib
  from gptjax.model import GPT
  steps = {}
  for name, (path, overrides) in contenders.items():
    config = config_lib.resolve(config_lib.load_file(os.path.join(ROOT, path)))
    model_config = load_config(path, overrides, vocab_size)
    tx, _ = train_lib.make_optimizer(config.train)
    fn = jax.jit(functools.partial(train_lib.train_steps, model=GPT(model_config), tx=tx, axis_name=None),
                 donate_argnums=(0,))
    tokens = jax.random.randint(jax.random.PRNGKey(0), (10, 12, 65), 0, vocab_size)
    state = train_lib.init_state(model_config, tx, seed=0)
    state, metrics = fn(state, tokens)
    jax.block_until_ready(metrics)
    steps[name] = [fn, state, tokens, []]
  for _ in range(repeats):
    for entry in steps.values():
      fn, state, tokens, times = entry
      t0 = time_lib.perf_counter()
      state, metrics = fn(state, tokens)
      jax.block_until_ready(metrics)
      times.append((time_lib.perf_counter() - t0) / 10)
      entry[1] = state
  return {name: 1e3 * float(np.median(entry[3])) for name, entry in steps.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', required=True, help='tinyshakespeare.txt')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--eval_iters', type=int, default=200, help='val batches in the final evaluation')
  parser.add_argument('--devices', type=int, default=1, help='CPU devices per run')
  parser.add_argument('--ablations', action='store_true', help='also each Llama-style option alone')
  parser.add_argument('--speed_repeats', type=int, default=30, help='interleaved timed calls per contender')
  args = parser.parse_args()

  contenders = dict(CONTENDERS)
  if args.ablations:
    contenders.update({name: ('configs/shakespeare_char.py', ov) for name, ov in ABLATIONS.items()})
  with open(args.data, encoding='utf-8') as f:
    vocab_size = len(set(f.read()))
  n_params = {name: count_parameters(cfg, ov, vocab_size) for name, (cfg, ov) in contenders.items()}
  seeds = [int(s) for s in args.seeds.split(',')]
  results = {name: [] for name in contenders}
  for i, seed in enumerate(seeds):
    names = list(contenders) if i % 2 == 0 else list(contenders)[::-1]
    for name in names:
      cfg, ov = contenders[name]
      results[name].append(run(cfg, ov, args.data, seed, args.steps, args.eval_iters, args.devices))
      print(f'seed {seed}: {name}: {results[name][-1]}', flush=True)

  step_ms = step_timing(contenders, vocab_size, args.speed_repeats)
  tokens_per_step = 12 * 64  # the recipe's batch x block
  print(f'\n{cpu_name()}; {args.devices} CPU device(s) per run; {args.steps} steps of {tokens_per_step} '
        f'tokens; val loss over {args.eval_iters} batches; seeds {args.seeds}; interleaved step timing: '
        f'median of {args.speed_repeats} calls of 10 steps')
  print(f'| block | params | vs GPT-2 | val loss @{args.steps} per seed | mean val loss | runs: ms/step '
        '| runs: tokens/s | runs: vs GPT-2 | interleaved: ms/step | interleaved: tokens/s | interleaved: vs GPT-2 |')
  print('|---|---|---|---|---|---|---|---|---|---|---|')
  for name, rs in results.items():
    losses = [r['val_loss'] for r in rs]
    ms = float(np.median([r['ms'] for r in rs]))
    # Speed ratio within each seed's pair of runs (same minutes of machine time), then the median.
    ratio = float(np.median([g['ms'] / r['ms'] for r, g in zip(rs, results[GPT2])]))
    print(f'| {name} | {n_params[name]:,} | {100 * (n_params[name] / n_params[GPT2] - 1):+.1f}% '
          f'| {" / ".join(f"{l:.4f}" for l in losses)} | {np.mean(losses):.4f} ± {np.std(losses, ddof=1) if len(losses) > 1 else 0:.4f} '
          f'| {ms:.1f} | {tokens_per_step / ms * 1e3:,.0f} | {ratio:.2f}x | {step_ms[name]:.1f} '
          f'| {tokens_per_step / step_ms[name] * 1e3:,.0f} | {step_ms[GPT2] / step_ms[name]:.2f}x |')


if __name__ == '__main__':
  main()
