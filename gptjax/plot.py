"""Runs as pictures: train and val loss against step (or tokens seen), several runs on one chart.

    python -m gptjax.plot runs/a runs/b --out=curves.png [--x=tokens] [--logx] [--logy]

In research code (a sweep's summary, a notebook):

    curves = [load_curves(d) for d in workdirs]          # metrics.jsonl + tokens per step
    fig = plot_curves(curves, x='tokens', log_y=True)    # a matplotlib Figure, no pyplot state
    save_figure(fig, 'curves.png')

Each run gets one colour, each metric one line style (train solid, val dashed with markers, since
it is measured less often). Figures are drawn with matplotlib's Agg canvas: no display is needed.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from typing import Sequence

from gptjax.data import atomic_write
from gptjax.errors import GptjaxError
from gptjax.metrics import read_jsonl

DEFAULT_METRICS = ('train_loss', 'val_loss')
_STYLES = {'train_loss': dict(linestyle='-'), 'val_loss': dict(linestyle='--', marker='o', markersize=3)}
_OTHER_STYLES = [dict(linestyle=':'), dict(linestyle='-.'), dict(linestyle=(0, (5, 1, 1, 1)))]


@dataclasses.dataclass(frozen=True)
class Curves:
  """What one run logged: its label, its metrics.jsonl records, and the tokens each step consumes."""

  label: str
  records: list  # [{'step': int, 'train_loss': float, ...}] as in metrics.jsonl
  tokens_per_step: int | None = None  # train.batch_size * train.seq_len; None if unknown

  def series(self, metric: str, x: str = 'step') -> tuple[list[float], list[float]]:
    """(xs, ys) of the records that logged `metric` with a finite value; x is 'step' or 'tokens'."""
    if x == 'tokens' and not self.tokens_per_step:
      raise GptjaxError(f'run {self.label!r} has no config.json to count tokens per step; plot against '
                        '--x=step')
    scale = self.tokens_per_step if x == 'tokens' else 1
    points = [(r['step'] * scale, r[metric]) for r in self.records
              if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    return [p[0] for p in points], [p[1] for p in points]


def load_curves(workdir: str, label: str | None = None) -> Curves:
  """The curves of the run in workdir (its metrics.jsonl, and config.json for tokens per step)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.isfile(path):
    raise GptjaxError(f'{workdir} has no metrics.jsonl; give run directories made by python -m gptjax.train')
  tokens_per_step = None
  config_path = os.path.join(workdir, 'config.json')
  if os.path.isfile(config_path):
    with open(config_path, encoding='utf-8') as f:
      train = json.load(f).get('train', {})
    if train.get('batch_size') and train.get('seq_len'):
      tokens_per_step = int(train['batch_size']) * int(train['seq_len'])
  return Curves(label=label or os.path.basename(os.path.normpath(workdir)), records=read_jsonl(path),
                tokens_per_step=tokens_per_step)


def run_labels(workdirs: Sequence[str]) -> list[str]:
  """Short distinct labels: the last path component, or as many trailing ones as tell runs apart."""
  parts = [os.path.normpath(os.path.abspath(d)).split(os.sep) for d in workdirs]
  for n in range(1, max(len(p) for p in parts) + 1):
    labels = ['/'.join(p[-n:]) for p in parts]
    if len(set(labels)) == len(labels):
      return labels
  return ['/'.join(p) for p in parts]  # the same directory given twice


def plot_curves(curves: Sequence[Curves], *, metrics: Sequence[str] = DEFAULT_METRICS, x: str = 'step',
                log_x: bool = False, log_y: bool = False, title: str | None = None, ax=None):
  """Draws every run's `metrics` against x ('step' or 'tokens') and returns the Figure.

  ax: a matplotlib Axes to draw into (e.g. one panel of a sweep's figure); by default a new Figure
  with one Axes. Lines are labelled '<run label> <metric>' ('_loss' dropped: 'run train').
  Points that cannot be shown (non-finite values; x <= 0 on a log axis) are left out.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  if x not in ('step', 'tokens'):
    raise GptjaxError(f"x={x!r} must be 'step' or 'tokens'")
  if not curves:
    raise GptjaxError('no runs to plot')
  if ax is None:
    fig = Figure(figsize=(8, 5), dpi=120, layout='constrained')
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
  colors = _colors(len(curves))
  drawn = 0
  for color, run in zip(colors, curves):
    for i, metric in enumerate(metrics):
      xs, ys = run.series(metric, x)
      if log_x or log_y:
        keep = [(a, b) for a, b in zip(xs, ys) if (a > 0 or not log_x) and (b > 0 or not log_y)]
        xs, ys = [a for a, _ in keep], [b for _, b in keep]
      if not xs:
        continue
      style = _STYLES.get(metric, _OTHER_STYLES[i % len(_OTHER_STYLES)])
      ax.plot(xs, ys, color=color, label=f'{run.label} {metric.removesuffix("_loss")}', **style)
      drawn += 1
  if not drawn:
    logged = sorted({k for run in curves for r in run.records for k in r} - {'step'})
    raise GptjaxError(f'none of the runs logged {", ".join(metrics)}; they logged: {", ".join(logged) or "nothing"}')
  ax.set_xlabel('tokens seen' if x == 'tokens' else 'step')
  ax.set_ylabel('loss (nats/token)' if all(m.endswith('loss') for m in metrics) else ', '.join(metrics))
  if log_x:
    ax.set_xscale('log')
  if log_y:
    ax.set_yscale('log')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize='small')
  if title:
    ax.set_title(title)
  return ax.figure


def _colors(n: int) -> list:
  """Distinct colours: matplotlib's tab10 up to 10 runs, then evenly spaced viridis."""
  from matplotlib import colormaps
  if n <= 10:
    return [colormaps['tab10'](i) for i in range(n)]
  return [colormaps['viridis'](i / (n - 1)) for i in range(n)]


def save_figure(fig, path: str) -> None:
  """Writes the figure to path (format from the extension: png, pdf, svg, ...), whole or not at all."""
  fmt = os.path.splitext(path)[1].lstrip('.').lower()
  supported = fig.canvas.get_supported_filetypes()
  if fmt not in supported:
    raise GptjaxError(f'cannot write {path}: the extension must be one of {", ".join(sorted(supported))}')
  buffer = io.BytesIO()
  fig.savefig(buffer, format=fmt)
  atomic_write(path, buffer.getvalue())


def main():
  """python -m gptjax.plot DIR [DIR ...] --out=FILE.png [--x=tokens] [--logx] [--logy]"""
  from absl import flags

  from gptjax import cli

  flags.DEFINE_string('out', None, 'Image to write (.png, .pdf, .svg, ...); replaced if it exists.')
  flags.DEFINE_enum('x', 'step', ['step', 'tokens'], 'The x axis: optimizer steps or tokens seen '
                    '(step * train.batch_size * train.seq_len).')
  flags.DEFINE_bool('logx', False, 'Log-scaled x axis.')
  flags.DEFINE_bool('logy', False, 'Log-scaled y axis.')
  flags.DEFINE_list('metrics', list(DEFAULT_METRICS), 'Metrics of metrics.jsonl to draw.')
  flags.DEFINE_list('labels', None, 'One label per run (default: the shortest distinct ends of the paths).')
  flags.DEFINE_string('title', None, 'Chart title.')
  cli.define_common()

  def run(argv):
    f = flags.FLAGS
    workdirs = argv[1:]
    if not workdirs:
      raise GptjaxError('give at least one run directory: python -m gptjax.plot DIR [DIR ...] --out=FILE.png')
    if not f.out:
      raise GptjaxError('--out is required: the image file to write, e.g. --out=curves.png')
    labels = f.labels or run_labels(workdirs)
    if len(labels) != len(workdirs):
      raise GptjaxError(f'--labels has {len(labels)} label(s) for {len(workdirs)} run(s); give one per run')
    curves = [load_curves(d, label) for d, label in zip(workdirs, labels)]
    fig = plot_curves(curves, metrics=f.metrics, x=f.x, log_x=f.logx, log_y=f.logy, title=f.title)
    save_figure(fig, f.out)
    print(f'wrote {f.out} ({len(curves)} run(s): {", ".join(labels)})')

  cli.run(run)


if __name__ == '__main__':
  main()
