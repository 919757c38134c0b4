"""Faults: killed runs resume exactly, signals checkpoint, torn and corrupt checkpoints are never
loaded silently, NaNs stop the run without touching the last good checkpoint, a second run on a
busy workdir is refused, and a full disk loses nothing already saved.

Every run here is the real command line in a subprocess, as a preempted job would be.
"""

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from gptjax.metrics import read_jsonl
from gptjax.workdir import lock_holder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'configs', 'tiny.py')
# A 60-step run that logs every 10 steps and checkpoints every 10, 5 steps per call (configs/tiny.py):
# a call ends between two log lines too (at 5, 15, ...), so a run can stop in the middle of a window.
ARGS = ['--config.train.max_steps=60', '--config.train.log_interval=10', '--config.train.eval_interval=20',
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


def start_and_wait(workdir, until, *extra, env=ENV):
  """Starts training and returns the process once metrics.jsonl reaches step `until`."""
  proc = subprocess.Popen(train_cmd(workdir, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=ROOT, env=env)
  wait_for(lambda: last_step(workdir) >= until, proc)
  return proc


def wait_for(condition, proc, poll=0.01):
  deadline = time.time() + 240
  while not condition():
    assert proc.poll() is None, f'run ended early: {proc.communicate()}'
    assert time.time() < deadline, 'run too slow'
    time.sleep(poll)


def catches_sigterm(pid):
  """Whether process `pid` has a SIGTERM handler installed (its SigCgt mask, from /proc)."""
  with open(f'/proc/{pid}/status') as f:
    caught = next(int(line.split()[1], 16) for line in f if line.startswith('SigCgt:'))
  return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The uninterrupted run every interrupted one must reproduce."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  run_train(workdir)
  assert [s for s, _, _ in losses(workdir)] == [0] + list(range(10, 61, 10))
  return losses(workdir)


def test_sigkill_at_a_random_step_then_rerun_gives_identical_losses(tmp_path, reference):
  kill_at = random.Random(8).randrange(20, 60, 10)  # a logged step after the first checkpoints
  proc = start_and_wait(str(tmp_path), kill_at)
  proc.kill()
  proc.communicate()
  assert last_step(str(tmp_path)) < 60  # really interrupted
  saved = checkpoint_steps(str(tmp_path))
  assert saved and saved[-1] <= last_step(str(tmp_path))
  resumed = run_train(str(tmp_path))
  assert f'resuming from step {saved[-1]}' in resumed.stdout  # the last complete checkpoint
  assert losses(str(tmp_path)) == reference  # bit for bit, no step twice or missing


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_at_the_current_step_then_resumes(tmp_path, reference, signum):
  """The signal arrives during the first call (steps 1-5): the run stops at step 5, in the middle of
  the first log window (steps 1-10), and the resumed run's line at step 10 still averages all ten."""
  # Without the compilation cache the first call compiles for a second or more, long after the
  # handlers are installed: the signal always lands inside it.
  proc = subprocess.Popen(train_cmd(str(tmp_path)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=ROOT, env={**ENV, 'JAX_ENABLE_COMPILATION_CACHE': 'false'})
  wait_for(lambda: catches_sigterm(proc.pid), proc, poll=0.001)  # SIGINT's handler goes in first
  proc.send_signal(signum)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signum, err
  assert err.strip() == (f'stopped by signal {signum} at step 5; checkpoint saved in '
                         f'{os.path.join(str(tmp_path), "checkpoints")}; run the same command again to resume')
  assert checkpoint_steps(str(tmp_path)) == [5]  # saved where it stopped, mid-window
  assert last_step(str(tmp_path)) == 0
  resumed = run_train(str(tmp_path))
  assert 'resuming from step 5' in resumed.stdout
  assert losses(str(tmp_path)) == reference  # the line at step 10 included


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
  workdir = str(tmp_path / 'run')
  run_train(workdir, '--config.train.max_steps=30', '--config.train.decay_steps=60')
  corrupt(os.path.join(workdir, 'checkpoints', '30'))
  before = tree_digest(workdir)
  # Five processes at once, each on its own copy: whatever the timing of the reads abandoned when the
  # first one fails, each prints exactly one line (the in-process check is in test_checkpoint.py).
  copies = [str(tmp_path / f'copy{i}') for i in range(5)]
  for c in copies:
    shutil.copytree(workdir, c)
  procs = [subprocess.Popen(train_cmd(c), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=ENV) for c in copies]
  for c, proc in zip(copies, procs):
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert len(err.splitlines()) == 1, err[:3000]
    assert err.startswith(f'error: checkpoint at step 30 ({os.path.join(c, "checkpoints", "30")}) could not '
                          'be restored (')
    assert err.rstrip().endswith('; pass --restore_step=20 to resume from the previous checkpoint')
    assert 'bound method' not in err  # no Python reprs leaking out of the storage library
    assert tree_digest(c) == before  # nothing touched
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
  assert re.search(r'^skipped [1-9]\d* update\(s\) with a non-finite loss before step \d+$', out.stdout, re.M)
  assert checkpoint_steps(workdir)[-1] == 60


def test_torn_metrics_line_is_dropped_on_resume(tmp_path, reference):
  workdir = str(tmp_path)
  run_train(workdir, '--config.train.max_steps=40', '--config.train.decay_steps=60')
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 45, "train_lo')  # a crash in the middle of a write
  run_train(workdir)
  assert losses(workdir) == reference


def test_a_second_run_on_a_busy_workdir_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path, reference):
  workdir = str(tmp_path)
  holder = subprocess.Popen(train_cmd(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=ENV)
  wait_for(lambda: 20 in checkpoint_steps(workdir), holder)  # then step 10's save is surely complete
  holder.send_signal(signal.SIGSTOP)  # frozen mid-run, still holding the lock
  try:
    assert lock_holder(workdir)['pid'] == holder.pid
    before = tree_digest(workdir)
    second = run_train(workdir, check=False)
    assert second.returncode == 2
    assert second.stderr.strip() == (
        f'error: workdir {workdir} is in use by another training run (pid {holder.pid} on host '
        f'{socket.gethostname()}, started {lock_holder(workdir)["start"]}); wait for it to end or stop it, '
        'or pass another --workdir')
    assert tree_digest(workdir) == before  # refused before reading or writing anything
    # Sampling reads the busy workdir (it takes no lock): the prompt, then 5 new bytes.
    sample = subprocess.run([sys.executable, '-m', 'gptjax.sample', f'--workdir={workdir}', '--prompt=def ',
                             '--max_new_tokens=5', '--temperature=0'], capture_output=True, cwd=ROOT, env=ENV,
                            timeout=300)
    assert sample.returncode == 0 and sample.stdout.startswith(b'def '), sample.stderr
  finally:
    holder.kill()  # SIGKILL works on a stopped process; the kernel drops its lock
    holder.communicate()
  assert os.path.exists(os.path.join(workdir, 'lock'))  # the file stays behind...
  assert lock_holder(workdir) is None  # ...but locks nothing
  saved = checkpoint_steps(workdir)
  resumed = run_train(workdir)  # no manual step
  assert f'resuming from step {saved[-1]}' in resumed.stdout
  assert losses(workdir) == reference  # one run's log: no step twice, the losses of a single run
  assert not os.path.exists(os.path.join(workdir, 'lock'))  # a run that ends removes it


def test_disk_full_while_writing_a_checkpoint_keeps_the_last_one(tmp_path, reference):
  """A tmpfs with 100 KiB free: the run resumed from step 20 fails writing step 30 (~0.6 MB). Freed, the
  5 MiB tmpfs holds the data (0.4 MB) and all six checkpoints: each ~0.6 MB, orbax's sharding metadata
  of global arrays (_sharding, array_metadatas: ~35 KB) included, so 4 MiB would not."""
  workdir = str(tmp_path / 'run')
  run_train(workdir, '--config.train.max_steps=20', '--config.train.decay_steps=60')
  before = {k: v for k, v in tree_digest(workdir).items() if k.startswith('checkpoints')}
  out = str(tmp_path / 'out')
  proc = in_mount_namespace(f"""
    M={tmp_path}/mnt; mkdir $M; mount -t tmpfs -o size=5m tmpfs $M; cp -a {workdir} $M/run
    dd if=/dev/zero of=$M/reserve bs=1k count=100 status=none
    dd if=/dev/zero of=$M/filler bs=4k status=none 2>/dev/null || true
    rm $M/reserve
    echo 0 > {out}.rc; {' '.join(train_cmd('$M/run'))} >/dev/null 2>{out}.err || echo $? > {out}.rc
    cp -a $M/run {out}.full
    rm $M/filler
    {' '.join(train_cmd('$M/run'))} >{out}.rerun 2>&1
    cp -a $M/run {out}
  """)
  assert proc.returncode == 0, proc.stderr
  err = open(f'{out}.err').read()
  assert open(f'{out}.rc').read().strip() == '2'
  assert err == (f'error: could not write the checkpoint of step 30 to {tmp_path}/mnt/run/checkpoints/30 (No '
                 'space left on device); free space on that disk (or use a workdir on another one), then run '
                 'the same command again: it resumes from step 20, the last complete checkpoint\n')
  full = f'{out}.full'
  assert sorted(os.listdir(os.path.join(full, 'checkpoints'))) == ['10', '20']  # no half-written step left
  assert {k: v[0] for k, v in tree_digest(full).items() if k.startswith('checkpoints')} == \
      {k: v[0] for k, v in before.items()}  # the saved ones untouched
  assert 'resuming from step 20' in open(f'{out}.rerun').read()
  assert losses(out) == reference  # space freed, the same command continues as if nothing happened


def test_disk_full_while_writing_a_metrics_line_keeps_what_was_saved(tmp_path):
  """The workdir on a 256 KiB tmpfs (checkpoints, data and TensorBoard bound to a roomy disk), filled up
  at step 20: the next metrics.jsonl line that needs a new page fails."""
  out = str(tmp_path / 'out')
  roomy = tmp_path / 'roomy'
  args = ['--config.train.max_steps=3000', '--config.train.log_interval=1', '--config.train.steps_per_call=1',
          '--config.train.checkpoint_interval=10', '--config.train.keep_checkpoints=0', '--noprogress']
  cmd = f'{sys.executable} -m gptjax.train --config={TINY} --workdir=$M ' + ' '.join(args)
  proc = in_mount_namespace(f"""
    M={tmp_path}/mnt; mkdir $M; mount -t tmpfs -o size=256k tmpfs $M
    for d in checkpoints data tensorboard; do mkdir -p $M/$d {roomy}/$d; mount --bind {roomy}/$d $M/$d; done
    {cmd} >/dev/null 2>{out}.err &
    pid=$!
    until grep -qs '"step": 20,' $M/metrics.jsonl || ! kill -0 $pid 2>/dev/null; do sleep 0.01; done
    dd if=/dev/zero of=$M/filler bs=4k status=none 2>/dev/null || true
    echo 0 > {out}.rc; wait $pid || echo $? > {out}.rc
    cp $M/metrics.jsonl {out}.metrics
  """)
  assert proc.returncode == 0, proc.stderr
  assert open(f'{out}.rc').read().strip() == '2'
  assert open(f'{out}.err').read() == (
      f'error: cannot write {tmp_path}/mnt/metrics.jsonl: No space left on device; free space on that disk (or '
      'use a workdir on another one); then run the same command again: it resumes from the last checkpoint '
      'and rewrites the log from there\n')
  records = read_jsonl(f'{out}.metrics')  # the complete lines; at most a torn last one after them
  assert [r['step'] for r in records] == list(range(len(records))) and len(records) > 20
  saved = sorted(int(n) for n in os.listdir(roomy / 'checkpoints') if n.isdigit())
  assert saved == list(range(10, saved[-1] + 1, 10)) and saved[-1] >= 20  # every checkpoint kept


# ---------------------------------------------------------------------------------------------
# Helpers shared with test_bad_input.py


def in_mount_namespace(script):
  """Runs a bash script as root in a private mount namespace (`unshare -m`): its tmpfs and bind mounts
  vanish with it. Skips the test where the kernel refuses (no root, or no namespaces allowed)."""
  probe = subprocess.run(['unshare', '-m', 'true'], capture_output=True, text=True)
  if probe.returncode != 0:
    pytest.skip(f'this kernel refuses a private mount namespace (unshare -m: {probe.stderr.strip()})')
  env = {**ENV, 'PYTHONPATH': os.pathsep.join(p for p in [ROOT, ENV.get('PYTHONPATH')] if p)}
  return subprocess.run(['unshare', '-m', 'bash', '-ec', script], capture_output=True, text=True, cwd=ROOT,
                        env=env, timeout=300)


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
