"""Learning rate x width on nanoGPT's Shakespeare recipe (configs/shakespeare_char.py): 4 x 3 points,
2 seeds each (24 short runs; the summary gives mean ± std over the seeds).

    python -m gptjax.sweep --sweep=experiments/sweeps/shakespeare_lr_width.py \
        --sweep.data.path=../shared/data/tinyshakespeare.txt --workdir=runs/shakespeare_lr_width --parallel=2

(--sweep.data.path: where your copy of tiny Shakespeare is; the recipe's default is
data/tinyshakespeare.txt.) Everything but the learning rate and the width is the recipe's: 4 layers,
4 heads, block 64, batch 12, warm-up 100 steps then cosine to 1e-4, here over 1000 steps.
"""

import os

from gptjax import sweep

RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'configs', 'shakespeare_char.py')


def get_config():
  c = sweep.config_file(RECIPE)
  c.train.max_steps = 1000
  c.train.eval_interval = 100
  c.train.checkpoint_interval = 250
  return c


def get_sweep():
  return sweep.product(sweep.grid({'train.learning_rate': [3e-4, 1e-3, 3e-3, 1e-2], 'model.n_embd': [64, 128, 192]}),
                       sweep.seeds(2))
