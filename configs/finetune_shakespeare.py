"""nanoGPT's finetune_shakespeare recipe: GPT-2 fine-tuned on tiny Shakespeare with GPT-2's own tokenizer.

nanoGPT: python train.py config/finetune_shakespeare.py   (init_from='gpt2-xl', batch 1 x 32 gradient
  accumulation of 1024 tokens, 20 iterations at a constant 3e-5, evaluation every 5 with 40 batches)

Here GPT-2 small (124M) comes from a local Hugging Face directory, as the network may not be there at
run time; fetch it once where it is (README, "GPT-2 and other pretrained weights"):

  huggingface-cli download gpt2 config.json model.safetensors vocab.json merges.txt --local-dir=gpt2
  python -m gptjax.train --config=configs/finetune_shakespeare.py --workdir=runs/finetune_shakespeare

The model's shape comes from the checkpoint (train.init_from); for gpt2-xl, download `gpt2-xl` and pass
--config.train.init_from=gpt2-xl --config.data.tokenizer_path=gpt2-xl. The batch of 32 sequences is
taken at once (nanoGPT accumulates 32 micro-batches of 1: the same gradient); it needs an accelerator.
"""

from gptjax.config import get_config as base_config


def get_config():
  c = base_config()
  c.data.path = 'data/tinyshakespeare.txt'
  c.data.url = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
  c.data.tokenizer = 'gpt2'
  c.data.tokenizer_path = 'gpt2'  # vocab.json + merges.txt (or tokenizer.json), as downloaded above
  c.data.val_fraction = 0.1

  c.model.block_size = 1024
  c.model.dropout = 0.0

  c.train.init_from = 'gpt2'  # a Hugging Face GPT-2 directory, or a run made by gptjax.convert
  c.train.batch_size = 32
  c.train.max_steps = 20
  c.train.learning_rate = 3e-5
  c.train.min_lr = 3e-5  # constant: nanoGPT's decay_lr = False
  c.train.warmup_steps = 0
  c.train.weight_decay = 0.1
  c.train.beta1 = 0.9
  c.train.beta2 = 0.95
  c.train.grad_clip = 1.0
  c.train.steps_per_call = 5
  c.train.log_interval = 5
  c.train.eval_interval = 5
  c.train.eval_iters = 40
  c.train.checkpoint_interval = 20
  return c
