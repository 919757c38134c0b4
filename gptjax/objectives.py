"""Training objectives.

Next-token prediction (GPT): P(w_1..w_n) = prod_i P(w_i | w_<i), trained with
    L = -(1/n) sum_i log P(w_i | w_1, ..., w_{i-1})
over the n real (unmasked) targets. For a sequence "你 是 一 只 猫" the inputs are its first four
tokens and the targets its last four: "你" -> "是", "你 是" -> "一", "你 是 一" -> "只",
"你 是 一 只" -> "猫".

Masked language modelling (BERT) hides some tokens and predicts them from both sides; it needs a
model with `causal=False`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def next_token_split(tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
  """tokens [batch, seq + 1] -> (inputs [batch, seq], targets [batch, seq]); targets[i] = tokens[i + 1]."""
  return tokens[:, :-1], tokens[:, 1:]


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """-log P(target) per position: logits [..., vocab] float, targets [...] int -> [...] float32."""
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return log_z - target_logit


def cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None):
  """Mean -log P(target) over the real targets.

  logits [batch, seq, vocab], targets [batch, seq], weights [batch, seq] (1 = real target, 0 = padding
  or not predicted; None = all real). Returns (loss, (sum of nll, number of real targets)); the sums
  let data-parallel code average over the global batch exactly.
  """
  nll = token_nll(logits, targets)
  if weights is None:
    weights = jnp.ones_like(nll)
  weights = weights.astype(jnp.float32)
  total = jnp.sum(nll * weights)
  count = jnp.sum(weights)
  return total / jnp.maximum(count, 1.0), (total, count)


def mask_tokens(rng: jax.Array, tokens: jax.Array, mask_id: int, vocab_size: int,
                mask_prob: float = 0.15) -> tuple[jax.Array, jax.Array]:
  """BERT's corruption: pick mask_prob of the positions; of those 80% -> [MASK], 10% -> a random
  token, 10% unchanged. Returns (corrupted inputs, weights) where weights mark the picked positions:
  the masked-LM loss is `cross_entropy(logits, tokens, weights)` on the original tokens.
  """
  pick_rng, kind_rng, rand_rng = jax.random.split(rng, 3)
  picked = jax.random.uniform(pick_rng, tokens.shape) < mask_prob
  kind = jax.random.uniform(kind_rng, tokens.shape)
  random_tokens = jax.random.randint(rand_rng, tokens.shape, 0, vocab_size, dtype=tokens.dtype)
  corrupted = jnp.where(picked & (kind < 0.8), jnp.asarray(mask_id, tokens.dtype), tokens)
  corrupted = jnp.where(picked & (kind >= 0.8) & (kind < 0.9), random_tokens, corrupted)
  return corrupted, picked.astype(jnp.float32)
