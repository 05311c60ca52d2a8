"""Where examples come from: a registry of sources by `config.data.dataset`.

A source is ``fn(data_cfg, split) -> Iterable[dict]`` yielding records in a fixed
order: ``{'text': str}`` for language modelling, ``{'text': str, 'label': int}`` or
``{'text', 'text_b', 'label'}`` for classification, ``{'source': str, 'target': str}``
for sequence-to-sequence (the source without `task_prefix`, which the featurizer adds).
`records(data_cfg, split)` serves them checked; `documents(data_cfg, split)` serves
the 'text' of each (what the 'lm' pipeline packs). Built-in sources register
themselves with `@register(name)`; a name ending in ':' registers a prefix ('hf:'
takes every 'hf:REPO'); any other name is looked up in the TFDS catalog (imported
only then).

* 'embedded': the interpreter's own documentation (see `embedded`); splits
  'train' and 'validation'; needs no network. Records {'text'}.
* 'files' (`local_files`): `config.data.files`, comma-separated globs; each file is
  one record {'text'}, or a ``.jsonl`` file one record per line; the last files (or a
  single file's tail) are the eval split.
* 'pairs' (`pairs`): (source, target) pairs from local TSV files or aligned text files.
* 'shuffled' (`shuffled`): sentences of the embedded corpus, labelled by whether
  their words are in written order; no network.
* 'reverse_words', 'sort_words' (`string_tasks`): phrases of the embedded corpus
  paired with their words reversed or sorted; no network.
* 'hf:REPO' (`hf_datasets`): a Hugging Face dataset, from a local copy of its
  parquet files (`manual_dir`) or through the `datasets` library.
* a TFDS name ('tiny_shakespeare', 'lm1b', 'glue/sst2', 'imdb_reviews',
  'wmt14_translate/fr-en', ...): prepared into `data_dir`, read unshuffled. When
  the dataset has the features `source_key` and `target_key` (a translation
  dataset's are its languages: --config.data.source_key=en --config.data.target_key=fr)
  the records are pairs {'source', 'target'} of those features; otherwise feature
  `text_key` is 'text', `text_b_key` (when set) 'text_b', and `label_key` 'label'
  when the dataset has that feature. Text features are decoded as UTF-8, invalid
  bytes replaced. When preparation fails (offline, no manual files) a
  `DatasetUnavailableError` says which directory to fill, with which files where
  they are known (`_MANUAL_HINTS`), and to pass ``--config.data.manual_dir=DIR``.

Records with empty 'text' (or an empty 'source') are skipped; a pair with a source
but an empty 'target' is a DataError naming the dataset, the split and the
example's index among the source's records; `max_documents` > 0 keeps the first
that many; a split with no text left is a DataError naming the dataset and the split.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import os
import socket
import sys
import threading
from typing import Any, Callable, Iterable, Iterator

from llm_jax import errors

Record = dict  # {'text'} | {'text', 'label'} | {'text', 'text_b', 'label'} | {'source', 'target'}
Source = Callable[[Any, str], Iterable[Record]]

_SOURCES: dict[str, Source] = {}
_PLUGINS = ('llm_jax.data.local_files', 'llm_jax.data.pairs', 'llm_jax.data.shuffled',
            'llm_jax.data.string_tasks', 'llm_jax.data.hf_datasets')  # register themselves on import

_STATMT = {  # the archives TFDS's WMT builders download, by where they are published
    'europarl': 'http://www.statmt.org/wmt13/training-parallel-europarl-v7.tgz',
    'commoncrawl': 'http://www.statmt.org/wmt13/training-parallel-commoncrawl.tgz',
    'un': 'http://www.statmt.org/wmt13/training-parallel-un.tgz',
    'nc9': 'http://www.statmt.org/wmt14/training-parallel-nc-v9.tgz',
    'nc13': 'http://data.statmt.org/wmt18/translation-task/training-parallel-nc-v13.tgz',
    'gigafren': 'http://www.statmt.org/wmt10/training-giga-fren.tar',
    'dev': 'http://data.statmt.org/wmt19/translation-task/dev.tgz',
}
_WMT_FILES = {
    'wmt14_translate/fr-en': ('europarl', 'commoncrawl', 'un', 'nc9', 'gigafren', 'dev'),
    'wmt14_translate/de-en': ('europarl', 'commoncrawl', 'nc9', 'dev'),
    'wmt_t2t_translate/de-en': ('europarl', 'commoncrawl', 'nc13', 'dev'),
}


def _wmt_hint(parts: tuple[str, ...]) -> str:
  urls = [_STATMT[p] for p in parts]
  return ('TFDS prepares every split at once from statmt.org archives, so put all of them there under '
          f'their own file names ({", ".join(u.rsplit("/", 1)[1] for u in urls)}), fetched from '
          f'{" ".join(urls)}')


_MANUAL_HINTS = {
    'tiny_shakespeare': 'the file must be named input.txt (it is '
                        'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/'
                        'tinyshakespeare/input.txt)',
    **{name: _wmt_hint(parts) for name, parts in _WMT_FILES.items()},
}


class DatasetUnavailableError(errors.Error, RuntimeError):
  """A dataset that could not be downloaded or prepared (``python -m llm_jax.main``: exit 7)."""
  exit_code = errors.DATASET


def register(name: str) -> Callable[[Source], Source]:
  """Decorator: `fn(data_cfg, split) -> Iterable[Record]` becomes dataset `name` (a name
  ending in ':' serves every dataset name with that prefix)."""
  def wrap(fn: Source) -> Source:
    _SOURCES[name] = fn
    return fn
  return wrap


def _load_plugins() -> None:
  for module in _PLUGINS:
    importlib.import_module(module)


def names() -> tuple[str, ...]:
  """The built-in source names (any TFDS text dataset name works as well)."""
  _load_plugins()
  return tuple(sorted(_SOURCES))


def _source(name: str) -> Source:
  _load_plugins()
  if name in _SOURCES:
    return _SOURCES[name]
  if ':' in name:
    prefix = name.split(':', 1)[0] + ':'
    if prefix in _SOURCES:
      return _SOURCES[prefix]
  return _tfds_records


def records(data_cfg, split: str) -> Iterator[Record]:
  """The records of `split` of `data_cfg.dataset` with non-empty 'text' (or 'source'), in a fixed order.

  The dataset name and any preparation are checked when this is called; the
  empty-split check happens when the returned iterator is exhausted.
  """
  return _checked(_source(data_cfg.dataset)(data_cfg, split), data_cfg, split)


def is_pair(record: Record) -> bool:
  """Whether ``record`` is a (source, target) pair rather than text."""
  return 'source' in record


def documents(data_cfg, split: str) -> Iterator[str]:
  """The 'text' of each of `records(data_cfg, split)`: what language modelling reads."""
  def texts(items: Iterator[Record]) -> Iterator[str]:
    for record in items:
      if is_pair(record):
        raise errors.DataError(f'config.data.dataset={data_cfg.dataset!r} holds (source, target) pairs, not the '
                               'text that language modelling reads; train it with '
                               '--config.model.kind=encoder_decoder, or use a text dataset.')
      yield record['text']
  return texts(records(data_cfg, split))


def _non_empty(items: Iterable[Record], data_cfg, split: str) -> Iterator[Record]:
  for index, record in enumerate(items):
    if not is_pair(record):
      if record['text']:
        yield record
    elif record['source']:
      if not record['target']:
        raise errors.DataError(f'config.data.dataset={data_cfg.dataset!r} split {split!r} example {index} has '
                               'an empty target; every source needs its target text (fix or drop that pair).')
      yield record


def _checked(items: Iterable[Record], data_cfg, split: str) -> Iterator[Record]:
  items = _non_empty(items, data_cfg, split)
  if data_cfg.max_documents > 0:
    items = itertools.islice(items, data_cfg.max_documents)
  empty = True
  for record in items:
    empty = False
    yield record
  if empty:
    raise errors.DataError(f'config.data.dataset={data_cfg.dataset!r} split {split!r} has no text '
                     '(no documents, or all empty).')


@register('embedded')
def _embedded(data_cfg, split: str) -> Iterable[Record]:
  from llm_jax.data import embedded
  return ({'text': text} for text in embedded.documents(split))


def decode(data: bytes, origin: str) -> str:
  """``data`` as UTF-8, invalid bytes replaced with U+FFFD; a warning names ``origin`` and the count."""
  text = data.decode('utf-8', errors='replace')
  if '\ufffd' in text:
    replaced = text.count('\ufffd') - data.decode('utf-8', errors='ignore').count('\ufffd')
    if replaced:
      logging.getLogger(__name__).warning(
          '%s: %d invalid UTF-8 byte sequence(s) replaced with U+FFFD', origin, replaced)
  return text


def key_map(data_cfg) -> dict[str, str]:
  """{record field: the dataset's name for it} for the text fields: 'text' and, when
  config.data.text_b_key is set, 'text_b'."""
  keys = {'text': data_cfg.text_key}
  if data_cfg.text_b_key:
    keys['text_b'] = data_cfg.text_b_key
  return keys


def _tfds_records(data_cfg, split: str) -> Iterable[Record]:
  name = data_cfg.dataset
  try:
    import tensorflow_datasets as tfds
    import tensorflow  # noqa: F401  (TFDS reads and prepares its datasets with it)
  except ImportError as e:
    raise errors.ConfigError(
        f'config.data.dataset={name!r} is not a built-in source ({", ".join(names())}), so it is looked up '
        f'in TFDS, which is not installed ({e}); install it with pip install -e \'.[tfds]\' (or '
        f'\'llm_jax[tfds]\'), or use --config.data.dataset=embedded or files.') from None
  try:
    builder = tfds.builder(name, data_dir=data_cfg.data_dir or None)
  except tfds.core.DatasetNotFoundError:
    raise errors.DataError(f'config.data.dataset={name!r} is unknown: use one of {names()} or any '
                     "TFDS text dataset (e.g. 'tiny_shakespeare', 'lm1b').") from None
  _prepare(builder, data_cfg, tfds)
  features = builder.info.features
  pair = data_cfg.source_key in features and data_cfg.target_key in features
  keys = ({'source': data_cfg.source_key, 'target': data_cfg.target_key} if pair else key_map(data_cfg))
  for field, key in keys.items():
    if key not in features:
      raise errors.DataError(f'config.data.{field}_key={key!r} is not a feature of TFDS dataset {name!r}; '
                       f'it has {sorted(features)} (a translation dataset: set config.data.source_key and '
                       'target_key to two of its languages).')
  label_key = data_cfg.label_key if data_cfg.label_key in features and not pair else None
  try:
    ds = builder.as_dataset(split=split, shuffle_files=False)
  except (ValueError, KeyError) as e:
    raise errors.DataError(f'split {split!r} of TFDS dataset {name!r}: {e} (set '
                     'config.data.train_split / eval_split).') from e

  def record(example) -> Record:
    out = {field: decode(example[key], f'{name}/{split}') for field, key in keys.items()}
    if label_key:
      out['label'] = int(example[label_key])
    return out
  return (record(ex) for ex in tfds.as_numpy(ds))


# TFDS's own bucket: if its name does not resolve (and no proxy is set) the machine is offline.
PROBE_HOST = 'storage.googleapis.com'
_PROXY_VARIABLES = ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'ALL_PROXY', 'all_proxy')


def looks_offline(host: str = PROBE_HOST, timeout: float = 5.0) -> bool:
  """True when ``host`` does not resolve within ``timeout`` s and no proxy variable is set.

  Behind a proxy name resolution says nothing about reaching the internet, so then this
  is always False.
  """
  if any(os.environ.get(v) for v in _PROXY_VARIABLES):
    return False
  answer = []

  def resolve():
    try:
      socket.getaddrinfo(host, 443)
      answer.append(True)
    except OSError:
      answer.append(False)

  probe = threading.Thread(target=resolve, daemon=True)
  probe.start()
  probe.join(timeout)
  return not (answer and answer[0])


@contextlib.contextmanager
def _download_retries(retries: int):
  """TFDS's downloader retries each URL 10 times with exponential backoff (about 3.5
  minutes when every attempt fails at once); within this block it tries ``retries`` times."""
  from tensorflow_datasets.core.download import downloader  # the caller has imported TFDS
  before = getattr(downloader, 'MAX_RETRIES', None)  # a TFDS without it: nothing to lower
  if before is not None:
    downloader.MAX_RETRIES = retries
  try:
    yield
  finally:
    if before is not None:
      downloader.MAX_RETRIES = before


def _prepare(builder, data_cfg, tfds) -> None:
  """download_and_prepare, turning a failure into advice on the manual directory.

  Offline (``looks_offline``) the download is tried once, without TFDS's retries, so the
  advice comes in seconds instead of minutes; a host that still answers (an internal
  mirror) is downloaded from as usual.
  """
  manual_dir = data_cfg.manual_dir or None
  offline = False
  if not manual_dir and not builder.is_prepared():
    offline = looks_offline()
    if offline:
      print(f'[llm_jax] {PROBE_HOST} does not resolve: this machine looks offline. Trying the '
            f'download of TFDS dataset {data_cfg.dataset!r} once, without retries; if it fails, pass '
            '--config.data.manual_dir=DIR.', file=sys.stderr, flush=True)
    else:
      # Without network TFDS's downloader retries for minutes before it fails: say so first.
      print(f'[llm_jax] downloading and preparing TFDS dataset {data_cfg.dataset!r} into '
            f'{builder.data_dir_root}; on a machine without network this fails after TFDS\'s '
            'retries (a few minutes): stop it and pass --config.data.manual_dir=DIR instead.',
            file=sys.stderr, flush=True)
  try:
    with _download_retries(0) if offline else contextlib.nullcontext():
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except Exception as e:  # offline, missing manual files, a dead URL: all end the same way
    name = data_cfg.dataset
    where = manual_dir or os.path.join(builder.data_dir_root, 'downloads', 'manual')
    hint = _MANUAL_HINTS.get(name.split(':')[0], 'see the dataset\'s TFDS catalog page for the file names')
    raise DatasetUnavailableError(
        f'TFDS dataset {name!r} could not be downloaded or prepared '
        f'({type(e).__name__}: {str(e)[:300]}). If this machine is offline, fetch its files '
        f'elsewhere, put them in a manual directory (now {where!r}) and pass '
        f'--config.data.manual_dir=DIR; {hint}.') from e
