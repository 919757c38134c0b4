"""The PyTorch peer for the training benchmark: nanoGPT's model and CPU recipe, written out here.

nanoGPT (github.com/karpathy/nanoGPT) is not vendored; this file re-states the parts of its
`model.py`/`train.py` that its CPU recipe exercises, so both frameworks can be timed side by side
on the same machine and the same data:

  python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
      --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
      --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

i.e. pre-LayerNorm blocks without biases, fused c_attn, `scaled_dot_product_attention(is_causal)`,
exact GELU, tied token embedding / LM head, N(0, 0.02) init with c_proj at 0.02/sqrt(2 n_layer),
AdamW(lr 1e-3, betas (0.9, 0.99), weight decay 0.1 on 2-D tensors only), warm-up 100 then cosine to
1e-4 at 2000, gradient clipping at 1.0, float32 on CPU, batches of random windows.

Needs the benchmark extra: pip install -e '.[bench]'.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):

  def __init__(self, n_embd, n_head):
    super().__init__()
    self.n_head = n_head
    self.ln_1 = nn.LayerNorm(n_embd, bias=False)
    self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
    self.attn_proj = nn.Linear(n_embd, n_embd, bias=False)
    self.ln_2 = nn.LayerNorm(n_embd, bias=False)
    self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
    self.mlp_proj = nn.Linear(4 * n_embd, n_embd, bias=False)

  def forward(self, x):
    b, t, c = x.shape
    q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
    q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(b, t, c))
    return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):

  def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd):
    super().__init__()
    self.wte = nn.Embedding(vocab_size, n_embd)
    self.wpe = nn.Embedding(block_size, n_embd)
    self.h = nn.ModuleList([Block(n_embd, n_head) for _ in range(n_layer)])
    self.ln_f = nn.LayerNorm(n_embd, bias=False)
    self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
    self.lm_head.weight = self.wte.weight  # tied
    for name, p in self.named_parameters():
      if p.dim() == 2:
        std = 0.02 / math.sqrt(2 * n_layer) if name.endswith('proj.weight') else 0.02
        torch.nn.init.normal_(p, mean=0.0, std=std)

  def forward(self, idx, targets=None):
    x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
    for block in self.h:
      x = block(x)
    logits = self.lm_head(self.ln_f(x))
    if targets is None:
      return logits, None
    return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def lr_at(it, lr=1e-3, min_lr=1e-4, warmup=100, decay_iters=2000):
  if it < warmup:
    return lr * (it + 1) / (warmup + 1)
  if it > decay_iters:
    return min_lr
  ratio = (it - warmup) / (decay_iters - warmup)
  return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def train(train_ids: np.ndarray, val_ids: np.ndarray, vocab_size: int, *, max_iters=2000,
          eval_interval=250, eval_iters=20, batch_size=12, block_size=64, n_layer=4, n_head=4,
          n_embd=128, seed=1337, threads=None, log=print):
  """Runs the recipe; returns dict(val_loss=..., ms_per_iter=[...], wall_s=...)."""
  torch.manual_seed(seed)
  if threads:
    torch.set_num_threads(threads)
  model = NanoGPT(vocab_size, block_size, n_layer, n_head, n_embd)
  decay = [p for p in model.parameters() if p.dim() >= 2]
  no_decay = [p for p in model.parameters() if p.dim() < 2]
  opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.1},
                           {'params': no_decay, 'weight_decay': 0.0}], lr=1e-3, betas=(0.9, 0.99))
  rng = np.random.default_rng(seed)

  def get_batch(ids):
    ix = rng.integers(0, len(ids) - block_size, batch_size)
    x = torch.from_numpy(np.stack([ids[i:i + block_size] for i in ix]).astype(np.int64))
    y = torch.from_numpy(np.stack([ids[i + 1:i + 1 + block_size] for i in ix]).astype(np.int64))
    return x, y

  @torch.no_grad()
  def estimate(ids):
    model.eval()
    losses = [model(*get_batch(ids))[1].item() for _ in range(eval_iters)]
    model.train()
    return float(np.mean(losses))

  step_ms, val_loss, start = [], None, time.perf_counter()
  x, y = get_batch(train_ids)
  for it in range(max_iters + 1):
    for group in opt.param_groups:
      group['lr'] = lr_at(it, decay_iters=max_iters)
    if it % eval_interval == 0 or it == max_iters:
      val_loss = estimate(val_ids)
      log(f'torch step {it}: val loss {val_loss:.4f}')
    if it == max_iters:
      break
    t0 = time.perf_counter()
    _, loss = model(x, y)
    x, y = get_batch(train_ids)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    loss.item()  # nanoGPT reads the loss every iteration at log_interval=1
    step_ms.append((time.perf_counter() - t0) * 1e3)
  return dict(val_loss=val_loss, ms_per_iter=step_ms, wall_s=time.perf_counter() - start)


@torch.no_grad()
def generate(model: NanoGPT, idx: torch.Tensor, max_new_tokens: int, block_size: int) -> torch.Tensor:
  """nanoGPT's generate, greedy: no KV cache; every step re-runs the model on the whole context,
  cropped to the last block_size tokens."""
  model.eval()
  for _ in range(max_new_tokens):
    logits, _ = model(idx[:, -block_size:])
    idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
  return idx
