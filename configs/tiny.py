"""A tiny model for tests and smoke runs: trains in seconds on one CPU core."""

from gptjax.config import get_config as base_config


def get_config():
  c = base_config()
  c.data.max_bytes = 200_000
  c.model.block_size = 32
  c.model.n_layer = 2
  c.model.n_head = 2
  c.model.n_embd = 32
  c.train.batch_size = 8
  c.train.max_steps = 40
  c.train.warmup_steps = 5
  c.train.steps_per_call = 5
  c.train.log_interval = 10
  c.train.eval_interval = 20
  c.train.eval_iters = 2
  c.train.checkpoint_interval = 20
  return c
