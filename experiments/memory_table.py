"""The largest GPT whose compiled train step fits a 16 GiB device: with and without remat, with and
without FSDP over 8 devices, from `compiled.memory_analysis()` on fake CPU devices.

Fixed: 8 rows of 1024 tokens per device (FSDP over 8: a global batch of 64), bfloat16 compute with
float32 parameters and AdamW moments (model.dtype='bfloat16'), training's optimizer (clip + AdamW),
GPT-2's vocabulary (50304) and head size 64 (n_head = n_embd / 64), the einsum attention path. For
each width n_embd, the largest n_layer whose step fits: memory is close to affine in n_layer, so two
compiles (2 and 4 layers) predict it, and compiles at the prediction and its neighbours confirm it
(the reported depth fits, one more layer does not). Depths beyond --cap (remat'd models reach
hundreds of layers, whose unrolled steps take minutes each to compile here) are not compiled: they
come from the affine fit through 2 and --cap layers, marked * with the fit's error at 4 layers.
Nothing is run, only compiled.

Per device, the step needs its arguments (the state shard and the batch) plus XLA's temporaries
(activations kept for the backward pass, gradients, all-gathered weights under FSDP); the new state
is written over the donated old one. That sum is what is compared with 16 GiB.

Caveats, measured: XLA:CPU's default scheduler (concurrency-optimized) keeps far more alive than a
memory-minimizing order (GPT-2 small, 4 layers: 11.7 vs 7.9 GiB of temporaries), so this script
asks for the memory-oriented one (--xla_cpu_enable_concurrency_optimized_scheduler=false), closer to
what GPU and TPU compilers aim for. The einsum attention keeps [batch, heads, seq, seq] float32 scores;
cuDNN's flash kernel on a GPU keeps none, so there the no-remat depths would be larger. This is
XLA:CPU's buffer assignment of the same program, a planning figure, not a GPU measurement.

  python experiments/memory_table.py [--widths=768,1280,2048] [--budget_gib=16] [--cap=24]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = '--xla_force_host_platform_device_count=8 --xla_cpu_enable_concurrency_optimized_scheduler=false'
SETTINGS = (  # (label, remat policy, FSDP devices)
    ('no remat, 1 device', 'none', 1),
    ('remat full, 1 device', 'full', 1),
    ('no remat, FSDP 8', 'none', 8),
    ('remat full, FSDP 8', 'full', 8),
)


def step_bytes(n_layer: int, n_embd: int, remat: str, fsdp: int, rows: int, seq: int) -> int:
  """Per-device bytes (arguments + temporaries + outputs not aliased) of one compiled train step."""
  import jax
  import jax.numpy as jnp
  import ml_collections

  from gptjax import config as config_lib
  from gptjax import parallel
  from gptjax import train as T
  from gptjax.model import GPT, GPTConfig

  config = GPTConfig(vocab_size=50304, block_size=seq, n_layer=n_layer, n_head=n_embd // 64, n_embd=n_embd,
                     dtype='bfloat16', remat=remat)
  tx, _ = T.make_optimizer(config_lib.resolve(config_lib.get_config()).train)
  pc = ml_collections.ConfigDict({'strategy': 'mesh', 'data': 1, 'fsdp': fsdp, 'tensor': 1})
  layout = parallel.make_layout(pc, jax.devices()[:fsdp])
  shardings = layout.state_shardings(T.state_axes(config, tx))
  abstract = jax.eval_shape(lambda: T.init_state(config, tx, 0))
  placed = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  tokens = jax.ShapeDtypeStruct((1, rows * fsdp, seq + 1), jnp.int32, sharding=layout.batch_sharding)
  step = layout.compile_train(functools.partial(T.train_steps, model=GPT(config), tx=tx, axis_name=None),
                              shardings)
  with jax.set_mesh(layout.mesh):
    m = step.jitted.lower(placed, tokens).compile().memory_analysis()
  return (m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes)


def params_of(n_layer: int, n_embd: int) -> int:
  """Parameters of the shape (no position table), as count_params counts them."""
  return n_layer * (12 * n_embd ** 2 + 13 * n_embd) + 2 * 50304 * n_embd + 2 * n_embd + 50304


def largest(n_embd, remat, fsdp, budget, rows, seq, cap, log):
  """(largest n_layer that fits, its bytes, bytes at one more layer, compiles, how it was found) for
  one width. Depths up to `cap` are confirmed by compiling them and one more layer; beyond it (deep
  remat'd models, whose unrolled steps take minutes each to compile on 2 cores) the depth comes from
  the affine fit through the compiles at 2 and `cap` layers, whose error is checked at 4 layers."""
  cache = {}

  def size(n):
    if n not in cache:
      t0 = time.perf_counter()
      cache[n] = step_bytes(n, n_embd, remat, fsdp, rows, seq)
      log(f'  n_embd {n_embd}, {remat}, fsdp {fsdp}: {n} layers -> {cache[n] / 2**30:.2f} GiB '
          f'({time.perf_counter() - t0:.0f} s to compile)')
    return cache[n]

  if size(2) > budget:
    if size(1) > budget:
      return 0, None, cache[2], len(cache), 'compiled'
    return 1, cache[1], cache[2], len(cache), 'compiled'
  per_layer = max((size(4) - size(2)) / 2, 1)
  n = max(1, int((budget - size(2)) // per_layer) + 2)
  if n > cap:  # refit on a longer baseline, then extrapolate
    per_layer = (size(cap) - size(2)) / (cap - 2)
    n = 2 + int((budget - size(2)) // per_layer)
    if n > cap:
      fit = lambda k: size(2) + (k - 2) * per_layer
      error = abs(fit(4) - size(4)) / size(4)
      return (n, fit(n), fit(n + 1), len(cache),
              f'affine fit of 2 and {cap} layers ({100 * error:.2f}% off at 4)')
  while n > 1 and size(n) > budget:
    n -= 1
  while size(n + 1) <= budget:
    n += 1
  return n, cache[n], cache[n + 1], len(cache), 'compiled'


def child(args):
  results = []
  budget = args.budget_gib * 2**30
  for label, remat, fsdp in SETTINGS:
    for n_embd in [int(w) for w in args.widths.split(',')]:
      n, fits, over, compiles, how = largest(n_embd, remat, fsdp, budget, args.rows, args.seq, args.cap,
                                             lambda s: print(s, file=sys.stderr, flush=True))
      results.append(dict(setting=label, n_embd=n_embd, n_layer=n, bytes=fits, next_bytes=over,
                          params=params_of(n, n_embd) if n else 0, compiles=compiles, how=how))
      print(json.dumps(results[-1]), file=sys.stderr, flush=True)
  print(json.dumps(results))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--widths', default='768,1280,2048')
  parser.add_argument('--budget_gib', type=float, default=16.0)
  parser.add_argument('--rows', type=int, default=8, help='rows of --seq tokens per device')
  parser.add_argument('--seq', type=int, default=1024)
  parser.add_argument('--cap', type=int, default=24,
                      help='deepest model compiled; deeper answers come from the affine fit (marked *)')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return child(args)
  from timing import cpu_name  # experiments/timing.py, beside this script
  cpu = cpu_name()
  env = {**os.environ, 'XLA_FLAGS': FLAGS}  # 8 fake devices: fixed when JAX starts, so in a child
  out = subprocess.run([sys.executable, __file__, '--child', *sys.argv[1:]], env=env, cwd=ROOT,
                       stdout=subprocess.PIPE, text=True)  # the child's progress goes to stderr as it comes
  if out.returncode:
    sys.exit(out.returncode)
  results = json.loads(out.stdout.strip().splitlines()[-1])
  print(f'Largest GPT whose compiled train step fits {args.budget_gib:g} GiB per device: {args.rows} x {args.seq} '
        f'tokens per device, bfloat16 compute, float32 params + AdamW, head size 64, vocab 50304; XLA:CPU '
        f'memory_analysis() on 8 fake devices ({cpu}), XLA_FLAGS={FLAGS}')
  settings = [s[0] for s in SETTINGS]
  widths = sorted({r['n_embd'] for r in results})
  print('| n_embd (heads) | ' + ' | '.join(settings) + ' |')
  print('|---|' + '---|' * len(settings))
  cell = {(r['setting'], r['n_embd']): r for r in results}
  for w in widths:
    row = []
    for s in settings:
      r = cell[s, w]
      mark = '' if r['how'] == 'compiled' else '*'
      row.append('none fits' if not r['n_layer'] else
                 f"{r['n_layer']}{mark} layers, {r['params'] / 1e9:.2f}B ({r['bytes'] / 2**30:.1f} GiB; "
                 f"+1 layer {r['next_bytes'] / 2**30:.1f})")
    print(f'| {w} ({w // 64}) | ' + ' | '.join(row) + ' |')
  fits = sorted({r['how'] for r in results if r['how'] != 'compiled'})
  if fits:
    print(f'* deeper than --cap={args.cap} layers: not compiled; from the ' + '; '.join(fits))
  best = {s: max((r for r in results if r['setting'] == s), key=lambda r: r['params']) for s in settings}
  print('| largest | ' + ' | '.join(f"{best[s]['params'] / 1e9:.2f}B ({best[s]['n_layer']} x {best[s]['n_embd']})"
                                     for s in settings) + ' |')


if __name__ == '__main__':
  main()
