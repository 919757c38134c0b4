"""A sweep's results: one row per point read from its workdir, as CSV, Markdown and plots.

    WORKDIR/<point>/metrics.jsonl, evaluate.json, attempts.jsonl, config.json
      ──point_row──▶ {overrides, status, val loss (final, best), bits per byte, train loss, tokens/s,
                      parameters, cores/devices, wall time, error}
      ──write──▶ WORKDIR/summary.csv, summary.md (sorted by final val loss; mean ± std over seeds),
                 WORKDIR/plots/curves.png, plots/val_loss_vs_<field>.png

Everything is read from the points' own files, so the summary is the same whoever ran the points
(the sweep command, a SLURM array, a command typed by hand) and can be rewritten at any time.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
import sys

from gptjax import sweep as sweep_lib
from gptjax.data import atomic_write
from gptjax.metrics import read_jsonl

COLUMNS = ('point', 'status', 'val_loss', 'best_val_loss', 'best_step', 'eval_loss', 'bits_per_byte',
           'perplexity', 'train_loss', 'tokens_per_sec', 'params', 'params_nonembed', 'step', 'cores',
           'xla_threads', 'gpus', 'wall_s', 'unrecorded_runs', 'error')
# A training process the sweep started but never saw end (the sweep was killed outright) leaves its
# launch line in train.log but no line in attempts.jsonl: its time is missing from wall_s.
_LAUNCH = re.compile(r'^--- \S+ train[ ,]', re.MULTILINE)


def param_counts(model: dict) -> tuple[int, int]:
  """(parameters as count_params reports them, non-embedding parameters) for a run's model dict.

  Non-embedding excludes the token and position tables and an untied output head (Kaplan et al.'s
  N). Shapes only (jax.eval_shape): nothing is allocated or computed.
  """
  import jax
  import jax.numpy as jnp

  from gptjax.model import GPT, GPTConfig, count_params

  config = GPTConfig(**model)
  tokens = jax.ShapeDtypeStruct((1, min(config.block_size, 8)), jnp.int32)
  shapes = jax.eval_shape(lambda t: GPT(config).init(jax.random.PRNGKey(0), t), tokens)['params']
  total = count_params(shapes)
  embeddings = sum(math.prod(leaf.shape) for name in ('wte', 'wpe', 'lm_head') if name in shapes
                   for leaf in jax.tree.leaves(shapes[name]))
  return total, sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes)) - embeddings


def point_row(sweep: sweep_lib.Sweep, point: sweep_lib.Point, workdir: str) -> dict:
  """What one point's workdir says: its overrides, state, losses, evaluation, speed and resources."""
  directory = sweep_lib.point_dir(workdir, point)
  state = sweep_lib.inspect_point(point, directory)
  row = {'point': point.name, 'index': point.index, 'status': state.kind,
         'error': state.detail if state.kind in ('failed', 'running', 'interrupted') else ''}
  row.update({field: point.overrides.get(field, '') for field in sweep.fields})
  records = read_jsonl(os.path.join(directory, 'metrics.jsonl'))
  vals = [(r['step'], r['val_loss']) for r in records if 'val_loss' in r]
  trains = [r['train_loss'] for r in records if 'train_loss' in r]
  speeds = [r['tokens_per_sec'] for r in records if 'tokens_per_sec' in r]
  if vals:
    row['val_loss'] = vals[-1][1]
    best = min((v for v in vals if math.isfinite(v[1])), key=lambda v: v[1], default=None)
    if best is not None:
      row['best_step'], row['best_val_loss'] = best
  if trains:
    row['train_loss'] = trains[-1]
  if speeds:
    row['tokens_per_sec'] = statistics.median(speeds)
  if records:
    row['step'] = records[-1]['step']
  evaluation = sweep_lib.read_evaluation(directory)
  if evaluation is not None:
    for key, column in (('loss', 'eval_loss'), ('bits_per_byte', 'bits_per_byte'), ('perplexity', 'perplexity')):
      if key in evaluation:
        row[column] = evaluation[key]
  config_path = os.path.join(directory, 'config.json')
  if os.path.exists(config_path):
    with open(config_path, encoding='utf-8') as f:
      model = json.load(f)['model']
    row['params'], row['params_nonembed'] = param_counts(model)
  attempts = sweep_lib.read_attempts(directory)
  trains_run = [a for a in attempts if a.get('phase') == 'train']
  if trains_run:
    last = trains_run[-1]
    row['cores'], row['gpus'] = last.get('cores', ''), last.get('gpus', '')
    if last.get('xla_threads'):
      row['xla_threads'] = last['xla_threads']
  if attempts:
    row['wall_s'] = round(sum(a.get('wall_s', 0) for a in attempts), 1)
  try:
    with open(os.path.join(directory, sweep_lib.TRAIN_LOG), encoding='utf-8', errors='replace') as f:
      launches = len(_LAUNCH.findall(f.read()))
  except OSError:
    launches = 0
  if launches > len(trains_run) and state.kind != 'running':  # (a running point's run has not ended)
    row['unrecorded_runs'] = launches - len(trains_run)
  return row


def _sort_key(row):
  loss = row.get('val_loss')
  return (not isinstance(loss, float) or not math.isfinite(loss), loss if isinstance(loss, float) else 0,
          row['index'])


def rows(sweep: sweep_lib.Sweep, workdir: str) -> list[dict]:
  """One row per point, sorted by final val loss (points without one last, in sweep order)."""
  return sorted((point_row(sweep, p, workdir) for p in sweep.points), key=_sort_key)


def _is_seed(field: str) -> bool:
  return field == 'seed' or field.endswith('.seed')


def seed_groups(table: list[dict], fields: list[str], metrics=('val_loss', 'bits_per_byte', 'train_loss')
                ) -> list[dict]:
  """Rows that differ only in a seed field, merged: {field values, 'n', METRIC_mean, METRIC_std}.

  std is the sample standard deviation (n - 1), 0 for a single seed; only finite values count.
  """
  keys = [f for f in fields if not _is_seed(f)]
  groups = {}
  for row in table:
    groups.setdefault(tuple(repr(row.get(k)) for k in keys), []).append(row)
  out = []
  for members in groups.values():
    group = {k: members[0].get(k) for k in keys}
    group['n'] = len(members)
    for metric in metrics:
      values = [r[metric] for r in members if isinstance(r.get(metric), float) and math.isfinite(r[metric])]
      if values:
        group[f'{metric}_mean'] = statistics.fmean(values)
        group[f'{metric}_std'] = statistics.stdev(values) if len(values) > 1 else 0.0
        group[f'{metric}_n'] = len(values)
    out.append(group)
  return sorted(out, key=lambda g: ('val_loss_mean' not in g, g.get('val_loss_mean', 0)))


# ---------------------------------------------------------------------------------------------
# Tables


def _fmt(value, digits=4) -> str:
  if value is None or value == '':
    return ''
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, float):
    if not math.isfinite(value):
      return str(value)
    if abs(value) >= 100:  # tokens/s, seconds
      return f'{value:,.0f}'
    return f'{value:.{digits}f}' if abs(value) >= 1e-2 else f'{value:.3g}'
  if isinstance(value, int) and abs(value) >= 1000:
    return f'{value:,}'
  return str(value)


def _wall(row) -> str:
  text = _fmt(row.get('wall_s'), 1)
  missing = row.get('unrecorded_runs')
  return f'{text} + {missing} unrecorded run(s)' if missing else text


def to_csv(table: list[dict], fields: list[str]) -> str:
  """Every column, values at full precision (floats read back exactly)."""
  columns = ['point', *fields, *COLUMNS[1:]]
  out = io.StringIO()
  writer = csv.DictWriter(out, columns, extrasaction='ignore', lineterminator='\n')
  writer.writeheader()
  for row in table:
    writer.writerow({c: row.get(c, '') for c in columns})
  return out.getvalue()


def _md_table(header: list[str], body: list[list[str]]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(cell.replace('|', '\\|') for cell in row) + ' |' for row in body]
  return '\n'.join(lines)


def to_markdown(table: list[dict], sweep: sweep_lib.Sweep, workdir: str, plots: list[str] = (),
                report: str = '') -> str:
  fields = sweep.fields
  short = {f: f.split('.')[-1] for f in fields}
  counts = {}
  for row in table:
    counts[row['status']] = counts.get(row['status'], 0) + 1
  lines = [f'# Sweep {os.path.basename(os.path.abspath(workdir))}', '',
           f'`{sweep.path}`' + (' with ' + ', '.join(f'`{k}={sweep_lib.format_override(v)}`'
                                                    for k, v in sweep.base_overrides.items())
                                if sweep.base_overrides else '')
           + f': {len(table)} points (' + ', '.join(f'{n} {k}' for k, n in counts.items()) + '), sorted by '
           'final val loss. Val loss: the last logged estimate (`train.eval_iters` batches); bits per byte: '
           '`gptjax.evaluate` over the whole validation split at the final step.', '']
  header = ['point', *[short[f] for f in fields], 'status', 'val loss', 'best val loss (step)', 'bits/byte',
            'train loss', 'tokens/s', 'params', 'cores / devices', 'wall s']
  body = []
  for row in table:
    best = f"{_fmt(row.get('best_val_loss'))} ({row['best_step']})" if 'best_step' in row else ''
    resources = row.get('cores', '')
    if row.get('xla_threads'):
      resources = f"{resources} ({row['xla_threads']} XLA thr.)"
    if row.get('gpus'):
      resources = f"{resources}; GPU {row['gpus']}"
    body.append([row['point'], *[_fmt(row.get(f)) for f in fields], row['status'], _fmt(row.get('val_loss')),
                 best, _fmt(row.get('bits_per_byte')), _fmt(row.get('train_loss')),
                 _fmt(row.get('tokens_per_sec')), _fmt(row.get('params')), resources, _wall(row)])
  lines.append(_md_table(header, body))
  if any(_is_seed(f) for f in fields):
    groups = seed_groups(table, fields)
    lines += ['', '## Mean ± std over seeds', '']
    keys = [f for f in fields if not _is_seed(f)]
    body = [[*[_fmt(g.get(k)) for k in keys], str(g['n']),
             *[f"{_fmt(g[m + '_mean'])} ± {_fmt(g[m + '_std'])}" if m + '_mean' in g else ''
               for m in ('val_loss', 'bits_per_byte', 'train_loss')]] for g in groups]
    lines.append(_md_table([*[short[k] for k in keys], 'seeds', 'val loss', 'bits/byte', 'train loss'], body))
  problems = [row for row in table if row.get('error')]
  if problems:
    lines += ['', '## Not done', '']
    lines += [f"- `{row['point']}` ({row['status']}): {row['error']}" for row in problems]
  if plots:
    lines += ['', '## Plots', '']
    lines += [f'![{os.path.basename(p)}]({os.path.relpath(p, workdir)})' for p in plots]
  if report:
    lines += ['', report.strip()]
  return '\n'.join(lines) + '\n'


def console_table(table: list[dict], sweep: sweep_lib.Sweep) -> str:
  """A short table for the terminal."""
  header = ['point', 'status', 'val loss', 'bits/byte', 'tokens/s', 'wall s']
  body = [[row['point'], row['status'], _fmt(row.get('val_loss')), _fmt(row.get('bits_per_byte')),
           _fmt(row.get('tokens_per_sec')), _wall(row)] for row in table]
  widths = [max(len(str(x)) for x in column) for column in zip(header, *body)]
  return '\n'.join('  '.join(str(x).ljust(w) for x, w in zip(line, widths)) for line in [header, *body])


# ---------------------------------------------------------------------------------------------
# Plots


def _numeric(values) -> bool:
  return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def new_figure(size):
  """A matplotlib Figure on the Agg canvas (no display, no pyplot state)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=size, dpi=110, layout='constrained')
  FigureCanvasAgg(fig)
  return fig


def plot_field(table: list[dict], fields: list[str], field: str, metric: str = 'val_loss'):
  """Final `metric` against one swept field, as a matplotlib Figure: a line per combination of the
  other swept fields, the mean over seeds with ± std error bars where a point has several seeds,
  and a log axis where the values span a decade or more."""
  others = [f for f in fields if f != field and not _is_seed(f)]
  groups = [g for g in seed_groups(table, fields, metrics=(metric,)) if f'{metric}_mean' in g]
  xs = [g[field] for g in groups]
  numeric = _numeric(xs)
  order = sorted(set(xs)) if numeric else list(dict.fromkeys(map(str, xs)))
  series = {}
  for g in groups:
    series.setdefault(tuple((f.split('.')[-1], g[f]) for f in others), []).append(g)
  fig = new_figure((6.4, 4.4))
  ax = fig.add_subplot()
  for label, members in sorted(series.items(), key=lambda kv: [(0, v, '') if _numeric([v]) else (1, 0, str(v))
                                                                 for _, v in kv[0]]):
    members = sorted(members, key=lambda g: g[field] if numeric else order.index(str(g[field])))
    x = [g[field] if numeric else order.index(str(g[field])) for g in members]
    y = [g[f'{metric}_mean'] for g in members]
    err = [g[f'{metric}_std'] for g in members] if any(g['n'] > 1 for g in members) else None
    text = ', '.join(f'{k}={sweep_lib.format_override(v)}' for k, v in label) or None
    ax.errorbar(x, y, yerr=err, marker='o', capsize=3, label=text)
  if numeric and order and min(order) > 0 and max(order) / min(order) >= 10:
    ax.set_xscale('log')
  if not numeric:
    ax.set_xticks(range(len(order)), order)
  seeded = any(g['n'] > 1 for g in groups)
  ax.set_xlabel(field)
  ax.set_ylabel(f'final {metric.replace("_", " ")}' + (' (mean ± std over seeds)' if seeded else ''))
  ax.grid(True, which='both', alpha=0.3)
  if len(series) > 1:
    ax.legend(fontsize='small')
  return fig


def plot_curves(sweep: sweep_lib.Sweep, workdir: str):
  """Every point's curves (gptjax.plot) as a Figure: train loss and val loss side by side, one colour
  per point, one legend beside both panels. The y axis leaves out the first 10% of each point's steps
  (the fall from ~ln(vocab) that would squash the differences between points)."""
  from gptjax import plot

  curves = [plot.load_curves(sweep_lib.point_dir(workdir, p), label=p.name) for p in sweep.points
            if os.path.exists(os.path.join(sweep_lib.point_dir(workdir, p), 'metrics.jsonl'))]
  longest = max((len(run.label) for run in curves), default=0)
  fig = new_figure((10.5 + 0.08 * longest, 5.5))  # room for the legend beside the panels
  panels = fig.subplots(1, 2, sharey=True)
  for ax, metric in zip(panels, ('train_loss', 'val_loss')):
    if any(run.series(metric)[0] for run in curves):
      plot.plot_curves(curves, metrics=(metric,), ax=ax, title=metric.replace('_', ' '))
      ax.get_legend().remove()
  handles, labels = max((ax.get_legend_handles_labels() for ax in panels), key=lambda hl: len(hl[0]))
  fig.legend(handles, [label.rsplit(' ', 1)[0] for label in labels], loc='outside right upper',
             fontsize='x-small' if len(curves) > 8 else 'small')
  fig.suptitle(f'{os.path.basename(os.path.abspath(workdir))}: every point')
  tail = []
  for run in curves:
    last = max((r['step'] for r in run.records), default=0)
    tail += [y for metric in ('train_loss', 'val_loss') for x, y in zip(*run.series(metric)) if x >= 0.1 * last]
  if tail:
    low, high = min(tail), max(tail)
    pad = 0.05 * (high - low or abs(high) or 1.0)
    panels[0].set_ylim(low - pad, high + pad)
  return fig


def save_png(fig, path: str) -> str:
  """Writes the figure as a PNG (gptjax.plot.save_figure: whole or not at all); returns the path."""
  from gptjax import plot
  plot.save_figure(fig, path)
  return path


def write(sweep: sweep_lib.Sweep, workdir: str, plots: bool = True) -> tuple[list[dict], list[str]]:
  """Writes WORKDIR/summary.csv and summary.md; with `plots`, also the plots and the section that the
  sweep file's optional `report(rows, plots_dir) -> str` returns (Markdown; it may draw its own
  figures into plots_dir and link them as plots/NAME.png). Val loss is plotted against each swept
  field, or against those the sweep file lists in PLOT_FIELDS. Returns (rows, paths written)."""
  table = rows(sweep, workdir)
  paths, images, report = [], [], ''
  if plots:
    plots_dir = os.path.join(workdir, 'plots')
    os.makedirs(plots_dir, exist_ok=True)
    if any(r.get('step') is not None for r in table):
      images.append(save_png(plot_curves(sweep, workdir), os.path.join(plots_dir, 'curves.png')))
    if any(isinstance(r.get('val_loss'), float) for r in table):
      for field in getattr(sweep.module, 'PLOT_FIELDS', sweep.fields):  # the sweep file may choose
        if not _is_seed(field):
          images.append(save_png(plot_field(table, sweep.fields, field),
                              os.path.join(plots_dir, f'val_loss_vs_{field.split(".")[-1]}.png')))
    if callable(getattr(sweep.module, 'report', None)):  # a study's own analysis, as Markdown
      try:
        report = sweep.module.report(table, plots_dir) or ''
      except Exception as e:  # it must not lose the summary
        report = f'report() of {sweep.path} failed: {type(e).__name__}: {e}'
        print(f'warning: {report}', file=sys.stderr)
  csv_path, md_path = os.path.join(workdir, 'summary.csv'), os.path.join(workdir, 'summary.md')
  atomic_write(csv_path, to_csv(table, sweep.fields))
  atomic_write(md_path, to_markdown(table, sweep, workdir, images, report))
  paths += [csv_path, md_path, *images]
  return table, paths
