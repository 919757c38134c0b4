"""Generation: prefill the prompt into a KV cache, then one token per step in a `lax.scan`.

    prompts [batch, prompt_len] (right-padded) ──prefill──▶ cache, logits of each row's last prompt token
    ──lax.scan over max_new_tokens──▶ carry DecodeState(cache, token, rng, done, length)
    ──▶ Generation(tokens [batch, max_new_tokens], lengths [batch], stopped [batch])

Each decode step computes Q, K, V for one new token per row and attends over that row's cached
prefix: O(n) work per token instead of re-running the O(n^2) forward over the whole sequence.
The whole of `generate` is one jit-compiled function per (shapes, sampling settings); it holds no
state between calls. Sampling strategies are small pure functions of (rng, logits).
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
  """How to pick the next token. temperature 0 is greedy; top_k 0 and top_p 1 keep every token."""

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  @classmethod
  def checked(cls, temperature, top_k, top_p, vocab_size: int) -> 'Sampling':
    """A Sampling from user values, or GptjaxError saying which one is out of range."""
    real = lambda x: isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)
    if not (real(temperature) and np.isfinite(temperature) and temperature >= 0):
      raise GptjaxError(f'temperature={temperature} must be a finite number >= 0 (0 = greedy)')
    if not (isinstance(top_k, (int, np.integer)) and not isinstance(top_k, bool) and 0 <= top_k <= vocab_size):
      raise GptjaxError(f'top_k={top_k} must be an integer between 0 (off) and the vocabulary size {vocab_size}')
    if not (real(top_p) and 0 < top_p <= 1):
      raise GptjaxError(f'top_p={top_p} must be in (0, 1] (1 = off)')
    return cls(float(temperature), int(top_k), float(top_p))


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
  if sampling.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / sampling.temperature
  if sampling.top_k:
    logits = top_k_mask(logits, sampling.top_k)
  if sampling.top_p < 1:
    logits = top_p_mask(logits, sampling.top_p)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# Prefill and the decode loop


@flax.struct.dataclass
class DecodeState:
  """The scan carry: everything one step needs, nothing else."""

  cache: kvc.KVCache  # keys/values so far; cache.pos is each row's next position
  token: jax.Array  # [batch] int32: the last sampled token, fed to the next step
  rng: jax.Array
  done: jax.Array  # [batch] bool: row has hit a stop token
  length: jax.Array  # [batch] int32: tokens generated before the stop


@flax.struct.dataclass
class Generation:
  tokens: jax.Array  # [batch, max_new_tokens] int32; pad_id after a row's length
  lengths: jax.Array  # [batch] int32: generated tokens per row, not counting the stop token
  stopped: jax.Array  # [batch] bool: the row ended at a stop token (else at max_new_tokens)


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


def start(params, config: GPTConfig, prompts: jax.Array, lengths: jax.Array, rng: jax.Array, *,
          max_len: int, sampling: Sampling, stop_tokens: tuple[int, ...]) -> tuple[DecodeState, jax.Array]:
  """Prefills a cache of max_len slots and samples each row's first new token.

  Returns (state, first tokens [batch]); first tokens that are stop tokens are already marked done.
  """
  cache = kvc.init(config, prompts.shape[0], max_len)
  logits, cache = prefill(params, config, prompts, lengths, cache)
  rng, first_rng = jax.random.split(rng)
  first = sample_logits(first_rng, logits, sampling)
  done = _is_stop(first, stop_tokens)
  return DecodeState(cache=cache, token=first, rng=rng, done=done, length=(~done).astype(jnp.int32)), first


def decode_loop(params, config: GPTConfig, state: DecodeState, steps: int, *, sampling: Sampling,
                stop_tokens: tuple[int, ...] = (), pad_id: int = 0) -> tuple[DecodeState, jax.Array]:
  """`steps` decode steps in one lax.scan: feed each row's last token, sample the next.

  Returns (final state, tokens [steps, batch]) with pad_id for rows that have stopped.
  """
  model = GPT(config)

  def step(state: DecodeState, _):
    # Rows that have stopped keep computing (the batch moves together) but emit padding. Skipping
    # the step with lax.cond once all rows stop costs a copy of the whole cache at every step.
    logits, cache = model.apply({'params': params}, state.token[:, None], cache=state.cache)
    rng, step_rng = jax.random.split(state.rng)
    token = sample_logits(step_rng, logits[:, 0], sampling)
    done = state.done | _is_stop(token, stop_tokens)
    state = DecodeState(cache=cache, token=token, rng=rng, done=done,
                        length=state.length + (~done).astype(jnp.int32))
    return state, jnp.where(done, pad_id, token)

  return jax.lax.scan(step, state, length=steps)


@functools.partial(jax.jit, static_argnames=('config', 'max_new_tokens', 'sampling', 'stop_tokens', 'pad_id'))
def _generate(params, prompts, lengths, rng, *, config: GPTConfig, max_new_tokens: int,
              sampling: Sampling, stop_tokens: tuple[int, ...], pad_id: int) -> Generation:
  state, first = start(params, config, prompts, lengths, rng, max_len=prompts.shape[1] + max_new_tokens,
                       sampling=sampling, stop_tokens=stop_tokens)
  final, rest = decode_loop(params, config, state, max_new_tokens - 1, sampling=sampling,
                            stop_tokens=stop_tokens, pad_id=pad_id)  # rest: [max_new_tokens - 1, batch]
  tokens = jnp.concatenate([jnp.where(state.done, pad_id, first)[None], rest], axis=0).T
  return Generation(tokens=tokens, lengths=final.length, stopped=final.done)


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads token lists into ([batch, longest] int32, lengths [batch] int32)."""
  lengths = np.array([len(p) for p in prompts], np.int32)
  out = np.full((len(prompts), max(lengths, default=0)), pad_id, np.int32)
  for i, p in enumerate(prompts):
    out[i, :len(p)] = p
  return out, lengths


def generate(params, config: GPTConfig, prompts, rng: jax.Array, *, max_new_tokens: int,
             lengths=None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             stop_tokens: Sequence[int] = (), pad_id: int = 0) -> Generation:
  """Continues each prompt by up to max_new_tokens tokens.

  prompts: [batch, prompt_len] int array (right-padded, with `lengths` [batch]), or a list of token
  lists of any lengths. Sampling: temperature 0 = greedy; top_k > 0 keeps the k most likely tokens;
  top_p < 1 keeps the nucleus. A row stops at any of stop_tokens (not included in its output).
  Rows are independent: each equals generating that prompt alone with the same rng.
  """
  prompts, lengths, sampling, stop_tokens = check_request(
      config, prompts, lengths, max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_id)
  return _generate(params, prompts, lengths, rng, config=config, max_new_tokens=int(max_new_tokens),
                   sampling=sampling, stop_tokens=stop_tokens, pad_id=int(pad_id))


def check_request(config: GPTConfig, prompts, lengths, max_new_tokens, temperature, top_k, top_p,
                  stop_tokens=(), pad_id=0):
  """Validates generate()'s arguments before any compute: returns (prompts [batch, prompt_len]
  int32, lengths [batch] int32, Sampling, stop tokens) or raises GptjaxError saying what is wrong."""
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
  if prompts.shape[1] + max_new_tokens > config.block_size:
    raise GptjaxError(f'prompt ({prompts.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds the '
                      f'{config.block_size} positions the model supports; shorten one of them')
  if prompts.min() < 0 or prompts.max() >= config.vocab_size:
    raise GptjaxError(f'prompt token ids must be in [0, {config.vocab_size})')
  sampling = Sampling.checked(temperature, top_k, top_p, config.vocab_size)
  return prompts.astype(np.int32), lengths.astype(np.int32), sampling, tuple(int(t) for t in stop_tokens)
