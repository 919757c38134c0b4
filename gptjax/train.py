"""Training: the state, the pure step functions, and the loop that drives them.

    train_and_evaluate(config, workdir)
      data  ──batch_at(seed, step)──▶ [steps, batch, seq + 1] ──shard──▶ p_train_steps (pmap, donated state)
      state ──every eval_interval──▶ p_eval ──▶ val_loss
            ──every checkpoint_interval, at the end, on SIGTERM/SIGINT──▶ orbax checkpoint
      metrics ──▶ WORKDIR/metrics.jsonl, TensorBoard, progress bar

`train_step` is one optimizer update; `train_steps` scans it over several batches so one compiled
call does `steps_per_call` updates (per-call dispatch is a large share of a small model's step on
CPU). Both are pure: state in, state out.

Run: python -m gptjax.train --config=configs/shakespeare_char.py --workdir=runs/shakespeare
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from gptjax import checkpoint as ckpt_lib
from gptjax import config as config_lib
from gptjax import data as data_lib
from gptjax import metrics as metrics_lib
from gptjax import accumulate, hardware, objectives, parallel, pretrained, provenance
from gptjax import workdir as workdir_lib
from gptjax.errors import GptjaxError, os_error
from gptjax.model import EXECUTION_FIELDS, GPT, GPTConfig, count_params

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


def init_state(model_config: GPTConfig, tx: optax.GradientTransformation, seed: int) -> TrainState:
  """Fresh parameters and optimizer state, a pure function of (model_config, seed)."""

  @jax.jit
  def init(key):
    params_rng, dropout_rng = jax.random.split(key)
    tokens = jnp.zeros((1, min(model_config.block_size, 8)), jnp.int32)
    params = GPT(model_config).init(params_rng, tokens)['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=dropout_rng)

  return init(jax.random.PRNGKey(seed))


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


def load_data(config: ml_collections.ConfigDict, workdir: str):
  """(tokenizer, train ids, val ids, write) for config.data; `write()` stores the prepared files in
  WORKDIR/data, deferred so that a run refused later leaves the workdir as it was."""
  d = config.data
  if d.path:
    raw, source = data_lib.read_corpus(d.path, d.url), os.path.abspath(d.path)
  else:
    raw, source = data_lib.stdlib_corpus(d.max_bytes), f'python-stdlib-{sys.version.split()[0]}'
  if not raw:
    raise GptjaxError(f'data file {d.path} is empty; give a text file with some content')
  digest = hashlib.sha256(raw).hexdigest()
  data_dir = os.path.join(workdir, 'data')
  spec = data_lib.tokenizer_spec(d.tokenizer, bpe_vocab_size=d.bpe_vocab_size, tokenizer_path=d.tokenizer_path)
  meta = data_lib.find_prepared(data_dir, digest, spec, d.val_fraction)
  if meta is not None:
    tokenizer = data_lib.tokenizer_from_dict(meta['tokenizer'])
    splits = {s: data_lib.load_split(data_dir, s) for s in ('train', 'val')}
    write = lambda: None
  else:
    tokenizer, ids = data_lib.encode_corpus(raw, spec, source, train_fraction=1 - d.val_fraction)
    n_val = int(round(len(ids) * d.val_fraction))
    splits = {'train': ids[:len(ids) - n_val], 'val': ids[len(ids) - n_val:]}
    write = lambda: data_lib.write_prepared(data_dir, tokenizer, ids, val_fraction=d.val_fraction,
                                            source=source, digest=digest, spec=spec)
  need = config.train.seq_len + 1
  for name, split in splits.items():
    if len(split) < need:
      raise GptjaxError(f'the {name} split of {source} has {len(split)} tokens, fewer than '
                        f'train.seq_len + 1 = {need}; use more text, a smaller --config.train.seq_len '
                        'or a different --config.data.val_fraction')
  if config.train.objective == 'mlm':  # the run's tokenizer has a [MASK] token; the data files never hold it
    return data_lib.with_mask_token(tokenizer), splits['train'], splits['val'], write
  return tokenizer, splits['train'], splits['val'], write


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
# The loop


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, restore_step: int | None = None,
                       progress: bool = True) -> dict:
  """Trains config in workdir, resuming from its latest checkpoint; returns the last metrics.

  restore_step picks an older checkpoint to resume from (e.g. when the latest one is damaged); the
  checkpoints after it are moved to WORKDIR/checkpoints.set_aside/, not deleted. The run holds the
  workdir's lock throughout (gptjax/workdir.py): a second run on the same workdir is refused before
  it reads or writes anything there.
  """
  parallel.initialize()
  with workdir_lib.lock(workdir, enabled=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir, restore_step=restore_step, progress=progress)


def _train_and_evaluate(config, workdir, *, restore_step, progress) -> dict:
  devices = parallel.local_devices(config.train.devices)
  n_dev, n_proc, proc = len(devices), jax.process_count(), jax.process_index()
  config_lib.validate(config, n_dev * n_proc)
  config = config_lib.resolve(config)
  tc = config.train

  tokenizer, train_ids, val_ids, write_data = load_data(config, workdir)
  model_config = (pretrained.model_config(tc.init_from, config, tokenizer) if tc.init_from
                  else config_lib.model_config(config, tokenizer.vocab_size))
  checkpointer_dir = os.path.join(workdir, 'checkpoints')
  check_resumable(workdir, model_config, tokenizer)

  model = GPT(model_config)
  tx, schedule = make_optimizer(tc)
  state = init_state(model_config, tx, config.seed)
  start, newer, window = None, [], LogWindow()
  if os.path.isdir(checkpointer_dir):
    with ckpt_lib.Checkpointer(checkpointer_dir, create=False) as reader:
      steps = reader.steps()
      if restore_step is not None and restore_step not in steps:
        raise GptjaxError(f'no checkpoint at step {restore_step} in {checkpointer_dir}; there are {steps}')
      start = restore_step if restore_step is not None else (steps[-1] if steps else None)
      if start is not None:
        try:
          state = reader.restore(start, state)
          window = LogWindow.from_dict(reader.metadata(start).get('log_window'))
        except GptjaxError as e:
          older = [s for s in steps if s < start]
          if 'do not match' in str(e) or 'mismatch' in str(e):
            hint = ('; its training state does not have the structure this config gives: resume with the '
                    f'settings in {os.path.join(workdir, "config.json")}, or pass a new --workdir')
          elif older:
            hint = f'; pass --restore_step={older[-1]} to resume from the previous checkpoint'
          else:
            hint = '; no older checkpoint exists: pass a new --workdir to start fresh'
          raise GptjaxError(str(e) + hint) from None
        newer = [s for s in steps if s > start]
  if start is None and tc.init_from:  # parameters only: the optimizer and the step start fresh
    params = pretrained.load_params(tc.init_from, model_config)
    state = state.replace(params=params, opt_state=tx.init(params))
  # Everything is checked: from here on the run writes to its workdir (the lock made it exist).
  try:
    write_data()
    save_run_files(workdir, config, model_config, tokenizer)
    if proc == 0 and int(state.step) < tc.max_steps:  # the code and machine of this start (provenance.jsonl)
      provenance.append(workdir, start_step=int(state.step))
    if newer:  # resuming from an older step: keep the later checkpoints, out of the way
      aside = os.path.join(workdir, 'checkpoints.set_aside')
      os.makedirs(aside, exist_ok=True)
      for s in newer:
        os.replace(os.path.join(checkpointer_dir, str(s)), os.path.join(aside, f'{s}-{int(time.time())}'))
  except OSError as e:
    raise os_error(e, f'cannot write {e.filename or workdir}') from None

  step = int(state.step)
  log = tqdm.write if progress else (lambda s: print(s, flush=True))
  n_params = count_params(state.params)
  log(f'{n_params / 1e6:.2f}M parameters, vocab {model_config.vocab_size} ({tokenizer.kind}), '
      f'{len(train_ids):,} train / {len(val_ids):,} val tokens, {n_dev} device(s) x {n_proc} host(s); '
      + (f'resuming from step {step}' if start is not None else
         f'starting from the parameters of {tc.init_from}' if tc.init_from else 'starting from scratch'))

  objective = objectives.for_run(tc, tokenizer)
  step_fn = functools.partial(train_steps, model=model, tx=tx, skip_nonfinite=tc.nan_policy == 'skip',
                              objective=objective, grad_accum_steps=tc.grad_accum_steps)
  p_train = jax.pmap(step_fn, axis_name=parallel.AXIS, devices=devices, donate_argnums=(0,))
  p_eval = jax.pmap(functools.partial(eval_step, model=model, objective=objective), axis_name=parallel.AXIS,
                    devices=devices)
  p_state = parallel.replicate(state, devices)
  del state

  def host_batch(ids, first_step, n_steps, stream):
    """This host's rows of global batches first_step .. first_step + n_steps - 1, device-sharded."""
    glob = np.stack([data_lib.batch_at(ids, seed=config.seed, step=s, batch_size=tc.batch_size,
                                       seq_len=tc.seq_len, stream=stream)
                     for s in range(first_step, first_step + n_steps)])
    return parallel.shard(data_lib.host_rows(glob, proc, n_proc), n_dev, axis=1)

  eval_batches = host_batch(val_ids, 0, tc.eval_iters, data_lib.EVAL_STREAM) if tc.eval_iters else None

  def evaluate():
    """{'val_loss'} (mean NLL of the scored targets), and under mlm 'val_accuracy' (argmax = target)."""
    total, count, correct = (float(x[0]) for x in p_eval(p_state.params, eval_batches))
    result = {'val_loss': total / max(count, 1.0)}
    if objective.kind == 'mlm':
      result['val_accuracy'] = correct / max(count, 1.0)
    return result

  def save(at_step):
    if at_step not in checkpointer.steps():  # with the log window, so a resume logs what this run would
      checkpointer.save(at_step, jax.device_get(parallel.unreplicate(p_state)),
                        metadata={'log_window': window.to_dict()})

  tokens_per_step = tc.batch_size * tc.seq_len
  peak_flops = hardware.total_peak_flops(devices * n_proc, model_config.dtype)  # None: unknown (CPU)
  window_time, window_steps = 0.0, 0
  compiled_lengths = set()
  writer = checkpointer = bar = None
  try:
    writer = metrics_lib.MetricsWriter(workdir, resume_step=start) if proc == 0 else None
    try:
      checkpointer = ckpt_lib.Checkpointer(checkpointer_dir, tc.keep_checkpoints)
    except OSError as e:
      raise os_error(e, f'cannot write {e.filename or checkpointer_dir}') from None
    last = {}
    if step == 0 and tc.eval_iters:
      last = evaluate()
      if writer:
        writer.write(0, **last)
      log(f'step 0: val loss {last["val_loss"]:.4f}'
          + (f', val accuracy {last["val_accuracy"]:.4f}' if 'val_accuracy' in last else ''))
    if step >= tc.max_steps:
      log(f'{workdir} is already trained to step {step} (train.max_steps={tc.max_steps})')

    bar = tqdm(total=tc.max_steps, initial=step, disable=not progress, unit='step', dynamic_ncols=True)
    with _StopRequest() as stop:
      while step < tc.max_steps:
        end = _next_boundary(step, tc)
        t0 = time.perf_counter()
        batch = host_batch(train_ids, step, end - step, data_lib.TRAIN_STREAM)
        p_state, metrics = p_train(p_state, batch)
        losses = np.asarray(metrics['loss'][0])  # [steps]; waits for the call
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
          record['lr'] = float(schedule(step - 1))
          if window_time > 0:
            record.update(metrics_lib.throughput(window_steps * tokens_per_step, window_time, window_steps,
                                                 model_config, tc.seq_len, peak_flops))
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
        if stop.signal is not None and step < tc.max_steps:
          save(step)
          checkpointer.wait()
          raise Preempted(f'stopped by signal {stop.signal} at step {step}; checkpoint saved in '
                          f'{checkpointer_dir}; run the same command again to resume', stop.signal)
  finally:
    failing = sys.exc_info()[0] is not None  # then that error is the one to report, not a later one
    if bar is not None:
      bar.close()
    if checkpointer is not None:
      checkpointer.close(quiet=failing)
    if writer:
      writer.close()
  last['step'] = step
  return last


def main():
  """python -m gptjax.train [--config=configs/NAME.py] [--config.FIELD=VALUE ...] [--workdir=DIR]"""
  from absl import flags
  from ml_collections import config_flags

  from gptjax import cli
  from gptjax import config as default_config

  cli.define_config_flag('A config file defining get_config(); default: the embedded standard-library run.')
  flags.DEFINE_string('workdir', None, 'Run directory (default: runs/<config file name>).')
  flags.DEFINE_integer('restore_step', None,
                       'Resume from this checkpoint step instead of the latest (e.g. if the latest is damaged).')
  flags.DEFINE_bool('progress', True, 'Show a progress bar.')
  cli.define_common()

  def run(argv):
    cli.no_extra_arguments(argv)
    f = flags.FLAGS
    config_path = config_flags.get_config_filename(f['config'])
    if not os.path.isfile(config_path):
      raise GptjaxError(f'config file {config_path} does not exist; pass --config=configs/NAME.py')
    name = 'default' if os.path.samefile(config_path, default_config.__file__) else \
        os.path.splitext(os.path.basename(config_path))[0]
    workdir = f.workdir or os.path.join('runs', name)
    try:
      result = train_and_evaluate(f.config, workdir, restore_step=f.restore_step, progress=f.progress)
    except Preempted as e:
      print(str(e), file=sys.stderr)
      sys.exit(128 + e.signum)  # the shell's convention for "ended by signal N"
    shown = ', '.join(f'{k} {v:.4g}' for k, v in result.items() if k != 'step' and v is not None)
    print(f'done: step {result["step"]}' + (f', {shown}' if shown else '') + f'; workdir {workdir}')

  cli.run(run)


if __name__ == '__main__':
  main()
