"""What a run ran: the code's git commit, package versions, Python, devices, host and start time.

`gptjax.train` appends one record to WORKDIR/provenance.jsonl (process 0 only) each time it starts
in a workdir, fresh or resumed, so a number in a results table can be traced back to the code and
machine that made it, and a run resumed on other code or hardware shows that too:

    {"start_step": 0, "start_time": "2026-11-30T14:09:12+00:00", "git_commit": "1e14e34...",
     "git_dirty": false, "git_dirty_files": [], "gptjax_source": "/home/me/gptjax/gptjax",
     "versions": {"gptjax": "0.1.0", "jax": "0.10.2", ...}, "python": "3.11.2",
     "platform": "Linux-6.8-x86_64", "backend": "cpu", "device_kind": "cpu", "local_devices": 2,
     "devices": 2, "processes": 1, "host": "box", "xla_flags": "--xla_cpu_experimental_ynn_fusion_type=-reduce
     --xla_force_host_platform_device_count=2", "cpu_choices": {"cpu": "AMD EPYC (avx512+bf16, 2 cores)",
     "devices": 2, ...}, "argv": [".../gptjax/train.py", "--config=..."], "cwd": "/home/me/gptjax"}

The git fields describe the source tree the running `gptjax` package was imported from: the commit
of HEAD and whether `git status` shows changes (modified, staged or untracked files, ignored ones
excluded) under the package directory. When that directory is not tracked by a git checkout (an
install from a wheel, or git missing) they are null and `gptjax_source` still says where the code
was; the gptjax version then identifies the release.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys

import jax

from gptjax import __version__
from gptjax.data import atomic_write
from gptjax.metrics import read_jsonl

FILENAME = 'provenance.jsonl'
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'ml_collections', 'numpy')
_MAX_DIRTY_FILES = 50  # enough to see what changed; a tree with more is summarised by the count


def _git(source: str, *args: str) -> str | None:
  """stdout of `git -C source args...`, or None if git is missing or fails."""
  try:
    proc = subprocess.run(['git', '-C', source, *args], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return None
  return proc.stdout if proc.returncode == 0 else None


def git_state(source: str) -> dict:
  """{'git_commit', 'git_dirty', 'git_dirty_files', 'git_dirty_count'} of the checkout that tracks
  the directory `source`; all None when no git checkout tracks it."""
  unknown = {'git_commit': None, 'git_dirty': None, 'git_dirty_files': None, 'git_dirty_count': None}
  # A wheel installed into a virtual environment inside some other repository sits in that
  # repository's tree but is not tracked by it: require the package's own files to be tracked.
  if not _git(source, 'ls-files', '--', '__init__.py'):
    return unknown
  commit = _git(source, 'rev-parse', 'HEAD')
  status = _git(source, 'status', '--porcelain', '--', '.')
  if commit is None or status is None:
    return unknown
  changed = [line[3:] for line in status.splitlines() if line.strip()]
  return {'git_commit': commit.strip(), 'git_dirty': bool(changed),
          'git_dirty_files': changed[:_MAX_DIRTY_FILES], 'git_dirty_count': len(changed)}


def versions() -> dict:
  """Installed versions of gptjax and the packages its numbers depend on (None if not installed)."""
  found = {'gptjax': __version__}
  for name in PACKAGES:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      found[name] = None
  return found


def collect(start_step: int = 0, argv: list[str] | None = None, cpu_choices: dict | None = None) -> dict:
  """The record of a run starting (or resuming) now at `start_step`; cpu_choices: what gptjax.cpu
  chose at start-up (None when the caller made no choices)."""
  source = os.path.dirname(os.path.abspath(__file__))
  devices = jax.local_devices()
  return {
      'start_step': int(start_step),
      'start_time': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      **git_state(source),
      'gptjax_source': source,
      'versions': versions(),
      'python': platform.python_version(),
      'platform': platform.platform(),
      'backend': jax.default_backend(),
      'device_kind': devices[0].device_kind,
      'local_devices': len(devices),
      'devices': jax.device_count(),
      'processes': jax.process_count(),
      'host': socket.gethostname(),
      'xla_flags': os.environ.get('XLA_FLAGS'),  # as the backend read them (None: not set)
      'cpu_choices': cpu_choices,
      'argv': list(sys.argv if argv is None else argv),
      'cwd': os.getcwd(),  # where relative paths in argv point
  }


def append(workdir: str, start_step: int = 0, cpu_choices: dict | None = None) -> dict:
  """Adds this start's record to WORKDIR/provenance.jsonl (earlier starts are kept); returns it.

  Call it from process 0 only. The file is rewritten whole (atomically), so a crash never leaves a
  torn line behind and a torn line left by an older writer is dropped.
  """
  path = os.path.join(workdir, FILENAME)
  record = collect(start_step, cpu_choices=cpu_choices)
  lines = [json.dumps(r) for r in read(workdir)] + [json.dumps(record)]
  atomic_write(path, ''.join(line + '\n' for line in lines))
  return record


def read(workdir: str) -> list[dict]:
  """Every start's record in WORKDIR/provenance.jsonl, oldest first ([] for runs made before it existed)."""
  return read_jsonl(os.path.join(workdir, FILENAME))
