"""The PyTorch peer for experiments/gpu_run.py: nanoGPT's GPU training recipe on GPT-2 small, timed the
same way, so gptjax's tokens/s and MFU on an accelerator come with a ratio against nanoGPT from the
same machine.

nanoGPT's train.py on a GPU: bfloat16 autocast (float32 weights and optimizer state), TF32 matmuls
allowed, `torch.compile(model)`, fused AdamW (betas 0.9/0.95, weight decay 0.1 on 2-D weights),
gradient clipping at 1.0, flash attention through `scaled_dot_product_attention(is_causal=True)`.
The model is experiments/nanogpt_peer.py's (nanoGPT's model.py with bias=False; the biases are not
counted in the FLOPs of either side). MFU uses gptjax's own formula and peak table
(gptjax.metrics.flops_per_token, gptjax.hardware), so the two scripts' MFU columns compare.

  python experiments/gpu_peer_torch.py                 # batch 16 and 32 of 1024 tokens, compiled
  python experiments/gpu_peer_torch.py --no_compile    # eager PyTorch
  python experiments/gpu_peer_torch.py --steps=3 --warmup=1 --batches=2 --seq=32 --n_layer=1 \\
      --n_head=2 --n_embd=32 --vocab=128 --no_compile   # a CPU smoke run

Each figure: the median over `--steps` timed steps (each waited for, as nanoGPT's loss.item() does)
after `--warmup` steps, the compile's included in the warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nanogpt_peer  # noqa: E402  experiments/nanogpt_peer.py
from gptjax import hardware, metrics  # noqa: E402
from gptjax.model import GPTConfig  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--n_layer', type=int, default=12)
  p.add_argument('--n_head', type=int, default=12)
  p.add_argument('--n_embd', type=int, default=768)
  p.add_argument('--vocab', type=int, default=50304)
  p.add_argument('--seq', type=int, default=1024)
  p.add_argument('--batches', default='16,32', help='comma-separated rows per step, one timed run each')
  p.add_argument('--steps', type=int, default=50)
  p.add_argument('--warmup', type=int, default=10)
  p.add_argument('--no_compile', action='store_true')
  p.add_argument('--json', default='')
  return p.parse_args(argv)


def time_training(args, batch: int, device: str) -> dict:
  torch.manual_seed(0)
  model = nanogpt_peer.NanoGPT(args.vocab, args.seq, args.n_layer, args.n_head, args.n_embd).to(device)
  decay = [p for p in model.parameters() if p.dim() >= 2]
  no_decay = [p for p in model.parameters() if p.dim() < 2]
  opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.1}, {'params': no_decay, 'weight_decay': 0.0}],
                          lr=6e-4, betas=(0.9, 0.95), fused=device == 'cuda')
  run = model if args.no_compile else torch.compile(model)
  autocast = torch.autocast(device_type=device, dtype=torch.bfloat16)
  gen = torch.Generator().manual_seed(0)
  rows = [torch.randint(0, args.vocab, (batch, args.seq + 1), generator=gen) for _ in range(2)]
  data = [(r[:, :-1].contiguous().to(device), r[:, 1:].contiguous().to(device)) for r in rows]
  seconds, loss = [], None
  for it in range(args.warmup + args.steps):
    x, y = data[it % 2]
    t0 = time.perf_counter()
    with autocast:
      _, loss = run(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    loss = loss.item()
    if it >= args.warmup:
      seconds.append(time.perf_counter() - t0)
  config = GPTConfig(vocab_size=args.vocab, block_size=args.seq, n_layer=args.n_layer, n_head=args.n_head,
                     n_embd=args.n_embd, dtype='bfloat16')
  name = torch.cuda.get_device_name() if device == 'cuda' else 'cpu'
  median = float(np.median(seconds))
  result = metrics.throughput(batch * args.seq, median, 1, config, args.seq, hardware.peak_flops(name, 'bfloat16'))
  result.update(batch=batch, compiled=not args.no_compile, loss=loss, step_seconds=seconds,
                peak_memory=torch.cuda.max_memory_allocated() if device == 'cuda' else None)
  if device == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  return result


def main(argv=None):
  args = parse_args(argv)
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  name = torch.cuda.get_device_name() if device == 'cuda' else 'cpu'
  print(f'torch {torch.__version__} on {name}; nanoGPT GPT {args.n_layer}x{args.n_head}x{args.n_embd}, vocab '
        f'{args.vocab}, {args.seq} tokens a row, bf16 autocast, {"eager" if args.no_compile else "torch.compile"}',
        flush=True)
  runs = []
  for batch in (int(b) for b in args.batches.split(',')):
    try:
      r = time_training(args, batch, device)
    except Exception as e:  # e.g. out of memory at the larger batch: the other runs' figures stand
      print(f'batch {batch}: failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}', flush=True)
      continue
    runs.append(r)
    mfu = 'null' if r['mfu'] is None else f'{100 * r["mfu"]:.1f}%'
    mem = 'n/a' if r['peak_memory'] is None else f'{r["peak_memory"] / 2**30:.2f} GiB'
    print(f'| nanoGPT (torch) | batch {batch} | {r["ms_per_step"]:.1f} ms/step (min {1e3 * min(r["step_seconds"]):.1f},'
          f' max {1e3 * max(r["step_seconds"]):.1f}) | {r["tokens_per_sec"]:,.0f} tokens/s | MFU {mfu} | '
          f'peak allocated {mem} | last loss {r["loss"]:.3f} |', flush=True)
    if args.json:
      with open(args.json, 'w', encoding='utf-8') as f:
        json.dump({'device': name, 'torch': torch.__version__, 'args': vars(args), 'runs': runs}, f, indent=1)
  return 0 if runs else 1


if __name__ == '__main__':
  sys.exit(main())
