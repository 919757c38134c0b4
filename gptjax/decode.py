"""Generation: prefill the prompt into a KV cache, then one token per step, in compiled loops.

    prompts [batch, prompt_len] (right-padded) ──prefill──▶ cache, each row's first new token
    ──decode chunks (a while loop each)──▶ carry DecodeState(cache, token, rng, done, length)
    ──▶ Generation(tokens [batch, max_new_tokens], lengths [batch], stopped [batch])

Each decode step computes Q, K, V for one new token per row and attends over the cache: O(n) work
per token instead of re-running the O(n^2) forward over the whole sequence.

Prefix-bounded attention. A step attends over every slot of the cache it is given, so the cache is
kept only as long as the longest row needs: its length is one of a few buckets (`cache_buckets`:
bucket_size, 2x, 4x, ... up to block_size), and the loop runs in chunks, one compiled while loop per
bucket, growing the cache to the next bucket between chunks. A step at position p thus costs what
about p to 2p slots cost, not the whole buffer. Rows advance one position per step whatever they
sample, so `generate` plans the chunks on the host from the prompt lengths alone: it never waits for
the device between chunks, and the calls queue asynchronously.

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
(growing into it, decoding in it) + 1 (sliding) programs, whatever max_new_tokens is; calls with
the same batch, padded prompt length (a power of two) and settings reuse them. Sampling strategies
are small pure functions of (rng, logits). Nothing is stored between calls.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

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


def top_k_mask(logits: jax.Array, k: int) -> jax.Array:
  """Logits outside each row's k largest set to -inf (ties at the k-th value are kept)."""
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_mask(logits: jax.Array, p: float) -> jax.Array:
  """Nucleus: keep the smallest set of most likely tokens whose probability sums to >= p."""
  order = jnp.argsort(-logits, axis=-1)
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of the more likely tokens
  keep_sorted = mass_before < p  # the most likely token always stays (mass_before = 0)
  keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
  return jnp.where(keep, logits, -jnp.inf)


def sample_logits(rng: jax.Array, logits: jax.Array, sampling: Sampling) -> jax.Array:
  """The next token of each row: logits [batch, vocab] float32 -> [batch] int32."""
  if 0 < sampling.real_vocab < logits.shape[-1]:  # padding ids of a padded vocabulary: never picked
    logits = jnp.where(jnp.arange(logits.shape[-1]) < sampling.real_vocab, logits, -jnp.inf)
  if sampling.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / sampling.temperature
  if sampling.top_k:
    logits = top_k_mask(logits, sampling.top_k)
  if sampling.top_p < 1:
    logits = top_p_mask(logits, sampling.top_p)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# Prefill and the decode step


@flax.struct.dataclass
class DecodeState:
  """The loop carry: everything one step needs, nothing else."""

  cache: kvc.KVCache  # keys/values so far; cache.pos is each row's next position
  token: jax.Array  # [batch] int32: the last sampled token, fed to the next step
  rng: jax.Array
  done: jax.Array  # [batch] bool: row has hit a stop token
  length: jax.Array  # [batch] int32: tokens generated before the stop


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


def _is_stop(tokens: jax.Array, stop_tokens: tuple[int, ...]) -> jax.Array:
  if not stop_tokens:
    return jnp.zeros(tokens.shape, bool)
  return jnp.isin(tokens, jnp.asarray(stop_tokens, jnp.int32))


def _split(rng: jax.Array, sampling: Sampling) -> tuple[jax.Array, jax.Array]:
  """(rng for later, key for this draw); greedy draws nothing, so it leaves the rng as it is."""
  if sampling.temperature == 0:
    return rng, rng
  return tuple(jax.random.split(rng))


def start(params, config: GPTConfig, prompts: jax.Array, lengths: jax.Array, rng: jax.Array, *,
          max_len: int, sampling: Sampling, stop_tokens: tuple[int, ...]) -> tuple[DecodeState, jax.Array]:
  """Prefills a cache of max_len slots and samples each row's first new token.

  Returns (state, first tokens [batch]); first tokens that are stop tokens are already marked done.
  """
  cache = kvc.init(config, prompts.shape[0], max_len)
  logits, cache = prefill(params, config, prompts, lengths, cache)
  rng, first_rng = _split(rng, sampling)
  first = sample_logits(first_rng, logits, sampling)
  done = _is_stop(first, stop_tokens)
  return DecodeState(cache=cache, token=first, rng=rng, done=done, length=(~done).astype(jnp.int32)), first


def decode_step(params, config: GPTConfig, state: DecodeState, *, sampling: Sampling,
                stop_tokens: tuple[int, ...] = ()) -> tuple[DecodeState, jax.Array]:
  """Feeds each row's last token at its position, samples the next: (state, tokens [batch]).

  Rows that have stopped keep computing (the batch moves together); their tokens are padding to the
  caller. The step attends over all cache.max_len slots: callers keep the cache as short as the rows
  allow (see the module docstring).
  """
  logits, cache = GPT(config).apply({'params': params}, state.token[:, None], cache=state.cache)
  rng, step_rng = _split(state.rng, sampling)
  token = sample_logits(step_rng, logits[:, 0], sampling)
  done = state.done | _is_stop(token, stop_tokens)
  return DecodeState(cache=cache, token=token, rng=rng, done=done,
                     length=state.length + (~done).astype(jnp.int32)), token


def decode_loop(params, config: GPTConfig, state: DecodeState, steps: int, *, sampling: Sampling,
                stop_tokens: tuple[int, ...] = (), pad_id: int = 0) -> tuple[DecodeState, jax.Array]:
  """`steps` decode steps in one lax.scan over the state's whole cache (no buckets, no sliding: the
  cache must have room for them). Returns (final state, tokens [steps, batch]) with pad_id for rows
  that have stopped. `generate` is the full driver; this is the plain loop, jit-able as one program.
  """

  def step(state: DecodeState, _):
    state, token = decode_step(params, config, state, sampling=sampling, stop_tokens=stop_tokens)
    return state, jnp.where(state.done, pad_id, token)

  return jax.lax.scan(step, state, length=steps)


# ---------------------------------------------------------------------------------------------
# The compiled pieces generate() runs: prefill, grow, decode a chunk, slide


@functools.partial(jax.jit, static_argnames=('config', 'cache_len', 'sampling', 'stop_tokens'))
def _start(params, prompts, lengths, rng, *, config: GPTConfig, cache_len: int, sampling: Sampling,
           stop_tokens: tuple[int, ...]):
  """Prefill over prompt_len slots, then the cache resized to cache_len. Returns (state, context
  [batch, block_size]: the token in each cache slot, first tokens [batch])."""
  state, first = start(params, config, prompts, lengths, rng, max_len=prompts.shape[1], sampling=sampling,
                       stop_tokens=stop_tokens)
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


PROGRAMS = (_start, _grow, _decode_chunk, _decode_chunk_cpu, _slide)  # generate()'s compiled pieces


def cache_buckets(block_size: int, bucket_size: int) -> tuple[int, ...]:
  """The cache lengths decoding uses: bucket_size, 2 * bucket_size, 4 * bucket_size, ... up to and
  always including block_size (one bucket, the whole context, when bucket_size >= block_size)."""
  sizes = []
  while bucket_size < block_size:
    sizes.append(bucket_size)
    bucket_size *= 2
  return tuple(sizes) + (block_size,)


def bucket_for(buckets: tuple[int, ...], n: int) -> int:
  """The smallest of the cache lengths `buckets` that holds n slots."""
  return next(b for b in buckets if b >= n)


def generate(params, config: GPTConfig, prompts, rng: jax.Array, *, max_new_tokens: int,
             lengths=None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             stop_tokens: Sequence[int] = (), pad_id: int = 0, bucket_size: int = 64,
             keep: int | None = None, real_vocab_size: int | None = None) -> Generation:
  """Continues each prompt by up to max_new_tokens tokens (any number: past block_size it slides).

  prompts: [batch, prompt_len] int array (right-padded, with `lengths` [batch]), or a list of token
  lists of any lengths. Sampling: temperature 0 = greedy; top_k > 0 keeps the k most likely tokens;
  top_p < 1 keeps the nucleus. A row stops at any of stop_tokens (not included in its output).
  bucket_size: the smallest cache length a step attends over (then 2x, 4x, ... up to block_size);
  keep: tokens a full row keeps when it slides (default block_size // 2). real_vocab_size: the
  tokenizer's size when config.vocab_size pads past it; ids from it up are never sampled. Greedy rows
  are independent: each equals generating that prompt alone.
  """
  prompts, lengths, sampling, stop_tokens = check_request(
      config, prompts, lengths, max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_id, real_vocab_size)
  block = config.block_size
  keep = block // 2 if keep is None else keep
  integer = lambda x: isinstance(x, (int, np.integer)) and not isinstance(x, bool)
  if not integer(bucket_size) or bucket_size < 1:
    raise GptjaxError(f'bucket_size={bucket_size} must be an integer >= 1')
  if not integer(keep) or not 1 <= keep <= block:
    raise GptjaxError(f'keep={keep} must be an integer between 1 and block_size={block}')
  buckets = cache_buckets(block, int(bucket_size))
  batch, n_new = prompts.shape[0], int(max_new_tokens)

  # The prompt is padded to a power of two (so few prefill programs serve all prompt lengths).
  width = min(block, 1 << (prompts.shape[1] - 1).bit_length())
  prompts = np.pad(prompts, ((0, 0), (0, width - prompts.shape[1])))  # token 0 in slots no row reads
  pos = lengths.astype(np.int64)  # each row's next slot, tracked on the host: +1 per step, any token
  cache_len = bucket_for(buckets, min(int(pos.max()) + 1, block))
  state, context, first = _start(params, prompts, lengths, rng, config=config, cache_len=cache_len,
                                 sampling=sampling, stop_tokens=stop_tokens)
  first = np.asarray(first)  # taken before the state's buffers are donated to the first chunk
  chunk = _chunk_program()
  chunks = []  # (tokens [cache_len, batch] on the device, how many are real)
  made = 1
  while made < n_new:
    full = np.flatnonzero(pos >= block)
    if full.size:
      rows = np.zeros((batch,), np.int32)
      rows[:full.size] = full
      state, context = _slide(params, state, context, rows, np.int32(full.size), config=config, keep=int(keep))
      pos[full] = keep - 1
    need = bucket_for(buckets, int(pos.max()) + 1)
    if need > cache_len:  # never cut: after a slide the rows soon need the top bucket again
      cache_len = need
      state = _grow(state, cache_len=cache_len)
    steps = min(n_new - made, cache_len - int(pos.max()))
    state, context, tokens = chunk(params, state, context, np.int32(steps), config=config, sampling=sampling,
                                   stop_tokens=stop_tokens)
    chunks.append((tokens, steps))
    pos += steps
    made += steps

  pieces = jax.device_get([t for t, _ in chunks])
  tokens = np.concatenate([first[:, None]] + [p[:n].T for p, (_, n) in zip(pieces, chunks)], axis=1)
  length, stopped = jax.device_get((state.length, state.done))
  tokens = np.where(np.arange(n_new)[None, :] < length[:, None], tokens, pad_id).astype(np.int32)
  return Generation(tokens=tokens, lengths=np.asarray(length, np.int32), stopped=np.asarray(stopped))


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads token lists into ([batch, longest] int32, lengths [batch] int32)."""
  lengths = np.array([len(p) for p in prompts], np.int32)
  out = np.full((len(prompts), max(lengths, default=0)), pad_id, np.int32)
  for i, p in enumerate(prompts):
    out[i, :len(p)] = p
  return out, lengths


def check_request(config: GPTConfig, prompts, lengths, max_new_tokens, temperature, top_k, top_p,
                  stop_tokens=(), pad_id=0, real_vocab_size=None):
  """Validates generate()'s arguments before any compute: returns (prompts [batch, prompt_len]
  int32, lengths [batch] int32, Sampling, stop tokens) or raises GptjaxError saying what is wrong.
  Prompts longer than block_size are cropped to their last block_size tokens (prompt_len <= block_size)."""
  integer = lambda x: isinstance(x, (int, np.integer)) and not isinstance(x, bool)
  if not config.causal:
    raise GptjaxError('generation needs a causal model; this one is bidirectional (a masked LM): fill '
                      'masked text with gptjax.fill instead')
  if not integer(max_new_tokens) or max_new_tokens < 1:
    raise GptjaxError(f'max_new_tokens={max_new_tokens} must be an integer >= 1')
  if not integer(pad_id) or not all(integer(t) for t in stop_tokens):
    raise GptjaxError('pad_id and stop_tokens must be integer token ids')
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
  return prompts, lengths, sampling, tuple(int(t) for t in stop_tokens)
