"""Training objectives.

Next-token prediction (GPT): P(w_1..w_n) = prod_i P(w_i | w_<i), trained with
    L = -(1/n) sum_i log P(w_i | w_1, ..., w_{i-1})
over the n real (unmasked) targets. For a sequence "你 是 一 只 猫" the inputs are its first four
tokens and the targets its last four: "你" -> "是", "你 是" -> "一", "你 是 一" -> "只",
"你 是 一 只" -> "猫".

Masked language modelling (BERT, the seed's "自编码语言建模"): hide some tokens and predict them from
both sides; it needs a model with `causal=False`. The loss is the same mean -log P, over the hidden
positions only.

`examples(objective, tokens, rng)` turns a batch of token windows into what the model reads and
what it is scored on, for either objective; the training and evaluation steps call only that.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gptjax.data import MASK_TOKEN


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


# ---------------------------------------------------------------------------------------------
# A batch of windows -> (inputs, targets, weights), for either objective


@dataclasses.dataclass(frozen=True)
class Objective:
  """What a model learns from a window of tokens: 'next_token' (GPT) or 'mlm' (BERT's masked LM).

  For mlm: mask_id is the tokenizer's [MASK] id; ids 0 .. n_real - 1 are the real tokens (BERT's
  random replacements are drawn from them); mask_prob of the positions are picked.
  """

  kind: str = 'next_token'
  mask_id: int = -1
  n_real: int = 0
  mask_prob: float = 0.15


NEXT_TOKEN = Objective()
EVAL_CORRUPTION_SEED = 0  # validation corrupts its fixed batches the same way at every evaluation
_CORRUPTION_STREAM = 0x6D6C6D  # keeps corruption keys apart from dropout's fold_in(step key, device)


def examples(objective: Objective, tokens: jax.Array, rng: jax.Array, rows: jax.Array | None = None):
  """tokens [batch, seq + 1] int -> (inputs [batch, seq], targets [batch, seq], weights [batch, seq] f32).

  next_token: inputs tokens[:, :-1], targets tokens[:, 1:], every weight 1 (rng is not used).
  mlm: the targets are the first seq tokens and the inputs are them after BERT's corruption
  (mask_tokens); weights mark the picked positions, the only ones scored. Row b is corrupted with
  fold_in(rng, rows[b]), rows being the rows' indices in the global batch (default 0 .. batch - 1),
  so a row's corruption does not depend on how the batch is split over devices.
  """
  if objective.kind == 'next_token':
    inputs, targets = next_token_split(tokens)
    return inputs, targets, jnp.ones(targets.shape, jnp.float32)
  targets = tokens[:, :-1]
  inputs, weights = corrupt(objective, targets, rng, rows)
  return inputs, targets, weights


def corrupt(objective: Objective, tokens: jax.Array, rng: jax.Array, rows: jax.Array | None = None):
  """mask_tokens on each row of tokens [batch, seq], row b with key fold_in(rng, rows[b]) (default
  rows 0 .. batch - 1): (corrupted inputs [batch, seq], weights [batch, seq] f32, 1 = picked)."""
  rows = jnp.arange(tokens.shape[0]) if rows is None else rows
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.fold_in(rng, _CORRUPTION_STREAM), rows)
  one = lambda key, row: mask_tokens(key, row, objective.mask_id, objective.n_real, objective.mask_prob)
  return jax.vmap(one)(keys, tokens)


def for_run(train_config, tokenizer) -> Objective:
  """A run's objective from its train config (a ConfigDict or the `train` dict of its config.json;
  runs made before objectives existed are next-token) and its tokenizer (mlm: the [MASK] id)."""
  if train_config.get('objective', 'next_token') != 'mlm':
    return NEXT_TOKEN
  return Objective('mlm', mask_id=tokenizer.special_ids[MASK_TOKEN], n_real=tokenizer.base.vocab_size,
                   mask_prob=train_config.get('mask_prob', 0.15))


def shard_rows(n_rows: int, axis_name: str | None = None) -> jax.Array:
  """[n_rows] indices in the global batch of this device's rows (shards are consecutive blocks)."""
  rows = jnp.arange(n_rows)
  return rows if axis_name is None else rows + jax.lax.axis_index(axis_name) * n_rows


def shard_loss_scale(weights: jax.Array, axis_name: str | None = None) -> jax.Array:
  """The factor that makes the mean over devices of (this shard's mean loss x factor) the mean over
  every weighted target of the global batch: this shard's target count / the mean count. It is
  exactly 1 when every shard has as many targets (next-token), not under mlm's random picks."""
  if axis_name is None:
    return jnp.ones((), jnp.float32)
  count = jnp.sum(weights)
  mean = jax.lax.pmean(count, axis_name)
  return jnp.where(mean > 0, count / jnp.maximum(mean, 1e-9), 0.0)


def correct(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
  """Weighted count of positions whose most likely token is the target: logits [..., vocab]."""
  return jnp.sum((jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32) * weights)
