"""Hugging Face datasets by name: the source 'hf:REPO', e.g. Wikitext-103 as BERT-style recipes load it.

``--config.data.dataset=hf:Salesforce/wikitext --config.data.dataset_config=wikitext-103-raw-v1``
is ``datasets.load_dataset('Salesforce/wikitext', 'wikitext-103-raw-v1', split=...)``. Two ways in:

* ``config.data.manual_dir=DIR``: a local copy in the Hub repository's own file layout,
  ``DIR/<dataset_config>/<split>-*.parquet`` (Salesforce/wikitext stores
  ``wikitext-103-raw-v1/train-00000-of-00002.parquet``, ``validation-00000-of-00001.parquet``,
  ``test-...``; without a dataset_config the files lie in DIR itself), read with pyarrow in
  sorted file order. Nothing is downloaded.
* otherwise the `datasets` library (the ``[hf]`` extra) where the machine reaches
  huggingface.co; offline (the name does not resolve) it fails at once with
  `sources.DatasetUnavailableError` naming the layout to fill and ``--config.data.manual_dir=DIR``.

Records: a table with the columns `source_key` and `target_key`, or with a
'translation' column of {language: text} (the Hub's WMT and OPUS datasets; then
source_key and target_key name two of its languages) and no `text_key` column, gives
one pair {'source', 'target'} per row. Otherwise a table without a `label_key` column
is text for language modelling, one record {'text'} per non-empty line of its
`text_key` column (Wikitext's rows are lines already; its blank rows are dropped). A
table with that column gives one record per row, {'text', 'text_b'? (text_b_key),
'label'}. No TensorFlow on either path.
"""

from __future__ import annotations

import glob
import os
from typing import Iterable, Iterator

from llm_jax import errors
from llm_jax.data import sources

PREFIX = 'hf:'
TRANSLATION = 'translation'
HUB_HOST = 'huggingface.co'
_BATCH_ROWS = 8192


def _repo(data_cfg) -> str:
  repo = data_cfg.dataset[len(PREFIX):]
  if not repo:
    raise errors.ConfigError(f'config.data.dataset={data_cfg.dataset!r} names no repository; give '
                             'hf:OWNER/NAME, e.g. hf:Salesforce/wikitext.')
  return repo


def layout(data_cfg, split: str, manual_dir: str = 'DIR') -> str:
  """The glob of ``split``'s parquet files under ``manual_dir``."""
  return os.path.join(manual_dir, data_cfg.dataset_config, f'{split}-*.parquet')


def _pair_columns(data_cfg, columns: list[str]) -> tuple[str, ...]:
  """The columns pairs come from: (source_key, target_key), ('translation',) or () for text."""
  if data_cfg.source_key in columns and data_cfg.target_key in columns:
    return data_cfg.source_key, data_cfg.target_key
  if TRANSLATION in columns and data_cfg.text_key not in columns:
    return (TRANSLATION,)
  return ()


def _pairs(rows: Iterable[dict], columns: tuple[str, ...], data_cfg, origin: str) -> Iterator[dict]:
  source_key, target_key = data_cfg.source_key, data_cfg.target_key
  for row in rows:
    texts = row[TRANSLATION] if columns == (TRANSLATION,) else row
    if columns == (TRANSLATION,) and not (source_key in texts and target_key in texts):
      raise errors.DataError(f"the 'translation' column of {origin} holds the languages {sorted(texts)}, not "
                             f'config.data.source_key={source_key!r} and target_key={target_key!r}; set them '
                             'to two of those.')
    yield {'source': texts[source_key] or '', 'target': texts[target_key] or ''}


def _records(rows: Iterable[dict], columns: list[str], data_cfg, origin: str) -> Iterator[dict]:
  pair = _pair_columns(data_cfg, columns)
  if pair:
    yield from _pairs(rows, pair, data_cfg, origin)
    return
  keys = sources.key_map(data_cfg)
  for field, key in keys.items():
    if key not in columns:
      raise errors.DataError(f'config.data.{field}_key={key!r} is not a column of {origin}; it has {columns}.')
  if data_cfg.label_key not in columns:
    text_key = data_cfg.text_key
    for row in rows:
      for line in (row[text_key] or '').split('\n'):
        if line.strip():
          yield {'text': line}
    return
  for row in rows:
    record = {field: row[key] or '' for field, key in keys.items()}
    record['label'] = int(row[data_cfg.label_key])
    yield record


def _parquet_rows(paths: list[str], columns: list[str]) -> Iterator[dict]:
  import pyarrow.parquet as pq
  for path in paths:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS, columns=columns):
      yield from batch.to_pylist()


def _from_manual_dir(data_cfg, split: str) -> Iterator[dict]:
  import pyarrow.parquet as pq
  pattern = layout(data_cfg, split, data_cfg.manual_dir)
  paths = sorted(glob.glob(pattern))
  if not paths:
    raise sources.DatasetUnavailableError(
        f'config.data.manual_dir={data_cfg.manual_dir!r} holds no {pattern!r} for split {split!r} of '
        f'{data_cfg.dataset!r}; copy the repository\'s {layout(data_cfg, split, "")} files there (the '
        f'Hub\'s own layout: DIR/<dataset_config>/<split>-*.parquet).')
  columns = pq.ParquetFile(paths[0]).schema_arrow.names
  named = (*sources.key_map(data_cfg).values(), data_cfg.label_key, *_pair_columns(data_cfg, columns))
  wanted = [c for c in dict.fromkeys(named) if c in columns]
  return _records(_parquet_rows(paths, wanted), columns, data_cfg, paths[0])


def _from_hub(data_cfg, split: str) -> Iterator[dict]:
  repo, name = _repo(data_cfg), data_cfg.dataset_config or None
  try:
    import datasets
  except ImportError:
    raise errors.ConfigError(f'config.data.dataset={data_cfg.dataset!r} needs the Hugging Face datasets '
                             "library: pip install -e '.[hf]' (or 'llm_jax[hf]'), or pass a local copy of "
                             'its parquet files with --config.data.manual_dir=DIR.') from None
  advice = (f'fetch its parquet files elsewhere, put them in {layout(data_cfg, split)} (the repository\'s '
            f'own layout, e.g. {layout(data_cfg, "train", "DIR")}) and pass --config.data.manual_dir=DIR.')
  if sources.looks_offline(HUB_HOST):
    raise sources.DatasetUnavailableError(
        f'Hugging Face dataset {repo!r} (config {name!r}) cannot be downloaded: {HUB_HOST} does not '
        f'resolve, this machine looks offline; {advice}')
  try:
    table = datasets.load_dataset(repo, name, split=split)
  except Exception as e:  # pylint: disable=broad-except  (not found, a network error, a bad split)
    raise sources.DatasetUnavailableError(
        f'Hugging Face dataset {repo!r} (config {name!r}) split {split!r} could not be loaded '
        f'({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}); check the name, config '
        f'and split, or {advice}') from None
  return _records(iter(table), list(table.column_names), data_cfg, f'{repo} split {split!r}')


@sources.register(PREFIX)
def records(data_cfg, split: str) -> Iterator[dict]:
  _repo(data_cfg)
  if data_cfg.manual_dir:
    return _from_manual_dir(data_cfg, split)
  return _from_hub(data_cfg, split)
