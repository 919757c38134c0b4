"""Evaluating a model on a whole text: mean loss, perplexity, bits per byte and top-1 accuracy.

    token ids t_0 .. t_{n-1} ──windows of `context` positions──▶ [batch, context + 1] ids + [batch, context] weights
        ──jit: summed -log P(t_i | the window before it), per row──▶ float64 sums on the host ──▶ EvalResult

Every token after the first is scored exactly once. With the default stride (= context) the windows
do not overlap: window k reads t_{kC} .. t_{kC+C-1} and predicts t_{kC+1} .. t_{kC+C}, so the
first targets of a window see little context. A smaller stride S gives every scored token at least
C - S tokens of context, at C / S times the compute: window k starts at kS and scores only the
targets no earlier window scored (its last S). The last window is usually partial; its missing
positions are padding with weight 0, so every call has the same shape and one program is compiled
per (model, batch_size, context), however long the text.

Bits per byte = total nats / (ln 2 * UTF-8 bytes of the scored tokens) measures the same thing
whatever the tokenizer: byte-, char- and subword-level runs compare on it, not on loss per token.

A masked-LM run (train.objective='mlm', bidirectional) is scored on masked tokens instead: each
window's tokens get BERT's corruption with the fixed evaluation seed (window k with
fold_in(EVAL_CORRUPTION_SEED, k), whatever the batch size), and loss and accuracy are over the picked
positions among those the window scores (about mask_prob of the text; no bits per byte). Its windows
never run past the text (the last one ends at the text's end), since a bidirectional model would see
the padding.

    result = evaluate(params, model_config, ids, tokenizer=tokenizer)   # EvalResult
    result.loss, result.perplexity, result.bits_per_byte, result.tokens, result.bytes

Run: python -m gptjax.evaluate --workdir=DIR [--data=FILE] [--step=N] [--batch_size=B]
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from gptjax import data as data_lib
from gptjax import objectives
from gptjax.data import MASK_TOKEN
from gptjax.errors import GptjaxError
from gptjax.model import GPT, GPTConfig


@dataclasses.dataclass(frozen=True)
class EvalResult:
  loss: float  # mean nats per scored token
  perplexity: float  # exp(loss)
  bits_per_byte: float | None  # nats / (ln 2 * bytes); None when no tokenizer was given
  accuracy: float  # fraction of scored tokens that are the model's most likely next (or masked) token
  tokens: int  # tokens scored: every token of the text but the first (mlm: the masked ones among them)
  bytes: int | None  # UTF-8 bytes of the scored tokens
  nats: float  # total -log P over the scored tokens
  context: int  # positions per window
  stride: int  # positions between window starts
  windows: int

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Objectives: how a batch of windows is scored. Each one maps
#   (params, tokens [batch, context + 1] int32, weights [batch, context] float32,
#    windows [batch] int32, *, config, objective)
#   -> {'nll': [batch] summed nats over the scored targets, 'correct': [batch] top-1 hits,
#       'count': [batch] scored targets}
# weights[b, j] is 1 where target j of row b (token j + 1 of the window) may be scored (0 = padding
# or scored by another window); windows[b] is the row's window index in the text.


def _sums(logits, targets, scored) -> dict:
  nll = jnp.where(scored, objectives.token_nll(logits, targets), 0.0)  # padding may be any value
  correct = scored & (jnp.argmax(logits, axis=-1) == targets)
  return {'nll': jnp.sum(nll, axis=-1), 'correct': jnp.sum(correct, axis=-1, dtype=jnp.int32),
          'count': jnp.sum(scored, axis=-1, dtype=jnp.int32)}


@functools.partial(jax.jit, static_argnames=('config', 'objective'))
def next_token_sums(params, tokens: jax.Array, weights: jax.Array, windows: jax.Array | None = None, *,
                    config: GPTConfig, objective: objectives.Objective = objectives.NEXT_TOKEN) -> dict:
  """Summed -log P(t_{i+1} | t_<=i) and top-1 hits per row, over the weighted targets."""
  inputs, targets = objectives.next_token_split(tokens)
  logits = GPT(config).apply({'params': params}, inputs)  # [batch, context, vocab] float32
  return _sums(logits, targets, weights > 0)


@functools.partial(jax.jit, static_argnames=('config', 'objective'))
def masked_token_sums(params, tokens: jax.Array, weights: jax.Array, windows: jax.Array, *,
                      config: GPTConfig, objective: objectives.Objective) -> dict:
  """Summed -log P(original token | the corrupted window) and top-1 hits per row, over the positions
  BERT's corruption picks among the weighted ones. A window is its `context` tokens after the first
  (the next-token targets, so the weights line up); window k is corrupted with the fixed key
  fold_in(EVAL_CORRUPTION_SEED, k)."""
  targets = tokens[:, 1:]
  key = jax.random.PRNGKey(objectives.EVAL_CORRUPTION_SEED)
  inputs, picked = objectives.corrupt(objective, targets, key, windows)
  logits = GPT(config).apply({'params': params}, inputs)
  return _sums(logits, targets, (weights > 0) & (picked > 0))


OBJECTIVES = {'next_token': next_token_sums, 'mlm': masked_token_sums}


# ---------------------------------------------------------------------------------------------
# Windows


def num_windows(n_tokens: int, context: int, stride: int) -> int:
  """Windows needed to score tokens 1 .. n_tokens - 1 once each."""
  n_targets = n_tokens - 1
  return 1 if n_targets <= context else 1 + -(-(n_targets - context) // stride)


def window_batch(tokens: np.ndarray, first_window: int, batch_size: int, context: int,
                 stride: int, within_text: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Windows first_window .. first_window + batch_size - 1 as (ids [batch, context + 1] int32,
  weights [batch, context] float32). Positions past the text, and rows past the last window, are
  padding (id 0, weight 0). within_text: the last window is moved back to end at the text's end
  (it still scores only the targets no earlier window scored), so no window holds padding."""
  n = len(tokens)
  k = first_window + np.arange(batch_size)  # [batch] window index
  real = k < num_windows(n, context, stride)
  start = np.where(real, np.minimum(k * stride, max(n - 1 - context, 0)) if within_text else k * stride, 0)
  index = start[:, None] + np.arange(context + 1)[None, :]  # [batch, context + 1] token index
  ids = np.where(index < n, np.asarray(tokens[np.minimum(index, n - 1)]), 0).astype(np.int32)
  first_scored = np.where(k == 0, 1, (k - 1) * stride + context + 1)  # after the previous window's end
  target = index[:, 1:]
  weights = (target >= first_scored[:, None]) & (target < n) & real[:, None]
  return ids, weights.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The library entry


def evaluate(params, config: GPTConfig, tokens, *, tokenizer: data_lib.Tokenizer | None = None,
             context: int | None = None, stride: int | None = None, batch_size: int = 16,
             objective: str | objectives.Objective = 'next_token', progress: bool = False) -> EvalResult:
  """Scores every token of `tokens` (1-D ids) after the first exactly once; see the module docstring.

  params: the model's parameters; config: its GPTConfig. tokenizer: the one that made the ids, for
  the byte count (bits per byte is None without it). context: positions per window (default
  config.block_size; use the run's train.seq_len if it trained on shorter windows). stride:
  positions between windows (default context: no overlap). batch_size: windows per call.
  progress: a tqdm bar on stderr when there is more than one batch. objective: 'next_token', or
  'mlm' / an objectives.Objective for a masked-LM model ('mlm' takes the [MASK] id from tokenizer).
  """
  if not isinstance(tokens, np.ndarray):  # a memmap of a prepared split stays one (read as needed)
    tokens = np.asarray(tokens)
  context = config.block_size if context is None else context
  stride = context if stride is None else stride
  if tokens.ndim != 1:
    raise GptjaxError(f'tokens must be a 1-D sequence of ids, got shape {tokens.shape}')
  if len(tokens) < 2:
    raise GptjaxError(f'the text has {len(tokens)} token(s): evaluation needs at least 2 (a token and '
                      'the one that follows it)')
  if not 1 <= context <= config.block_size:
    raise GptjaxError(f'context={context} must be between 1 and the {config.block_size} positions the '
                      'model supports')
  if not 1 <= stride <= context:
    raise GptjaxError(f'stride={stride} must be between 1 and context={context}')
  if batch_size < 1:
    raise GptjaxError(f'batch_size={batch_size} must be >= 1')
  if not isinstance(objective, objectives.Objective):
    if objective not in OBJECTIVES:
      raise GptjaxError(f'objective={objective!r} must be one of {sorted(OBJECTIVES)}')
    if objective == 'mlm' and MASK_TOKEN not in getattr(tokenizer, 'special_ids', {}):
      raise GptjaxError(f"objective='mlm' needs the run's tokenizer, with its {MASK_TOKEN} token")
    objective = objectives.for_run({'objective': objective}, tokenizer)
  if objective.kind == 'next_token' and not config.causal:
    raise GptjaxError('the model is bidirectional (causal=False): it sees the token it would predict, '
                      'so next-token loss means nothing for it; score it with objective=mlm')
  if objective.kind == 'mlm':
    if config.causal:
      raise GptjaxError('masked-token scores need a bidirectional model (causal=False); this one is causal')
    context = min(context, len(tokens) - 1)  # whole windows: a bidirectional model would see padding
  low, high = int(tokens.min()), int(tokens.max())
  if low < 0 or high >= config.vocab_size:
    raise GptjaxError(f'token ids must be in [0, {config.vocab_size}) for this model; got {low} .. {high}')

  score = functools.partial(OBJECTIVES[objective.kind], config=config, objective=objective)
  params = jax.device_put(params)  # once, not on every call
  n_windows = num_windows(len(tokens), context, stride)
  n_batches = -(-n_windows // batch_size)
  nats, correct, count = 0.0, 0, 0  # float64 / exact sums on the host
  with tqdm(total=n_batches, unit='batch', desc='evaluate', leave=False,
            disable=not progress or n_batches <= 1, dynamic_ncols=True) as bar:
    previous = None  # the last call's output, read while the next call runs
    for b in range(n_batches + 1):
      windows = np.arange(b * batch_size, (b + 1) * batch_size, dtype=np.int32)
      out = score(params, *window_batch(tokens, b * batch_size, batch_size, context, stride,
                                        within_text=objective.kind == 'mlm'), windows) \
          if b < n_batches else None
      if previous is not None:
        sums = jax.device_get(previous)
        nats += float(np.sum(sums['nll'], dtype=np.float64))
        correct += int(np.sum(sums['correct']))
        count += int(np.sum(sums['count']))
        bar.update(1)
      previous = out

  n_scored = count  # every token but the first; under mlm the masked ones among them
  loss = nats / max(n_scored, 1)
  n_bytes = tokenizer.num_bytes(tokens[1:]) if tokenizer is not None and objective.kind == 'next_token' else None
  return EvalResult(
      loss=loss, perplexity=math.exp(loss) if loss < 700 else math.inf,
      bits_per_byte=nats / (math.log(2) * n_bytes) if n_bytes else None,
      accuracy=correct / max(n_scored, 1), tokens=n_scored, bytes=n_bytes, nats=nats, context=context,
      stride=stride, windows=n_windows)


# ---------------------------------------------------------------------------------------------
# A run's text


def read_file(path: str) -> bytes:
  """The bytes of a text file to evaluate on; a one-line GptjaxError if there is none."""
  if not os.path.isfile(path):
    what = 'is a directory' if os.path.isdir(path) else 'does not exist'
    raise GptjaxError(f'data file {path} {what}; pass --data=FILE with a text file')
  with open(path, 'rb') as f:
    raw = f.read()
  if not raw:
    raise GptjaxError(f'data file {path} is empty; give a text file with some content')
  return raw


def encode_bytes(tokenizer: data_lib.Tokenizer, raw: bytes, source: str) -> np.ndarray:
  """The ids of a file's bytes under the run's tokenizer; a one-line GptjaxError naming `source` if
  it cannot be encoded (not UTF-8, or characters outside a char tokenizer's vocabulary)."""
  if tokenizer.kind == 'byte':
    return tokenizer.encode(raw)
  try:
    text = raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise GptjaxError(f"{source} is not UTF-8 text (byte {e.start}); the run's {tokenizer.kind} tokenizer "
                      'reads UTF-8 text') from None
  try:
    return tokenizer.encode(text)
  except GptjaxError as e:
    raise GptjaxError(f"{source} cannot be encoded with the run's {tokenizer.kind} tokenizer: {e}") from None


def evaluate_run(workdir: str, *, data: str | None = None, split: str = 'val', step: int | None = None,
                 batch_size: int = 16, context: int | None = None, stride: int | None = None,
                 progress: bool = False) -> dict:
  """Evaluates the run in workdir (checkpoint `step`, default the latest) on a text file, or on a
  split of the run's own data (WORKDIR/data). context defaults to the run's train.seq_len.

  Returns EvalResult.to_dict() plus workdir, step, data (what was scored) and tokenizer.
  """
  from gptjax.run import load_run  # restores the parameters of a run's checkpoint

  if data is None and split not in ('train', 'val'):
    raise GptjaxError(f"split={split!r} must be 'train' or 'val'")
  ids = None
  tokenizer_path = os.path.join(workdir, 'tokenizer.json')
  if data is not None and os.path.isfile(tokenizer_path):  # a text that cannot be encoded fails before
    ids = encode_bytes(data_lib.load_tokenizer(tokenizer_path), read_file(data), data)  # the restore
  params, model_config, tokenizer, step = load_run(workdir, step)
  if data is not None:
    ids = encode_bytes(tokenizer, read_file(data), data) if ids is None else ids
    source = os.path.abspath(data)
  else:
    data_dir = os.path.join(workdir, 'data')
    if not os.path.exists(os.path.join(data_dir, 'meta.json')):
      raise GptjaxError(f'{data_dir} holds no prepared data; pass --data=FILE to evaluate on a text file')
    ids, source = data_lib.load_split(data_dir, split), os.path.abspath(os.path.join(data_dir, f'{split}.bin'))
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    train_config = json.load(f).get('train', {})
  if context is None:
    context = min(train_config.get('seq_len') or model_config.block_size, model_config.block_size)
  objective = objectives.for_run(train_config, tokenizer)  # mlm runs: masked-token loss and accuracy
  result = evaluate(params, model_config, ids, tokenizer=tokenizer, context=context, stride=stride,
                    batch_size=batch_size, objective=objective, progress=progress)
  record = {'workdir': os.path.abspath(workdir), 'step': step, 'data': source, 'tokenizer': tokenizer.kind,
            **result.to_dict()}
  if objective.kind == 'mlm':
    record['objective'] = 'mlm'
  return record


def summary(record: dict) -> str:
  """One readable line for an evaluate_run record."""
  has_bytes = record['bytes'] is not None
  bpb = f', {record["bits_per_byte"]:.4f} bits/byte' if has_bytes else ''
  n_bytes = f'{record["bytes"]:,} bytes; ' if has_bytes else ''
  what = 'masked tokens' if record.get('objective') == 'mlm' else 'tokens'
  return (f'step {record["step"]} on {record["data"]}: loss {record["loss"]:.4f} nats/token, perplexity '
          f'{record["perplexity"]:.3f}{bpb}, accuracy {100 * record["accuracy"]:.2f}% over '
          f'{record["tokens"]:,} {what} ({n_bytes}context {record["context"]}, stride {record["stride"]})')


def main():
  """python -m gptjax.evaluate --workdir=DIR [--data=FILE | --split=val] [--step=N] [--batch_size=B]"""
  from absl import flags

  from gptjax import cli

  flags.DEFINE_string('workdir', None, 'Run directory (config.json, tokenizer.json, checkpoints/).')
  flags.DEFINE_string('data', None, "A text file to evaluate on (default: the run's own --split).")
  flags.DEFINE_enum('split', 'val', ['val', 'train'], "Split of the run's data (WORKDIR/data) when --data "
                    'is not given.')
  flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate (default: the latest).')
  flags.DEFINE_integer('batch_size', 16, 'Windows per compiled call.')
  flags.DEFINE_integer('context', None, "Positions per window (default: the run's train.seq_len).")
  flags.DEFINE_integer('stride', None, 'Positions between window starts (default: --context, no overlap); '
                       'smaller gives each scored token more context at context/stride times the compute.')
  flags.DEFINE_bool('progress', True, 'Show a progress bar on stderr for long texts.')
  cli.define_common()

  def run(argv):
    cli.no_extra_arguments(argv)
    f = flags.FLAGS
    if not f.workdir:
      raise GptjaxError('--workdir is required: the run directory to evaluate')
    if f.data is not None and f['split'].present:
      raise GptjaxError('give --data=FILE or --split, not both')
    record = evaluate_run(f.workdir, data=f.data, split=f.split, step=f.step, batch_size=f.batch_size,
                          context=f.context, stride=f.stride, progress=f.progress)
    print(json.dumps(record), flush=True)
    print(summary(record), file=sys.stderr)

  cli.run(run)


if __name__ == '__main__':
  main()
