"""Property-based: random bytes, text, config values and sampler arguments either work or raise the
project's own error (GptjaxError), never anything else."""

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tiny_run_config
from gptjax import config as config_lib
from gptjax import data as D
from gptjax import decode
from gptjax import model as M
from gptjax.errors import GptjaxError

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=512))
def test_byte_tokenizer_round_trips_any_bytes(raw):
  tok = D.ByteTokenizer()
  assert tok.decode_bytes(tok.encode(raw)) == raw


@FAST
@given(st.text(max_size=200))
def test_char_tokenizer_round_trips_any_text(text):
  if not text:
    return
  tok = D.CharTokenizer.fit(text)
  assert tok.decode(tok.encode(text)) == text


@FAST
@given(vocab=st.text(min_size=1, max_size=30), text=st.text(max_size=60))
def test_char_tokenizer_encodes_or_names_unknown_characters(vocab, text):
  tok = D.CharTokenizer.fit(vocab)
  try:
    ids = tok.encode(text)
  except GptjaxError as e:
    assert 'not in the tokenizer vocabulary' in str(e)
    assert set(text) - set(vocab)
  else:
    assert tok.decode(ids) == text


@FAST
@given(st.one_of(st.text(max_size=50), st.binary(max_size=50)), st.lists(st.integers(-3, 300), max_size=20))
def test_byte_tokenizer_never_fails_with_a_foreign_error(text, ids):
  tok = D.ByteTokenizer()
  for call in (lambda: tok.encode(text), lambda: tok.decode(ids)):
    try:
      call()
    except GptjaxError:
      pass


@FAST
@given(st.lists(st.one_of(st.text(max_size=8), st.just('[MASK]'), st.just('[MA')), max_size=8))
def test_mask_token_round_trips_any_text_around_it(pieces):
  text = ''.join(pieces)
  tok = D.with_mask_token(D.ByteTokenizer())
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert (ids == 256).sum() == text.count('[MASK]')


@FAST
@given(data=st.binary(max_size=300), kind=st.sampled_from(['char', 'byte', 'bpe']))
def test_corpus_encoding_works_or_says_why(data, kind):
  try:
    tok, ids = D.encode_corpus(data, kind, 'random.bin')
  except GptjaxError:
    return
  assert len(ids) == (len(data) if kind == 'byte' else len(data.decode('utf-8')))


INT_FIELDS = ['model.vocab_size', 'model.block_size', 'model.n_layer', 'model.n_head', 'model.n_kv_head',
              'model.n_embd', 'train.seq_len', 'train.batch_size', 'train.max_steps', 'train.warmup_steps',
              'train.decay_steps', 'train.steps_per_call', 'train.log_interval', 'train.eval_interval',
              'train.eval_iters', 'train.checkpoint_interval', 'train.keep_checkpoints', 'model.mlp_hidden']
FLOAT_FIELDS = ['model.dropout', 'train.learning_rate', 'train.min_lr', 'train.weight_decay', 'train.beta1',
                'train.beta2', 'train.grad_clip', 'data.val_fraction', 'model.rope_theta', 'train.mask_prob']
STR_FIELDS = {'model.pos_encoding': ['learned', 'sinusoidal', 'rope', ''],
              'model.dtype': ['float32', 'bfloat16', 'float64', 'int8'],
              'data.tokenizer': ['char', 'byte', 'bpe'], 'train.nan_policy': ['stop', 'skip', 'ignore'],
              'model.norm': ['layernorm', 'rmsnorm', 'batchnorm'], 'model.mlp': ['gelu', 'swiglu', 'relu'],
              'train.objective': ['next_token', 'mlm', 'bert']}


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_config_validation_accepts_or_refuses_with_gptjax_error(data):
  changes = {}
  for field in data.draw(st.lists(st.sampled_from(INT_FIELDS + FLOAT_FIELDS + list(STR_FIELDS)),
                                  min_size=1, max_size=5)):
    if field in INT_FIELDS:
      changes[field] = data.draw(st.integers(-3, 200))
    elif field in FLOAT_FIELDS:
      changes[field] = data.draw(st.floats(allow_nan=True, allow_infinity=True, width=32))
    else:
      changes[field] = data.draw(st.sampled_from(STR_FIELDS[field]))
  config = tiny_run_config(**changes)
  n_devices = data.draw(st.integers(1, 8))
  from gptjax.train import make_optimizer
  try:
    config_lib.validate(config, n_devices)
    # Accepted: every derived object then builds, or refuses with GptjaxError (the vocabulary
    # check needs the tokenizer), and nothing else.
    resolved = config_lib.resolve(config)
    config_lib.model_config(resolved, 256)
  except GptjaxError:
    return
  make_optimizer(resolved.train)
  assert resolved.train.seq_len <= resolved.model.block_size
  assert resolved.train.batch_size % n_devices == 0


CONFIG = M.GPTConfig(vocab_size=16, block_size=24, n_layer=1, n_head=2, n_embd=16)


@pytest.fixture(scope='module')
def params():
  return M.init_params(CONFIG, jax.random.PRNGKey(0))


ANY = st.one_of(st.integers(-5, 40), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                st.none(), st.text(max_size=3))


@settings(max_examples=400, deadline=None)
@given(prompts=st.one_of(st.lists(st.lists(st.integers(-2, 18), max_size=6), max_size=3), ANY),
       max_new_tokens=ANY, temperature=ANY, top_k=ANY, top_p=ANY,
       stop=st.lists(ANY, max_size=2))
def test_generate_arguments_are_checked_before_compute(prompts, max_new_tokens, temperature, top_k, top_p, stop):
  try:
    p, lengths, sampling, stops = decode.check_request(CONFIG, prompts, None, max_new_tokens, temperature,
                                                       top_k, top_p, stop)
  except GptjaxError:
    return
  assert p.shape[1] + max_new_tokens <= CONFIG.block_size and lengths.min() >= 1
  assert sampling.temperature >= 0 and 0 <= sampling.top_k <= 16 and 0 < sampling.top_p <= 1


@settings(max_examples=12, deadline=None)
@given(prompts=st.lists(st.lists(st.integers(0, 15), min_size=1, max_size=4), min_size=1, max_size=3),
       temperature=st.sampled_from([0.0, 0.7, 1.0]), top_k=st.sampled_from([0, 1, 4, 16]),
       top_p=st.sampled_from([0.5, 1.0]), seed=st.integers(0, 2**31 - 1))
def test_valid_generate_requests_run(params, prompts, temperature, top_k, top_p, seed):
  out = decode.generate(params, CONFIG, prompts, jax.random.PRNGKey(seed), max_new_tokens=6,
                        temperature=temperature, top_k=top_k, top_p=top_p)
  tokens = np.asarray(out.tokens)
  assert tokens.shape == (len(prompts), 6) and tokens.min() >= 0 and tokens.max() < 16
