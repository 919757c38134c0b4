"""The masked-LM training mode: BERT's corruption, bidirectional attention, the [MASK] token on the run's
tokenizer, device-count independence, a tiny model that learns to fill a memorised sentence, and the
fill / sample command lines."""

import dataclasses
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import TINY, tiny_run_config
from gptjax import config as config_lib
from gptjax import data as D
from gptjax import decode
from gptjax import fill as F
from gptjax import objectives as O
from gptjax import parallel
from gptjax import sample
from gptjax import train as T
from gptjax.errors import GptjaxError
from gptjax.metrics import read_jsonl
from gptjax.model import GPT, GPTConfig, init_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD_RUN = os.path.join(ROOT, 'tests', 'fixtures', 'gpt2_style_run')  # a causal run
MLM = O.Objective('mlm', mask_id=1000, n_real=1000)
LLAMA = dict(pos_encoding='rope', norm='rmsnorm', mlp='swiglu', qk_norm=True, bias=False)


def test_corruption_statistics_are_berts():
  """15% of positions picked; of those 80% -> [MASK], 10% -> a random real token, 10% unchanged."""
  tokens = jax.random.randint(jax.random.PRNGKey(0), (400, 251), 0, 1000)  # 100,000 target positions
  inputs, targets, weights = jax.device_get(O.examples(MLM, tokens, jax.random.PRNGKey(1)))
  tokens = np.asarray(tokens)
  np.testing.assert_array_equal(targets, tokens[:, :-1])  # scored on the original tokens
  picked = weights == 1
  assert set(np.unique(weights)) == {0.0, 1.0}
  np.testing.assert_array_equal(inputs[~picked], targets[~picked])  # the rest is untouched
  masked = inputs[picked] == 1000
  kept = inputs[picked] == targets[picked]
  replaced = ~masked & ~kept
  # Tolerances: 5 standard deviations of each binomial fraction (100,000 positions, then ~15,000
  # picked): 0.0057 for 15%, 0.016 for 80%, 0.012 for 10%. A random replacement equals the
  # original with probability 1/1000, so "kept" expects 0.1 + 0.1 / 1000 and "replaced" 0.1 - that.
  assert abs(picked.mean() - 0.15) < 0.0057
  assert abs(masked.mean() - 0.8) < 0.016
  assert abs(replaced.mean() - 0.0999) < 0.012
  assert abs(kept.mean() - 0.1001) < 0.012
  random_tokens = inputs[picked][replaced]
  assert random_tokens.min() >= 0 and random_tokens.max() < 1000  # real tokens only, never [MASK]
  # Spread over the vocabulary: ~1,500 draws fall in each tenth about 150 times (5 sd ~ 58).
  counts = np.bincount(random_tokens // 100, minlength=10)
  assert np.abs(counts - len(random_tokens) / 10).max() < 5 * np.sqrt(len(random_tokens) * 0.09)


def test_corruption_of_a_row_does_not_depend_on_how_the_batch_is_split():
  tokens = jax.random.randint(jax.random.PRNGKey(0), (8, 33), 0, 1000)
  whole = O.examples(MLM, tokens, jax.random.PRNGKey(3))
  halves = [O.examples(MLM, tokens[i:i + 4], jax.random.PRNGKey(3), jnp.arange(i, i + 4)) for i in (0, 4)]
  for a, b, c in zip(whole, *halves):
    np.testing.assert_array_equal(np.asarray(a), np.concatenate([b, c]))
  # And different steps (keys) corrupt differently.
  other = O.examples(MLM, tokens, jax.random.PRNGKey(4))
  assert not np.array_equal(np.asarray(whole[2]), np.asarray(other[2]))


def test_next_token_examples_are_the_seed_split():
  tokens = jnp.arange(10)[None]
  inputs, targets, weights = O.examples(O.NEXT_TOKEN, tokens, jax.random.PRNGKey(0))
  assert inputs.tolist() == [list(range(9))] and targets.tolist() == [list(range(1, 10))]
  assert weights.tolist() == [[1.0] * 9]


@pytest.mark.parametrize('block', ['gpt2', 'llama'])
def test_attention_is_bidirectional(block):
  config = dataclasses.replace(TINY, causal=False, **(LLAMA if block == 'llama' else {}))
  params = init_params(config, jax.random.PRNGKey(1))
  tokens = jax.random.randint(jax.random.PRNGKey(2), (1, 10), 0, config.vocab_size)
  later = tokens.at[0, 8].set((tokens[0, 8] + 1) % config.vocab_size)
  a, b = (np.asarray(GPT(config).apply({'params': params}, t)) for t in (tokens, later))
  assert np.abs(a[0, :8] - b[0, :8]).min(axis=-1).max() > 1e-4  # earlier positions see the later token
  assert np.abs(a[0, 0] - b[0, 0]).max() > 1e-4


def test_generation_refuses_a_bidirectional_model():
  config = dataclasses.replace(TINY, causal=False)
  with pytest.raises(GptjaxError, match='generation needs a causal model'):
    decode.check_request(config, [[1, 2]], None, 4, 1.0, 0, 1.0)


def test_mlm_losses_do_not_depend_on_the_device_count():
  """Shards hold different numbers of masked targets: the step weights them so the loss is the
  global batch's mean, as on one device."""
  config = dataclasses.replace(TINY, causal=False)
  objective = O.Objective('mlm', mask_id=15, n_real=15)
  tx = optax.sgd(0.5)  # linear in the gradient: a tight comparison (see test_train.py)
  batches = np.asarray(jax.random.randint(jax.random.PRNGKey(3), (4, 16, 17), 0, 15))
  losses = []
  for n in (1, 8):
    devices = jax.local_devices()[:n]
    step = jax.pmap(functools.partial(T.train_steps, model=GPT(config), tx=tx, objective=objective),
                    axis_name=parallel.AXIS, devices=devices)
    state = parallel.replicate(T.init_state(config, tx, seed=0), devices)
    _, metrics = step(state, parallel.shard(batches, n, axis=1))
    losses.append(np.asarray(metrics['loss'][0]))
  # float32 summation order only (a mean over 16 rows vs 8 shards' weighted means): 1e-5 relative.
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
  assert losses[0][0] != losses[0][1]  # different steps, different corruption and loss


# ---------------------------------------------------------------------------------------------
# The mask token on the run's tokenizer


@pytest.mark.parametrize('base', [D.CharTokenizer.fit('abc 猫'), D.ByteTokenizer()])
def test_mask_token_is_one_id_after_the_vocabulary_and_saved_with_it(base):
  tok = D.with_mask_token(base)
  mask = base.vocab_size
  assert tok.vocab_size == base.vocab_size + 1 and tok.special_ids == {'[MASK]': mask}
  ids = tok.encode('a[MASK]猫[MASK][MASK]')
  assert (ids == mask).sum() == 3 and tok.decode(ids) == 'a[MASK]猫[MASK][MASK]'
  np.testing.assert_array_equal(ids[ids != mask], base.encode('a猫'))
  again = D.tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
  assert again.to_dict() == tok.to_dict() and again.special_ids == tok.special_ids
  assert D.with_mask_token(tok) is tok  # adding it twice changes nothing
  if base.kind == 'byte':  # raw bytes (a file to evaluate) are text, never markers
    np.testing.assert_array_equal(tok.encode(b'a[MASK]'), base.encode(b'a[MASK]'))


def test_tokenizer_files_without_special_tokens_load_as_before():
  old = json.load(open(os.path.join(OLD_RUN, 'tokenizer.json')))
  assert 'special_tokens' not in old
  tok = D.tokenizer_from_dict(old)
  assert isinstance(tok, D.CharTokenizer) and tok.vocab_size == len(old['chars'])  # no extra ids
  assert tok.decode(tok.encode('The cat')) == 'The cat'


@pytest.mark.parametrize('overrides, words', [
    ({'train.objective': 'mlm'}, 'needs bidirectional attention: set --config.model.causal=False'),
    ({'model.causal': False}, "lets each position see the token it must predict"),
    ({'train.objective': 'bert'}, "train.objective='bert' must be"),
    ({'train.objective': 'mlm', 'model.causal': False, 'train.mask_prob': 0.0}, 'train.mask_prob=0.0'),
])
def test_inconsistent_objective_is_refused(overrides, words):
  with pytest.raises(GptjaxError, match=words):
    config_lib.validate(tiny_run_config(**overrides), 1)


# ---------------------------------------------------------------------------------------------
# A tiny masked LM memorises a sentence and fills it in

SENTENCE = 'the quick brown fox jumps over the lazy dog. 你是一只猫。\n'


@pytest.fixture(scope='module')
def mlm_run(tmp_path_factory):
  """A tiny bidirectional Llama-style model trained on the sentence repeated (its val split too)."""
  root = tmp_path_factory.mktemp('mlm')
  corpus = root / 'corpus.txt'
  corpus.write_text(SENTENCE * 40, encoding='utf-8')
  config = tiny_run_config(**{
      'data.path': str(corpus), 'data.tokenizer': 'char', 'model.causal': False, 'train.objective': 'mlm',
      **{f'model.{k}': v for k, v in LLAMA.items()}, 'train.max_steps': 300, 'train.batch_size': 16,
      'train.learning_rate': 1e-2, 'train.warmup_steps': 20, 'train.steps_per_call': 10,
      'train.log_interval': 100, 'train.eval_interval': 100, 'train.checkpoint_interval': 300,
      'train.eval_iters': 4, 'train.devices': 1})
  workdir = str(root / 'run')
  T.train_and_evaluate(config, workdir, progress=False)
  return workdir


def test_tiny_mlm_learns_to_fill_the_memorised_sentence(mlm_run):
  records = [r for r in read_jsonl(os.path.join(mlm_run, 'metrics.jsonl')) if 'val_accuracy' in r]
  assert [r['step'] for r in records] == [0, 100, 200, 300]
  assert records[0]['val_accuracy'] < 0.2  # chance among 36 characters, about
  # Measured 0.98 at step 300 (about 300 masked validation characters, the same ones at every
  # evaluation); 0.9 leaves room for float differences between machines.
  assert records[-1]['val_accuracy'] > 0.9
  assert records[-1]['val_loss'] < records[0]['val_loss'] - 2.0
  saved = json.load(open(os.path.join(mlm_run, 'tokenizer.json'), encoding='utf-8'))
  assert saved['special_tokens'] == ['[MASK]'] and saved['kind'] == 'char'
  params, config, tokenizer, _ = sample.load_run(mlm_run)
  filled = F.fill(params, config, tokenizer, 'l[MASK]zy dog. 你是一[MASK]猫。\nthe quick br[MASK]wn')
  assert filled.text == 'lazy dog. 你是一只猫。\nthe quick brown'
  assert [s.index for s in filled.slots] == [1, 13, 29]
  assert [s.candidates[0][0] for s in filled.slots] == ['a', '只', 'o']
  assert all(s.candidates[0][1] > 0.5 and len(s.candidates) == 5 for s in filled.slots)
  iterative = F.fill(params, config, tokenizer, 'the quick [MASK][MASK]own fox', iterative=True)
  assert iterative.text == 'the quick brown fox'


def run_cli(*args):
  return subprocess.run([sys.executable, '-m', *args], capture_output=True, text=True, cwd=ROOT,
                        env={**os.environ, 'XLA_FLAGS': ''}, timeout=300)


def test_fill_cli_prints_the_filled_text_and_candidates(mlm_run):
  out = run_cli('gptjax.fill', f'--workdir={mlm_run}', '--text=over the l[MASK]zy dog. 你是一[MASK]猫。', '--top_k=3')
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert lines[0] == 'over the lazy dog. 你是一只猫。'
  assert lines[1].startswith("[MASK] 1 (token 10): 'a' 0.") and lines[1].count("' 0.") + lines[1].count("' 1.") == 3
  assert lines[2].startswith("[MASK] 2 (token 22): '只' ") and len(lines) == 3


def test_sample_refuses_an_mlm_run_and_fill_a_causal_one(mlm_run):
  out = run_cli('gptjax.sample', f'--workdir={mlm_run}', '--prompt=the')
  assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
  assert 'masked-LM run' in out.stderr and 'python -m gptjax.fill' in out.stderr
  out = run_cli('gptjax.fill', f'--workdir={OLD_RUN}', '--text=The [MASK]at')
  assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
  assert 'next-token (causal) run' in out.stderr and 'python -m gptjax.sample' in out.stderr


def test_fill_refuses_text_without_a_mask_or_too_long(mlm_run):
  params, config, tokenizer, _ = sample.load_run(mlm_run)
  with pytest.raises(GptjaxError, match=r'no \[MASK\]'):
    F.fill(params, config, tokenizer, 'the quick brown fox')
  with pytest.raises(GptjaxError, match='more than the 32 positions'):
    F.fill(params, config, tokenizer, SENTENCE + '[MASK]')


def test_evaluate_reports_masked_token_loss_and_accuracy_for_an_mlm_run(mlm_run):
  from gptjax import evaluate as ev
  record = ev.evaluate_run(mlm_run, batch_size=16)
  assert record['objective'] == 'mlm' and record['bits_per_byte'] is None
  n = len(D.load_split(os.path.join(mlm_run, 'data'), 'val'))  # 208 tokens: 207 candidates
  # The picked count is binomial(207, 0.15): 31 expected, 5 standard deviations ~ 26.
  assert abs(record['tokens'] - 0.15 * (n - 1)) < 5 * np.sqrt((n - 1) * 0.15 * 0.85)
  assert record['accuracy'] > 0.9  # as the training loop's own evaluation (0.98 measured)
  # The fixed corruption of window k does not depend on how windows are batched.
  other = ev.evaluate_run(mlm_run, batch_size=3)
  assert (other['tokens'], other['accuracy']) == (record['tokens'], record['accuracy'])
  # float32 sums per row, float64 total; batches of 3 and 16 windows also run the model's matmuls at
  # other shapes, whose kernels sum in another order (~1e-7 relative per logit), and the nats of ~30
  # confidently predicted tokens (accuracy > 0.9, ~0.025 nats each) magnify that: 1.3e-6 measured
  # with the CPU weight-gradient layout's trained parameters. A changed corruption or window moves
  # the total by > 1e-2.
  assert other['nats'] == pytest.approx(record['nats'], rel=1e-5)


def test_mlm_windows_stay_within_the_text():
  from gptjax import evaluate as ev
  tokens = np.arange(1, 3 * 32 + 13)  # 108 ids, none 0 (the padding id): 4 windows of 32 targets
  ids, weights = ev.window_batch(tokens, 0, 5, 32, 32, within_text=True)
  assert (ids[:4] > 0).all()  # the real windows hold no padding (the last moved back to the text's end)
  scored = np.concatenate([ids[b, 1:][weights[b] > 0] for b in range(5)])
  assert sorted(scored.tolist()) == tokens[1:].tolist()  # every token after the first, once
