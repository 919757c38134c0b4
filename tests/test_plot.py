"""gptjax.plot: the figure has one line per run and metric, with labels and axis names; the command
writes a real image."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gptjax import plot
from gptjax.errors import GptjaxError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAB10_BLUE, TAB10_ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib's first two run colours


def fake_run(path, batch_size, seq_len, scale):
  """A workdir with config.json and a metrics.jsonl like gptjax.train writes (train every 10 steps,
  val every 50, the lines a resume leaves untouched)."""
  os.makedirs(path)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump({'train': {'batch_size': batch_size, 'seq_len': seq_len}}, f)
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    f.write(json.dumps({'step': 0, 'val_loss': 5.5 * scale}) + '\n')
    for step in range(10, 101, 10):
      record = {'step': step, 'train_loss': scale * 5 / (1 + step / 30), 'lr': 1e-3, 'tokens_per_sec': 1e4}
      if step % 50 == 0:
        record['val_loss'] = scale * 5.2 / (1 + step / 30)
      f.write(json.dumps(record) + '\n')
  return str(path)


@pytest.fixture
def runs(tmp_path):
  return [fake_run(tmp_path / 'sweep' / 'lr1e-3', 8, 32, 1.0), fake_run(tmp_path / 'sweep' / 'lr3e-3', 16, 64, 0.8)]


def test_figure_has_a_labelled_line_per_run_and_metric(runs):
  fig = plot.plot_curves([plot.load_curves(d) for d in runs])
  (ax,) = fig.axes
  lines = ax.get_lines()
  assert [line.get_label() for line in lines] == ['lr1e-3 train', 'lr1e-3 val', 'lr3e-3 train', 'lr3e-3 val']
  assert [t.get_text() for t in ax.get_legend().get_texts()] == [line.get_label() for line in lines]
  assert (ax.get_xlabel(), ax.get_ylabel()) == ('step', 'loss (nats/token)')
  assert (ax.get_xscale(), ax.get_yscale()) == ('linear', 'linear')
  assert list(lines[0].get_xdata()) == list(range(10, 101, 10))
  assert list(lines[1].get_xdata()) == [0, 50, 100] and lines[1].get_ydata()[0] == 5.5
  assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()  # a colour per run
  assert lines[0].get_linestyle() == '-' and lines[1].get_linestyle() == '--'  # a style per metric


def test_tokens_seen_and_log_axes(runs):
  fig = plot.plot_curves([plot.load_curves(d) for d in runs], x='tokens', log_x=True, log_y=True,
                         metrics=['val_loss'], title='sweep')
  (ax,) = fig.axes
  lines = ax.get_lines()
  assert [line.get_label() for line in lines] == ['lr1e-3 val', 'lr3e-3 val']
  assert list(lines[0].get_xdata()) == [50 * 8 * 32, 100 * 8 * 32]  # step 0 cannot sit on a log axis
  assert list(lines[1].get_xdata()) == [50 * 16 * 64, 100 * 16 * 64]
  assert (ax.get_xlabel(), ax.get_xscale(), ax.get_yscale(), ax.get_title()) == \
      ('tokens seen', 'log', 'log', 'sweep')


def test_labels_tell_runs_apart():
  assert plot.run_labels(['runs/a', 'runs/b']) == ['a', 'b']
  assert plot.run_labels(['x/seed0', 'y/seed0/']) == ['x/seed0', 'y/seed0']


def test_bad_plots_are_one_line_errors(runs, tmp_path):
  with pytest.raises(GptjaxError, match='has no metrics.jsonl'):
    plot.load_curves(str(tmp_path))
  with pytest.raises(GptjaxError, match='none of the runs logged bleu; they logged: lr, tokens_per_sec'):
    plot.plot_curves([plot.load_curves(runs[0])], metrics=['bleu'])
  fig = plot.plot_curves([plot.load_curves(runs[0])])
  with pytest.raises(GptjaxError, match='the extension must be one of'):
    plot.save_figure(fig, str(tmp_path / 'curves.txt'))


def test_plot_command_writes_an_image_of_both_runs(runs, tmp_path):
  from matplotlib.image import imread
  out = tmp_path / 'curves.png'
  proc = subprocess.run([sys.executable, '-m', 'gptjax.plot', *runs, f'--out={out}', '--logy'],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == f'wrote {out} (2 run(s): lr1e-3, lr3e-3)'
  image = imread(str(out))  # [height, width, RGBA] floats in [0, 1]
  assert image.shape == (600, 960, 4)  # 8 x 5 inches at 120 dpi
  rgb = np.round(image[..., :3] * 255).astype(int)
  assert (rgb < 250).any(axis=-1).mean() > 0.01  # not a blank canvas
  for colour in (TAB10_BLUE, TAB10_ORANGE):  # each run's curve is drawn
    assert (np.abs(rgb - colour).max(axis=-1) <= 2).sum() > 200
