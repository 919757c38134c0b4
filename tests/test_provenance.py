"""The run record: the commit, dirty state and versions a run wrote match git and the installed packages."""

import importlib.metadata
import os
import platform
import subprocess

import flax
import jax
import jaxlib
import optax
import orbax.checkpoint
import pytest

import gptjax
from gptjax import provenance
from gptjax import train as train_lib
from test_evaluate import char_run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git(cwd, *args):
  proc = subprocess.run(['git', *args], cwd=cwd, capture_output=True, text=True)
  return proc.stdout.strip() if proc.returncode == 0 else None


def test_a_run_records_the_commit_versions_and_devices_of_each_start(tmp_path):
  workdir = str(tmp_path / 'run')
  config, _ = char_run_config(tmp_path, **{'train.max_steps': 5})
  train_lib.train_and_evaluate(config, workdir, progress=False)
  config.train.max_steps = 10
  train_lib.train_and_evaluate(config, workdir, progress=False)  # resumes at step 5
  train_lib.train_and_evaluate(config, workdir, progress=False)  # already finished: records nothing
  first, second = provenance.read(workdir)
  assert (first['start_step'], second['start_step']) == (0, 5)

  # The package under test is this checkout's (tests put it first on the path).
  assert first['gptjax_source'] == os.path.join(ROOT, 'gptjax') == os.path.dirname(gptjax.__file__)
  head = git(ROOT, 'rev-parse', 'HEAD')  # None when the tests run outside a git checkout
  assert first['git_commit'] == head
  if head is not None:
    status = git(ROOT, 'status', '--porcelain', '--', 'gptjax')
    assert first['git_dirty'] == bool(status)
    assert first['git_dirty_count'] == len(status.splitlines())
  else:
    assert first['git_dirty'] is None

  assert first['versions'] == {
      'gptjax': gptjax.__version__, 'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
      'flax': flax.__version__, 'optax': optax.__version__,
      'orbax-checkpoint': orbax.checkpoint.__version__,
      'ml_collections': importlib.metadata.version('ml_collections'),
      'numpy': importlib.metadata.version('numpy')}
  assert first['python'] == platform.python_version()
  assert first['backend'] == jax.default_backend() == 'cpu'
  assert first['device_kind'] == jax.devices()[0].device_kind
  assert (first['local_devices'], first['devices'], first['processes']) == (8, 8, 1)  # conftest's fake devices
  assert first['host'] and first['start_time'] <= second['start_time']


def test_git_state_outside_a_checkout_and_inside_a_foreign_one(tmp_path):
  loose = tmp_path / 'site-packages' / 'gptjax'
  loose.mkdir(parents=True)
  (loose / '__init__.py').write_text('')
  unknown = {'git_commit': None, 'git_dirty': None, 'git_dirty_files': None, 'git_dirty_count': None}
  assert provenance.git_state(str(loose)) == unknown  # e.g. installed from a wheel

  repo = tmp_path / 'project'
  package = repo / '.venv' / 'gptjax'
  package.mkdir(parents=True)
  (package / '__init__.py').write_text('')
  (repo / 'README').write_text('another project\n')
  commit = lambda: git(repo, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'c')
  assert git(repo, 'init', '-q') is not None
  git(repo, 'add', 'README')
  assert commit() is not None
  # A venv inside someone else's repository: its HEAD is not the commit of gptjax's code.
  assert provenance.git_state(str(package)) == unknown

  git(repo, 'add', '.venv')  # now the package's files are tracked: its commit is recorded
  commit()
  state = provenance.git_state(str(package))
  assert state == {'git_commit': git(repo, 'rev-parse', 'HEAD'), 'git_dirty': False, 'git_dirty_files': [],
                   'git_dirty_count': 0}
  (package / '__init__.py').write_text('x = 1\n')
  (package / 'new.py').write_text('')
  (repo / 'README').write_text('changed outside the package: not gptjax code\n')
  state = provenance.git_state(str(package))
  assert state['git_dirty'] is True and state['git_dirty_count'] == 2
  assert sorted(state['git_dirty_files']) == ['.venv/gptjax/__init__.py', '.venv/gptjax/new.py']


def test_append_keeps_earlier_records_and_drops_a_torn_line(tmp_path):
  (tmp_path / provenance.FILENAME).write_text('{"start_step": 0, "host": "a"}\n{"start_st')
  record = provenance.append(str(tmp_path), start_step=7)
  assert [r['start_step'] for r in provenance.read(str(tmp_path))] == [0, 7]
  assert provenance.read(str(tmp_path))[1] == record
  assert provenance.read(str(tmp_path / 'none')) == []


@pytest.mark.parametrize('name', ['jax', 'flax', 'optax', 'orbax-checkpoint'])
def test_versions_are_the_installed_distributions(name):
  assert provenance.versions()[name] == importlib.metadata.version(name)
