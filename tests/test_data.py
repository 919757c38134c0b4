"""Tokenizers, corpus preparation and the stateless sampler."""

import json
import os

import numpy as np
import pytest

from gptjax import data as D
from gptjax.errors import GptjaxError


@pytest.mark.parametrize('text', ['hello, world\n', '你 是 一 只 猫', 'mixed: café ∑ 🐱 end'])
def test_char_tokenizer_round_trip(text):
  tok = D.CharTokenizer.fit(text)
  ids = tok.encode(text)
  assert tok.vocab_size == len(set(text))
  assert tok.decode(ids) == text
  assert D.tokenizer_from_dict(json.loads(json.dumps(tok.to_dict()))).decode(ids) == text


def test_char_vocabulary_is_sorted_like_nanogpt():
  tok = D.CharTokenizer.fit('cabbage')
  assert tok.chars == 'abceg'
  assert tok.encode('cab').tolist() == [2, 0, 1]


def test_char_tokenizer_names_unknown_characters():
  tok = D.CharTokenizer.fit('abc')
  with pytest.raises(GptjaxError, match="not in the tokenizer vocabulary: 'x' 'z'"):
    tok.encode('axbz')


@pytest.mark.parametrize('text', ['plain ASCII', '你 是 一 只 猫', '\x00\x7f tabs\tand\nlines'])
def test_byte_tokenizer_round_trip_text(text):
  tok = D.ByteTokenizer()
  ids = tok.encode(text)
  assert ids.max(initial=0) < 256
  assert tok.decode(ids) == text


def test_byte_tokenizer_round_trips_arbitrary_bytes():
  raw = bytes(np.random.default_rng(0).integers(0, 256, size=4096, dtype=np.uint8))
  tok = D.ByteTokenizer()
  assert tok.decode_bytes(tok.encode(raw)) == raw
  with pytest.raises(UnicodeDecodeError):
    raw.decode('utf-8')  # really not text: the byte tokenizer does not care


def test_prepare_writes_memmapped_splits(tmp_path):
  text = ('to be or not to be, that is the question. ' * 50).encode()
  meta = D.prepare(text, str(tmp_path), 'char', 0.1, 'hamlet')
  assert meta['dtype'] == 'uint16'
  train, val = D.load_split(str(tmp_path), 'train'), D.load_split(str(tmp_path), 'val')
  assert isinstance(train, np.memmap) and train.dtype == np.uint16
  assert len(train) + len(val) == len(text) and len(val) == round(0.1 * len(text))
  tok = D.tokenizer_from_dict(meta['tokenizer'])
  assert tok.decode(np.concatenate([train, val])) == text.decode()  # first 90% train, last 10% val


def test_prepare_uses_uint32_beyond_65535_tokens(tmp_path):
  # 70,000 distinct characters (skipping the surrogate range, which cannot be encoded).
  text = ''.join(chr(c) for c in range(0x20, 0xD800)) + ''.join(chr(c) for c in range(0xE000, 0x11000))
  assert len(set(text)) >= 65536
  meta = D.prepare(text.encode('utf-8'), str(tmp_path), 'char', 0.5, 'unicode')
  assert meta['dtype'] == 'uint32'
  ids = np.concatenate([D.load_split(str(tmp_path), 'train'), D.load_split(str(tmp_path), 'val')])
  assert ids.max() == len(set(text)) - 1 > 2 ** 16  # ids past uint16 survive the round trip
  assert D.tokenizer_from_dict(meta['tokenizer']).decode(ids) == text


def test_prepare_reuses_an_identical_preparation(tmp_path):
  text = b'abcdefghij' * 100
  D.prepare(text, str(tmp_path), 'byte', 0.1, 'x')
  stamp = os.stat(tmp_path / 'train.bin').st_mtime_ns
  D.prepare(text, str(tmp_path), 'byte', 0.1, 'x')
  assert os.stat(tmp_path / 'train.bin').st_mtime_ns == stamp


def test_prepare_refuses_non_utf8_for_char_tokenizer(tmp_path):
  with pytest.raises(GptjaxError, match='not UTF-8'):
    D.prepare(b'ok \xff\xfe bad', str(tmp_path), 'char', 0.1, 'bad.txt')
  assert not os.listdir(tmp_path)


def test_batch_is_a_pure_function_of_seed_and_step():
  tokens = np.arange(10_000, dtype=np.uint16)
  a = D.batch_at(tokens, seed=3, step=17, batch_size=4, seq_len=8)
  b = D.batch_at(tokens, seed=3, step=17, batch_size=4, seq_len=8)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (4, 9) and a.dtype == np.int32
  assert np.all(np.diff(a, axis=1) == 1)  # contiguous windows
  assert not np.array_equal(a, D.batch_at(tokens, seed=3, step=18, batch_size=4, seq_len=8))
  assert not np.array_equal(a, D.batch_at(tokens, seed=4, step=17, batch_size=4, seq_len=8))
  assert not np.array_equal(a, D.batch_at(tokens, seed=3, step=17, batch_size=4, seq_len=8,
                                          stream=D.EVAL_STREAM))


def test_batch_windows_reach_the_last_token():
  tokens = np.arange(12, dtype=np.uint16)
  batch = D.batch_at(tokens, seed=0, step=0, batch_size=500, seq_len=10)
  assert batch.max() == 11 and batch.min() == 0  # both possible windows occur


def test_host_rows_are_the_rows_of_the_global_batch():
  tokens = np.arange(10_000, dtype=np.uint16)
  whole = D.batch_at(tokens, seed=5, step=2, batch_size=8, seq_len=6)
  parts = [D.batch_at(tokens, seed=5, step=2, batch_size=8, seq_len=6, rows=slice(2 * i, 2 * i + 2))
           for i in range(4)]
  np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_stdlib_corpus_is_python_source():
  text = D.stdlib_corpus(50_000)
  assert len(text) == 50_000
  assert b'def ' in text and b'import ' in text
