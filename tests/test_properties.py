"""Property-based: random bytes, text, config values, sampler arguments and command lines either work
or raise the project's own error (GptjaxError; on the command line one `error:` line), never anything
else. Hypothesis is derandomized (tests/conftest.py): every run tries the same examples."""

import json
import os
import subprocess
import sys

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
  try:
    encoded = tok.encode(text)
  except GptjaxError:  # only a str holding a lone surrogate cannot be UTF-8 encoded
    assert isinstance(text, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in text)
  else:
    assert tok.decode_bytes(encoded) == (text.encode('utf-8') if isinstance(text, str) else text)
  in_range = all(0 <= i < 256 for i in ids)
  try:
    tok.decode(ids)
  except GptjaxError:
    assert not in_range
  else:
    assert in_range


@FAST
@given(st.lists(st.one_of(st.text(max_size=8), st.just('[MASK]'), st.just('[MA')), max_size=8))
def test_mask_token_round_trips_any_text_around_it(pieces):
  text = ''.join(pieces)
  tok = D.with_mask_token(D.ByteTokenizer())
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert (ids == 256).sum() == text.count('[MASK]')


@FAST
@given(data=st.binary(max_size=300), kind=st.sampled_from(['char', 'byte', 'bpe', 'no-such-tokenizer']))
def test_corpus_encoding_works_or_says_why(data, kind):
  try:
    tok, ids = D.encode_corpus(data, kind, 'random.bin')
  except GptjaxError as e:  # an unknown kind, non-UTF-8 bytes for char, bpe without data.bpe_vocab_size
    assert (kind == 'no-such-tokenizer' or (kind == 'char' and 'not UTF-8' in str(e))
            or (kind == 'bpe' and 'bpe_vocab_size' in str(e)))
    return
  assert kind in ('char', 'byte')
  assert len(ids) == (len(data) if kind == 'byte' else len(data.decode('utf-8')))


INT_FIELDS = ['model.vocab_size', 'model.block_size', 'model.n_layer', 'model.n_head', 'model.n_kv_head',
              'model.n_embd', 'train.seq_len', 'train.batch_size', 'train.max_steps', 'train.warmup_steps',
              'train.decay_steps', 'train.steps_per_call', 'train.log_interval', 'train.eval_interval',
              'train.eval_iters', 'train.checkpoint_interval', 'train.keep_checkpoints', 'model.mlp_hidden']
FLOAT_FIELDS = ['model.dropout', 'train.learning_rate', 'train.min_lr', 'train.weight_decay', 'train.beta1',
                'train.beta2', 'train.grad_clip', 'data.val_fraction', 'model.rope_theta', 'train.mask_prob']
STR_FIELDS = {'model.pos_encoding': ['learned', 'sinusoidal', 'rope', 'no-such-encoding', ''],
              'model.dtype': ['float32', 'bfloat16', 'float64', 'int8'],
              'data.tokenizer': ['char', 'byte', 'bpe', 'no-such-tokenizer'],
              'train.nan_policy': ['stop', 'skip', 'ignore'],
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
  assert p.shape[1] <= CONFIG.block_size and max_new_tokens >= 1 and lengths.min() >= 1
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


# ---------------------------------------------------------------------------------------------
# Random command lines thrown at both commands: exit 0, or one `error:` line and exit 2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(ROOT, 'configs', 'tiny.py')
POEM = 'The quick brown fox jumps over the lazy dog.\nPack my box with five dozen liquor jugs!\n' * 40


@pytest.fixture(scope='module')
def driver(tmp_path_factory):
  """tests/cli_driver.py: each command line in a forked child of one process that imported gptjax."""
  proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', 'cli_driver.py')], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, 'XLA_FLAGS': ''})

  def run(module, argv):
    proc.stdin.write(json.dumps({'module': module, 'argv': argv}) + '\n')
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())

  yield run
  proc.stdin.close()
  proc.wait(timeout=60)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """A trained tiny char-level run to sample from, and config files that do not load."""
  base = tmp_path_factory.mktemp('cli_props')
  (base / 'poem.txt').write_text(POEM)
  (base / 'broken.py').write_text('def get_config(:\n')
  return base


def ends_well(result):
  """Exit 0, or exactly one line `error: ...` and exit 2; never a traceback."""
  err = result['stderr']
  if os.environ.get('GPTJAX_SHOW_CLI_EXAMPLES'):  # to see what the examples exercise
    print(result['rc'], (err.strip() or result['stdout'].strip())[:160])
  assert 'Traceback' not in err, err
  if result['rc'] == 0:
    return
  assert result['rc'] == 2, result
  assert len(err.strip().splitlines()) == 1 and err.startswith('error: '), err


# Each flag with values that work and values that must be refused; a few words that are no flag.
TRAIN_FLAGS = {
    '--config.model.n_layer': ['1', '2', '0', 'x'], '--config.model.n_head': ['1', '2', '3'],
    '--config.model.n_embd': ['16', '32', '30'], '--config.model.dropout': ['0.0', '0.1', '1.5', 'nan'],
    '--config.model.pos_encoding': ['learned', 'sinusoidal', 'no-such-encoding'],
    '--config.model.block_size': ['8', '16', '32', '-1'], '--config.model.bias': ['true', 'false', '3'],
    '--config.train.batch_size': ['8', '4', '3', '0'], '--config.train.seq_len': ['0', '8', '64', '-1'],
    '--config.train.learning_rate': ['1e-3', '0', 'inf', 'x'], '--config.train.nan_policy': ['stop', 'skip', '?'],
    '--config.train.steps_per_call': ['1', '2', '0'], '--config.data.tokenizer': ['byte', 'char', 'none'],
    '--config.data.val_fraction': ['0.1', '0.5', '1'], '--config.seed': ['0', '7', 'x'],
    '--config.model.n_layr': ['2'], '--config.nope': ['1'], '--config.model': ['3'], '--restore_step': ['2', 'x'],
    '--progress': ['false'], '--nonsense': ['1'], '-x': [''],
}
SAMPLE_FLAGS = {
    '--prompt': ['The', 'Pack my', '✓', '', 'x' * 40, '\\n'], '--max_new_tokens': ['1', '4', '40', '0', 'x'],
    '--temperature': ['0', '0.8', '-1', 'nan'], '--top_k': ['0', '1', '5', '100', '-1'],
    '--top_p': ['1', '0.5', '0', '1.5'], '--seed': ['0', '3', 'x'], '--num_samples': ['1', '2', '0'],
    '--stop': ['\\n', 'o', 'zz'], '--step': ['2', '3', 'x'], '--continuation_only': ['true', 'false', 'x'],
    '--nonsense': ['1'], '-x': [''],
}
STRAY = st.sampled_from(['x', '2', 'char', '--', '='])


def argument(flags):
  """One command-line argument: `--flag=value` (mostly), a bare `--flag`, or a stray word."""
  name = st.sampled_from(sorted(flags))
  with_value = name.flatmap(lambda n: st.sampled_from(flags[n]).map(lambda v: f'{n}={v}'))
  return st.one_of(with_value, with_value, with_value, name, STRAY)


CLI_EXAMPLES = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))


@CLI_EXAMPLES
@given(config=st.sampled_from(['tiny', 'tiny', 'tiny', 'tiny', 'broken', 'missing']),
       args=st.lists(argument(TRAIN_FLAGS), max_size=3))
def test_train_command_line_ends_in_success_or_one_error_line(driver, files, tmp_path_factory, config, args):
  config_path = {'tiny': TINY_CONFIG, 'broken': files / 'broken.py', 'missing': files / 'missing.py'}[config]
  workdir = tmp_path_factory.mktemp('train')
  # Pinned last (the last occurrence of a flag wins): a fresh tiny workdir, at most 2 steps.
  pinned = [f'--workdir={workdir}', '--config.train.max_steps=2', '--config.train.warmup_steps=1',
            '--config.data.max_bytes=20000', '--noprogress']
  result = driver('gptjax.train', [f'--config={config_path}', *args, *pinned])
  ends_well(result)
  if result['rc'] == 0:
    assert result['stdout'].strip().splitlines()[-1].startswith('done: step 2')


@pytest.fixture(scope='module')
def sample_run(driver, files):
  workdir = files / 'run'
  result = driver('gptjax.train', [f'--config={TINY_CONFIG}', f'--workdir={workdir}', '--config.train.max_steps=2',
                                   '--config.train.warmup_steps=1', f'--config.data.path={files / "poem.txt"}',
                                   '--config.data.tokenizer=char', '--noprogress'])
  assert result['rc'] == 0, result
  return workdir


@CLI_EXAMPLES
@given(args=st.lists(argument(SAMPLE_FLAGS), max_size=3))
def test_sample_command_line_ends_in_success_or_one_error_line(driver, sample_run, args):
  result = driver('gptjax.sample', [f'--workdir={sample_run}', '--max_new_tokens=4', *args])
  ends_well(result)
