"""Where examples come from: a registry of sources by `config.data.dataset`.

A source is ``fn(data_cfg, split) -> Iterable[dict]`` yielding records in a fixed
order: ``{'text': str}`` for language modelling, ``{'text': str, 'label': int}`` or
``{'text', 'text_b', 'label'}`` for classification. `records(data_cfg, split)` serves
them checked; `documents(data_cfg, split)` serves the 'text' of each (what the 'lm'
pipeline packs). Built-in sources register themselves with `@register(name)`; a
name ending in ':' registers a prefix ('hf:' takes every 'hf:REPO'); any other name
is looked up in the TFDS catalog (imported only then).

* 'embedded': the interpreter's own documentation (see `embedded`); splits
  'train' and 'validation'; needs no network. Records {'text'}.
* 'files': `config.data.files`, comma-separated globs, files in sorted path order;
  each file is one record {'text'}, except that a file ending in ``.jsonl`` holds one
  JSON object per line, mapped to a record by `text_key` -> 'text', `text_b_key` ->
  'text_b' (when set) and `label_key` -> 'label' (when the file's first object has
  it; then every line must). A line that is not a JSON object or lacks a key is a
  DataError naming the file and the line. The split named `train_split` gets the
  files but the last ``ceil(eval_fraction * n)`` (at least one file stays in
  training); the split named `eval_split` gets those. A single file is split by its
  tail instead: the last ``round(eval_fraction * len)`` characters (or, for .jsonl,
  records) are the eval split. Bytes that are not UTF-8 are replaced with U+FFFD,
  and a warning names the file and the count.
* 'shuffled' (`shuffled`): sentences of the embedded corpus, labelled by whether
  their words are in written order; no network.
* 'hf:REPO' (`hf_datasets`): a Hugging Face dataset, from a local copy of its
  parquet files (`manual_dir`) or through the `datasets` library.
* a TFDS name ('tiny_shakespeare', 'lm1b', 'glue/sst2', 'imdb_reviews', ...):
  prepared into `data_dir`, read unshuffled; feature `text_key` decoded as UTF-8
  (invalid bytes replaced) is 'text', `text_b_key` (when set) 'text_b', and
  `label_key` 'label' when the dataset has that feature. When preparation fails
  (offline, no manual files) a `DatasetUnavailableError` says which directory to
  fill and to pass ``--config.data.manual_dir=DIR``.

Records with empty 'text' are skipped; `max_documents` > 0 keeps the first that
many; a split with no text left is a DataError naming the dataset and the split.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import itertools
import json
import logging
import math
import os
import socket
import sys
import threading
from typing import Any, Callable, Iterable, Iterator

from llm_jax import errors

Record = dict  # {'text': str} | {'text': str, 'label': int} | {'text', 'text_b', 'label'}
Source = Callable[[Any, str], Iterable[Record]]

_SOURCES: dict[str, Source] = {}
_PLUGINS = ('llm_jax.data.shuffled', 'llm_jax.data.hf_datasets')  # register themselves on import

_MANUAL_HINTS = {
    'tiny_shakespeare': 'the file must be named input.txt (it is '
                        'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/'
                        'tinyshakespeare/input.txt)',
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
  """The records of `split` of `data_cfg.dataset` with non-empty 'text', in a fixed order.

  The dataset name and any preparation are checked when this is called; the
  empty-split check happens when the returned iterator is exhausted.
  """
  return _checked(_source(data_cfg.dataset)(data_cfg, split), data_cfg, split)


def documents(data_cfg, split: str) -> Iterator[str]:
  """The 'text' of each of `records(data_cfg, split)`: what language modelling reads."""
  return (record['text'] for record in records(data_cfg, split))


def _checked(items: Iterable[Record], data_cfg, split: str) -> Iterator[Record]:
  items = (r for r in items if r['text'])
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


def _decode(data: bytes, origin: str) -> str:
  text = data.decode('utf-8', errors='replace')
  if '\ufffd' in text:
    replaced = text.count('\ufffd') - data.decode('utf-8', errors='ignore').count('\ufffd')
    if replaced:
      logging.getLogger(__name__).warning(
          '%s: %d invalid UTF-8 byte sequence(s) replaced with U+FFFD', origin, replaced)
  return text


def _read(path: str) -> str:
  with open(path, 'rb') as f:
    return _decode(f.read(), path)


def key_map(data_cfg) -> dict[str, str]:
  """{record field: the dataset's name for it} for the text fields: 'text' and, when
  config.data.text_b_key is set, 'text_b'."""
  keys = {'text': data_cfg.text_key}
  if data_cfg.text_b_key:
    keys['text_b'] = data_cfg.text_b_key
  return keys


def _jsonl(path: str, data_cfg) -> Iterator[Record]:
  """The records of a .jsonl file, one per non-blank line (contract in the module docstring)."""
  keys, label_key = key_map(data_cfg), data_cfg.label_key
  labelled = None
  with open(path, 'rb') as f:
    for number, raw in enumerate(f, 1):
      line = _decode(raw, f'{path} line {number}')
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise errors.DataError(f'{path} line {number} is not JSON ({e.msg}); a .jsonl file holds one JSON '
                               f'object per line.') from None
      if not isinstance(obj, dict):
        raise errors.DataError(f'{path} line {number} is a JSON {type(obj).__name__}, not an object; a .jsonl '
                               f'file holds one JSON object per line.')
      record = {}
      for field, key in keys.items():
        if not isinstance(obj.get(key), str):
          problem = 'has no key' if key not in obj else 'has a non-string value for'
          raise errors.DataError(f'{path} line {number} {problem} {key!r} (config.data.{field}_key); its keys '
                                 f'are {sorted(obj)}: set config.data.{field}_key to the field holding the text.')
        record[field] = obj[key]
      if labelled is None:
        labelled = label_key in obj
      if labelled:
        label = obj.get(label_key)
        if not isinstance(label, int) or isinstance(label, bool):
          problem = 'has no key' if label_key not in obj else 'has a non-integer value for'
          raise errors.DataError(f'{path} line {number} {problem} {label_key!r} (config.data.label_key), which '
                                 f'the file\'s first record has; every record needs an integer label.')
        record['label'] = label
      yield record


def _file_records(path: str, data_cfg) -> Iterator[Record]:
  if path.endswith('.jsonl'):
    return _jsonl(path, data_cfg)
  return iter([{'text': _read(path)}])


@register('files')
def _files(data_cfg, split: str) -> Iterable[Record]:
  patterns = [p.strip() for p in data_cfg.files.split(',') if p.strip()]
  paths = sorted({p for pattern in patterns
                  for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                  if os.path.isfile(p)})
  if not paths:
    raise errors.DataError(f'config.data.files={data_cfg.files!r} matched no files; give '
                     'comma-separated globs of text files (each file is one document).')
  fraction = data_cfg.eval_fraction
  if not 0 <= fraction < 1:
    raise errors.DataError(f'config.data.eval_fraction={fraction} must be in [0, 1).')
  if split not in (data_cfg.train_split, data_cfg.eval_split):
    raise errors.DataError(f'dataset files has the splits config.data.train_split='
                     f'{data_cfg.train_split!r} and eval_split={data_cfg.eval_split!r}, '
                     f'not {split!r}.')
  is_train = split == data_cfg.train_split
  if not is_train and fraction == 0:
    raise errors.DataError(f'config.data.eval_fraction=0 leaves no text for eval split {split!r} of '
                     "dataset files; set eval_fraction > 0 or config.data.eval_split=''.")
  if len(paths) == 1 and paths[0].endswith('.jsonl'):
    def cut_records() -> Iterator[Record]:
      items = list(_jsonl(paths[0], data_cfg))
      at = len(items) - round(fraction * len(items))
      yield from items[:at] if is_train else items[at:]
    return cut_records()
  if len(paths) == 1:
    def cut() -> Iterator[Record]:
      text = _read(paths[0])
      at = len(text) - round(fraction * len(text))
      yield {'text': text[:at] if is_train else text[at:]}
    return cut()
  n_eval = min(len(paths) - 1, math.ceil(fraction * len(paths)))
  chosen = paths[:len(paths) - n_eval] if is_train else paths[len(paths) - n_eval:]
  return (record for p in chosen for record in _file_records(p, data_cfg))


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
  keys = key_map(data_cfg)
  for field, key in keys.items():
    if key not in features:
      raise errors.DataError(f'config.data.{field}_key={key!r} is not a feature of TFDS dataset {name!r}; '
                       f'it has {sorted(features)}.')
  label_key = data_cfg.label_key if data_cfg.label_key in features else None
  try:
    ds = builder.as_dataset(split=split, shuffle_files=False)
  except (ValueError, KeyError) as e:
    raise errors.DataError(f'split {split!r} of TFDS dataset {name!r}: {e} (set '
                     'config.data.train_split / eval_split).') from e

  def record(example) -> Record:
    out = {field: _decode(example[key], f'{name}/{split}') for field, key in keys.items()}
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
    hint = _MANUAL_HINTS.get(name, 'see the dataset\'s TFDS catalog page for the file names')
    raise DatasetUnavailableError(
        f'TFDS dataset {name!r} could not be downloaded or prepared '
        f'({type(e).__name__}: {str(e)[:300]}). If this machine is offline, fetch its files '
        f'elsewhere, put them in a manual directory (now {where!r}) and pass '
        f'--config.data.manual_dir=DIR; {hint}.') from e
