"""Makes the committed GPT-2 fixtures of tests/test_hf.py with transformers (the independent implementation).

    pip install -e '.[bench]'            # torch + transformers: only this script needs them
    python experiments/make_hf_fixtures.py [--out=tests/fixtures]

Writes, all small:
  tiny-gpt2/         a random GPT2LMHeadModel (2 layers, 4 heads, 64 wide, 64 positions, vocab 320, tied
                     head) saved by save_pretrained (config.json, model.safetensors), with a byte-level BPE
                     of 320 ids in GPT-2's file format (vocab.json, merges.txt; tokenizer.json and
                     tokenizer_config.json as transformers saves them), and expected.json / logits.npy:
                     transformers' float32 logits for a fixed input, its greedy continuation of a prompt
                     (KV cache on) and its ids for a few strings (Chinese and emoji among them)
  tiny-gpt2-untied/  a smaller random GPT2LMHeadModel with an untied head (1 layer, 16 wide), and its logits

Weights are drawn wider than GPT-2's init (std 0.3, LayerNorm gains around 1) so that logits spread over
a few units: every greedy step's top-1/top-2 logit gap is asserted > 1e-3, far above float32 error, so
an implementation that computes the same function must pick the same tokens. Tokenizer ids are checked
three ways here: transformers from vocab.json + merges.txt, from tokenizer.json, and a plain-Python BPE
written below from GPT-2's algorithm (regex pre-split, byte alphabet, lowest-rank merge first).

The script also checks, when the fixtures exist and gptjax is importable, that transformers loads
gptjax's exports (tied, untied, bias-free) and computes the same logits (--check_export).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import regex
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EOT = '<|endoftext|>'
VOCAB = 320  # 256 bytes + 63 merges + <|endoftext|> (last, as in GPT-2)

CORPUS = (
    'The cat sat on the mat. The cat is a cat, and the mat is a mat.\n'
    'You are a cat: 你是一只猫。我是一只猫。猫是猫。\n'
    "It's the cat's hat; we'll see what they've done. 🐱🐱 emoji 🎉 party 🎉\n"
    'Numbers 12345 and 2024, tabs\tand  double  spaces.\n'
) * 20
STRINGS = ['Hello world', ' the cat sat on the mat', '你是一只猫', 'emoji 🐱🎉 mixed 文字 text',
           "it's we'll they've 12345", 'tabs\tand\nnewlines\n\n  indented', f'a{EOT}b', '']
LOGITS_TEXT = 'The cat sat on the mat. 你是一只猫 🐱'
PROMPT_TEXT = '你是一只猫'
NEW_TOKENS = 40
MIN_GAP = 1e-3
MIN_DISTINCT = 20  # of the NEW_TOKENS greedy tokens: a continuation that is not one token repeated


# ---------------------------------------------------------------------------------------------
# A plain-Python GPT-2 BPE: the reference the tokenizer ids are checked against.

SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def byte_chars() -> list[str]:
  """The character GPT-2 writes for each byte 0..255."""
  visible = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
  out, extra = [], 0
  for b in range(256):
    if b in visible:
      out.append(chr(b))
    else:
      out.append(chr(256 + extra))
      extra += 1
  return out


def reference_encode(text: str, vocab: dict[str, int], merges: list[tuple[str, str]]) -> list[int]:
  rank = {pair: i for i, pair in enumerate(merges)}
  chars = byte_chars()
  ids = []
  for n, part in enumerate(text.split(EOT)):
    if n:
      ids.append(vocab[EOT])
    for word in SPLIT.findall(part):
      symbols = [chars[b] for b in word.encode('utf-8')]
      while len(symbols) > 1:
        pairs = [(rank.get((a, b), len(rank)), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        best, _ = min(pairs)
        if best == len(rank):
          break
        pair, merged, i = merges[best], [], 0
        while i < len(symbols):
          if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
          else:
            merged.append(symbols[i])
            i += 1
        symbols = merged
      ids.extend(vocab[s] for s in symbols)
  return ids


# ---------------------------------------------------------------------------------------------


def make_tokenizer(out: str):
  """A byte-level BPE of VOCAB ids in GPT-2's files (vocab.json, merges.txt), then transformers' own
  files for it (tokenizer.json, tokenizer_config.json); returns transformers' tokenizer."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import AutoTokenizer, GPT2Tokenizer

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=VOCAB - 1, show_progress=False, special_tokens=[],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([CORPUS], trainer=trainer)
  model = json.loads(tok.to_str())['model']
  vocab = dict(model['vocab'], **{EOT: VOCAB - 1})
  merges = [tuple(m.split(' ')) if isinstance(m, str) else tuple(m) for m in model['merges']]
  assert len(vocab) == VOCAB and sorted(vocab.values()) == list(range(VOCAB))
  with open(os.path.join(out, 'vocab.json'), 'w', encoding='utf-8') as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(os.path.join(out, 'merges.txt'), 'w', encoding='utf-8') as f:
    f.write('#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in merges))
  from_files = GPT2Tokenizer.from_pretrained(out)  # the directory holds only vocab.json + merges.txt yet
  assert len(from_files) == VOCAB, len(from_files)
  from_files.save_pretrained(out)  # tokenizer.json + tokenizer_config.json, as transformers writes them
  for name in ('special_tokens_map.json', 'added_tokens.json'):
    if os.path.exists(os.path.join(out, name)):
      os.unlink(os.path.join(out, name))
  from_json = AutoTokenizer.from_pretrained(out)
  cases = []
  for text in STRINGS:
    ids = from_files(text)['input_ids']
    assert ids == from_json(text)['input_ids'] == reference_encode(text, vocab, merges), text
    assert from_files.decode(ids) == text, text
    cases.append({'text': text, 'ids': ids})
  return from_files, cases


def write_json(path: str, record: dict) -> None:
  """One key per line, each value on its line (short diffs when the fixtures are remade)."""
  with open(path, 'w', encoding='utf-8') as f:
    f.write('{\n' + ',\n'.join(f' {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}'
                                for k, v in record.items()) + '\n}\n')


def perturb(model, seed: int) -> None:
  """Weights wider than GPT-2's init, so logits spread over a few units (see the module docstring)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('ln_1.weight') or name.endswith('ln_2.weight') or name.endswith('ln_f.weight'):
        p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
      elif name.endswith('bias'):
        p.copy_(0.1 * torch.randn(p.shape, generator=g))
      else:
        p.copy_(0.3 * torch.randn(p.shape, generator=g))


def make_model(out: str, tokenizer, cases) -> None:
  from transformers import GPT2Config, GPT2LMHeadModel

  config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                      bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, attn_implementation='eager')
  logits_ids = tokenizer(LOGITS_TEXT)['input_ids']
  prompt = tokenizer(PROMPT_TEXT)['input_ids']
  for seed in range(100):
    model = GPT2LMHeadModel(config).eval()
    perturb(model, seed)
    with torch.no_grad():
      out_ids = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                               do_sample=False, use_cache=True, output_scores=True,
                               return_dict_in_generate=True, pad_token_id=VOCAB - 1)
    scores = torch.stack(out_ids.scores)[:, 0]  # [new, vocab]
    top2 = scores.topk(2, dim=-1).values
    gap = float((top2[:, 0] - top2[:, 1]).min())
    distinct = len(set(out_ids.sequences[0, len(prompt):].tolist()))
    if gap > MIN_GAP and distinct >= MIN_DISTINCT:
      break
  else:
    raise SystemExit(f'no seed in 100 gave greedy steps without near-ties and {MIN_DISTINCT} distinct tokens')
  greedy = out_ids.sequences[0, len(prompt):].tolist()
  with torch.no_grad():
    logits = model(torch.tensor([logits_ids])).logits[0].numpy().astype(np.float32)  # [seq, vocab]
    no_cache = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                              do_sample=False, use_cache=False, pad_token_id=VOCAB - 1)
  assert no_cache[0, len(prompt):].tolist() == greedy  # transformers agrees with itself without its cache
  model.save_pretrained(out)  # safetensors
  np.save(os.path.join(out, 'logits.npy'), logits)
  expected = {
      'made_by': 'experiments/make_hf_fixtures.py', 'torch': torch.__version__,
      'transformers': __import__('transformers').__version__, 'seed': seed,
      'logits_text': LOGITS_TEXT, 'logits_ids': logits_ids, 'logits_file': 'logits.npy',
      'prompt_text': PROMPT_TEXT, 'prompt_ids': prompt, 'greedy_ids': greedy,
      'greedy_text': tokenizer.decode(greedy), 'greedy_min_top1_top2_gap': gap, 'tokenizer_cases': cases,
  }
  write_json(os.path.join(out, 'expected.json'), expected)
  print(f'{out}: seed {seed}, greedy min gap {gap:.4f}, {distinct} distinct greedy tokens, '
        f'logits std {logits.std():.2f}')


def make_untied(out: str, ids: list[int]) -> None:
  from transformers import GPT2Config, GPT2LMHeadModel

  config = GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                      tie_word_embeddings=False, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
                      attn_implementation='eager')
  model = GPT2LMHeadModel(config).eval()
  perturb(model, 0)
  assert not torch.equal(model.lm_head.weight, model.transformer.wte.weight)
  ids = ids[:12]
  with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0].numpy().astype(np.float32)
  model.save_pretrained(out)
  np.save(os.path.join(out, 'logits.npy'), logits)
  write_json(os.path.join(out, 'expected.json'),
             {'made_by': 'experiments/make_hf_fixtures.py', 'logits_ids': ids, 'logits_file': 'logits.npy'})
  print(f'{out}: untied head, logits std {logits.std():.2f}')


def check_export(fixtures: str) -> None:
  """transformers loads gptjax's exports and computes gptjax's logits: tied (the fixture, imported and
  exported again), untied, and bias-free (exported with zero biases); tokenizer files of a BPE run too."""
  import dataclasses

  import jax
  from transformers import AutoTokenizer, GPT2LMHeadModel

  from gptjax import hf
  from gptjax.model import GPT, init_params

  config, params = hf.read(os.path.join(fixtures, 'tiny-gpt2'))
  cases = [('tied (the fixture)', config, params),
           ('untied', hf.read(os.path.join(fixtures, 'tiny-gpt2-untied'))[0],
            hf.read(os.path.join(fixtures, 'tiny-gpt2-untied'))[1]),
           ('bias-free', dataclasses.replace(config, bias=False), None),
           ('padded vocabulary 384, exported as 320', dataclasses.replace(config, vocab_size=384), None)]
  ids = np.arange(1, 17, dtype=np.int32)[None] * 7 % VOCAB  # 16: the untied model's positions
  for i, (name, cfg, p) in enumerate(cases):
    if p is None:
      p = jax.device_get(init_params(cfg, jax.random.PRNGKey(i)))
      p = jax.tree.map(lambda x: np.asarray(x) * (15.0 if x.ndim == 2 else 1.0), p)  # spread the logits
    ours = np.asarray(GPT(cfg).apply({'params': p}, ids))[..., :VOCAB]
    with tempfile.TemporaryDirectory() as tmp:
      hf.write(tmp, p, cfg, vocab_size=VOCAB)
      model = GPT2LMHeadModel.from_pretrained(tmp, attn_implementation='eager').eval()
      with torch.no_grad():
        theirs = model(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    err = float(np.abs(ours - theirs).max())
    print(f'export {name}: transformers logits max |diff| {err:.2e} (logit std {ours.std():.2f})')
    assert err < 1e-4, name
  # A whole run: train a little with a trained BPE and GPT-2's layout, export it with the command line,
  # then transformers' Auto classes load model and tokenizer from the export alone.
  from gptjax import convert, sample, train
  with tempfile.TemporaryDirectory() as tmp:
    with open(os.path.join(tmp, 'corpus.txt'), 'w', encoding='utf-8') as f:
      f.write(CORPUS * 5)
    config = train.config_lib.get_config()
    config.data.path, config.data.tokenizer, config.data.bpe_vocab_size = f'{tmp}/corpus.txt', 'bpe', 300
    config.model.update(n_layer=2, n_head=2, n_embd=32, block_size=32, tie_embeddings=True, head_bias=False)
    config.train.update(max_steps=20, batch_size=8, warmup_steps=2, eval_iters=1, steps_per_call=5)
    train.train_and_evaluate(config, f'{tmp}/run', progress=False)
    print(convert.to_hf(f'{tmp}/run', f'{tmp}/hf'))
    params, cfg, tok, _ = sample.load_run(f'{tmp}/run')
    hf_tok = AutoTokenizer.from_pretrained(f'{tmp}/hf')
    for text in STRINGS:
      assert hf_tok(text)['input_ids'] == tok.encode(text).tolist(), text
    model = GPT2LMHeadModel.from_pretrained(f'{tmp}/hf', attn_implementation='eager').eval()
    ids = tok.encode(CORPUS[:200])[None, :32]
    ours = np.asarray(GPT(cfg).apply({'params': params}, ids))
    with torch.no_grad():
      theirs = model(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    err = float(np.abs(ours - theirs).max())
    print('export of a trained run with a bpe tokenizer: AutoTokenizer gives the same ids for every test '
          f'string; transformers logits max |diff| {err:.2e}')
    assert err < 1e-4


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default=os.path.join(ROOT, 'tests', 'fixtures'))
  parser.add_argument('--check_export', action='store_true', help='only check exports against transformers')
  args = parser.parse_args()
  if args.check_export:
    sys.path.insert(0, ROOT)
    check_export(args.out)
    return
  torch.manual_seed(0)
  tied, untied = os.path.join(args.out, 'tiny-gpt2'), os.path.join(args.out, 'tiny-gpt2-untied')
  for d in (tied, untied):
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
  tokenizer, cases = make_tokenizer(tied)
  make_model(tied, tokenizer, cases)
  make_untied(untied, tokenizer(LOGITS_TEXT)['input_ids'])


if __name__ == '__main__':
  main()
