"""Where a decode step's time goes: the per-token step against its pure compute and memory traffic.

For the decoding benchmark's model (nanoGPT-recipe size: 4 layers, 4 heads, 128 wide, vocab 65,
fp32) at batch 1 and 16, this compiles the decode chunk `decode.generate` runs for a cache bucket
and reports, per token:
  - the measured step time (median of repeats, one compiled while loop of 64 steps per call);
  - its FLOPs (dense matmuls + attention over the bucket) and the time they take at this machine's
    float32 matmul throughput (1024^3, measured in the same run);
  - its bytes (weights + the K/V cache slots it reads) and the read bandwidth the step achieves;
  - the thunks XLA:CPU runs per step, and a jax.profiler trace of the step split by what each
    thunk does (the HLO op names: dense matmuls, attention, cache writes, layer norms, sampling, rest).

  python experiments/decode_profile.py [--repeats=7] [--cpu_time]

On a machine shared with other jobs, --cpu_time times the steps and the matmul in CPU seconds (both
on one thread, as the decode loop runs), and each part of the profile is the median over `repeats`
traced calls (a thread that waits for a core inflates a call's thunks at random).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax

jax.config.update('jax_num_cpu_devices', max(2, len(os.sched_getaffinity(0))))  # for the all-reduce below
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, PartitionSpec  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import cpu_name, cpu_seconds, median_seconds  # noqa: E402

from gptjax import decode, model as M  # noqa: E402

VOCAB, N_LAYER, N_HEAD, N_EMBD = 65, 4, 4, 128
GREEDY, SAMPLED = decode.Sampling(temperature=0.0), decode.Sampling(temperature=0.8, top_k=20)
# (batch, cache slots, sampling); the steps run from the middle of the cache.
# (4, 512) is a row group of batch 16 in that bucket (decode.plan_groups on a 32 MiB L3, 2 cores).
CASES = [(1, 128, GREEDY), (1, 512, GREEDY), (1, 128, SAMPLED), (4, 512, GREEDY), (16, 128, GREEDY),
         (16, 512, GREEDY)]
STEPS = 64


def matmul_gflops(m, k, n, repeats, clock, chain=16):
  """float32 matmul throughput on one thread (the decode loop's XLA:CPU options), median of repeats."""
  a = jax.random.normal(jax.random.PRNGKey(0), (chain, m, k), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (k, n), jnp.float32)
  run = jax.jit(lambda a, b: sum(jnp.dot(a[i], b) for i in range(chain)), compiler_options=decode.CPU_DECODE_OPTIONS)
  seconds = median_seconds(lambda: jax.block_until_ready(run(a, b)), repeats, clock)
  return 2 * m * k * n * chain / seconds / 1e9


def dense_floor(params, config, repeats, clock):
  """(seconds, bytes) per step of the step's dense matmuls alone at batch 1: each layer's four weight
  matrices and the tied head, in a loop of STEPS steps compiled as the decode loop is. Every weight
  is read once per token, so this is the floor of a batch-1 step on one core."""
  layers = [params[f'h_{i}'] for i in range(config.n_layer)]
  head = params['wte']['embedding']

  def step(x):
    for p in layers:
      qkv = x @ p['attn']['c_attn']['kernel']
      x = x + qkv[:, :config.n_embd] @ p['attn']['c_proj']['kernel']
      x = x + jnp.tanh(x @ p['mlp']['c_fc']['kernel']) @ p['mlp']['c_proj']['kernel']
    logits = jax.lax.dot_general(x, head, (((1,), (1,)), ((), ())))
    return x + 1e-3 * logits[:, :1]

  run = jax.jit(lambda x: jax.lax.fori_loop(0, STEPS, lambda i, x: step(x), x),
                compiler_options=decode.CPU_DECODE_OPTIONS)
  x = jnp.ones((1, config.n_embd), jnp.float32)
  seconds = median_seconds(lambda: jax.block_until_ready(run(x)), repeats, clock)
  nbytes = sum(p[a][b]['kernel'].nbytes for p in layers for a, b in
               (('attn', 'c_attn'), ('attn', 'c_proj'), ('mlp', 'c_fc'), ('mlp', 'c_proj'))) + head.nbytes
  return seconds / STEPS, nbytes


def all_reduce_seconds(width, repeats, clock, rounds=256):
  """Seconds of one all-reduce (psum) of a [1, width] float32 vector between two XLA CPU devices,
  in a compiled loop: what splitting a batch-1 step's matmuls over two cores would pay per layer, twice."""
  mesh = Mesh(np.array(jax.devices()[:2]), ('t',))

  def body(x):
    return jax.lax.fori_loop(0, rounds, lambda i, x: jax.lax.psum(x * 0.5, 't'), x)

  run = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=PartitionSpec(), out_specs=PartitionSpec(),
                              check_vma=False), compiler_options=decode.CPU_DECODE_OPTIONS)
  x = jnp.ones((1, width), jnp.float32)
  return median_seconds(lambda: jax.block_until_ready(run(x)), repeats, clock) / rounds


def step_cost(config, batch, cache_len):
  """(FLOPs, bytes) of one decode step of `batch` rows attending over cache_len slots."""
  c = config
  dense = c.n_layer * (c.n_embd * 3 * c.n_embd + c.n_embd * c.n_embd + 2 * c.n_embd * 4 * c.n_embd)
  dense += c.n_embd * c.vocab_size  # the (tied) output head
  attention = c.n_layer * 2 * c.n_embd * cache_len  # Q K^T and P V over every slot of the bucket
  flops = 2 * batch * (dense + attention)
  cache_bytes = c.n_layer * 2 * batch * c.n_embd * cache_len * 4
  return flops, dense * 4 + cache_bytes


PARTS = [('dense matmuls', r'c_attn/dot|c_proj/dot|c_fc/dot|wte.attend|lm_head'),
         ('attention over the cache', r'/attn/(?!c_attn|c_proj|scatter)'),
         ('cache writes', r'scatter|dynamic_update_slice|dynamic-update-slice'),
         ('layer norms', r'ln_\d|ln_f'),
         ('sampling', r'sample_logits|argmax|top_k|categorical|threefry|/reduce$|random'),
         ('embedding, residual adds, loop', r'.')]


def part_of(op_name):
  return next((name for name, pattern in PARTS if re.search(pattern, op_name)), PARTS[-1][0])


def profile(compiled, args, steps, repeats):
  """Seconds per step by part: for each part, the median over `repeats` jax.profiler traces of one call."""
  hlo = compiled.as_text()
  op_names, users = {}, collections.defaultdict(list)
  for line in hlo.split('\n'):
    m = re.match(r'\s*(?:ROOT )?%([\w.\-]+) = .*?\((.*?)\)(?:, |$)', line)
    if not m:
      continue
    name = m.group(1)
    found = re.search(r'op_name="([^"]*)"', line)
    if found:
      op_names[name] = found.group(1)
    elif re.search(r' dot\(', line):  # XLA drops the names of dots; a batched one is attention's
      op_names[name] = '/attn/scores' if 'lhs_batch_dims' in line else 'c_attn/dot'
    for operand in re.findall(r'%([\w.\-]+)', m.group(2)):
      users[operand].append(name)

  def op_name(thunk, depth=0):  # thunks XLA made itself (e.g. split reductions) take their user's name
    if thunk in op_names or depth > 3:
      return op_names.get(thunk, '')
    return next((n for u in users.get(thunk, []) if (n := op_name(u, depth + 1))), '')

  def one_trace():
    with tempfile.TemporaryDirectory() as trace_dir:
      fresh = args()
      with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        jax.block_until_ready(compiled(*fresh))
      trace = glob.glob(f'{trace_dir}/**/*.trace.json.gz', recursive=True)[0]
      events = json.load(gzip.open(trace))['traceEvents']
    seconds = collections.Counter()
    for e in events:
      name = e.get('name', '')
      if e.get('ph') != 'X' or name.startswith(('$', 'Thunk', 'while', 'end: ', 'Pjit', 'Common')):
        continue
      if name in op_names or name in users:
        seconds[part_of(op_name(name))] += e['dur'] * 1e-6 / steps
    return seconds

  jax.block_until_ready(compiled(*args()))
  traces = [one_trace() for _ in range(repeats)]
  return {part: float(np.median([t.get(part, 0.0) for t in traces])) for part, _ in PARTS}


def time_chunk(compiled, fresh, repeats, clock):
  """Median seconds of one call on fresh inputs (the chunk consumes its state), warm-up first."""
  times = []
  for _ in range(repeats + 1):
    inputs = jax.block_until_ready(fresh())
    t0 = clock()
    jax.block_until_ready(compiled(*inputs))
    times.append(clock() - t0)
  return float(np.median(times[1:]))


def thunks_per_step(hlo):
  blocks = {}
  for block in hlo.split('\n\n'):
    lines = block.strip().split('\n')
    if lines and '{' in lines[0]:
      blocks['ENTRY' if lines[0].startswith('ENTRY') else lines[0].split(' ')[0].lstrip('%')] = lines[1:]
  body = next(re.search(r'body=%([\w.\-]+)', l).group(1) for l in blocks['ENTRY'] if ' while(' in l)
  skip = ('bitcast', 'constant', 'get-tuple-element', 'tuple', 'parameter')
  ops = [re.match(r'\s*(?:ROOT )?%[\w.\-]+ = .*? ([a-z\-]+)\(', l) for l in blocks[body]]
  return sum(1 for m in ops if m and m.group(1) not in skip)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=7)
  parser.add_argument('--cpu_time', action='store_true', help='CPU seconds instead of wall seconds')
  args = parser.parse_args()
  clock = cpu_seconds if args.cpu_time else time.perf_counter
  config = M.GPTConfig(vocab_size=VOCAB, block_size=1024, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD,
                       bias=False, tie_embeddings=True)
  params = M.init_params(config, jax.random.PRNGKey(0))
  peak = matmul_gflops(1024, 1024, 1024, args.repeats, clock)
  what = 'CPU time' if args.cpu_time else 'wall time'
  print(f'{cpu_name()}; jax {jax.__version__}; load average {os.getloadavg()[0]:.1f}; {what}; '
        f'float32 matmul 1024^3 on one thread: {peak:.0f} GFLOP/s; decode steps: median of {args.repeats} '
        f'calls of {STEPS} steps')
  costs, profiles = [], []
  for batch, cache_len, sampling in CASES:
    pos = cache_len // 2

    def fresh():
      prompts = np.zeros((batch, pos), np.int32)
      lengths = np.full((batch,), pos, np.int32)
      state, context, _ = decode._start(params, prompts, lengths, jax.random.PRNGKey(0),
                                        np.arange(batch, dtype=np.int32), config=config, cache_len=cache_len,
                                        sampling=sampling, stop_tokens=())
      return params, state, context, np.int32(STEPS)

    lowered = decode._chunk_program().lower(*fresh(), config=config, sampling=sampling, stop_tokens=())
    compiled = lowered.compile()
    step = time_chunk(compiled, fresh, args.repeats, clock) / STEPS
    flops, nbytes = step_cost(config, batch, cache_len)
    parts = profile(compiled, fresh, STEPS, args.repeats)
    how = 'greedy' if sampling.temperature == 0 else f'T={sampling.temperature} top_k={sampling.top_k}'
    name = f'| {batch} | {cache_len} | {how} | {step * 1e6:.1f} '
    costs.append(name + f'| {flops / 1e6:.2f} | {flops / peak / 1e3:.1f} | {nbytes / 1e6:.2f} '
                 f'| {nbytes / step / 1e9:.0f} | {thunks_per_step(compiled.as_text())} |')
    total = sum(parts.values())
    profiles.append(name + '| ' + ' | '.join(f'{parts.get(p, 0) / total:.0%}' for p, _ in PARTS)
                    + f' | {total * 1e6:.1f} |')
    print(costs[-1], flush=True)

  floor, weight_bytes = dense_floor(params, config, args.repeats, clock)
  print(f'\nthe dense matmuls alone, batch 1 ({weight_bytes / 1e6:.2f} MB of weights read once per token): '
        f'{floor * 1e6:.1f} us per step, {weight_bytes / floor / 1e9:.0f} GB/s')
  reduce = all_reduce_seconds(config.n_embd, args.repeats, clock)
  print(f'an all-reduce of one token\'s activations ([1, {config.n_embd}] float32) between two XLA CPU devices: '
        f'{reduce * 1e6:.1f} us')
  print('\nthe step against its arithmetic and its memory traffic (us per token-step):')
  print(f'| batch | cache slots | sampling | step us | MFLOP | at {peak:.0f} GFLOP/s, us | MB read (weights + cache) '
        '| GB/s that makes | thunks |')
  print('|---' * 9 + '|')
  print('\n'.join(costs))
  print('\nwhere it goes (jax.profiler: share of the traced thunk time by what the thunks do; tracing adds its own '
        'cost per thunk, and on a busy machine waits, so the traced sum exceeds the step):')
  print('| batch | cache slots | sampling | step us | ' + ' | '.join(p for p, _ in PARTS) + ' | traced sum, us |')
  print('|---' * (5 + len(PARTS)) + '|')
  print('\n'.join(profiles))


if __name__ == '__main__':
  main()
