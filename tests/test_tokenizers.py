"""Subword tokenizers: GPT-2's files read as transformers reads them, and the trained byte-level BPE."""

import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptjax import data as D
from gptjax.errors import GptjaxError

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'tiny-gpt2')
SEED_SENTENCE = '你是一只猫'
TEXT = ('It was the best of times, it was the worst of times; 你是一只猫。\n'
        'Numbers 1234, tabs\tand  spaces,\n\n   indented 🐱 lines\n') * 30


def transformers_cases():
  with open(os.path.join(FIXTURE, 'expected.json'), encoding='utf-8') as f:
    return json.load(f)['tokenizer_cases']


@pytest.fixture(params=['vocab.json + merges.txt', 'tokenizer.json'])
def gpt2_dir(request, tmp_path):
  """The fixture's tokenizer in each of GPT-2's two file formats, alone in a directory."""
  names = ['vocab.json', 'merges.txt'] if request.param.startswith('vocab') else ['tokenizer.json']
  for name in names:
    shutil.copy(os.path.join(FIXTURE, name), tmp_path / name)
  return str(tmp_path)


def test_gpt2_files_give_transformers_ids(gpt2_dir):
  tok = D.BPETokenizer.from_files(gpt2_dir)
  assert tok.kind == 'gpt2' and tok.vocab_size == 320
  cases = transformers_cases()
  assert any(SEED_SENTENCE in c['text'] for c in cases) and any('🐱' in c['text'] for c in cases)
  for case in cases:
    ids = tok.encode(case['text'])
    assert ids.dtype == np.int32
    assert ids.tolist() == case['ids'], case['text']
    assert tok.decode(ids) == case['text']
    assert tok.num_bytes(ids) == len(case['text'].encode('utf-8'))


def test_gpt2_tokenizer_survives_the_workdir_file(gpt2_dir, tmp_path):
  tok = D.BPETokenizer.from_files(gpt2_dir)
  D.save_tokenizer(tok, str(tmp_path / 'saved.json'))
  again = D.load_tokenizer(str(tmp_path / 'saved.json'))
  assert again.kind == 'gpt2' and again.to_dict() == tok.to_dict()
  for case in transformers_cases():
    assert again.encode(case['text']).tolist() == case['ids']


def test_the_byte_alphabet_is_gpt2s():
  from tokenizers import pre_tokenizers
  alphabet = D.byte_alphabet()
  assert sorted(alphabet.values()) == list(range(256))
  assert set(alphabet) == set(pre_tokenizers.ByteLevel.alphabet())
  # GPT-2's well-known spellings: space is 'Ġ', newline 'Ċ', tab 'ĉ'; printable ASCII stands for itself.
  assert (alphabet['Ġ'], alphabet['Ċ'], alphabet['ĉ'], alphabet['A'], alphabet['ÿ']) == (32, 10, 9, 65, 255)


def test_missing_gpt2_files_say_where_to_put_them(tmp_path):
  for call in (lambda: D.BPETokenizer.from_files(str(tmp_path)),
               lambda: D.tokenizer_spec('gpt2', tokenizer_path=str(tmp_path))):
    with pytest.raises(GptjaxError) as e:
      call()
    message = str(e.value)
    assert '\n' not in message and str(tmp_path) in message and 'vocab.json and merges.txt' in message


def test_tokenizer_files_that_are_not_a_byte_level_bpe_are_refused(tmp_path):
  (tmp_path / 'tokenizer.json').write_text('{"version": "1.0", "model": ')
  with pytest.raises(GptjaxError, match='cannot read .*tokenizer.json as a tokenizer'):
    D.BPETokenizer.from_files(str(tmp_path))
  from tokenizers import Tokenizer, models
  (tmp_path / 'tokenizer.json').write_text(Tokenizer(models.WordLevel({'a': 0}, unk_token='a')).to_str())
  with pytest.raises(GptjaxError, match="not a byte-level BPE like GPT-2's"):
    D.BPETokenizer.from_files(str(tmp_path))


@pytest.fixture(scope='module')
def trained():
  return D.BPETokenizer.train(TEXT.encode(), 300)


@pytest.mark.parametrize('text', ['plain ASCII, with punctuation!', SEED_SENTENCE, 'emoji 🐱🎉 and 文字',
                                  '\x00\x7f control\tcharacters\r\n', ''])
def test_trained_bpe_round_trips_text(trained, text):
  ids = trained.encode(text)
  assert trained.decode(ids) == text
  assert trained.num_bytes(ids) == len(text.encode('utf-8'))


def test_trained_bpe_round_trips_arbitrary_bytes(trained):
  raw = bytes(np.random.default_rng(0).integers(0, 256, size=4096, dtype=np.uint8))
  with pytest.raises(UnicodeDecodeError):
    raw.decode('utf-8')  # really not text
  ids = trained.encode(raw)
  assert trained.decode_bytes(ids) == raw
  assert trained.num_bytes(ids) == len(raw)


def test_trained_bpe_learns_merges_and_is_deterministic(trained):
  assert trained.kind == 'bpe' and trained.vocab_size == 300
  assert trained.token_id(D.END_OF_TEXT) == 0
  ids = trained.encode(TEXT)
  assert len(ids) < 0.55 * len(TEXT.encode())  # 43 merges halve the text they were learned on
  again = D.BPETokenizer.train(TEXT.encode(), 300)
  assert again.to_dict() == trained.to_dict()  # the same vocabulary and merges, in the same order
  other = D.BPETokenizer.train(TEXT.encode()[::-1], 300)
  assert other.to_dict() != trained.to_dict()


def test_trained_bpe_survives_the_workdir_file(trained, tmp_path):
  D.save_tokenizer(trained, str(tmp_path / 'tokenizer.json'))
  again = D.load_tokenizer(str(tmp_path / 'tokenizer.json'))
  assert again.kind == 'bpe' and again.encode(TEXT).tolist() == trained.encode(TEXT).tolist()


def test_chunked_encoding_equals_encoding_the_whole_text(trained, monkeypatch):
  """Long texts are encoded in chunks cut only where GPT-2's pre-tokenizer splits anyway."""
  text = TEXT + 'x\n\ny  \nz\nw \n\tv\nu\n \n' * 50  # whitespace runs of every kind around newlines
  whole = trained.encode(text)
  monkeypatch.setattr(D, '_CHUNK', 7)
  assert len(list(D._utf8_pieces(text.encode()))) > 100
  np.testing.assert_array_equal(trained.encode(text), whole)
  np.testing.assert_array_equal(trained._tokenizer.encode(text).ids, whole)  # tokenizers on the whole


def test_bpe_vocabulary_size_is_checked():
  with pytest.raises(GptjaxError, match='257 to 2\\*\\*24 ids'):
    D.BPETokenizer.train(TEXT.encode(), 100)


def test_old_tokenizer_files_still_load(tmp_path):
  """tokenizer.json as earlier versions wrote it (kinds 'byte' and 'char' only)."""
  (tmp_path / 'byte.json').write_text('{"kind": "byte"}')
  (tmp_path / 'char.json').write_text('{"kind": "char", "chars": "\\n abc"}')
  assert D.load_tokenizer(str(tmp_path / 'byte.json')).encode('hi').tolist() == [104, 105]
  assert D.load_tokenizer(str(tmp_path / 'char.json')).encode('cab\n').tolist() == [4, 2, 3, 0]


def test_prepare_with_bpe_is_keyed_on_its_vocabulary_size(tmp_path):
  meta = D.prepare(TEXT.encode(), str(tmp_path), D.tokenizer_spec('bpe', bpe_vocab_size=300), 0.1, 'text')
  tok = D.tokenizer_from_dict(meta['tokenizer'])
  ids = np.concatenate([D.load_split(str(tmp_path), 'train'), D.load_split(str(tmp_path), 'val')])
  assert tok.decode(ids) == TEXT
  stamp = os.stat(tmp_path / 'train.bin').st_mtime_ns
  D.prepare(TEXT.encode(), str(tmp_path), D.tokenizer_spec('bpe', bpe_vocab_size=300), 0.1, 'text')
  assert os.stat(tmp_path / 'train.bin').st_mtime_ns == stamp  # the same preparation is reused
  meta = D.prepare(TEXT.encode(), str(tmp_path), D.tokenizer_spec('bpe', bpe_vocab_size=280), 0.1, 'text')
  assert meta['vocab_size'] == 280  # another size is prepared again


def test_bpe_is_trained_on_the_training_split_only():
  text = ('aaaa ' * 200 + 'zzzz ' * 200).encode()
  tok, _ = D.encode_corpus(text, D.tokenizer_spec('bpe', bpe_vocab_size=270), 'x', train_fraction=0.5)
  vocab = tok._tokenizer.get_vocab()
  assert 'aaaa' in vocab and 'zz' not in vocab  # the last half (validation) taught it nothing


# Property-based: random bytes and texts (derandomize: the same examples every run).
FAST = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(raw=st.binary(max_size=300))
def test_bpe_round_trips_any_bytes(trained, raw):
  ids = trained.encode(raw)
  assert trained.decode_bytes(ids) == raw and trained.num_bytes(ids) == len(raw)


@FAST
@given(text=st.text(alphabet=st.sampled_from('ab 你猫🐱\n\t.,\''), max_size=200))
def test_chunked_encoding_equals_whole_text_encoding_for_any_text(trained, monkeypatch, text):
  monkeypatch.setattr(D, '_CHUNK', 3)
  assert trained.encode(text).tolist() == trained._tokenizer.encode(text).ids
