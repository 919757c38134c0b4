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
import re
import sysconfig
import tempfile
import urllib.request
from typing import Protocol

import numpy as np

from gptjax.errors import GptjaxError, os_error

# ---------------------------------------------------------------------------------------------
# Tokenizers


class Tokenizer(Protocol):
  kind: str
  vocab_size: int

  def encode(self, text: str) -> np.ndarray: ...
  def decode(self, ids) -> str: ...
  def num_bytes(self, ids) -> int: ...  # UTF-8 bytes of the text the ids stand for (bits per byte)
  def to_dict(self) -> dict: ...


class CharTokenizer:
  """One token per Unicode character seen in the training text (nanoGPT's shakespeare_char)."""

  kind = 'char'

  def __init__(self, chars: str):
    if len(set(chars)) != len(chars) or list(chars) != sorted(chars):
      raise GptjaxError('a char tokenizer needs its characters distinct and sorted')
    self.chars = chars
    self._codes = np.array([ord(c) for c in chars], np.uint32)  # sorted code points
    self._utf8_lengths = np.array([len(c.encode('utf-8', 'surrogatepass')) for c in chars], np.int64)
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

  def num_bytes(self, ids) -> int:
    """UTF-8 bytes of the characters the ids stand for (1 for ASCII, up to 4 for e.g. emoji)."""
    counts = np.bincount(_checked_ids(ids, self.vocab_size), minlength=self.vocab_size)
    return int(counts @ self._utf8_lengths)

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

  def num_bytes(self, ids) -> int:
    """One byte per id."""
    return int(_checked_ids(ids, self.vocab_size).size)

  def to_dict(self) -> dict:
    return {'kind': 'byte'}


def _checked_ids(ids, vocab_size: int) -> np.ndarray:
  """ids as a flat int64 array, or GptjaxError if one is outside [0, vocab_size)."""
  ids = np.asarray(ids).reshape(-1).astype(np.int64)
  if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
    raise GptjaxError(f'token ids must be in [0, {vocab_size}) for this tokenizer')
  return ids
class BPETokenizer:
  """Byte-level BPE (GPT-2's scheme), run by Hugging Face `tokenizers`: any text or bytes encodes.

  kind 'bpe' is trained on the corpus (`train`); kind 'gpt2' is read from GPT-2's files
  (`from_files`: vocab.json + merges.txt, or a tokenizer.json). Both are stored whole in the
  workdir's tokenizer.json (`to_dict`), so sampling needs nothing else.

  Byte-level means every token stands for a fixed byte string (the 256 single bytes are all in the
  vocabulary), so bytes that are not UTF-8 encode as single-byte tokens and `decode_bytes` is exact.
  """

  def __init__(self, kind: str, tokenizer_json: str):
    from tokenizers import Tokenizer
    self.kind = kind
    self._tokenizer = Tokenizer.from_str(tokenizer_json)
    spec = json.loads(tokenizer_json)
    byte_level = ((spec.get('model') or {}).get('type') == 'BPE' and spec.get('normalizer') is None
                  and (spec.get('decoder') or {}).get('type') == 'ByteLevel'
                  and 'ByteLevel' in json.dumps(spec.get('pre_tokenizer')))
    if not byte_level:
      raise GptjaxError("the tokenizer is not a byte-level BPE like GPT-2's (BPE model, ByteLevel "
                        'pre-tokenizer and decoder, no normalizer); use a GPT-2 style tokenizer.json or '
                        'vocab.json + merges.txt')
    self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
    # The byte string of every id: a vocabulary token is a string of byte-alphabet characters; an
    # added (special) token stands for its own text.
    to_byte = byte_alphabet()
    vocab = self._tokenizer.get_vocab(with_added_tokens=False)
    self.token_bytes = [b''] * self.vocab_size
    for token, i in vocab.items():
      self.token_bytes[i] = bytes(to_byte[ch] for ch in token) if all(ch in to_byte for ch in token) \
          else token.encode('utf-8')
    for i, added in self._tokenizer.get_added_tokens_decoder().items():
      self.token_bytes[i] = added.content.encode('utf-8')
    self._lengths = np.array([len(b) for b in self.token_bytes], np.int64)
    missing = [b for ch, b in to_byte.items() if ch not in vocab]
    if missing:
      raise GptjaxError(f'the byte-level BPE lacks {len(missing)} of the 256 single-byte tokens; it cannot '
                        'encode every text: use a complete byte-level vocabulary')
    self._byte_ids = np.zeros(256, np.int32)
    for ch, b in to_byte.items():
      self._byte_ids[b] = vocab[ch]

  @classmethod
  def train(cls, data: bytes, vocab_size: int) -> 'BPETokenizer':
    """A byte-level BPE with up to vocab_size ids learned from `data`: 1 special token
    (<|endoftext|>, id 0), the 256 bytes, then merges of pairs seen at least twice, most frequent
    first. Deterministic: the same data and size give the same vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    if not 257 <= vocab_size <= 2**24:
      raise GptjaxError(f'a byte-level BPE needs 257 to 2**24 ids (256 bytes + <|endoftext|> + merges), not '
                        f'{vocab_size}; set --config.data.bpe_vocab_size')
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=[END_OF_TEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [piece for piece in _utf8_pieces(data) if isinstance(piece, str)]
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return cls('bpe', tokenizer.to_str())

  @classmethod
  def from_files(cls, directory: str) -> 'BPETokenizer':
    """GPT-2's tokenizer from a local directory: tokenizer.json, or vocab.json + merges.txt (built as
    transformers' GPT2Tokenizer builds it: no prefix space, <|endoftext|> special)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    where = os.path.abspath(directory or '.')
    if os.path.isfile(os.path.join(where, 'tokenizer.json')):
      with open(os.path.join(where, 'tokenizer.json'), encoding='utf-8') as f:
        text = f.read()
      try:
        return cls('gpt2', Tokenizer.from_str(text).to_str())
      except Exception as e:  # tokenizers raises its own exception type for files it cannot parse
        if isinstance(e, GptjaxError):
          raise
        reason = str(e).splitlines()[0]
        raise GptjaxError(f'cannot read {where}/tokenizer.json as a tokenizer ({reason})') from None
    vocab, merges = os.path.join(where, 'vocab.json'), os.path.join(where, 'merges.txt')
    if not (os.path.isfile(vocab) and os.path.isfile(merges)):
      raise GptjaxError(f'no GPT-2 tokenizer in {where}: put vocab.json and merges.txt (or tokenizer.json) '
                        'there, e.g. from huggingface-cli download gpt2 vocab.json merges.txt --local-dir DIR')
    try:
      model = models.BPE.from_file(vocab, merges)
    except Exception as e:  # tokenizers raises its own exception type for unreadable files
      raise GptjaxError(f'cannot read {vocab} + {merges} as a BPE vocabulary '
                        f'({str(e).splitlines()[0]})') from None
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    if END_OF_TEXT in tokenizer.get_vocab():
      tokenizer.add_special_tokens([AddedToken(END_OF_TEXT, special=True)])
    return cls('gpt2', tokenizer.to_str())

  def encode(self, text: str | bytes) -> np.ndarray:
    """ids [n] int32 of a text, or of any bytes (a byte that is not UTF-8 is its single-byte token)."""
    ids, texts = [], []

    def flush():  # encodes the texts gathered so far, on all cores
      ids.extend(np.asarray(e.ids, np.int32)
                 for e in self._tokenizer.encode_batch_fast(texts, add_special_tokens=False))
      texts.clear()

    for piece in _utf8_pieces(_utf8(text)):
      if isinstance(piece, bytes):
        flush()
        ids.append(self._byte_ids[list(piece)])
      else:
        texts.append(piece)
        if len(texts) == 1024:
          flush()
    flush()
    return np.concatenate(ids) if ids else np.zeros((0,), np.int32)

  def decode_bytes(self, ids) -> bytes:
    return b''.join(self.token_bytes[i] for i in _checked_ids(ids, self.vocab_size).tolist())

  def decode(self, ids) -> str:
    """Text of the ids; a sampled sequence that is not valid UTF-8 shows U+FFFD where it breaks."""
    return self.decode_bytes(ids).decode('utf-8', errors='replace')

  def num_bytes(self, ids) -> int:
    """The bytes of text the ids stand for (the sum of each token's byte length)."""
    return int(self._lengths[_checked_ids(ids, self.vocab_size)].sum())

  def token_id(self, text: str) -> int | None:
    """The id of a whole-token text such as '<|endoftext|>', or None."""
    return self._tokenizer.token_to_id(text)

  def to_json(self) -> str:
    """The Hugging Face `tokenizers` file (what transformers reads as tokenizer.json)."""
    return self._tokenizer.to_str()

  def save_vocab_merges(self, directory: str) -> None:
    """GPT-2's vocab.json + merges.txt (the BPE model alone, without added tokens)."""
    self._tokenizer.model.save(directory)

  def to_dict(self) -> dict:
    return {'kind': self.kind, 'tokenizer': json.loads(self._tokenizer.to_str())}


END_OF_TEXT = '<|endoftext|>'
_CHUNK = 1 << 10  # characters per text chunk (at least): chunks are encoded in batches on all cores


def byte_alphabet() -> dict[str, int]:
  """GPT-2's byte-level alphabet, character -> byte: printable Latin-1 bytes stand for themselves,
  the other 68 bytes for the characters from U+0100 on, in byte order (so every token is visible)."""
  printable = set(range(ord('!'), ord('~') + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
  others = [b for b in range(256) if b not in printable]
  return {**{chr(b): b for b in printable}, **{chr(0x100 + i): b for i, b in enumerate(others)}}


def _utf8(text: str | bytes) -> bytes:
  try:
    return text.encode('utf-8') if isinstance(text, str) else bytes(text)
  except UnicodeEncodeError as e:
    raise GptjaxError(f'the text has a character UTF-8 cannot encode ({text[e.start]!r} at {e.start}); '
                      'remove it') from None


_NOT_UTF8 = re.compile('([\udc80-\udcff]+)')  # bytes that are not UTF-8, as surrogateescape shows them
_LINE_START = re.compile(r'(?<=\S)\n(?=\S)')


def _utf8_pieces(data: bytes):
  """The valid UTF-8 text of `data` as strings of about _CHUNK characters, and the bytes between that
  are not UTF-8 (as bytes), in order.

  Text is cut only after a newline between two non-space characters: GPT-2's pre-tokenizer makes that
  newline a token of its own whatever follows, so encoding the chunks one by one gives the ids of
  encoding the whole text. (After a longer run of whitespace it would not: '\n\n' before a letter is
  split in two, but one token at the end of a chunk.)
  """
  for i, part in enumerate(_NOT_UTF8.split(data.decode('utf-8', errors='surrogateescape'))):
    if i % 2:
      yield part.encode('utf-8', errors='surrogateescape')
      continue
    start = 0
    while len(part) - start > _CHUNK:
      cut = _LINE_START.search(part, start + _CHUNK)
      if cut is None:
        break
      yield part[start:cut.end()]
      start = cut.end()
    if start < len(part):
      yield part[start:]


def _code_points(text: str) -> np.ndarray:
  # surrogatepass: a lone surrogate (e.g. from undecodable file names) is an unknown character,
  # not a crash in the encoder.
  return np.frombuffer(text.encode('utf-32-le', 'surrogatepass'), np.uint32)


# ---------------------------------------------------------------------------------------------
# Special tokens on top of any tokenizer (the masked-LM objective's [MASK])

MASK_TOKEN = '[MASK]'


class WithSpecialTokens:
  """A tokenizer of any kind plus special tokens, whose ids follow the base vocabulary.

  encode() turns each occurrence of a special token's text (e.g. '[MASK]') into its id and the text
  between occurrences into the base tokenizer's ids; decode() reverses it. It is saved as the base's
  dict plus 'special_tokens': [...], so every tokenizer.json without that key loads as it always did.
  """

  def __init__(self, base: Tokenizer, special_tokens):
    special_tokens = list(special_tokens)
    if (not special_tokens or not all(isinstance(t, str) and t for t in special_tokens)
        or len(set(special_tokens)) != len(special_tokens)):
      raise GptjaxError(f'special tokens must be distinct non-empty strings, got {special_tokens}')
    self.base = base
    self.kind = base.kind
    self.special_tokens = special_tokens
    self.special_ids = {t: base.vocab_size + i for i, t in enumerate(special_tokens)}
    self.vocab_size = base.vocab_size + len(special_tokens)
    # The longest first, so that a special token containing another one is matched whole.
    alternatives = sorted(special_tokens, key=len, reverse=True)
    self._splitter = re.compile('(' + '|'.join(re.escape(t) for t in alternatives) + ')')

  def encode(self, text: str | bytes) -> np.ndarray:
    if isinstance(text, bytes):  # raw bytes (a byte run's corpus or evaluation file) hold no markers
      return np.asarray(self.base.encode(text), np.int32)
    pieces = []
    for i, part in enumerate(self._splitter.split(text)):  # odd pieces are the special tokens
      if i % 2:
        pieces.append(np.array([self.special_ids[part]], np.int32))
      elif part:
        pieces.append(np.asarray(self.base.encode(part), np.int32))
    return np.concatenate(pieces) if pieces else np.zeros((0,), np.int32)

  def decode(self, ids) -> str:
    ids = np.asarray(ids, np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
      raise GptjaxError(f'token ids must be in [0, {self.vocab_size}) for this tokenizer')
    special = ids >= self.base.vocab_size
    # Runs of base ids decode together (a character's UTF-8 bytes may span several byte ids).
    starts = np.flatnonzero(np.diff(special.astype(np.int8), prepend=2))
    out = []
    for start, end in zip(starts, list(starts[1:]) + [len(ids)]):
      if special[start]:
        out.extend(self.special_tokens[int(i) - self.base.vocab_size] for i in ids[start:end])
      else:
        out.append(self.base.decode(ids[start:end]))
    return ''.join(out)

  def num_bytes(self, ids) -> int:
    """UTF-8 bytes of the text the ids stand for: special tokens stand for none."""
    ids = np.asarray(ids).reshape(-1)
    return self.base.num_bytes(ids[ids < self.base.vocab_size])

  def to_dict(self) -> dict:
    return {**self.base.to_dict(), 'special_tokens': list(self.special_tokens)}


def with_mask_token(tokenizer: Tokenizer) -> WithSpecialTokens:
  """`tokenizer` plus the masked-LM objective's MASK_TOKEN (id = its vocab_size); unchanged if it has it."""
  if isinstance(tokenizer, WithSpecialTokens):
    if MASK_TOKEN in tokenizer.special_ids:
      return tokenizer
    return WithSpecialTokens(tokenizer.base, tokenizer.special_tokens + [MASK_TOKEN])
  return WithSpecialTokens(tokenizer, [MASK_TOKEN])


def tokenizer_from_dict(d: dict) -> Tokenizer:
  if d.get('special_tokens'):  # any kind, plus special tokens (absent from older tokenizer files)
    return WithSpecialTokens(tokenizer_from_dict({k: v for k, v in d.items() if k != 'special_tokens'}),
                             d['special_tokens'])
  kind = d.get('kind')
  if kind == 'char':
    return CharTokenizer(d['chars'])
  if kind == 'byte':
    return ByteTokenizer()
  if kind in ('bpe', 'gpt2'):
    return BPETokenizer(kind, json.dumps(d['tokenizer']))
  raise GptjaxError(f"unknown tokenizer kind {kind!r}: expected 'char', 'byte', 'bpe' or 'gpt2'")


def save_tokenizer(tokenizer: Tokenizer, path: str) -> None:
  atomic_write(path, json.dumps(tokenizer.to_dict(), ensure_ascii=False))


def load_tokenizer(path: str) -> Tokenizer:
  with open(path, encoding='utf-8') as f:
    return tokenizer_from_dict(json.load(f))


# ---------------------------------------------------------------------------------------------
# Preparing a corpus into token files


_UMASK = os.umask(0o022)  # read once, at import (before any thread): os.umask can only read it by setting it
os.umask(_UMASK)


def atomic_write(path: str, text: str | bytes) -> None:
  """Writes the whole file or nothing: a crash leaves the old file (or none), never half of one."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.tmp')
  try:
    os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would make it (mkstemp makes it private to its owner)
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


def tokenizer_spec(kind: str, *, bpe_vocab_size: int = 0, tokenizer_path: str = '') -> dict:
  """What a prepared corpus depends on besides its text: the tokenizer kind and its settings (for
  'gpt2', where its files are and a sha256 of their contents). Raises if the GPT-2 files are missing."""
  if kind == 'bpe':
    return {'kind': kind, 'vocab_size': bpe_vocab_size}
  if kind == 'gpt2':
    where = os.path.abspath(tokenizer_path or '.')
    names = ['tokenizer.json'] if os.path.isfile(os.path.join(where, 'tokenizer.json')) else \
        ['vocab.json', 'merges.txt']
    digest = hashlib.sha256()
    for name in names:
      if not os.path.isfile(os.path.join(where, name)):
        raise GptjaxError(f'no GPT-2 tokenizer in {where}: put vocab.json and merges.txt (or tokenizer.json) '
                          'there, or point --config.data.tokenizer_path at their directory')
      with open(os.path.join(where, name), 'rb') as f:
        digest.update(f.read())
    return {'kind': kind, 'path': where, 'sha256': digest.hexdigest()}
  return {'kind': kind}


def encode_corpus(data: bytes, tokenizer_kind: str | dict, source: str, *,
                  train_fraction: float = 1.0) -> tuple[Tokenizer, np.ndarray]:
  """Makes the tokenizer for the corpus and encodes it.

  tokenizer_kind: a kind or a `tokenizer_spec`. 'char' is fitted on the whole corpus (nanoGPT does
  the same); 'bpe' is trained on its first `train_fraction` of bytes only (the training split).
  """
  spec = tokenizer_kind if isinstance(tokenizer_kind, dict) else tokenizer_spec(tokenizer_kind)
  tokenizer_kind = spec['kind']
  if tokenizer_kind == 'bpe':
    tokenizer = BPETokenizer.train(data[:int(len(data) * train_fraction)], spec['vocab_size'])
    return tokenizer, tokenizer.encode(data)
  if tokenizer_kind == 'gpt2':
    tokenizer = BPETokenizer.from_files(spec['path'])
    return tokenizer, tokenizer.encode(data)
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
  raise GptjaxError(f"data.tokenizer={tokenizer_kind!r} is not a tokenizer: use 'char', 'byte', 'bpe' or "
                    "'gpt2'")


def find_prepared(out_dir: str, digest: str, tokenizer_kind: str | dict, val_fraction: float) -> dict | None:
  """The metadata of out_dir if it holds this corpus (by sha256) prepared the same way (tokenizer
  kind or `tokenizer_spec`, split), else None."""
  if not os.path.exists(os.path.join(out_dir, 'meta.json')):
    return None
  meta = read_meta(out_dir)
  spec = tokenizer_kind if isinstance(tokenizer_kind, dict) else {'kind': tokenizer_kind}
  same = (meta.get('source_sha256') == digest and meta.get('val_fraction') == val_fraction
          and meta.get('tokenizer_spec', {'kind': meta['tokenizer']['kind']}) == spec)
  return meta if same else None


def write_prepared(out_dir: str, tokenizer: Tokenizer, ids: np.ndarray, *, val_fraction: float,
                   source: str, digest: str, spec: dict | None = None) -> dict:
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
          'source_sha256': digest, 'tokenizer_spec': spec or {'kind': tokenizer.kind}}
  atomic_write(os.path.join(out_dir, 'meta.json'), json.dumps(meta, ensure_ascii=False, indent=1))
  return meta


def prepare(data: bytes, out_dir: str, tokenizer_kind: str | dict, val_fraction: float, source: str) -> dict:
  """Encodes `data` into out_dir (reusing it if it already holds the same corpus); returns the metadata."""
  digest = hashlib.sha256(data).hexdigest()
  spec = tokenizer_kind if isinstance(tokenizer_kind, dict) else tokenizer_spec(tokenizer_kind)
  meta = find_prepared(out_dir, digest, spec, val_fraction)
  if meta is None:
    if not data:
      raise GptjaxError(f'{source} is empty: give a text file with some content')
    tokenizer, ids = encode_corpus(data, spec, source, train_fraction=1 - val_fraction)
    meta = write_prepared(out_dir, tokenizer, ids, val_fraction=val_fraction, source=source,
                          digest=digest, spec=spec)
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
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise os_error(e, f'cannot read data file {path}', 'make it readable, or pass another '
                   '--config.data.path=FILE') from None


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
