"""Devices, meshes and hosts: where the train state and each batch live, and how processes join.

Two layouts run the same pure `train_step` (gptjax/train.py); `parallel.strategy` picks one:

  pmap   data parallel with `jax.pmap`: every device holds a replica of the state and a slice of
         each batch; `train_step` averages gradients with `lax.pmean` over the axis AXIS.
  mesh   `jax.jit` over a Mesh with axes (data, fsdp, tensor): each parameter and its optimizer
         moments are split by the logical axis names the model gives them ('embed', 'mlp', ...),
         mapped to mesh axes by RULES below; batch rows are split over data x fsdp. XLA's SPMD
         partitioner inserts the collectives (FSDP's all-gathers, tensor parallelism's reductions).

Either way a checkpoint holds the state as global arrays of the logical (unreplicated) shapes, so it
restores under any strategy and device count, each device reading only its own shards.

Several hosts: `initialize()` joins them; each process feeds the rows of every global batch that its
own devices hold (`Layout.host_rows`), and the arrays the step sees are global.
"""

from __future__ import annotations

import glob
import importlib.util
import math
import os

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gptjax.errors import GptjaxError

AXIS = 'batch'  # the pmap axis name that train/eval steps reduce over
MESH_AXES = ('data', 'fsdp', 'tensor')
STRATEGIES = ('pmap', 'mesh')

# Logical axis name -> mesh axis: the one place that decides what is split over what. A name with no
# rule, or whose mesh axis is already used by another dimension of the same array, is not split.
RULES = (
    ('batch', ('data', 'fsdp')),  # rows of a batch: data parallelism over both axes
    ('embed', 'fsdp'),  # the model width: FSDP splits every parameter (and its Adam moments) here
    ('vocab', 'tensor'),  # embedding rows and LM-head columns
    ('qkv', 'tensor'),  # c_attn's fused [q | k | v] output columns
    ('heads', 'tensor'),  # attention output rows (n_head * head_dim)
    ('mlp', 'tensor'),  # the MLP's hidden width
    ('position', None),  # the learned position table's rows
    ('head_dim', None),  # within a head (QK-norm's gains): never split
)


# ---------------------------------------------------------------------------------------------
# Processes and devices


def initialize() -> None:
  """Joins the processes of a multi-host run; a no-op for one process. Call before any other JAX call.

  - any launcher: JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=0..N-1 in
    every process (passed to jax.distributed.initialize explicitly: it reads only the address itself);
  - SLURM (srun with more than one task) and Cloud TPU VMs: jax.distributed.initialize() finds the
    coordinator, process count and id itself.
  """
  if jax.distributed.is_initialized():
    return
  names = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')
  given = {k: os.environ.get(k, '') for k in names}
  if any(given.values()):
    missing = [k for k, v in given.items() if not v]
    if missing:
      raise GptjaxError(f'{" and ".join(missing)} not set: a multi-host run needs JAX_COORDINATOR_ADDRESS='
                        'host:port, JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=0..N-1 in every process')
    try:
      n, i = int(given['JAX_NUM_PROCESSES']), int(given['JAX_PROCESS_ID'])
    except ValueError:
      raise GptjaxError(f'JAX_NUM_PROCESSES={given["JAX_NUM_PROCESSES"]!r} and JAX_PROCESS_ID='
                        f'{given["JAX_PROCESS_ID"]!r} must be integers') from None
    if not 0 <= i < n:
      raise GptjaxError(f'JAX_PROCESS_ID={i} must be in 0..{n - 1} (JAX_NUM_PROCESSES={n})')
    if n > 1:
      jax.distributed.initialize(given['JAX_COORDINATOR_ADDRESS'], num_processes=n, process_id=i)
  elif _slurm_tasks() > 1 or _on_cloud_tpu_vm():
    jax.distributed.initialize()


def _slurm_tasks() -> int:
  """Tasks of the srun step this process belongs to (0 outside one). jax's SLURM detection needs
  these variables; a batch script's own shell (no srun) has SLURM_JOB_ID but no step node list."""
  needed = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID', 'SLURM_LOCALID')
  if not all(os.environ.get(k) for k in needed):
    return 0
  return int(os.environ['SLURM_NTASKS'])


def _on_cloud_tpu_vm() -> bool:
  """libtpu installed and TPU chips attached (jax then reads the slice's workers from metadata)."""
  return importlib.util.find_spec('libtpu') is not None and bool(
      glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'))


def local_devices(n: int = 0) -> list:
  """The first n local devices (all of them if n is 0)."""
  devices = jax.local_devices()
  if n < 0 or n > len(devices):
    raise GptjaxError(f'train.devices={n} but this host has {len(devices)} devices; use 0 (all) '
                      f'or a number up to {len(devices)}')
  return devices[:n] if n else devices


def run_devices(n_local: int = 0) -> list:
  """The devices a run uses: the first n_local (0 = all) of every process, process by process."""
  n = len(local_devices(n_local))
  by_process = {}
  for d in jax.devices():
    by_process.setdefault(d.process_index, []).append(d)
  return [d for p in sorted(by_process) for d in by_process[p][:n]]


def max_over_processes(value: int) -> int:
  """The largest `value` of all processes (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return value
  return int(np.max(multihost_utils.process_allgather(np.int64(value))))


def sync(name: str) -> None:
  """Waits until every process reaches the barrier `name`."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


# ---------------------------------------------------------------------------------------------
# The mesh: its shape, and the model dimensions it must divide


def mesh_shape(pc, n_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) of config section `parallel` over n_devices; one axis may be -1 (the rest)."""
  sizes = [pc.data, pc.fsdp, pc.tensor]
  named = ', '.join(f'parallel.{a}={s}' for a, s in zip(MESH_AXES, sizes))
  if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
    raise GptjaxError(f'{named}: each must be >= 1, and at most one -1 (all the devices the others leave)')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n_devices % known:
      raise GptjaxError(f'{named} cannot fill the {n_devices} devices: {known} does not divide {n_devices}')
    sizes[sizes.index(-1)] = n_devices // known
  elif known != n_devices:
    raise GptjaxError(f'{named} make a mesh of {known} devices but the run has {n_devices}; make their '
                      'product match, or set one of them to -1')
  return tuple(sizes)


def placed(abstract, shardings):
  """jax.ShapeDtypeStructs of `abstract` (shapes and dtypes) carrying `shardings`: a target to
  restore or compile into."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def mesh_axes_of(logical: str) -> tuple[str, ...]:
  """The mesh axes RULES split the logical axis `logical` over (empty: not split)."""
  for name, axes in RULES:
    if name == logical:
      return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  return ()


def check_model_fits(model_config, param_axes: dict, params_shape: dict, mesh: Mesh) -> None:
  """Raises a one-line GptjaxError naming every model dimension the mesh cannot split evenly."""
  c, sizes = model_config, dict(mesh.shape)

  def split(logical):
    axes = mesh_axes_of(logical)
    return math.prod(sizes.get(a, 1) for a in axes), ' x '.join(f'parallel.{a}' for a in axes)

  problems = []
  checks = [('vocab', 'model.vocab_size', c.vocab_size, 'embedding rows'),
            ('embed', 'model.n_embd', c.n_embd, 'the model width'),
            ('heads', 'model.n_head', c.n_head, 'attention heads'),
            ('mlp', 'model.mlp_hidden' if c.mlp_hidden else f'the {c.mlp} MLP width', c.mlp_width,
             'the MLP width' if c.mlp_hidden else 'model.mlp_hidden sets it')]
  if c.n_kv_head:  # grouped-query attention: fewer key/value heads, split the same way
    checks.append(('heads', 'model.n_kv_head', c.n_kv_head, 'key/value heads'))
  for logical, field, value, what in checks:
    n, axes = split(logical)
    if n > 1 and value % n:
      hint = (f'; set --config.model.vocab_size={-(-value // n) * n} (ids past the tokenizer\'s are never '
              'used)' if logical == 'vocab' else '')
      problems.append(f'{field}={value} ({what}) is not divisible by {axes}={n}{hint}')
  if not problems:  # any other parameter, e.g. one a new model option adds
    for path, names in jax.tree_util.tree_leaves_with_path(
        param_axes, is_leaf=lambda x: isinstance(x, PartitionSpec)):
      shape = _at(params_shape, path).shape
      for dim, name in zip(shape, names):
        n, axes = split(name)
        if n > 1 and dim % n:
          problems.append(f'parameter {jax.tree_util.keystr(path)} of shape {shape}: its {name!r} '
                          f'dimension ({dim}) is not divisible by {axes}={n}')
  if problems:
    raise GptjaxError('the mesh cannot split the model: ' + '; '.join(problems)
                      + '; change parallel.tensor / parallel.fsdp or the model')


def _at(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


# ---------------------------------------------------------------------------------------------
# Layouts: where the state and batches live under each strategy


class PmapLayout:
  """Data parallel with jax.pmap: a replica of the state on every device, a slice of each batch.

  The state the loop carries has a leading [local devices] axis; checkpoints get the global form
  (one replicated array per leaf) from `to_global`, and `to_device` turns such a state back.
  """

  strategy = 'pmap'
  axis_name = AXIS

  def __init__(self, devices):
    self.devices = list(devices)
    self.local = [d for d in self.devices if d.process_index == jax.process_index()]
    self.mesh = Mesh(np.asarray(self.devices), (AXIS,))
    self._local_sharding = NamedSharding(Mesh(np.asarray(self.local), (AXIS,)), PartitionSpec(AXIS))

  @property
  def batch_split(self) -> int:
    return len(self.devices)

  def state_shardings(self, state_axes):
    """Every leaf replicated on every device."""
    replicated = NamedSharding(self.mesh, PartitionSpec())
    return jax.tree.map(lambda _: replicated, state_axes, is_leaf=lambda x: isinstance(x, PartitionSpec))

  def to_device(self, state):
    """Global replicated arrays -> [local devices, ...] replicas, each device's from its own copy."""
    def one(x):
      shards = {s.device: s.data for s in x.addressable_shards}
      return jax.make_array_from_single_device_arrays(
          (len(self.local),) + x.shape, self._local_sharding, [shards[d][None] for d in self.local])
    return jax.tree.map(one, state)

  def to_global(self, state):
    """[local devices, ...] replicas -> global replicated arrays (what a checkpoint stores)."""
    sharding = NamedSharding(self.mesh, PartitionSpec())
    def one(x):
      shards = {s.device: s.data for s in x.addressable_shards}
      return jax.make_array_from_single_device_arrays(x.shape[1:], sharding, [shards[d][0] for d in self.local])
    return jax.tree.map(one, state)

  def host_rows(self, batch_size: int) -> slice:
    """This process's rows of a global batch: its devices' slices, which are contiguous."""
    first = self.devices.index(self.local[0])
    per_device = batch_size // len(self.devices)
    return slice(first * per_device, (first + len(self.local)) * per_device)

  def put_batch(self, rows: np.ndarray, batch_size: int):
    """This process's rows [steps, rows, seq] -> [local devices, steps, rows / devices, seq]."""
    return shard(rows, len(self.local), axis=1)

  def compile_train(self, fn, state_shardings):
    return jax.pmap(fn, axis_name=AXIS, devices=self.devices, donate_argnums=(0,))

  def compile_eval(self, fn, param_shardings):
    return jax.pmap(fn, axis_name=AXIS, devices=self.devices)

  def read(self, x) -> np.ndarray:
    """A value every device holds (a pmean'd metric) as numpy."""
    return np.asarray(x[0])


class MeshLayout:
  """jax.jit over a (data, fsdp, tensor) Mesh: the state is sharded by RULES, batches over data x fsdp."""

  strategy = 'mesh'
  axis_name = None  # nothing to reduce by hand: the partitioner does it

  def __init__(self, devices, shape: tuple[int, int, int]):
    self.devices = list(devices)
    self.mesh = jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                              devices=self.devices)
    # [steps, batch, seq + 1]: rows split over data x fsdp, replicated over tensor.
    self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(None, mesh_axes_of('batch')))
    self.replicated = NamedSharding(self.mesh, PartitionSpec())

  @property
  def batch_split(self) -> int:
    return math.prod(dict(self.mesh.shape)[a] for a in mesh_axes_of('batch'))

  def state_shardings(self, state_axes):
    return nn.logical_to_mesh_sharding(state_axes, self.mesh, RULES)

  def to_device(self, state):
    return state  # the loop works on the global arrays themselves

  def to_global(self, state):
    return state

  def host_rows(self, batch_size: int) -> slice:
    """The rows of a global batch this process's devices hold (with tensor > 1, rows are replicated
    over the tensor axis, so processes may share rows). Contiguous by construction of the mesh."""
    index = self.batch_sharding.addressable_devices_indices_map((1, batch_size, 1))
    starts = sorted({i[1].indices(batch_size)[:2] for i in index.values()})
    lo, hi = starts[0][0], starts[-1][1]
    if sum(b - a for a, b in starts) != hi - lo:
      raise GptjaxError(f'this process holds rows {starts} of each batch, which are not contiguous; '
                        'order parallel.data / parallel.fsdp so that each host holds whole rows')
    return slice(lo, hi)

  def put_batch(self, rows: np.ndarray, batch_size: int):
    shape = (rows.shape[0], batch_size) + rows.shape[2:]
    return jax.make_array_from_process_local_data(self.batch_sharding, rows, shape)

  def compile_train(self, fn, state_shardings):
    return self.jit(fn, (state_shardings, self.batch_sharding), (state_shardings, self.replicated), (0,))

  def compile_eval(self, fn, param_shardings):
    return self.jit(fn, (param_shardings, self.batch_sharding), self.replicated)

  def jit(self, fn, in_shardings, out_shardings, donate=()):
    """jax.jit of fn over this mesh, traced under RULES (for the model's activation names)."""
    def with_rules(*args):  # model code's nn.with_logical_constraint reads the rules while tracing
      with nn.logical_axis_rules(RULES):
        return fn(*args)

    jitted = jax.jit(with_rules, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate)

    def call(*args):
      with jax.set_mesh(self.mesh):
        return jitted(*args)
    call.jitted = jitted  # for .lower(...).compile().memory_analysis() in experiments/
    return call

  def read(self, x) -> np.ndarray:
    return np.asarray(x)


def make_layout(pc, devices):
  """The layout config section `parallel` asks for over `devices` (of every process)."""
  if pc.strategy == 'pmap':
    return PmapLayout(devices)
  return MeshLayout(devices, mesh_shape(pc, len(devices)))


# ---------------------------------------------------------------------------------------------
# pmap helpers (also used by tests and benchmarks)


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
