"""Test setup: 8 fake CPU devices for the data-parallel tests, and JAX's persistent compilation cache.

Both must be set before JAX initialises its backend, so they are set here, at import time.
"""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.pytest_cache', 'jax')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _CACHE)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import pytest  # noqa: E402

from gptjax.model import GPTConfig  # noqa: E402

# One tiny model shape reused across test files, so compiled programs are shared through the cache.
TINY = GPTConfig(vocab_size=16, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


@pytest.fixture
def tiny_config():
  return TINY


def tiny_run_config(**overrides):
  """configs/tiny.py with dotted overrides, e.g. tiny_run_config(**{'train.max_steps': 20})."""
  import importlib.util
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'tiny.py')
  spec = importlib.util.spec_from_file_location('tiny_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


# Hypothesis draws the same examples on every run (derived from each test's code), so a failure
# reproduces, and writes no example database into the checkout.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile('gptjax', derandomize=True, database=None)
_hypothesis_settings.load_profile('gptjax')
