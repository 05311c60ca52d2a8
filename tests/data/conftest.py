"""Fixtures of the data tests: configs, the shared corpus file, and no network."""

import pathlib

import ml_collections
import pytest

SHARED_DATA = pathlib.Path(__file__).parents[2].parent / 'shared' / 'data'


def data_config(**overrides) -> ml_collections.ConfigDict:
  """A locked `data` config with every field the data layer reads."""
  cfg = ml_collections.ConfigDict(dict(
      dataset='embedded', text_key='text', train_split='train', eval_split='validation',
      files='', eval_fraction=0.1, data_dir='', manual_dir='', seq_len=32, tokenizer='char',
      vocab_size=300, sp_model_type='bpe', max_documents=0, cache_dir='', dataset_config='',
      text_b_key='', label_key='label', tokenizer_path='', mlm_probability=0.15, target_len=-1,
      source_key='source', target_key='target', task_prefix='', target_files=''))
  cfg.update(overrides)
  cfg.lock()
  return cfg


@pytest.fixture
def make_cfg():
  return data_config


@pytest.fixture(scope='session')
def shakespeare_file() -> pathlib.Path:
  path = SHARED_DATA / 'tiny_shakespeare.txt'
  if not path.exists():
    pytest.skip(f'{path} is absent (the shared Tiny Shakespeare copy used to test TFDS offline)')
  return path


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory) -> str:
  """One TFDS data_dir for the session, so each builder is prepared once."""
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture
def no_network(monkeypatch):
  """Fails every connection at once: TFDS downloads raise instead of retrying for minutes."""
  import socket

  def refuse(*args, **kwargs):
    raise OSError('network disabled in tests')

  monkeypatch.setattr(socket, 'create_connection', refuse)
  monkeypatch.setattr(socket, 'getaddrinfo', refuse)
  try:
    import requests
    from tensorflow_datasets.core.download import downloader
  except ImportError:
    return

  def offline(url, **kwargs):
    raise requests.exceptions.ConnectionError(f'network disabled in tests: {url}')

  monkeypatch.setattr(downloader, '_open_with_requests', offline)
