"""Text sources: the embedded corpus, TFDS offline through manual_dir, local files."""

import hashlib
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from llm_jax import errors
from llm_jax.data import embedded, sources


def _texts(cfg, split):
  return list(sources.documents(cfg, split))


def _digest(docs) -> str:
  return hashlib.sha256(json.dumps(docs).encode()).hexdigest()


def test_embedded_corpus_is_deterministic_across_processes():
  code = ('import hashlib, json; from llm_jax.data import embedded; '
          'print(hashlib.sha256(json.dumps(embedded.corpus()).encode()).hexdigest())')
  other = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                         env={**os.environ, 'PYTHONHASHSEED': '12345'},
                         cwd=pathlib.Path(__file__).parents[2]).stdout.strip()
  assert _digest(embedded.corpus()) == other


def test_embedded_splits_are_disjoint_non_empty_and_sized():
  train = list(embedded.split_documents('train'))
  valid = list(embedded.split_documents('validation'))
  assert train and valid
  assert not {n for n, _ in train} & {n for n, _ in valid}
  assert len(train) + len(valid) == len(embedded.corpus())
  chars = sum(len(t) for _, t in embedded.corpus())
  assert 500_000 < chars <= embedded.MAX_CHARS
  assert 0.01 < len(valid) / (len(train) + len(valid)) < 0.12
  assert any(n.startswith('topics/') for n, _ in train)
  assert any(n.startswith('stdlib/') for n, _ in train)
  names = [n for n, _ in embedded.corpus()]
  assert not any('.test.' in n or 'idlelib' in n for n in names)


def test_embedded_tfds_builder_and_plain_path_give_the_same_texts(tfds_dir):
  pytest.importorskip('tensorflow_datasets')
  import tensorflow_datasets as tfds
  from llm_jax.data import embedded_tfds  # noqa: F401  (registers python_docs)
  builder = tfds.builder('python_docs', data_dir=tfds_dir)
  assert set(builder.info.features) == {'name', 'text'}
  for split in embedded.SPLITS:
    via_tfds = list(embedded.documents(split, data_dir=tfds_dir, use_tfds=True))
    plain = list(embedded.documents(split, use_tfds=False))
    assert via_tfds == plain
    assert via_tfds == [t for n, t in embedded.corpus() if embedded.split_of(n) == split]


def test_embedded_unknown_split(make_cfg):
  with pytest.raises(ValueError, match="'test'"):
    _texts(make_cfg(), 'test')


def test_tiny_shakespeare_offline_from_manual_dir(make_cfg, shakespeare_file, tmp_path,
                                                   tfds_dir, no_network):
  pytest.importorskip('tensorflow_datasets')
  manual = tmp_path / 'manual'
  manual.mkdir()
  shutil.copy(shakespeare_file, manual / 'input.txt')
  cfg = make_cfg(dataset='tiny_shakespeare', data_dir=tfds_dir, manual_dir=str(manual))
  text = shakespeare_file.read_text('utf-8')
  [train] = _texts(cfg, 'train')
  [valid] = _texts(cfg, 'validation')
  assert text.startswith(train) and 0.85 < len(train) / len(text) < 0.95
  assert text[len(train):].startswith(valid) and len(valid) > 10_000


def test_missing_dataset_offline_names_the_manual_dir(make_cfg, tmp_path, no_network):
  pytest.importorskip('tensorflow_datasets')
  (tmp_path / 'manual').mkdir()
  cfg = make_cfg(dataset='tiny_shakespeare', data_dir=str(tmp_path / 'empty_data'),
                 manual_dir=str(tmp_path / 'manual'))
  with pytest.raises(sources.DatasetUnavailableError) as info:
    _texts(cfg, 'train')
  message = str(info.value)
  assert 'could not be downloaded' in message
  assert '--config.data.manual_dir=DIR' in message and str(tmp_path / 'manual') in message
  assert 'input.txt' in message


def test_download_without_manual_dir_says_what_happens_first(make_cfg, tmp_path, no_network, capsys):
  """Offline, a line before the download names manual_dir; the error repeats it."""
  pytest.importorskip('tensorflow_datasets')
  cfg = make_cfg(dataset='tiny_shakespeare', data_dir=str(tmp_path / 'empty_data'))
  with pytest.raises(sources.DatasetUnavailableError, match='--config.data.manual_dir=DIR'):
    _texts(cfg, 'train')
  err = capsys.readouterr().err
  assert 'storage.googleapis.com does not resolve: this machine looks offline' in err
  assert "download of TFDS dataset 'tiny_shakespeare' once, without retries" in err
  assert '--config.data.manual_dir=DIR' in err


class _Builder:
  """A TFDS builder stand-in whose download records TFDS's retry count, then fails."""
  data_dir_root = '/nonexistent'

  def __init__(self):
    self.retries = []

  def is_prepared(self):
    return False

  def download_and_prepare(self, download_config):
    from tensorflow_datasets.core.download import downloader
    self.retries.append(downloader.MAX_RETRIES)
    raise ConnectionError('no route')


@pytest.mark.parametrize('online', [False, True])
def test_offline_downloads_once_online_keeps_tfds_retries(make_cfg, monkeypatch, capsys, online):
  tfds = pytest.importorskip('tensorflow_datasets')
  from tensorflow_datasets.core.download import downloader
  default = downloader.MAX_RETRIES
  monkeypatch.setattr(sources, 'looks_offline', lambda: not online)
  builder = _Builder()
  with pytest.raises(sources.DatasetUnavailableError, match='could not be downloaded'):
    sources._prepare(builder, make_cfg(dataset='tiny_shakespeare'), tfds)
  assert builder.retries == [default if online else 0] and downloader.MAX_RETRIES == default
  err = capsys.readouterr().err
  assert ('retries (a few minutes)' in err) == online and ('looks offline' in err) == (not online)


def test_looks_offline_resolves_the_probe_host_unless_a_proxy_is_set(monkeypatch):
  import socket
  import time
  for name in ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'ALL_PROXY', 'all_proxy'):
    monkeypatch.delenv(name, raising=False)
  asked = []
  monkeypatch.setattr(socket, 'getaddrinfo', lambda host, port: asked.append(host) or [('addr',)])
  assert not sources.looks_offline() and asked == [sources.PROBE_HOST]

  def fail(host, port):
    raise socket.gaierror(-2, 'Name or service not known')
  monkeypatch.setattr(socket, 'getaddrinfo', fail)
  assert sources.looks_offline()
  monkeypatch.setattr(socket, 'getaddrinfo', lambda host, port: time.sleep(2.0))
  assert sources.looks_offline(timeout=0.1)  # no answer in time counts as offline
  monkeypatch.setattr(socket, 'getaddrinfo', fail)
  monkeypatch.setenv('https_proxy', 'http://proxy:3128')
  assert not sources.looks_offline()  # behind a proxy DNS says nothing


def test_unknown_dataset_names_the_key_and_the_choices(make_cfg, no_network):
  with pytest.raises(ValueError, match=r"config.data.dataset='no_such_corpus'.*embedded.*files.*TFDS"):
    _texts(make_cfg(dataset='no_such_corpus'), 'train')


def test_tfds_wrong_text_key_lists_the_features(make_cfg, shakespeare_file, tmp_path, tfds_dir,
                                                no_network):
  pytest.importorskip('tensorflow_datasets')
  manual = tmp_path / 'manual'
  manual.mkdir()
  shutil.copy(shakespeare_file, manual / 'input.txt')
  cfg = make_cfg(dataset='tiny_shakespeare', data_dir=tfds_dir, manual_dir=str(manual),
                 text_key='content')
  with pytest.raises(ValueError, match=r"config.data.text_key='content'.*\['text'\]"):
    _texts(cfg, 'train')


def test_files_non_utf8_bytes_are_replaced_with_a_warning(make_cfg, tmp_path, caplog):
  (tmp_path / 'a.txt').write_bytes(b'caf\xe9 ok \xff\xfe end \xef\xbf\xbd kept\n')
  (tmp_path / 'b.txt').write_text('second document\n')
  cfg = make_cfg(dataset='files', files=str(tmp_path / '*.txt'), eval_fraction=0.5)
  with caplog.at_level(logging.WARNING):
    [train] = _texts(cfg, 'train')
  assert train == 'caf\ufffd ok \ufffd\ufffd end \ufffd kept\n'
  [record] = [r for r in caplog.records if 'a.txt' in r.getMessage()]
  assert record.levelno == logging.WARNING and ' 3 invalid' in record.getMessage()
  assert _texts(cfg, 'validation') == ['second document\n']


def test_files_hold_out_the_last_files_deterministically(make_cfg, tmp_path):
  for i in range(10):
    (tmp_path / f'doc{i}.txt').write_text(f'document {i}')
  cfg = make_cfg(dataset='files', files=f'{tmp_path}/doc[0-4].txt, {tmp_path}/doc[5-9].txt',
                 eval_fraction=0.25)
  assert _texts(cfg, 'train') == [f'document {i}' for i in range(7)]
  assert _texts(cfg, 'validation') == [f'document {i}' for i in range(7, 10)]
  capped = make_cfg(dataset='files', files=f'{tmp_path}/*.txt', eval_fraction=0.25,
                    max_documents=2)
  assert _texts(capped, 'train') == ['document 0', 'document 1']


def test_one_file_is_split_by_its_tail_characters(make_cfg, tmp_path):
  text = ''.join(chr(ord('a') + i % 26) for i in range(1000))
  (tmp_path / 'one.txt').write_text(text)
  cfg = make_cfg(dataset='files', files=str(tmp_path / 'one.txt'), eval_fraction=0.1)
  assert _texts(cfg, 'train') == [text[:900]]
  assert _texts(cfg, 'validation') == [text[900:]]


def test_files_without_match_name_the_key(make_cfg, tmp_path):
  with pytest.raises(ValueError, match='config.data.files'):
    _texts(make_cfg(dataset='files', files=str(tmp_path / 'nothing*.txt')), 'train')


def test_empty_text_names_dataset_and_split(make_cfg, tmp_path):
  (tmp_path / 'a.txt').write_text('')
  (tmp_path / 'b.txt').write_text('')
  cfg = make_cfg(dataset='files', files=str(tmp_path / '*.txt'), eval_fraction=0.0)
  with pytest.raises(ValueError, match=r"config.data.dataset='files' split 'train' has no text"):
    _texts(cfg, 'train')


# ---- records -------------------------------------------------------------------------------------


def _records(cfg, split):
  return list(sources.records(cfg, split))


def _jsonl(path, rows):
  path.write_text(''.join((r if isinstance(r, str) else json.dumps(r)) + '\n' for r in rows))


def test_sources_yield_records_and_documents_are_their_texts(make_cfg):
  records = _records(make_cfg(), 'validation')
  assert all(set(r) == {'text'} for r in records)
  assert [r['text'] for r in records] == list(embedded.documents('validation'))


def test_jsonl_lines_map_the_configured_keys(make_cfg, tmp_path):
  _jsonl(tmp_path / 'a.jsonl', [{'sentence1': f'first {i}', 'sentence2': f'second {i}', 'gold': i % 3, 'x': 0}
                                for i in range(5)] + [''])
  (tmp_path / 'b.txt').write_text('a plain file is one record')
  cfg = make_cfg(dataset='files', files=str(tmp_path / '*'), eval_fraction=0.5, text_key='sentence1',
                 text_b_key='sentence2', label_key='gold')
  assert _records(cfg, 'train') == [{'text': f'first {i}', 'text_b': f'second {i}', 'label': i % 3}
                                    for i in range(5)]
  assert _records(cfg, 'validation') == [{'text': 'a plain file is one record'}]
  assert _texts(cfg, 'train') == [f'first {i}' for i in range(5)]


def test_one_jsonl_file_is_split_by_its_last_records(make_cfg, tmp_path):
  _jsonl(tmp_path / 'only.jsonl', [{'text': f'line {i}'} for i in range(10)])
  cfg = make_cfg(dataset='files', files=str(tmp_path / 'only.jsonl'), eval_fraction=0.2)
  assert _records(cfg, 'train') == [{'text': f'line {i}'} for i in range(8)]  # no label key: no labels
  assert _records(cfg, 'validation') == [{'text': f'line {i}'} for i in (8, 9)]


@pytest.mark.parametrize('line, problem', [
    ('{"text": "ok", "label": 1', 'is not JSON'),
    ('["text", 1]', 'not an object'),
    ('{"body": "no text key", "label": 1}', "has no key 'text' (config.data.text_key)"),
    ('{"text": "no label"}', "has no key 'label' (config.data.label_key)"),
    ('{"text": "a float label", "label": 0.5}', "non-integer value for 'label'"),
])
def test_a_bad_jsonl_line_names_the_file_and_the_line(make_cfg, tmp_path, line, problem):
  _jsonl(tmp_path / 'data.jsonl', [{'text': 'fine', 'label': 0}, '', line])
  cfg = make_cfg(dataset='files', files=str(tmp_path / 'data.jsonl'), eval_fraction=0.0)
  with pytest.raises(errors.DataError) as info:
    _records(cfg, 'train')
  message = str(info.value)
  assert f'{tmp_path / "data.jsonl"} line 3' in message and problem in message and '\n' not in message


class _FakeTFDSBuilder:
  """A prepared TFDS builder with GLUE/SST-2's features."""

  class info:
    features = {'sentence': None, 'label': None, 'idx': None}

  def is_prepared(self):
    return True

  def download_and_prepare(self, download_config=None):
    pass

  def as_dataset(self, split, shuffle_files):
    return [{'sentence': b'a fine film', 'label': 1, 'idx': 0}, {'sentence': b'caf\xe9 bad', 'label': 0, 'idx': 1}]


def test_tfds_features_map_to_records(make_cfg, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  monkeypatch.setattr(tfds, 'builder', lambda name, data_dir=None: _FakeTFDSBuilder())
  monkeypatch.setattr(tfds, 'as_numpy', lambda ds: ds)
  cfg = make_cfg(dataset='glue/sst2', text_key='sentence')
  assert _records(cfg, 'train') == [{'text': 'a fine film', 'label': 1}, {'text': 'caf\ufffd bad', 'label': 0}]
  with pytest.raises(errors.DataError, match=r"config.data.text_b_key='question'.*\['idx', 'label', 'sentence'\]"):
    _records(make_cfg(dataset='glue/sst2', text_key='sentence', text_b_key='question'), 'train')
  no_labels = make_cfg(dataset='glue/sst2', text_key='sentence', label_key='score')
  assert _records(no_labels, 'train')[0] == {'text': 'a fine film'}


# ---- (source, target) pairs from TFDS ------------------------------------------------------------


class _FakeTranslation(_FakeTFDSBuilder):
  """A prepared TFDS builder with the features of WMT's de-en (its languages)."""

  class info:
    features = {'de': None, 'en': None}

  def as_dataset(self, split, shuffle_files):
    return [{'de': b'Hallo Welt', 'en': b'hello world'}, {'de': b'x', 'en': b''}, {'de': b'', 'en': b'good'}]


def test_tfds_languages_as_source_and_target_give_pairs(make_cfg, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  monkeypatch.setattr(tfds, 'builder', lambda name, data_dir=None: _FakeTranslation())
  monkeypatch.setattr(tfds, 'as_numpy', lambda ds: ds)
  en_de = sources.records(make_cfg(dataset='wmt14_translate/de-en', source_key='en', target_key='de'), 'train')
  assert next(en_de) == {'source': 'hello world', 'target': 'Hallo Welt'}  # the empty source is skipped
  with pytest.raises(errors.DataError) as info:
    next(en_de)
  assert str(info.value).startswith("config.data.dataset='wmt14_translate/de-en' split 'train' example 2 has an "
                                    'empty target')
  de_en = sources.records(make_cfg(dataset='wmt14_translate/de-en', source_key='de', target_key='en'), 'validation')
  assert next(de_en) == {'source': 'Hallo Welt', 'target': 'hello world'}
  with pytest.raises(errors.DataError, match="split 'validation' example 1 has an empty target"):
    next(de_en)
  one_side = make_cfg(dataset='wmt14_translate/de-en', text_key='en')  # the default source/target keys: text
  assert _texts(one_side, 'train') == ['hello world', 'good']
  with pytest.raises(errors.DataError, match=r"text_key='text'.*\['de', 'en'\].*source_key and target_key"):
    _texts(make_cfg(dataset='wmt14_translate/de-en'), 'train')


def test_documents_of_pairs_is_an_error_naming_the_kind(make_cfg, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  monkeypatch.setattr(tfds, 'builder', lambda name, data_dir=None: _FakeTranslation())
  monkeypatch.setattr(tfds, 'as_numpy', lambda ds: ds)
  with pytest.raises(errors.DataError, match=r'holds \(source, target\) pairs.*kind=encoder_decoder'):
    _texts(make_cfg(dataset='wmt14_translate/de-en', source_key='en', target_key='de'), 'train')


@pytest.mark.parametrize('name', sorted(sources._WMT_FILES))
def test_wmt_hints_name_every_archive_tfds_downloads_by_its_manual_file_name(name, tmp_path):
  """Against TFDS's own tables: the sub-datasets of each split and their registered checksums."""
  import re
  tfds = pytest.importorskip('tensorflow_datasets')
  from tensorflow_datasets.core.download import checksums
  from tensorflow_datasets.translate import wmt
  builder = tfds.builder(name, data_dir=str(tmp_path))
  language = builder.builder_config.language_pair[0]
  urls = {url for names in builder.subsets.values() for subset in names
          for url in wmt.DATASET_MAP[subset].get_url(language)}
  hint = sources._MANUAL_HINTS[name]
  assert set(re.findall(r'https?://\S+', hint)) == urls
  registered = checksums.get_all_url_infos()
  for url in urls:  # TFDS finds a download in manual_dir under this file name
    assert registered[url].filename in hint


def test_wmt_offline_fails_fast_naming_the_archives(make_cfg, tmp_path, no_network):
  pytest.importorskip('tensorflow_datasets')
  manual = tmp_path / 'manual'
  manual.mkdir()
  cfg = make_cfg(dataset='wmt14_translate/de-en', data_dir=str(tmp_path / 'data'), manual_dir=str(manual),
                 source_key='en', target_key='de')
  with pytest.raises(sources.DatasetUnavailableError) as info:
    sources.records(cfg, 'train')
  message = str(info.value)
  assert "TFDS dataset 'wmt14_translate/de-en' could not be downloaded" in message
  assert str(manual) in message and '--config.data.manual_dir=DIR' in message
  for archive in ('training-parallel-europarl-v7.tgz', 'training-parallel-commoncrawl.tgz',
                  'training-parallel-nc-v9.tgz', 'dev.tgz'):
    assert archive in message
