"""Where a training step's time goes: nanoGPT's CPU recipe, gptjax and its PyTorch peer, part by part.

Shapes of configs/shakespeare_char.py (4 layers, 4 heads, 128 wide, vocab 65, batch 12 x 64 tokens),
float32. Two worker processes are started, gptjax (with the CPU choices `python -m gptjax.train`
makes, gptjax/cpu.py) and experiments/nanogpt_peer.py in PyTorch (its default threads), and every
row is timed in rounds that alternate between them (A B A B ...), so machine noise hits both alike:
each round takes the median of several calls, the table the median over rounds.

Parts (each jitted alone / run alone on the full batch, all layers; forward, then backward =
forward+backward minus forward; the backward also computes the gradients of the part's inputs):
  attention core       Q K^T, mask, softmax, P V and the head reshapes, from c_attn's output
  attention matmuls    c_attn and the attention's c_proj
  MLP                  c_fc, GELU, c_proj
  layer norms          ln_1, ln_2 of every block and ln_f
  embedding + head     E[tokens] + P[positions] and the tied head h E^T (gradient: E gets both)
  cross-entropy        log-softmax and the target's log-probability, mean over tokens
  optimizer update     global-norm clipping and AdamW on the whole parameter tree (one column)
Whole step:
  forward, forward+backward; step, 1 per call (dispatch included); step, 10 per call (gptjax's
  train_steps, a lax.scan); step as gptjax.train runs it (pmap over the devices cpu.py chose,
  10 per call); eval, 20 batches (one evaluation of the recipe).
Matmul limit: the step's own matrix products (every dot_general of the forward and backward pass,
taken from the traced gradient, at their shapes and layouts) run alone, nothing else: XLA on one
device, XLA on one device per core (each with its share of the batch), PyTorch on the same shapes.
Efficiency = model FLOP/s of a step / the matmul limit's FLOP/s on the same devices.

  pip install -e '.[bench]'
  python experiments/step_profile.py [--rounds=5] [--calls=10] [--nocpu_auto]

Model FLOPs are metrics.flops_per_token (6N + attention, as nanoGPT's MFU counts them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'experiments'))
sys.path.insert(0, ROOT)

BATCH, SEQ, VOCAB, LAYERS, HEADS, WIDTH, CALL = 12, 64, 65, 4, 4, 128, 10
MM_COPIES = 4  # independent products per timed call in the matmul limit
PARTS = ('attention core', 'attention matmuls', 'MLP', 'layer norms', 'embedding + head', 'cross-entropy')
WHOLE = ('forward', 'forward+backward', 'step, 1 per call', 'step, 10 per call', 'step, as gptjax.train runs it',
         'eval, 20 batches')


def step_dots(jaxpr) -> list:
  """(lhs shape, rhs shape, dimension_numbers) of every dot_general a jaxpr runs on CPU, in order:
  nested calls included; of a `lax.platform_dependent` conditional, only the CPU branch."""
  from jax.extend.core import jaxprs_in_params
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      found.append((eqn.invars[0].aval.shape, eqn.invars[1].aval.shape, eqn.params['dimension_numbers']))
    subs = list(jaxprs_in_params(eqn.params))
    platforms = eqn.params.get('branches_platforms')
    if eqn.primitive.name == 'cond' and platforms:
      index = next((i for i, p in enumerate(platforms) if p and 'cpu' in p), platforms.index(None))
      subs = [eqn.params['branches'][index].jaxpr]
    for sub in subs:
      found.extend(step_dots(sub))
  return found


def dot_flops(jaxpr) -> float:
  """FLOPs of the dot_generals `step_dots` finds."""
  return sum(2.0 * np.prod(out_shape(l, r, dn)) * np.prod([l[d] for d in dn[0][0]])
             for l, r, dn in step_dots(jaxpr))


def out_shape(lhs, rhs, dimension_numbers) -> tuple:
  (lc, rc), (lb, rb) = dimension_numbers
  return (tuple(lhs[d] for d in lb) + tuple(n for d, n in enumerate(lhs) if d not in lc and d not in lb)
          + tuple(n for d, n in enumerate(rhs) if d not in rc and d not in rb))


# ---------------------------------------------------------------------------------------------
# The gptjax worker


def jax_items(auto: bool):
  """{name: (fn, steps per call)} for the gptjax side, plus metadata."""
  from gptjax import cpu
  choices = cpu.configure(batch_size=BATCH, auto=auto, log=lambda s: None)
  import functools

  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax

  sys.path.insert(0, os.path.join(ROOT, 'configs'))
  import shakespeare_char

  from gptjax import data as data_lib
  from gptjax import objectives, parallel
  from gptjax import train as train_lib
  from gptjax.config import resolve
  from gptjax.metrics import flops_per_token
  from gptjax.model import GPT, MLP, GPTConfig, attention
  from gptjax.matmul import dense_dot_general

  config = shakespeare_char.get_config()
  config.model.vocab_size = VOCAB
  config = resolve(config)
  cfg = GPTConfig(vocab_size=VOCAB, block_size=SEQ, n_layer=LAYERS, n_head=HEADS, n_embd=WIDTH, bias=False,
                  tie_embeddings=True)
  model = GPT(cfg)
  tx, _ = train_lib.make_optimizer(config.train)
  state = train_lib.init_state(cfg, tx, 0)
  params = state.params
  ids = np.random.default_rng(0).integers(0, VOCAB, 100_000).astype(np.uint16)
  tokens = jnp.asarray(data_lib.batch_at(ids, seed=0, step=0, batch_size=BATCH, seq_len=SEQ))
  inputs, targets = objectives.next_token_split(tokens)
  rng = np.random.default_rng(1)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  n_tok = BATCH * SEQ
  blocks = [params[f'h_{i}'] for i in range(LAYERS)]

  # Each part: (fn(weights, xs) -> outputs, weights, xs); backward = grad of <outputs, cotangents>.
  ln = nn.LayerNorm(epsilon=1e-5, use_bias=False)
  dense = lambda features: nn.Dense(features, use_bias=False, dot_general=dense_dot_general)
  mask = jnp.tril(jnp.ones((BATCH, SEQ, SEQ), bool))

  def core(qkv):
    q, k, v = jnp.split(qkv, 3, axis=-1)
    q = q.reshape(BATCH, SEQ, HEADS, WIDTH // HEADS)
    heads = lambda t: (t.reshape(BATCH, SEQ, HEADS, -1).transpose(0, 2, 1, 3).reshape(BATCH * HEADS, SEQ, -1))
    return attention(q, heads(k), heads(v), mask, lambda x, deterministic: x, True).reshape(n_tok, WIDTH)

  parts = {
      'attention core': (lambda w, xs: [core(x) for x in xs], None, [normal(n_tok, 3 * WIDTH) for _ in blocks]),
      'attention matmuls': (
          lambda w, xs: [o for b, (x, y) in zip(w, xs) for o in (
              dense(3 * WIDTH).apply({'params': b['c_attn']}, x), dense(WIDTH).apply({'params': b['c_proj']}, y))],
          [b['attn'] for b in blocks], [(normal(n_tok, WIDTH), normal(n_tok, WIDTH)) for _ in blocks]),
      'MLP': (lambda w, xs: [MLP(cfg).apply({'params': b}, x) for b, x in zip(w, xs)],
              [b['mlp'] for b in blocks], [normal(n_tok, WIDTH) for _ in blocks]),
      'layer norms': (lambda w, xs: [ln.apply({'params': s}, x) for s, x in zip(w, xs)],
                      [b[n] for b in blocks for n in ('ln_1', 'ln_2')] + [params['ln_f']],
                      [normal(n_tok, WIDTH) for _ in range(2 * LAYERS + 1)]),
      'embedding + head': (
          lambda w, xs: [(nn.Embed(VOCAB, WIDTH).apply({'params': w['wte']}, inputs)
                          + nn.Embed(SEQ, WIDTH).apply({'params': w['wpe']}, jnp.arange(SEQ)[None])),
                         nn.Embed(VOCAB, WIDTH).apply({'params': w['wte']}, xs, method='attend')],
          {'wte': params['wte'], 'wpe': params['wpe']}, normal(n_tok, WIDTH)),
      'cross-entropy': (lambda w, xs: objectives.cross_entropy(xs, targets)[0], None, normal(BATCH, SEQ, VOCAB)),
  }
  items, part_flops = {}, {}
  for name, (fn, w, xs) in parts.items():
    cotangents = jax.tree.map(lambda o: normal(*o.shape), jax.eval_shape(fn, w, xs))
    fwd = jax.jit(fn)
    inner = lambda w, xs, ct, fn=fn: sum(jnp.vdot(o, c) for o, c in zip(jax.tree.leaves(fn(w, xs)),
                                                                          jax.tree.leaves(ct)))
    bwd = jax.jit(jax.grad(inner, argnums=(0, 1) if w is not None else 1))
    items[f'{name} fwd'] = (functools.partial(lambda f, w, xs: jax.block_until_ready(f(w, xs)), fwd, w, xs), 1)
    items[f'{name} fwd+bwd'] = (
        functools.partial(lambda f, w, xs, c: jax.block_until_ready(f(w, xs, c)), bwd, w, xs, cotangents), 1)
    part_flops[name] = dot_flops(jax.make_jaxpr(fn)(w, xs).jaxpr)
  grads = jax.tree.map(lambda p: normal(*p.shape) * 1e-3, params)

  @jax.jit
  def update(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  items['optimizer update'] = (lambda: jax.block_until_ready(update(params, state.opt_state, grads)), 1)

  loss = lambda p, i, t: objectives.cross_entropy(model.apply({'params': p}, i), t)[0]
  fwd = jax.jit(loss)
  fwd_bwd = jax.jit(jax.value_and_grad(loss))
  items['forward'] = (lambda: jax.block_until_ready(fwd(params, inputs, targets)), 1)
  items['forward+backward'] = (lambda: jax.block_until_ready(fwd_bwd(params, inputs, targets)), 1)
  one = jax.jit(functools.partial(train_lib.train_step, model=model, tx=tx, axis_name=None), donate_argnums=0)
  multi = jax.jit(functools.partial(train_lib.train_steps, model=model, tx=tx, axis_name=None),
                  donate_argnums=0)
  chunk = jnp.stack([tokens] * CALL)
  holder = {'one': jax.tree.map(jnp.copy, state), 'multi': jax.tree.map(jnp.copy, state)}

  def run_one():
    holder['one'], m = one(holder['one'], tokens)
    float(m['loss'])  # the loop reads metrics back, as a training loop does

  def run_multi():
    holder['multi'], m = multi(holder['multi'], chunk)
    np.asarray(m['loss'])

  items['step, 1 per call'] = (run_one, 1)
  items['step, 10 per call'] = (run_multi, CALL)
  devices = jax.local_devices()
  n_dev = len(devices)
  p_train = jax.pmap(functools.partial(train_lib.train_steps, model=model, tx=tx), axis_name=parallel.AXIS,
                     devices=devices, donate_argnums=(0,))
  holder['p'] = parallel.replicate(state, devices)
  p_chunk = parallel.shard(np.asarray(chunk), n_dev, axis=1)

  def run_pmap():
    holder['p'], m = p_train(holder['p'], p_chunk)
    np.asarray(m['loss'])

  items['step, as gptjax.train runs it'] = (run_pmap, CALL)
  p_eval = jax.pmap(functools.partial(train_lib.eval_step, model=model), axis_name=parallel.AXIS, devices=devices)
  evals = parallel.shard(np.stack([np.asarray(tokens)] * 20), n_dev, axis=1)
  p_params = parallel.replicate(params, devices)
  items['eval, 20 batches'] = (lambda: jax.block_until_ready(p_eval(p_params, evals)), 1)

  # The matmul limit: each distinct dot_general of the step (shape, layout) timed alone, 4 independent
  # products with different left operands per call (operands stay in cache, as in the step, and the
  # dispatch is shared); the limit is the step's list of products at those speeds.
  def signatures(batch):
    closed = jax.make_jaxpr(jax.value_and_grad(loss))(params, inputs[:batch], targets[:batch])
    counts = {}
    for l, r, dn in step_dots(closed.jaxpr):
      key = (tuple(l), tuple(r), dn)
      counts[key] = counts.get(key, 0) + 1
    return counts

  def product_program(lhs, rhs, dn):
    fn = lambda lhs_list, b: [jax.lax.dot_general(a, b, dn) for a in lhs_list]
    return fn, [normal(*lhs) for _ in range(MM_COPIES)], normal(*rhs)

  sigs = signatures(BATCH)
  for i, (lhs, rhs, dn) in enumerate(sigs):
    fn, a, b = product_program(lhs, rhs, dn)
    items[f'matmul {i}'] = (functools.partial(lambda f, a, b: jax.block_until_ready(f(a, b)), jax.jit(fn), a, b),
                            MM_COPIES)
  shard_sigs = signatures(BATCH // n_dev) if n_dev > 1 else {}
  assert len(shard_sigs) in (0, len(sigs)), 'the shard has other products than the full batch'
  for i, (lhs, rhs, dn) in enumerate(shard_sigs):
    fn, a, b = product_program(lhs, rhs, dn)
    f = jax.pmap(fn, devices=devices)
    a, b = parallel.replicate(a, devices), parallel.replicate(b, devices)
    items[f'matmul per core {i}'] = (
        functools.partial(lambda f, a, b: jax.block_until_ready(f(a, b)), f, a, b), MM_COPIES)
  as_list = lambda counts: [[list(l), list(r), [[list(x) for x in dn[0]], [list(x) for x in dn[1]]], n]
                            for (l, r, dn), n in counts.items()]
  meta = {'choices': choices.summary(), 'devices': n_dev, 'flops_per_step': flops_per_token(cfg, SEQ) * n_tok,
          'matmul_flops': dot_flops(jax.make_jaxpr(jax.value_and_grad(loss))(params, inputs, targets).jaxpr),
          'part_flops': part_flops, 'dots': as_list(sigs), 'shard_dots': as_list(shard_sigs),
          'jax': jax.__version__}
  return items, meta


# ---------------------------------------------------------------------------------------------
# The PyTorch worker


def torch_items(dots):
  import torch
  from torch.nn import functional as F

  import nanogpt_peer
  torch.manual_seed(0)
  model = nanogpt_peer.NanoGPT(VOCAB, SEQ, LAYERS, HEADS, WIDTH)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
  x = torch.randint(0, VOCAB, (BATCH, SEQ))
  y = torch.randint(0, VOCAB, (BATCH, SEQ))
  normal = lambda *shape: torch.randn(*shape, requires_grad=True)
  blocks = list(model.h)

  def core(qkv):
    q, k, v = qkv.split(WIDTH, dim=2)
    q, k, v = (z.view(BATCH, SEQ, HEADS, WIDTH // HEADS).transpose(1, 2) for z in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return out.transpose(1, 2).contiguous().view(BATCH, SEQ, WIDTH)

  lns = [m for b in blocks for m in (b.ln_1, b.ln_2)] + [model.ln_f]
  parts = {
      'attention core': (lambda xs: [core(q) for q in xs], [normal(BATCH, SEQ, 3 * WIDTH) for _ in blocks]),
      'attention matmuls': (lambda xs: [o for b, (a, c) in zip(blocks, xs) for o in (b.c_attn(a), b.attn_proj(c))],
                            [(normal(BATCH, SEQ, WIDTH), normal(BATCH, SEQ, WIDTH)) for _ in blocks]),
      'MLP': (lambda xs: [b.mlp_proj(F.gelu(b.c_fc(a))) for b, a in zip(blocks, xs)],
              [normal(BATCH, SEQ, WIDTH) for _ in blocks]),
      'layer norms': (lambda xs: [m(a) for m, a in zip(lns, xs)], [normal(BATCH, SEQ, WIDTH) for _ in lns]),
      'embedding + head': (lambda h: [model.wte(x) + model.wpe(torch.arange(SEQ)), model.lm_head(h)],
                           normal(BATCH, SEQ, WIDTH)),
      'cross-entropy': (lambda logits: [F.cross_entropy(logits.view(-1, VOCAB), y.view(-1))],
                        normal(BATCH, SEQ, VOCAB)),
  }
  items = {}

  def flat(xs):
    return [t for t in (xs if isinstance(xs, list) else [xs]) for t in (t if isinstance(t, tuple) else (t,))]

  for name, (fn, xs) in parts.items():
    cts = [torch.randn_like(o) for o in fn(xs)]

    def forward(fn=fn, xs=xs):
      with torch.no_grad():
        fn(xs)

    def forward_backward(fn=fn, xs=xs, cts=cts):
      torch.autograd.backward(fn(xs), cts)
      model.zero_grad(set_to_none=True)
      for t in flat(xs):
        t.grad = None

    items[f'{name} fwd'] = (forward, 1)
    items[f'{name} fwd+bwd'] = (forward_backward, 1)

  grads = [torch.randn_like(p) * 1e-3 for p in model.parameters()]

  def update():
    for p, g in zip(model.parameters(), grads):  # the parts' backward passes reset .grad
      p.grad = g
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()

  items['optimizer update'] = (update, 1)

  def forward():
    with torch.no_grad():
      model(x, y)[1].item()

  def forward_backward():
    model(x, y)[1].backward()
    model.zero_grad(set_to_none=True)

  def step():
    _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    loss.item()

  def evaluate():
    with torch.no_grad():
      for _ in range(20):
        model(x, y)[1].item()

  items.update({'forward': (forward, 1), 'forward+backward': (forward_backward, 1), 'step, 1 per call': (step, 1),
                'step, as gptjax.train runs it': (step, 1), 'eval, 20 batches': (evaluate, 1)})

  # The same products as gptjax's step, as torch.matmul on (strided) views [batch..., free, contracted].
  def operand(shape, batch, contract, left):
    free = [d for d in range(len(shape)) if d not in batch and d not in contract]
    t = torch.randn(*shape).permute(list(batch) + (free + list(contract) if left else list(contract) + free))
    b = [shape[d] for d in batch]
    f, c = int(np.prod([shape[d] for d in free])), int(np.prod([shape[d] for d in contract]))
    return t.reshape(*b, f, c) if left else t.reshape(*b, c, f)  # copies only where a view cannot do

  for i, (lhs, rhs, ((lc, rc), (lb, rb)), _) in enumerate(dots):
    a = [operand(lhs, lb, lc, True) for _ in range(MM_COPIES)]
    b = operand(rhs, rb, rc, False)
    items[f'matmul {i}'] = (lambda a=a, b=b: [torch.matmul(x, b) for x in a], MM_COPIES)
  return items, {'torch': torch.__version__, 'threads': torch.get_num_threads()}


def worker(side: str, auto: bool):
  if side == 'jax':
    items, meta = jax_items(auto)
  else:
    items, meta = torch_items(json.loads(sys.stdin.readline()))
  for fn, _ in items.values():  # warm-up: compilation, first-call allocations
    fn()
  print(json.dumps({'items': list(items), **meta}), flush=True)
  for line in sys.stdin:
    name, n = json.loads(line)
    fn, per = items[name]
    times = []
    for _ in range(n):
      t0 = time.perf_counter()
      fn()
      times.append((time.perf_counter() - t0) * 1e3 / per)
    print(json.dumps(times), flush=True)


# ---------------------------------------------------------------------------------------------
# The parent: alternate the two workers, print the tables


def cpu_name() -> str:
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
    fields = dict(l.split(':', 1) for l in out.splitlines() if ':' in l)
    return f'{fields["Model name"].strip()}, {fields["CPU(s)"].strip()} CPUs'
  except (OSError, KeyError):
    import platform
    return platform.processor() or platform.machine()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=5, help='alternating rounds; the table shows their median')
  parser.add_argument('--calls', type=int, default=10, help='timed calls per row and round (median)')
  parser.add_argument('--nocpu_auto', action='store_true', help="gptjax without gptjax/cpu.py's choices")
  parser.add_argument('--notorch', action='store_true', help='gptjax only')
  parser.add_argument('--worker', choices=('jax', 'torch'), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return worker(args.worker, not args.nocpu_auto)

  me = [sys.executable, os.path.abspath(__file__)]
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')])}
  jax_env = dict(env)
  jax_proc = subprocess.Popen(me + ['--worker=jax'] + ['--nocpu_auto'] * args.nocpu_auto, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=jax_env)
  workers = {'jax': jax_proc}
  meta = {'jax': json.loads(jax_proc.stdout.readline())}
  if not args.notorch:
    try:
      import torch  # noqa: F401  (only to see whether the peer can run)
      torch_env = {k: v for k, v in env.items() if k != 'XLA_FLAGS'}
      t = subprocess.Popen(me + ['--worker=torch'], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                           env=torch_env)
      t.stdin.write(json.dumps(meta['jax']['dots']) + '\n')
      t.stdin.flush()
      meta['torch'] = json.loads(t.stdout.readline())
      workers['torch'] = t
    except ImportError:
      pass

  calls = lambda name: max(2, args.calls // 3) if name.startswith('eval') else args.calls
  rounds = {side: {} for side in workers}
  for _ in range(args.rounds):
    for name in meta['jax']['items']:
      for side, proc in workers.items():
        if name not in meta[side]['items']:
          continue
        proc.stdin.write(json.dumps([name, calls(name)]) + '\n')
        proc.stdin.flush()
        rounds[side].setdefault(name, []).append(float(np.median(json.loads(proc.stdout.readline()))))
  for proc in workers.values():
    proc.stdin.close()
    proc.wait()
  ms = {side: {k: float(np.median(v)) for k, v in r.items()} for side, r in rounds.items()}
  j, t = ms['jax'], ms.get('torch', {})
  jm = meta['jax']
  ratio = lambda name: (float(np.median([b / a for a, b in zip(rounds['jax'][name], rounds['torch'][name])]))
                        if name in t and name in j else None)
  cell = lambda v, f='{:.2f}': '' if v is None else f.format(v)

  print(f'{cpu_name()}; jax {jm["jax"]}' + (f', torch {meta["torch"]["torch"]} ({meta["torch"]["threads"]} threads)'
                                            if t else ''))
  print(f'gptjax: {jm["choices"]}')
  print(f'median over {args.rounds} alternating rounds of the median of {args.calls} calls (ms)\n')
  print('| part (all 4 layers) | gptjax forward | gptjax backward | torch forward | torch backward | '
        'torch / gptjax (fwd+bwd) | gptjax matmul GFLOP/s (fwd+bwd) |')
  print('|---|---|---|---|---|---|---|')
  sums = {'jf': 0.0, 'jb': 0.0, 'tf': 0.0, 'tb': 0.0}
  for part in PARTS:
    jf, jfb = j[f'{part} fwd'], j[f'{part} fwd+bwd']
    tf, tfb = t.get(f'{part} fwd'), t.get(f'{part} fwd+bwd')
    flops = 3 * jm['part_flops'][part]
    sums['jf'] += jf
    sums['jb'] += jfb - jf
    if t:
      sums['tf'] += tf
      sums['tb'] += tfb - tf
    print(f'| {part} | {jf:.2f} | {jfb - jf:.2f} | {cell(tf)} | {cell(None if tf is None else tfb - tf)} | '
          f'{cell(ratio(f"{part} fwd+bwd"), "{:.2f}x")} | {cell(flops / jfb / 1e6 if flops else None, "{:.0f}")} |')
  print(f'| optimizer update | {j["optimizer update"]:.2f} | | {cell(t.get("optimizer update"))} | | '
        f'{cell(ratio("optimizer update"), "{:.2f}x")} | |')
  print(f'| sum of the parts | {sums["jf"]:.2f} | {sums["jb"]:.2f} | {cell(sums["tf"] if t else None)} | '
        f'{cell(sums["tb"] if t else None)} | | |')
  print(f'| whole model (loss) | {j["forward"]:.2f} | {j["forward+backward"] - j["forward"]:.2f} | '
        f'{cell(t.get("forward"))} | {cell(t["forward+backward"] - t["forward"] if t else None)} | '
        f'{cell(ratio("forward+backward"), "{:.2f}x")} | |')

  flops = jm['flops_per_step']
  print(f'\n| whole step ({flops / 1e9:.2f} GFLOP) | gptjax ms | model GFLOP/s | torch ms | torch / gptjax |')
  print('|---|---|---|---|---|')
  for name in WHOLE:
    per_step = flops if name != 'forward' else flops / 3
    gflops = '' if name.startswith('eval') else f'{per_step / j[name] / 1e6:.0f}'
    label = name + (f' ({jm["devices"]} devices)' if name.startswith('step, as') else '')
    print(f'| {label} | {j[name]:.2f} | {gflops} | {cell(t.get(name))} | {cell(ratio(name), "{:.2f}x")} |')

  mm = jm['matmul_flops']
  print(f"\n| the step's products (lhs . rhs, contracted dims) | in the step | XLA, 1 device GFLOP/s | "
        f"XLA, one device per core | PyTorch ({meta['torch']['threads'] if t else '-'} threads) |")
  print('|---|---|---|---|---|')
  limits = {'xla': 0.0, 'xla per core': 0.0, 'torch': 0.0}
  shard = jm['shard_dots']
  for i, (lhs, rhs, dn, n) in enumerate(jm['dots']):
    flops = 2.0 * np.prod(out_shape(lhs, rhs, dn)) * np.prod([lhs[d] for d in dn[0][0]])
    x, tt = j[f'matmul {i}'], t.get(f'matmul {i}')
    xd = j.get(f'matmul per core {i}')
    limits['xla'] += n * x
    limits['xla per core'] += n * (xd if xd is not None else x)
    limits['torch'] += n * (tt or 0.0)
    print(f'| {"x".join(map(str, lhs))} . {"x".join(map(str, rhs))}, {dn[0][0]}.{dn[0][1]}'
          f'{f" batch {dn[1][0]}" if dn[1][0] else ""} | {n} | {flops / x / 1e6:.0f} | '
          f'{cell(None if xd is None else flops / xd / 1e6, "{:.0f}")} | '
          f'{cell(None if tt is None else flops / tt / 1e6, "{:.0f}")} |')
  print(f'| all {sum(d[3] for d in jm["dots"])} products of a step ({mm / 1e9:.2f} GFLOP), ms | | '
        f'{limits["xla"]:.2f} | {limits["xla per core"]:.2f} | {cell(limits["torch"] if t else None)} |')

  limit = limits['xla per core' if jm['devices'] > 1 else 'xla']
  step = j['step, as gptjax.train runs it']
  print(f"\nefficiency: gptjax.train's step runs at {flops_step(jm) / step / 1e6:.0f} GFLOP/s, "
        f"{100 * limit / step:.0f}% of XLA's matmul limit on the same {jm['devices']} device(s) "
        f"({mm / limit / 1e6:.0f} GFLOP/s: the step's products alone take {limit:.2f} ms)", end='')
  if t:
    ts = t['step, 1 per call']
    print(f"; nanoGPT's step {flops_step(jm) / ts / 1e6:.0f} GFLOP/s, {100 * limits['torch'] / ts:.0f}% of "
          f"PyTorch's ({mm / limits['torch'] / 1e6:.0f} GFLOP/s)")
  else:
    print()


def flops_step(meta) -> float:
  return meta['flops_per_step']


if __name__ == '__main__':
  main()
