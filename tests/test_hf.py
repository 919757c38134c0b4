"""GPT-2 weights in and out of Hugging Face's format, against fixtures transformers made.

The fixtures under tests/fixtures/ come from experiments/make_hf_fixtures.py (torch + transformers
there, never here): random GPT2LMHeadModels saved with save_pretrained, with transformers' float32
logits for a fixed input and its greedy continuation of a prompt.
"""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from gptjax import decode, hf
from gptjax.errors import GptjaxError
from gptjax.model import GPT, GPTConfig, init_params

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')
TIED = os.path.join(FIXTURES, 'tiny-gpt2')
UNTIED = os.path.join(FIXTURES, 'tiny-gpt2-untied')
# Logits of the same float32 function computed by two implementations differ by rounding only: the
# sums run in other orders (64- and 256-long dot products, softmax, LayerNorm, 2 layers). Measured here:
# 1.1e-5 at most, on logits of magnitude up to ~10 (relative 1e-6, a few float32 ulps). 1e-4 leaves 9x
# room for other CPUs' summation orders, and is still 35x below the smallest top-1/top-2 gap of the
# greedy continuation (3.5e-3), so a mapping error (a transposed or swapped tensor moves logits by
# whole units) cannot pass.
LOGIT_ATOL = 1e-4


def expected(directory):
  with open(os.path.join(directory, 'expected.json'), encoding='utf-8') as f:
    return json.load(f)


def forward(config, params, ids):
  return np.asarray(GPT(config).apply({'params': params}, np.asarray([ids], np.int32)))[0]


@pytest.mark.parametrize('directory', [TIED, UNTIED], ids=['tied', 'untied'])
def test_logits_equal_transformers(directory):
  config, params = hf.read(directory)
  exp = expected(directory)
  theirs = np.load(os.path.join(directory, exp['logits_file']))
  ours = forward(config, params, exp['logits_ids'])
  assert ours.shape == theirs.shape
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=LOGIT_ATOL)
  assert theirs.std() > 1  # the check has teeth: logits spread over units, not a near-constant


def test_gpt2_config_has_a_tied_head_without_bias():
  config, params = hf.read(TIED)
  assert (config.tie_embeddings, config.bias, config.head_bias) == (True, True, False)
  assert 'lm_head_bias' not in params and 'lm_head' not in params
  shape = (config.vocab_size, config.block_size, config.n_layer, config.n_head, config.n_embd)
  assert shape == (320, 64, 2, 4, 64)
  untied, untied_params = hf.read(UNTIED)
  assert not untied.tie_embeddings and set(untied_params['lm_head']) == {'kernel'}  # no bias there either


def test_greedy_generation_with_the_kv_cache_reproduces_transformers():
  config, params = hf.read(TIED)
  exp = expected(TIED)
  assert exp['greedy_min_top1_top2_gap'] > 1e-3  # no near-ties: the tokens are determined
  out = decode.generate(params, config, [exp['prompt_ids']], jax.random.PRNGKey(0),
                        max_new_tokens=len(exp['greedy_ids']), temperature=0.0)
  assert np.asarray(out.tokens[0]).tolist() == exp['greedy_ids']


def test_export_of_the_imported_fixture_equals_its_safetensors_tensor_for_tensor(tmp_path):
  config, params = hf.read(TIED)
  hf.write(str(tmp_path), params, config, eot_id=319)
  ours = load_file(str(tmp_path / 'model.safetensors'))
  theirs = load_file(os.path.join(TIED, 'model.safetensors'))
  assert sorted(ours) == sorted(theirs)
  for name in theirs:
    assert ours[name].dtype == theirs[name].dtype and ours[name].shape == theirs[name].shape, name
    np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
  with safe_open(str(tmp_path / 'model.safetensors'), 'np') as f:
    assert f.metadata() == {'format': 'pt'}  # what transformers writes, and checks when loading
  with open(tmp_path / 'model.safetensors', 'rb') as a, open(os.path.join(TIED, 'model.safetensors'), 'rb') as b:
    assert a.read() == b.read()  # even the file is the same, header and order included
  with open(os.path.join(TIED, 'config.json'), encoding='utf-8') as f:
    theirs_config = json.load(f)
  with open(tmp_path / 'config.json', encoding='utf-8') as f:
    ours_config = json.load(f)
  for key, value in ours_config.items():
    if key not in ('resid_pdrop', 'embd_pdrop', 'attn_pdrop'):  # gptjax imports dropout as 0
      assert theirs_config[key] == value, key


def test_export_then_import_is_the_identity(tmp_path):
  for i, directory in enumerate([TIED, UNTIED]):
    config, params = hf.read(directory)
    out = tmp_path / str(i)
    out.mkdir()
    hf.write(str(out), params, config)
    again_config, again = hf.read(str(out))
    assert again_config == config
    jax.tree.map(np.testing.assert_array_equal, again, params)


def test_a_bias_free_model_exports_with_zero_biases_and_the_same_function(tmp_path):
  config = GPTConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16, bias=False,
                     tie_embeddings=True)
  params = init_params(config, jax.random.PRNGKey(0))
  hf.write(str(tmp_path), params, config)
  tensors = load_file(str(tmp_path / 'model.safetensors'))
  assert not tensors['transformer.h.0.attn.c_attn.bias'].any() and not tensors['transformer.ln_f.bias'].any()
  again_config, again = hf.read(str(tmp_path))
  assert again_config.bias and not again_config.head_bias
  ids = list(range(0, 40, 3))
  np.testing.assert_array_equal(forward(again_config, again, ids), forward(config, params, ids))


def test_a_padded_vocabulary_is_cut_to_the_real_rows_on_export(tmp_path):
  config, params = hf.read(TIED)
  padded = dataclasses.replace(config, vocab_size=384)
  wte = params['wte']['embedding']
  params = {**params, 'wte': {'embedding': np.concatenate([wte, np.ones((64, 64), np.float32)])}}
  hf.write(str(tmp_path), params, padded, vocab_size=320)
  again_config, again = hf.read(str(tmp_path))
  assert again_config.vocab_size == 320
  np.testing.assert_array_equal(again['wte']['embedding'], wte)


def copy_config(directory):
  with open(os.path.join(TIED, 'config.json'), encoding='utf-8') as f:
    (directory / 'config.json').write_text(f.read(), encoding='utf-8')


def test_sharded_safetensors_are_read_through_their_index(tmp_path):
  tensors = load_file(os.path.join(TIED, 'model.safetensors'))
  names = sorted(tensors)
  halves = {'model-00001-of-00002.safetensors': names[:10], 'model-00002-of-00002.safetensors': names[10:]}
  for file, part in halves.items():
    save_file({n: tensors[n] for n in part}, str(tmp_path / file), metadata={'format': 'pt'})
  with open(tmp_path / hf.INDEX, 'w', encoding='utf-8') as f:
    json.dump({'weight_map': {n: file for file, part in halves.items() for n in part}}, f)
  copy_config(tmp_path)
  _, sharded = hf.read(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, sharded, hf.read(TIED)[1])


def test_old_checkpoints_with_attention_buffers_and_no_prefix_are_read(tmp_path):
  """The hub's gpt2 names tensors without `transformer.` and old saves carry attn.bias mask buffers."""
  tensors = load_file(os.path.join(TIED, 'model.safetensors'))
  tensors = {k.removeprefix('transformer.'): v for k, v in tensors.items()}
  tensors['h.0.attn.bias'] = np.tril(np.ones((1, 1, 64, 64), np.float32))
  tensors['h.0.attn.masked_bias'] = np.asarray(-1e4, np.float32)
  save_file(tensors, str(tmp_path / 'model.safetensors'))
  copy_config(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, hf.read(str(tmp_path))[1], hf.read(TIED)[1])


# ---------------------------------------------------------------------------------------------
# What GPT-2's format cannot hold, and directories that are not GPT-2


@dataclasses.dataclass(frozen=True)
class FutureConfig(GPTConfig):
  """A GPTConfig with an option hf.py has never heard of (as issue 14's RoPE will be)."""
  rope: 'bool' = False  # a string, as under `from __future__ import annotations` in gptjax


@pytest.mark.parametrize('change, words', [
    ({'n_kv_head': 2}, ['grouped-query attention (n_kv_head=2)']),
    ({'pos_encoding': 'sinusoidal'}, ["pos_encoding='sinusoidal' (GPT-2 has pos_encoding='learned')"]),
    ({'causal': False}, ['causal=False']),
    ({'head_bias': True}, ['output-head bias', '--config.model.head_bias=False']),
    ({'rope': True}, ['rope=True (GPT-2 has rope=False)']),
], ids=['gqa', 'sinusoidal', 'bidirectional', 'head bias', 'unknown option'])
def test_export_refuses_in_one_line_what_gpt2_cannot_hold(tmp_path, change, words):
  config = FutureConfig(**{'vocab_size': 32, 'block_size': 16, 'n_layer': 1, 'n_head': 4, 'n_embd': 16,
                           'head_bias': False, 'tie_embeddings': True, **change})
  with pytest.raises(GptjaxError) as e:
    hf.write(str(tmp_path), {}, config)  # refused before any tensor is looked at
  message = str(e.value)
  assert message.startswith("GPT-2's format cannot hold this model") and '\n' not in message
  for w in words:
    assert w in message
  assert not os.listdir(tmp_path)


def test_the_default_model_keeps_its_parameter_names():
  """head_bias defaults to today's behaviour: b_O exists exactly where `bias` is on."""
  for tie, bias in [(True, True), (True, False), (False, True), (False, False)]:
    config = GPTConfig(vocab_size=8, block_size=4, n_layer=1, n_head=1, n_embd=4, bias=bias, tie_embeddings=tie)
    params = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))  # names only: no compile
    head = ('lm_head_bias' in params) if tie else ('bias' in params['lm_head'])
    assert head == bias
  old = {'vocab_size': 8, 'block_size': 4, 'n_layer': 1, 'n_head': 1, 'n_embd': 4}  # a config.json from before
  assert GPTConfig(**old).head_bias


def write_config(directory, **changes):
  with open(os.path.join(TIED, 'config.json'), encoding='utf-8') as f:
    config = json.load(f)
  config.update(changes)
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(config, f)


def test_reading_refuses_what_is_not_a_gpt2_in_safetensors(tmp_path):
  def refused(directory, *words):
    with pytest.raises(GptjaxError) as e:
      hf.read(str(directory))
    assert '\n' not in str(e.value)
    for w in words:
      assert w in str(e.value), (w, str(e.value))

  refused(tmp_path / 'nothing', 'has no config.json')
  write_config(tmp_path / 'pickle')
  (tmp_path / 'pickle' / 'pytorch_model.bin').write_bytes(b'not read')
  refused(tmp_path / 'pickle', 'only PyTorch weights (pytorch_model.bin)', 'convert them to safetensors')
  write_config(tmp_path / 'llama', model_type='llama')
  refused(tmp_path / 'llama', "'llama' model", 'only GPT-2')
  write_config(tmp_path / 'relu', activation_function='relu')
  refused(tmp_path / 'relu', "activation_function='relu'")
  write_config(tmp_path / 'deeper', n_layer=3)
  os.link(os.path.join(TIED, 'model.safetensors'), tmp_path / 'deeper' / 'model.safetensors')
  refused(tmp_path / 'deeper', 'not a GPT-2 with 3 layers', "missing ['h.2.")
  write_config(tmp_path / 'wider', n_positions=128)
  os.link(os.path.join(TIED, 'model.safetensors'), tmp_path / 'wider' / 'model.safetensors')
  refused(tmp_path / 'wider', 'wpe.weight has shape (64, 64), expected (128, 64)')
  write_config(tmp_path / 'torn')
  (tmp_path / 'torn' / 'model.safetensors').write_bytes(b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":')
  refused(tmp_path / 'torn', 'cannot read')
