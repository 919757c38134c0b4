"""Side measurements behind the decoding figures (README "Decoding"), on the benchmark's model
(4 layers, 4 heads, 128 wide, vocab 65, fp32, greedy, a 1-token prompt, 500 new tokens):

  1. HF transformers' cached generate at batch 1 and 16 with PyTorch on 1 and on 2 threads: is HF
     at batch 1 bound by its Python loop (no faster with a second thread)?
  2. gptjax at batch 1 timed right after an HF call and after half a second of rest: PyTorch's
     OpenMP workers spin on after a call, which is why bench_decode.py rests before each timed call.
  3. gptjax at batch 1 in float32 and with bfloat16 compute (model.dtype): does bf16 decode faster
     on XLA:CPU?
  4. Does XLA:CPU run independent work of one step on the idle core? A batch-1 step's dense matmuls
     (each weight read once, as `decode_profile.py`'s floor) as one chain through the 4 layers, and the
     same matmuls as two independent chains of 2 layers each: the same bytes and thunks; on two
     cores the two chains would take about half as long.
  5. The same dense matmuls with the weights stored in bfloat16 (bf16 x bf16 dots accumulating in
     float32): half the bytes to read; faster only if XLA:CPU's bf16 dots keep up.
  6. Finer cache buckets: generate with four bucket lengths per doubling (64, 80, 96, 112, 128, ...)
     against the default two (64, 96, 128, 192, ...): fewer unfilled slots per step, more chunks.

  pip install -e '.[bench]'
  python experiments/decode_checks.py [--repeats=5] [--checks=1,2,3,4,5,6]

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
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import cpu_name, interleaved_medians, median_seconds  # noqa: E402

from gptjax import decode, model as M  # noqa: E402

VOCAB, N_LAYER, N_HEAD, N_EMBD, NEW = 65, 4, 4, 128, 500


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--checks', default='1,2,3,4,5,6', help='which of the checks to run, comma-separated')
  args = parser.parse_args()
  checks = {int(c) for c in args.checks.split(',')}
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

  if 1 in checks:
    hf_threads(hf_call, args.repeats)
  if 2 in checks:
    rest_after_hf(hf_call, lambda: gptjax_call(params, config), args.repeats)
  if 3 in checks:
    bf16 = dataclasses.replace(config, dtype='bfloat16')
    rates = [NEW / median_seconds(lambda c=c: gptjax_call(params, c), args.repeats) for c in (config, bf16)]
    print(f'3. gptjax, batch 1: {rates[0]:,.0f} tokens/s in float32, {rates[1]:,.0f} with bfloat16 compute')
  if 4 in checks or 5 in checks:
    dense_chains(params, config, args.repeats, checks)
  if 6 in checks:
    finer_buckets(params, config, args.repeats)
  try:  # how much of this process sits in transparent huge pages (e.g. with GLIBC_TUNABLES=glibc.malloc.hugetlb=1)
    huge = next(line.split()[1] for line in open('/proc/self/smaps_rollup') if line.startswith('AnonHugePages'))
    print(f'transparent huge pages in this process: {int(huge) / 1024:.0f} MiB')
  except (OSError, StopIteration):
    pass


def hf_threads(hf_call, repeats):
  threads = torch.get_num_threads()
  for batch in (1, 16):
    rates = []
    for n in (1, 2):
      torch.set_num_threads(n)
      rates.append(batch * NEW / median_seconds(lambda: hf_call(batch), repeats))
    print(f'1. HF cached generate, batch {batch}: {rates[0]:,.0f} tokens/s on 1 thread, {rates[1]:,.0f} on 2')
  torch.set_num_threads(threads)


def rest_after_hf(hf_call, gptjax_call, repeats):
  after = {'right after an HF call': 0.0, 'after 0.5 s of rest': 0.5}
  times = {name: [] for name in after}
  gptjax_call()
  hf_call(1)
  for _ in range(repeats):
    for name, rest in after.items():
      hf_call(1)
      time.sleep(rest)
      t0 = time.perf_counter()
      gptjax_call()
      times[name].append(time.perf_counter() - t0)
  print('2. gptjax, batch 1: ' + ', '.join(f'{NEW / np.median(t):,.0f} tokens/s {name}' for name, t in times.items()))


STEPS = 64  # steps per compiled loop in checks 4 and 5


def dense_chains(params, config, repeats, checks):
  """Checks 4 and 5: a batch-1 step's dense matmuls (each layer's four weight matrices) in a loop of
  STEPS steps compiled as the decode loop is, per step: one chain, two independent chains, bf16 weights."""
  names = (('attn', 'c_attn'), ('attn', 'c_proj'), ('mlp', 'c_fc'), ('mlp', 'c_proj'))
  layers = [[params[f'h_{i}'][a][b]['kernel'] for a, b in names] for i in range(config.n_layer)]
  width = config.n_embd

  def mm(x, w):  # float32 activations, the weights' dtype inside the dot, float32 out
    return jnp.dot(x.astype(w.dtype), w, preferred_element_type=jnp.float32)

  def block(x, weights):  # [1, width] -> [1, width]; every weight matrix read once
    qkv, proj, fc, fc_proj = weights
    x = x + mm(mm(x, qkv)[:, :width], proj)
    return x + mm(jnp.tanh(mm(x, fc)), fc_proj)

  def one_chain(xs, layers):
    x = xs[0]
    for weights in layers:
      x = block(x, weights)
    return xs.at[0].set(x)

  def two_chains(xs, layers):  # layers :n/2 on row 0, n/2: on row 1: no data flows between them
    half = len(layers) // 2
    x, y = xs[0], xs[1]
    for a, b in zip(layers[:half], layers[half:]):
      x, y = block(x, a), block(y, b)
    return jnp.stack([x, y])

  def per_step(fn, layers, dtype):
    run = jax.jit(lambda xs, w: jax.lax.fori_loop(0, STEPS, lambda i, xs: fn(xs, w), xs),
                  compiler_options=decode.CPU_DECODE_OPTIONS)
    xs = jnp.full((2, 1, width), 0.1, jnp.float32)
    weights = jax.tree.map(lambda w: w.astype(dtype), layers)
    seconds = median_seconds(lambda: jax.block_until_ready(run(xs, weights)), repeats) / STEPS
    return seconds, sum(w.nbytes for w in jax.tree.leaves(weights))

  one, nbytes = per_step(one_chain, layers, jnp.float32)
  line = lambda s, n: f'{s * 1e6:.1f} us ({n / s / 1e9:.0f} GB/s)'
  if 4 in checks:
    two, _ = per_step(two_chains, layers, jnp.float32)
    print(f'4. a batch-1 step\'s dense matmuls ({nbytes / 1e6:.2f} MB of float32 weights) per step: one chain '
          f'{line(one, nbytes)}, two independent chains {line(two, nbytes)}')
  if 5 in checks:
    bf16, bf16_bytes = per_step(one_chain, layers, jnp.bfloat16)
    print(f'5. the same one chain with float32 weights {line(one, nbytes)}, with bfloat16 weights '
          f'{line(bf16, bf16_bytes)}')


def finer_buckets(params, config, repeats):
  """Check 6: generate's tokens/s at batch 1 and 16 with the default cache buckets and with four per
  doubling, interleaved, half a second of rest before each timed call."""
  default = decode.cache_buckets

  def four_per_doubling(block_size, bucket_size):
    sizes = []
    while bucket_size < block_size:
      sizes += [s for s in (bucket_size * q // 4 for q in (4, 5, 6, 7)) if s < block_size and s not in sizes]
      bucket_size *= 2
    return tuple(sizes) + (block_size,)

  def call(ladder, batch):
    def run():
      decode.cache_buckets = ladder  # generate() looks its ladder up here at each call
      try:
        decode.generate(params, config, np.zeros((batch, 1), np.int32), jax.random.PRNGKey(0),
                        max_new_tokens=NEW, temperature=0.0)
      finally:
        decode.cache_buckets = default
    return run

  ladders = {'default buckets': default, 'four buckets per doubling': four_per_doubling}
  fns = {(name, batch): call(ladder, batch) for batch in (1, 16) for name, ladder in ladders.items()}
  seconds = interleaved_medians(fns, repeats, pause=0.5)
  for batch in (1, 16):
    print(f'6. gptjax, batch {batch}: ' + ', '.join(
        f'{batch * NEW / seconds[name, batch]:,.0f} tokens/s with {name} ({len(ladder(config.block_size, 64))})'
        for name, ladder in ladders.items()))


if __name__ == '__main__':
  main()
