"""nanoGPT's CPU recipe on tiny Shakespeare with a Llama-style block instead of GPT-2's.

Everything but the block is configs/shakespeare_char.py (data, width, depth, heads, optimizer,
schedule, tied embeddings). The block: rotary positions (no position table), RMSNorm, a SwiGLU MLP,
QK-norm, grouped-query attention (2 K/V heads for 4 query heads), no biases. The SwiGLU hidden width
384 (instead of the default 8/3 d = 344) gives back the parameters that GQA and the missing position
table save, so the model has as many parameters as GPT-2-style's to within 1% (796,160 vs 804,096
counting the position table): experiments/bench_llama_style.py compares the two.

python -m gptjax.train --config=configs/llama_style_char.py --config.data.path=../shared/data/tinyshakespeare.txt
"""

import os

from gptjax.config import load_file


def get_config():
  c = load_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'shakespeare_char.py'))
  c.model.pos_encoding = 'rope'
  c.model.norm = 'rmsnorm'
  c.model.mlp = 'swiglu'
  c.model.mlp_hidden = 384
  c.model.qk_norm = True
  c.model.n_kv_head = 2
  c.model.bias = False
  return c
