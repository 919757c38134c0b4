"""GPT-2 small's shape through gptjax.convert and back, checked against transformers (random weights).

The real `gpt2` checkpoint needs the network; this builds a GPT2LMHeadModel of exactly its shape (12
layers, 12 heads, 768 wide, 1024 positions, vocab 50257) with transformers' own random init, seeded,
and checks what the tiny fixtures check, at full size:

  - `python -m gptjax.convert --from_hf` (the command line, timed) and the run directory's size;
  - gptjax's float32 logits on the converted weights against transformers' (max |diff|);
  - greedy generation with the KV cache against transformers' generate (tokens equal?);
  - `--to_hf` back (timed): every tensor equal to the original file's;
  - `--config.train.init_from` on the converted run: step-0 validation loss against transformers'
    loss on the same batches.

  pip install -e '.[bench]'
  python experiments/gpt2_small_check.py [--keep=DIR]

The real vocabulary is not here either: the tokenizer is a synthetic byte-level BPE of GPT-2's size
(50257 ids: the 256 bytes, 50000 merges of byte pairs, <|endoftext|>), so sizes and times are GPT-2's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TEXT = ('The cat sat on the mat. 你是一只猫。 The cat is a cat, and the mat is a mat. 🐱\n') * 400


def synthetic_vocabulary(directory: str) -> None:
  """vocab.json + merges.txt of GPT-2's size (50257 ids, <|endoftext|> last): the 256 byte characters
  and 50000 merges of two of them, the first pairs in byte order. Real text encodes with it (every
  byte is a token), so the files, the run directory and the checks have GPT-2's sizes."""
  sys.path.insert(0, ROOT)
  from gptjax.data import byte_alphabet
  chars = sorted(byte_alphabet(), key=byte_alphabet().get)
  pairs = [(a, b) for a in chars for b in chars][:50000]
  vocab = {c: i for i, c in enumerate(chars)}
  vocab.update({a + b: 256 + i for i, (a, b) in enumerate(pairs)})
  vocab['<|endoftext|>'] = len(vocab)
  assert len(vocab) == 50257
  with open(os.path.join(directory, 'vocab.json'), 'w', encoding='utf-8') as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(os.path.join(directory, 'merges.txt'), 'w', encoding='utf-8') as f:
    f.write('#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in pairs))


def du(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def command(*args) -> float:
  t0 = time.perf_counter()
  proc = subprocess.run([sys.executable, '-m', *args], capture_output=True, text=True, cwd=ROOT,
                        env={**os.environ, 'PYTHONPATH': ROOT})
  if proc.returncode:
    raise SystemExit(f'{args} failed:\n{proc.stderr}')
  return time.perf_counter() - t0


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--keep', default='', help='keep the directories here instead of a temporary one')
  args = parser.parse_args()
  sys.path.insert(0, ROOT)
  import jax
  from safetensors.numpy import load_file
  from transformers import GPT2Config, GPT2LMHeadModel

  from gptjax import config as config_lib
  from gptjax import data as data_lib
  from gptjax import decode, sample, train
  from gptjax.metrics import read_jsonl
  from gptjax.model import GPT

  base = args.keep or tempfile.mkdtemp()
  hf_dir, run_dir, back_dir = (os.path.join(base, n) for n in ('hf', 'run', 'back'))
  torch.manual_seed(0)
  model = GPT2LMHeadModel(GPT2Config(attn_implementation='eager')).eval()  # GPT-2 small's shape
  model.save_pretrained(hf_dir)
  synthetic_vocabulary(hf_dir)
  rows = [('parameters (transformers)', f'{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M'),
          ('model.safetensors', f'{os.path.getsize(os.path.join(hf_dir, "model.safetensors")) / 2**20:.0f} MiB')]

  wall = command('gptjax.convert', f'--from_hf={hf_dir}', f'--workdir={run_dir}')
  rows.append(('convert --from_hf (command, wall s)', f'{wall:.1f}'))
  rows.append(('run directory size', f'{du(run_dir) / 2**20:.0f} MiB'))

  params, config, tokenizer, _ = sample.load_run(run_dir)
  ids = tokenizer.encode(TEXT)[:256]
  ours = np.asarray(jax.jit(lambda p, x: GPT(config).apply({'params': p}, x))(params, ids[None]))[0]
  with torch.no_grad():
    theirs = model(torch.tensor(ids[None], dtype=torch.long)).logits[0].numpy()
  rows.append(('logits, 256 tokens: max |gptjax - transformers|', f'{np.abs(ours - theirs).max():.2e} '
               f'(logits std {theirs.std():.2f})'))

  prompt = ids[:8].tolist()
  with torch.no_grad():
    out = model.generate(torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                         output_scores=True, return_dict_in_generate=True, pad_token_id=0)
  top2 = torch.stack(out.scores)[:, 0].topk(2).values
  gap = float((top2[:, 0] - top2[:, 1]).min())
  greedy = decode.generate(params, config, [prompt], jax.random.PRNGKey(0), max_new_tokens=32, temperature=0.0)
  same = np.asarray(greedy.tokens[0]).tolist() == out.sequences[0, 8:].tolist()
  rows.append(('greedy 32 tokens with the KV cache = transformers generate', f'{same} (smallest top-1/top-2 '
               f'gap {gap:.2e})'))

  wall = command('gptjax.convert', f'--to_hf={back_dir}', f'--workdir={run_dir}')
  rows.append(('convert --to_hf (command, wall s)', f'{wall:.1f}'))
  a = load_file(os.path.join(hf_dir, 'model.safetensors'))
  b = load_file(os.path.join(back_dir, 'model.safetensors'))
  equal = sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
  rows.append(('exported tensors equal the original file', str(equal)))

  # init_from: the step-0 validation loss of a run starting from the converted weights.
  with open(os.path.join(base, 'text.txt'), 'w', encoding='utf-8') as f:
    f.write(TEXT)
  cfg = config_lib.get_config()
  cfg.data.update(path=os.path.join(base, 'text.txt'), tokenizer='gpt2', tokenizer_path=hf_dir)
  cfg.model.block_size = 1024
  cfg.train.update(init_from=run_dir, seq_len=128, batch_size=2, max_steps=1, steps_per_call=1, eval_iters=2,
                   log_interval=1, eval_interval=1, checkpoint_interval=1, devices=1, warmup_steps=0)
  t0 = time.perf_counter()
  train.train_and_evaluate(cfg, os.path.join(base, 'finetune'), progress=False)
  wall = time.perf_counter() - t0
  val = read_jsonl(os.path.join(base, 'finetune', 'metrics.jsonl'))[0]['val_loss']
  val_ids = data_lib.load_split(os.path.join(base, 'finetune', 'data'), 'val')
  losses = []
  for s in range(2):
    batch = torch.tensor(data_lib.batch_at(val_ids, seed=0, step=s, batch_size=2, seq_len=128,
                                           stream=data_lib.EVAL_STREAM), dtype=torch.long)
    with torch.no_grad():
      logits = model(batch[:, :-1]).logits
    losses.append(float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())))
  rows.append(('init_from: step-0 val loss gptjax / transformers', f'{val:.6f} / {np.mean(losses):.6f}'))
  rows.append(('init_from: one training step incl. load and compile (wall s)', f'{wall:.1f}'))

  print(f'GPT-2 small shape, random weights (transformers init, seed 0); jax {jax.__version__}, torch '
        f'{torch.__version__}\n')
  print('| check | result |')
  print('|---|---|')
  for name, value in rows:
    print(f'| {name} | {value} |')
  if not args.keep:
    shutil.rmtree(base)


if __name__ == '__main__':
  main()
