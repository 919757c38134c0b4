"""Generation: prefill the prompt into a KV cache, then one token per step, in compiled loops.

    prompts [batch, prompt_len] (right-padded) ──prefill──▶ cache, each row's first new token
    ──decode chunks (a while loop each)──▶ carry DecodeState(cache, token, rng, done, length, recent)
    ──▶ Generation(tokens [batch, max_new_tokens], lengths [batch], stopped [batch])

Each decode step computes Q, K, V for one new token per row and attends over the cache: O(n) work
per token instead of re-running the O(n^2) forward over the whole sequence.

Prefix-bounded attention. A step attends over every slot of the cache it is given, so the cache is
kept only as long as the longest row needs: its length is one of a few buckets (`cache_buckets`:
bucket_size, 1.5x, 2x, 3x, 4x, 6x, ... up to block_size), and the loop runs in chunks, one compiled
while loop per bucket, growing the cache to the next bucket between chunks. A step at position p
thus costs what about p to 1.5p slots cost, not the whole buffer. Rows advance one position per step
whatever they sample, so `generate` plans the chunks on the host from the prompt lengths alone: it
never waits for the device between chunks, and the calls queue asynchronously.

Row groups. A step reads every row's keys and values, so once the batch's cache outgrows the CPU's
last-level cache each step streams it from memory. `generate` then decodes the rows in groups whose
caches fit (`plan_groups`), each group running a whole chunk before the next, and spreads the groups
over the devices, where they run side by side (on a CPU: one XLA device per core, as `gptjax.sample`
sets up; on accelerators: one group per device). Groups start one per device and split in two as the
cache grows. Each row samples with its own key, fold_in(rng, row), so grouping changes no output.

Sliding past the context. max_new_tokens may exceed what fits in block_size positions. When a row's
cache is full, its last `keep - 1` tokens (default keep = block_size // 2, counting the token about
to be fed) are re-encoded at positions 0.. (a prefill of that row alone, compiled once) and decoding
goes on; rows slide independently, each when it fills. This is exactly a loop that crops the row to
its last `keep` tokens whenever it outgrows block_size and re-runs the model on the cropped window.
Re-encoding (rather than shifting cached keys) is what makes every position encoding correct:
learned and sinusoidal positions are added at the input, so every layer's keys depend on absolute
positions and must be recomputed; rotary encodings (RoPE, applied to q and k at each row's cache
position) get the new positions 0.. the same way. A prompt longer than block_size is cropped to its
last block_size tokens first, as nanoGPT's sampler does.

Compiled programs: one generate() call compiles at most 1 (prefill) + 2 per bucket it reaches
(growing into it, decoding in it) + 1 (sliding) programs, whatever max_new_tokens is, plus one per
bucket where row groups split; with groups on several devices, each device compiles its own copies.
Calls with the same batch, padded prompt length (a power of two) and settings reuse them. Sampling strategies
are small pure functions of (rng, logits). Nothing is stored between calls.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from gptjax import cpu as cpu_lib
from gptjax import kv_cache as kvc
from gptjax.errors import GptjaxError
from gptjax.model import GPT, GPTConfig

# ---------------------------------------------------------------------------------------------
# Sampling: pure functions on logits [batch, vocab]


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How to pick the next token. temperature 0 is greedy; top_k 0 and top_p 1 keep every token.

  real_vocab: ids at and above it are never picked (0 = every id can be). A model's vocabulary is
  often padded past its tokenizer's (to a multiple of 64, or GPT-2's 50257 to 50304): those rows
  have logits too, but no text, and a sampler that picked one would emit an id nothing can decode.
  """

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  real_vocab: int = 0

  @classmethod
  def checked(cls, temperature, top_k, top_p, vocab_size: int, real_vocab: int | None = None) -> 'Sampling':
    """A Sampling from user values, or GptjaxError saying which one is out of range. vocab_size: the
    model's; real_vocab: the tokenizer's, when the model's vocabulary is padded past it (None: the same)."""
    if real_vocab is None or real_vocab == vocab_size:
      real_vocab = 0
    elif not (isinstance(real_vocab, (int, np.integer)) and not isinstance(real_vocab, bool)
              and 1 <= real_vocab <= vocab_size):
      raise GptjaxError(f"real_vocab_size={real_vocab} must be the tokenizer's vocabulary size, between 1 and "
                        f"the model's {vocab_size}")
    vocab_size = real_vocab or vocab_size
    real = lambda x: isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)
    if not (real(temperature) and np.isfinite(temperature) and temperature >= 0):
      raise GptjaxError(f'temperature={temperature} must be a finite number >= 0 (0 = greedy)')
    if not (isinstance(top_k, (int, np.integer)) and not isinstance(top_k, bool) and 0 <= top_k <= vocab_size):
      raise GptjaxError(f'top_k={top_k} must be an integer between 0 (off) and the vocabulary size {vocab_size}')
    if not (real(top_p) and 0 < top_p <= 1):
      raise GptjaxError(f'top_p={top_p} must be in (0, 1] (1 = off)')
    return cls(float(temperature), int(top_k), float(top_p), int(real_vocab))


def _ordered_bits(x: jax.Array) -> jax.Array:
  """float32 -> uint32 in the same order (for finite values and +-inf): a < b iff bits(a) < bits(b),
  and a == b iff bits(a) == bits(b) (-0.0 is made +0.0 first)."""
  x = x.astype(jnp.float32)
  i = jax.lax.bitcast_convert_type(jnp.where(x == 0, jnp.float32(0), x), jnp.int32)
  return jax.lax.bitcast_convert_type(jnp.where(i < 0, ~i, i | jnp.int32(-2**31)), jnp.uint32)


def _lowest_kept(bits: jax.Array, weights: jax.Array, limit) -> jax.Array:
  """Per row of bits [batch, vocab] uint32: the smallest t with sum(weights where bits > t) < limit
  ([batch, 1]), by bisection over the 2^32 values (32 passes over the row, no sort). A token is then
  kept iff bits >= t: iff what is strictly above it weighs less than the limit."""

  def halve(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    above = jnp.sum(jnp.where(bits > mid, weights, 0), axis=-1, keepdims=True)
    return jnp.where(above < limit, lo, mid + 1), jnp.where(above < limit, mid, hi)

  shape = bits.shape[:-1] + (1,)
  lo, _ = jax.lax.fori_loop(0, 32, halve, (jnp.zeros(shape, jnp.uint32), jnp.full(shape, 2**32 - 1, jnp.uint32)))
  return lo


def top_k_mask(logits: jax.Array, k: int) -> jax.Array:
  """Logits outside each row's k largest set to -inf (ties at the k-th value are kept): a token stays
  iff fewer than k logits are strictly larger. Found by bisection, not by sorting the vocabulary
  (XLA:CPU's top_k sorts: 6.8 ms per row of GPT-2's 50,304 logits, experiments/bench_sampling.py)."""
  bits = _ordered_bits(logits)
  return jnp.where(bits >= _lowest_kept(bits, jnp.int32(1), k), logits, -jnp.inf)


def top_p_mask(logits: jax.Array, p: float) -> jax.Array:
  """Nucleus: keep the smallest set of most likely tokens whose probability sums to >= p: a token
  stays iff the tokens strictly more likely than it hold less than p (so the most likely one always
  stays). Found by bisection, not by sorting the vocabulary."""
  probs = jax.nn.softmax(logits, axis=-1)
  bits = _ordered_bits(probs)
  return jnp.where(bits >= _lowest_kept(bits, probs, p), logits, -jnp.inf)


def filtered_logits(logits: jax.Array, sampling: Sampling) -> jax.Array:
  """logits [batch, vocab] float32 with what `sampling` never picks set to -inf (padding ids, then
  outside the top k, then outside the nucleus), scaled by 1 / temperature (unscaled when greedy)."""
  if 0 < sampling.real_vocab < logits.shape[-1]:  # padding ids of a padded vocabulary: never picked
    logits = jnp.where(jnp.arange(logits.shape[-1]) < sampling.real_vocab, logits, -jnp.inf)
  if sampling.temperature == 0:
    return logits
  logits = logits / sampling.temperature
  if sampling.top_k:
    logits = top_k_mask(logits, sampling.top_k)
  if sampling.top_p < 1:
    logits = top_p_mask(logits, sampling.top_p)
  return logits


def sample_logits(rng: jax.Array, logits: jax.Array, sampling: Sampling) -> jax.Array:
  """The next token of each row: logits [batch, vocab] float32 -> [batch] int32, one key for the batch."""
  logits = filtered_logits(logits, sampling)
  if sampling.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# Prefill and the decode step


@flax.struct.dataclass
class DecodeState:
  """The loop carry: everything one step needs, nothing else."""

  cache: kvc.KVCache  # keys/values so far; cache.pos is each row's next position
  token: jax.Array  # [batch] int32: the last sampled token, fed to the next step
  rng: jax.Array  # [batch] keys, one per row: a row's draws do not depend on the rows beside it
  done: jax.Array  # [batch] bool: row has hit a stop token or completed a stop sequence
  length: jax.Array  # [batch] int32: tokens generated before the stop (a stop sequence's own excluded)
  recent: jax.Array  # [batch, longest stop sequence - 1] int32: the row's last tokens (-1 before any)


@flax.struct.dataclass
class Generation:
  tokens: np.ndarray  # [batch, max_new_tokens] int32; pad_id after a row's length
  lengths: np.ndarray  # [batch] int32: generated tokens per row, not counting the stop token
  stopped: np.ndarray  # [batch] bool: the row ended at a stop token (else at max_new_tokens)


def prefill(params, config: GPTConfig, prompts: jax.Array, lengths: jax.Array, cache: kvc.KVCache):
  """Runs the right-padded prompts [batch, prompt_len] through the model in one pass.

  Returns (logits [batch, vocab] after each row's last real token, cache with pos = lengths). The
  pad slots written past a row's length are overwritten by its next tokens before anything reads them.
  """
  logits, cache = GPT(config).apply({'params': params}, prompts, cache=cache)
  last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
  return last, cache.replace(pos=lengths.astype(jnp.int32))


def _stop_parts(stop_tokens: tuple) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
  """stop_tokens as the compiled pieces take it, each entry a token id or a tuple of ids (a stop
  sequence), split into (single ids, sequences of two or more ids)."""
  singles = tuple(int(t) for t in stop_tokens if not isinstance(t, tuple))
  singles += tuple(t[0] for t in stop_tokens if isinstance(t, tuple) and len(t) == 1)
  return singles, tuple(t for t in stop_tokens if isinstance(t, tuple) and len(t) > 1)


def _is_stop(tokens: jax.Array, stop_tokens: tuple) -> jax.Array:
  """[batch] bool: the token is one of the single stop ids."""
  singles, _ = _stop_parts(stop_tokens)
  if not singles:
    return jnp.zeros(tokens.shape, bool)
  return jnp.isin(tokens, jnp.asarray(singles, jnp.int32))


def _recent_width(stop_tokens: tuple) -> int:
  """How many of a row's last tokens the stop sequences need besides the new one."""
  return max((len(seq) - 1 for seq in _stop_parts(stop_tokens)[1]), default=0)


def _completed_sequence(recent: jax.Array, token: jax.Array, stop_tokens: tuple) -> jax.Array:
  """[batch] int32: the length of the longest stop sequence that recent [batch, width] followed by
  token [batch] ends with (the one that starts first in the text), 0 where none does."""
  longest = jnp.zeros(token.shape, jnp.int32)
  for seq in _stop_parts(stop_tokens)[1]:
    before = recent[:, recent.shape[1] - (len(seq) - 1):]
    hit = jnp.all(before == jnp.asarray(seq[:-1], jnp.int32), axis=1) & (token == seq[-1])
    longest = jnp.maximum(longest, jnp.where(hit, len(seq), 0))
  return longest


def _push(recent: jax.Array, token: jax.Array) -> jax.Array:
  return jnp.concatenate([recent[:, 1:], token[:, None]], axis=1) if recent.shape[1] else recent


def _split(keys: jax.Array, sampling: Sampling) -> tuple[jax.Array, jax.Array]:
  """Each row's key split in two: (keys for later [batch], keys for this draw [batch]); greedy draws
  nothing, so it leaves the keys as they are."""
  if sampling.temperature == 0:
    return keys, keys
  pairs = jax.vmap(jax.random.split)(keys)  # [batch, 2, ...]
  return pairs[:, 0], pairs[:, 1]


def sample_rows(keys: jax.Array, logits: jax.Array, sampling: Sampling) -> jax.Array:
  """sample_logits with one key per row: keys [batch], logits [batch, vocab] -> [batch] int32. The
  filters run on the whole batch; only the draws are per row."""
  if sampling.temperature == 0:
    return sample_logits(keys, logits, sampling)  # greedy: no key is used
  logits = filtered_logits(logits, sampling)
  return jax.vmap(lambda key, row: jax.random.categorical(key, row))(keys, logits).astype(jnp.int32)


def row_keys(rng: jax.Array, rows: jax.Array) -> jax.Array:
  """One key per row from the call's key: row r draws from fold_in(rng, r), whatever else is in the
  batch and however the batch is split into groups."""
  return jax.vmap(lambda r: jax.random.fold_in(rng, r))(rows)


def start(params, config: GPTConfig, prompts: jax.Array, lengths: jax.Array, rng: jax.Array, *,
          max_len: int, sampling: Sampling, stop_tokens: tuple[int, ...],
          rows: jax.Array | None = None) -> tuple[DecodeState, jax.Array]:
  """Prefills a cache of max_len slots and samples each row's first new token.

  rng: the call's key; rows [batch]: each row's index in the whole request (default 0..batch-1),
  which picks its key (`row_keys`). stop_tokens: token ids, or tuples of ids (stop sequences).
  Returns (state, first tokens [batch]); first tokens that are stop tokens are already marked done.
  """
  cache = kvc.init(config, prompts.shape[0], max_len)
  logits, cache = prefill(params, config, prompts, lengths, cache)
  rows = jnp.arange(prompts.shape[0]) if rows is None else rows
  rng, first_rng = _split(row_keys(rng, rows), sampling)
  first = sample_rows(first_rng, logits, sampling)
  done = _is_stop(first, stop_tokens)  # a stop sequence needs two tokens or more: not yet
  recent = _push(jnp.full((prompts.shape[0], _recent_width(stop_tokens)), -1, jnp.int32), first)
  return DecodeState(cache=cache, token=first, rng=rng, done=done, length=(~done).astype(jnp.int32),
                     recent=recent), first


def decode_step(params, config: GPTConfig, state: DecodeState, *, sampling: Sampling,
                stop_tokens: tuple[int, ...] = ()) -> tuple[DecodeState, jax.Array]:
  """Feeds each row's last token at its position, samples the next: (state, tokens [batch]).

  Rows that have stopped keep computing (the batch moves together); their tokens are padding to the
  caller. stop_tokens: token ids, or tuples of ids (stop sequences: a row stops when its generated
  tokens end with one, and state.length then leaves the whole sequence out). The step attends over
  all cache.max_len slots: callers keep the cache as short as the rows allow (see the module docstring).
  """
  logits, cache = GPT(config).apply({'params': params}, state.token[:, None], cache=state.cache)
  rng, step_rng = _split(state.rng, sampling)
  token = sample_rows(step_rng, logits[:, 0], sampling)
  done = state.done | _is_stop(token, stop_tokens)
  length = state.length + (~done).astype(jnp.int32)
  if _recent_width(stop_tokens):  # stop sequences: does the row's output now end with one?
    completed = jnp.where(state.done, 0, _completed_sequence(state.recent, token, stop_tokens))
    done = done | (completed > 0)
    # Its earlier tokens were counted as generated: take them back, and leave this one out.
    length = jnp.where(completed > 0, state.length - (completed - 1), length)
  return DecodeState(cache=cache, token=token, rng=rng, done=done, length=length,
                     recent=_push(state.recent, token)), token


def decode_loop(params, config: GPTConfig, state: DecodeState, steps: int, *, sampling: Sampling,
                stop_tokens: tuple[int, ...] = (), pad_id: int = 0) -> tuple[DecodeState, jax.Array]:
  """`steps` decode steps in one lax.scan over the state's whole cache (no buckets, no sliding: the
  cache must have room for them). Returns (final state, tokens [steps, batch]) with pad_id for rows
  that have stopped (after a stop sequence, a row's output is its first state.length tokens).
  `generate` is the full driver; this is the plain loop, jit-able as one program.
  """

  def step(state: DecodeState, _):
    state, token = decode_step(params, config, state, sampling=sampling, stop_tokens=stop_tokens)
    return state, jnp.where(state.done, pad_id, token)

  return jax.lax.scan(step, state, length=steps)


# ---------------------------------------------------------------------------------------------
# The compiled pieces generate() runs: prefill, grow, decode a chunk, slide


@functools.partial(jax.jit, static_argnames=('config', 'cache_len', 'sampling', 'stop_tokens'))
def _start(params, prompts, lengths, rng, rows, *, config: GPTConfig, cache_len: int, sampling: Sampling,
           stop_tokens: tuple[int, ...]):
  """Prefill over prompt_len slots, then the cache resized to cache_len. Returns (state, context
  [batch, block_size]: the token in each cache slot, first tokens [batch])."""
  state, first = start(params, config, prompts, lengths, rng, max_len=prompts.shape[1], sampling=sampling,
                       stop_tokens=stop_tokens, rows=rows)
  context = jnp.zeros((prompts.shape[0], config.block_size), jnp.int32).at[:, :prompts.shape[1]].set(prompts)
  return state.replace(cache=kvc.resize(state.cache, cache_len)), context, first


@functools.partial(jax.jit, static_argnames=('cache_len',))
def _grow(state: DecodeState, *, cache_len: int) -> DecodeState:
  return state.replace(cache=kvc.resize(state.cache, cache_len))


def _decode_chunk(params, state: DecodeState, context, steps, *, config: GPTConfig, sampling: Sampling,
                  stop_tokens: tuple[int, ...]):
  """`steps` (traced, at most cache.max_len) decode steps in one while loop over the state's cache:
  one program per cache length. Ends early once every row has stopped. Returns (state, context with
  the fed tokens written at their slots, sampled tokens [cache.max_len, batch], the first `steps` real).
  """
  batch, max_len = state.token.shape[0], state.cache.max_len
  first_pos, first_token = state.cache.pos, state.token

  def cond(carry):
    i, state, _ = carry
    return (i < steps) & ~jnp.all(state.done) if stop_tokens else i < steps

  def body(carry):
    i, state, tokens = carry
    state, token = decode_step(params, config, state, sampling=sampling, stop_tokens=stop_tokens)
    return i + 1, state, jax.lax.dynamic_update_slice(tokens, token[None], (i, 0))

  ran, state, tokens = jax.lax.while_loop(cond, body, (0, state, jnp.zeros((max_len, batch), jnp.int32)))
  # The token fed at step i (the carried one, then each sampled one) sits in slot first_pos + i.
  fed = jnp.concatenate([first_token[None], tokens[:-1]], axis=0).T  # [batch, max_len]
  i = jnp.arange(max_len)[None, :]
  slots = jnp.where(i < ran, first_pos[:, None] + i, config.block_size)  # past the end: dropped
  context = context.at[jnp.arange(batch)[:, None], slots].set(fed, mode='drop')
  return state, context, tokens


# XLA:CPU options for the decode loop (see README "Decoding"): a step's dots are small (batch rows x 128
# x 512 here), so handing each to Eigen's thread pool costs more than it saves (batch 1: 59 vs 68-76 us
# per step on an idle 2-core machine, half the time when the cores are shared), and splitting every
# reduction in two (XLA's tree reductions, for long sums) doubles the thunks of each layer norm and
# softmax (151 -> 112 per step, 7-14% less CPU time).
CPU_DECODE_OPTIONS = {'xla_cpu_multi_thread_eigen': False, 'xla_disable_hlo_passes': 'tree_reduction_rewriter'}
_chunk_args = dict(static_argnames=('config', 'sampling', 'stop_tokens'), donate_argnums=(1, 2))
_decode_chunk_cpu = jax.jit(_decode_chunk, compiler_options=CPU_DECODE_OPTIONS, **_chunk_args)
_decode_chunk = jax.jit(_decode_chunk, **_chunk_args)


def _chunk_program():
  """The decode-chunk program for the default backend (the XLA:CPU options only apply to CPUs)."""
  return _decode_chunk_cpu if jax.default_backend() == 'cpu' else _decode_chunk


@functools.partial(jax.jit, static_argnames=('config', 'keep'), donate_argnums=(1, 2))
def _slide(params, state: DecodeState, context, rows, count, *, config: GPTConfig, keep: int):
  """Rows rows[:count], whose caches are full, keep their last keep - 1 tokens, re-encoded alone at
  positions 0 .. keep - 2 (the token they feed next takes position keep - 1). Skipped once every
  row has stopped."""
  block = config.block_size
  count = jnp.where(jnp.all(state.done), 0, count)

  def one(i, carry):
    cache, context = carry
    row = rows[i]
    window = jax.lax.dynamic_slice(context, (row, block - keep + 1), (1, keep - 1))  # [1, keep - 1]
    if keep > 1:
      _, part = GPT(config).apply({'params': params}, window, cache=kvc.init(config, 1, keep - 1))
      cache = kvc.set_row(cache, row, part)
    else:
      cache = cache.replace(pos=cache.pos.at[row].set(0))
    return cache, jax.lax.dynamic_update_slice(context, window, (row, 0))

  cache, context = jax.lax.fori_loop(0, count, one, (state.cache, context))
  return state.replace(cache=cache), context




def cache_buckets(block_size: int, bucket_size: int) -> tuple[int, ...]:
  """The cache lengths decoding uses: two per doubling from bucket_size (b, 3b/2, 2b, 3b, 4b, 6b, ...)
  up to and always including block_size (one bucket, the whole context, when bucket_size >=
  block_size). A step attends over its bucket, so on average a third more slots than are filled
  (powers of two alone: half as many more, for half as many compiled programs)."""
  sizes = []
  while bucket_size < block_size:
    sizes.append(bucket_size)
    if bucket_size * 3 // 2 < block_size and bucket_size >= 2:
      sizes.append(bucket_size * 3 // 2)
    bucket_size *= 2
  return tuple(sizes) + (block_size,)


def bucket_for(buckets: tuple[int, ...], n: int) -> int:
  """The smallest of the cache lengths `buckets` that holds n slots."""
  return next(b for b in buckets if b >= n)


# Row groups: a decode step streams every row's keys and values through the core, so a batch whose
# cache outgrows the CPU's last-level cache is decoded in groups of rows, each group running all the
# steps of a chunk with its own keys and values staying in that cache; with several devices (one XLA
# CPU device per core, or several accelerators) the groups run side by side. Groups split in two as
# the cache grows (small caches: one group per device, so each step's matmuls take many rows at once).
# README "Decoding" has the measurements: batch 16 at 512 slots, 1.3-1.4 ms per step as one group on
# one core, 0.75-0.8 ms as groups of 4-8 rows on one core, 0.5 ms as groups of 4 on two.
SPLIT_MIN_BYTES = 1 << 20  # a batch whose step moves less than this runs as one group: splitting
# it would add dispatches and compiled programs (one set per device) for no gain


def kv_bytes_per_row(config: GPTConfig, cache_len: int) -> int:
  """Bytes of one row's keys and values over cache_len slots, all layers."""
  return 2 * config.n_layer * config.kv_heads * config.head_dim * cache_len * jnp.dtype(config.dtype).itemsize


def plan_groups(batch: int, row_bytes: int, devices: int, budget: int | None) -> int:
  """How many groups (a power of two, at most batch rounded up to one) to decode `batch` rows in.

  row_bytes: one row's K/V at the cache length in question; devices: how many run groups side by
  side; budget: the cache bytes the groups running at once may fill (on a CPU, half its last-level
  cache), None where there is no such budget (accelerators). At least one group per device (while
  there are rows for it), and as few as keep each running group's K/V within its share of the budget.
  """
  groups = 1
  while groups < batch:
    rows, running = -(-batch // groups), min(groups, devices)
    if groups >= min(devices, batch) and (budget is None or rows * row_bytes * running <= budget):
      break
    groups *= 2
  return groups


@dataclasses.dataclass
class _Rows:
  """One group of rows decoding on one device: its inputs there, its state, its host-side plan."""

  params: dict
  ids: np.ndarray  # [rows] each row's index in the (padded) batch: places its output
  pos: np.ndarray  # [rows] each row's next slot, tracked on the host: +1 per step, any token
  state: DecodeState = None
  context: jax.Array = None
  cache_len: int = 0
  # (tokens [steps or cache_len, n] on the device, how many steps are real, the columns that are
  # this group's rows); the first entry holds the first tokens.
  chunks: list = dataclasses.field(default_factory=list)


def generate(params, config: GPTConfig, prompts, rng: jax.Array, *, max_new_tokens: int,
             lengths=None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             stop_tokens: Sequence[int] = (), pad_id: int = 0, bucket_size: int = 64,
             keep: int | None = None, real_vocab_size: int | None = None,
             rows_per_group: int | None = None, devices: Sequence[jax.Device] | None = None,
             row_ids=None, stop_sequences: Sequence[Sequence[int]] = ()) -> Generation:
  """Continues each prompt by up to max_new_tokens tokens (any number: past block_size it slides).

  prompts: [batch, prompt_len] int array (right-padded, with `lengths` [batch]), or a list of token
  lists of any lengths. Sampling: temperature 0 = greedy; top_k > 0 keeps the k most likely tokens;
  top_p < 1 keeps the nucleus. A row stops at any of stop_tokens (not included in its output), or
  once its generated tokens end with one of stop_sequences (token-id lists; the sequence is not
  included either); a batch whose rows have all stopped ends its loop early. bucket_size: the smallest cache length a step attends over (see `cache_buckets`); keep: tokens a
  full row keeps when it slides (default block_size // 2). real_vocab_size: the tokenizer's size when
  config.vocab_size pads past it; ids from it up are never sampled.
  rows_per_group: decode the batch in groups of this many rows throughout (default: groups chosen
  per cache length by `plan_groups`, from the CPU's cache size and the devices); devices: where the
  groups run, in turn (default: the local devices of the default backend, on a CPU at most one per
  core). Rows are independent: greedy, each equals generating that prompt alone; sampled, row r draws
  from fold_in(rng, r) whatever the batch and the grouping. row_ids [batch]: each row's index in a
  larger request (default 0 .. batch - 1), which its key is folded from in place of r: a request
  split over several calls then samples exactly what it would as one call.
  """
  prompts, lengths, sampling, stop_tokens = check_request(
      config, prompts, lengths, max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_id, real_vocab_size,
      stop_sequences)
  block = config.block_size
  keep = block // 2 if keep is None else keep
  integer = lambda x: isinstance(x, (int, np.integer)) and not isinstance(x, bool)
  if not integer(bucket_size) or bucket_size < 1:
    raise GptjaxError(f'bucket_size={bucket_size} must be an integer >= 1')
  if not integer(keep) or not 1 <= keep <= block:
    raise GptjaxError(f'keep={keep} must be an integer between 1 and block_size={block}')
  if rows_per_group is not None and (not integer(rows_per_group) or rows_per_group < 1):
    raise GptjaxError(f'rows_per_group={rows_per_group} must be an integer >= 1 (or None: chosen from the cache)')
  buckets = cache_buckets(block, int(bucket_size))
  batch, n_new = prompts.shape[0], int(max_new_tokens)
  key_ids = _check_row_ids(row_ids, batch)

  # The prompt is padded to a power of two (so few prefill programs serve all prompt lengths).
  width = min(block, 1 << (prompts.shape[1] - 1).bit_length())
  prompts = np.pad(prompts, ((0, 0), (0, width - prompts.shape[1])))  # token 0 in slots no row reads
  first_len = bucket_for(buckets, min(int(lengths.max()) + 1, block))
  last_len = bucket_for(buckets, min(int(lengths.max()) + n_new, block))
  groups_at, devices = _grouping(params, config, batch, last_len, rows_per_group, devices)
  most = groups_at(last_len)
  if most > 1 and batch % most:  # the last rows pad: copies of the last row, dropped at the end
    extra = most * -(-batch // most) - batch
    prompts = np.concatenate([prompts, np.repeat(prompts[-1:], extra, axis=0)])
    lengths = np.concatenate([lengths, np.repeat(lengths[-1:], extra)])
    key_ids = np.concatenate([key_ids, np.repeat(key_ids[-1:], extra)])

  groups = groups_at(first_len)
  rows = prompts.shape[0] // groups
  placed = {}  # device -> params there
  runs, firsts = [], []
  for g in range(groups):
    device = devices[g % len(devices)] if groups > 1 else None
    if device is not None and device not in placed:
      placed[device] = jax.device_put(params, device)
    part = slice(g * rows, (g + 1) * rows)
    put = (lambda x: x) if device is None else functools.partial(jax.device_put, device=device)
    run = _Rows(params=placed.get(device, params), ids=np.arange(part.start, part.stop, dtype=np.int32),
                pos=lengths[part].astype(np.int64), cache_len=first_len)
    run.state, run.context, first = _start(
        run.params, put(prompts[part]), put(lengths[part]), put(rng), put(key_ids[part]), config=config,
        cache_len=first_len, sampling=sampling, stop_tokens=stop_tokens)
    runs.append(run)
    firsts.append(first)
  # A first token is the state's token too, which the first chunk takes over (donated): copy them out.
  for run, first in zip(runs, jax.device_get(firsts)):
    run.chunks.append((first[None], 1, slice(0, rows)))

  # Each group's chunks, dispatched without waiting on any device: groups on different devices run at
  # the same time. The plan depends on the prompt lengths alone (rows advance one slot per step).
  chunk = _chunk_program()
  made = 1
  while made < n_new:
    for run in runs:
      _slide_full_rows(run, config=config, keep=int(keep))
    furthest = int(max(run.pos.max() for run in runs))
    need = bucket_for(buckets, furthest + 1)
    if need > runs[0].cache_len:  # never cut: after a slide the rows soon need the top bucket again
      for run in runs:
        run.cache_len = need
        run.state = _grow(run.state, cache_len=need)
      while len(runs) < groups_at(need):
        runs = [half for run in runs for half in _halve(run)]
    steps = min(n_new - made, runs[0].cache_len - furthest)
    for run in runs:
      run.state, run.context, tokens = chunk(run.params, run.state, run.context, np.int32(steps), config=config,
                                             sampling=sampling, stop_tokens=stop_tokens)
      run.chunks.append((tokens, steps, slice(0, tokens.shape[1])))
      run.pos += steps
    made += steps

  out = np.full((prompts.shape[0], n_new), pad_id, np.int32)
  length = np.zeros((prompts.shape[0],), np.int32)
  stopped = np.zeros((prompts.shape[0],), bool)
  got = jax.device_get([([t for t, _, _ in run.chunks], run.state.length, run.state.done) for run in runs])
  for run, (pieces, n, done) in zip(runs, got):
    out[run.ids] = np.concatenate([p[:k, cols].T for p, (_, k, cols) in zip(pieces, run.chunks)], axis=1)
    length[run.ids], stopped[run.ids] = n, done
  out, length, stopped = out[:batch], length[:batch], stopped[:batch]
  tokens = np.where(np.arange(n_new)[None, :] < length[:, None], out, pad_id).astype(np.int32)
  return Generation(tokens=tokens, lengths=length, stopped=stopped)


def _check_row_ids(row_ids, batch: int) -> np.ndarray:
  """generate's row_ids as [batch] int32 (default 0 .. batch - 1), or GptjaxError saying what is wrong."""
  if row_ids is None:
    return np.arange(batch, dtype=np.int32)
  ids = np.asarray(row_ids)
  if ids.shape != (batch,) or not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= 2**31:
    raise GptjaxError(f'row_ids must be {batch} integers in [0, 2^31), one per prompt (each row\'s index in '
                      f'the whole request); got {ids.dtype}{list(ids.shape)}')
  return ids.astype(np.int32)


def _grouping(params, config: GPTConfig, batch: int, last_len: int, rows_per_group, devices):
  """(groups at a cache length: cache_len -> int, the devices groups cycle through). last_len: the
  largest cache length the call reaches."""
  if devices is None:
    devices = jax.local_devices()
    if devices[0].platform == 'cpu':
      cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
      devices = devices[:max(1, cores)]
  devices = list(devices)
  if not devices:
    raise GptjaxError('devices is empty; pass None (the local devices) or at least one device')
  if rows_per_group is not None:
    fixed = -(-batch // min(int(rows_per_group), batch))
    return (lambda cache_len: fixed), devices
  params_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  if batch * kv_bytes_per_row(config, last_len) + params_bytes < SPLIT_MIN_BYTES:
    return (lambda cache_len: 1), devices
  budget = None
  if devices[0].platform == 'cpu':
    budget = (cpu_lib.last_level_cache_bytes() or 32 << 20) // 2

  def groups_at(cache_len):
    return plan_groups(batch, kv_bytes_per_row(config, cache_len), len(devices), budget)

  return groups_at, devices


def _halve(run: _Rows) -> tuple[_Rows, _Rows]:
  """The group split into its first and second half of rows, both on its device."""
  half = run.ids.shape[0] // 2
  out = []
  for (state, context), (lo, hi) in zip(_halve_state(run.state, run.context, half=half),
                                        ((0, half), (half, run.ids.shape[0]))):
    chunks = [(t, n, slice(cols.start + lo, cols.start + hi)) for t, n, cols in run.chunks]
    out.append(dataclasses.replace(run, ids=run.ids[lo:hi], pos=run.pos[lo:hi].copy(), state=state,
                                   context=context, chunks=chunks))
  return tuple(out)


@functools.partial(jax.jit, static_argnames=('half',))
def _halve_state(state: DecodeState, context, *, half: int):
  """((state, context) of rows :half, the same of rows half:). Cache buffers hold batch * n_kv_head
  rows; every other array has one per row."""
  per_row = state.cache.k[0].shape[0] // state.token.shape[0]
  leaves, tree = jax.tree.flatten(state)
  cut = [half * per_row if x.ndim == 3 else half for x in leaves]
  first = jax.tree.unflatten(tree, [x[:n] for x, n in zip(leaves, cut)])
  second = jax.tree.unflatten(tree, [x[n:] for x, n in zip(leaves, cut)])
  return (first, context[:half]), (second, context[half:])


def _slide_full_rows(run: _Rows, *, config: GPTConfig, keep: int) -> None:
  """Rows of the group whose caches are full keep their last keep - 1 tokens (see `_slide`)."""
  full = np.flatnonzero(run.pos >= config.block_size)
  if full.size:
    rows = np.zeros(run.pos.shape, np.int32)
    rows[:full.size] = full
    run.state, run.context = _slide(run.params, run.state, run.context, rows, np.int32(full.size), config=config,
                                    keep=keep)
    run.pos[full] = keep - 1


PROGRAMS = (_start, _grow, _decode_chunk, _decode_chunk_cpu, _slide, _halve_state)  # generate()'s compiled pieces


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads token lists into ([batch, longest] int32, lengths [batch] int32)."""
  lengths = np.array([len(p) for p in prompts], np.int32)
  out = np.full((len(prompts), max(lengths, default=0)), pad_id, np.int32)
  for i, p in enumerate(prompts):
    out[i, :len(p)] = p
  return out, lengths


def check_request(config: GPTConfig, prompts, lengths, max_new_tokens, temperature, top_k, top_p,
                  stop_tokens=(), pad_id=0, real_vocab_size=None, stop_sequences=()):
  """Validates generate()'s arguments before any compute: returns (prompts [batch, prompt_len]
  int32, lengths [batch] int32, Sampling, stops: the stop token ids, then each stop sequence of two
  or more ids as a tuple) or raises GptjaxError saying what is wrong. Prompts longer than block_size
  are cropped to their last block_size tokens (prompt_len <= block_size)."""
  integer = lambda x: isinstance(x, (int, np.integer)) and not isinstance(x, bool)
  if not config.causal:
    raise GptjaxError('generation needs a causal model; this one is bidirectional (a masked LM): fill '
                      'masked text with gptjax.fill instead')
  if not integer(max_new_tokens) or max_new_tokens < 1:
    raise GptjaxError(f'max_new_tokens={max_new_tokens} must be an integer >= 1')
  if not integer(pad_id) or not all(integer(t) for t in stop_tokens):
    raise GptjaxError('pad_id and stop_tokens must be integer token ids')
  try:
    sequences = [list(seq) for seq in stop_sequences]
  except TypeError:
    sequences = None
  if sequences is None or not all(seq and all(integer(t) for t in seq) for seq in sequences):
    raise GptjaxError('stop_sequences must be non-empty lists of integer token ids, e.g. [[10, 10]]')
  try:
    if lengths is None and isinstance(prompts, (list, tuple)):
      prompts, lengths = pad_prompts(prompts, pad_id)
    prompts = np.asarray(prompts)
    if lengths is None and prompts.ndim == 2:
      lengths = np.full((prompts.shape[0],), prompts.shape[1], np.int32)
    lengths = np.asarray(lengths)
  except (TypeError, ValueError) as e:
    raise GptjaxError(f'prompts must be token id lists or a [batch, prompt_len] array ({e})') from None
  if (prompts.ndim != 2 or prompts.shape[0] == 0 or lengths.shape != prompts.shape[:1]
      or not np.issubdtype(prompts.dtype, np.integer) or not np.issubdtype(lengths.dtype, np.integer)):
    raise GptjaxError(f'prompts must be integer token ids [batch, prompt_len] with lengths [batch]; got '
                      f'{prompts.dtype}{list(prompts.shape)} and {lengths.dtype}{list(lengths.shape)}')
  if lengths.min() < 1 or lengths.max() > prompts.shape[1]:
    raise GptjaxError('every prompt needs at least one token (an empty prompt has nothing to continue)'
                      if lengths.min() < 1 else 'a prompt length exceeds the prompt array')
  if prompts.min() < 0 or prompts.max() >= config.vocab_size:
    raise GptjaxError(f'prompt token ids must be in [0, {config.vocab_size})')
  sampling = Sampling.checked(temperature, top_k, top_p, config.vocab_size, real_vocab_size)
  prompts, lengths = prompts.astype(np.int32), lengths.astype(np.int32)
  if prompts.shape[1] > config.block_size:  # keep each row's last block_size tokens
    start = np.maximum(lengths - config.block_size, 0)
    prompts = np.stack([np.roll(row, -s) for row, s in zip(prompts, start)])[:, :config.block_size]
    lengths = lengths - start.astype(np.int32)
  stops = tuple(int(t) for t in stop_tokens) + tuple(int(seq[0]) for seq in sequences if len(seq) == 1)
  stops += tuple(dict.fromkeys(tuple(int(t) for t in seq) for seq in sequences if len(seq) > 1))
  return prompts, lengths, sampling, stops
