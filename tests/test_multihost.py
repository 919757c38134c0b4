"""Several processes on one box, as on several hosts: 2 processes x 2 CPU devices on 127.0.0.1 train
as 1 process x 4 devices does (pmap and mesh), joined through the documented JAX_* variables or
through SLURM's; a SIGTERM to one process stops both at one step with one checkpoint, and rerunning
the same commands resumes and matches.

Every run is the real command line in subprocesses (a process's device count is fixed at start).
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import tiny_run_config
from gptjax import train
from gptjax import workdir as workdir_lib
from gptjax.metrics import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'configs', 'tiny.py')
# 20 steps in calls of 5, each logged (so a resume never splits a logging window), evaluated and
# checkpointed every 10.
SETTINGS = {'train.max_steps': 20, 'train.log_interval': 5, 'train.eval_interval': 10,
            'train.checkpoint_interval': 10, 'train.keep_checkpoints': 10}
STRATEGY = {
    'pmap': {'parallel.strategy': 'pmap'},
    # FSDP across the two processes, tensor parallelism within each: collectives both cross the
    # process boundary and stay inside it, and every checkpoint array is written by both processes.
    'mesh': {'parallel.strategy': 'mesh', 'parallel.data': 1, 'parallel.fsdp': 2, 'parallel.tensor': 2},
}
JAX_VARS = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')


def free_port(low: int = 0, high: int = 0) -> int:
  """A port nothing listens on: any (the OS picks), or one in [low, high] tried at random (seeded)."""
  rng = np.random.default_rng(os.getpid())
  while True:
    port = int(rng.integers(low, high + 1)) if low else 0
    with socket.socket() as s:
      try:
        s.bind(('127.0.0.1', port))
      except OSError:
        continue
      return s.getsockname()[1]


def base_env(devices: int) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in JAX_VARS and not k.startswith('SLURM_')}
  return {**env, 'XLA_FLAGS': '', 'JAX_NUM_CPU_DEVICES': str(devices)}


def jax_env(port: int, i: int) -> dict:
  """The variables the README documents for any launcher."""
  return {**base_env(2), 'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}', 'JAX_NUM_PROCESSES': '2',
          'JAX_PROCESS_ID': str(i)}


def slurm_env(i: int) -> dict:
  """What `srun --ntasks=2` on one node sets (the subset jax's SLURM detection reads). jax derives the
  coordinator port from the job id: jobid % 4096 + 61440."""
  port = free_port(61440, 65535)
  return {**base_env(2), 'SLURM_JOB_ID': str(port - 61440 + 4096 * 7), 'SLURM_STEP_NODELIST': '127.0.0.1',
          'SLURM_NTASKS': '2', 'SLURM_PROCID': str(i), 'SLURM_LOCALID': str(i), 'SLURM_STEP_NUM_NODES': '1'}


def command(workdir, strategy):
  settings = {**SETTINGS, **STRATEGY[strategy]}
  return [sys.executable, '-m', 'gptjax.train', f'--config={TINY}', f'--workdir={workdir}', '--noprogress',
          *(f'--config.{k}={v}' for k, v in settings.items())]


def start(workdir, strategy, envs):
  return [subprocess.Popen(command(workdir, strategy), env=env, cwd=ROOT, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE) for env in envs]


def finish(procs, timeout=240):
  outs = [p.communicate(timeout=timeout) for p in procs]
  return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def run(workdir, strategy, envs):
  results = finish(start(workdir, strategy, envs))
  for code, out, err in results:
    assert code == 0, f'exit {code}:\n{out}\n{err[-3000:]}'
  return results


def two_process_envs(launcher):
  if launcher == 'slurm':
    first = slurm_env(0)
    return [first, {**first, 'SLURM_PROCID': '1', 'SLURM_LOCALID': '1'}]
  port = free_port()
  return [jax_env(port, 0), jax_env(port, 1)]


GLOO_WORDS = frozenset('[Gloo] Rank is connected to peer ranks. Expected number of connected peer ranks is :'.split())


def only_gloo(text: str) -> bool:
  """Whether text holds nothing but gloo's connection messages ("[Gloo] Rank 1 is connected to 1 peer
  ranks. Expected number of connected peer ranks is : 1"). Gloo writes each message in pieces (a
  C++ stream's << parts), and two of its threads write at once, so the pieces of two messages can
  interleave anywhere between them (a number on its own line, two numbers run together, a blank
  line, a number run into the next message's "[Gloo]"): the test is on the words, every one of which
  must be the message's or a number, with numbers and "[Gloo]" cut out of whatever they touch."""
  words = re.sub(r'(\[Gloo\]|\d+)', r' \1 ', text).split()
  return all(word in GLOO_WORDS or word.isdigit() for word in words)


def test_only_gloo_takes_interleaved_connection_messages_and_nothing_else():
  # Process 1's stdout in a failed run of the two-process test (2026-11-29): "3[Gloo]", a message's
  # tail on a line of its own, two messages in one line.
  seen = ('[Gloo] Rank 1 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1\n'
          '[Gloo] Rank 3 is connected to 3[Gloo] Rank 2 is connected to 3 peer ranks. Expected number of '
          'connected peer ranks is : 3\n peer ranks. Expected number of connected peer ranks is : 3\n'
          '[Gloo] Rank 0 is connected to 1 peer ranks. [Gloo] Rank 1 is connected to 1 peer ranks. Expected '
          'number of connected peer ranks is : 1\nExpected number of connected peer ranks is : 1\n\n1\n')
  assert only_gloo(seen) and only_gloo('')
  for extra in ('step 20: loss 3.1', 'error: process 0 could not take the lock', 'Traceback (most recent call',
                'W1129 warning', '[Gloo] Rank 1 is connected'.replace('Rank', 'Ranks')):
    assert not only_gloo(seen + extra), extra


def losses(workdir):
  records = read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  return [(r['step'], r.get('train_loss'), r.get('val_loss')) for r in records]


def checkpoint_steps(workdir):
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


@pytest.fixture(scope='module')
def one_process(tmp_path_factory):
  """1 process x 4 devices, per strategy: the runs two processes must reproduce. In this process
  (conftest's 8 fake devices, the first 4 used), with the settings the commands get as flags."""
  done = {}

  def get(strategy):
    if strategy not in done:
      workdir = str(tmp_path_factory.mktemp(f'one-{strategy}'))
      config = tiny_run_config(**SETTINGS, **STRATEGY[strategy], **{'train.devices': 4})
      train.train_and_evaluate(config, workdir, progress=False)
      done[strategy] = losses(workdir)
    return done[strategy]
  return get


@pytest.fixture(scope='module')
def two_processes(tmp_path_factory):
  done = {}

  def get(strategy, launcher):
    if (strategy, launcher) not in done:
      workdir = str(tmp_path_factory.mktemp(f'two-{strategy}-{launcher}'))
      done[strategy, launcher] = (workdir, run(workdir, strategy, two_process_envs(launcher)))
    return done[strategy, launcher]
  return get


@pytest.mark.parametrize('strategy, launcher', [('pmap', 'jax'), ('mesh', 'slurm')])
def test_two_processes_train_as_one_process_with_as_many_devices(strategy, launcher, one_process,
                                                                 two_processes):
  """JAX_* variables for pmap and SLURM's (through jax.distributed.initialize's own detection) for
  the mesh: each way the two processes find each other and train as one."""
  workdir, results = two_processes(strategy, launcher)
  (_, out0, _), (_, out1, _) = results
  assert '4 device(s) on 2 hosts' in out0
  # Process 0 reports; process 1 prints nothing of its own (gloo's connection messages are not ours).
  assert 'done: step 20' in out0 and only_gloo(out1), out1
  got, want = losses(workdir), one_process(strategy)
  assert [s for s, *_ in got] == [s for s, *_ in want] == [0, 5, 10, 15, 20]  # one line per step
  # The same global batches (each process draws only its own rows of them) and the same state; the
  # reductions run across processes over gloo instead of within one, maybe in another order:
  # float32 rounding only, 1e-7 relative per step, so 1e-5 over 20 steps.
  np.testing.assert_allclose(np.array(got[1:], float), np.array(want[1:], float), rtol=1e-5)
  assert len(os.listdir(os.path.join(workdir, 'tensorboard'))) == 1  # one writer
  assert checkpoint_steps(workdir) == [10, 20]


def test_sigterm_to_one_process_stops_all_at_one_step_then_resume_matches(tmp_path, two_processes):
  reference, _ = two_processes('mesh', 'slurm')
  workdir = str(tmp_path)
  envs = two_process_envs('jax')
  procs = start(workdir, 'mesh', envs)
  deadline = time.time() + 240
  while not any(r['step'] >= 5 for r in read_jsonl(os.path.join(workdir, 'metrics.jsonl'))):
    assert all(p.poll() is None for p in procs), 'a process ended early'
    assert time.time() < deadline, 'run too slow'
    time.sleep(0.01)
  assert workdir_lib.lock_holder(workdir)['pid'] == procs[0].pid  # process 0 holds the workdir lock
  procs[1].send_signal(signal.SIGTERM)  # the process that writes nothing but checkpoint shards
  results = finish(procs, timeout=120)
  stops = []
  for code, out, err in results:
    assert code == 128 + signal.SIGTERM, (code, err[-3000:])
    stops.append(int(err.split('stopped by signal 15 at step ')[1].split(';')[0]))
  stopped_at = stops[0]
  assert stops == [stopped_at, stopped_at] and 5 <= stopped_at < 20  # both at the same step
  assert workdir_lib.lock_holder(workdir) is None  # released on the way out
  assert checkpoint_steps(workdir) == sorted({stopped_at} | ({10} if stopped_at >= 10 else set()))
  resumed = finish(start(workdir, 'mesh', two_process_envs('jax')))
  assert all(code == 0 for code, _, _ in resumed), resumed
  assert f'resuming from step {stopped_at}' in resumed[0][1]
  # The same layout and the same calls as the uninterrupted run: bit for bit.
  assert losses(workdir) == losses(reference)


def test_a_busy_workdir_stops_every_process_with_one_line(tmp_path):
  """Process 0 takes the workdir's lock; where another run holds it, process 0 names that run and
  process 1 says process 0 was refused, each in one stderr line with exit 2, within seconds (before,
  process 1 waited at the first collective for the 30 s timeout and ended in a traceback). Nothing
  is written to the workdir."""
  workdir = str(tmp_path / 'run')
  with workdir_lib.lock(workdir) as holder:
    before = sorted(os.listdir(workdir))
    t0 = time.time()
    results = finish(start(workdir, 'pmap', two_process_envs('jax')), timeout=120)
    took = time.time() - t0
    assert sorted(os.listdir(workdir)) == before
  (code0, _, err0), (code1, _, err1) = results
  assert (code0, code1) == (2, 2), results
  assert err0.strip().splitlines() == [err0.strip()] and err0.startswith(f'error: workdir {workdir} is in use')
  assert f"pid {holder['pid']}" in err0
  assert err1.strip() == (f'error: process 0 could not take the lock of {workdir} (its error says why); '
                          'this process stops too')
  assert took < 25, took  # well under the runtime's 30 s timeout
