"""Checkpoints of the training state with orbax: save every N steps, keep the last K, restore latest.

Layout: WORKDIR/checkpoints/<step>/... Orbax writes a step into a temporary directory and renames it
into place only once every file is written (and marks it finalized), so a step directory that
`steps()` lists is complete; a save cut short by a crash is never listed and never restored.

Every failure to read or write a checkpoint is raised as GptjaxError naming the step, its path and
the reason, and leaves nothing running behind it (see `_DrainingEventLoop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import re
import shutil
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp

from gptjax.errors import GptjaxError, write_remedy


class _DrainingEventLoop(asyncio.SelectorEventLoop):
  """An event loop that, when closed, first runs every task still pending in it to its end.

  Orbax reads a checkpoint as thousands of concurrent tasks gathered on a private event loop, and
  closes that loop as soon as the first read fails. The other reads are then abandoned mid-flight:
  their TensorStore futures complete later into a closed loop and each prints a traceback from some
  thread at some later time. Closing through this loop instead awaits every one of them (their errors
  retrieved and dropped: the first one is the error orbax raises), so a failed restore returns with
  no task, read or callback of it left alive.
  """

  def close(self) -> None:
    if not self.is_closed() and not self.is_running():
      while pending := [t for t in asyncio.all_tasks(self) if not t.done()]:
        self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    super().close()


def _drain_event_loops() -> None:
  """Makes the event loops libraries create with asyncio.new_event_loop() drain their pending tasks
  when closed (through the event loop policy, asyncio's hook for that). Orbax runs every save and
  restore on such a loop, in the calling thread or a background one; draining changes nothing for
  an operation that succeeds. Idempotent; where a Python has removed policies, loops stay as they are.
  """
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)  # Python 3.14 deprecates the policy API
    base = getattr(asyncio, 'DefaultEventLoopPolicy', None)
    if base is None or not hasattr(asyncio, 'set_event_loop_policy'):
      return
    if getattr(asyncio.get_event_loop_policy(), 'drains_loops', False):
      return

    class DrainingPolicy(base):
      drains_loops = True

      def new_event_loop(self):
        return _DrainingEventLoop()

    asyncio.set_event_loop_policy(DrainingPolicy())


def _reason(exc: BaseException) -> str:
  """A short, one-line reason from an orbax/TensorStore error: the OS error where one is named."""
  text = str(exc)
  code = re.search(r"os_error_code='?(\d+)", text)
  if isinstance(exc, OSError) and exc.strerror:
    return exc.strerror
  if code:
    return os.strerror(int(code.group(1)))
  reason = (text.splitlines() or [type(exc).__name__])[0]
  reason = reason.split(' See full TensorStore details')[0].rstrip('. ')  # then a repr of a bound method
  return reason if len(reason) <= 160 else reason[:160] + '...'


def _os_errno(exc: BaseException) -> int | None:
  code = re.search(r"os_error_code='?(\d+)", str(exc))
  return exc.errno if isinstance(exc, OSError) else (int(code.group(1)) if code else None)


class Checkpointer:
  """A thin owner of an orbax CheckpointManager; the state it saves is passed in, never kept.

  create=False opens the directory read-only (listing and restoring only). Use it as a context
  manager, or call close().
  """

  def __init__(self, directory: str, keep: int = 3, create: bool = True):
    self.directory = os.path.abspath(directory)
    _drain_event_loops()
    if create:
      # The run holding the workdir lock is the only writer: temporary directories of saves cut short
      # (by a kill or a full disk) are garbage, removed here.
      options = ocp.CheckpointManagerOptions(max_to_keep=keep or None, create=True,
                                             cleanup_tmp_directories=True)
    else:
      options = ocp.CheckpointManagerOptions(create=False)  # (read_only=True would log a warning)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._saving = None  # the step whose save was started last and may still be in flight
    # A reader lists what is on disk now (another process may be saving); the writer keeps orbax's own
    # list, which counts saves still in flight (reloading then would drop them, and orbax would prune
    # the wrong steps and keep one too many).
    self._reload = not create

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close(quiet=exc[0] is not None)

  def steps(self) -> list[int]:
    """Steps with a complete checkpoint (for the writer: or one being written), oldest first."""
    if self._reload:
      self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, state, metadata: dict | None = None) -> bool:
    """Starts writing `state` (and a small JSON-able `metadata` dict) as `step` in the background;
    False if that step is already saved. Raises GptjaxError if an earlier save failed."""
    with self._write_errors():
      started = self._manager.save(step, args=ocp.args.StandardSave(state), force=True,
                                   custom_metadata=metadata or {})
    if started:
      self._saving = step
    return started

  def metadata(self, step: int) -> dict:
    """The metadata dict saved with `step` ({} for checkpoints saved without one)."""
    return dict(self._manager.metadata(step).custom_metadata or {})

  def restore(self, step: int, like):
    """The state saved at `step`, with the structure, shapes and dtypes of `like` (arrays or abstract).

    Each leaf is read straight into the sharding `like` gives it (a jax.ShapeDtypeStruct's or an
    array's), whatever layout wrote it: each device reads only its own shard, nothing is gathered.
    A leaf with no sharding is read onto this process's first device. Raises GptjaxError naming the
    step and its path if the files cannot be read.
    """
    first_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda x: x if getattr(x, 'sharding', None) is not None else jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=first_device),
        jax.tree.map(ocp.utils.to_shape_dtype_struct, like))
    with self._read_errors(step):
      return self._manager.restore(step, args=ocp.args.StandardRestore(target))

  def restore_params(self, step: int, like_params):
    """Only the `params` of the train state saved at `step` (as numpy arrays shaped like
    `like_params`): the optimizer state is not read, so it may have any structure."""
    target = {'params': jax.tree.map(ocp.utils.to_shape_dtype_struct, like_params)}
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(restore_type=np.ndarray, dtype=s.dtype), target)
    with self._read_errors(step):
      restored = self._manager.restore(step, args=ocp.args.PyTreeRestore(
          item=target, restore_args=restore_args, partial_restore=True))
    return restored['params']

  def wait(self) -> None:
    """Blocks until every save started so far is complete on disk; GptjaxError if one failed."""
    with self._write_errors():
      self._manager.wait_until_finished()
    self._saving = None

  def close(self, quiet: bool = False) -> None:
    """Waits for saves in flight, then releases the manager. quiet: a failed save raises nothing
    (for closing while another error is on its way out; its temporary files are removed all the same)."""
    try:
      self.wait()
    except GptjaxError:
      if not quiet:
        raise
    finally:
      self._manager.close()

  @contextlib.contextmanager
  def _read_errors(self, step: int):
    try:
      yield
    except Exception as e:  # orbax raises many types (ValueError, KeyError, OSError, tensorstore errors)
      raise GptjaxError(f'checkpoint at step {step} ({os.path.join(self.directory, str(step))}) could not '
                        f'be restored ({_reason(e)})') from None

  @contextlib.contextmanager
  def _write_errors(self):
    try:
      yield
    except GptjaxError:
      raise
    except Exception as e:
      step, self._saving = self._saving, None
      if step is None:
        raise
      for tmp in glob.glob(os.path.join(self.directory, f'{step}.orbax-checkpoint-tmp*')):
        shutil.rmtree(tmp, ignore_errors=True)  # the half-written save: garbage, and it holds space
      kept = [s for s in self.steps() if s < step]
      resume = f'from step {kept[-1]}, the last complete checkpoint' if kept else 'from scratch'
      path = os.path.join(self.directory, str(step))
      raise GptjaxError(f'could not write the checkpoint of step {step} to {path} ({_reason(e)}); '
                        f'{write_remedy(_os_errno(e))}, then run the same command again: it resumes {resume}') from None
