"""'files': local text files, one record per file or per line of a .jsonl file.

`config.data.files` holds comma-separated globs (``~`` expanded, ``**`` recursive);
the files are read in sorted path order. Each file is one record {'text'}, except
that a file ending in ``.jsonl`` holds one JSON object per line, mapped to a record
by `text_key` -> 'text', `text_b_key` -> 'text_b' (when set) and `label_key` ->
'label' (when the file's first object has it; then every line must). A line that is
not a JSON object or lacks a key is a DataError naming the file and the line.

Splits: the split named `train_split` gets the files but the last
``ceil(eval_fraction * n)`` (at least one file stays in training); the split named
`eval_split` gets those (`held_out`). A single file is split by its tail instead:
the last ``round(eval_fraction * len)`` characters (or, for .jsonl, records) are the
eval split. Bytes that are not UTF-8 are replaced with U+FFFD, and a warning names
the file and the count. `matching_files`, `local_split` and `held_out` serve the
other local sources ('pairs') as well.
"""

from __future__ import annotations

import glob
import json
import math
import os
from typing import Iterable, Iterator

from llm_jax import errors
from llm_jax.data import sources

Record = sources.Record


def _read(path: str) -> str:
  with open(path, 'rb') as f:
    return sources.decode(f.read(), path)


def _jsonl(path: str, data_cfg) -> Iterator[Record]:
  """The records of a .jsonl file, one per non-blank line (contract in the module docstring)."""
  keys, label_key = sources.key_map(data_cfg), data_cfg.label_key
  labelled = None
  with open(path, 'rb') as f:
    for number, raw in enumerate(f, 1):
      line = sources.decode(raw, f'{path} line {number}')
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


def matching_files(globs: str) -> list[str]:
  """The files matched by ``globs`` (comma-separated, ``~`` expanded, ``**`` recursive), sorted, each once."""
  patterns = [p.strip() for p in globs.split(',') if p.strip()]
  return sorted({p for pattern in patterns
                 for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                 if os.path.isfile(p)})


def local_split(data_cfg, split: str, dataset: str) -> bool:
  """Whether ``split`` is the training part (else the held-out part) of a local dataset
  cut by config.data.eval_fraction; a DataError for another split name, a fraction
  outside [0, 1), or an eval split that fraction 0 leaves empty."""
  fraction = data_cfg.eval_fraction
  if not 0 <= fraction < 1:
    raise errors.DataError(f'config.data.eval_fraction={fraction} must be in [0, 1).')
  if split not in (data_cfg.train_split, data_cfg.eval_split):
    raise errors.DataError(f'dataset {dataset} has the splits config.data.train_split='
                     f'{data_cfg.train_split!r} and eval_split={data_cfg.eval_split!r}, '
                     f'not {split!r}.')
  is_train = split == data_cfg.train_split
  if not is_train and fraction == 0:
    raise errors.DataError(f'config.data.eval_fraction=0 leaves no text for eval split {split!r} of '
                     f"dataset {dataset}; set eval_fraction > 0 or config.data.eval_split=''.")
  return is_train


def held_out(n: int, fraction: float, is_train: bool) -> slice:
  """Which of ``n`` ordered items a split gets: the held-out part is the last
  ``ceil(fraction * n)`` of them, but at least one item stays in training."""
  n_eval = min(n - 1, math.ceil(fraction * n))
  return slice(0, n - n_eval) if is_train else slice(n - n_eval, n)


@sources.register('files')
def _files(data_cfg, split: str) -> Iterable[Record]:
  paths = matching_files(data_cfg.files)
  if not paths:
    raise errors.DataError(f'config.data.files={data_cfg.files!r} matched no files; give '
                     'comma-separated globs of text files (each file is one document).')
  is_train = local_split(data_cfg, split, 'files')
  fraction = data_cfg.eval_fraction
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
  chosen = paths[held_out(len(paths), fraction, is_train)]
  return (record for p in chosen for record in _file_records(p, data_cfg))
