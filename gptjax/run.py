"""Reading a trained run directory (config.json, tokenizer.json, checkpoints/): what sampling,
evaluation, filling, conversion and `train.init_from` load a run with.

    params, model_config, tokenizer, step = load_run('runs/shakespeare')
"""

from __future__ import annotations

import json
import os

import jax

from gptjax import checkpoint as ckpt_lib
from gptjax import data as data_lib
from gptjax.errors import GptjaxError, os_error
from gptjax.model import GPTConfig, init_params

_ATTEMPTS = 3  # reads of the latest checkpoint while a training run prunes it


def load_run(workdir: str, step: int | None = None):
  """(params, GPTConfig, tokenizer, step) of the checkpoint at `step` (default: latest) in workdir.

  Only the parameters are read, never the optimizer state, so a run trained with any optimizer
  loads. A workdir that is training meanwhile is fine: if the run prunes the latest checkpoint
  while it is being read (it saved newer ones), the newest one is read instead.
  """
  config_path = os.path.join(workdir, 'config.json')
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  if not os.path.exists(config_path):
    raise GptjaxError(f'{workdir} is not a run directory (no config.json); train one with '
                      'python -m gptjax.train --workdir=DIR')
  try:
    with open(config_path, encoding='utf-8') as f:
      config = json.load(f)
    tokenizer = data_lib.load_tokenizer(os.path.join(workdir, 'tokenizer.json'))
  except OSError as e:
    raise os_error(e, f'cannot read {e.filename}', f'check that {workdir} is a complete run') from None
  if not os.path.isdir(ckpt_dir):
    raise GptjaxError(f'{workdir} has no checkpoint yet; train longer than train.checkpoint_interval '
                      'steps or until the run ends')
  for attempt in range(1, _ATTEMPTS + 1):
    # A fresh manager per attempt: after a failed restore orbax's manager can refuse the next one.
    with ckpt_lib.Checkpointer(ckpt_dir, create=False) as checkpointer:
      steps = checkpointer.steps()
      if not steps:
        raise GptjaxError(f'{workdir} has no checkpoint yet; train longer than train.checkpoint_interval '
                          'steps or until the run ends')
      if step is not None and step not in steps:
        raise GptjaxError(f'no checkpoint at step {step} in {ckpt_dir}; there are {steps}')
      chosen = steps[-1] if step is None else step
      model_config = GPTConfig(**config['model'])
      like = jax.eval_shape(lambda: init_params(model_config, jax.random.PRNGKey(0)))
      try:
        return checkpointer.restore_params(chosen, like), model_config, tokenizer, chosen
      except GptjaxError:
        now = checkpointer.steps()
        if step is not None or attempt == _ATTEMPTS or (now and now[-1] == chosen):
          raise  # damaged, not pruned: a newer checkpoint would have been saved before this one went
