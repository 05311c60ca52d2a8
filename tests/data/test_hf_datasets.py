"""'hf:REPO': a local copy in the Hub's parquet layout, the offline message, no TensorFlow on the way."""

import json
import pathlib
import subprocess
import sys

import pytest

from llm_jax import errors
from llm_jax.data import hf_datasets, sources

pa = pytest.importorskip('pyarrow')
pq = pytest.importorskip('pyarrow.parquet')

WIKITEXT = 'wikitext-103-raw-v1'
ROWS = {  # Wikitext's rows are lines: headings, paragraphs, blank rows
    'train-00000-of-00002': ['', ' = Valkyria Chronicles III = \n', '', ' Senjō no Valkyria 3 is a game . \n'],
    'train-00001-of-00002': [' It met with positive sales in Japan . \n', ' \n', 'two\nlines \n'],
    'validation-00000-of-00001': ['', ' = Robert Boulter = \n', ' Robert Boulter is an actor . \n'],
}


@pytest.fixture
def manual_dir(tmp_path) -> pathlib.Path:
  root = tmp_path / 'manual'
  (root / WIKITEXT).mkdir(parents=True)
  for name, rows in ROWS.items():
    pq.write_table(pa.table({'text': rows}), root / WIKITEXT / f'{name}.parquet')
  return root


def _cfg(make_cfg, **overrides):
  return make_cfg(dataset='hf:Salesforce/wikitext', dataset_config=WIKITEXT, **overrides)


def test_manual_dir_in_the_hub_layout_gives_one_record_per_non_empty_line(make_cfg, manual_dir):
  cfg = _cfg(make_cfg, manual_dir=str(manual_dir))
  lines = lambda names: [{'text': line} for n in names for row in ROWS[n] for line in row.split('\n')
                         if line.strip()]
  assert list(sources.records(cfg, 'train')) == lines(['train-00000-of-00002', 'train-00001-of-00002'])
  assert list(sources.records(cfg, 'validation')) == lines(['validation-00000-of-00001'])
  assert list(sources.records(cfg, 'train'))[-2:] == [{'text': 'two'}, {'text': 'lines '}]


def test_a_label_column_gives_one_record_per_row(make_cfg, tmp_path):
  (tmp_path / 'sst2').mkdir()
  pq.write_table(pa.table({'sentence': ['good film', 'bad\nfilm'], 'label': [1, 0], 'idx': [0, 1]}),
                 tmp_path / 'sst2' / 'train-00000-of-00001.parquet')
  cfg = make_cfg(dataset='hf:nyu-mll/glue', dataset_config='sst2', manual_dir=str(tmp_path), text_key='sentence')
  assert list(sources.records(cfg, 'train')) == [{'text': 'good film', 'label': 1}, {'text': 'bad\nfilm', 'label': 0}]
  with pytest.raises(errors.DataError, match=r"config.data.text_b_key='question'.*\['sentence', 'label', 'idx'\]"):
    list(sources.records(make_cfg(dataset='hf:nyu-mll/glue', dataset_config='sst2', manual_dir=str(tmp_path),
                                  text_key='sentence', text_b_key='question'), 'train'))


def test_a_manual_dir_without_the_split_names_the_layout(make_cfg, manual_dir):
  with pytest.raises(sources.DatasetUnavailableError) as info:
    sources.records(_cfg(make_cfg, manual_dir=str(manual_dir)), 'test')
  assert str(manual_dir / WIKITEXT / 'test-*.parquet') in str(info.value)


def test_offline_without_manual_dir_fails_at_once_naming_the_layout(make_cfg, monkeypatch):
  import socket
  import time
  pytest.importorskip('datasets')
  for name in ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'ALL_PROXY', 'all_proxy'):
    monkeypatch.delenv(name, raising=False)

  def refuse(*args, **kwargs):  # as tests/faults/driver.py's offline machine
    raise socket.gaierror(socket.EAI_NONAME, 'Name or service not known')
  monkeypatch.setattr(socket, 'getaddrinfo', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)
  start = time.perf_counter()
  with pytest.raises(sources.DatasetUnavailableError) as info:
    sources.records(_cfg(make_cfg), 'train')
  assert time.perf_counter() - start < 10
  message = str(info.value)
  assert info.value.exit_code == errors.DATASET and '\n' not in message
  assert 'huggingface.co does not resolve' in message and '--config.data.manual_dir=DIR' in message
  assert f'DIR/{WIKITEXT}/train-*.parquet' in message


def test_without_the_datasets_library_it_names_the_extra(make_cfg, monkeypatch):
  monkeypatch.setitem(sys.modules, 'datasets', None)
  with pytest.raises(errors.ConfigError, match=r"pip install -e '\.\[hf\]'"):
    sources.records(_cfg(make_cfg), 'train')


def test_an_empty_repository_name_is_a_config_error(make_cfg):
  with pytest.raises(errors.ConfigError, match='hf:OWNER/NAME'):
    sources.records(make_cfg(dataset='hf:'), 'train')


_NO_TENSORFLOW = """
import json, sys
sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None
from tests.data.conftest import data_config
from llm_jax.data import sources
cfg = data_config(**json.loads(sys.argv[1]))
print(json.dumps([r['text'] for r in sources.records(cfg, 'validation')]))
assert 'datasets' not in sys.modules, 'the manual path needs no datasets library'
"""


def test_the_manual_path_imports_no_tensorflow(make_cfg, manual_dir):
  overrides = {'dataset': 'hf:Salesforce/wikitext', 'dataset_config': WIKITEXT, 'manual_dir': str(manual_dir)}
  run = subprocess.run([sys.executable, '-c', _NO_TENSORFLOW, json.dumps(overrides)], capture_output=True,
                       text=True, cwd=pathlib.Path(__file__).parents[2])
  assert run.returncode == 0, run.stderr[-2000:]
  assert json.loads(run.stdout) == [' = Robert Boulter = ', ' Robert Boulter is an actor . ']
  assert hf_datasets.layout(_cfg(make_cfg), 'train', 'DIR') == f'DIR/{WIKITEXT}/train-*.parquet'


def test_source_and_target_columns_or_a_translation_column_give_pairs(make_cfg, tmp_path):
  (tmp_path / 'flat').mkdir()
  pq.write_table(pa.table({'question': ['q one', 'q two'], 'answer': ['a one', 'a two'], 'id': [0, 1]}),
                 tmp_path / 'flat' / 'train-00000-of-00001.parquet')
  flat = make_cfg(dataset='hf:me/qa', dataset_config='flat', manual_dir=str(tmp_path), source_key='question',
                  target_key='answer')
  assert list(sources.records(flat, 'train')) == [{'source': 'q one', 'target': 'a one'},
                                                  {'source': 'q two', 'target': 'a two'}]
  (tmp_path / 'de-en').mkdir()
  rows = [{'de': 'Hallo', 'en': 'hello'}, {'de': 'Welt', 'en': 'world'}]
  pq.write_table(pa.table({'translation': rows}), tmp_path / 'de-en' / 'validation-00000-of-00001.parquet')
  wmt = dict(dataset='hf:wmt/wmt14', dataset_config='de-en', manual_dir=str(tmp_path))
  assert list(sources.records(make_cfg(**wmt, source_key='en', target_key='de'), 'validation')) == [
      {'source': 'hello', 'target': 'Hallo'}, {'source': 'world', 'target': 'Welt'}]
  with pytest.raises(errors.DataError, match=r"'translation' column .* languages \['de', 'en'\], not "
                                             r"config.data.source_key='source'"):
    list(sources.records(make_cfg(**wmt), 'validation'))
