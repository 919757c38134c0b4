"""The model: the seed's worked input encoding, shapes, causality, and the config options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import model as M

# The seed document's example: "你 是 一 只 猫" with d = 4.
SEED_WORDS = ['你', '是', '一', '只', '猫']
SEED_E = [[1, 0, 1, 0],  # 你
          [0, 1, 1, 0],  # 是
          [1, 1, 0, 1],  # 一
          [0, 1, 0, 1],  # 只
          [1, 0, 0, 1]]  # 猫
SEED_P = [[0.1, 0.2, 0.3, 0.4],
          [0.2, 0.3, 0.4, 0.5],
          [0.3, 0.4, 0.5, 0.6],
          [0.4, 0.5, 0.6, 0.7],
          [0.5, 0.6, 0.7, 0.8]]
SEED_X = [[1.1, 0.2, 1.3, 0.4],
          [0.2, 1.3, 1.4, 0.5],
          [1.3, 1.4, 0.5, 1.6],
          [0.4, 1.5, 0.6, 1.7],
          [1.5, 0.6, 0.7, 1.8]]


def seed_model():
  config = M.GPTConfig(vocab_size=5, block_size=5, n_layer=1, n_head=2, n_embd=4)
  params = M.init_params(config, jax.random.PRNGKey(0))
  params['wte']['embedding'] = jnp.asarray(SEED_E, jnp.float32)
  params['wpe']['embedding'] = jnp.asarray(SEED_P, jnp.float32)
  return config, params


def test_seed_input_encoding_is_E_plus_P():
  config, params = seed_model()
  tokens = jnp.arange(5)[None]  # 你 是 一 只 猫 with the vocabulary in that order
  x = M.GPT(config).apply({'params': params}, tokens, jnp.arange(5)[None], method=M.GPT.embed)
  # The seed's decimals are not exact binary fractions: compare with the float32 rounding of the
  # seed's X. E + P is one float32 addition per entry, and each sum rounds to the float32 nearest
  # the decimal the seed prints, so the comparison is exact.
  np.testing.assert_array_equal(np.asarray(x[0]), np.asarray(SEED_X, np.float32))


def test_seed_encoding_feeds_the_forward_pass():
  """Changing the position table changes the logits: P really is part of the input."""
  config, params = seed_model()
  tokens = jnp.arange(5)[None]
  gpt = M.GPT(config)
  logits = gpt.apply({'params': params}, tokens)
  params['wpe']['embedding'] = jnp.zeros((5, 4))
  assert not np.allclose(logits, gpt.apply({'params': params}, tokens))


def test_logits_shape_and_dtype(tiny_config):
  params = M.init_params(tiny_config, jax.random.PRNGKey(0))
  logits = M.GPT(tiny_config).apply({'params': params}, jnp.zeros((3, 7), jnp.int32))
  assert logits.shape == (3, 7, tiny_config.vocab_size)
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize('t', [0, 5, 11])
def test_causality_changing_token_t_never_changes_earlier_logits(tiny_config, t):
  gpt = M.GPT(tiny_config)
  params = M.init_params(tiny_config, jax.random.PRNGKey(1))
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 12), 0, tiny_config.vocab_size)
  changed = tokens.at[:, t].set((tokens[:, t] + 1) % tiny_config.vocab_size)
  a = gpt.apply({'params': params}, tokens)
  b = gpt.apply({'params': params}, changed)
  np.testing.assert_array_equal(a[:, :t], b[:, :t])  # bit-identical: no path from t to earlier positions
  assert not np.allclose(a[:, t:], b[:, t:])  # and the change is seen from t on


def test_bidirectional_model_sees_later_tokens(tiny_config):
  config = M.GPTConfig(**{**tiny_config.__dict__, 'causal': False})
  gpt = M.GPT(config)
  params = M.init_params(config, jax.random.PRNGKey(1))
  tokens = jnp.zeros((1, 8), jnp.int32)
  a = gpt.apply({'params': params}, tokens)
  b = gpt.apply({'params': params}, tokens.at[0, 7].set(3))
  assert not np.allclose(a[:, 0], b[:, 0])


def test_sinusoidal_positions_match_the_formula():
  p = np.asarray(M.sinusoidal_positions(10, 6))
  pos, i = 7, 2  # dimension pair (4, 5)
  angle = pos / 10000 ** (2 * i / 6)
  np.testing.assert_allclose(p[pos, 2 * i], np.sin(angle), rtol=1e-6)  # float32 sin/cos: ~1e-7 rel
  np.testing.assert_allclose(p[pos, 2 * i + 1], np.cos(angle), rtol=1e-6)


def test_sinusoidal_model_has_no_position_table(tiny_config):
  config = M.GPTConfig(**{**tiny_config.__dict__, 'pos_encoding': 'sinusoidal'})
  params = M.init_params(config, jax.random.PRNGKey(0))
  assert 'wpe' not in params
  assert M.GPT(config).apply({'params': params}, jnp.zeros((1, 4), jnp.int32)).shape == (1, 4, 16)


def test_tied_embeddings_use_E_as_the_output_projection(tiny_config):
  config = M.GPTConfig(**{**tiny_config.__dict__, 'tie_embeddings': True, 'bias': False})
  params = M.init_params(config, jax.random.PRNGKey(0))
  assert 'lm_head' not in params
  gpt = M.GPT(config)
  tokens = jnp.zeros((1, 4), jnp.int32)
  before = gpt.apply({'params': params}, tokens)
  params['wte']['embedding'] = params['wte']['embedding'].at[3].add(1.0)
  after = gpt.apply({'params': params}, tokens)
  # Token 3 is not in the input, so only its output logit (through E^T) can change.
  changed = np.abs(np.asarray(after - before)).max(axis=(0, 1)) > 0
  assert changed.tolist() == [i == 3 for i in range(16)]


def test_output_head_has_W_O_and_b_O(tiny_config):
  params = M.init_params(tiny_config, jax.random.PRNGKey(0))
  assert params['lm_head']['kernel'].shape == (32, 16)
  assert params['lm_head']['bias'].shape == (16,)


def test_grouped_query_attention_shapes(tiny_config):
  config = M.GPTConfig(**{**tiny_config.__dict__, 'n_head': 4, 'n_kv_head': 1})
  params = M.init_params(config, jax.random.PRNGKey(0))
  # c_attn projects to 4 query heads + 1 key head + 1 value head of head_dim 8.
  assert params['h_0']['attn']['c_attn']['kernel'].shape == (32, (4 + 2) * 8)
  assert M.GPT(config).apply({'params': params}, jnp.zeros((2, 5), jnp.int32)).shape == (2, 5, 16)


def test_bfloat16_compute_returns_float32_logits(tiny_config):
  config = M.GPTConfig(**{**tiny_config.__dict__, 'dtype': 'bfloat16'})
  params = M.init_params(config, jax.random.PRNGKey(0))
  assert jax.tree.leaves(params)[0].dtype == jnp.float32  # params stay in param_dtype
  logits = M.GPT(config).apply({'params': params}, jnp.zeros((1, 4), jnp.int32))
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize('fields, words', [
    (dict(n_embd=30, n_head=4), 'not divisible by n_head'),
    (dict(n_kv_head=3), 'n_kv_head=3'),
    (dict(pos_encoding='no-such-encoding'), 'pos_encoding'),  # not a planned encoding
    (dict(pos_encoding='rope', n_embd=30, n_head=2), 'even head_dim'),
    (dict(norm='batchnorm'), 'norm'),
    (dict(mlp='relu'), 'mlp'),
    (dict(dropout=1.5), 'dropout'),
    (dict(dtype='float64'), 'dtype'),
])
def test_bad_model_config_is_refused(tiny_config, fields, words):
  with pytest.raises(ValueError, match=words):
    M.GPTConfig(**{**tiny_config.__dict__, **fields})


def test_param_count_matches_the_gpt2_formula():
  config = M.GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=False,
                       tie_embeddings=True)
  params = M.init_params(config, jax.random.PRNGKey(0))
  d, L = 128, 4
  # Per layer: 12 d^2 of matrices + 2 LayerNorm scales; plus E and ln_f (nanoGPT reports 0.80M).
  assert M.count_params(params) == L * (12 * d * d + 2 * d) + 65 * d + d
