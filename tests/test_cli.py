"""The command lines, run as a user would: train, rerun (resume), sample."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gptjax import checkpoint as ckpt_lib
from gptjax import sample as sample_lib
from gptjax.metrics import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'configs', 'tiny.py')


def run(*args, check=True, env=None):
  proc = subprocess.run([sys.executable, '-m', *args], capture_output=True, text=True, cwd=ROOT,
                        env={**os.environ, 'XLA_FLAGS': '', **(env or {})}, timeout=300)
  if check and proc.returncode != 0:
    raise AssertionError(f'{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}')
  return proc


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A tiny run trained to step 20 of 40 by the CLI, then resumed to 40 by the same command."""
  workdir = str(tmp_path_factory.mktemp('cli') / 'run')
  first = run('gptjax.train', f'--config={TINY}', f'--workdir={workdir}', '--config.train.max_steps=20',
              '--config.train.decay_steps=40', '--noprogress')
  second = run('gptjax.train', f'--config={TINY}', f'--workdir={workdir}', '--noprogress')
  return workdir, first, second


def test_train_cli_runs_and_reruns_resume(trained):
  workdir, first, second = trained
  assert 'starting from scratch' in first.stdout
  assert first.stdout.strip().splitlines()[-1].startswith('done: step 20')
  assert 'resuming from step 20' in second.stdout
  assert second.stdout.strip().splitlines()[-1].startswith('done: step 40')
  steps = [r['step'] for r in read_jsonl(os.path.join(workdir, 'metrics.jsonl'))]
  assert steps == [0, 10, 20, 30, 40]  # no step twice, none missing


def test_sample_cli_prints_the_prompt_then_its_continuation(trained):
  workdir, _, _ = trained
  out = run('gptjax.sample', f'--workdir={workdir}', '--prompt=def ', '--max_new_tokens=20',
            '--temperature=0')
  # The same greedy continuation through the library (20 bytes; invalid UTF-8 shows as U+FFFD).
  [expected] = sample_lib.sample_from_workdir(workdir, 'def ', max_new_tokens=20, temperature=0.0)
  assert out.stdout == 'def ' + expected + '\n'
  alone = run('gptjax.sample', f'--workdir={workdir}', '--prompt=def ', '--max_new_tokens=20',
              '--temperature=0', '--continuation_only')
  assert alone.stdout == expected + '\n'


def test_sample_cli_num_samples_and_top_k(trained):
  workdir, _, _ = trained
  out = run('gptjax.sample', f'--workdir={workdir}', '--prompt=import ', '--max_new_tokens=8',
            '--num_samples=3', '--top_k=5', '--top_p=0.9', '--seed=7')
  chunks = out.stdout.split('--- sample ')[1:]
  assert [c.split('\n', 1)[0] for c in chunks] == ['0', '1', '2']
  assert all(c.split('\n', 1)[1].startswith('import ') for c in chunks)  # each: the prompt, then its own
  assert len({c.split('\n', 1)[1] for c in chunks}) > 1  # seeded draws, not three copies of one


def test_sampling_a_run_that_prunes_the_checkpoint_being_read_retries_the_latest(trained, tmp_path, monkeypatch):
  """A training run saves step 60 and prunes step 40 just as sampling starts reading 40 (the latest
  when it listed them): the read fails on the missing files and the newest checkpoint is read instead."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained[0], workdir)
  ckpts = os.path.join(workdir, 'checkpoints')
  real = ckpt_lib.Checkpointer.restore_params
  reads = []

  def pruned_meanwhile(self, step, like):
    reads.append(step)
    if len(reads) == 1:
      shutil.copytree(os.path.join(ckpts, '20'), os.path.join(ckpts, '60'))  # "saved" (step 20's params)
      shutil.rmtree(os.path.join(ckpts, '40'))  # and pruned
    return real(self, step, like)

  monkeypatch.setattr(ckpt_lib.Checkpointer, 'restore_params', pruned_meanwhile)
  params, _, _, step = sample_lib.load_run(workdir)
  assert reads == [40, 60] and step == 60
  with ckpt_lib.Checkpointer(ckpts, create=False) as c:
    twenty = c.restore_params(20, params)
  for a, b in zip(jax_leaves(params), jax_leaves(twenty)):
    np.testing.assert_array_equal(a, b)


def test_sampling_a_damaged_latest_checkpoint_is_an_error_not_a_retry(trained, tmp_path):
  from test_reliability import corrupt
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained[0], workdir)
  corrupt(os.path.join(workdir, 'checkpoints', '40'))
  proc = run('gptjax.sample', f'--workdir={workdir}', '--prompt=def ', check=False)
  assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
  assert proc.stderr.startswith(f'error: checkpoint at step 40 ({workdir}/checkpoints/40) could not be restored')
  ok = run('gptjax.sample', f'--workdir={workdir}', '--prompt=def ', '--step=20', '--max_new_tokens=4',
           '--temperature=0')
  assert ok.stdout.startswith('def ')


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)


def test_unknown_config_field_is_one_line_error(tmp_path):
  out = run('gptjax.train', f'--config={TINY}', f'--workdir={tmp_path}/w', '--config.model.n_layr=3',
            check=False)
  assert out.returncode == 2
  assert out.stderr.strip() == "error: unknown config field --config.model.n_layr (did you mean 'n_layer'?)"
  assert not os.path.exists(tmp_path / 'w')
