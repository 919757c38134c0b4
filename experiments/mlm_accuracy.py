"""Masked-LM on tiny Shakespeare: the masked-character accuracy curve of configs/mlm_char.py, with
GPT-2's block (BERT's: learned positions, LayerNorm, GELU) and with the Llama-style block of
configs/llama_style_char.py (RoPE, RMSNorm, SwiGLU, QK-norm, GQA), plotted against the step.

Each run is the README's training command (`python -m gptjax.train --config=configs/mlm_char.py ...`)
into WORKDIRS/<name>; a finished run is not retrained (rerunning only redraws the plot). Prints the
validation accuracy and loss (the same ~2,300 masked characters at every evaluation) at a few steps,
and writes the plot.

  python experiments/mlm_accuracy.py --data=../shared/data/tinyshakespeare.txt --workdirs=runs \
      --out=experiments/mlm_accuracy.png
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's gptjax, also in the runs (PYTHONPATH below)

from gptjax import config as config_lib  # noqa: E402


def llama_overrides() -> list[str]:
  """The model fields configs/llama_style_char.py changes, as command-line overrides."""
  base = config_lib.load_file(os.path.join(ROOT, 'configs', 'shakespeare_char.py')).model
  llama = config_lib.load_file(os.path.join(ROOT, 'configs', 'llama_style_char.py')).model
  return [f'--config.model.{k}={v}' for k, v in llama.items() if base[k] != v]


def train(name, overrides, data, workdirs):
  workdir = os.path.join(workdirs, name)
  cmd = [sys.executable, '-m', 'gptjax.train', '--config=configs/mlm_char.py', f'--workdir={workdir}',
         f'--config.data.path={data}', '--noprogress'] + overrides
  print(' '.join(cmd[1:]), flush=True)
  t0 = time.perf_counter()
  subprocess.run(cmd, cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT}, check=True)
  print(f'{name}: {time.perf_counter() - t0:.0f} s', flush=True)
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [r for r in map(json.loads, f) if 'val_accuracy' in r]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', required=True, help='tinyshakespeare.txt')
  parser.add_argument('--workdirs', default='runs', help='the runs go to WORKDIRS/mlm_char and WORKDIRS/mlm_char_llama')
  parser.add_argument('--out', default='experiments/mlm_accuracy.png')
  args = parser.parse_args()

  curves = {'GPT-2 block (BERT-like)': train('mlm_char', [], args.data, args.workdirs),
            'Llama-style block': train('mlm_char_llama', llama_overrides(), args.data, args.workdirs)}

  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  for name, records in curves.items():
    ax.plot([r['step'] for r in records], [100 * r['val_accuracy'] for r in records], marker='.', label=name)
  ax.set_xlabel('step (batch 12 x 64 characters, 15% picked)')
  ax.set_ylabel('masked-character accuracy, val (%)')
  ax.set_title('Masked LM on tiny Shakespeare (configs/mlm_char.py)')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(ROOT, args.out) if not os.path.isabs(args.out) else args.out, dpi=120)

  steps = sorted({r['step'] for r in next(iter(curves.values()))})
  shown = [s for s in steps if s in (0, 250, 500, 1000, 1500) or s == steps[-1]]
  print(f'\n| block | ' + ' | '.join(f'acc @{s}' for s in shown) + f' | val loss @{steps[-1]} |')
  print('|---|' + '---|' * (len(shown) + 1))
  for name, records in curves.items():
    by_step = {r['step']: r for r in records}
    print(f'| {name} | ' + ' | '.join(f'{100 * by_step[s]["val_accuracy"]:.1f}%' for s in shown)
          + f' | {by_step[steps[-1]]["val_loss"]:.4f} |')
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
