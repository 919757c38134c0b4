"""The objective: the seed's prefix -> target table, and the loss against a hand computation."""

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import objectives as O

WORDS = ['你', '是', '一', '只', '猫']


def test_seed_prefixes_and_targets():
  """The seed's table: "你" -> "是", "你 是" -> "一", "你 是 一" -> "只", "你 是 一 只" -> "猫"."""
  tokens = jnp.arange(5)[None]  # 你 是 一 只 猫
  inputs, targets = O.next_token_split(tokens)
  pairs = [(' '.join(WORDS[i] for i in inputs[0, :n + 1]), WORDS[int(targets[0, n])]) for n in range(4)]
  assert pairs == [('你', '是'), ('你 是', '一'), ('你 是 一', '只'), ('你 是 一 只', '猫')]


def log_softmax_np(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_is_mean_negative_log_probability_of_targets():
  logits = np.array([[[2.0, 1.0, 0.1], [0.5, 0.5, 3.0], [1.0, 2.0, 3.0]]], np.float32)
  targets = np.array([[0, 2, 1]])
  logp = log_softmax_np(logits)
  expected = -(logp[0, 0, 0] + logp[0, 1, 2] + logp[0, 2, 1]) / 3
  loss, (total, count) = O.cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
  # float32 logsumexp of 3 values: a few ulps of ~1, so 1e-6 relative.
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  assert float(count) == 3


def test_loss_averages_over_real_targets_only():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 4, 7)).astype(np.float32)
  targets = rng.integers(0, 7, size=(2, 4))
  weights = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], np.float32)
  logp = log_softmax_np(logits)
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  expected = (nll * weights).sum() / weights.sum()
  loss, (_, count) = O.cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)  # float32 vs float64 reference
  assert float(count) == 3
  # Padding targets can hold anything: changing them leaves the loss alone.
  other = targets.copy()
  other[0, 3] = (other[0, 3] + 1) % 7
  assert float(O.cross_entropy(jnp.asarray(logits), jnp.asarray(other), jnp.asarray(weights))[0]) == float(loss)


def test_uniform_prediction_costs_log_vocab():
  loss, _ = O.cross_entropy(jnp.zeros((3, 5, 65)), jnp.ones((3, 5), jnp.int32))
  np.testing.assert_allclose(float(loss), np.log(65), rtol=1e-6)


def test_mask_tokens_follows_bert_proportions():
  tokens = jnp.full((400, 250), 7, jnp.int32)  # 100,000 positions
  corrupted, weights = O.mask_tokens(jax.random.PRNGKey(0), tokens, mask_id=99, vocab_size=50)
  picked = np.asarray(weights) > 0
  c = np.asarray(corrupted)
  # Binomial counts over 100k positions: 5 standard deviations is under 0.6% of the total here.
  assert abs(picked.mean() - 0.15) < 0.006
  assert np.all(c[~picked] == 7)  # unpicked positions are untouched
  masked = (c[picked] == 99).mean()
  assert abs(masked - 0.8) < 0.02  # 15k picked: sd of the fraction is ~0.003
  random_or_kept = c[picked][c[picked] != 99]
  assert abs((random_or_kept == 7).mean() - 0.5 - 0.5 / 50) < 0.05  # half kept, half random (1/50 of those are 7)
