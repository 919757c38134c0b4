"""GPT-2 weights in and out of Hugging Face's format: a directory with config.json + model.safetensors.

    read(DIR)                        -> (GPTConfig, params)     numpy float32, no torch needed
    write(DIR, params, config, ...)  -> config.json + model.safetensors that transformers'
                                        GPT2LMHeadModel.from_pretrained(DIR) loads

The mapping, tensor by tensor (HF names; `transformer.` is dropped on reading when present):

    wte.weight [vocab, n_embd]            params['wte']['embedding']   (also the head: W_O = E^T)
    wpe.weight [n_positions, n_embd]      params['wpe']['embedding']
    h.{i}.ln_1 / ln_2 .weight, .bias      params['h_{i}']['ln_1' / 'ln_2']['scale', 'bias']
    h.{i}.attn.c_attn .weight, .bias      params['h_{i}']['attn']['c_attn']['kernel', 'bias']
    h.{i}.attn.c_proj, mlp.c_fc, mlp.c_proj                    likewise
    ln_f.weight, .bias                    params['ln_f']['scale', 'bias']
    lm_head.weight [vocab, n_embd]        params['lm_head']['kernel'] (transposed), untied models only

GPT-2's Conv1D stores weights as [in, out], the layout of a Flax Dense kernel, so they are copied as
they are; c_attn holds q, k, v side by side, as gptjax's c_attn does. The attention mask buffers
(`h.{i}.attn.bias`, `masked_bias`) of old checkpoints are not parameters and are skipped. GPT-2's head
has no bias: its GPTConfig has `head_bias=False`.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from gptjax.errors import GptjaxError
from gptjax.model import GPTConfig

WEIGHTS = 'model.safetensors'
INDEX = 'model.safetensors.index.json'  # sharded checkpoints: name -> file
# What gptjax's model computes that GPT-2's config.json must say (value, or allowed values).
_GPT2_FIXED = {'activation_function': ('gelu_new', 'gelu_pytorch_tanh'), 'layer_norm_epsilon': (1e-5,),
               'scale_attn_weights': (True,), 'scale_attn_by_inverse_layer_idx': (False,),
               'add_cross_attention': (False,)}
# GPTConfig fields GPT-2's format expresses (any value, or checked below); every other field must keep
# its default, so an option this module does not know of is refused rather than dropped on export.
_EXPRESSED = {'vocab_size', 'block_size', 'n_layer', 'n_head', 'n_embd', 'dropout', 'bias', 'head_bias',
              'tie_embeddings', 'n_kv_head', 'dtype', 'param_dtype'}


# ---------------------------------------------------------------------------------------------
# Configs


def gpt_config(hf: dict, source: str = 'config.json') -> GPTConfig:
  """The GPTConfig of a GPT-2 config.json (dropout 0: set it in the training config)."""
  if hf.get('model_type') != 'gpt2':
    raise GptjaxError(f"{source} describes a {hf.get('model_type')!r} model; only GPT-2 (model_type 'gpt2') "
                      'can be read')
  problems = [f'{k}={hf[k]!r} (gptjax computes {allowed[0]!r})' for k, allowed in _GPT2_FIXED.items()
              if k in hf and hf[k] not in allowed]
  if hf.get('n_inner') not in (None, 4 * hf.get('n_embd', 0)):
    problems.append(f"n_inner={hf['n_inner']} (gptjax's MLP is 4 * n_embd = {4 * hf['n_embd']} wide)")
  if problems:
    raise GptjaxError(f'{source} asks for what gptjax does not compute: {", ".join(problems)}')
  try:
    return GPTConfig(vocab_size=hf['vocab_size'], block_size=hf['n_positions'], n_layer=hf['n_layer'],
                     n_head=hf['n_head'], n_embd=hf['n_embd'], dropout=0.0, bias=True, head_bias=False,
                     tie_embeddings=hf.get('tie_word_embeddings', True))
  except KeyError as e:
    raise GptjaxError(f'{source} has no {e.args[0]!r}; it is not a GPT-2 config') from None
  except ValueError as e:
    raise GptjaxError(f'{source} is not a valid model: {e}') from None


def check_exportable(config: GPTConfig) -> None:
  """Raises GptjaxError naming every setting GPT-2's format cannot hold."""
  problems = []
  if config.n_kv_head not in (0, config.n_head):
    problems.append(f'grouped-query attention (n_kv_head={config.n_kv_head})')
  if config.bias and config.head_bias:
    problems.append('an output-head bias (head_bias=True; train with --config.model.head_bias=False)')
  for f in dataclasses.fields(config):
    if f.name not in _EXPRESSED and getattr(config, f.name) != f.default:
      problems.append(f'{f.name}={getattr(config, f.name)!r} (GPT-2 has {f.name}={f.default!r})')
  if problems:
    raise GptjaxError(f"GPT-2's format cannot hold this model: {'; '.join(problems)}")


def hf_config(config: GPTConfig, vocab_size: int, *, eot_id: int | None = None) -> dict:
  """GPT-2's config.json for `config` with its vocabulary cut to vocab_size rows."""
  return {
      'architectures': ['GPT2LMHeadModel'], 'model_type': 'gpt2',
      'vocab_size': vocab_size, 'n_positions': config.block_size, 'n_embd': config.n_embd,
      'n_layer': config.n_layer, 'n_head': config.n_head, 'n_inner': None,
      'activation_function': 'gelu_new', 'layer_norm_epsilon': 1e-5,
      'resid_pdrop': config.dropout, 'embd_pdrop': config.dropout, 'attn_pdrop': config.dropout,
      'initializer_range': 0.02, 'scale_attn_weights': True, 'scale_attn_by_inverse_layer_idx': False,
      'reorder_and_upcast_attn': False, 'tie_word_embeddings': config.tie_embeddings,
      'bos_token_id': eot_id, 'eos_token_id': eot_id, 'dtype': config.param_dtype, 'use_cache': True,
  }


# ---------------------------------------------------------------------------------------------
# Tensors


def _layer_names(i: int):
  """(HF name, params path) of every tensor of block i."""
  for ln in ('ln_1', 'ln_2'):
    yield f'h.{i}.{ln}.weight', (f'h_{i}', ln, 'scale')
    yield f'h.{i}.{ln}.bias', (f'h_{i}', ln, 'bias')
  for module, dense in (('attn', 'c_attn'), ('attn', 'c_proj'), ('mlp', 'c_fc'), ('mlp', 'c_proj')):
    yield f'h.{i}.{module}.{dense}.weight', (f'h_{i}', module, dense, 'kernel')
    yield f'h.{i}.{module}.{dense}.bias', (f'h_{i}', module, dense, 'bias')


def _names(config: GPTConfig):
  """(HF name, params path) of every tensor of a GPT-2 with this config, head excluded."""
  yield 'wte.weight', ('wte', 'embedding')
  yield 'wpe.weight', ('wpe', 'embedding')
  for i in range(config.n_layer):
    yield from _layer_names(i)
  yield 'ln_f.weight', ('ln_f', 'scale')
  yield 'ln_f.bias', ('ln_f', 'bias')


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def params_from_tensors(tensors: dict[str, np.ndarray], config: GPTConfig,
                        source: str = 'the checkpoint') -> dict:
  """gptjax params (float32 numpy) from GPT-2's tensors, checking names and shapes."""
  tensors = {k.removeprefix('transformer.'): v for k, v in tensors.items()
             if not k.endswith(('.attn.bias', '.attn.masked_bias'))}  # mask buffers, not parameters
  expected = dict(_names(config))
  if not config.tie_embeddings:
    expected['lm_head.weight'] = ('lm_head', 'kernel')
  missing = sorted(set(expected) - set(tensors))
  unknown = sorted(set(tensors) - set(expected) - {'lm_head.weight'})
  if missing or unknown:
    raise GptjaxError(f'{source} is not a GPT-2 with {config.n_layer} layers: '
                      + '; '.join(filter(None, [missing and f'missing {missing[:4]}',
                                                unknown and f'unexpected {unknown[:4]}'])))
  like = _shapes(config)
  params = {}
  for name, path in expected.items():
    value = np.asarray(tensors[name], np.float32)
    if name == 'lm_head.weight':
      value = value.T  # nn.Linear [vocab, n_embd] -> Dense kernel [n_embd, vocab]
    if value.shape != _get(like, path):
      raise GptjaxError(f'{source}: {name} has shape {value.shape}, expected {_get(like, path)} for its config')
    _set(params, path, value)
  return params


def tensors_from_params(params: dict, config: GPTConfig, vocab_size: int | None = None) -> dict[str, np.ndarray]:
  """GPT-2's tensors (transformers' names) from gptjax params, the vocabulary cut to vocab_size rows.

  A model without biases (bias=False) gets zero biases, which compute the same function.
  """
  check_exportable(config)
  vocab_size = vocab_size or config.vocab_size
  if not 1 <= vocab_size <= config.vocab_size:
    raise GptjaxError(f'vocab_size={vocab_size} must be in [1, {config.vocab_size}] (the rows the model has)')
  dtype = np.dtype(config.param_dtype) if config.param_dtype != 'bfloat16' else _bfloat16()
  like = _shapes(config)
  tensors = {}
  for name, path in _names(config):
    value = np.asarray(_get(params, path)) if config.bias or not path[-1] == 'bias' else \
        np.zeros(_get(like, path))
    tensors[f'transformer.{name}'] = value
  tensors['transformer.wte.weight'] = tensors['transformer.wte.weight'][:vocab_size]
  if not config.tie_embeddings:
    tensors['lm_head.weight'] = np.asarray(params['lm_head']['kernel']).T[:vocab_size]
  return {k: np.ascontiguousarray(v, dtype) for k, v in tensors.items()}


def _bfloat16():
  import ml_dtypes  # installed with jax
  return np.dtype(ml_dtypes.bfloat16)


def _shapes(config: GPTConfig) -> dict:
  """The params' shapes for config, as GPT-2 lays them out (biases included)."""
  import jax

  from gptjax.model import init_params
  shaped = jax.eval_shape(lambda: init_params(dataclasses.replace(config, bias=True), jax.random.PRNGKey(0)))
  return jax.tree.map(lambda x: tuple(x.shape), shaped)


# ---------------------------------------------------------------------------------------------
# Directories


def is_hf_dir(directory: str) -> bool:
  """Whether directory looks like a Hugging Face model (config.json with a model_type)."""
  path = os.path.join(directory, 'config.json')
  if not os.path.isfile(path):
    return False
  try:
    with open(path, encoding='utf-8') as f:
      return 'model_type' in json.load(f)
  except (OSError, ValueError):
    return False


def read_config(directory: str) -> GPTConfig:
  path = os.path.join(directory, 'config.json')
  if not os.path.isfile(path):
    raise GptjaxError(f'{directory} has no config.json; give a Hugging Face GPT-2 directory '
                      '(config.json + model.safetensors)')
  try:
    with open(path, encoding='utf-8') as f:
      hf = json.load(f)
  except ValueError as e:
    raise GptjaxError(f'{path} is not JSON ({e})') from None
  return gpt_config(hf, path)


def read_tensors(directory: str) -> dict[str, np.ndarray]:
  """Every tensor of the directory's safetensors weights (one file, or the shards an index names)."""
  from safetensors import SafetensorError
  from safetensors.numpy import load_file

  if os.path.isfile(os.path.join(directory, INDEX)):
    with open(os.path.join(directory, INDEX), encoding='utf-8') as f:
      files = sorted(set(json.load(f)['weight_map'].values()))
  elif os.path.isfile(os.path.join(directory, WEIGHTS)):
    files = [WEIGHTS]
  else:
    pickles = [n for n in ('pytorch_model.bin', 'model.bin') if os.path.isfile(os.path.join(directory, n))]
    if pickles:
      raise GptjaxError(f'{directory} has only PyTorch weights ({pickles[0]}), which need torch to read; '
                        'convert them to safetensors first, e.g. '
                        'GPT2LMHeadModel.from_pretrained(DIR).save_pretrained(NEW)')
    raise GptjaxError(f'{directory} has no {WEIGHTS}; give a Hugging Face GPT-2 directory with safetensors '
                      'weights')
  tensors = {}
  for name in files:
    try:
      tensors.update(load_file(os.path.join(directory, name)))
    except (SafetensorError, OSError, ValueError) as e:
      raise GptjaxError(f'cannot read {os.path.join(directory, name)} ({str(e).splitlines()[0]})') from None
  return tensors


def read(directory: str) -> tuple[GPTConfig, dict]:
  """(GPTConfig, params as float32 numpy) of a Hugging Face GPT-2 directory."""
  config = read_config(directory)
  return config, params_from_tensors(read_tensors(directory), config, os.path.join(directory, WEIGHTS))


def write(directory: str, params: dict, config: GPTConfig, *, vocab_size: int | None = None,
          eot_id: int | None = None) -> None:
  """Writes config.json + model.safetensors into directory (which must exist)."""
  from safetensors.numpy import save_file

  tensors = tensors_from_params(params, config, vocab_size)
  vocab_size = tensors['transformer.wte.weight'].shape[0]
  save_file(tensors, os.path.join(directory, WEIGHTS), metadata={'format': 'pt'})
  with open(os.path.join(directory, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(hf_config(config, vocab_size, eot_id=eot_id), f, indent=2)
