"""Training throughput and quality: gptjax vs nanoGPT's recipe in PyTorch, side by side, same machine.

nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide, block 64, batch 12, 2000 iters, lr 1e-3 warm-up
100 then cosine to 1e-4, AdamW beta2 0.99, dropout 0) on tiny Shakespeare, character level. Each
repeat runs every contender once, in turn, as a fresh process, so machine noise hits them alike.
Repeat r trains every contender from seed r (gptjax's config.seed, the peer's torch and batch
seed), so the repeats are also a seed sweep. Reports the val loss at iter 2000 (mean over the seeds
and each seed's), the median ms/iter and tokens/s, the gptjax/torch ratio taken within each repeat
(against the first torch contender), the process CPU seconds per iteration (user + system,
compilation and evaluation included), and the 1-minute load average when each run started (another
workload on the machine slows both sides, PyTorch's multi-threaded step most).

  pip install -e '.[bench]'
  python experiments/bench_train.py --data=../shared/data/tinyshakespeare.txt --repeats=3

Contenders: `gptjax default` is exactly the README's command (`python -m gptjax.train
--config=configs/shakespeare_char.py ...`) with XLA_FLAGS unset, so gptjax/cpu.py makes its
start-up choices; `gptjax --nocpu_auto` is the same without them (one XLA device, XLA's default
flags); `--devices=1,2` adds runs with that many devices forced through XLA_FLAGS. Its ms/iter is
the median over its 50-step log windows (compilation and evaluation excluded); the torch run is
experiments/nanogpt_peer.py, ms/iter the median over iterations (evaluation excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENS_PER_ITER = 12 * 64

TORCH_SNIPPET = r'''
import json, sys, numpy as np
sys.path.insert(0, {exp!r})
import nanogpt_peer
text = open({data!r}, encoding='utf-8').read()
chars = sorted(set(text)); stoi = {{c: i for i, c in enumerate(chars)}}
ids = np.array([stoi[c] for c in text], np.uint16); n = int(0.9 * len(ids))
r = nanogpt_peer.train(ids[:n], ids[n:], len(chars), max_iters={steps}, eval_iters={eval_iters},
                       seed={seed}, threads={threads}, log=lambda s: None)
print(json.dumps(dict(val_loss=r['val_loss'], ms=float(np.median(r['ms_per_iter'])), wall=r['wall_s'])))
'''


def _child_cpu_s() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def run_gptjax(data, steps, eval_iters, devices, config='configs/shakespeare_char.py', extra_flags=(), seed=None):
  """One `python -m gptjax.train` run: {val_loss at the last step, median ms/step, wall s, cpu s}.

  devices: None runs the command as a user would (XLA_FLAGS unset: gptjax/cpu.py chooses), a
  number forces that many CPU devices through XLA_FLAGS; seed None keeps the config's."""
  with tempfile.TemporaryDirectory() as workdir:
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
    if devices is not None:
      env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
    cmd = [sys.executable, '-m', 'gptjax.train', f'--config={config}',
           f'--workdir={workdir}', f'--config.data.path={data}', f'--config.train.max_steps={steps}',
           f'--config.train.eval_iters={eval_iters}', '--noprogress', *extra_flags]
    cmd += [] if seed is None else [f'--config.seed={seed}']
    t0, c0, load = time.perf_counter(), _child_cpu_s(), os.getloadavg()[0]
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    wall, cpu_s = time.perf_counter() - t0, _child_cpu_s() - c0
    records = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  ms = [r['ms_per_step'] for r in records if 'ms_per_step' in r]
  val = [r['val_loss'] for r in records if r['step'] == steps and 'val_loss' in r][0]
  choices = [l for l in out.stdout.splitlines() if l.startswith('cpu: ')]
  return dict(val_loss=val, ms=float(np.median(ms)), wall=wall, cpu_s=cpu_s, load=load,
              choices=choices[0] if choices else '')


def run_torch(data, steps, eval_iters, seed=0, threads=None):
  """experiments/nanogpt_peer.py's recipe; threads None keeps PyTorch's default (one per core)."""
  code = TORCH_SNIPPET.format(exp=os.path.join(ROOT, 'experiments'), data=os.path.abspath(data),
                              steps=steps, eval_iters=eval_iters, seed=seed, threads=threads)
  t0, c0, load = time.perf_counter(), _child_cpu_s(), os.getloadavg()[0]
  out = subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  return {**result, 'wall': time.perf_counter() - t0, 'cpu_s': _child_cpu_s() - c0, 'load': load}


def cpu_name() -> str:
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
    fields = dict(l.split(':', 1) for l in out.splitlines() if ':' in l)
    flags = fields.get('Flags', '').split()
    isa = ('AVX-512' + (' + bf16' if 'avx512_bf16' in flags else '') + (' + AMX' if 'amx_tile' in flags else '')
           if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else 'no AVX2')
    return f'{fields["Model name"].strip()} ({isa}), {fields["CPU(s)"].strip()} CPUs'
  except (OSError, KeyError):
    import platform
    return platform.processor() or platform.machine()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', required=True, help='tinyshakespeare.txt')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--eval_iters', type=int, default=200, help='val batches per evaluation (both sides)')
  parser.add_argument('--gptjax', default='default,nocpu_auto',
                      help='gptjax variants: default (the plain command), nocpu_auto (without cpu.py\'s choices)')
  parser.add_argument('--devices', default='',
                      help='extra gptjax variants: CPU device counts forced via XLA_FLAGS')
  parser.add_argument('--torch_threads', default='0',
                      help="the peer's thread counts, one contender each (0: PyTorch's default); the first is "
                      'the reference of the ratios')
  args = parser.parse_args()

  base = (args.data, args.steps, args.eval_iters)
  variants = {'default': ('gptjax default', []), 'nocpu_auto': ('gptjax --nocpu_auto', ['--nocpu_auto'])}
  contenders = {variants[v][0]: (lambda seed, flags=variants[v][1]: run_gptjax(*base, None, extra_flags=flags,
                                                                                seed=seed))
                for v in args.gptjax.split(',')}
  for d in filter(None, args.devices.split(',')):
    contenders[f'gptjax, XLA_FLAGS {d} device{"s" * (d != "1")}'] = (
        lambda seed, d=int(d): run_gptjax(*base, d, extra_flags=['--nocpu_auto'], seed=seed))
  torch_names = []
  for threads in (int(t) for t in args.torch_threads.split(',')):
    torch_names.append('nanoGPT recipe, PyTorch' + (f' ({threads} thread{"s" * (threads > 1)})' if threads else ''))
    contenders[torch_names[-1]] = lambda seed, threads=threads: run_torch(*base, seed=seed, threads=threads or None)
  torch_name = torch_names[0]  # the ratios' reference
  results = {name: [] for name in contenders}
  for r in range(args.repeats):
    for name, fn in contenders.items():
      results[name].append(fn(r))
      print(f'repeat {r} (seed {r}): {name}: {results[name][-1]}', flush=True)

  default = results.get('gptjax default')
  print(f'\n{cpu_name()}' + (f'; gptjax default: {default[0]["choices"]}' if default else ''))
  print(f'{args.repeats} repeats (seeds 0..{args.repeats - 1}), {args.steps} iters, val loss over {args.eval_iters} '
        'batches; medians over the repeats:')
  print(f'| contender | val loss @{args.steps}, mean (per seed) | ms/iter | tokens/s | tokens/s vs torch '
        '(per repeat) | CPU s/iter | run wall s | load avg at start |')
  print('|---|---|---|---|---|---|---|---|')
  for name, rs in results.items():
    ms = float(np.median([x['ms'] for x in rs]))
    # The ratio is taken within each repeat (same minutes of machine time), then the median.
    ratios = [t['ms'] / x['ms'] for x, t in zip(rs, results[torch_name])]
    vals = [x['val_loss'] for x in rs]
    listed = lambda xs, fmt: ', '.join(fmt.format(v) for v in xs)
    cpu_ms = 1e3 * np.median([x['cpu_s'] for x in rs]) / args.steps
    print(f'| {name} | {np.mean(vals):.4f} ({listed(vals, "{:.4f}")}) | {ms:.1f} | '
          f'{TOKENS_PER_ITER / ms * 1e3:,.0f} | '
          f'{np.median(ratios):.2f}x ({listed(ratios, "{:.2f}")}) | {cpu_ms:.0f} ms | '
          f'{np.median([x["wall"] for x in rs]):.0f} | {listed([x["load"] for x in rs], "{:.1f}")} |')

if __name__ == '__main__':
  main()
