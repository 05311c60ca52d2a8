"""Tokenizers against plain-Python references; save/load and cache reuse."""

import numpy as np
import pytest

from llm_jax import errors
from llm_jax.data import tokenizers
from llm_jax.data.tokenizers import build_tokenizer, load_tokenizer

TEXTS = ['Hello, world!\n', 'naïve café — ünïcode\n\nline', 'abc  def\tghi']


def _build(kind, tmp_path, texts=TEXTS, **kw):
  kw = {'vocab_size': 300, 'sp_model_type': 'bpe', **kw}
  return build_tokenizer(kind, texts, directory=str(tmp_path), **kw)


def _train_text():
  from pydoc_data.topics import topics
  return [topics[k] for k in sorted(topics)[:40]]


def test_char_matches_reference_and_round_trips(tmp_path):
  tok = _build('char', tmp_path)
  chars = sorted(set(''.join(TEXTS)))
  reference = {c: i + 3 for i, c in enumerate(chars)}
  assert (tok.pad_id, tok.eos_id, tok.vocab_size) == (0, 1, len(chars) + 3)
  for text in TEXTS:
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert ids.tolist() == [reference[c] for c in text]
    assert tok.decode(ids) == text
    assert tok.decode([tok.pad_id, *ids.tolist(), tok.eos_id, tok.pad_id]) == text


def test_char_unseen_character_is_unk(tmp_path):
  tok = _build('char', tmp_path)
  ids = tok.encode('aZ€b')
  assert ids.tolist()[1:3] == [tokenizers.UNK_ID] * 2
  assert tok.decode(ids) == 'a\ufffd\ufffdb'


def test_byte_matches_utf8_and_round_trips(tmp_path):
  tok = _build('byte', tmp_path)
  assert (tok.pad_id, tok.eos_id, tok.vocab_size) == (0, 1, 259)
  for text in TEXTS + ['😀 unseen is fine']:
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert ids.tolist() == [b + 3 for b in text.encode('utf-8')]
    assert tok.decode([tok.eos_id, *ids]) == text


@pytest.mark.parametrize('kind', ['char', 'byte'])
def test_save_load_round_trip(kind, tmp_path):
  tok = _build(kind, tmp_path)
  loaded = load_tokenizer(str(tmp_path))
  assert loaded.vocab_size == tok.vocab_size
  for text in TEXTS:
    np.testing.assert_array_equal(loaded.encode(text), tok.encode(text))


@pytest.mark.parametrize('model_type', ['bpe', 'unigram'])
def test_sentencepiece_trains_saves_and_reloads(model_type, tmp_path):
  texts = _train_text()
  tok = _build('sentencepiece', tmp_path, texts, vocab_size=400, sp_model_type=model_type)
  assert (tok.pad_id, tok.eos_id, tok.vocab_size) == (0, 1, 400)
  sample = texts[3][:2000] + '\n\n  two  spaces\n'
  ids = tok.encode(sample)
  assert ids.dtype == np.int32 and 0 < len(ids) < len(sample)
  assert tokenizers.PAD_ID not in ids and tokenizers.EOS_ID not in ids
  assert tok.decode(ids) == sample
  loaded = load_tokenizer(str(tmp_path))
  np.testing.assert_array_equal(loaded.encode(sample), ids)
  assert loaded.decode([0, *ids, 1]) == sample


def test_sentencepiece_vocab_too_large_names_the_key(tmp_path):
  with pytest.raises(ValueError, match='config.data.vocab_size'):
    _build('sentencepiece', tmp_path, ['tiny text'], vocab_size=5000)


def test_build_reuses_saved_tokenizer_without_reading_texts(tmp_path):
  first = _build('char', tmp_path)

  def unreadable():
    raise AssertionError('the training texts were read again')
    yield

  again = _build('char', tmp_path, unreadable())
  assert again.vocab_size == first.vocab_size
  assert again.encode(TEXTS[1]).tolist() == first.encode(TEXTS[1]).tolist()


def test_build_refuses_a_different_saved_tokenizer(tmp_path):
  _build('char', tmp_path)
  with pytest.raises(ValueError, match='config.data.tokenizer'):
    _build('byte', tmp_path)


def test_unknown_kind_names_the_key_and_the_choices(tmp_path):
  with pytest.raises(ValueError, match=r"config.data.tokenizer='bpe'.*byte.*char.*pretrained.*sentencepiece"
                                       r".*wordpiece"):
    _build('bpe', tmp_path)


def test_load_without_tokenizer_is_a_clear_error(tmp_path):
  with pytest.raises(errors.DataError, match='cache_dir'):
    load_tokenizer(str(tmp_path))
