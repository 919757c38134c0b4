"""Checkpoints: a failed restore leaves nothing running, parameters load without the optimizer state,
and the metadata saved with a step comes back."""

import asyncio
import gc
import json
import math
import os
import shutil
import threading
import time

import jax
import numpy as np
import optax
import pytest

from conftest import TINY
from gptjax import checkpoint as C
from gptjax import train as T
from gptjax.errors import GptjaxError
from test_reliability import corrupt


def pending_tasks():
  return [o for o in gc.get_objects() if issubclass(type(o), asyncio.Task) and not o.done()]


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """A TINY train state (AdamW) saved at steps 1 and 2, the second with metadata; host arrays, as the
  training loop saves them."""
  directory = str(tmp_path_factory.mktemp('ckpt') / 'checkpoints')
  tx = optax.adamw(1e-3)
  state = jax.device_get(T.init_state(TINY, tx, seed=0))
  with C.Checkpointer(directory) as ckpt:
    ckpt.save(1, state)
    ckpt.save(2, state.replace(step=state.step + 1), metadata={'log_window': {'loss_sum': 0.1, 'loss_count': 3}})
  return directory, state


@pytest.mark.parametrize('target', ['abstract', 'arrays'])
def test_failed_restore_leaves_no_task_thread_or_output(saved, tmp_path, capfd, target):
  """Orbax reads a checkpoint as many concurrent tasks and gives up at the first error; the reads
  still in flight then used to outlive the restore and print tracebacks from other threads."""
  directory, state = saved
  broken = str(tmp_path / 'checkpoints')
  shutil.copytree(directory, broken)
  corrupt(os.path.join(broken, '2'))
  threads = set(threading.enumerate())
  capfd.readouterr()
  like = jax.eval_shape(lambda: state) if target == 'abstract' else state
  with C.Checkpointer(broken, create=False) as ckpt:
    for _ in range(3):  # how many reads are in flight at the error varies: try a few times
      with pytest.raises(GptjaxError, match=rf'checkpoint at step 2 \({broken}/2\) could not be restored \('):
        ckpt.restore(2, like)
      assert pending_tasks() == []
  gc.collect()
  time.sleep(0.5)  # reads abandoned mid-flight would complete (and print) by now
  gc.collect()
  assert pending_tasks() == []  # every read of the failed restore was awaited
  assert set(threading.enumerate()) - threads == set()  # and no orbax thread is left
  out, err = capfd.readouterr()
  assert (out, err) == ('', '')
  with C.Checkpointer(broken, create=False) as ckpt:  # the step before is still readable
    restored = ckpt.restore(1, state)
  np.testing.assert_array_equal(restored.params['lm_head']['kernel'], state.params['lm_head']['kernel'])


def test_params_load_whatever_the_optimizer(saved):
  """Sampling reads only `params`: a checkpoint trained with AdamW loads without building AdamW."""
  directory, state = saved
  like = jax.eval_shape(lambda: state.params)
  with C.Checkpointer(directory, create=False) as ckpt:
    params = ckpt.restore_params(2, like)
  assert jax.tree.structure(params) == jax.tree.structure(state.params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, np.asarray(b))
  # The full state refuses an optimizer of another structure; params alone do not care.
  sgd_state = T.init_state(TINY, optax.sgd(0.1), seed=0)
  with C.Checkpointer(directory, create=False) as ckpt:
    with pytest.raises(GptjaxError, match='could not be restored'):
      ckpt.restore(2, sgd_state)


def test_metadata_round_trips_and_older_steps_have_none(saved):
  directory, _ = saved
  with C.Checkpointer(directory, create=False) as ckpt:
    assert ckpt.steps() == [1, 2]
    assert ckpt.metadata(2) == {'log_window': {'loss_sum': 0.1, 'loss_count': 3}}
    assert ckpt.metadata(1) == {}  # as in checkpoints written before metadata existed


def test_log_window_resumes_to_the_same_mean():
  """The window summed across a checkpoint (saved, reloaded through JSON) gives the bit-identical mean."""
  rng = np.random.default_rng(0)
  chunks = [rng.uniform(2, 5, size=n).astype(np.float32) for n in (3, 2)]
  whole = T.LogWindow()
  for c in chunks:
    whole.add(c)
  split = T.LogWindow()
  split.add(chunks[0])
  split = T.LogWindow.from_dict(json.loads(json.dumps(split.to_dict())))
  split.add(chunks[1])
  assert split.mean() == whole.mean()
  assert math.isnan(T.LogWindow.from_dict(None).mean())  # nothing since the last line (older checkpoints)
  assert abs(whole.mean() - float(np.mean(np.concatenate(chunks), dtype=np.float64))) < 1e-12
