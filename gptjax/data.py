"""Text in, token batches out: tokenizers, corpus preparation, and a stateless batch sampler.

    text file ──prepare──▶ DIR/train.bin, DIR/val.bin (memmapped uint16/uint32) + DIR/meta.json
    train.bin ──batch_at(tokens, seed, step)──▶ [batch, seq_len + 1] int32

The batch for a step is a pure function of (seed, step): a resumed run sees exactly the batches the
uninterrupted run would have seen, whatever the device count, and hosts need no shared state.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
import tempfile
import urllib.request
from typing import Protocol

import numpy as np

from gptjax.errors import GptjaxError

# ---------------------------------------------------------------------------------------------
# Tokenizers


class Tokenizer(Protocol):
  kind: str
  vocab_size: int

  def encode(self, text: str) -> np.ndarray: ...
  def decode(self, ids) -> str: ...
  def to_dict(self) -> dict: ...


class CharTokenizer:
  """One token per Unicode character seen in the training text (nanoGPT's shakespeare_char)."""

  kind = 'char'

  def __init__(self, chars: str):
    if len(set(chars)) != len(chars) or list(chars) != sorted(chars):
      raise GptjaxError('a char tokenizer needs its characters distinct and sorted')
    self.chars = chars
    self._codes = np.array([ord(c) for c in chars], np.uint32)  # sorted code points
    self.vocab_size = len(chars)

  @classmethod
  def fit(cls, text: str) -> 'CharTokenizer':
    return cls(''.join(chr(c) for c in np.unique(_code_points(text))))

  def encode(self, text: str) -> np.ndarray:
    codes = _code_points(text)
    ids = np.searchsorted(self._codes, codes).astype(np.int32)
    known = (ids < self.vocab_size) & (self._codes[np.minimum(ids, self.vocab_size - 1)] == codes)
    if not known.all():
      unknown = sorted({chr(c) for c in codes[~known]})
      shown = ' '.join(repr(c) for c in unknown[:10]) + (' ...' if len(unknown) > 10 else '')
      raise GptjaxError(f'{len(unknown)} character(s) not in the tokenizer vocabulary: {shown}; '
                        'use only characters of the training text')
    return ids

  def decode(self, ids) -> str:
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
      raise GptjaxError(f'token ids must be in [0, {self.vocab_size}) for this tokenizer')
    return ''.join(self.chars[int(i)] for i in ids)

  def to_dict(self) -> dict:
    return {'kind': 'char', 'chars': self.chars}


class ByteTokenizer:
  """One token per UTF-8 byte: 256 ids, any text (or bytes) encodes, nothing is out of vocabulary."""

  kind = 'byte'
  vocab_size = 256

  def encode(self, text: str | bytes) -> np.ndarray:
    try:
      data = text.encode('utf-8') if isinstance(text, str) else bytes(text)
    except UnicodeEncodeError as e:
      raise GptjaxError(f'the text has a character UTF-8 cannot encode ({text[e.start]!r} at {e.start}); '
                        'remove it') from None
    return np.frombuffer(data, np.uint8).astype(np.int32)

  def decode_bytes(self, ids) -> bytes:
    ids = np.asarray(ids, np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() > 255):
      raise GptjaxError('byte token ids must be in [0, 256)')
    return ids.astype(np.uint8).tobytes()

  def decode(self, ids) -> str:
    """Text of the bytes; a sampled sequence that is not valid UTF-8 shows U+FFFD where it breaks."""
    return self.decode_bytes(ids).decode('utf-8', errors='replace')

  def to_dict(self) -> dict:
    return {'kind': 'byte'}


def _code_points(text: str) -> np.ndarray:
  # surrogatepass: a lone surrogate (e.g. from undecodable file names) is an unknown character,
  # not a crash in the encoder.
  return np.frombuffer(text.encode('utf-32-le', 'surrogatepass'), np.uint32)


def tokenizer_from_dict(d: dict) -> Tokenizer:
  kind = d.get('kind')
  if kind == 'char':
    return CharTokenizer(d['chars'])
  if kind == 'byte':
    return ByteTokenizer()
  raise GptjaxError(f"unknown tokenizer kind {kind!r}: expected 'char' or 'byte'")


def save_tokenizer(tokenizer: Tokenizer, path: str) -> None:
  atomic_write(path, json.dumps(tokenizer.to_dict(), ensure_ascii=False))


def load_tokenizer(path: str) -> Tokenizer:
  with open(path, encoding='utf-8') as f:
    return tokenizer_from_dict(json.load(f))


# ---------------------------------------------------------------------------------------------
# Preparing a corpus into token files


def atomic_write(path: str, text: str | bytes) -> None:
  """Writes the whole file or nothing: a crash leaves the old file (or none), never half of one."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(text.encode('utf-8') if isinstance(text, str) else text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def token_dtype(vocab_size: int):
  return np.uint16 if vocab_size < 2**16 else np.uint32


def encode_corpus(data: bytes, tokenizer_kind: str, source: str) -> tuple[Tokenizer, np.ndarray]:
  """Fits the tokenizer on the corpus (nanoGPT does the same) and encodes it."""
  if tokenizer_kind == 'byte':
    tokenizer = ByteTokenizer()
    return tokenizer, np.frombuffer(data, np.uint8)
  if tokenizer_kind == 'char':
    try:
      text = data.decode('utf-8')
    except UnicodeDecodeError as e:
      raise GptjaxError(f'{source} is not UTF-8 text (byte {e.start}): the char tokenizer needs UTF-8; '
                        "use --config.data.tokenizer=byte for arbitrary bytes") from None
    tokenizer = CharTokenizer.fit(text)
    return tokenizer, tokenizer.encode(text)
  raise GptjaxError(f"data.tokenizer={tokenizer_kind!r} is not a tokenizer: use 'char' or 'byte'")


def find_prepared(out_dir: str, digest: str, tokenizer_kind: str, val_fraction: float) -> dict | None:
  """The metadata of out_dir if it holds this corpus (by sha256) prepared the same way, else None."""
  if not os.path.exists(os.path.join(out_dir, 'meta.json')):
    return None
  meta = read_meta(out_dir)
  same = (meta.get('source_sha256') == digest and meta['tokenizer']['kind'] == tokenizer_kind
          and meta.get('val_fraction') == val_fraction)
  return meta if same else None


def write_prepared(out_dir: str, tokenizer: Tokenizer, ids: np.ndarray, *, val_fraction: float,
                   source: str, digest: str) -> dict:
  """Writes out_dir/{train.bin,val.bin,meta.json}: the first (1 - val_fraction) of the tokens is the
  training split, the rest validation. Each file is written atomically, meta.json last."""
  dtype = token_dtype(tokenizer.vocab_size)
  n_val = int(round(len(ids) * val_fraction))
  splits = {'train': ids[:len(ids) - n_val], 'val': ids[len(ids) - n_val:]}
  for name, split in splits.items():
    atomic_write(os.path.join(out_dir, f'{name}.bin'), np.ascontiguousarray(split, dtype).tobytes())
  meta = {'tokenizer': tokenizer.to_dict(), 'vocab_size': tokenizer.vocab_size,
          'dtype': np.dtype(dtype).name, 'train_tokens': len(splits['train']),
          'val_tokens': len(splits['val']), 'val_fraction': val_fraction, 'source': source,
          'source_sha256': digest}
  atomic_write(os.path.join(out_dir, 'meta.json'), json.dumps(meta, ensure_ascii=False, indent=1))
  return meta


def prepare(data: bytes, out_dir: str, tokenizer_kind: str, val_fraction: float, source: str) -> dict:
  """Encodes `data` into out_dir (reusing it if it already holds the same corpus); returns the metadata."""
  digest = hashlib.sha256(data).hexdigest()
  meta = find_prepared(out_dir, digest, tokenizer_kind, val_fraction)
  if meta is None:
    if not data:
      raise GptjaxError(f'{source} is empty: give a text file with some content')
    tokenizer, ids = encode_corpus(data, tokenizer_kind, source)
    meta = write_prepared(out_dir, tokenizer, ids, val_fraction=val_fraction, source=source,
                          digest=digest)
  return meta


def read_meta(data_dir: str) -> dict:
  with open(os.path.join(data_dir, 'meta.json'), encoding='utf-8') as f:
    return json.load(f)


def load_split(data_dir: str, split: str) -> np.ndarray:
  """The token ids of a split as a read-only memmap (nothing is read until a batch needs it)."""
  meta = read_meta(data_dir)
  path = os.path.join(data_dir, f'{split}.bin')
  if meta[f'{split}_tokens'] == 0:
    return np.zeros((0,), meta['dtype'])
  return np.memmap(path, dtype=meta['dtype'], mode='r', shape=(meta[f'{split}_tokens'],))


# ---------------------------------------------------------------------------------------------
# Where the text comes from


def stdlib_corpus(max_bytes: int) -> bytes:
  """The `.py` sources of this Python's standard library, in sorted path order, up to max_bytes.

  Ships with every Python, so the default config trains offline anywhere. Tests, site-packages and
  files that are not UTF-8 are left out.
  """
  root = sysconfig.get_paths()['stdlib']
  chunks, total = [], 0
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames
                         if d not in ('site-packages', 'dist-packages', 'test', 'tests', 'idle_test',
                                      '__pycache__') and not d.startswith('.'))
    for name in sorted(filenames):
      if not name.endswith('.py'):
        continue
      with open(os.path.join(dirpath, name), 'rb') as f:
        data = f.read()
      try:
        data.decode('utf-8')
      except UnicodeDecodeError:
        continue
      chunks.append(data)
      total += len(data)
      if total >= max_bytes:
        return b''.join(chunks)[:max_bytes]
  if not chunks:
    raise GptjaxError(f'no .py files found under {root}; pass --config.data.path=FILE')
  return b''.join(chunks)


def read_corpus(path: str, url: str = '') -> bytes:
  """The bytes of a text file; if it is missing and a url is given, downloads it there first."""
  if not os.path.exists(path) and url:
    try:
      with urllib.request.urlopen(url, timeout=30) as response:
        atomic_write(path, response.read())
    except OSError as e:
      raise GptjaxError(f'{path} does not exist and downloading {url} failed ({e}); '
                        f'put the file at {path} or pass --config.data.path=FILE') from None
  if not os.path.exists(path):
    raise GptjaxError(f'data file {path} does not exist; pass --config.data.path=FILE')
  if os.path.isdir(path):
    raise GptjaxError(f'data path {path} is a directory; pass a text file with --config.data.path=FILE')
  with open(path, 'rb') as f:
    return f.read()


# ---------------------------------------------------------------------------------------------
# The stateless sampler

TRAIN_STREAM, EVAL_STREAM = 0, 1


def batch_at(tokens: np.ndarray, *, seed: int, step: int, batch_size: int, seq_len: int,
             stream: int = TRAIN_STREAM, rows: slice = slice(None)) -> np.ndarray:
  """The batch of `step`: [batch_size, seq_len + 1] int32 windows at random offsets of `tokens`.

  A pure function of (seed, stream, step): no sampler state exists to save or restore. `rows` picks
  some rows of that global batch (a host's share) and reads only their tokens.
  """
  n_windows = len(tokens) - seq_len
  if n_windows < 1:
    raise GptjaxError(f'the split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}; '
                      'use more text or a smaller --config.train.seq_len')
  rng = np.random.default_rng([seed, stream, step])
  starts = rng.integers(0, n_windows, size=batch_size)[rows]
  return np.asarray(tokens[starts[:, None] + np.arange(seq_len + 1)[None, :]], np.int32)
