"""Starting a run from existing weights (`--config.train.init_from=DIR`): parameters only.

DIR is a gptjax run directory (e.g. made by `python -m gptjax.convert --from_hf`) or a Hugging Face
GPT-2 directory (config.json + model.safetensors). The model's shape (layers, heads, width, biases,
tying, ...) comes from DIR; the run's config decides only what can change without retraining:

    block_size   at most DIR's positions: the position table is cut to the first block_size rows
    vocab_size   0 = the tokenizer's; more rows than DIR has are added as the mean of DIR's rows
    dropout, param_dtype, and how the model computes (dtype, remat, attention_impl)

A config that sets a shape field to something else than both the default and DIR's value is refused
(it cannot apply to these weights). The optimizer state and the step start fresh.

Why the mean for new vocabulary rows: a row's logit is then the mean of the real tokens' logits, which
is at most log of their mean exp, so k new rows add at most k / n of the softmax mass of n real rows:
the loss on real tokens rises by at most log(1 + k / n) (Hewitt, "Initializing new word embeddings for
pretrained language models", 2021). Zero rows would give every new token logit 0 whatever the context.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING

import numpy as np

from gptjax import config as config_lib
from gptjax import data as data_lib
from gptjax import hf
from gptjax.errors import GptjaxError
from gptjax.model import EXECUTION_FIELDS, GPTConfig

if TYPE_CHECKING:  # only in annotations: importing this module needs no ml_collections
  import ml_collections

# What a run's config may choose for itself; every other GPTConfig field is the pretrained model's.
RUN_CHOOSES = ('block_size', 'vocab_size', 'dropout', 'param_dtype') + EXECUTION_FIELDS


def source_config(path: str) -> tuple[GPTConfig, data_lib.Tokenizer | None]:
  """(GPTConfig, tokenizer or None) of a run directory or a Hugging Face GPT-2 directory."""
  if hf.is_hf_dir(path):
    config = hf.read_config(path)
    has_tokenizer = any(os.path.isfile(os.path.join(path, n)) for n in ('tokenizer.json', 'vocab.json'))
    return config, data_lib.BPETokenizer.from_files(path) if has_tokenizer else None
  run_config = os.path.join(path, 'config.json')
  if not os.path.isfile(run_config):
    raise GptjaxError(f'{path} is neither a run directory nor a Hugging Face GPT-2 directory (no '
                      'config.json); give one made by python -m gptjax.train or gptjax.convert, or '
                      'config.json + model.safetensors')
  with open(run_config, encoding='utf-8') as f:
    fields = json.load(f).get('model', {})
  try:
    config = GPTConfig(**fields)
  except (TypeError, ValueError) as e:
    raise GptjaxError(f'{run_config} has a model this version cannot build ({e})') from None
  return config, data_lib.load_tokenizer(os.path.join(path, 'tokenizer.json'))


def model_config(path: str, config: ml_collections.ConfigDict, tokenizer) -> GPTConfig:
  """The GPTConfig of a run that starts from `path`: its shape, the config's block/vocab/dropout/dtype.

  Refuses a tokenizer other than the one the weights were trained with (when `path` has one).
  """
  source, source_tokenizer = source_config(path)
  asked = config_lib.model_config(config, tokenizer.vocab_size)
  defaults = config_lib.get_config().model
  conflicts = [f'model.{f.name}={getattr(asked, f.name)!r} ({path} has {getattr(source, f.name)!r})'
               for f in dataclasses.fields(GPTConfig)
               if f.name not in RUN_CHOOSES and f.name in defaults
               and getattr(asked, f.name) not in (getattr(source, f.name), defaults[f.name])]
  if conflicts:
    raise GptjaxError(f'train.init_from gives the model its shape, but the config asks for another: '
                      f'{", ".join(conflicts)}; drop those settings')
  if source_tokenizer is not None and _id_meanings(source_tokenizer) != _id_meanings(tokenizer):
    raise GptjaxError(f'{path} was trained with another tokenizer ({source_tokenizer.kind}, '
                      f'{source_tokenizer.vocab_size} ids) than this run gives ({tokenizer.kind}, '
                      f'{tokenizer.vocab_size} ids); use the same, e.g. --config.data.tokenizer=gpt2 '
                      f'--config.data.tokenizer_path={path}')
  if source_tokenizer is None and tokenizer.vocab_size > source.vocab_size:
    raise GptjaxError(f"this run's tokenizer has {tokenizer.vocab_size} ids, more than the {source.vocab_size} "
                      f'rows of {path}; use the tokenizer the weights were trained with')
  if source.pos_encoding == 'learned' and asked.block_size > source.block_size:
    raise GptjaxError(f'model.block_size={asked.block_size} is larger than the {source.block_size} positions '
                      f'{path} has learned; use at most {source.block_size}')
  return dataclasses.replace(source, **{name: getattr(asked, name) for name in RUN_CHOOSES})


def _id_meanings(tokenizer):
  """What each id stands for (a byte-level BPE's bytes per id; otherwise the whole tokenizer)."""
  return getattr(tokenizer, 'token_bytes', None) or tokenizer.to_dict()


def load_params(path: str, config: GPTConfig) -> dict:
  """The parameters of `path` fitted to `config` (from `model_config`): positions cut, vocabulary
  rows cut or added as the mean of the existing ones, cast to config.param_dtype."""
  if hf.is_hf_dir(path):
    source, params = hf.read(path)
  else:
    from gptjax.run import load_run  # a run's checkpoint is read the way sampling reads it
    params, source, _, _ = load_run(path)
  return fit(params, source, config)


def fit(params: dict, source: GPTConfig, config: GPTConfig) -> dict:
  """params of a `source`-shaped model made to fit `config` (see the module docstring)."""
  import jax

  params = jax.tree.map(np.asarray, params)  # new containers: the caller's dict is not changed
  if 'wpe' in params:
    params['wpe'] = {'embedding': params['wpe']['embedding'][:config.block_size]}

  def rows(x, axis):  # vocabulary-indexed array: cut or extend along axis
    x = np.moveaxis(x, axis, 0)[:config.vocab_size]
    if len(x) < config.vocab_size:
      x = np.concatenate([x, np.repeat(x.mean(0, keepdims=True), config.vocab_size - len(x), axis=0)])
    return np.moveaxis(x, 0, axis)

  params['wte'] = {'embedding': rows(params['wte']['embedding'], 0)}
  if 'lm_head' in params:
    params['lm_head'] = {k: rows(v, -1) for k, v in params['lm_head'].items()}
  if 'lm_head_bias' in params:
    params['lm_head_bias'] = rows(params['lm_head_bias'], 0)
  dtype = jax.numpy.dtype(config.param_dtype)
  return jax.tree.map(lambda x: np.asarray(x, dtype), params)
