"""The command lines, run as a user would: train, rerun (resume), sample."""

import os
import subprocess
import sys

import pytest

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


def test_sample_cli_prints_a_continuation(trained):
  workdir, _, _ = trained
  out = run('gptjax.sample', f'--workdir={workdir}', '--prompt=def ', '--max_new_tokens=20',
            '--temperature=0')
  assert out.returncode == 0 and len(out.stdout) > 0
  again = run('gptjax.sample', f'--workdir={workdir}', '--prompt=def ', '--max_new_tokens=20',
              '--temperature=0')
  assert again.stdout == out.stdout  # greedy is deterministic


def test_sample_cli_num_samples_and_top_k(trained):
  workdir, _, _ = trained
  out = run('gptjax.sample', f'--workdir={workdir}', '--prompt=import ', '--max_new_tokens=8',
            '--num_samples=3', '--top_k=5', '--top_p=0.9', '--seed=7')
  assert out.stdout.count('--- sample') == 3


def test_unknown_config_field_is_one_line_error(tmp_path):
  out = run('gptjax.train', f'--config={TINY}', f'--workdir={tmp_path}/w', '--config.model.n_layr=3',
            check=False)
  assert out.returncode == 2
  assert out.stderr.strip() == "error: unknown config field --config.model.n_layr (did you mean 'n_layer'?)"
  assert not os.path.exists(tmp_path / 'w')
