"""Devices and data parallelism: which devices a run uses, and how batches and state reach them.

Data parallel with `jax.pmap`: every local device holds a replica of the train state and a
[per_device_batch, ...] shard of each global batch; gradients are averaged with `lax.pmean` over
the `AXIS` axis. On several hosts, each host feeds its own rows of the global batch and
`jax.distributed.initialize` (called by `initialize`) connects them.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = 'batch'  # the pmap axis name that train/eval steps reduce over


def initialize() -> None:
  """Connects the hosts of a multi-host run (a no-op on one host).

  jax.distributed.initialize() finds the coordinator itself on Cloud TPU, SLURM and Kubernetes
  (see its docs); elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
  """
  if os.environ.get('JAX_COORDINATOR_ADDRESS') or os.environ.get('SLURM_JOB_ID') or \
      os.environ.get('TPU_WORKER_HOSTNAMES', '').count(',') > 0:
    jax.distributed.initialize()


def local_devices(n: int = 0) -> list:
  """The first n local devices (all of them if n is 0)."""
  devices = jax.local_devices()
  if n < 0 or n > len(devices):
    from gptjax.errors import GptjaxError
    raise GptjaxError(f'train.devices={n} but this host has {len(devices)} devices; use 0 (all) '
                      f'or a number up to {len(devices)}')
  return devices[:n] if n else devices


def shard(x: np.ndarray, n_devices: int, axis: int = 0) -> np.ndarray:
  """Splits `axis` (the batch rows) into a leading [n_devices] axis for pmap.

  [..., batch, ...] -> [n_devices, ..., batch // n_devices, ...]; device d gets rows
  d * batch/n .. (d+1) * batch/n - 1, so the global batch is the same for any device count.
  """
  x = np.asarray(x)
  rows = x.shape[axis]
  x = x.reshape(x.shape[:axis] + (n_devices, rows // n_devices) + x.shape[axis + 1:])
  return np.moveaxis(x, axis, 0)


def replicate(tree, devices):
  """One copy of every leaf on each device (leading axis [n_devices]).

  Placed with the same sharding that pmap gives its outputs (mesh axis AXIS), so the first call and
  every later one hit the same compiled program.
  """
  sharding = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), PartitionSpec(AXIS))
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x)[None], (len(devices),) + np.shape(x)), sharding),
      tree)


def unreplicate(tree):
  """The copy on the first device (replicas are identical after a pmean'd update)."""
  return jax.tree.map(lambda x: x[0], tree)
