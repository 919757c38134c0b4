"""A small scaling-law study on the standard-library corpus: 11 model sizes spanning 1.5 decades of
non-embedding parameters N, each trained on 20 tokens per parameter, then L(N) = a * N^-alpha + c
fitted by least squares to the loss over the whole validation split (gptjax.evaluate).

    python -m gptjax.sweep --sweep=experiments/sweeps/stdlib_scaling.py --workdir=runs/stdlib_scaling --parallel=2

N counts every parameter but the token and position tables (Kaplan et al. 2020); embeddings are
tied, so the output head adds none. The byte-level corpus is the first 12 MB of this Python's
standard-library sources: 10.8M training tokens, more than the largest model sees, so no run
repeats data. Every size shares the batch (8 windows of 64 bytes: small, so that even the smallest
model gets ~500 updates), the peak learning rate 3e-3 (cosine to 3e-4) and a warm-up of 5% of its
steps.
"""

from gptjax import config as config_lib
from gptjax import sweep

TOKENS_PER_PARAM = 20
BATCH, SEQ = 8, 64
# (n_layer, n_head, n_embd): N from 447K down to 13K non-embedding parameters, about 1.4x apart, largest
# first so that the longest run starts first when points run in parallel. (The study first ran 6
# sizes about 2x apart; the 5 between them were added later: a point's name depends only on its own
# overrides, so the rerun trained only those.)
SHAPES = [(4, 4, 96), (4, 4, 80), (4, 4, 64), (3, 4, 64), (2, 4, 64), (2, 4, 56), (2, 3, 48), (2, 2, 40),
          (2, 2, 32), (1, 2, 40), (1, 2, 32)]
PLOT_FIELDS = []  # the fields move together: report() plots loss against N instead


def get_config():
  c = config_lib.get_config()
  c.data.max_bytes = 12_000_000
  c.model.block_size = SEQ
  c.model.tie_embeddings = True
  c.train.batch_size = BATCH
  c.train.learning_rate = 3e-3
  c.train.min_lr = 3e-4
  c.train.log_interval = 100
  c.train.eval_interval = 1000
  c.train.checkpoint_interval = 1000
  return c


def non_embedding_params(n_layer: int, n_head: int, n_embd: int) -> int:
  """N of a shape, from the model's own parameter shapes (with the base config's other fields)."""
  from gptjax import sweep_summary
  model = {**get_config().model.to_dict(), 'vocab_size': 256, 'n_layer': n_layer, 'n_head': n_head,
           'n_embd': n_embd}
  return sweep_summary.param_counts(model)[1]


def get_sweep():
  steps = [round(TOKENS_PER_PARAM * non_embedding_params(*shape) / (BATCH * SEQ)) for shape in SHAPES]
  return sweep.zipped({'model.n_layer': [s[0] for s in SHAPES], 'model.n_head': [s[1] for s in SHAPES],
                       'model.n_embd': [s[2] for s in SHAPES], 'train.max_steps': steps,
                       'train.warmup_steps': [max(1, round(0.05 * n)) for n in steps]})


def report(rows, plots_dir):
  """The fit of L(N) over the finished points, drawn over them, with a bootstrap interval for alpha."""
  import os

  import numpy as np

  from gptjax import scaling, sweep_summary

  done = [r for r in rows if r['status'] == 'done' and isinstance(r.get('eval_loss'), float)]
  if len(done) < 4:
    return f'## Scaling law\n\n{len(done)} of {len(rows)} sizes are done; the fit needs at least 4.'
  n = np.array([r['params_nonembed'] for r in done], np.float64)
  loss = np.array([r['eval_loss'] for r in done])
  law = scaling.fit_power_law(n, loss)
  lo, hi, alphas = scaling.bootstrap_alpha(n, loss, samples=2000, seed=0)
  fig = sweep_summary.new_figure((6.4, 4.4))
  ax = fig.add_subplot()
  ax.scatter(n, loss, color='C0', zorder=3, label='runs (whole val split)')
  grid = np.geomspace(n.min() / 1.5, n.max() * 1.5, 200)
  ax.plot(grid, law(grid), color='C1', label=f'$L = {law.a:.3g}\\,N^{{-{law.alpha:.3f}}} + {law.c:.3f}$')
  ax.axhline(law.c, color='C1', linestyle=':', alpha=0.6, label=f'c = {law.c:.3f}')
  ax.set_xscale('log')
  ax.set_xlabel('non-embedding parameters N')
  ax.set_ylabel('val loss (nats/byte)')
  ax.set_title(f'{TOKENS_PER_PARAM} tokens per parameter; alpha 95% CI [{lo:.3f}, {hi:.3f}]')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize='small')
  sweep_summary.save_png(fig, os.path.join(plots_dir, 'scaling_law.png'))
  lines = ['## Scaling law', '',
           f'Least-squares fit over {len(done)} sizes (N = {int(n.min()):,} to {int(n.max()):,}, '
           f'{np.log10(n.max() / n.min()):.2f} decades), {TOKENS_PER_PARAM} tokens per parameter:', '',
           f'L(N) = {law.a:.4g} · N^(−{law.alpha:.4f}) + {law.c:.4f} nats/byte (residual sum of squares '
           f'{law.rss:.2e})', '',
           f'α = {law.alpha:.3f}, 95% bootstrap interval [{lo:.3f}, {hi:.3f}] (percentiles of {len(alphas)} '
           'refits on resampled sizes)', '',
           '| n_layer | n_embd | N | tokens | val loss (whole split) | fit | bits/byte |', '|---|---|---|---|---|---|---|']
  for r in sorted(done, key=lambda r: r['params_nonembed']):
    tokens = r['train.max_steps'] * BATCH * SEQ
    lines.append(f"| {r['model.n_layer']} | {r['model.n_embd']} | {r['params_nonembed']:,} | {tokens:,} | "
                 f"{r['eval_loss']:.4f} | {float(law(r['params_nonembed'])):.4f} | {r['bits_per_byte']:.4f} |")
  lines += ['', '![scaling law](plots/scaling_law.png)']
  return '\n'.join(lines)
