"""Checkpoints of the training state with orbax: save every N steps, keep the last K, restore latest.

Layout: WORKDIR/checkpoints/<step>/... Orbax writes a step into a temporary directory and renames it
into place only once every file is written (and marks it finalized), so a step directory that
`steps()` lists is complete; a save cut short by a crash is never listed and never restored.
"""

from __future__ import annotations

import os
import sys
import threading

import jax
import orbax.checkpoint as ocp

from gptjax.errors import GptjaxError


def _closed_loop_error(exc) -> bool:
  return isinstance(exc, RuntimeError) and 'Event loop is closed' in str(exc)


def _quiet_abandoned_reads() -> None:
  """When a restore fails, tensorstore reads still in flight complete into orbax's closed event
  loop, and each would print an 'Event loop is closed' traceback (from other threads, at any time
  after). Drop exactly those; every other error is reported as before. Idempotent."""
  if getattr(sys.unraisablehook, '_gptjax_filter', False):
    return
  previous_unraisable, previous_thread = sys.unraisablehook, threading.excepthook

  def unraisable(info):
    if not _closed_loop_error(info.exc_value):
      previous_unraisable(info)

  def thread(info):
    if not _closed_loop_error(info.exc_value):
      previous_thread(info)

  unraisable._gptjax_filter = True
  sys.unraisablehook, threading.excepthook = unraisable, thread


class Checkpointer:
  """A thin owner of an orbax CheckpointManager; the state it saves is passed in, never kept."""

  def __init__(self, directory: str, keep: int = 3, create: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep or None, create=create)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    """Steps with a complete checkpoint, oldest first."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, state) -> bool:
    """Starts writing `state` as `step` in the background; False if that step is already saved."""
    return self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

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
    _quiet_abandoned_reads()  # before the read starts: a failing one prints from other threads
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # orbax raises many types (ValueError, KeyError, OSError, tensorstore errors)
      reason = (str(e).splitlines() or [type(e).__name__])[0]
      reason = reason.split(' See full TensorStore details')[0].rstrip('. ')  # a repr of a bound method
      reason = reason if len(reason) <= 160 else reason[:160] + '...'
      raise GptjaxError(f'checkpoint at step {step} ({os.path.join(self.directory, str(step))}) could not '
                        f'be restored ({reason})') from None

  def wait(self) -> None:
    """Blocks until every save started so far is complete on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
