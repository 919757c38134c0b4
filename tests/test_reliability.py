"""Faults: killed runs resume exactly, signals checkpoint, torn and corrupt checkpoints are never
loaded silently, NaNs stop the run without touching the last good checkpoint.

Every run here is the real command line in a subprocess, as a preempted job would be.
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from gptjax.metrics import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'configs', 'tiny.py')
# A 60-step run that logs every 5 steps (one call per 5 steps) and checkpoints every 10.
ARGS = ['--config.train.max_steps=60', '--config.train.log_interval=5', '--config.train.eval_interval=20',
        '--config.train.checkpoint_interval=10', '--config.train.keep_checkpoints=10', '--noprogress']
ENV = {**os.environ, 'XLA_FLAGS': ''}


def train_cmd(workdir, *extra):
  return [sys.executable, '-m', 'gptjax.train', f'--config={TINY}', f'--workdir={workdir}', *ARGS, *extra]


def run_train(workdir, *extra, check=True):
  proc = subprocess.run(train_cmd(workdir, *extra), capture_output=True, text=True, cwd=ROOT, env=ENV,
                        timeout=300)
  if check and proc.returncode != 0:
    raise AssertionError(f'train failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}')
  return proc


def losses(workdir):
  """(step, train_loss, val_loss) per metrics line; timings left out, they differ run to run."""
  return [(r['step'], r.get('train_loss'), r.get('val_loss'))
          for r in read_jsonl(os.path.join(workdir, 'metrics.jsonl'))]


def checkpoint_steps(workdir):
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def last_step(workdir):
  records = read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  return records[-1]['step'] if records else -1


def start_and_wait(workdir, until, *extra):
  """Starts training and returns the process once metrics.jsonl reaches step `until`."""
  proc = subprocess.Popen(train_cmd(workdir, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=ROOT, env=ENV)
  deadline = time.time() + 240
  while last_step(workdir) < until:
    assert proc.poll() is None, f'run ended early: {proc.communicate()}'
    assert time.time() < deadline, 'run too slow'
    time.sleep(0.01)
  return proc


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The uninterrupted run every interrupted one must reproduce."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  run_train(workdir)
  assert [s for s, _, _ in losses(workdir)] == [0] + list(range(5, 61, 5))
  return losses(workdir)


def test_sigkill_at_a_random_step_then_rerun_gives_identical_losses(tmp_path, reference):
  kill_at = random.Random().randrange(5, 55, 5)  # any logged step; the kill lands mid-call
  proc = start_and_wait(str(tmp_path), kill_at)
  proc.kill()
  proc.communicate()
  assert last_step(str(tmp_path)) < 60  # really interrupted
  resumed = run_train(str(tmp_path))
  assert 'resuming from step' in resumed.stdout or 'starting from scratch' in resumed.stdout
  assert losses(str(tmp_path)) == reference  # bit for bit, no step twice or missing


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_at_the_current_step_then_resumes(tmp_path, reference, signum):
  proc = start_and_wait(str(tmp_path), 25)
  proc.send_signal(signum)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signum
  stopped_at = last_step(str(tmp_path))
  assert f'stopped by signal {signum} at step {stopped_at}' in err
  assert 'run the same command again to resume' in err
  assert stopped_at < 60 and stopped_at in checkpoint_steps(str(tmp_path))  # saved where it stopped
  resumed = run_train(str(tmp_path))
  assert f'resuming from step {stopped_at}' in resumed.stdout
  assert losses(str(tmp_path)) == reference


def test_kill_during_a_checkpoint_save_resumes_from_the_previous_complete_one(tmp_path, reference):
  """SIGKILL while orbax writes step 30: the half-written step is never listed or loaded."""
  workdir = str(tmp_path)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  proc = subprocess.Popen(train_cmd(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=ROOT, env=ENV)
  deadline = time.time() + 240
  torn = None
  while torn is None:  # poll fast for the temporary directory of the step-30 save
    assert proc.poll() is None, 'run finished before the save of step 30 was caught'
    assert time.time() < deadline
    if os.path.isdir(ckpt_dir):
      torn = next((n for n in os.listdir(ckpt_dir) if n.startswith('30.') and 'tmp' in n), None)
  proc.kill()
  proc.communicate()
  assert checkpoint_steps(workdir)[-1] == 20  # 30 never became a complete checkpoint
  resumed = run_train(workdir)
  assert 'resuming from step 20' in resumed.stdout
  assert losses(workdir) == reference


def corrupt(step_dir):
  """Overwrites every array data file of a checkpoint with garbage of the same size."""
  n = 0
  for dirpath, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(dirpath, name)
      if 'ocdbt' in dirpath or name.startswith('d') or name.endswith('.data'):
        size = os.path.getsize(path)
        with open(path, 'wb') as f:
          f.write(os.urandom(max(size, 16)))
        n += 1
  assert n, f'no data files found under {step_dir}'


def test_corrupt_checkpoint_is_named_and_the_previous_one_can_be_used(tmp_path, reference):
  workdir = str(tmp_path)
  run_train(workdir, '--config.train.max_steps=30', '--config.train.decay_steps=60')
  corrupt(os.path.join(workdir, 'checkpoints', '30'))
  before = tree_digest(workdir)
  failed = run_train(workdir, check=False)
  assert failed.returncode == 2
  err = failed.stderr.strip()
  assert len(err.splitlines()) == 1 and err.startswith('error: checkpoint at step 30 (')
  assert os.path.join(workdir, 'checkpoints', '30') in err and '--restore_step=20' in err
  assert 'bound method' not in err  # no Python reprs leaking out of the storage library
  assert tree_digest(workdir) == before  # nothing touched
  resumed = run_train(workdir, '--restore_step=20')
  assert 'resuming from step 20' in resumed.stdout
  assert losses(workdir) == reference
  aside = os.listdir(os.path.join(workdir, 'checkpoints.set_aside'))
  assert len(aside) == 1 and aside[0].startswith('30-')  # kept, out of the way


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  run_train(workdir, '--config.train.max_steps=20', '--config.train.decay_steps=60')
  before = checkpoint_steps(workdir)
  blown = run_train(workdir, '--config.train.learning_rate=1e30', '--config.train.grad_clip=0.0',
                    check=False)
  assert blown.returncode == 2
  err = blown.stderr.strip()
  assert len(err.splitlines()) == 1 and 'training stopped' in err, err
  step = int(err.split(' at step ')[1].split(':')[0])
  assert 20 < step <= 60
  assert 'last good checkpoint (step 20) is kept' in err
  assert checkpoint_steps(workdir) == before == [10, 20]


def test_nan_policy_skip_drops_bad_updates_and_finishes(tmp_path):
  workdir = str(tmp_path)
  out = run_train(workdir, '--config.train.learning_rate=1e30', '--config.train.grad_clip=0.0',
                  '--config.train.nan_policy=skip')
  assert 'skipped' in out.stdout
  assert checkpoint_steps(workdir)[-1] == 60


def test_torn_metrics_line_is_dropped_on_resume(tmp_path, reference):
  workdir = str(tmp_path)
  run_train(workdir, '--config.train.max_steps=40', '--config.train.decay_steps=60')
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 45, "train_lo')  # a crash in the middle of a write
  run_train(workdir)
  assert losses(workdir) == reference


# ---------------------------------------------------------------------------------------------
# Helpers shared with test_bad_input.py


def tree_digest(root):
  """Every file under root with its size and content hash (and mtime): equal means untouched."""
  import hashlib
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      path = os.path.join(dirpath, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = (hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns)
  return out
