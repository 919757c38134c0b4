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

2. Step time: the Shakespeare recipe (`configs/shakespeare_char.py`, the README's training table)
   under each strategy on 1 and 2 CPU devices (one child process per device count): both runs are
   set up by `train.set_up` and `train.build_steps` as `gptjax.train` sets them up, and their calls
   (draw the batches, 10 steps, wait for the losses: the training loop's body) alternate one by one
   (which goes first alternates too); medians over --calls calls each, after two untimed ones.

  python experiments/bench_parallel.py --data=../shared/data/tinyshakespeare.txt [--calls=30]
  python experiments/bench_parallel.py --part=memory     # or --part=time
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
      pc = ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1, **pc})
      layout = parallel.make_layout(pc, devices)
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
        with jax.set_mesh(layout.mesh):
          batch = jax.ShapeDtypeStruct(tokens, jnp.int32, sharding=layout.batch_sharding)
          compiled = step.jitted.lower(parallel.placed(abstract, shardings), batch).compile()
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


def time_rows(data, calls):
  """In a child process with n CPU devices: the real training loop's calls under both strategies,
  alternated call by call (so load from elsewhere hits both alike); ms/step of each call."""
  import importlib.util
  import time

  import jax

  from gptjax import data as data_lib
  from gptjax import train as T

  spec = importlib.util.spec_from_file_location('recipe', os.path.join(ROOT, 'configs', 'shakespeare_char.py'))
  recipe = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(recipe)
  runs = {}
  with tempfile.TemporaryDirectory() as tmp:
    for strategy in ('pmap', 'mesh'):
      config = recipe.get_config()
      config.data.path, config.parallel.strategy = data, strategy
      setup = T.set_up(config, os.path.join(tmp, strategy))  # writes nothing there
      steps = T.build_steps(setup)
      runs[strategy] = [setup, steps, setup.layout.to_device(setup.state)]
    per_call = setup.config.train.steps_per_call
    times = {s: [] for s in runs}
    for i in range(calls + 2):  # the first two calls of each: compilation and warm-up, not timed
      for strategy in ('pmap', 'mesh') if i % 2 else ('mesh', 'pmap'):  # either may go first
        setup, steps, state = run = runs[strategy]
        t0 = time.perf_counter()
        # The loop's body: draw this call's batches, run them, wait for the losses.
        batch = steps.batches(setup.corpus.train, i * per_call, per_call, data_lib.TRAIN_STREAM)
        state, metrics = steps.train(state, batch)
        setup.layout.read(metrics['loss'])
        run[2] = state
        if i >= 2:
          times[strategy].append(1e3 * (time.perf_counter() - t0) / per_call)
    for setup, _, _ in runs.values():
      shutil.rmtree(setup.corpus.staged)  # the data set_up prepared outside the (unused) workdir
  return {'devices': jax.device_count(), 'ms_per_step': times, 'tokens_per_step':
          setup.config.train.batch_size * setup.config.train.seq_len}


def print_time(results):
  import numpy as np
  calls = len(results[0]['ms_per_step']['pmap'])
  print(f'| devices | strategy | ms/step (median of {calls} calls of 10 steps) | tokens/s | pmap / mesh time |')
  print('|---|---|---|---|---|')
  for r in results:
    med = {s: float(np.median(t)) for s, t in r['ms_per_step'].items()}
    for strategy, ms in med.items():
      print(f"| {r['devices']} | {strategy} | {ms:.1f} | {r['tokens_per_step'] / ms * 1e3:,.0f} | "
            f"{med['pmap'] / ms:.2f}x |")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--part', choices=('memory', 'time', 'both'), default='both')
  parser.add_argument('--data', default='data/tinyshakespeare.txt')
  parser.add_argument('--calls', type=int, default=30)
  parser.add_argument('--child', choices=('memory', 'time'), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(memory_rows() if args.child == 'memory' else time_rows(args.data, args.calls)))
    return
  cpu = subprocess.run(['lscpu'], capture_output=True, text=True).stdout.split('Model name:')[1].splitlines()[0]
  print(f'{cpu.strip()}, {os.cpu_count()} cores')
  child = lambda part, n, *extra: json.loads(subprocess.run(
      [sys.executable, __file__, f'--child={part}', *extra], check=True, cwd=ROOT, stdout=subprocess.PIPE,
      text=True, env={**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={n}'}
  ).stdout.strip().splitlines()[-1])
  if args.part in ('memory', 'both'):
    print_memory(child('memory', 8))
  if args.part in ('time', 'both'):
    print_time([child('time', n, f'--data={os.path.abspath(args.data)}', f'--calls={args.calls}')
                for n in (1, 2)])


if __name__ == '__main__':
  main()
