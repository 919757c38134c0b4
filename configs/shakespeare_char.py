"""nanoGPT's CPU recipe on tiny Shakespeare, character level.

nanoGPT: python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
  --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
  --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

The text: https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
saved as data/tinyshakespeare.txt (downloaded there on first use when online), or any copy given
with --config.data.path=FILE.
"""

from gptjax.config import get_config as base_config


def get_config():
  c = base_config()
  c.data.path = 'data/tinyshakespeare.txt'
  c.data.url = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
  c.data.tokenizer = 'char'
  c.data.val_fraction = 0.1

  c.model.block_size = 64
  c.model.n_layer = 4
  c.model.n_head = 4
  c.model.n_embd = 128
  c.model.dropout = 0.0
  c.model.bias = False
  c.model.tie_embeddings = True  # nanoGPT ties wte and lm_head

  c.train.batch_size = 12
  c.train.max_steps = 2000
  c.train.learning_rate = 1e-3
  c.train.min_lr = 1e-4
  c.train.warmup_steps = 100
  c.train.weight_decay = 0.1
  c.train.beta1 = 0.9
  c.train.beta2 = 0.99
  c.train.grad_clip = 1.0
  c.train.log_interval = 50
  c.train.eval_interval = 250
  c.train.eval_iters = 20
  c.train.checkpoint_interval = 500
  return c
