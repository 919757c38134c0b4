"""Many prompts of different lengths, continued at length: gptjax vs Hugging Face generate.

The decoding benchmark's model (4 layers, 4 heads, 128 wide, vocab 65; random weights, fp32), 64
prompts of 1 to 64 random tokens (seeded), 500 new tokens each, greedy. What `gptjax.sample
--prompts_file=... --batch_size=B` runs: decode.generate on ragged batches of B prompts, with
row_ids so that every row keeps its key. HF transformers' GPT2LMHeadModel.generate takes the same
batches left-padded with an attention mask (how it batches prompts of different lengths), with its
KV cache. Both as the whole 64 in one batch and as 4 batches of 16. Contenders take turns in each
round, half a second of rest before each timed call, medians; tokens/s counts the new tokens.

  pip install -e '.[bench]'
  python experiments/bench_many_prompts.py [--repeats=3]
"""

from __future__ import annotations

import argparse
import os
import sys

from gptjax import cpu

cpu.configure(batch_size=16, log=lambda line: None)  # as `gptjax.sample --batch_size=16` starts JAX
import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import cpu_name, interleaved_medians  # noqa: E402

from gptjax import decode, model as M  # noqa: E402

VOCAB, N_LAYER, N_HEAD, N_EMBD, NEW, PROMPTS = 65, 4, 4, 128, 500, 64


def gptjax_run(params, config, prompts, batch):
  def run():
    for start in range(0, len(prompts), batch):
      part = prompts[start:start + batch]
      out = decode.generate(params, config, part, jax.random.PRNGKey(0), max_new_tokens=NEW, temperature=0.0,
                            row_ids=np.arange(start, start + len(part)))
      assert out.tokens.shape == (len(part), NEW)
  return run


def hf_run(model, prompts, batch):
  def run():
    for start in range(0, len(prompts), batch):
      part = prompts[start:start + batch]
      width = max(map(len, part))
      ids = torch.zeros((len(part), width), dtype=torch.long)
      mask = torch.zeros((len(part), width), dtype=torch.long)
      for i, p in enumerate(part):  # left padding: every row's last prompt token in the last column
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
      with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                             pad_token_id=0, eos_token_id=None)
      assert out.shape == (len(part), width + NEW)
  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  from transformers import GPT2Config, GPT2LMHeadModel
  from transformers.utils import logging as hf_logging
  hf_logging.set_verbosity_error()

  print(f'{cpu_name()}; {jax.device_count()} XLA CPU devices; jax {jax.__version__}, torch {torch.__version__} '
        f'({torch.get_num_threads()} threads); load average {os.getloadavg()[0]:.1f} at the start')
  config = M.GPTConfig(vocab_size=VOCAB, block_size=1024, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD,
                       bias=False, tie_embeddings=True)
  params = M.init_params(config, jax.random.PRNGKey(0))
  hf = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=1024, n_embd=N_EMBD, n_layer=N_LAYER,
                                  n_head=N_HEAD)).eval()
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, VOCAB, size=n).tolist() for n in rng.permutation(np.arange(1, PROMPTS + 1))]
  contenders = {}
  for batch in (PROMPTS, 16):
    contenders[f'gptjax decode.generate, batches of {batch}'] = gptjax_run(params, config, prompts, batch)
    contenders[f'HF generate (KV cache, left-padded), batches of {batch}'] = hf_run(hf, prompts, batch)
  seconds = interleaved_medians(contenders, args.repeats, pause=0.5)
  print(f'\n{PROMPTS} prompts of 1-{PROMPTS} tokens, {NEW} new tokens each, greedy, fp32; medians of {args.repeats} '
        f'interleaved runs; load average {os.getloadavg()[0]:.1f}')
  print('| contender | seconds | new tokens/s | vs HF, same batches |')
  print('|---|---|---|---|')
  for name, s in seconds.items():
    peer = next(v for k, v in seconds.items() if k.startswith('HF') and k.endswith(name.split(', ')[-1]))
    print(f'| {name} | {s:.2f} | {PROMPTS * NEW / s:,.0f} | {peer / s:.1f}x |')


if __name__ == '__main__':
  main()
