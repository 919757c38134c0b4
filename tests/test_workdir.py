"""The workdir lock: one holder at a time, named when refused, gone with its process, and one-line
errors for the filesystem."""

import errno
import os
import signal
import socket
import subprocess
import sys

import pytest

from gptjax import workdir as W
from gptjax.errors import GptjaxError

# A process that takes the lock, says so, then waits to be killed.
HOLD = ('import sys, time; from gptjax import workdir as W\n'
        'with W.lock(sys.argv[1]):\n'
        '  print("held", flush=True); time.sleep(600)\n')


def hold_in_subprocess(workdir):
  proc = subprocess.Popen([sys.executable, '-c', HOLD, str(workdir)], stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline() == 'held\n'
  return proc


def test_lock_holds_names_its_holder_and_cleans_up(tmp_path):
  workdir = tmp_path / 'new' / 'run'
  assert W.lock_holder(str(workdir)) is None  # no workdir: nobody holds it
  with W.lock(str(workdir)) as holder:
    assert holder['pid'] == os.getpid() and holder['host'] == socket.gethostname()
    assert os.listdir(workdir) == ['lock']
    # Another open file description of the same lock file (as another process would have) is refused.
    with pytest.raises(GptjaxError, match=rf'workdir {workdir} is in use by another training run '
                                          rf'\(pid {os.getpid()} on host {socket.gethostname()}, started '):
      with W.lock(str(workdir)):
        pass
  # Nothing was written in the new workdir, so it goes with the lock (and so do the parents it made).
  assert not os.path.exists(tmp_path / 'new')


def test_lock_keeps_a_workdir_with_content_and_removes_only_its_file(tmp_path):
  (tmp_path / 'config.json').write_text('{}')
  with W.lock(str(tmp_path)):
    (tmp_path / 'metrics.jsonl').write_text('')
  assert sorted(os.listdir(tmp_path)) == ['config.json', 'metrics.jsonl']


def test_holder_killed_with_sigkill_leaves_no_stale_lock(tmp_path):
  proc = hold_in_subprocess(tmp_path)
  try:
    holder = W.lock_holder(str(tmp_path))
    assert holder['pid'] == proc.pid and holder['host'] == socket.gethostname()
    assert sys.executable.split(os.sep)[-1] in holder['command']
    with pytest.raises(GptjaxError, match=f'in use by another training run \\(pid {proc.pid} '):
      with W.lock(str(tmp_path)):
        pass
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert os.path.exists(tmp_path / 'lock')  # its file remains, with the dead holder's record...
  assert W.lock_holder(str(tmp_path)) is None  # ...and locks nothing
  with W.lock(str(tmp_path)) as holder:  # taken over with no manual step
    assert holder['pid'] == os.getpid()
    assert W.lock_holder(str(tmp_path))['pid'] == os.getpid()


def test_disabled_lock_touches_nothing(tmp_path):
  """Processes other than the first of a multi-process run take no lock."""
  proc = hold_in_subprocess(tmp_path)
  try:
    with W.lock(str(tmp_path), enabled=False) as holder:
      assert holder is None
  finally:
    proc.kill()
    proc.wait()


def test_filesystem_without_locking_is_one_line(tmp_path, monkeypatch):
  """No filesystem without flock is at hand here (NFS without lockd, some FUSE mounts): flock is made
  to fail as the kernel does there (ENOLCK)."""
  def no_locks(fd, op):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
  monkeypatch.setattr(W.fcntl, 'flock', no_locks)
  with pytest.raises(GptjaxError) as e:
    with W.lock(str(tmp_path / 'run')):
      pass
  assert str(e.value) == (f'workdir {tmp_path / "run"} is on a filesystem without file locking (No locks '
                          'available), so two runs could write it at once; use a --workdir on a local disk or '
                          'a filesystem with locking')
  assert not os.path.exists(tmp_path / 'run')


def test_workdir_that_is_a_file_or_under_one(tmp_path):
  (tmp_path / 'notes.txt').write_text('keep me')
  with pytest.raises(GptjaxError, match=r'workdir .*notes.txt is a file, not a directory'):
    with W.lock(str(tmp_path / 'notes.txt')):
      pass
  with pytest.raises(GptjaxError, match=r'cannot create workdir .*notes.txt/run: .*notes.txt is a file, not a '
                                        r'directory'):
    with W.lock(str(tmp_path / 'notes.txt' / 'run')):
      pass
  assert (tmp_path / 'notes.txt').read_text() == 'keep me'
