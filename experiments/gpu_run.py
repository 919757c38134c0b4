"""GPT-2 small on whatever accelerator JAX finds: tokens/s, MFU and peak memory of training, and the
fused (cuDNN) attention checked against the einsum path in bfloat16.

  python experiments/gpu_run.py                  # GPT-2 small (12 x 12 x 768, block 1024), bf16, 300 steps
  python experiments/gpu_run.py --json=$OUT/gpu_run.json   # the same, and every figure as JSON
  python experiments/gpu_run.py --steps=20 --n_layer=2 --n_head=2 --n_embd=64 --seq=64 --batch=4 \\
      --vocab=512 --variant_steps=10             # a CPU smoke run of the same code

What it does, in order:
  1. the devices, and the peak dense FLOP/s gptjax.hardware knows for them (MFU is null where unknown);
  2. the attention: --attention=auto takes cuDNN's fused kernel where it can run (NVIDIA GPU, bf16/fp16,
     head size a multiple of 8 up to 128/256), else the einsum path, and says why;
  3. the check: the chosen fused path against the einsum path, both in bfloat16, and both against a
     float32 einsum reference, on the training forward/backward and on KV-cache decoding of ragged
     prompts (see `check_attention` for the tolerance);
  4. training: gptjax.train.train_steps (the library's step, --steps_per_call steps per compiled call)
     on synthetic tokens, `--steps` timed steps after a compiling call; tokens/s, ms/step, MFU against
     the table's peak for all devices, the compiled step's memory and the allocator's peak per device;
  5. the same for each --variants run (by default the einsum attention, to show what fusing buys),
     then one table of all runs.
With --profile_calls=N the main run also traces N more calls with jax.profiler and prints the device
time per step by kernel and by kind (`kernel_breakdown`). The PyTorch peer on the same machine is
experiments/gpu_peer_torch.py; the output of both on an H200 is in experiments/gpu_results/.

It imports only gptjax's library modules, which need jax, flax, optax, orbax, numpy, absl and tqdm:
no ml_collections and no tensorboardX (tests/test_gpu_run.py runs it with both made unimportable).
Several devices: batches are split over a 'data' mesh axis, the state replicated.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import importlib.metadata
import json
import os
import re
import sys
import tempfile
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gptjax import attention, decode, hardware, metrics, objectives  # noqa: E402
from gptjax import kv_cache as kvc  # noqa: E402
from gptjax import train as train_lib  # noqa: E402
from gptjax.model import GPT, GPTConfig, count_params, init_params  # noqa: E402
from timing import median_seconds  # noqa: E402  experiments/timing.py


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--n_layer', type=int, default=12)
  p.add_argument('--n_head', type=int, default=12)
  p.add_argument('--n_embd', type=int, default=768)
  p.add_argument('--vocab', type=int, default=50304, help="GPT-2's 50257 padded to a multiple of 64")
  p.add_argument('--seq', type=int, default=1024, help='tokens per row (the block size)')
  p.add_argument('--batch', type=int, default=16, help='rows per step (global)')
  p.add_argument('--dtype', default='bfloat16')
  p.add_argument('--attention', default='auto', choices=('auto',) + attention.IMPLEMENTATIONS)
  p.add_argument('--remat', default='none')
  p.add_argument('--grad_accum_steps', type=int, default=1)
  p.add_argument('--steps', type=int, default=300, help='timed training steps of the main run')
  p.add_argument('--steps_per_call', type=int, default=10)
  p.add_argument('--variants', default='attention_impl=einsum;batch=32',
                 help="';'-separated runs, each ','-separated overrides of the main run: GPTConfig fields, "
                      "batch or grad_accum_steps (e.g. 'attention_impl=einsum;remat=full;batch=32'); '' for none")
  p.add_argument('--variant_steps', type=int, default=100)
  p.add_argument('--skip_check', action='store_true')
  p.add_argument('--profile_calls', type=int, default=0,
                 help="after the main run's timing, trace this many more calls with jax.profiler and print "
                      'where the device time goes (kernels by name and by kind)')
  p.add_argument('--tie_embeddings', type=int, default=1,
                 help="1: the LM head is wte read backwards, as in GPT-2 small (124M) and nanoGPT; 0: a separate head")
  p.add_argument('--ceiling_size', type=int, default=0,
                 help='side of the square matmuls that measure the ceiling (default 8192 on an accelerator, '
                      '512 on a CPU); -1 to skip')
  p.add_argument('--json', default='', help='also write every figure to this JSON file')
  p.add_argument('--check_layers', type=int, default=2,
                 help='layers of the model the attention check runs (same width, heads and seq; each layer '
                      'runs the same kernel, and fewer layers compile faster)')
  return p.parse_args(argv)


PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy')


def _version(name: str) -> str:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return 'not installed'


def gib(n):
  return 'n/a' if n is None else f'{n / 2**30:.2f} GiB'


# ---------------------------------------------------------------------------------------------
# The check: fused attention against the einsum path


def rel(a, b):
  """||a - b|| / ||b|| over all leaves of two pytrees, in float64 on the host."""
  a = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(a)])
  b = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(b)])
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check_attention(config: GPTConfig, impl: str, seq: int) -> bool:
  """Compares attention_impl=impl with 'einsum', both in config.dtype, and each with a float32
  einsum reference, on (a) loss, logits and gradients of 2 rows of `seq` tokens and (b) the logits of
  KV-cache decoding: ragged prompts (seq/2 and seq/8 tokens) prefilled, then 8 single-token steps.

  Tolerance: bfloat16 rounds each matmul input by up to 2^-9, so a bf16 path lands 1e-3..1e-2 from a
  float32 reference (relative L2). The two bf16 paths round in different places (the einsum path
  rounds the probabilities to bf16 before P V; the fused kernel keeps its own tiles), so they are
  not bit-equal; the fused path passes if it is within 2e-2 (or 3x the einsum path's own rounding
  distance, if larger) of the einsum path and no further than twice the einsum path's distance
  (+1e-3) from the float32 reference. A wrong mask, scale or head layout moves the result by O(1)
  (the check sharpens attention so that it would).
  """
  fused = dataclasses.replace(config, attention_impl=impl)
  einsum = dataclasses.replace(config, attention_impl='einsum')
  ref = dataclasses.replace(config, attention_impl='einsum', dtype='float32')
  # The query/key/value projections x4 (scores x16): at GPT-2's initial scale attention is nearly
  # uniform, where a wrong mask or head layout would hardly show.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x * 4 if 'c_attn' in jax.tree_util.keystr(path) and x.ndim == 2 else x,
      init_params(config, jax.random.PRNGKey(1)))
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, seq + 1), 0, config.vocab_size)

  def grads_of(c):
    def loss_fn(p):
      inputs, targets = objectives.next_token_split(tokens)
      logits = GPT(c).apply({'params': p}, inputs)
      return objectives.cross_entropy(logits, targets)[0], logits
    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)

  def decode_logits(c):
    long, short, steps = max(seq // 2, 1), max(seq // 8, 1), 8
    lengths = jnp.asarray([long, short], jnp.int32)  # right-padded prompts of two lengths

    @jax.jit
    def go(p):
      last, cache = decode.prefill(p, c, tokens[:, :long], lengths, kvc.init(c, 2, long + steps))
      out = [last]
      for t in range(steps - 1):
        logits, cache = GPT(c).apply({'params': p}, tokens[:, seq - t:seq - t + 1], cache=cache)
        out.append(logits[:, 0])
      return jnp.stack(out)
    return go(params)

  ok = True
  print(f'\n== check: attention {impl!r} vs einsum, {config.dtype}, float32 einsum as reference ==')
  print('| what | fused vs einsum | einsum vs f32 | fused vs f32 | pass |')
  print('|---|---|---|---|---|')
  (loss_r, logits_r), grads_r = grads_of(ref)
  (loss_e, logits_e), grads_e = grads_of(einsum)
  try:
    (loss_f, logits_f), grads_f = grads_of(fused)
    dec_f = decode_logits(fused)
  except Exception as e:  # report and go on to the timing: a failed check is a finding
    print(f'| {impl} path | failed: {type(e).__name__}: {str(e).splitlines()[0][:200]} | | | no |')
    return False
  dec_e, dec_r = decode_logits(einsum), decode_logits(ref)
  for what, f, e, r in (('training logits', logits_f, logits_e, logits_r),
                        ('training loss', loss_f, loss_e, loss_r),
                        ('gradients (all)', grads_f, grads_e, grads_r),
                        ('decode logits, ragged', dec_f, dec_e, dec_r)):
    fe, er, fr = rel(f, e), rel(e, r), rel(f, r)
    passed = fe <= max(2e-2, 3 * er) and fr <= 2 * er + 1e-3
    ok &= passed
    print(f'| {what} | {fe:.2e} | {er:.2e} | {fr:.2e} | {"yes" if passed else "NO"} |')
  return ok


# ---------------------------------------------------------------------------------------------
# The measured ceiling


def matmul_ceiling(size: int, dtype: str, chain: int = 10, repeats: int = 5) -> float:
  """FLOP/s of `chain` [size, size] x [size, size] products (one batched matmul) in `dtype` (float32
  accumulation) inside one jit call, median of `repeats` calls after a warm-up: what the device's
  matrix units reach through XLA, the practical ceiling MFU is read against (the table's peak is
  the datasheet's)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (chain, size, size), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32).astype(dtype)

  # Whole products written out: a slice of the result would let XLA compute only that slice.
  run = jax.jit(lambda a, b: jnp.einsum('cmk,kn->cmn', a, b, preferred_element_type=jnp.float32).astype(dtype))
  return 2 * chain * size ** 3 / median_seconds(lambda: run(a, b).block_until_ready(), repeats)


# ---------------------------------------------------------------------------------------------
# Training throughput


def _optimizer(lr):
  tc = types.SimpleNamespace(learning_rate=lr, min_lr=lr / 10, warmup_steps=10, decay_steps=10_000,
                             beta1=0.9, beta2=0.95, weight_decay=0.1, grad_clip=1.0)
  return train_lib.make_optimizer(tc)[0]  # the run's AdamW + clipping + schedule


CATEGORIES = (  # kernel (or HLO op) name -> what it does; the first pattern that matches wins
    ('attention (cuDNN)', r'cudnn|fmha|flash|sdpa'),
    ('matmul', r'gemm|cublas|cutlass|nvjet|xmma|gmma|\bdot|_dot|triton_gemm|matmul|ynn'),  # ynn: XLA:CPU's dots
    ('scatter / gather', r'scatter|gather|dynamic.update.slice|dynamic.slice'),
    ('copy / transpose', r'copy|transpose|memcpy|memset'),
    ('reduction fusion', r'reduce|reduction|input_'),
    ('elementwise fusion', r'fusion|loop_|convert|add|multiply|select'),
)


def kernel_breakdown(trace_dir: str, steps: int, top: int = 25) -> dict:
  """Device time per training step from a jax.profiler trace: every kernel (GPU) or XLA op (CPU)
  summed by name and by CATEGORIES, against the wall time the device was busy. Printed as two
  tables; returned as a dict for the JSON."""
  paths = sorted(glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True))
  if not paths:
    print(f'profile: no trace written under {trace_dir}')
    return {}
  data = jax.profiler.ProfileData.from_file(paths[-1])
  devices = [pl for pl in data.planes if pl.name.startswith(('/device:GPU', '/device:TPU'))]
  by_name: dict[str, list] = {}
  first, last = float('inf'), 0.0
  for plane in devices or [pl for pl in data.planes if pl.name == '/host:CPU']:
    for line in plane.lines:
      if devices and line.name.startswith('XLA'):  # derived lines repeat the streams' kernels
        continue
      for event in line.events:
        stats = dict(event.stats)
        if not devices and 'hlo_op' not in stats:
          continue  # on the host: only events that are XLA ops
        op = str(stats.get('hlo_op', ''))
        entry = by_name.setdefault(event.name, [0.0, 0, op])
        entry[0] += event.duration_ns
        entry[1] += 1
        first, last = min(first, event.start_ns), max(last, event.start_ns + event.duration_ns)
  busy = sum(v[0] for v in by_name.values())
  span = max(last - first, 1.0)
  categories: dict[str, float] = {}
  for name, (ns, _, op) in by_name.items():
    what = next((c for c, pattern in CATEGORIES if re.search(pattern, f'{name} {op}', re.I)), 'other')
    categories[what] = categories.get(what, 0.0) + ns
  ms = lambda ns: ns / steps / 1e6
  print(f'\n== where a step\'s device time goes ({steps} profiled steps; kernels summed per step) ==')
  print(f'kernels busy {ms(busy):.2f} ms/step of {ms(span):.2f} ms/step from the first kernel to the last '
        f'({100 * busy / span:.0f}%; the rest is gaps between kernels, or overlap where streams run side by side)')
  print('| category | ms/step | share of kernel time |\n|---|---|---|')
  for what, ns in sorted(categories.items(), key=lambda kv: -kv[1]):
    print(f'| {what} | {ms(ns):.2f} | {100 * ns / max(busy, 1):.1f}% |')
  print(f'| kernel (top {top}) | HLO op | launches/step | ms/step | share |\n|---|---|---|---|---|')
  ranked = sorted(by_name.items(), key=lambda kv: -kv[1][0])
  for name, (ns, count, op) in ranked[:top]:
    print(f'| {name[:90]} | {op[:40]} | {count / steps:.1f} | {ms(ns):.3f} | {100 * ns / max(busy, 1):.1f}% |')
  return {'steps': steps, 'busy_ms_per_step': ms(busy), 'span_ms_per_step': ms(span),
          'categories_ms_per_step': {k: ms(v) for k, v in categories.items()},
          'top': [{'kernel': n, 'hlo_op': op, 'per_step': c / steps, 'ms_per_step': ms(ns)}
                  for n, (ns, c, op) in ranked[:top]]}


def time_training(config: GPTConfig, args, steps: int, label: str, profile_calls: int = 0) -> dict:
  devices = jax.devices()
  mesh = Mesh(np.asarray(devices), ('data',))
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = NamedSharding(mesh, PartitionSpec(None, 'data'))  # [steps, batch, seq + 1]
  tx = _optimizer(3e-4)
  state = jax.jit(lambda: train_lib.init_state(config, tx, 0), out_shardings=replicated)()
  step_fn = functools.partial(train_lib.train_steps, model=GPT(config), tx=tx, axis_name=None,
                              grad_accum_steps=args.grad_accum_steps)
  step = jax.jit(step_fn, in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated),
                 donate_argnums=(0,))
  k = args.steps_per_call
  rng = np.random.default_rng(0)
  batches = [jax.device_put(rng.integers(0, config.vocab_size, (k, args.batch, args.seq + 1), dtype=np.int32),
                            batch_sharding) for _ in range(2)]
  t0 = time.perf_counter()
  compiled = step.lower(state, batches[0]).compile()
  compile_s = time.perf_counter() - t0
  memory = compiled.memory_analysis()
  step_bytes = None if memory is None else (memory.argument_size_in_bytes + memory.output_size_in_bytes
                                            - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  state, out = compiled(state, batches[0])  # warm-up call
  float(out['loss'][-1])
  calls = max(1, steps // k)
  losses, call_seconds = [], []
  for i in range(calls):
    t0 = time.perf_counter()
    state, out = compiled(state, batches[(i + 1) % 2])
    losses.append(float(out['loss'][-1]))  # waits for the call
    call_seconds.append(time.perf_counter() - t0)
  breakdown = None
  if profile_calls:
    trace_dir = tempfile.mkdtemp(prefix='gptjax_trace_')
    try:  # a profiler that cannot run here leaves the timing standing
      jax.profiler.start_trace(trace_dir)
      for i in range(profile_calls):
        state, out = compiled(state, batches[i % 2])
        float(out['loss'][-1])
      jax.profiler.stop_trace()
      breakdown = kernel_breakdown(trace_dir, profile_calls * k)
    except Exception as e:
      print(f'profile: failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}', flush=True)
  seconds = float(np.median(call_seconds))  # the median call of `k` steps
  peak = hardware.total_peak_flops(devices, config.dtype)
  result = metrics.throughput(k * args.batch * args.seq, seconds, k, config, args.seq, peak)
  result.update(label=label, attention=config.attention_impl, remat=config.remat, dtype=config.dtype,
                batch=args.batch, compile_s=compile_s, step_bytes=step_bytes, loss=losses[-1],
                calls=calls, steps_per_call=k, call_seconds=call_seconds, kernels=breakdown,
                peak_memory=[hardware.peak_memory_bytes(d) for d in devices[:8]])
  mfu = 'null (no known peak)' if result['mfu'] is None else f'{100 * result["mfu"]:.1f}%'
  print(f'{label}: {calls} calls of {k} steps in {sum(call_seconds):.2f} s after a {compile_s:.1f} s compile; '
        f'median call (min, max {min(call_seconds) / k * 1e3:.1f}, {max(call_seconds) / k * 1e3:.1f} ms/step): '
        f'{result["ms_per_step"]:.1f} ms/step, {result["tokens_per_sec"]:,.0f} tokens/s, MFU {mfu}, '
        f'compiled step {gib(step_bytes)}/device, allocator peak so far {", ".join(map(gib, result["peak_memory"]))}; '
        f'last loss {losses[-1]:.3f}', flush=True)
  return result


def main(argv=None):
  args = parse_args(argv)
  devices = jax.devices()
  kind = devices[0].device_kind
  found = hardware.peak_of(kind)
  print(f'Python {sys.version.split()[0]}; ' + ', '.join(f'{name} {_version(name)}' for name in PACKAGES)
        + f'; backend {jax.default_backend()}, {len(devices)} x {kind}')
  print('peak (gptjax.hardware): ' + (f'{found[0]}: {found[1].bfloat16 / 1e12:.1f} TFLOP/s bf16, '
                                       f'{found[1].float32 / 1e12:.1f} float32 ({found[1].source})'
                                       if found else 'unknown for this device kind: MFU is null'))
  base = GPTConfig(vocab_size=args.vocab, block_size=args.seq, n_layer=args.n_layer, n_head=args.n_head,
                   n_embd=args.n_embd, dropout=0.0, bias=True, dtype=args.dtype, remat=args.remat,
                   tie_embeddings=bool(args.tie_embeddings))
  impl = args.attention
  if impl == 'auto':
    problem = attention.cudnn_problem(dataclasses.replace(base, attention_impl='cudnn'))
    impl = 'cudnn' if problem is None else 'einsum'
    print(f'attention: {impl}' + (f" (cuDNN's fused kernel needs {problem})" if problem else ''))
  config = dataclasses.replace(base, attention_impl=impl)
  attention.check(config)
  n = count_params(jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0))))
  print(f'model: {args.n_layer} layers, {args.n_head} heads, {args.n_embd} wide, vocab {args.vocab}, '
        f'{n / 1e6:.1f}M parameters; {args.batch} x {args.seq} tokens a step, {args.dtype}, remat '
        f'{args.remat}; {metrics.flops_per_token(config, args.seq) / 1e6:.0f} MFLOP a token (6N + 12 L T d)')

  ceiling = None
  size = args.ceiling_size or (512 if jax.default_backend() == 'cpu' else 8192)
  if size > 0:
    ceiling = matmul_ceiling(size, args.dtype)
    peak = found[1].bfloat16 if found and args.dtype == 'bfloat16' else found[1].float32 if found else None
    print(f'ceiling: {size}^3 {args.dtype} matmuls through XLA run at {ceiling / 1e12:.1f} TFLOP/s'
          + (f', {100 * ceiling / peak:.0f}% of the table\'s peak' if peak else ''))

  check_ok = None
  if not args.skip_check:
    # On a CPU there is no cuDNN: the same comparison then runs the 'xla' implementation.
    check_ok = check_attention(dataclasses.replace(config, n_layer=min(config.n_layer, args.check_layers)),
                               impl if impl != 'einsum' else 'xla', args.seq)

  def save(runs):
    if args.json:  # after every run, so a run stopped at its time limit still leaves what it measured
      with open(args.json, 'w', encoding='utf-8') as f:
        json.dump({'device_kind': kind, 'devices': len(devices), 'jax': jax.__version__, 'args': vars(args),
                   'attention_check': check_ok, 'matmul_ceiling_flops': ceiling, 'runs': runs}, f, indent=1)

  print('\n== training ==')
  runs = []
  save(runs)
  runs.append(time_training(config, args, args.steps, 'main', args.profile_calls))
  save(runs)
  for spec in filter(None, args.variants.split(';')):
    try:  # one variant failing (a bad override, out of memory) leaves the others' figures
      overrides = dict(kv.split('=', 1) for kv in spec.split(','))
      run_args = argparse.Namespace(**{**vars(args), **{k: int(v) for k, v in overrides.items()
                                                         if k in ('batch', 'grad_accum_steps')}})
      value = lambda v: {'true': True, 'false': False}.get(v.lower(), int(v) if v.isdigit() else v)
      variant = dataclasses.replace(config, **{k: value(v) for k, v in overrides.items()
                                               if k not in ('batch', 'grad_accum_steps')})
      if variant == config and run_args == args:
        continue  # the main run already (e.g. einsum where cuDNN cannot run)
      attention.check(variant)
      runs.append(time_training(variant, run_args, args.variant_steps, spec))
      save(runs)
    except Exception as e:
      print(f'{spec}: failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}', flush=True)

  print(f'\n{len(devices)} x {kind}; GPT {args.n_layer}x{args.n_head}x{args.n_embd}, vocab {args.vocab}, '
        f'{args.seq} tokens a row; each figure is the median of the timed calls (each --steps_per_call steps, waited for) after a warm-up call')
  print('| run | attention | remat | dtype | batch | ms/step | tokens/s | MFU | compiled step / device | '
        'allocator peak so far / device |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  for r in runs:
    mfu = 'null' if r['mfu'] is None else f'{100 * r["mfu"]:.1f}%'
    print(f'| {r["label"]} | {r["attention"]} | {r["remat"]} | {r["dtype"]} | {r["batch"]} | '
          f'{r["ms_per_step"]:.1f} | {r["tokens_per_sec"]:,.0f} | {mfu} | {gib(r["step_bytes"])} | '
          f'{gib(r["peak_memory"][0])} |')
  if check_ok is not None:
    print(f'attention check: {"PASS" if check_ok else "FAIL"}')
  return 0 if check_ok in (None, True) else 1


if __name__ == '__main__':
  sys.exit(main())
