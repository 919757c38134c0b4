"""Training throughput and quality: gptjax vs nanoGPT's recipe in PyTorch, side by side, same machine.

nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide, block 64, batch 12, 2000 iters, lr 1e-3 warm-up
100 then cosine to 1e-4, AdamW beta2 0.99, dropout 0) on tiny Shakespeare, character level. Each
repeat runs every contender once, in turn, as a fresh process, so machine noise hits them alike.
Reports the val loss at iter 2000, the median ms/iter and tokens/s, and gptjax/torch ratios.

  pip install -e '.[bench]'
  python experiments/bench_train.py --data=../shared/data/tinyshakespeare.txt --repeats=3

The gptjax run is exactly the README's command (`python -m gptjax.train --config=configs/
shakespeare_char.py ...`), its ms/iter the median over its 50-step log windows (compilation
excluded); the torch run is experiments/nanogpt_peer.py, ms/iter the median over iterations.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

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
                       log=lambda s: None)
print(json.dumps(dict(val_loss=r['val_loss'], ms=float(np.median(r['ms_per_iter'])), wall=r['wall_s'])))
'''


def run_gptjax(data, steps, eval_iters, devices, config='configs/shakespeare_char.py', extra_flags=()):
  """One `python -m gptjax.train` run: {val_loss at the last step, median ms/step, wall s}."""
  with tempfile.TemporaryDirectory() as workdir:
    env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
    cmd = [sys.executable, '-m', 'gptjax.train', f'--config={config}',
           f'--workdir={workdir}', f'--config.data.path={data}', f'--config.train.max_steps={steps}',
           f'--config.train.eval_iters={eval_iters}', '--noprogress', *extra_flags]
    import time
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    records = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  ms = [r['ms_per_step'] for r in records if 'ms_per_step' in r]
  val = [r['val_loss'] for r in records if r['step'] == steps and 'val_loss' in r][0]
  return dict(val_loss=val, ms=float(np.median(ms)), wall=wall)


def run_torch(data, steps, eval_iters):
  code = TORCH_SNIPPET.format(exp=os.path.join(ROOT, 'experiments'), data=os.path.abspath(data),
                              steps=steps, eval_iters=eval_iters)
  out = subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', required=True, help='tinyshakespeare.txt')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--eval_iters', type=int, default=200, help='val batches per evaluation (both sides)')
  parser.add_argument('--devices', default='1,2', help='gptjax variants: CPU device counts to run')
  args = parser.parse_args()

  contenders = {f'gptjax ({d} CPU device{"s" * (d != "1")})': (lambda d=int(d): run_gptjax(
      args.data, args.steps, args.eval_iters, d)) for d in args.devices.split(',')}
  contenders['nanoGPT recipe, PyTorch'] = lambda: run_torch(args.data, args.steps, args.eval_iters)
  results = {name: [] for name in contenders}
  for r in range(args.repeats):
    for name, fn in contenders.items():
      results[name].append(fn())
      print(f'repeat {r}: {name}: {results[name][-1]}', flush=True)

  print(f'\n{args.repeats} repeats, {args.steps} iters, val loss over {args.eval_iters} batches; medians:')
  print(f'| contender | val loss @{args.steps} | ms/iter | tokens/s | run wall s | tokens/s vs torch |')
  print('|---|---|---|---|---|---|')
  for name, rs in results.items():
    ms = float(np.median([x['ms'] for x in rs]))
    # The ratio is taken within each repeat (same minutes of machine time), then the median.
    ratio = np.median([t['ms'] / x['ms'] for x, t in zip(rs, results['nanoGPT recipe, PyTorch'])])
    print(f'| {name} | {np.median([x["val_loss"] for x in rs]):.4f} | {ms:.1f} | {TOKENS_PER_ITER / ms * 1e3:,.0f} '
          f'| {np.median([x["wall"] for x in rs]):.0f} | {ratio:.2f}x |')


if __name__ == '__main__':
  main()
