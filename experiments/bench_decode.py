"""Decoding speed: gptjax's KV-cache decoding vs Hugging Face generate and nanoGPT's generate.

A model of nanoGPT's CPU-recipe size (4 layers, 4 heads, 128 wide, vocab 65; random weights:
speed does not depend on them), fp32, greedy, a 1-token prompt and 500 new tokens, batch 1 and 16.
Contenders take turns within each repeat (interleaved, so a busy machine slows all alike; medians
over repeats, a warm-up call first, half a second of rest before each timed call). JAX starts as
`gptjax.sample --num_samples=16` starts it: one XLA CPU device per core (gptjax/cpu.py), so that
decode.generate can run groups of rows side by side:
  - gptjax: decode.generate as it is by default: the cache in length buckets (each step attends over
    the filled prefix rounded up to a bucket of 64, 96, 128, 192, 256, 384 or 512 slots), a batch
    whose cache outgrows the CPU's last-level cache decoded in groups of rows, the groups spread over
    the cores;
  - the same on one core (the groups one after another), and as one group on one core;
  - gptjax as it was before buckets: one 512-slot buffer attended in full at every step, one group;
  - gptjax with a 64-token context, sliding past it (the last 32 tokens re-encoded when full);
  - Hugging Face transformers GPT2LMHeadModel.generate, with and without its KV cache;
  - nanoGPT's generate (no cache; re-runs the model on the context cropped to 64 or 1024 tokens).
Then the per-token latency against position (64 ... 1024, batch 1 and 16): a step of one long
generation attending over the whole preallocated buffer (before) or over the bucket that generate
uses at that position (after), and full recomputation; plotted to experiments/decode_latency.png.

  pip install -e '.[bench]'
  python experiments/bench_decode.py --repeats=5 --slow_repeats=3   # wall clock: the README's tables
  python experiments/bench_decode.py --repeats=5 --skip_uncached --cpu_time   # on a machine others share

On a machine shared with other jobs, wall times measure the queue more than the code (PyTorch's two
threads wait on each other and its generate slowed 100x here); --cpu_time counts the CPU seconds
each call uses instead, with PyTorch on one thread as gptjax's decode loop is.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from gptjax import cpu  # noqa: E402

# Before JAX starts, the CPU settings `python -m gptjax.sample --num_samples=16` makes: one XLA CPU
# device per core (16 rows split over them), XLA flags and malloc as gptjax/cpu.py chooses.
cpu.configure(batch_size=16)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nanogpt_peer  # noqa: E402
from timing import cpu_name, cpu_seconds, interleaved_medians  # noqa: E402

from gptjax import decode, model as M  # noqa: E402

VOCAB, N_LAYER, N_HEAD, N_EMBD, NEW = 65, 4, 4, 128, 500
HERE = os.path.dirname(os.path.abspath(__file__))
POSITIONS = [64, 128, 256, 512, 1024]
STEPS = 64  # decode steps timed at each position
# Seconds of rest before each timed call: right after a PyTorch call its OpenMP workers still spin on
# the other core (gptjax at batch 1: 14,981 tokens/s right after HF generate, 17,522 after a 0.5 s
# pause, on the 2-core AMD EPYC; experiments/decode_checks.py).
PAUSE = 0.5


def gptjax_generate(params, config, batch, **kwargs):
  prompts = np.zeros((batch, 1), np.int32)
  return lambda: decode.generate(params, config, prompts, jax.random.PRNGKey(0), max_new_tokens=NEW,
                                 temperature=0.0, **kwargs).tokens


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


def latency_curves(params, config, batch, repeats, clock):
  """Seconds per generated token at each position (STEPS decode steps from there), three ways:
  before: attending over the whole buffer a 1024-token generation preallocated (1089 slots);
  after: over the cache bucket decode.generate uses at that position; recompute: one forward over
  the position's tokens (what a cache-less loop pays per token)."""
  sampling = decode.Sampling(temperature=0.0)
  buckets = decode.cache_buckets(config.block_size, 64)
  steps = jax.jit(lambda p, s: decode.decode_loop(p, config, s, STEPS, sampling=sampling)[1],
                  compiler_options=decode.CPU_DECODE_OPTIONS)  # as generate's decode chunks
  full = jax.jit(lambda p, t: M.GPT(config).apply({'params': p}, t)[:, -1].argmax(-1))
  start = jax.jit(lambda p, t, l, r, max_len: decode.start(
      p, config, t, l, r, max_len=max_len, sampling=sampling, stop_tokens=())[0], static_argnames='max_len')
  fns = {}  # every (way, position) takes its turn in each round
  for pos in POSITIONS:
    tokens, lengths = jnp.zeros((batch, pos), jnp.int32), jnp.full((batch,), pos, jnp.int32)
    sizes = {'before': config.block_size, 'after': decode.bucket_for(buckets, pos + 1)}
    for name, size in sizes.items():
      state = start(params, tokens, lengths, jax.random.PRNGKey(0), max_len=size)
      fns[name, pos] = lambda s=state: jax.block_until_ready(steps(params, s))
    fns['recompute', pos] = lambda t=tokens: jax.block_until_ready(full(params, t))
  seconds = interleaved_medians(fns, repeats, clock, pause=PAUSE)
  return {name: [seconds[name, p] / (1 if name == 'recompute' else STEPS) for p in POSITIONS]
          for name in ('before', 'after', 'recompute')}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--slow_repeats', type=int, default=3, help='for the runs without a cache')
  parser.add_argument('--skip_uncached', action='store_true',
                      help='leave out the contenders without a KV cache (minutes each at batch 16)')
  parser.add_argument('--cpu_time', action='store_true',
                      help='count CPU seconds instead of wall seconds, with PyTorch on one thread (gptjax '
                           "decodes on one): a work measure that a busy machine's waiting does not distort")
  parser.add_argument('--plot', default=os.path.join(HERE, 'decode_latency.png'))
  args = parser.parse_args()
  from transformers import GPT2Config, GPT2LMHeadModel

  clock, per = (cpu_seconds, 'tokens per CPU-second') if args.cpu_time else (time.perf_counter, 'tokens/s')
  if args.cpu_time:
    torch.set_num_threads(1)

  print(f'{cpu_name()}; {jax.device_count()} XLA CPU devices; jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads); '
        f'load average {os.getloadavg()[0]:.1f} at the start')
  config = M.GPTConfig(vocab_size=VOCAB, block_size=1024 + STEPS + 1, n_layer=N_LAYER, n_head=N_HEAD,
                       n_embd=N_EMBD, bias=False, tie_embeddings=True)
  params = M.init_params(config, jax.random.PRNGKey(0))
  short = dataclasses.replace(config, block_size=64)  # the same weights, its first 64 positions
  short_params = dict(params, wpe={'embedding': params['wpe']['embedding'][:64]})
  hf = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=1024, n_embd=N_EMBD, n_layer=N_LAYER,
                                  n_head=N_HEAD)).eval()
  nano = {bs: nanogpt_peer.NanoGPT(VOCAB, bs, N_LAYER, N_HEAD, N_EMBD).eval() for bs in (64, 1024)}

  rows = []
  one_core = [jax.devices()[0]]
  for batch in (1, 16):
    contenders = {
        'gptjax, KV cache in buckets (prefix-bounded)': gptjax_generate(params, config, batch),
        'gptjax, the same on one core': gptjax_generate(params, config, batch, devices=one_core),
        'gptjax, the same, one group on one core':
            gptjax_generate(params, config, batch, devices=one_core, rows_per_group=batch),
        'gptjax, KV cache, whole 512-slot buffer (before)':
            gptjax_generate(params, config, batch, bucket_size=512, devices=one_core, rows_per_group=batch),
        'gptjax, context 64, sliding past it': gptjax_generate(short_params, short, batch),
        'HF transformers generate, KV cache': hf_generate(hf, batch, True),
        'HF transformers generate, no cache': hf_generate(hf, batch, False),
        'nanoGPT generate, context 64': nanogpt_generate(nano[64], batch, 64),
        'nanoGPT generate, context 1024': nanogpt_generate(nano[1024], batch, 1024),
    }
    uncached = lambda name: 'no cache' in name or 'nanoGPT' in name
    if batch == 1:  # one row is one group on one device whatever the settings
      contenders = {name: fn for name, fn in contenders.items() if 'the same' not in name}
    if args.skip_uncached:
      contenders = {name: fn for name, fn in contenders.items() if not uncached(name)}
    repeats = {name: args.slow_repeats if uncached(name) else args.repeats for name in contenders}
    seconds = interleaved_medians(contenders, repeats, clock, pause=PAUSE)
    hf_cached = batch * NEW / seconds['HF transformers generate, KV cache']
    for name, s in seconds.items():
      rows.append((batch, name, batch * NEW / s, batch * NEW / s / hf_cached))
      print(f'batch {batch}: {name}: {batch * NEW / s:,.0f} {per}', flush=True)

  print(f'\n{NEW} new tokens, greedy, fp32; medians of {args.repeats} (cached) / {args.slow_repeats} '
        f'(uncached) interleaved runs; load average {os.getloadavg()[0]:.1f}')
  print(f'| batch | contender | {per} | vs HF cached |')
  print('|---|---|---|---|')
  for batch, name, tps, ratio in rows:
    print(f'| {batch} | {name} | {tps:,.0f} | {ratio:.1f}x |')

  curves = {batch: latency_curves(params, config, batch, args.repeats, clock) for batch in (1, 16)}
  what = 'CPU us' if args.cpu_time else 'us'
  print(f'\nper-token latency ({what}/token; decode steps: median of {args.repeats} calls of {STEPS} steps):')
  print('| position | batch 1, whole buffer (before) | batch 1, bucket (after) | batch 1, full recomputation '
        '| batch 16, whole buffer (before) | batch 16, bucket (after) | batch 16, full recomputation |')
  print('|---|---|---|---|---|---|---|')
  for i, p in enumerate(POSITIONS):
    cells = [f'{curves[b][k][i] * 1e6:.0f}' for b in (1, 16) for k in ('before', 'after', 'recompute')]
    print(f'| {p} | ' + ' | '.join(cells) + ' |')
  ratio = lambda xs: f'{xs[-1] / xs[0]:.2f}x'
  for b in (1, 16):
    print(f'batch {b}, {POSITIONS[-1]} / {POSITIONS[0]}: before {ratio(curves[b]["before"])}, '
          f'after {ratio(curves[b]["after"])}, recomputation {ratio(curves[b]["recompute"])}')

  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, b in zip(axes, (1, 16)):
    c = curves[b]
    ax.plot(POSITIONS, np.array(c['before']) * 1e6, 'o-', label='KV cache, whole buffer (before)')
    ax.plot(POSITIONS, np.array(c['after']) * 1e6, '^-', label='KV cache, bucket (after)')
    ax.plot(POSITIONS, np.array(c['recompute']) * 1e6, 's--', label='full recomputation (no cache)')
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_xticks(POSITIONS, [str(p) for p in POSITIONS])
    ax.set_xlabel('position of the generated token')
    ax.set_ylabel(f'{"CPU time" if args.cpu_time else "latency"} per step (µs)')
    ax.set_title(f'batch {b}')
    ax.grid(True, which='both', alpha=0.3)
  axes[0].legend()
  fig.suptitle(f'gptjax decoding, 4x128 GPT, fp32, {cpu_name()}')
  fig.tight_layout()
  fig.savefig(args.plot, dpi=120)
  print(f'plot: {args.plot}')


if __name__ == '__main__':
  main()
