"""gptjax.evaluate: every token after the first scored exactly once, bits per byte, the command line."""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import TINY, tiny_run_config
from gptjax import data as data_lib
from gptjax import evaluate as ev
from gptjax import train as train_lib
from gptjax.errors import GptjaxError
from gptjax.model import GPT, init_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C = TINY.block_size  # 32
# Mixed-width UTF-8: 1-byte ASCII, 2-byte 'é', 3-byte '猫', 4-byte '🐱'; 10 distinct characters fit
# TINY's 16-id vocabulary.
ALPHABET = 'abc é猫🐱\n.'


@pytest.fixture(scope='module')
def params():
  return init_params(TINY, jax.random.PRNGKey(0))


_forward = jax.jit(lambda params, inputs: GPT(TINY).apply({'params': params}, inputs))


def loop_nll(params, tokens, context, stride):
  """The reference: total nats and top-1 hits, window by window, in float64, no padding or batching.

  Window starts 0, stride, 2 * stride, ...; a window scores only the targets (indices into tokens)
  that no earlier window scored. Returns (nats, hits, the scored target indices in order).
  """
  tokens = np.asarray(tokens)
  nats, hits, scored, start = 0.0, 0, [], 0
  while not scored or scored[-1] < len(tokens) - 1:
    inputs = tokens[start:start + context]
    targets = tokens[start + 1:start + 1 + context]
    inputs = inputs[:len(targets)]
    logits = np.asarray(_forward(params, inputs[None]), np.float64)[0]
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.sum(np.exp(shifted), -1, keepdims=True))
    for j, target in enumerate(targets):
      index = start + 1 + j
      if not scored or index > scored[-1]:
        nats -= logp[j, target]
        hits += int(np.argmax(logits[j]) == target)
        scored.append(index)
    start += stride
  return nats, hits, scored


@pytest.mark.parametrize('n_tokens, stride, batch_size', [
    (3 * C + 12, None, 2),  # 4 windows, the last with 11 of 32 targets; the 2nd batch is full
    (5 * C + 2, None, 4),  # 6 windows (the last with 1 target); the 2nd batch has 2 padding rows
    (2 * C + 20, 8, 3),  # overlapping windows: each scores only its last 8 targets
])
def test_evaluate_equals_a_plain_loop_scoring_every_token_once(params, n_tokens, stride, batch_size):
  tokens = np.random.default_rng(n_tokens).integers(0, TINY.vocab_size, n_tokens)
  nats, hits, scored = loop_nll(params, tokens, C, stride or C)
  assert scored == list(range(1, n_tokens))  # the reference itself: every token after the first, once
  result = ev.evaluate(params, TINY, tokens, stride=stride, batch_size=batch_size)
  assert result.tokens == n_tokens - 1
  assert result.windows == (-(-(n_tokens - 1) // C) if stride is None else
                            1 + -(-(n_tokens - 1 - C) // stride))
  # float32 logits and per-row float32 sums against a float64 loop: relative error ~1e-6; 1e-5 is
  # well below the ~1e-2 an unscored or doubly scored token would change the mean by.
  assert result.nats == pytest.approx(nats, rel=1e-5)
  assert result.loss == pytest.approx(nats / (n_tokens - 1), rel=1e-5)
  assert result.perplexity == pytest.approx(math.exp(nats / (n_tokens - 1)), rel=1e-5)
  assert result.accuracy == hits / (n_tokens - 1)
  assert result.bits_per_byte is None and result.bytes is None  # no tokenizer given


def test_window_weights_cover_each_target_once():
  n, stride, batch = 3 * C + 7, 12, 5
  windows = ev.num_windows(n, C, stride)
  seen = np.zeros(n, int)
  for first in range(0, windows, batch):
    ids, weights = ev.window_batch(np.arange(n) % 16, first, batch, C, stride)
    assert ids.shape == (batch, C + 1) and weights.shape == (batch, C)
    for row in range(batch):
      k = first + row
      for j in np.flatnonzero(weights[row]):
        seen[k * stride + 1 + j] += 1
  assert seen[0] == 0 and (seen[1:] == 1).all()


def test_bits_per_byte_with_multibyte_characters(params):
  rng = np.random.default_rng(1)
  text = ''.join(rng.choice(list(ALPHABET), 150))
  tokenizer = data_lib.CharTokenizer.fit(text)
  tokens = tokenizer.encode(text)
  n_bytes = len(text[1:].encode('utf-8'))  # the scored text: every character but the first
  assert n_bytes > len(text) - 1  # multi-byte characters are there
  result = ev.evaluate(params, TINY, tokens, tokenizer=tokenizer, batch_size=2)
  nats, _, _ = loop_nll(params, tokens, C, C)
  assert result.bytes == n_bytes
  assert result.bits_per_byte == pytest.approx(nats / (math.log(2) * n_bytes), rel=1e-5)  # as above


def test_num_bytes_is_the_utf8_length():
  text = 'héllo, 猫 🐱!\n'
  assert data_lib.CharTokenizer.fit(text).num_bytes(data_lib.CharTokenizer.fit(text).encode(text)) == \
      len(text.encode('utf-8')) == 18
  byte = data_lib.ByteTokenizer()
  assert byte.num_bytes(byte.encode(text)) == 18
  assert data_lib.CharTokenizer('ab').num_bytes([]) == 0
  with pytest.raises(GptjaxError):
    data_lib.CharTokenizer('ab').num_bytes([2])


@pytest.mark.parametrize('kwargs, words', [
    (dict(tokens=[3]), 'at least 2'),
    (dict(context=C + 1), 'context=33'),
    (dict(stride=C + 1), 'stride=33'),
    (dict(batch_size=0), 'batch_size=0'),
    (dict(tokens=[1, 16]), '[0, 16)'),
])
def test_bad_arguments_are_one_line_errors(params, kwargs, words):
  kwargs = {'tokens': np.arange(40) % 16, **kwargs}
  with pytest.raises(GptjaxError) as e:
    ev.evaluate(params, TINY, kwargs.pop('tokens'), **kwargs)
  assert words in str(e.value) and '\n' not in str(e.value)


# ---------------------------------------------------------------------------------------------
# The command line, on a trained char-level run


def cli(*args):
  return subprocess.run([sys.executable, '-m', 'gptjax.evaluate', *args], capture_output=True, text=True,
                        cwd=ROOT, env={**os.environ, 'XLA_FLAGS': ''}, timeout=300)


def char_run_config(base, **overrides):
  """A tiny char-level run of 10 steps on 2,000 random characters of ALPHABET written to base/text.txt
  (test_provenance trains the same, so the compiled programs come from the cache)."""
  text = ''.join(np.random.default_rng(2).choice(list(ALPHABET), 2000))
  (base / 'text.txt').write_text(text, encoding='utf-8')
  config = tiny_run_config(**{'data.path': str(base / 'text.txt'), 'data.tokenizer': 'char',
                              'train.max_steps': 10, 'train.decay_steps': 10, 'train.checkpoint_interval': 5,
                              'train.devices': 1, **overrides})
  return config, text


@pytest.fixture(scope='module')
def char_run(tmp_path_factory):
  base = tmp_path_factory.mktemp('eval')
  config, text = char_run_config(base)
  train_lib.train_and_evaluate(config, str(base / 'run'), progress=False)
  return base, text


def test_evaluate_command_scores_the_whole_val_split(char_run):
  base, text = char_run
  proc = cli(f'--workdir={base / "run"}', '--batch_size=4')
  assert proc.returncode == 0, proc.stderr
  record = json.loads(proc.stdout)  # exactly one JSON line on stdout
  n_val = int(round(len(text) * 0.1))  # the last 10% of the characters (data.val_fraction)
  val_text = text[len(text) - n_val:]
  assert (record['step'], record['tokens'], record['bytes']) == (10, n_val - 1, len(val_text[1:].encode()))
  assert record['bits_per_byte'] == pytest.approx(record['nats'] / (math.log(2) * record['bytes']), rel=1e-12)
  # The same checkpoint evaluated in this process: same programs on the same CPU; 1e-6 allows for
  # another device count (8 fake devices here) changing XLA's thread partitioning.
  here = ev.evaluate_run(str(base / 'run'), batch_size=4)
  assert record['loss'] == pytest.approx(here['loss'], rel=1e-6)
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith('step 10 on ') and f'{record["tokens"]:,} tokens' in line and 'bits/byte' in line


def test_evaluate_on_a_text_file(char_run):
  base, _ = char_run
  text = '猫 é🐱 abc.\n' * 5
  (base / 'ok.txt').write_text(text, encoding='utf-8')
  record = ev.evaluate_run(str(base / 'run'), data=str(base / 'ok.txt'))
  assert (record['tokens'], record['bytes']) == (len(text) - 1, len(text[1:].encode('utf-8')))
  assert record['data'] == str(base / 'ok.txt') and record['context'] == 32


def test_out_of_vocabulary_text_is_a_one_line_error(char_run):
  base, _ = char_run
  (base / 'oov.txt').write_text('abc ✓ xyz\n', encoding='utf-8')
  bad = cli(f'--workdir={base / "run"}', f'--data={base / "oov.txt"}')
  err = bad.stderr.strip()
  assert bad.returncode == 2 and len(err.splitlines()) == 1 and 'Traceback' not in bad.stderr, bad.stderr
  assert err.startswith('error: ') and 'oov.txt' in err and 'not in the tokenizer vocabulary' in err
  assert "'x' 'y' 'z' '✓'" in err  # names the characters
