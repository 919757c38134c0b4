"""pmap vs the mesh strategy: memory per device on a GPT-2-small-shaped model, and step time on this CPU.

1. Memory (compiled, not run): GPT-2 small's shape (12 layers, 12 heads, 768 wide, vocab 50304,
   1024 positions; 124M parameters) with one 1024-token row per data-parallel shard, one train step with
   training's optimizer (clip + AdamW), over 1, 2, 4 and 8 fake CPU devices. Per device: the bytes
   of parameters + optimizer state the layout puts there (from the arrays' shardings), and what XLA's
   buffer assignment of the compiled step reports (`compiled.memory_analysis()`): the arguments
   (state + batch) and the temporaries (activations, gradients, collectives' buffers); their sum
   bounds the step's peak (the new state is written over the donated old one). XLA:CPU's own
   `peak_memory_in_bytes` counts the argument buffers only, so it is not shown.
   pmap replicates the state on every device; FSDP (mesh data 1 x fsdp N) splits it N ways; tensor
   parallelism (mesh data 1 x tensor N, one row shared by the N devices) splits heads, MLP width and
   vocabulary. Also the collectives in each compiled step, by kind.

2. Step time: the Shakespeare recipe (`configs/shakespeare_char.py`, as the README's training
   table runs it) trained by the real command for --steps steps under each strategy on 1 and 2 CPU
   devices, interleaved, --repeats times; the median of each run's ms/step (metrics.jsonl, the
   first logging window, which includes compilation, left out).

  python experiments/bench_parallel.py --data=../shared/data/tinyshakespeare.txt [--repeats=3 --steps=500]
  python experiments/bench_parallel.py --part=memory     # or --part=time
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_DEVICES = (1, 2, 4, 8)


def memory_rows():
  """Runs in a child process with 8 fake devices (the count is fixed when JAX starts)."""
  import functools

  import jax
  import jax.numpy as jnp
  import ml_collections
  import numpy as np

  from gptjax import config as config_lib
  from gptjax import parallel
  from gptjax import train as T
  from gptjax.model import GPT, GPTConfig

  model_config = GPTConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768)
  tx, _ = T.make_optimizer(config_lib.resolve(config_lib.get_config()).train)
  axes = T.state_axes(model_config, tx)
  abstract = jax.eval_shape(lambda: T.init_state(model_config, tx, 0))
  step_fn = lambda layout: functools.partial(T.train_steps, model=GPT(model_config), tx=tx,
                                             axis_name=layout.axis_name)
  rows = []
  for n in N_DEVICES:
    devices = jax.devices()[:n]
    layouts = [('pmap', {'strategy': 'pmap'}), (f'mesh, fsdp {n}', {'strategy': 'mesh', 'data': 1, 'fsdp': n})]
    if n in (2, 4):  # 12 heads: tensor 8 cannot split them
      layouts.append((f'mesh, tensor {n}', {'strategy': 'mesh', 'data': 1, 'tensor': n}))
    for name, pc in layouts:
      layout = parallel.make_layout(ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1, **pc}), devices)
      shardings = layout.state_shardings(axes)
      # Bytes of the state on the first device: each leaf's shard there.
      state_bytes = sum(
          int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize
          for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)))
      # What the training loop compiles (train_steps, here 1 step per call), compiled without running.
      step = layout.compile_train(step_fn(layout), shardings)
      # [steps, batch, seq + 1]: one row per data-parallel shard (per device but under tensor parallelism)
      tokens = (1, layout.batch_split, model_config.block_size + 1)
      if name == 'pmap':
        per_device = jax.tree.map(lambda a: jax.ShapeDtypeStruct((n,) + a.shape, a.dtype), abstract)
        compiled = step.lower(per_device, jax.ShapeDtypeStruct((n, 1, 1, tokens[2]), jnp.int32)).compile()
      else:
        placed = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
        with jax.set_mesh(layout.mesh):
          compiled = step.jitted.lower(
              placed, jax.ShapeDtypeStruct(tokens, jnp.int32, sharding=layout.batch_sharding)).compile()
      m, text = compiled.memory_analysis(), compiled.as_text()
      rows.append({'devices': n, 'strategy': name, 'state': state_bytes, 'arguments': m.argument_size_in_bytes,
                   'temp': m.temp_size_in_bytes, 'rows': tokens[1],
                   'collectives': {op: text.count(f' {op}(') for op in COLLECTIVES}})
      print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  return rows


COLLECTIVES = ('all-gather', 'all-reduce', 'reduce-scatter', 'all-to-all', 'collective-permute')


def print_memory(rows):
  gb = lambda b: f'{b / 2**30:.2f}'
  base = next(r['state'] for r in rows if r['devices'] == 1)
  print('| devices | strategy | batch rows | params + optimizer state per device, GiB | vs 1 device | '
        'compiled step: arguments, GiB | temporaries, GiB | peak (arguments + temporaries), GiB | '
        'collectives in the step (' + ', '.join(COLLECTIVES) + ') |')
  print('|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['devices']} | {r['strategy']} | {r['rows']} | {gb(r['state'])} | {r['state'] / base:.3f} | "
          f"{gb(r['arguments'])} | {gb(r['temp'])} | {gb(r['arguments'] + r['temp'])} | "
          + ' / '.join(str(r['collectives'][op]) for op in COLLECTIVES) + ' |')


def run_time(data, steps, repeats):
  """ms/step per (strategy, devices): median over `repeats` interleaved runs of the real command."""
  import numpy as np

  from gptjax.metrics import read_jsonl

  contenders = [(s, n) for n in (1, 2) for s in ('pmap', 'mesh')]
  results = {c: [] for c in contenders}
  for r in range(repeats):
    for strategy, n in contenders:
      with tempfile.TemporaryDirectory() as workdir:
        env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={n}'}
        subprocess.run([sys.executable, '-m', 'gptjax.train', '--config=configs/shakespeare_char.py',
                        f'--config.data.path={data}', f'--workdir={workdir}', f'--config.train.max_steps={steps}',
                        f'--config.parallel.strategy={strategy}', '--config.train.eval_iters=0',
                        '--config.train.checkpoint_interval=100000', '--noprogress'],
                       check=True, cwd=ROOT, env=env, capture_output=True)
        windows = [rec['ms_per_step'] for rec in read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
                   if 'ms_per_step' in rec]
        results[strategy, n].append(float(np.mean(windows)))
        print(f'repeat {r}: {strategy} on {n}: {results[strategy, n][-1]:.2f} ms/step', file=sys.stderr, flush=True)
  print(f'| devices | strategy | ms/step (median of {repeats}) | tokens/s | mesh vs pmap |')
  print('|---|---|---|---|---|')
  for strategy, n in contenders:
    ms = float(np.median(results[strategy, n]))
    pmap_ms = float(np.median(results['pmap', n]))
    print(f'| {n} | {strategy} | {ms:.1f} | {12 * 64 / ms * 1e3:,.0f} | {pmap_ms / ms:.2f}x |')


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--part', choices=('memory', 'time', 'both'), default='both')
  parser.add_argument('--data', default='data/tinyshakespeare.txt')
  parser.add_argument('--steps', type=int, default=500)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--memory-child', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.memory_child:
    print(json.dumps(memory_rows()))
    return
  print(subprocess.run(['lscpu'], capture_output=True, text=True).stdout.split('Model name:')[1].splitlines()[0].strip()
        + f', {os.cpu_count()} cores')
  if args.part in ('memory', 'both'):
    env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
    out = subprocess.run([sys.executable, __file__, '--memory-child'], check=True, env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, text=True).stdout
    print_memory(json.loads(out.strip().splitlines()[-1]))
  if args.part in ('time', 'both'):
    run_time(os.path.abspath(args.data), args.steps, args.repeats)


if __name__ == '__main__':
  main()
