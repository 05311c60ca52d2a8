"""Where raw text comes from: a registry of sources by `config.data.dataset`.

`documents(data_cfg, split)` yields the non-empty texts of one split in a
deterministic order. Built-in sources register themselves with `@register(name)`;
any other name is looked up in the TFDS catalog (imported only then).

* 'embedded': the interpreter's own documentation (see `embedded`); splits
  'train' and 'validation'; needs no network.
* 'files': `config.data.files`, comma-separated globs; each file is one document,
  files in sorted path order. The split named `train_split` gets the files but the
  last ``ceil(eval_fraction * n)`` (at least one file stays in training); the split
  named `eval_split` gets those. A single file is split by characters instead: its
  last ``round(eval_fraction * len)`` characters are the eval text. Bytes that are
  not UTF-8 are replaced with U+FFFD, and a warning names the file and the count.
* a TFDS name ('tiny_shakespeare', 'lm1b', ...): prepared into `data_dir`, read
  unshuffled, feature `text_key` decoded as UTF-8 (invalid bytes replaced). When
  preparation fails (offline, no manual files) a `DatasetUnavailableError` says
  which directory to fill and to pass ``--config.data.manual_dir=DIR``.

Empty documents are skipped; `max_documents` > 0 keeps the first that many; a split
with no text left is a ValueError naming the dataset and the split.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import logging
import math
import os
import socket
import sys
import threading
from typing import Any, Callable, Iterable, Iterator

from llm_jax import errors

Source = Callable[[Any, str], Iterable[str]]

_SOURCES: dict[str, Source] = {}

_MANUAL_HINTS = {
    'tiny_shakespeare': 'the file must be named input.txt (it is '
                        'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/'
                        'tinyshakespeare/input.txt)',
}


class DatasetUnavailableError(errors.Error, RuntimeError):
  """A TFDS dataset that could not be downloaded or prepared (``python -m llm_jax.main``: exit 7)."""
  exit_code = errors.DATASET


def register(name: str) -> Callable[[Source], Source]:
  """Decorator: `fn(data_cfg, split) -> Iterable[str]` becomes dataset `name`."""
  def wrap(fn: Source) -> Source:
    _SOURCES[name] = fn
    return fn
  return wrap


def names() -> tuple[str, ...]:
  """The built-in source names (any TFDS text dataset name works as well)."""
  return tuple(sorted(_SOURCES))


def documents(data_cfg, split: str) -> Iterator[str]:
  """The non-empty raw texts of `split` of `data_cfg.dataset`, in a fixed order.

  The dataset name and the TFDS preparation are checked when this is called; the
  empty-split check happens when the returned iterator is exhausted.
  """
  texts = _SOURCES.get(data_cfg.dataset, _tfds_documents)(data_cfg, split)
  return _checked(texts, data_cfg, split)


def _checked(texts: Iterable[str], data_cfg, split: str) -> Iterator[str]:
  texts = (t for t in texts if t)
  if data_cfg.max_documents > 0:
    texts = itertools.islice(texts, data_cfg.max_documents)
  empty = True
  for text in texts:
    empty = False
    yield text
  if empty:
    raise errors.DataError(f'config.data.dataset={data_cfg.dataset!r} split {split!r} has no text '
                     '(no documents, or all empty).')


@register('embedded')
def _embedded(data_cfg, split: str) -> Iterable[str]:
  from llm_jax.data import embedded
  return embedded.documents(split)


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


@register('files')
def _files(data_cfg, split: str) -> Iterable[str]:
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
  if len(paths) == 1:
    def cut() -> Iterator[str]:
      text = _read(paths[0])
      at = len(text) - round(fraction * len(text))
      yield text[:at] if is_train else text[at:]
    return cut()
  n_eval = min(len(paths) - 1, math.ceil(fraction * len(paths)))
  chosen = paths[:len(paths) - n_eval] if is_train else paths[len(paths) - n_eval:]
  return (_read(p) for p in chosen)


def _tfds_documents(data_cfg, split: str) -> Iterable[str]:
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
  except tfds.core.DatasetNotFoundError as e:
    raise errors.DataError(f'config.data.dataset={name!r} is unknown: use one of {names()} or any '
                     "TFDS text dataset (e.g. 'tiny_shakespeare', 'lm1b').") from None
  _prepare(builder, data_cfg, tfds)
  key = data_cfg.text_key
  if key not in builder.info.features:
    raise errors.DataError(f'config.data.text_key={key!r} is not a feature of TFDS dataset {name!r}; '
                     f'it has {sorted(builder.info.features)}.')
  try:
    ds = builder.as_dataset(split=split, shuffle_files=False)
  except (ValueError, KeyError) as e:
    raise errors.DataError(f'split {split!r} of TFDS dataset {name!r}: {e} (set '
                     'config.data.train_split / eval_split).') from e
  return (_decode(ex[key], f'{name}/{split}') for ex in tfds.as_numpy(ds))


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
