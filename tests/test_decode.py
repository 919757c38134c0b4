"""Decoding: the KV cache reproduces the full forward, the scan loop reproduces a naive loop,
sampling strategies do what they say, rows are independent, and the seed's example generates."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gptjax import decode
from gptjax import kv_cache as kvc
from gptjax import model as M
from gptjax import train as T
from gptjax.errors import GptjaxError

CONFIG = M.GPTConfig(vocab_size=16, block_size=96, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(scope='module')
def params():
  # Larger-than-default weights so the random model's next-token distribution is far from uniform
  # and greedy choices are not decided by rounding.
  p = M.init_params(CONFIG, jax.random.PRNGKey(0))
  return jax.tree.map(lambda x: x * 8 if x.ndim == 2 else x, p)


@functools.partial(jax.jit, static_argnums=0)
def full_forward(config, params, tokens):
  return M.GPT(config).apply({'params': params}, tokens)


def test_cached_decoding_equals_full_forward_at_every_position(params):
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 40), 0, CONFIG.vocab_size)
  full = full_forward(CONFIG, params, tokens)
  gpt = M.GPT(CONFIG)
  step = jax.jit(lambda p, t, c: gpt.apply({'params': p}, t, cache=c))
  cache = kvc.init(CONFIG, 3, 40)
  prefill_logits, cache = step(params, tokens[:, :10], cache)  # prefill 10, then one at a time
  pieces = [prefill_logits]
  for t in range(10, 40):
    logits, cache = step(params, tokens[:, t:t + 1], cache)
    pieces.append(logits)
  cached = jnp.concatenate(pieces, axis=1)
  # fp32; the cached path sums attention over 40 slots (masked ones are exact zeros) in a different
  # order than the full one: differences stay at a few ulps of logits of size ~10.
  np.testing.assert_allclose(np.asarray(cached), np.asarray(full), atol=1e-5, rtol=1e-5)
  assert cache.pos.tolist() == [40, 40, 40]


def naive_greedy(params, prompt, n_new):
  """Re-runs the full forward on the whole sequence for every new token (no cache)."""
  seq = np.zeros((1, CONFIG.block_size), np.int32)
  seq[0, :len(prompt)] = prompt
  n = len(prompt)
  for _ in range(n_new):
    # Causal, so the logits at n - 1 depend only on seq[:n]: the padding after it is never seen.
    logits = full_forward(CONFIG, params, jnp.asarray(seq))
    seq[0, n] = int(jnp.argmax(logits[0, n - 1]))
    n += 1
  return seq[0, len(prompt):n].tolist()


def test_greedy_with_cache_equals_naive_loop_for_64_tokens(params):
  prompt = [3, 1, 4, 1, 5]
  out = decode.generate(params, CONFIG, [prompt], jax.random.PRNGKey(0), max_new_tokens=64,
                        temperature=0.0)
  assert out.tokens.shape == (1, 64) and int(out.lengths[0]) == 64
  assert out.tokens[0].tolist() == naive_greedy(params, prompt, 64)
  assert len(set(out.tokens[0].tolist())) > 2  # a non-degenerate sequence, so the match means something


def test_ragged_batch_equals_each_prompt_alone(params):
  prompts = [[1, 2, 3, 4, 5, 6, 7], [9], [4, 4, 2]]
  kwargs = dict(max_new_tokens=12, temperature=0.0, bucket_size=16)  # the batch grows to 24 slots, alone not all
  batch = decode.generate(params, CONFIG, prompts, jax.random.PRNGKey(0), **kwargs)
  for i, p in enumerate(prompts):
    alone = decode.generate(params, CONFIG, [p], jax.random.PRNGKey(0), **kwargs)
    assert batch.tokens[i].tolist() == alone.tokens[0].tolist()


RAGGED = [[3, 1, 4], [2, 7, 1, 8, 2, 8, 1, 8, 2, 8, 4, 5, 9, 0], [1, 4, 1, 4, 2, 1, 3]]


# ---------------------------------------------------------------------------------------------
# Row groups: a batch whose cache outgrows the CPU cache is decoded in groups, side by side on
# several devices, splitting as the cache grows


@pytest.mark.parametrize('batch, row_bytes, devices, budget, groups', [
    (1, 100 << 20, 2, 16 << 20, 1),  # one row: one group, whatever it holds
    (16, 2 << 20, 2, 16 << 20, 4),  # 512 slots of the benchmark's model: groups of 4, two at a time
    (16, 2 << 20, 1, 16 << 20, 2),  # one device: groups of 8, one at a time
    (16, 256 << 10, 2, 16 << 20, 2),  # a short cache fits whole: one group per device
    (16, 256 << 10, 1, 16 << 20, 1),
    (16, 100 << 20, 2, 16 << 20, 16),  # no group fits: one row each, never more groups than rows
    (3, 1 << 20, 8, None, 4),  # accelerators (no budget): a group per device while rows last
    (16, 1 << 30, 8, None, 8),
])
def test_plan_groups(batch, row_bytes, devices, budget, groups):
  assert decode.plan_groups(batch, row_bytes, devices, budget) == groups


def test_groups_split_as_the_cache_grows_and_equal_one_group(params, monkeypatch):
  """8 ragged rows on 2 devices with a cache budget that makes 2 groups at 32 slots, 4 at 48 and 8
  at 96: greedy, past the context (rows slide), every row equals the same request decoded as one
  group on one device. (Sampled rows under grouping: the next test.)"""
  devices = jax.devices()[:2]  # conftest: 8 CPU devices
  prompts = [[i % 16] * (1 + 2 * i) for i in range(8)]
  kwargs = dict(max_new_tokens=100, bucket_size=32, temperature=0.0)
  whole = decode.generate(params, CONFIG, prompts, jax.random.PRNGKey(1), rows_per_group=8, devices=devices[:1],
                          **kwargs)
  with monkeypatch.context() as m:
    m.setattr(decode, 'SPLIT_MIN_BYTES', 0)  # split even this tiny model
    # 128 KiB for the running groups; a row holds 512 bytes per slot (2 layers, K and V, 32 floats).
    m.setattr(decode.cpu_lib, 'last_level_cache_bytes', lambda: 256 << 10)
    groups_at, _ = decode._grouping(params, CONFIG, 8, 96, None, devices)
    assert [groups_at(n) for n in (32, 48, 64, 96)] == [2, 4, 4, 8]
    decode._halve_state.clear_cache()
    split = decode.generate(params, CONFIG, prompts, jax.random.PRNGKey(1), devices=devices, **kwargs)
    assert decode._halve_state._cache_size() == 2 * 2  # halved twice (2 -> 4 -> 8 groups), on each device
  np.testing.assert_array_equal(split.tokens, whole.tokens)
  np.testing.assert_array_equal(split.lengths, whole.lengths)
  assert len({tuple(row) for row in split.tokens.tolist()}) == 8  # the rows differ, so equality means something


def test_a_rows_samples_do_not_depend_on_the_other_rows(params):
  """Row r draws from fold_in(rng, r): the same prompt in the same row gives the same sample whatever
  the rows beside it, and a grouping of the batch changes nothing either."""
  kwargs = dict(max_new_tokens=30, temperature=1.0)
  a = decode.generate(params, CONFIG, [[5, 6], [1]], jax.random.PRNGKey(3), **kwargs)
  b = decode.generate(params, CONFIG, [[5, 6], [2, 2, 2, 2]], jax.random.PRNGKey(3), **kwargs)
  c = decode.generate(params, CONFIG, [[5, 6], [1]], jax.random.PRNGKey(3), rows_per_group=1, **kwargs)
  assert a.tokens[0].tolist() == b.tokens[0].tolist()
  np.testing.assert_array_equal(a.tokens, c.tokens)
  assert a.tokens[1].tolist() != b.tokens[1].tolist()  # the other rows did change


def test_row_ids_give_a_split_request_the_samples_of_one_call(params):
  """Rows 1 and 3 of a four-row request, generated alone with row_ids [1, 3], draw what they drew in
  the whole request (sampled, temperature 1); without row_ids they would be rows 0 and 1."""
  prompts, kwargs = [[5, 6], [1], [7, 7, 7], [2]], dict(max_new_tokens=20, temperature=1.0)
  whole = decode.generate(params, CONFIG, prompts, jax.random.PRNGKey(4), **kwargs)
  split = decode.generate(params, CONFIG, [prompts[1], prompts[3]], jax.random.PRNGKey(4), row_ids=[1, 3], **kwargs)
  plain = decode.generate(params, CONFIG, [prompts[1], prompts[3]], jax.random.PRNGKey(4), **kwargs)
  np.testing.assert_array_equal(split.tokens, whole.tokens[[1, 3]])
  assert plain.tokens.tolist() != split.tokens.tolist()
  with pytest.raises(GptjaxError, match=r'row_ids must be 2 integers in \[0, 2\^31\)'):
    decode.generate(params, CONFIG, [prompts[1], prompts[3]], jax.random.PRNGKey(4), row_ids=[1, -3], **kwargs)


def test_ragged_rows_crossing_bucket_boundaries_equal_the_naive_loop(params):
  """Buckets of 8, 12, 16, 24, 32, 48, 64 and 96 slots: the rows (3, 14 and 7 prompt tokens) reach each
  boundary at different steps of the same chunks, and every row still equals the full forward run token
  by token."""
  prompts = RAGGED
  out = decode.generate(params, CONFIG, prompts, jax.random.PRNGKey(0), max_new_tokens=70,
                        temperature=0.0, bucket_size=8)
  for row, prompt in zip(out.tokens.tolist(), prompts):
    assert row == naive_greedy(params, prompt, 70)


def compiled_programs():
  return sum(program._cache_size() for program in decode.PROGRAMS)


def test_compiled_programs_are_bounded_whatever_max_new_tokens(params):
  """The documented bound: at most 1 (prefill) + 2 per bucket (grow into it, decode in it) + 1 (slide)
  programs per call (on one device; row groups add at most one split per bucket), and a longer request
  with the same prompt shape reuses the shorter one's."""
  for program in decode.PROGRAMS:
    program.clear_cache()
  buckets = decode.cache_buckets(CONFIG.block_size, 16)
  assert buckets == (16, 24, 32, 48, 64, 96)
  bound = 1 + 2 * len(buckets) + 1
  counts = []
  for n in (10, 100, 1000):  # 100 and 1000 go past the 96 positions: rows slide 1 and about 20 times
    out = decode.generate(params, CONFIG, RAGGED, jax.random.PRNGKey(0), max_new_tokens=n, temperature=0.0,
                          bucket_size=16)
    assert out.tokens.shape == (3, n) and out.lengths.tolist() == [n] * 3
    counts.append(compiled_programs())
  # 10 tokens after a 14-token prompt reach slot 23: the prefill, decoding in 16, growing to and decoding
  # in 24 (4 programs); 100 adds growing to and decoding in 32, 48, 64 and 96, and sliding (9 more);
  # 1000 runs only those again.
  assert counts == [4, 13, 13], counts
  assert counts[-1] <= bound


# ---------------------------------------------------------------------------------------------
# Generating past the context: each full row keeps its last `keep` tokens and goes on

SLIDE = M.GPTConfig(vocab_size=16, block_size=24, n_layer=2, n_head=2, n_embd=32)


def naive_sliding(config, params, prompt, n_new, keep):
  """The reference: the full forward on the row's window each step; a window that outgrows
  block_size is cropped to its last `keep` tokens, a prompt longer than it to its last block_size."""
  seq, start, out = list(prompt), max(0, len(prompt) - config.block_size), []
  for _ in range(n_new):
    if len(seq) - start > config.block_size:
      start = len(seq) - keep
    window = np.zeros((1, config.block_size), np.int32)
    window[0, :len(seq) - start] = seq[start:]
    logits = full_forward(config, params, jnp.asarray(window))  # causal: the padding is never seen
    seq.append(int(jnp.argmax(logits[0, len(seq) - start - 1])))
    out.append(seq[-1])
  return out


@pytest.mark.parametrize('pos_encoding, keep', [('learned', None), ('sinusoidal', 7), ('rope', 12),
                                                ('learned', 24), ('learned', 1)])
def test_sliding_past_the_context_equals_the_cropping_loop(pos_encoding, keep):
  """Rows of 5, 1, 9 and 30 tokens (the last longer than the 24 positions) each slide when they fill,
  at different steps, and still equal the naive cropping loop token for token; keep 24 slides at
  every step, keep 1 keeps only the token it feeds."""
  config = dataclasses.replace(SLIDE, pos_encoding=pos_encoding)
  params = jax.tree.map(lambda x: x * 8 if x.ndim == 2 else x, M.init_params(config, jax.random.PRNGKey(0)))
  prompts = [[1, 2, 3, 4, 5], [9], [4, 4, 2, 7, 1, 1, 3, 8, 6], [i % 16 for i in range(30)]]
  n_new = 60
  # One bucket (the 30-token row fills the context at once; buckets are tested above): fewer programs.
  kwargs = dict(max_new_tokens=n_new, temperature=0.0, bucket_size=24, keep=keep)
  out = decode.generate(params, config, prompts, jax.random.PRNGKey(0), **kwargs)
  for i, prompt in enumerate(prompts):
    want = naive_sliding(config, params, prompt, n_new, config.block_size // 2 if keep is None else keep)
    assert out.tokens[i].tolist() == want, i
    assert len(set(want)) > 2  # a varied sequence, so the match means something
  if keep is None:  # and each row slides the same alone as in a batch whose rows slide at other steps
    for i, prompt in enumerate(prompts):
      alone = decode.generate(params, config, [prompt], jax.random.PRNGKey(0), **kwargs)
      assert alone.tokens[0].tolist() == out.tokens[i].tolist(), i


def test_stop_tokens_past_the_context(params):
  """A stop token first sampled after a row's slide ends that row there; rows end at different steps."""
  prompts = [[3, 1, 4], [2, 7], [5, 9, 2, 6, 5, 3, 5, 8, 9]]
  kwargs = dict(max_new_tokens=300, temperature=0.0, bucket_size=96)  # one bucket: fewer programs
  free = decode.generate(params, CONFIG, prompts, jax.random.PRNGKey(0), **kwargs).tokens.tolist()
  first_slide = [CONFIG.block_size - len(p) for p in prompts]  # tokens made before a row's first slide
  after_slide = lambda t, row, s: t in row[s:] and t not in row[:s]
  stop = next(t for t in range(16) if all(after_slide(t, row, s) for row, s in zip(free, first_slide)))
  out = decode.generate(params, CONFIG, prompts, jax.random.PRNGKey(0), stop_tokens=[stop], pad_id=15, **kwargs)
  ends = [row.index(stop) for row in free]
  assert out.lengths.tolist() == ends and out.stopped.all()
  for row, want, n in zip(out.tokens.tolist(), free, ends):
    assert row == want[:n] + [15] * (300 - n)
  assert len(set(ends)) == 3


def test_ragged_prefill_logits_equal_each_prompt_alone(params):
  prompts, lengths = decode.pad_prompts([[5, 6, 7, 8], [2, 3]])
  cache = kvc.init(CONFIG, 2, 10)
  logits, cache = decode.prefill(params, CONFIG, jnp.asarray(prompts), jnp.asarray(lengths), cache)
  assert cache.pos.tolist() == [4, 2]
  for i, n in enumerate(lengths):
    alone = full_forward(CONFIG, params, jnp.asarray(prompts[i:i + 1, :n]))[0, -1]
    np.testing.assert_allclose(np.asarray(logits[i]), np.asarray(alone), atol=1e-5, rtol=1e-5)


def test_sampling_is_reproducible_for_a_seed(params):
  kwargs = dict(max_new_tokens=20, temperature=1.0)
  a = decode.generate(params, CONFIG, [[1], [1]], jax.random.PRNGKey(5), **kwargs)
  b = decode.generate(params, CONFIG, [[1], [1]], jax.random.PRNGKey(5), **kwargs)
  c = decode.generate(params, CONFIG, [[1], [1]], jax.random.PRNGKey(6), **kwargs)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)


def test_top_k_1_is_greedy(params):
  greedy = decode.generate(params, CONFIG, [[7, 7]], jax.random.PRNGKey(0), max_new_tokens=30,
                           temperature=0.0)
  top1 = decode.generate(params, CONFIG, [[7, 7]], jax.random.PRNGKey(3), max_new_tokens=30,
                         temperature=1.5, top_k=1)
  np.testing.assert_array_equal(greedy.tokens, top1.tokens)


def test_padding_ids_of_a_padded_vocabulary_are_never_sampled():
  """Ids from real_vocab up (a vocabulary padded past the tokenizer's) are never picked, whatever the
  strategy, even when their logits are the largest."""
  logits = jnp.tile(jnp.array([[0.0, 1.0, 0.5, 9.0, 8.0]]), (2000, 1))  # ids 3, 4: padding, most likely
  for sampling in [decode.Sampling(0.0, real_vocab=3), decode.Sampling(1.0, real_vocab=3),
                   decode.Sampling(5.0, top_k=5, real_vocab=3), decode.Sampling(1.0, top_p=0.99, real_vocab=3)]:
    tokens = np.asarray(decode.sample_logits(jax.random.PRNGKey(0), logits, sampling))
    assert tokens.max() < 3, sampling
    assert len(set(tokens.tolist())) == (1 if sampling.temperature == 0 else 3)  # the real ids still drawn
  # Without the limit the padding wins (so the check above could fail).
  assert int(decode.sample_logits(jax.random.PRNGKey(0), logits[:1], decode.Sampling(0.0))[0]) == 3


def test_generate_with_a_padded_vocabulary_equals_greedy_over_the_real_ids(params):
  """CONFIG's 16 ids as a tokenizer's 11 padded to 16: generation never emits 11..15 and equals the
  naive greedy loop taking the argmax over ids 0..10 only."""
  prompt, n_real = [3, 1, 4], 11
  free = decode.generate(params, CONFIG, [prompt], jax.random.PRNGKey(0), max_new_tokens=40, temperature=0.0)
  assert max(free.tokens[0]) >= n_real  # the random model does pick padding ids when allowed
  out = decode.generate(params, CONFIG, [prompt], jax.random.PRNGKey(0), max_new_tokens=40, temperature=0.0,
                        real_vocab_size=n_real)
  seq = list(prompt)
  for _ in range(40):
    window = np.zeros((1, CONFIG.block_size), np.int32)
    window[0, :len(seq)] = seq
    seq.append(int(jnp.argmax(full_forward(CONFIG, params, jnp.asarray(window))[0, len(seq) - 1, :n_real])))
  assert out.tokens[0].tolist() == seq[len(prompt):]
  sampled = decode.generate(params, CONFIG, [prompt] * 8, jax.random.PRNGKey(0), max_new_tokens=40,
                            temperature=2.0, real_vocab_size=n_real)
  assert sampled.tokens.max() < n_real


def test_top_k_keeps_the_k_largest():
  logits = jnp.log(jnp.array([[0.05, 0.4, 0.1, 0.3, 0.15]]))
  kept = np.isfinite(np.asarray(decode.top_k_mask(logits, 3)))
  assert kept.tolist() == [[False, True, False, True, True]]


def test_top_p_keeps_the_smallest_set_reaching_p():
  probs = jnp.array([[0.05, 0.4, 0.1, 0.3, 0.15]])  # sorted: 0.4, 0.3, 0.15, 0.1, 0.05
  logits = jnp.log(probs)
  keep = lambda p: np.isfinite(np.asarray(decode.top_p_mask(logits, p)))[0].tolist()
  assert keep(0.4) == [False, True, False, False, False]  # 0.4 alone reaches 0.4
  assert keep(0.5) == [False, True, False, True, False]  # 0.4 < 0.5 <= 0.7
  assert keep(0.69) == [False, True, False, True, False]  # two tokens hold 0.7
  assert keep(0.71) == [False, True, False, True, True]  # past 0.7 the third is needed (0.85)
  assert keep(1.0) == [True] * 5
  assert keep(0.01) == [False, True, False, False, False]  # the top token always stays


def test_top_k_and_top_p_masks_equal_their_sorting_definitions():
  """The bisection filters keep exactly what sorting keeps, over seeded random rows: top-k keeps the
  logits >= the k-th largest (ties included; -0.0 equals 0.0; -inf padding stays out), top-p keeps a
  token iff the tokens sorted before it hold less than p. Top-p cases where p falls within 1e-5 of a
  cumulative sum are skipped: there the two float32 summation orders may round to either side."""
  rng = np.random.default_rng(0)
  top_k, top_p = jax.jit(decode.top_k_mask), jax.jit(decode.top_p_mask)  # k and p traced: one compile per shape
  checked_p = 0
  for trial in range(60):
    vocab = (7, 64, 199)[trial % 3]
    x = (rng.normal(size=(3, vocab)) * rng.uniform(0.1, 5)).astype(np.float32)
    if trial % 2:
      x = np.round(x)  # ties, and -0.0 next to 0.0
    if trial % 5 == 0:
      x[:, :vocab // 3] = -np.inf
    k = int(rng.integers(1, vocab + 1))
    kth = np.sort(x, axis=-1)[:, vocab - k:vocab - k + 1]
    np.testing.assert_array_equal(np.isfinite(top_k(jnp.asarray(x), k)), (x >= kth) & np.isfinite(x))
    if trial % 2 == 0:  # no ties: "sorted before it" is well defined
      p = float(rng.uniform(0.01, 1.0))
      probs = np.asarray(jax.nn.softmax(jnp.asarray(x), axis=-1))
      order = np.argsort(-probs, axis=-1, kind='stable')
      cumulative = np.cumsum(np.take_along_axis(probs, order, axis=-1), axis=-1)
      if np.abs(cumulative - p).min() < 1e-5:
        continue
      want = np.zeros_like(x, bool)
      np.put_along_axis(want, order, cumulative - np.take_along_axis(probs, order, axis=-1) < p, axis=-1)
      np.testing.assert_array_equal(np.isfinite(top_p(jnp.asarray(x), p)), want & np.isfinite(x))
      checked_p += 1
  assert checked_p >= 20


def test_top_p_sampling_never_leaves_the_nucleus():
  logits = jnp.log(jnp.tile(jnp.array([[0.05, 0.4, 0.1, 0.3, 0.15]]), (2000, 1)))
  tokens = decode.sample_logits(jax.random.PRNGKey(0), logits, decode.Sampling(1.0, 0, 0.6))
  counts = np.bincount(np.asarray(tokens), minlength=5)
  assert counts[[0, 2, 4]].sum() == 0
  # Renormalised nucleus: 0.4/0.7 = 0.571 for token 1; binomial sd over 2000 draws is 0.011.
  assert abs(counts[1] / 2000 - 0.4 / 0.7) < 0.05


def test_temperature_sharpens_and_flattens():
  logits = jnp.tile(jnp.array([[0.0, 1.0]]), (4000, 1))
  frac = lambda t: float(decode.sample_logits(jax.random.PRNGKey(0), logits, decode.Sampling(t)).mean())
  # P(token 1) = sigmoid(1 / t): 0.73 at t=1, 0.88 at t=0.5, 0.62 at t=2; sd of each estimate 0.008.
  assert abs(frac(1.0) - 0.731) < 0.03
  assert abs(frac(0.5) - 0.881) < 0.03
  assert abs(frac(2.0) - 0.622) < 0.03


def test_stop_tokens_end_rows_independently(params):
  prompts = [[3, 1, 4], [2, 7], [5]]
  free = decode.generate(params, CONFIG, prompts, jax.random.PRNGKey(0), max_new_tokens=20,
                         temperature=0.0)
  # Use as stop token the token row 0 greedily produces at its 5th step (and which row 0 had not
  # produced before), so row 0 must stop there while others stop at their own first occurrence.
  row0 = free.tokens[0].tolist()
  stop = next(t for i, t in enumerate(row0) if i >= 4 and t not in row0[:i])
  out = decode.generate(params, CONFIG, prompts, jax.random.PRNGKey(0), max_new_tokens=20,
                        temperature=0.0, stop_tokens=[stop], pad_id=15)
  for i in range(3):
    full = free.tokens[i].tolist()
    n = full.index(stop) if stop in full else 20
    assert int(out.lengths[i]) == n
    assert bool(out.stopped[i]) == (stop in full)
    assert out.tokens[i].tolist() == full[:n] + [15] * (20 - n)  # padding after the stop
  assert len({int(n) for n in out.lengths}) > 1  # rows really ended at different steps


def first_stop(tokens, sequences):
  """(length, stopped) of a row whose generated tokens are `tokens` when it stops at the first step
  where they end with one of `sequences`, leaving that sequence out (the longest, if several end there)."""
  for end in range(len(tokens)):
    found = [len(seq) for seq in sequences if end + 1 >= len(seq) and tokens[end + 1 - len(seq):end + 1] == seq]
    if found:
      return end + 1 - max(found), True
  return len(tokens), False


def test_stop_sequences_end_rows_where_their_generated_tokens_first_end_with_one(params):
  """Stop sequences of two and three tokens taken from the rows' own greedy output, one of them past
  the 96-position context (its row has slid by then), and one that begins with a prompt's last token:
  each row ends where the reference cut (`first_stop`, on the unstopped output) says, with the sequence
  left out and padding after it; the tokens of a prompt never complete a sequence."""
  prompts, n_new = [[3, 1, 4], [2, 7], [5]], 150
  kwargs = dict(max_new_tokens=n_new, temperature=0.0, bucket_size=8)
  free = decode.generate(params, CONFIG, prompts, jax.random.PRNGKey(0), **kwargs).tokens.tolist()
  slid = [CONFIG.block_size - len(p) for p in prompts]  # a row's tokens from here on come after its slide
  # (row, start) of a 3-gram that a row first makes after its slide, and a 2-gram of row 1 that row
  # does not make before it: that row then stops past its slide.
  r, i = next((r, i) for r, row in enumerate(free) for i in range(slid[r], n_new - 3)
              if all(row[j:j + 3] != row[i:i + 3] for j in range(i)))
  late = free[r][i:i + 3]
  pair = next(free[1][j:j + 2] for j in range(n_new - 2)
              if all(free[r][k:k + 2] != free[1][j:j + 2] for k in range(i + 2)))
  sequences = [late, pair, [5, free[2][0]]]
  out = decode.generate(params, CONFIG, prompts, jax.random.PRNGKey(0), stop_sequences=sequences, pad_id=15,
                        **kwargs)
  expected = [first_stop(row, sequences) for row in free]
  assert [(int(n), bool(s)) for n, s in zip(out.lengths, out.stopped)] == expected
  for row, full, (n, _) in zip(out.tokens.tolist(), free, expected):
    assert row == full[:n] + [15] * (n_new - n)
  assert expected[r] == (i, True) and i >= slid[r]  # that row stopped after it slid
  with pytest.raises(GptjaxError, match='stop_sequences must be non-empty lists of integer token ids'):
    decode.generate(params, CONFIG, prompts, jax.random.PRNGKey(0), stop_sequences=[[]], **kwargs)


@pytest.mark.parametrize('kwargs, words', [
    (dict(max_new_tokens=4, bucket_size=0), 'bucket_size=0'),
    (dict(max_new_tokens=4, keep=97), 'keep=97'),
    (dict(max_new_tokens=0), 'max_new_tokens=0'),
    (dict(max_new_tokens=4, temperature=-1.0), 'temperature'),
    (dict(max_new_tokens=4, top_k=17), 'top_k=17'),
    (dict(max_new_tokens=4, top_p=0.0), 'top_p=0.0'),
    (dict(max_new_tokens=4, top_p=1.5), 'top_p=1.5'),
    (dict(max_new_tokens=4, real_vocab_size=17), 'real_vocab_size=17'),
    (dict(max_new_tokens=4, real_vocab_size=0), 'real_vocab_size=0'),
    (dict(max_new_tokens=4, top_k=12, real_vocab_size=11), 'top_k=12 .* vocabulary size 11'),
    (dict(max_new_tokens=4, rows_per_group=0), 'rows_per_group=0'),
    (dict(max_new_tokens=4, devices=[]), 'devices is empty'),
])
def test_bad_generate_arguments_fail_before_compute(params, kwargs, words):
  for program in decode.PROGRAMS:
    program.clear_cache()
  with pytest.raises(GptjaxError, match=words):
    decode.generate(params, CONFIG, [[1, 2]], jax.random.PRNGKey(0), **kwargs)
  assert compiled_programs() == 0  # nothing was compiled or run


def test_empty_prompt_is_refused(params):
  with pytest.raises(GptjaxError, match='at least one token'):
    decode.generate(params, CONFIG, [[]], jax.random.PRNGKey(0), max_new_tokens=3)


# ---------------------------------------------------------------------------------------------
# The seed's inference example

WORDS = ['你', '是', '一', '只', '猫', '<end>']


def test_seed_example_generates_shi_yi_zhi_mao_then_stops():
  """Trained on "你 是 一 只 猫 <end>", greedy generation from "你" gives 是 一 只 猫 and stops."""
  config = M.GPTConfig(vocab_size=len(WORDS), block_size=8, n_layer=2, n_head=2, n_embd=16)
  tx = optax.adam(3e-2)
  state = T.init_state(config, tx, seed=0)
  sentence = jnp.array([[0, 1, 2, 3, 4, 5]])  # 你 是 一 只 猫 <end>
  step = jax.jit(functools.partial(T.train_steps, model=M.GPT(config), tx=tx, axis_name=None))
  state, metrics = step(state, jnp.broadcast_to(sentence, (100, 1, 6)))
  assert float(metrics['loss'][-1]) < 0.01
  out = decode.generate(state.params, config, [[WORDS.index('你')]], jax.random.PRNGKey(0),
                        max_new_tokens=7, temperature=0.0, stop_tokens=[WORDS.index('<end>')])
  words = [WORDS[t] for t in out.tokens[0, :int(out.lengths[0])].tolist()]
  assert words == ['是', '一', '只', '猫']
  assert bool(out.stopped[0])
