"""Decoding speed: gptjax's KV-cache scan loop vs Hugging Face generate and nanoGPT's generate.

A model of nanoGPT's CPU-recipe size (4 layers, 4 heads, 128 wide, vocab 65; random weights:
speed does not depend on them), fp32, greedy, a 1-token prompt and 500 new tokens, batch 1 and 16.
Contenders run in turn within each repeat (median over repeats, warm-up call first):
  - gptjax: decode.generate (prefill + lax.scan over a KV cache), one jit-compiled call;
  - Hugging Face transformers GPT2LMHeadModel.generate, with and without its KV cache;
  - nanoGPT's generate (no cache; re-runs the model on the context cropped to 64 or 1024 tokens).
Then per-token latency against position (64 ... 1024) for gptjax with its cache and for full
recomputation (the model re-run on the whole sequence), written to experiments/decode_latency.png.

  pip install -e '.[bench]'
  python experiments/bench_decode.py --repeats=5
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nanogpt_peer  # noqa: E402
from timing import median_seconds  # noqa: E402

from gptjax import decode, model as M  # noqa: E402

VOCAB, N_LAYER, N_HEAD, N_EMBD, NEW = 65, 4, 4, 128, 500
HERE = os.path.dirname(os.path.abspath(__file__))


def gptjax_generate(params, config, batch, new=NEW, prompt_len=1):
  prompts = np.zeros((batch, prompt_len), np.int32)
  return lambda: jax.block_until_ready(decode.generate(
      params, config, prompts, jax.random.PRNGKey(0), max_new_tokens=new, temperature=0.0).tokens)


def hf_generate(model, batch, use_cache):
  x = torch.zeros((batch, 1), dtype=torch.long)
  kwargs = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, use_cache=use_cache,
                pad_token_id=0, eos_token_id=None)

  def run():
    with torch.inference_mode():
      model.generate(x, **kwargs)
  return run


def nanogpt_generate(model, batch, block_size):
  x = torch.zeros((batch, 1), dtype=torch.long)
  return lambda: nanogpt_peer.generate(model, x, NEW, block_size)


def latency_curve(params, config, positions, repeats, n=64):
  """Seconds per generated token at each position, three ways (batch 1):

  - one long generation: a cache preallocated for positions[-1] + n tokens, as generate() sizes it
    for a 1024-token request, decoded n steps per call; the time of the call that ends at position
    p, divided by n. Every step attends over the whole (masked) buffer, so this is what a user of
    one long generate() call sees at each position.
  - cache sized to the position: prefilled to p with max_len = p + n, then n steps: the O(n) cost
    of attending over p cached tokens.
  - full recomputation: one forward over p tokens, what a cache-less loop pays per token.
  """
  sampling = decode.Sampling(temperature=0.0)
  steps = jax.jit(lambda p, s: decode.decode_loop(p, config, s, n, sampling=sampling))
  full = jax.jit(lambda p, t: M.GPT(config).apply({'params': p}, t)[:, -1].argmax(-1))
  first = lambda p, t, l, r, max_len: decode.start(p, config, t, l, r, max_len=max_len, sampling=sampling,
                                                   stop_tokens=())
  prefill = jax.jit(first, static_argnames='max_len')

  def one_long_generation():
    state, _ = prefill(params, jnp.zeros((1, 1), jnp.int32), jnp.ones((1,), jnp.int32),
                       jax.random.PRNGKey(0), max_len=positions[-1] + n + 1)
    per_position = {}
    for end in range(1 + n, positions[-1] + 2, n):
      t0 = time.perf_counter()
      state, tokens = steps(params, state)
      jax.block_until_ready(tokens)
      per_position[end - 1] = (time.perf_counter() - t0) / n
    return per_position

  one_long_generation()  # compile
  runs = [one_long_generation() for _ in range(repeats)]
  long_gen = [float(np.median([r[min(r, key=lambda q: abs(q - p))] for r in runs])) for p in positions]

  sized, recompute = [], []
  for pos in positions:
    tokens, lengths = jnp.zeros((1, pos), jnp.int32), jnp.full((1,), pos, jnp.int32)
    state, _ = prefill(params, tokens, lengths, jax.random.PRNGKey(0), max_len=pos + n)
    sized.append(median_seconds(lambda: jax.block_until_ready(steps(params, state)[1]), repeats) / n)
    recompute.append(median_seconds(lambda: jax.block_until_ready(full(params, tokens)), repeats))
  return long_gen, sized, recompute


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--slow_repeats', type=int, default=3, help='for the runs without a cache')
  parser.add_argument('--plot', default=os.path.join(HERE, 'decode_latency.png'))
  args = parser.parse_args()
  from transformers import GPT2Config, GPT2LMHeadModel

  print(f'jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} '
        f'({torch.get_num_threads()} threads)')
  config = M.GPTConfig(vocab_size=VOCAB, block_size=1024 + 64 + 1, n_layer=N_LAYER, n_head=N_HEAD,
                       n_embd=N_EMBD, bias=False, tie_embeddings=True)
  params = M.init_params(config, jax.random.PRNGKey(0))
  hf = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=1024, n_embd=N_EMBD, n_layer=N_LAYER,
                                  n_head=N_HEAD)).eval()
  nano = {bs: nanogpt_peer.NanoGPT(VOCAB, bs, N_LAYER, N_HEAD, N_EMBD).eval() for bs in (64, 1024)}

  rows = []
  for batch in (1, 16):
    contenders = [
        ('gptjax, KV cache (lax.scan)', gptjax_generate(params, config, batch), args.repeats),
        ('HF transformers generate, KV cache', hf_generate(hf, batch, True), args.repeats),
        ('HF transformers generate, no cache', hf_generate(hf, batch, False), args.slow_repeats),
        ('nanoGPT generate, context 64', nanogpt_generate(nano[64], batch, 64), args.slow_repeats),
        ('nanoGPT generate, context 1024', nanogpt_generate(nano[1024], batch, 1024), args.slow_repeats),
    ]
    results = {}
    for name, fn, repeats in contenders:
      results[name] = batch * NEW / median_seconds(fn, repeats)
      print(f'batch {batch}: {name}: {results[name]:,.0f} tokens/s', flush=True)
    hf_cached = results['HF transformers generate, KV cache']
    rows += [(batch, name, tps, tps / hf_cached) for name, tps in results.items()]

  print(f'\n{NEW} new tokens, greedy, fp32; medians of {args.repeats} (cached) / {args.slow_repeats} '
        '(uncached) runs')
  print('| batch | contender | tokens/s | vs HF cached |')
  print('|---|---|---|---|')
  for batch, name, tps, ratio in rows:
    print(f'| {batch} | {name} | {tps:,.0f} | {ratio:.1f}x |')

  positions = [64, 128, 256, 512, 1024]
  long_gen, sized, recompute = latency_curve(params, config, positions, args.repeats)
  print('\nper-token latency, batch 1 (us/token):')
  print('| position | KV cache, one 1024-token generation | KV cache sized to the position | full recomputation |')
  print('|---|---|---|---|')
  for p, a, b, r in zip(positions, long_gen, sized, recompute):
    print(f'| {p} | {a * 1e6:.0f} | {b * 1e6:.0f} | {r * 1e6:.0f} |')
  ratio = lambda xs: f'{xs[-1] / xs[0]:.2f}x'
  print(f'{positions[-1]} / {positions[0]}: one generation {ratio(long_gen)}, sized cache {ratio(sized)}, '
        f'recomputation {ratio(recompute)}')

  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(positions, np.array(long_gen) * 1e6, 'o-', label='KV cache, one 1024-token generation')
  ax.plot(positions, np.array(sized) * 1e6, '^--', label='KV cache sized to the position')
  ax.plot(positions, np.array(recompute) * 1e6, 's-', label='full recomputation (no cache)')
  ax.set_xscale('log', base=2)
  ax.set_yscale('log')
  ax.set_xticks(positions, [str(p) for p in positions])
  ax.set_xlabel('position of the generated token')
  ax.set_ylabel('latency per token (µs)')
  ax.set_title('gptjax decoding, 4x128 GPT, batch 1, fp32, CPU')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(args.plot, dpi=120)
  print(f'plot: {args.plot}')


if __name__ == '__main__':
  main()
