"""Masked-LM training (BERT's objective, the seed's "自编码语言建模") on tiny Shakespeare, character level.

configs/shakespeare_char.py's data, model size, optimizer and steps, with bidirectional attention
(model.causal=False) and train.objective='mlm': in every window 15% of the characters are picked;
of those 80% become [MASK], 10% a random character, 10% stay; the loss is the mean -log P of the
original character at the picked positions only. Validation corrupts its fixed batches the same way
at every evaluation and reports val_loss (masked-character loss) and val_accuracy.

python -m gptjax.train --config=configs/mlm_char.py --config.data.path=../shared/data/tinyshakespeare.txt
python -m gptjax.fill --workdir=runs/mlm_char --text="To be, or not to [MASK][MASK], that is the question"
"""

import os

from gptjax.config import load_file


def get_config():
  c = load_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'shakespeare_char.py'))
  c.model.causal = False
  c.train.objective = 'mlm'
  c.train.mask_prob = 0.15
  c.train.eval_interval = 100  # a denser accuracy curve
  return c
