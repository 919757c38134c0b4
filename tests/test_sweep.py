"""Sweeps: building and naming points, refusing bad ones before anything runs, dividing the machine,
and the real command end to end (parallel children on their own cores, resume after Ctrl-C and
after the sweep is killed, failed points, summaries that equal the runs' own files, --dry_run and
--slurm commands that reproduce a point's losses). Scaling-law fits against known laws.
"""

import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest

from gptjax import scaling
from gptjax import sweep as sweep_lib
from gptjax import sweep_run, sweep_summary
from gptjax.errors import GptjaxError
from gptjax.metrics import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'configs', 'tiny.py')
ENV = {**os.environ, 'XLA_FLAGS': ''}  # children see one CPU device, as a user's runs do

SWEEP_FILE = '''
from gptjax import sweep


def get_config():
  c = sweep.config_file({tiny!r})
  c.train.max_steps = {max_steps}
  c.train.log_interval = 10
  c.train.eval_interval = 10
  c.train.checkpoint_interval = {checkpoint_interval}
  c.train.keep_checkpoints = 0  # keep all: see test_stopped_and_killed_sweeps_resume...
  return c


def get_sweep():
  return {points}
'''


def write_sweep(path, points, max_steps=20, checkpoint_interval=10):
  with open(path, 'w', encoding='utf-8') as f:
    f.write(SWEEP_FILE.format(tiny=TINY, points=points, max_steps=max_steps,
                              checkpoint_interval=checkpoint_interval))
  return str(path)


def sweep_cmd(sweep_file, workdir, *extra):
  return [sys.executable, '-m', 'gptjax.sweep', f'--sweep={sweep_file}', f'--workdir={workdir}', '--noprogress',
          *extra]


def run_sweep(sweep_file, workdir, *extra, check=True):
  proc = subprocess.run(sweep_cmd(sweep_file, workdir, *extra), capture_output=True, text=True, cwd=ROOT,
                        env=ENV, timeout=400)
  if check and proc.returncode != 0:
    raise AssertionError(f'sweep failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}')
  return proc


def losses(directory):
  """(step, train_loss, val_loss) per metrics line; timings left out, they differ run to run."""
  return [(r['step'], r.get('train_loss'), r.get('val_loss'))
          for r in read_jsonl(os.path.join(directory, 'metrics.jsonl'))]


def read_csv(path):
  with open(path, encoding='utf-8') as f:
    return list(csv.DictReader(f))


def file_bytes(path):
  with open(path, 'rb') as f:
    return f.read()


# ---------------------------------------------------------------------------------------------
# Building and naming points


def test_helpers_build_the_points_they_name():
  points = sweep_lib.grid({'train.learning_rate': [1e-3, 3e-3], 'model.n_embd': [16, 32, 64]})
  assert points[:4] == [{'train.learning_rate': 1e-3, 'model.n_embd': 16},
                        {'train.learning_rate': 1e-3, 'model.n_embd': 32},
                        {'train.learning_rate': 1e-3, 'model.n_embd': 64},
                        {'train.learning_rate': 3e-3, 'model.n_embd': 16}]
  assert len(points) == 6
  assert sweep_lib.zipped({'model.n_layer': [1, 2], 'model.n_embd': [16, 32]}) == [
      {'model.n_layer': 1, 'model.n_embd': 16}, {'model.n_layer': 2, 'model.n_embd': 32}]
  with pytest.raises(GptjaxError, match='equal lengths'):
    sweep_lib.zipped({'model.n_layer': [1, 2], 'model.n_embd': [16]})
  assert sweep_lib.product(sweep_lib.zipped({'model.n_layer': [1, 2]}), sweep_lib.seeds(2)) == [
      {'model.n_layer': 1, 'seed': 0}, {'model.n_layer': 1, 'seed': 1},
      {'model.n_layer': 2, 'seed': 0}, {'model.n_layer': 2, 'seed': 1}]
  with pytest.raises(GptjaxError, match="'seed'"):
    sweep_lib.product(sweep_lib.seeds(2), sweep_lib.seeds([5]))


def test_random_search_is_seeded_log_uniform_and_rounded():
  space = {'train.learning_rate': sweep_lib.loguniform(1e-4, 1e-1), 'model.dropout': sweep_lib.uniform(0.0, 0.2),
           'model.n_embd': sweep_lib.choice([32, 64]), 'train.max_steps': 100}
  a = sweep_lib.random_search(space, 2000, seed=1)
  assert a == sweep_lib.random_search(space, 2000, seed=1)
  assert a != sweep_lib.random_search(space, 2000, seed=2)
  rates = np.array([p['train.learning_rate'] for p in a])
  assert rates.min() >= 1e-4 and rates.max() <= 1e-1
  assert all(float(f'{r:.3g}') == r for r in rates)  # 3 significant digits: readable names
  # Log-uniform: half the draws fall below the geometric mean 10^-2.5 (a uniform draw would put
  # ~3% there). Binomial std for 2000 draws is 0.011; 0.05 is 4.5 std.
  assert abs(np.mean(rates < 10 ** -2.5) - 0.5) < 0.05
  assert {p['model.n_embd'] for p in a} == {32, 64} and {p['train.max_steps'] for p in a} == {100}


def test_point_names_are_readable_unique_bounded_and_deterministic():
  names = sweep_lib.point_names([{'train.learning_rate': 0.001, 'model.n_embd': 64, 'seed': 1},
                                 {'seed': 2, 'model.n_embd': 64, 'train.learning_rate': 3e-05}])
  assert names == ['n_embd=64,learning_rate=0.001,seed=1', 'n_embd=64,learning_rate=3e-05,seed=2']
  # Two swept fields with the same last part keep their section; no overrides at all is 'base'.
  assert sweep_lib.point_names([{'a.x': 1, 'b.x': 2}, {}]) == ['a.x=1,b.x=2', 'base']
  # Too long, characters replaced, or two points mapping to one readable name: a hash suffix.
  long = {f'train.field_number_{i}': 0.123456789 * i for i in range(12)}
  lossy = [{'data.path': 'data/a b.txt'}, {'data.path': 'data_a_b.txt'}, {'data.path': 'data_a b.txt'}]
  names = sweep_lib.point_names([long, *lossy])
  assert len(names[0]) == sweep_lib.MAX_NAME and names[0].startswith('field_number_0=0.0,field_number_1=')
  assert len(set(names)) == 4 and all(len(n) <= sweep_lib.MAX_NAME for n in names)
  assert names[2] == 'path=data_a_b.txt'  # exact, so no suffix
  assert names[1].startswith('path=data_a_b.txt-') and names[3].startswith('path=data_a_b.txt-')
  assert sweep_lib.point_names([long, *lossy]) == names  # deterministic


BAD_POINTS = {
    'unknown field': ("{'model.n_layr': 3}", r"point 2 \(n_layr=3\): unknown config field 'model.n_layr' "
                                            r"\(did you mean 'model.n_layer'\?\)"),
    'unknown section': ("{'optim.lr': 3}", r"point 2 \(lr=3\): unknown config field 'optim.lr'; the config has "
                                          r'data, model, parallel, seed, train'),
    'wrong type': ("{'model.n_layer': 2.5}", r'point 2 \(n_layer=2.5\): model.n_layer=2.5 is a float, but the '
                                             r'field is a int \(now 2\)'),
    'bool for a number': ("{'train.learning_rate': True}", r'train.learning_rate=True is a bool, but the field '
                                                           r'is a float'),
    'a section': ("{'model': 3}", r"'model' is a section, not a field"),
    'inconsistent config': ("{'model.n_head': 3}", r'point 2 \(n_head=3\): model: n_embd=32 is not divisible by '
                                                   r'n_head=3'),
    'repeated point': ("{'train.learning_rate': 0.001}", r'point 2 \(.*\) repeats point 0'),
}


@pytest.mark.parametrize('bad', BAD_POINTS.values(), ids=BAD_POINTS.keys())
def test_bad_point_refuses_the_sweep(tmp_path, bad):
  point, message = bad
  path = write_sweep(tmp_path / 's.py', f"[{{'train.learning_rate': 0.001}}, {{'seed': 3}}, {point}]")
  with pytest.raises(GptjaxError, match=message):
    sweep_lib.load_sweep(path)


def test_bad_override_refuses_before_any_point_runs(tmp_path):
  path = write_sweep(tmp_path / 's.py', "[{'train.learning_rate': 0.001}, {'seed': 3}, {'model.n_layr': 3}]")
  proc = run_sweep(path, tmp_path / 'runs', check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: point 2 (n_layr=3): unknown config field 'model.n_layr' (did you mean 'model.n_layer'?)"]
  assert not os.path.exists(tmp_path / 'runs')  # nothing ran, nothing was written


def test_sweep_command_without_a_sweep_file_says_so_in_one_line(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'gptjax.sweep', f'--workdir={tmp_path}'], capture_output=True,
                        text=True, cwd=ROOT, env=ENV, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      'error: --sweep is required: a sweep file, e.g. --sweep=experiments/sweeps/NAME.py']


def test_slots_divide_cores_and_gpus():
  slots = sweep_run.plan_slots(2, cores=[0, 1, 2, 3], gpus=[])
  assert [s.cores for s in slots] == [(0, 1), (2, 3)]
  assert slots[1].env() == {'OMP_NUM_THREADS': '2', 'OPENBLAS_NUM_THREADS': '2', 'MKL_NUM_THREADS': '2'}
  assert [s.cores for s in sweep_run.plan_slots(3, cores=[0, 1, 2, 3], gpus=[])] == [(0,), (1,), (2,)]
  assert [s.cores for s in sweep_run.plan_slots(2, cores=[0, 1, 2, 3], gpus=[], cores_per_point=1)] == [(0,), (1,)]
  with pytest.raises(GptjaxError, match='--parallel=3 x 1 core'):
    sweep_run.plan_slots(3, cores=[0, 1], gpus=[])
  gpus = sweep_run.plan_slots(2, cores=[0, 1, 2, 3], gpus=['0', '1', '2', '3'])
  assert [s.gpus for s in gpus] == [('0', '1'), ('2', '3')]
  assert gpus[1].env()['CUDA_VISIBLE_DEVICES'] == '2,3' and 'XLA_PYTHON_CLIENT_MEM_FRACTION' not in gpus[1].env()
  shared = sweep_run.plan_slots(4, cores=[0, 1], gpus=['0', '1'])  # more points than GPUs or cores
  assert [s.gpus for s in shared] == [('0',), ('1',), ('0',), ('1',)] and shared[0].cores == ()
  assert shared[2].env() == {'CUDA_VISIBLE_DEVICES': '0', 'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.45'}


# ---------------------------------------------------------------------------------------------
# Scaling laws


def test_power_law_fit_recovers_a_known_law_and_its_exponent_interval():
  n = np.array([1e4, 3e4, 1e5, 3e5, 1e6, 3e6])
  exact = scaling.fit_power_law(n, 40.0 * n ** -0.3 + 1.2)
  # Noise-free data: the fit is the law (1e-6: the search's tolerance in alpha is 1e-9).
  assert exact.alpha == pytest.approx(0.3, abs=1e-6) and exact.a == pytest.approx(40.0, rel=1e-4)
  assert exact.c == pytest.approx(1.2, abs=1e-5) and exact.rss < 1e-12
  rng = np.random.default_rng(0)
  noisy = 40.0 * n ** -0.3 + 1.2 + rng.normal(0.0, 0.01, n.shape)
  law = scaling.fit_power_law(n, noisy)
  # Least squares: no other (a, alpha, c) fits better; check against perturbed laws.
  for da, dal, dc in [(1.01, 0, 0), (1, 0.005, 0), (1, 0, 0.005), (0.99, -0.005, -0.005)]:
    other = scaling.PowerLaw(law.a * da, law.alpha + dal, law.c + dc, 0.0)
    assert np.sum((other(n) - noisy) ** 2) > law.rss
  lo, hi, alphas = scaling.bootstrap_alpha(n, noisy, samples=300, seed=0)
  assert lo < 0.3 < hi and hi - lo < 0.1 and len(alphas) == 300
  # A law with no floor: c stays at its bound 0 rather than going negative.
  assert scaling.fit_power_law(n, 5.0 * n ** -0.2).c == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# The command, end to end


@pytest.fixture(scope='module')
def four(tmp_path_factory):
  """A 4-point sweep of the tiny config (2 rates x 2 seeds), 2 points at a time."""
  base = tmp_path_factory.mktemp('sweep')
  path = write_sweep(base / 'four.py', "sweep.product(sweep.grid({'train.learning_rate': [1e-3, 3e-3]}), "
                                       "sweep.seeds(2))")
  workdir = str(base / 'runs')
  proc = run_sweep(path, workdir, '--parallel=2')
  return path, workdir, proc


def test_parallel_sweep_completes_on_separate_cores(four):
  path, workdir, proc = four
  rows = read_csv(os.path.join(workdir, 'summary.csv'))
  assert sorted(r['point'] for r in rows) == ['learning_rate=0.001,seed=0', 'learning_rate=0.001,seed=1',
                                                'learning_rate=0.003,seed=0', 'learning_rate=0.003,seed=1']
  assert all(r['status'] == 'done' for r in rows)
  cores = sorted(os.sched_getaffinity(0))
  half = len(cores) // 2
  trains = []
  for row in rows:
    attempts = read_jsonl(os.path.join(workdir, row['point'], 'attempts.jsonl'))
    assert [a['phase'] for a in attempts] == ['train', 'evaluate']
    trains.append(attempts[0])
    # What the child really had (read from /proc while it ran): its half of the cores, and XLA's
    # CPU thread pool sized to it.
    got = {int(c) for part in row['cores'].split(',') for c in
           (range(int(part.split('-')[0]), int(part.split('-')[-1]) + 1))}
    assert got in ({*cores[:half]}, {*cores[half:2 * half]})
    assert int(row['xla_threads']) == half
  first, second = sorted(trains, key=lambda a: a['start_unix'])[:2]
  assert first['cores'] != second['cores']  # the two that started together
  for a in trains:  # no two children that ran at the same time shared a core
    for b in trains:
      overlap = a is not b and a['start_unix'] < b['start_unix'] + b['wall_s'] and \
          b['start_unix'] < a['start_unix'] + a['wall_s']
      assert not overlap or a['cores'] != b['cores']


def test_summary_rows_equal_the_runs_metrics_and_evaluation(four):
  path, workdir, _ = four
  rows = read_csv(os.path.join(workdir, 'summary.csv'))
  assert [float(r['val_loss']) for r in rows] == sorted(float(r['val_loss']) for r in rows)
  for row in rows:
    directory = os.path.join(workdir, row['point'])
    records = read_jsonl(os.path.join(directory, 'metrics.jsonl'))
    vals = [r['val_loss'] for r in records if 'val_loss' in r]
    assert float(row['val_loss']) == vals[-1]
    assert float(row['best_val_loss']) == min(vals)
    assert float(row['train_loss']) == [r['train_loss'] for r in records if 'train_loss' in r][-1]
    assert float(row['tokens_per_sec']) == statistics.median(r['tokens_per_sec'] for r in records
                                                               if 'tokens_per_sec' in r)
    assert int(row['step']) == 20
    with open(os.path.join(directory, 'evaluate.json'), encoding='utf-8') as f:
      evaluation = json.load(f)
    assert evaluation['step'] == 20
    assert float(row['eval_loss']) == evaluation['loss']
    assert float(row['bits_per_byte']) == evaluation['bits_per_byte']
    # Byte-level tokens: one byte per token, so bits per byte is the loss in bits.
    assert evaluation['bits_per_byte'] == pytest.approx(evaluation['loss'] / math.log(2), rel=1e-12)
  # gptjax.evaluate run again by hand, on as many cores as the point had, says the same.
  row = rows[0]
  again = subprocess.run(['taskset', '-c', row['cores'], sys.executable, '-m', 'gptjax.evaluate', '--noprogress',
                          f'--workdir={os.path.join(workdir, row["point"])}'], capture_output=True, text=True,
                         cwd=ROOT, env=ENV, timeout=120, check=True)
  result = json.loads(again.stdout.strip().splitlines()[-1])
  assert (result['loss'], result['bits_per_byte']) == (float(row['eval_loss']), float(row['bits_per_byte']))
  # Parameters: as the model counts them.
  import jax
  from gptjax.model import GPTConfig, count_params, init_params
  with open(os.path.join(workdir, row['point'], 'config.json'), encoding='utf-8') as f:
    model = GPTConfig(**json.load(f)['model'])
  assert int(row['params']) == count_params(init_params(model, jax.random.PRNGKey(0)))


def test_summary_markdown_and_plots(four):
  path, workdir, _ = four
  rows = read_csv(os.path.join(workdir, 'summary.csv'))
  with open(os.path.join(workdir, 'summary.md'), encoding='utf-8') as f:
    md = f.read()
  # Mean ± std over the seed axis, computed here from the rows.
  for rate in ('0.001', '0.003'):
    vals = [float(r['val_loss']) for r in rows if r['train.learning_rate'] == rate]
    line = next(line for line in md.splitlines() if line.startswith(f'| {rate} | 2 |'))
    assert f'{statistics.fmean(vals):.4f} ± {statistics.stdev(vals):.4f}' in line
  assert '![curves.png](plots/curves.png)' in md
  # The field plot: one line with ± std error bars over the 2 seeds, at the two rates.
  fig = sweep_summary.plot_field([{**r, 'val_loss': float(r['val_loss']),
                                   'train.learning_rate': float(r['train.learning_rate'])} for r in rows],
                                 ['train.learning_rate', 'seed'], 'train.learning_rate')
  ax = fig.axes[0]
  assert ax.get_xlabel() == 'train.learning_rate' and 'mean ± std over seeds' in ax.get_ylabel()
  (bars,) = ax.containers  # one errorbar series: (data line, caps, [y error bar collection])
  assert list(bars.lines[0].get_xdata()) == [0.001, 0.003] and len(bars.lines[2]) == 1
  means = {r: statistics.fmean(float(x['val_loss']) for x in rows if x['train.learning_rate'] == r)
           for r in ('0.001', '0.003')}
  assert list(bars.lines[0].get_ydata()) == [means['0.001'], means['0.003']]
  assert ax.get_xscale() == 'linear'  # 0.001 to 0.003 spans less than a decade
  import matplotlib.image
  image = matplotlib.image.imread(os.path.join(workdir, 'plots', 'val_loss_vs_learning_rate.png'))
  assert image.shape[0] > 200 and len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 20


def test_rerun_skips_done_points_and_a_changed_config_is_refused(four):
  path, workdir, _ = four
  before = {p: file_bytes(os.path.join(workdir, p, 'metrics.jsonl')) for p in os.listdir(workdir)
            if os.path.isdir(os.path.join(workdir, p, 'checkpoints'))}
  again = run_sweep(path, workdir, '--parallel=2')
  assert again.stdout.startswith('4 points: 4 done; running 0')
  changed = run_sweep(path, workdir, '--sweep.train.weight_decay=0.05', check=False)
  assert changed.returncode == 2
  assert changed.stderr.strip().splitlines() == [
      f'error: point 0 (learning_rate=0.001,seed=0) exists in {workdir}/learning_rate=0.001,seed=0 with a different '
      'config: train.weight_decay=0.1 there, 0.05 now; restore the sweep file (and --sweep.FIELD flags) it was run '
      'with, or pass a new --workdir']
  for p, content in before.items():
    assert file_bytes(os.path.join(workdir, p, 'metrics.jsonl')) == content
    assert len(read_jsonl(os.path.join(workdir, p, 'attempts.jsonl'))) == 2  # nothing ran again


def test_dry_run_and_slurm_commands_reproduce_a_point(four, tmp_path):
  path, workdir, _ = four
  lines = run_sweep(path, tmp_path / 'dry', '--parallel=2', '--dry_run').stdout.strip().splitlines()
  assert lines[6] == '# point 3: learning_rate=0.003,seed=1 (pending)'
  subprocess.run(['bash', '-c', lines[7]], cwd=ROOT, env=ENV, timeout=200, check=True, capture_output=True)
  assert losses(tmp_path / 'dry' / 'learning_rate=0.003,seed=1') == \
      losses(os.path.join(workdir, 'learning_rate=0.003,seed=1'))
  run_sweep(path, tmp_path / 'slurm', '--parallel=2', '--slurm')
  script = tmp_path / 'slurm' / 'sweep.slurm'
  assert '#SBATCH --array=0-3' in script.read_text()
  subprocess.run(['bash', str(script)], cwd=tmp_path, env={**ENV, 'SLURM_ARRAY_TASK_ID': '2'}, timeout=200,
                 check=True, capture_output=True)
  name = 'learning_rate=0.003,seed=0'
  assert losses(tmp_path / 'slurm' / name) == losses(os.path.join(workdir, name))
  with open(tmp_path / 'slurm' / name / 'evaluate.json', encoding='utf-8') as f:
    slurm_eval = json.load(f)
  with open(os.path.join(workdir, name, 'evaluate.json'), encoding='utf-8') as f:
    assert slurm_eval['loss'] == json.load(f)['loss'] and slurm_eval['step'] == 20
  assert not os.path.exists(tmp_path / 'slurm' / 'learning_rate=0.001,seed=0' / 'metrics.jsonl')  # only task 2


def _wait(condition, what, timeout=240):
  deadline = time.time() + timeout
  while not condition():
    assert time.time() < deadline, f'timed out waiting for {what}'
    time.sleep(0.05)


def test_stopped_and_killed_sweeps_resume_and_a_failing_point_does_not_stop_the_others(tmp_path):
  """A short point runs to the end. Then the sweep grows by a long point and one whose loss becomes
  NaN: Ctrl-C mid-way and rerun, SIGKILL the sweep mid-way and rerun. The finished point never runs
  again, the long one always continues from its checkpoint, and the NaN point is marked failed with
  its one-line error while the others finish.

  Every checkpoint is kept (keep_checkpoints=0): at one checkpoint per 20 steps of ~5 ms, orbax's
  background deletion of an old step raced gptjax.train's next checkpoint listing here
  (FileNotFoundError on the deleted step), a fault of the training loop, not of the sweep."""
  short_point = "{'train.max_steps': 20}"
  more = ("{'train.max_steps': 2000}, {'train.learning_rate': 1e4, 'train.grad_clip': 0.0, "
          "'train.warmup_steps': 1}")
  path = write_sweep(tmp_path / 's.py', f'[{short_point}]', max_steps=40, checkpoint_interval=20)
  workdir = tmp_path / 'runs'
  short, long, nan = (str(workdir / n) for n in ('max_steps=20', 'max_steps=2000',
                                                  'grad_clip=0.0,learning_rate=10000.0,warmup_steps=1'))
  run_sweep(path, workdir, '--parallel=2')
  short_files = {n: file_bytes(os.path.join(short, n)) for n in ('metrics.jsonl', 'evaluate.json', 'attempts.jsonl')}
  write_sweep(path, f'[{short_point}, {more}]', max_steps=40, checkpoint_interval=20)  # the sweep grows

  def start():
    return subprocess.Popen(sweep_cmd(path, workdir, '--parallel=2'), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)

  def log_of(d):
    if not os.path.exists(os.path.join(d, 'train.log')):
      return ''
    with open(os.path.join(d, 'train.log'), encoding='utf-8') as f:
      return f.read()

  sweep = start()
  _wait(lambda: max(sweep_lib.checkpoint_steps(long), default=0) >= 20
        and [a['status'] for a in sweep_lib.read_attempts(nan)] == ['failed'],
        'the long point to checkpoint and the NaN point to fail')
  sweep.send_signal(signal.SIGINT)  # Ctrl-C
  out, err = sweep.communicate(timeout=120)
  assert sweep.returncode == 128 + signal.SIGINT, err
  assert 'stopped by signal 2 at step' in log_of(long)  # it saved a checkpoint where it stopped
  assert f'{os.path.basename(nan)}: failed: the loss is nan at step' in out
  stopped_at = max(sweep_lib.checkpoint_steps(long))
  assert 0 < stopped_at < 2000

  sweep = start()  # resumes the long point; killed outright once it has checkpointed again
  _wait(lambda: max(sweep_lib.checkpoint_steps(long)) >= stopped_at + 20, 'the long point to checkpoint again')
  sweep.kill()
  out, _ = sweep.communicate(timeout=60)
  assert out.startswith('3 points: 1 done, 1 interrupted, 1 failed; running 1 on 2 slot(s)')
  # The sweep's children get SIGTERM when it dies (PR_SET_PDEATHSIG): the run checkpoints and stops.
  _wait(lambda: 'stopped by signal 15' in log_of(long), 'the orphaned run to checkpoint on SIGTERM', 60)
  _wait(lambda: 'stopped by signal 15' in log_of(long).splitlines()[-1], 'the orphaned run to exit', 60)
  _wait(lambda: sweep_lib.lock_holder(long) is None, 'the orphaned run to release its workdir lock', 60)
  killed_at = max(sweep_lib.checkpoint_steps(long))
  assert stopped_at < killed_at < 2000

  final = run_sweep(path, workdir, '--parallel=2', check=False)
  assert final.returncode == 1, final.stderr  # a point failed
  assert 'failed before (the loss is nan at step' in final.stdout
  log = log_of(long)
  assert f'resuming from step {stopped_at}' in log and f'resuming from step {killed_at}' in log
  assert log.count('starting from scratch') == 1
  steps = [s for s, _, _ in losses(long)]
  assert steps == sorted(set(steps)) and steps[-1] == 2000  # no step twice, none past the end
  for n, content in short_files.items():
    assert file_bytes(os.path.join(short, n)) == content  # the finished point never ran again
  rows = {r['point']: r for r in read_csv(workdir / 'summary.csv')}
  assert rows['max_steps=20']['status'] == rows['max_steps=2000']['status'] == 'done'
  # The run orphaned by the kill ended unseen: its time is reported missing, not counted as zero.
  assert rows['max_steps=2000']['unrecorded_runs'] == '1' and rows['max_steps=20']['unrecorded_runs'] == ''
  failed = rows[os.path.basename(nan)]
  assert failed['status'] == 'failed' and failed['error'].startswith('the loss is nan at step ')
  assert list(rows)[-1] == os.path.basename(nan)  # no val loss at the end: sorted last


HOLD_LOCK = '''
import sys, time
from gptjax import workdir
with workdir.lock(sys.argv[1]):
  print('locked', flush=True)
  sys.stdin.read()  # until the test closes our stdin
'''


def test_a_point_held_by_a_live_run_is_reported_running_and_runs_once_free(four, tmp_path):
  """Another process holds one point's workdir lock (as a `gptjax.train` started by hand does): the
  sweep reports that point as running (not failed, not started a second time) and finishes the
  others; once the lock is free, the same command runs it."""
  import shutil
  path, done_dir, _ = four
  workdir = tmp_path / 'runs'
  shutil.copytree(done_dir, workdir)  # the 4 finished points of the fixture
  grown = write_sweep(tmp_path / 'grown.py', "sweep.product(sweep.grid({'train.learning_rate': [1e-3, 3e-3]}), "
                                             "sweep.seeds(2)) + [{'train.learning_rate': 1e-2, 'seed': 0}]")
  held = workdir / 'learning_rate=0.01,seed=0'
  holder = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, str(held)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
  try:
    assert holder.stdout.readline() == 'locked\n'
    dry = run_sweep(grown, workdir, '--dry_run').stdout.splitlines()
    assert dry[8].startswith(f'# point 4: learning_rate=0.01,seed=0 (running, held by pid {holder.pid} on host ')
    proc = run_sweep(grown, workdir, '--parallel=2')
    assert proc.stdout.startswith('5 points: 4 done, 1 running; running 0 on 2 slot(s)')
    assert f'learning_rate=0.01,seed=0: running elsewhere (held by pid {holder.pid} on host ' in proc.stdout
    row = {r['point']: r for r in read_csv(workdir / 'summary.csv')}['learning_rate=0.01,seed=0']
    assert row['status'] == 'running' and row['error'].startswith(f'held by pid {holder.pid} on host ')
    assert sorted(os.listdir(held)) == ['lock']  # the sweep wrote nothing into the held point
  finally:
    holder.stdin.close()
    holder.wait(timeout=30)
  again = run_sweep(grown, workdir, '--parallel=2')
  assert again.stdout.startswith('5 points: 4 done, 1 pending; running 1 on 2 slot(s)')
  rows = {r['point']: r for r in read_csv(workdir / 'summary.csv')}
  assert [r['status'] for r in rows.values()] == ['done'] * 5
  assert int(rows['learning_rate=0.01,seed=0']['step']) == 20
