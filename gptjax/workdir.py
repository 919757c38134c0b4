"""The workdir lock: one training run per workdir at a time, and one-line errors for the filesystem.

A training run holds an exclusive `flock` on WORKDIR/lock for as long as it runs; the file says who
holds it (pid, host, start time, command) so a second run can refuse with one line naming the holder
before it changes anything. The kernel releases an flock when its process ends, however it ends
(`kill -9` included), so a lock is never stale: a lock file a killed run left behind locks nothing,
and the next run simply takes it. A run that ends normally removes the file.

Readers (sampling, evaluation, a sweep deciding what to launch) never take the lock; `lock_holder`
tells them whether a run is training in a workdir.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import time

from gptjax.errors import GptjaxError, os_error

LOCK_NAME = 'lock'
_NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS)
# A `lock_holder` probe holds a shared lock for microseconds: a run that finds the lock taken tries
# again for this long before it refuses.
_RETRY_SECONDS = 0.5


def lock_holder(workdir: str) -> dict | None:
  """The live holder of `workdir`'s lock ({'pid', 'host', 'start', 'command'}), or None when no run
  holds it (no lock file, or one left by a run that has ended). Writes nothing."""
  try:
    fd = os.open(os.path.join(workdir, LOCK_NAME), os.O_RDONLY | os.O_CLOEXEC)
  except OSError:
    return None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return _read_holder(fd)
    except OSError:  # a filesystem without locking: no run can hold a lock there
      return None
    fcntl.flock(fd, fcntl.LOCK_UN)
    return None
  finally:
    os.close(fd)


def _read_holder(fd: int) -> dict:
  for _ in range(20):  # the holder writes its record right after locking: give it a moment
    data = os.pread(fd, 4096, 0).split(b'\n', 1)[0]
    try:
      return json.loads(data)
    except ValueError:
      time.sleep(0.01)
  return {'pid': None, 'host': None, 'start': None, 'command': None}


def describe(holder: dict) -> str:
  return (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('start')}"
          if holder.get('pid') else 'a process that has not said who it is')


@contextlib.contextmanager
def lock(workdir: str, *, enabled: bool = True):
  """Holds `workdir`'s lock for the block, creating the workdir if needed; yields the holder record.

  Raises GptjaxError (one line) if another run holds it (naming that run), if the workdir cannot be
  created or written, or if its filesystem has no file locking. On the way out the lock file is
  removed, and so is the workdir if this call created it and nothing else was written there.
  enabled=False (every process but the first of a multi-process run) does nothing.
  """
  if not enabled:
    yield None
    return
  created = _make_workdir(workdir)
  path = os.path.join(workdir, LOCK_NAME)
  try:
    fd = _take(workdir, path)
  except BaseException:
    _remove_empty(created)
    raise
  holder = {'pid': os.getpid(), 'host': socket.gethostname(),
            'start': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC'),
            'command': ' '.join([os.path.basename(sys.executable)] + sys.argv)}
  try:
    record = (json.dumps(holder) + '\n').encode()
    os.pwrite(fd, record, 0)  # then truncate: a reader sees a whole first line at any moment
    os.ftruncate(fd, len(record))
  except OSError as e:
    _release(fd, path, created)
    raise os_error(e, f'cannot write {path}') from None
  try:
    yield holder
  finally:
    _release(fd, path, created)


def _make_workdir(workdir: str) -> list[str]:
  """Creates workdir (and missing parents); returns the directories it created, deepest first."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise GptjaxError(f'workdir {workdir} is a file, not a directory; pass --workdir=DIR naming a '
                      'directory (a new one, or the run to resume)')
  missing, d = [], os.path.abspath(workdir)
  while not os.path.lexists(d):
    missing.append(d)
    d = os.path.dirname(d)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    if isinstance(e, (FileExistsError, NotADirectoryError)):
      raise GptjaxError(f'cannot create workdir {workdir}: {d} is a file, not a directory; pass a '
                        '--workdir whose parents are directories') from None
    raise os_error(e, f'cannot create workdir {workdir}') from None
  return missing


def _take(workdir: str, path: str) -> int:
  deadline = time.monotonic() + _RETRY_SECONDS
  while True:
    try:
      try:
        fd, made = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644), True
      except FileExistsError:
        fd, made = os.open(path, os.O_RDWR | os.O_CLOEXEC), False
    except OSError as e:
      raise os_error(e, f'cannot write to workdir {workdir}') from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      if time.monotonic() < deadline:
        time.sleep(0.05)
        continue
      raise GptjaxError(f'workdir {workdir} is in use by another training run ({describe(holder)}); '
                        'wait for it to end or stop it, or pass another --workdir') from None
    except OSError as e:  # no run can hold a lock here: a file this call made is removed again
      os.close(fd)
      if made:
        os.unlink(path)
      if e.errno in _NO_LOCKING:
        raise GptjaxError(f'workdir {workdir} is on a filesystem without file locking ({e.strerror}), so '
                          'two runs could write it at once; use a --workdir on a local disk or a '
                          'filesystem with locking') from None
      raise os_error(e, f'cannot lock {path}', 'check the workdir\'s filesystem') from None
    # The file locked must still be the one at `path`: a run that just ended removes it, and a new
    # one may have been made since; then lock that one instead.
    try:
      same = os.path.samestat(os.stat(path), os.fstat(fd))
    except FileNotFoundError:
      same = False
    if same:
      return fd
    os.close(fd)


def _release(fd: int, path: str, created: list[str]) -> None:
  with contextlib.suppress(OSError):
    os.unlink(path)  # before unlocking: the next run locks a new file, never this removed one
  os.close(fd)
  _remove_empty(created)


def _remove_empty(created: list[str]) -> None:
  for d in created:  # deepest first; stops at the first that is not empty
    try:
      os.rmdir(d)
    except OSError:
      return
