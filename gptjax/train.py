"""Training: the state, the pure step functions, and the loop that drives them.

    train_and_evaluate(config, workdir), in four phases:
      set_up          check the config, devices and data; build the layout (pmap, or a data x fsdp x
                      tensor mesh: parallel.py); make the state fresh or restore it from a checkpoint
                      of any layout straight into this one. Nothing is written yet.
      commit_workdir  write data/, config.json, tokenizer.json (process 0; all wait)
      build_steps     train_steps / eval_step compiled for the layout, and the batch drawer:
                        data ──batch_at(seed, step, this host's rows)──▶ [steps, batch, seq + 1]
      train_loop      state ──train_steps (state donated)──▶ state, losses
                      every eval_interval ──eval_step──▶ val_loss
                      every checkpoint_interval, at the end, on SIGTERM/SIGINT to any process ──▶
                      orbax checkpoint, written by all processes; metrics (process 0) ──▶
                      WORKDIR/metrics.jsonl, TensorBoard, progress bar

`train_step` is one optimizer update; `train_steps` scans it over several batches so one compiled
call does `steps_per_call` updates (per-call dispatch is a large share of a small model's step on
CPU). Both are pure: state in, state out; the same function runs under every layout.

Run: python -m gptjax.train --config=configs/shakespeare_char.py --workdir=runs/shakespeare
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec
from tqdm import tqdm

from gptjax import checkpoint as ckpt_lib
from gptjax import config as config_lib
from gptjax import data as data_lib
from gptjax import metrics as metrics_lib
from gptjax import accumulate, hardware, objectives, parallel, pretrained, provenance
from gptjax import workdir as workdir_lib
from gptjax.errors import GptjaxError, os_error
from gptjax.model import EXECUTION_FIELDS, GPT, GPTConfig, count_params, init_params, param_axes

if TYPE_CHECKING:  # only in annotations: importing this module needs no ml_collections
  import ml_collections


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # [] int32: optimizer updates done
  params: Any
  opt_state: Any
  rng: jax.Array  # [2] uint32: dropout key; step s uses fold_in(rng, s), so it never changes


def make_optimizer(tc: ml_collections.ConfigDict):
  """AdamW with linear warm-up then cosine decay to min_lr, after global-norm clipping.

  Weight decay applies to matrices and embeddings (ndim >= 2), not to biases or LayerNorm scales.
  Returns (optax transformation, learning-rate schedule).
  """
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=tc.learning_rate, warmup_steps=tc.warmup_steps,
      decay_steps=max(tc.decay_steps, tc.warmup_steps + 1), end_value=tc.min_lr)
  adamw = optax.adamw(schedule, b1=tc.beta1, b2=tc.beta2, weight_decay=tc.weight_decay,
                      mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params))
  # The clip stays in the chain when off (as identity), so the optimizer state has the same
  # structure either way and a run can resume with clipping switched on or off.
  clip = optax.clip_by_global_norm(tc.grad_clip) if tc.grad_clip else optax.identity()
  return optax.chain(clip, adamw), schedule


def init_state(model_config: GPTConfig, tx: optax.GradientTransformation, seed: int,
               shardings: TrainState | None = None, params: dict | None = None) -> TrainState:
  """Fresh parameters and optimizer state, a pure function of (model_config, seed).

  shardings (a TrainState of shardings, see `state_axes`) creates every leaf directly in its place,
  e.g. split over an FSDP mesh, never whole on one device; the values do not depend on it.
  params: start from these parameters instead (already placed by shardings.params, if given).
  """

  def init(params):
    params_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed))
    if params is None:
      params = init_params(model_config, params_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=dropout_rng)

  return jax.jit(init, out_shardings=shardings)(params)


def state_axes(model_config: GPTConfig, tx: optax.GradientTransformation) -> TrainState:
  """The logical axis names of every leaf of the train state, as PartitionSpecs of names: each
  parameter's from the model (`param_axes`), each optimizer moment the same as its parameter's,
  counters and the dropout key none. `parallel.Layout.state_shardings` maps them to devices."""
  params = param_axes(model_config)
  opt_state = jax.eval_shape(lambda: tx.init(init_params(model_config, jax.random.PRNGKey(0))))
  is_spec = lambda x: isinstance(x, PartitionSpec)
  opt_axes = optax.tree_map_params(tx, lambda _, names: names, opt_state, params,
                                   transform_non_params=lambda _: PartitionSpec(), is_leaf=is_spec)
  return TrainState(step=PartitionSpec(), params=params, opt_state=opt_axes, rng=PartitionSpec())


def train_step(state: TrainState, tokens: jax.Array, *, model: GPT, tx, skip_nonfinite: bool = False,
               objective: objectives.Objective = objectives.NEXT_TOKEN, axis_name: str | None = parallel.AXIS,
               grad_accum_steps: int = 1):
  """One update on this device's shard tokens [batch, seq + 1]; grads averaged over `axis_name`.

  grad_accum_steps > 1 computes the gradient over that many micro-batches in turn (gptjax/accumulate.py).
  Returns (new state, metrics {'loss', 'grad_norm'}). With skip_nonfinite, an update whose loss or
  gradient is NaN/Inf is dropped (the step counter still advances past its batch).
  """
  rng = jax.random.fold_in(state.rng, state.step)
  inputs, targets, weights = objectives.examples(objective, tokens, rng,
                                                 objectives.shard_rows(tokens.shape[0], axis_name))
  scale = objectives.shard_loss_scale(weights, axis_name)
  count = jnp.maximum(jnp.sum(weights), 1.0)  # this shard's real targets
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

  def loss_fn(params, batch, rng):  # batch's share of the shard's mean loss (all of it without accumulation)
    inputs, targets, weights = batch
    logits = model.apply({'params': params}, inputs, deterministic=model.config.dropout == 0.0,
                         rngs={'dropout': rng})
    return objectives.cross_entropy(logits, targets, weights)[1][0] / count * scale

  loss, grads = accumulate.value_and_grad(loss_fn, state.params, (inputs, targets, weights), rng,
                                          grad_accum_steps)
  if axis_name is not None:  # scaled so that the mean of the shards' means is the global batch's mean
    loss, grads = jax.lax.pmean((loss, grads), axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.tree.norm(grads)
  if skip_nonfinite:
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, {'loss': loss, 'grad_norm': grad_norm}


def train_steps(state: TrainState, tokens: jax.Array, **step_kwargs):
  """len(tokens) updates in one call: tokens [steps, batch, seq + 1]; metrics come back [steps]."""
  return jax.lax.scan(functools.partial(train_step, **step_kwargs), state, tokens)


def eval_step(params, tokens: jax.Array, *, model: GPT, objective: objectives.Objective = objectives.NEXT_TOKEN,
              axis_name: str | None = parallel.AXIS):
  """Summed NLL, target count and correct argmax predictions over tokens [n_batches, batch, seq + 1]
  (psum'd). Under mlm, batch i is corrupted with the fixed key fold_in(EVAL_CORRUPTION_SEED, i)."""
  rows = objectives.shard_rows(tokens.shape[1], axis_name)
  eval_key = jax.random.PRNGKey(objectives.EVAL_CORRUPTION_SEED)

  def one(carry, indexed_batch):
    i, batch = indexed_batch
    inputs, targets, weights = objectives.examples(objective, batch, jax.random.fold_in(eval_key, i), rows)
    logits = model.apply({'params': params}, inputs)
    _, (total, count) = objectives.cross_entropy(logits, targets, weights)
    return (carry[0] + total, carry[1] + count, carry[2] + objectives.correct(logits, targets, weights)), None

  sums, _ = jax.lax.scan(one, (jnp.zeros(()),) * 3, (jnp.arange(tokens.shape[0]), tokens))
  return jax.lax.psum(sums, axis_name) if axis_name is not None else sums


# ---------------------------------------------------------------------------------------------
# The workdir: data, tokenizer and config that a run keeps beside its checkpoints


class Corpus(NamedTuple):
  tokenizer: Any
  train: np.ndarray  # token ids (read-only memmaps)
  val: np.ndarray
  staged: str | None  # a fresh preparation outside the workdir, for commit_workdir to move in; None:
  #                     WORKDIR/data already holds this corpus


def prepare_data(config: ml_collections.ConfigDict, workdir: str) -> Corpus:
  """config.data's corpus, prepared by `data.prepare`: read from WORKDIR/data when that holds this
  text prepared the same way, else prepared into a temporary directory that `commit_workdir` moves
  into the workdir, so that a run refused later leaves the workdir as it was."""
  d = config.data
  if d.path:
    raw, source = data_lib.read_corpus(d.path, d.url), os.path.abspath(d.path)
  else:
    raw, source = data_lib.stdlib_corpus(d.max_bytes), f'python-stdlib-{sys.version.split()[0]}'
  data_dir = os.path.join(workdir, 'data')
  spec = data_lib.tokenizer_spec(d.tokenizer, bpe_vocab_size=d.bpe_vocab_size, tokenizer_path=d.tokenizer_path)
  staged = None
  if data_lib.find_prepared(data_dir, hashlib.sha256(raw).hexdigest(), spec, d.val_fraction) is None:
    staged = data_dir = tempfile.mkdtemp(prefix='gptjax-data-')
  try:
    meta = data_lib.prepare(raw, data_dir, spec, d.val_fraction, source)
    splits = {s: data_lib.load_split(data_dir, s) for s in ('train', 'val')}
    need = config.train.seq_len + 1
    for name, split in splits.items():
      if len(split) < need:
        raise GptjaxError(f'the {name} split of {source} has {len(split)} tokens, fewer than '
                          f'train.seq_len + 1 = {need}; use more text, a smaller --config.train.seq_len '
                          'or a different --config.data.val_fraction')
  except BaseException:
    _discard(staged)
    raise
  tokenizer = data_lib.tokenizer_from_dict(meta['tokenizer'])
  if config.train.objective == 'mlm':  # the run's tokenizer has a [MASK] token; the data files never hold it
    tokenizer = data_lib.with_mask_token(tokenizer)
  return Corpus(tokenizer, splits['train'], splits['val'], staged)


def _discard(staged: str | None) -> None:
  if staged and os.path.isdir(staged):
    shutil.rmtree(staged)  # open memmaps of its files stay readable


def check_resumable(workdir: str, model_config: GPTConfig, tokenizer) -> None:
  """Refuses a workdir whose run used another model shape or tokenizer than this config asks for."""
  saved_config = os.path.join(workdir, 'config.json')
  if not os.path.exists(saved_config):
    return
  with open(saved_config, encoding='utf-8') as f:  # a field older runs lack had its default value
    saved = {**{f.name: f.default for f in dataclasses.fields(GPTConfig)}, **json.load(f).get('model', {})}
  now = model_config.__dict__
  differ = [f'model.{k}={saved[k]!r} (config asks {now[k]!r})' for k in now
            if k in saved and saved[k] != now[k] and k not in EXECUTION_FIELDS]
  saved_tok = os.path.join(workdir, 'tokenizer.json')
  if os.path.exists(saved_tok):
    old = data_lib.load_tokenizer(saved_tok)
    if old.to_dict() != tokenizer.to_dict():
      differ.append(f'tokenizer ({old.kind}, {old.vocab_size} ids; this data gives '
                    f'{tokenizer.kind}, {tokenizer.vocab_size} ids)')
  if differ:
    raise GptjaxError(f'workdir {workdir} holds a run with a different setup: {", ".join(differ)}; '
                      'pass a new --workdir to start fresh, or the same settings to resume')


def save_run_files(workdir: str, config: ml_collections.ConfigDict, model_config: GPTConfig, tokenizer):
  resolved = config.to_dict()
  resolved['model'] = dict(model_config.__dict__)
  data_lib.atomic_write(os.path.join(workdir, 'config.json'), json.dumps(resolved, indent=1))
  data_lib.save_tokenizer(tokenizer, os.path.join(workdir, 'tokenizer.json'))


# ---------------------------------------------------------------------------------------------
# The run, in phases: set up (and restore), commit the workdir, build the step, loop


class Setup(NamedTuple):
  """What `set_up` checked and built. Nothing of it is in the workdir yet."""
  config: ml_collections.ConfigDict  # resolved (defaults filled in)
  model_config: GPTConfig
  corpus: Corpus
  layout: Any  # parallel.PmapLayout or parallel.MeshLayout: where the state and batches live
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  shardings: TrainState  # where each leaf of the state (as global arrays) lives
  state: TrainState  # fresh or restored, placed by `shardings`
  start: int | None  # the checkpoint step resumed from; None: from scratch
  newer: list  # checkpoint steps after `start`, to set aside
  window: 'LogWindow'  # the train losses not logged yet at `start` (from its checkpoint)


def set_up(config: ml_collections.ConfigDict, workdir: str, restore_step: int | None = None) -> Setup:
  """Checks the config against the devices and the data, builds the layout, and makes the state:
  fresh, or restored from a checkpoint of any layout straight into this one's shardings (one
  read-only `Checkpointer` lists and restores). Writes nothing to the workdir (a refused run leaves
  it as it was)."""
  devices = parallel.run_devices(config.train.devices)
  config_lib.validate(config, len(devices))
  config = config_lib.resolve(config)
  corpus = prepare_data(config, workdir)
  try:
    tc = config.train
    model_config = (pretrained.model_config(tc.init_from, config, corpus.tokenizer) if tc.init_from
                    else config_lib.model_config(config, corpus.tokenizer.vocab_size))
    check_resumable(workdir, model_config, corpus.tokenizer)
    layout = parallel.make_layout(config.parallel, devices)
    tx, schedule = make_optimizer(config.train)
    axes = state_axes(model_config, tx)
    abstract = jax.eval_shape(lambda: init_state(model_config, tx, config.seed))
    if layout.strategy == 'mesh':
      parallel.check_model_fits(model_config, axes.params, abstract.params, layout.mesh)
    shardings = layout.state_shardings(axes)

    ckpt_dir = os.path.join(workdir, 'checkpoints')
    steps, start, window = [], None, LogWindow()
    if os.path.isdir(ckpt_dir):
      with ckpt_lib.Checkpointer(ckpt_dir, create=False) as reader:
        steps = reader.steps()
        if restore_step is not None and restore_step not in steps:
          raise GptjaxError(f'no checkpoint at step {restore_step} in {ckpt_dir}; there are {steps}')
        start = restore_step if restore_step is not None else (steps[-1] if steps else None)
        if start is not None:
          state = _restore(reader, start, parallel.placed(abstract, shardings),
                           older=[s for s in steps if s < start], workdir=workdir)
          window = LogWindow.from_dict(reader.metadata(start).get('log_window'))
    if start is None and tc.init_from:  # parameters only: the optimizer and the step start fresh
      state = _init_from(tc.init_from, model_config, tx, config.seed, shardings)
    elif start is None:
      state = init_state(model_config, tx, config.seed, shardings)
  except BaseException:
    _discard(corpus.staged)
    raise
  return Setup(config, model_config, corpus, layout, tx, schedule, shardings, state, start,
               [s for s in steps if start is not None and s > start], window)


def _init_from(path: str, model_config: GPTConfig, tx, seed: int, shardings: TrainState) -> TrainState:
  """A fresh state whose parameters are those of `path` (`pretrained.load_params`), each array put
  straight into its shards (every process reads the file and keeps its own shards)."""
  loaded = pretrained.load_params(path, model_config)  # numpy, on the host
  params = jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index: x[index]),
                        loaded, shardings.params)
  return init_state(model_config, tx, seed, shardings, params=params)


def _restore(checkpointer, step: int, target: TrainState, older: list, workdir: str) -> TrainState:
  try:
    return checkpointer.restore(step, target)
  except GptjaxError as e:
    if 'do not match' in str(e) or 'mismatch' in str(e):
      hint = ('; its training state does not have the structure this config gives: resume with the '
              f'settings in {os.path.join(workdir, "config.json")}, or pass a new --workdir')
    elif older:
      hint = f'; pass --restore_step={older[-1]} to resume from the previous checkpoint'
    else:
      hint = '; no older checkpoint exists: pass a new --workdir to start fresh'
    raise GptjaxError(str(e) + hint) from None


def commit_workdir(setup: Setup, workdir: str, cpu_choices: dict | None = None) -> ckpt_lib.Checkpointer:
  """Writes what the checks passed: data/, config.json, tokenizer.json, provenance.jsonl (with
  cpu_choices, what `cpu.configure` chose at start-up); moves the checkpoints after the one resumed
  from to checkpoints.set_aside/ (process 0 writes; all wait). Returns the run's checkpoint writer
  (all processes write checkpoints together); close it."""
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  if jax.process_index() == 0:
    try:
      os.makedirs(workdir, exist_ok=True)  # (the lock has made it already, on process 0)
      if setup.corpus.staged:
        _move_data_in(setup.corpus.staged, os.path.join(workdir, 'data'))
      save_run_files(workdir, setup.config, setup.model_config, setup.corpus.tokenizer)
      if int(setup.state.step) < setup.config.train.max_steps:  # the code and machine of this start
        provenance.append(workdir, start_step=int(setup.state.step), cpu_choices=cpu_choices)
      if setup.newer:
        aside = os.path.join(workdir, 'checkpoints.set_aside')
        os.makedirs(aside, exist_ok=True)
        for s in setup.newer:
          os.replace(os.path.join(ckpt_dir, str(s)), os.path.join(aside, f'{s}-{int(time.time())}'))
    except OSError as e:
      raise os_error(e, f'cannot write {e.filename or workdir}') from None
  else:
    _discard(setup.corpus.staged)  # process 0's copy is the one kept
  parallel.sync('gptjax:workdir-committed')
  try:
    return ckpt_lib.Checkpointer(ckpt_dir, setup.config.train.keep_checkpoints)
  except OSError as e:
    raise os_error(e, f'cannot write {e.filename or ckpt_dir}') from None


def _move_data_in(staged: str, data_dir: str) -> None:
  """Moves the files of a fresh preparation into data_dir, replacing another corpus's files there.
  meta.json goes first out and last in: a move cut short leaves a data_dir no run takes as prepared.
  data_dir itself stays (it may be a mount point)."""
  os.makedirs(data_dir, exist_ok=True)
  new = sorted(os.listdir(staged), key=lambda name: name == 'meta.json')
  for name in ['meta.json'] + [n for n in os.listdir(data_dir) if n not in new and n != 'meta.json']:
    path = os.path.join(data_dir, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    elif os.path.lexists(path):
      os.remove(path)
  for name in new:
    shutil.move(os.path.join(staged, name), os.path.join(data_dir, name))
  os.rmdir(staged)


class Steps(NamedTuple):
  """The compiled calls of a run, for its layout."""
  train: Callable  # (state, tokens) -> (state, metrics [steps]): train_steps, state donated
  evaluate: Callable  # (params, tokens) -> (summed NLL, target count, correct predictions)
  batches: Callable  # (ids, first step, n steps, stream) -> this process's rows, placed for the call
  objective: objectives.Objective  # what train and evaluate score (next-token or masked-LM)


def build_steps(setup: Setup) -> Steps:
  """`train_steps` and `eval_step` compiled for the layout (pmap, or jit over the mesh), and the
  function that draws each call's batches: this process's rows only, placed on its devices."""
  layout, tc = setup.layout, setup.config.train
  model = GPT(setup.model_config)
  objective = objectives.for_run(tc, setup.corpus.tokenizer)
  step_fn = functools.partial(train_steps, model=model, tx=setup.tx, skip_nonfinite=tc.nan_policy == 'skip',
                              objective=objective, axis_name=layout.axis_name, grad_accum_steps=tc.grad_accum_steps)
  eval_fn = functools.partial(eval_step, model=model, objective=objective, axis_name=layout.axis_name)
  rows = layout.host_rows(tc.batch_size)

  def batches(ids, first_step: int, n_steps: int, stream: int):
    local = np.stack([data_lib.batch_at(ids, seed=setup.config.seed, step=s, batch_size=tc.batch_size,
                                        seq_len=tc.seq_len, stream=stream, rows=rows)
                      for s in range(first_step, first_step + n_steps)])  # [n_steps, rows, seq + 1]
    return layout.put_batch(local, tc.batch_size)

  return Steps(layout.compile_train(step_fn, setup.shardings),
               layout.compile_eval(eval_fn, setup.shardings.params), batches, objective)


class _StopRequest:
  """Remembers a SIGTERM/SIGINT so the loop can checkpoint at the next step boundary and exit."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGTERM last: once it is caught, both are
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: signals cannot be caught here
        pass
    return self

  def _handle(self, signum, frame):
    if self.signal is not None:  # a second signal: stop now
      signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
      raise KeyboardInterrupt
    self.signal = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class LogWindow:
  """The train losses since the last logged step, summed per call in float64. Checkpoints carry it,
  so the first log line after a resume is the mean an uninterrupted run logs there."""

  def __init__(self, loss_sum: float = 0.0, loss_count: int = 0):
    self.loss_sum, self.loss_count = loss_sum, loss_count

  @classmethod
  def from_dict(cls, d: dict | None) -> 'LogWindow':
    return cls(float(d['loss_sum']), int(d['loss_count'])) if d else cls()  # older checkpoints: none

  def to_dict(self) -> dict:
    return {'loss_sum': self.loss_sum, 'loss_count': self.loss_count}

  def add(self, losses: np.ndarray) -> None:
    self.loss_sum += float(np.sum(losses, dtype=np.float64))
    self.loss_count += len(losses)

  def mean(self) -> float:
    return self.loss_sum / self.loss_count if self.loss_count else float('nan')


class Preempted(Exception):
  """Training stopped at a signal after saving a checkpoint; rerun the same command to resume."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


def _next_boundary(step: int, tc: ml_collections.ConfigDict) -> int:
  """The end of the chunk starting at `step`: the next multiple of steps_per_call or of an event
  interval, or max_steps. Chunks fall on the same absolute grid in every run, so a resumed run
  compiles and executes exactly the calls an uninterrupted one does."""
  intervals = (tc.steps_per_call, tc.log_interval, tc.eval_interval, tc.checkpoint_interval)
  return min([tc.max_steps] + [(step // n + 1) * n for n in intervals])


def train_loop(setup: Setup, steps: Steps, checkpointer: ckpt_lib.Checkpointer, workdir: str,
               progress: bool = True) -> dict:
  """Runs the compiled steps from the set-up state to train.max_steps: logs, evaluates and
  checkpoints on the intervals, and at a signal to any process checkpoints and raises Preempted
  on all of them at the same step. Returns the last metrics."""
  config, layout = setup.config, setup.layout
  tc, corpus = config.train, setup.corpus
  lead = jax.process_index() == 0  # the one process that logs and writes metrics
  step = int(setup.state.step)
  quiet = lambda s: None
  log = (tqdm.write if progress else (lambda s: print(s, flush=True))) if lead else quiet
  log(f'{count_params(setup.state.params) / 1e6:.2f}M parameters, vocab {setup.model_config.vocab_size} '
      f'({corpus.tokenizer.kind}), {len(corpus.train):,} train / {len(corpus.val):,} val tokens, '
      f'{_describe(layout)}; '
      + (f'resuming from step {step}' if setup.start is not None else
         f'starting from the parameters of {tc.init_from}' if tc.init_from else 'starting from scratch'))
  state = layout.to_device(setup.state)
  eval_batches = steps.batches(corpus.val, 0, tc.eval_iters, data_lib.EVAL_STREAM) if tc.eval_iters else None
  window = setup.window

  def evaluate():
    """{'val_loss'} (mean NLL of the scored targets), and under mlm 'val_accuracy' (argmax = target)."""
    total, count, correct = (float(layout.read(x)) for x in steps.evaluate(state.params, eval_batches))
    result = {'val_loss': total / max(count, 1.0)}
    if steps.objective.kind == 'mlm':
      result['val_accuracy'] = correct / max(count, 1.0)
    return result

  def save(at_step):
    if at_step not in checkpointer.steps():  # with the log window, so a resume logs what this run would
      checkpointer.save(at_step, layout.to_global(state), metadata={'log_window': window.to_dict()})

  tokens_per_step = tc.batch_size * tc.seq_len
  peak_flops = hardware.total_peak_flops(layout.devices, setup.model_config.dtype)  # None: unknown (CPU)
  window_time, window_steps = 0.0, 0
  compiled_lengths = set()
  writer = bar = None
  try:
    writer = metrics_lib.MetricsWriter(workdir, resume_step=setup.start) if lead else None
    last = {}
    if step == 0 and tc.eval_iters:
      last = evaluate()
      if writer:
        writer.write(0, **last)
      log(f'step 0: val loss {last["val_loss"]:.4f}'
          + (f', val accuracy {last["val_accuracy"]:.4f}' if 'val_accuracy' in last else ''))
    if step >= tc.max_steps:
      log(f'{workdir} is already trained to step {step} (train.max_steps={tc.max_steps})')

    bar = tqdm(total=tc.max_steps, initial=step, disable=not (progress and lead), unit='step',
               dynamic_ncols=True)
    with _StopRequest() as stop:
      while step < tc.max_steps:
        end = _next_boundary(step, tc)
        t0 = time.perf_counter()
        batch = steps.batches(corpus.train, step, end - step, data_lib.TRAIN_STREAM)
        state, metrics = steps.train(state, batch)
        losses = layout.read(metrics['loss'])  # [steps]; waits for the call
        elapsed = time.perf_counter() - t0
        if end - step in compiled_lengths:  # the first call of a shape includes compilation
          window_time += elapsed
          window_steps += end - step
        compiled_lengths.add(end - step)
        if not np.isfinite(losses).all():
          bad = step + int(np.argmin(np.isfinite(losses))) + 1
          if tc.nan_policy == 'stop':
            kept = checkpointer.latest_step()
            raise GptjaxError(f'the loss is {losses[bad - step - 1]} at step {bad}: training stopped; the '
                              f'last good checkpoint (step {kept}) is kept; lower train.learning_rate or '
                              "set --config.train.nan_policy=skip")
          log(f'skipped {int((~np.isfinite(losses)).sum())} update(s) with a non-finite loss '
              f'before step {end}')
        window.add(losses[np.isfinite(losses)])
        step = end
        bar.update(len(losses))

        record = {}
        if step % tc.log_interval == 0 or step == tc.max_steps:
          record['train_loss'] = window.mean()
          record['lr'] = float(setup.schedule(step - 1))
          if window_time > 0:
            record.update(metrics_lib.throughput(window_steps * tokens_per_step, window_time, window_steps,
                                                 setup.model_config, tc.seq_len, peak_flops))
          window, window_time, window_steps = LogWindow(), 0.0, 0
        if tc.eval_iters and (step % tc.eval_interval == 0 or step == tc.max_steps):
          record.update(evaluate())
        if record:
          last.update(record)
          if writer:
            writer.write(step, **record)
          bar.set_postfix({k: f'{v:.4g}' for k, v in record.items() if k != 'lr' and v is not None})
          if 'val_loss' in record:
            log(f'step {step}: ' + ', '.join(f'{k} {v:.4g}' for k, v in record.items() if v is not None))
        if step % tc.checkpoint_interval == 0 or step == tc.max_steps:
          save(step)
        # Every process stops at the same step, whichever of them got the signal.
        signum = parallel.max_over_processes(stop.signal or 0)
        if signum and step < tc.max_steps:
          save(step)
          checkpointer.wait()
          raise Preempted(f'stopped by signal {signum} at step {step}; checkpoint saved in '
                          f'{checkpointer.directory}; run the same command again to resume', signum)
  finally:
    if bar is not None:
      bar.close()
    if writer:
      writer.close()
  last['step'] = step
  return last


def _describe(layout) -> str:
  n_proc = jax.process_count()
  where = f'{len(layout.devices)} device(s)' + (f' on {n_proc} hosts' if n_proc > 1 else '')
  if layout.strategy == 'pmap':
    return f'{where}, pmap'
  return f'{where}, mesh ' + ' x '.join(f'{a} {n}' for a, n in layout.mesh.shape.items())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, restore_step: int | None = None,
                       progress: bool = True, cpu_choices: dict | None = None) -> dict:
  """Trains config in workdir, resuming from its latest checkpoint; returns the last metrics.

  restore_step picks an older checkpoint to resume from (e.g. when the latest one is damaged); the
  checkpoints after it are moved to WORKDIR/checkpoints.set_aside/, not deleted. The run holds the
  workdir's lock throughout (gptjax/workdir.py; process 0 of a multi-host run): a second run on the
  same workdir is refused before it reads or writes anything there. cpu_choices (what `cpu.configure`
  chose at start-up) goes into the run record.
  """
  parallel.initialize()
  with _lock_on_process_0(workdir):
    setup = set_up(config, workdir, restore_step)
    try:
      with commit_workdir(setup, workdir, cpu_choices) as checkpointer:  # closing waits for the saves in flight
        return train_loop(setup, build_steps(setup), checkpointer, workdir, progress)
    finally:
      _discard(setup.corpus.staged)


@contextlib.contextmanager
def _lock_on_process_0(workdir: str):
  """The workdir's lock, taken by process 0, held for the block. Every process learns whether it was
  taken (a collective) before anything else: where process 0 is refused (a busy workdir, say), it
  reports why and every other process stops with one line, instead of waiting at the run's first
  collective until the distributed runtime times out (30 s and a traceback)."""
  with contextlib.ExitStack() as stack:
    refused = None
    if jax.process_index() == 0:
      try:
        stack.enter_context(workdir_lib.lock(workdir))
      except GptjaxError as e:
        refused = e
    if parallel.max_over_processes(int(refused is not None)):
      if refused is not None:
        raise refused
      raise GptjaxError(f'process 0 could not take the lock of {workdir} (its error says why); '
                        'this process stops too')
    yield


def main():
  """python -m gptjax.train [--config=configs/NAME.py] [--config.FIELD=VALUE ...] [--workdir=DIR]"""
  from absl import flags
  from ml_collections import config_flags

  from gptjax import cli, cpu
  from gptjax import config as default_config

  cli.define_config_flag('A config file defining get_config(); default: the embedded standard-library run.')
  flags.DEFINE_string('workdir', None, 'Run directory (default: runs/<config file name>).')
  flags.DEFINE_integer('restore_step', None,
                       'Resume from this checkpoint step instead of the latest (e.g. if the latest is damaged).')
  flags.DEFINE_bool('progress', True, 'Show a progress bar.')
  cli.define_common()
  cpu.define_flag()

  def run(argv):
    cli.no_extra_arguments(argv)
    f = flags.FLAGS
    config_path = config_flags.get_config_filename(f['config'])
    if not os.path.isfile(config_path):
      raise GptjaxError(f'config file {config_path} does not exist; pass --config=configs/NAME.py')
    name = 'default' if os.path.samefile(config_path, default_config.__file__) else \
        os.path.splitext(os.path.basename(config_path))[0]
    workdir = f.workdir or os.path.join('runs', name)
    m, d = f.config.model, f.config.data
    choices = cpu.configure(batch_size=f.config.train.batch_size, train_devices=f.config.train.devices,
                            dropout=m.dropout, auto=f.cpu_auto, strategy=f.config.parallel.strategy,
                            state_bytes=cpu.state_bytes_estimate(m, d.tokenizer, d.bpe_vocab_size),
                            log=(lambda s: print(s, flush=True)) if cpu.is_lead_process(os.environ)
                            else (lambda s: None))  # only process 0 reports
    try:
      result = train_and_evaluate(f.config, workdir, restore_step=f.restore_step, progress=f.progress,
                                  cpu_choices=choices.to_dict())
    except Preempted as e:
      print(str(e), file=sys.stderr)
      sys.exit(128 + e.signum)  # the shell's convention for "ended by signal N"
    shown = ', '.join(f'{k} {v:.4g}' for k, v in result.items() if k != 'step' and v is not None)
    if jax.process_index() == 0:
      print(f'done: step {result["step"]}' + (f', {shown}' if shown else '') + f'; workdir {workdir}')

  cli.run(run)


if __name__ == '__main__':
  main()
