"""Three side measurements behind the decoding figures (README "Decoding"), on the benchmark's model
(4 layers, 4 heads, 128 wide, vocab 65, fp32, greedy, a 1-token prompt, 500 new tokens):

  1. HF transformers' cached generate at batch 1 and 16 with PyTorch on 1 and on 2 threads: is HF
     at batch 1 bound by its Python loop (no faster with a second thread)?
  2. gptjax at batch 1 timed right after an HF call and after half a second of rest: PyTorch's
     OpenMP workers spin on after a call, which is why bench_decode.py rests before each timed call.
  3. gptjax at batch 1 in float32 and with bfloat16 compute (model.dtype): does bf16 decode faster
     on XLA:CPU?

  pip install -e '.[bench]'
  python experiments/decode_checks.py [--repeats=5]

Medians of `repeats` calls after a warm-up, wall clock; JAX starts as bench_decode.py starts it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from gptjax import cpu

cpu.configure(batch_size=16, log=lambda line: None)  # as bench_decode.py, before JAX starts
import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import cpu_name, median_seconds  # noqa: E402

from gptjax import decode, model as M  # noqa: E402

VOCAB, N_LAYER, N_HEAD, N_EMBD, NEW = 65, 4, 4, 128, 500


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  from transformers import GPT2Config, GPT2LMHeadModel

  print(f'{cpu_name()}; jax {jax.__version__}, torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}')
  config = M.GPTConfig(vocab_size=VOCAB, block_size=1024 + 65, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD,
                       bias=False, tie_embeddings=True)
  params = M.init_params(config, jax.random.PRNGKey(0))
  hf = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=1024, n_embd=N_EMBD, n_layer=N_LAYER,
                                  n_head=N_HEAD)).eval()

  def hf_call(batch):
    with torch.inference_mode():
      hf.generate(torch.zeros((batch, 1), dtype=torch.long), max_new_tokens=NEW, min_new_tokens=NEW,
                  do_sample=False, pad_token_id=0, eos_token_id=None)

  def gptjax_call(p, c):
    decode.generate(p, c, np.zeros((1, 1), np.int32), jax.random.PRNGKey(0), max_new_tokens=NEW,
                    temperature=0.0)

  threads = torch.get_num_threads()
  for batch in (1, 16):
    rates = []
    for n in (1, 2):
      torch.set_num_threads(n)
      rates.append(batch * NEW / median_seconds(lambda: hf_call(batch), args.repeats))
    print(f'1. HF cached generate, batch {batch}: {rates[0]:,.0f} tokens/s on 1 thread, {rates[1]:,.0f} on 2')
  torch.set_num_threads(threads)

  after = {'right after an HF call': 0.0, 'after 0.5 s of rest': 0.5}
  times = {name: [] for name in after}
  gptjax_call(params, config)
  hf_call(1)
  for _ in range(args.repeats):
    for name, rest in after.items():
      hf_call(1)
      time.sleep(rest)
      t0 = time.perf_counter()
      gptjax_call(params, config)
      times[name].append(time.perf_counter() - t0)
  print('2. gptjax, batch 1: ' + ', '.join(f'{NEW / np.median(t):,.0f} tokens/s {name}' for name, t in times.items()))

  bf16 = dataclasses.replace(config, dtype='bfloat16')
  rates = [NEW / median_seconds(lambda c=c: gptjax_call(params, c), args.repeats) for c in (config, bf16)]
  print(f'3. gptjax, batch 1: {rates[0]:,.0f} tokens/s in float32, {rates[1]:,.0f} with bfloat16 compute')


if __name__ == '__main__':
  main()
