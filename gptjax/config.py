"""The default configuration, and the checks every configuration passes before a run starts.

Config files under configs/ define `get_config() -> ml_collections.ConfigDict`; any field can be
set on the command line (`--config.model.n_layer=4`). This file is itself a config file: with no
--config the CLI loads it, and it trains a byte-level model on the Python standard library's
sources, which ship with every Python, so it runs offline anywhere in a couple of minutes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from typing import TYPE_CHECKING

from gptjax import attention, parallel
from gptjax.errors import GptjaxError
from gptjax.model import GPTConfig

if TYPE_CHECKING:
  import ml_collections


def get_config() -> ml_collections.ConfigDict:
  import ml_collections  # here, not at the top: the library imports without it (experiments/gpu_run.py)
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 0  # 0: the tokenizer's vocabulary size; larger values pad the table
  c.model.block_size = 128  # the positions the model supports
  c.model.n_layer = 4
  c.model.n_head = 4
  c.model.n_kv_head = 0  # 0: same as n_head
  c.model.n_embd = 128
  c.model.dropout = 0.0
  c.model.bias = True
  c.model.head_bias = True  # b_O in the output head (where bias is on); GPT-2 has none
  c.model.tie_embeddings = False
  c.model.pos_encoding = 'learned'  # or 'sinusoidal', or 'rope' (rotary, applied to q and k)
  c.model.rope_theta = 10000.0  # RoPE's base wavelength
  c.model.norm = 'layernorm'  # or 'rmsnorm'
  c.model.mlp = 'gelu'  # or 'swiglu'
  c.model.mlp_hidden = 0  # MLP hidden width; 0: 4 * n_embd for gelu, 8/3 * n_embd (to a multiple of 8) for swiglu
  c.model.qk_norm = False  # RMSNorm of each head's queries and keys
  c.model.causal = True  # False (bidirectional) goes with train.objective='mlm'
  c.model.dtype = 'float32'  # compute dtype; 'bfloat16': mixed precision (float32 params, optimizer, logits)
  c.model.param_dtype = 'float32'
  c.model.remat = 'none'  # recompute block activations in the backward pass: 'full', 'dots_saveable', ...
  c.model.attention_impl = 'einsum'  # or 'xla' / 'cudnn' (jax.nn.dot_product_attention: gptjax/attention.py)

  c.data = ml_collections.ConfigDict()
  c.data.path = ''  # a text file; '' means the Python standard library's .py sources
  c.data.url = ''  # where to download data.path from if it is missing ('' = never download)
  c.data.tokenizer = 'byte'  # 'byte' (UTF-8 bytes, 256 ids), 'char' (characters of the text),
  # 'bpe' (a byte-level BPE trained on the training split) or 'gpt2' (GPT-2's, from tokenizer_path)
  c.data.bpe_vocab_size = 4096  # ids of the trained 'bpe' tokenizer: 256 bytes, <|endoftext|>, merges
  c.data.tokenizer_path = ''  # for 'gpt2': the directory with vocab.json + merges.txt (or tokenizer.json)
  c.data.val_fraction = 0.1  # the last 10% of the tokens are the validation split
  c.data.max_bytes = 4_000_000  # only for the standard-library corpus

  c.train = ml_collections.ConfigDict()
  c.train.objective = 'next_token'  # or 'mlm': BERT's masked-LM (needs model.causal=False)
  c.train.mask_prob = 0.15  # mlm: the fraction of positions picked (80% [MASK], 10% random, 10% kept)
  c.train.seq_len = 0  # training window; 0: model.block_size
  c.train.batch_size = 16  # global batch: split over all devices of all hosts
  c.train.grad_accum_steps = 1  # compute each step's gradient over this many micro-batches of the batch, in turn
  c.train.max_steps = 1000
  c.train.learning_rate = 1e-3
  c.train.min_lr = 1e-4
  c.train.warmup_steps = 100
  c.train.decay_steps = 0  # cosine from warm-up end to here; 0: max_steps
  c.train.weight_decay = 0.1  # AdamW, on matrices and embeddings only
  c.train.beta1 = 0.9
  c.train.beta2 = 0.99
  c.train.grad_clip = 1.0  # global-norm clipping; 0 turns it off
  c.train.steps_per_call = 10  # optimizer steps per compiled call (lax.scan); 1 for a call per step
  c.train.log_interval = 50
  c.train.eval_interval = 500
  c.train.eval_iters = 20  # validation batches per evaluation
  c.train.checkpoint_interval = 500
  c.train.keep_checkpoints = 3
  c.train.nan_policy = 'stop'  # 'stop' at a NaN/Inf loss, or 'skip' the update of such a step
  c.train.devices = 0  # use this many local devices (of each host); 0 = all
  # Start from these parameters (a converted run directory or a Hugging Face GPT-2 directory): fresh
  # optimizer, step 0; the model's shape comes from there, block_size and vocab_size from here.
  c.train.init_from = ''

  c.parallel = ml_collections.ConfigDict()
  c.parallel.strategy = 'pmap'  # 'pmap' (a replica per device) or 'mesh' (jit over data x fsdp x tensor)
  # Mesh axis sizes, for strategy 'mesh'; their product is the device count, and one may be -1 (the rest).
  c.parallel.data = -1  # data parallel: batch rows split, state replicated
  c.parallel.fsdp = 1  # fully sharded data parallel: batch rows AND parameters/optimizer state split
  c.parallel.tensor = 1  # tensor parallel: attention heads, MLP width and vocabulary split
  return c


def load_file(path: str) -> ml_collections.ConfigDict:
  """get_config() of the config file at `path`: lets one config build on another (configs/mlm_char.py)."""
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy with the fields left to their defaults filled in (seq_len, decay_steps)."""
  import ml_collections
  config = ml_collections.ConfigDict(config.to_dict())
  if config.train.seq_len == 0:
    config.train.seq_len = config.model.block_size
  if config.train.decay_steps == 0:
    config.train.decay_steps = config.train.max_steps
  return config


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> GPTConfig:
  """The model's GPTConfig, with vocab_size taken from the tokenizer when the config leaves it 0."""
  fields = config.model.to_dict()
  if fields['vocab_size'] == 0:
    fields['vocab_size'] = vocab_size
  elif fields['vocab_size'] < vocab_size:
    raise GptjaxError(f"model.vocab_size={fields['vocab_size']} is smaller than the tokenizer's "
                      f'{vocab_size} ids; set it to 0 (use the tokenizer size) or larger')
  unknown = set(fields) - {f.name for f in dataclasses.fields(GPTConfig)}
  if unknown:
    raise GptjaxError(f'unknown model field(s) {sorted(unknown)}')
  try:
    return GPTConfig(**fields)
  except (ValueError, TypeError) as e:
    raise GptjaxError(f'bad model config: {e}') from None


def validate(config: ml_collections.ConfigDict, n_devices: int) -> None:
  """Raises GptjaxError naming every inconsistent field, before anything is computed or written."""
  try:
    _validate(config, n_devices)
  except (TypeError, AttributeError, KeyError) as e:  # a field of the wrong type, or missing
    raise GptjaxError(f'config has a field of the wrong type or a missing one ({e}); compare it with '
                      'gptjax/config.py') from None


def _validate(config: ml_collections.ConfigDict, n_devices: int) -> None:
  problems = []
  config = resolve(config)
  m, t, d = config.model, config.train, config.data
  try:
    attention.check(GPTConfig(**{**m.to_dict(), 'vocab_size': m.vocab_size or 1}))
  except (ValueError, TypeError) as e:
    problems.append(f'model: {e}')
  except GptjaxError as e:
    problems.append(str(e))
  if t.seq_len < 0:
    problems.append(f'train.seq_len={t.seq_len} must be >= 1 (or 0 for model.block_size)')
  if t.seq_len > m.block_size:
    problems.append(f'train.seq_len={t.seq_len} is larger than the {m.block_size} positions the model '
                    'supports (model.block_size)')
  p = config.parallel
  split, split_by = n_devices, f'the {n_devices} devices'  # how many ways each batch's rows are split
  if p.strategy not in ('pmap', 'mesh'):
    problems.append(f"parallel.strategy={p.strategy!r} must be 'pmap' or 'mesh'")
  elif p.strategy == 'mesh':
    try:
      data, fsdp, _ = parallel.mesh_shape(p, n_devices)
      if data * fsdp != n_devices:
        split, split_by = data * fsdp, f'parallel.data x parallel.fsdp = {data} x {fsdp} devices'
    except GptjaxError as e:
      problems.append(str(e))
  if t.batch_size < 1 or t.batch_size % split:
    problems.append(f'train.batch_size={t.batch_size} is not divisible by {split_by}; '
                    f'use a multiple of {split} or set --config.train.devices')
  if t.grad_accum_steps < 1:
    problems.append(f'train.grad_accum_steps={t.grad_accum_steps} must be >= 1')
  elif t.batch_size >= 1 and t.batch_size % split == 0 and (t.batch_size // split) % t.grad_accum_steps:
    problems.append(f'train.grad_accum_steps={t.grad_accum_steps} does not divide the {t.batch_size // split} '
                    f'rows each device gets (train.batch_size={t.batch_size} over {split_by}); use a '
                    'divisor of it, or a larger batch')
  for name in ('max_steps', 'warmup_steps', 'eval_iters', 'keep_checkpoints'):
    if t[name] < 0:
      problems.append(f'train.{name}={t[name]} must be >= 0')
  for name in ('steps_per_call', 'log_interval', 'eval_interval', 'checkpoint_interval'):
    if t[name] < 1:
      problems.append(f'train.{name}={t[name]} must be >= 1')
  for name in ('learning_rate', 'min_lr', 'weight_decay', 'grad_clip', 'beta1', 'beta2'):
    if not math.isfinite(t[name]):
      problems.append(f'train.{name}={t[name]} must be a finite number')
  if not (t.learning_rate > 0 and t.min_lr >= 0):
    problems.append('train.learning_rate must be > 0 and train.min_lr >= 0')
  if t.decay_steps < 0 or t.decay_steps < t.warmup_steps:
    problems.append(f'train.decay_steps={t.decay_steps} is smaller than train.warmup_steps={t.warmup_steps}')
  if not (0 <= t.beta1 < 1 and 0 <= t.beta2 < 1):
    problems.append('train.beta1 and train.beta2 must be in [0, 1)')
  if t.grad_clip < 0 or t.weight_decay < 0:
    problems.append('train.grad_clip and train.weight_decay must be >= 0')
  if t.objective not in ('next_token', 'mlm'):
    problems.append(f"train.objective={t.objective!r} must be 'next_token' or 'mlm'")
  elif (t.objective == 'mlm') == m.causal:
    problems.append("train.objective='mlm' needs bidirectional attention: set --config.model.causal=False"
                    if m.causal else "model.causal=False lets each position see the token it must predict "
                    "under train.objective='next_token'; set --config.model.causal=True or "
                    "--config.train.objective=mlm")
  if not 0 < t.mask_prob < 1:
    problems.append(f'train.mask_prob={t.mask_prob} must be in (0, 1)')
  if t.nan_policy not in ('stop', 'skip'):
    problems.append(f"train.nan_policy={t.nan_policy!r} must be 'stop' or 'skip'")
  if d.tokenizer not in ('byte', 'char', 'bpe', 'gpt2'):
    problems.append(f"data.tokenizer={d.tokenizer!r} must be 'byte', 'char', 'bpe' or 'gpt2'")
  if d.tokenizer == 'bpe' and not 257 <= d.bpe_vocab_size <= 2**24:
    problems.append(f'data.bpe_vocab_size={d.bpe_vocab_size} must be in [257, 2**24] (256 bytes, '
                    '<|endoftext|>, merges)')
  if d.tokenizer == 'gpt2' and not d.tokenizer_path:
    problems.append("data.tokenizer='gpt2' needs --config.data.tokenizer_path=DIR, a directory with GPT-2's "
                    'vocab.json + merges.txt (or tokenizer.json)')
  if t.init_from and not os.path.isdir(t.init_from):
    problems.append(f'train.init_from={t.init_from} is not a directory; give a converted run directory or a '
                    'Hugging Face GPT-2 directory')
  if not 0 < d.val_fraction < 1:
    problems.append(f'data.val_fraction={d.val_fraction} must be in (0, 1)')
  if problems:
    raise GptjaxError('; '.join(problems))
