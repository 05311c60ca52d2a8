"""Tokenize once, pack, and serve batches that are pure functions of (seed, step).

Packing: each document's ids followed by eos are concatenated into one token
stream per split, together with the index of each document's first token. Both are
computed once and cached as .npy under ``cache_dir/tokens-<key>/``, where key hashes
the data config fields that change them; the tokenizer lives in ``cache_dir``
itself. After that no TensorFlow op runs: batches need only NumPy.

Training rows (L = seq_len + 1 tokens each, inputs = row[:-1], targets = row[1:]):
epoch e shifts the train stream by an offset in [0, seq_len] and cuts it into
`rows_per_epoch` consecutive rows, visited in a permuted order; offset and
permutation are drawn from ``np.random.default_rng(SeedSequence([seed, e]))``.
Global row g is row ``g % rows_per_epoch`` of epoch ``g // rows_per_epoch``; step s
is global rows [s*B, (s+1)*B), so batches run across epoch boundaries, and process p
of P takes rows [p*B/P, (p+1)*B/P) of it. Resuming needs nothing but the step.

Per row: 'weights' is 0 where the target token belongs to another document than
the input token (no learning across the packed boundary) and for padding;
'segment_ids' number the documents within the row 1, 2, 3, ... (0 = padding);
'positions' count from 0 at the row start and again at each document start.

Eval rows cut the eval stream from its start with stride seq_len, unshuffled, so
every token but the first is a target exactly once; the last row is padded with
pad_id (weight 0) and the last batch with all-padding rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Callable, Iterable, Iterator

import numpy as np

from llm_jax import errors
from llm_jax.data import sources
from llm_jax.data.background import prefetch  # noqa: F401  (served from here as ever)
from llm_jax.data.tokenizers import PAD_ID, Tokenizer, build_tokenizer, tokenizer_class

CACHE_VERSION = 1
SOURCE_FILE = 'tokenizer_source.json'
_TOKENIZER_FIELDS = ('dataset', 'text_key', 'train_split', 'files', 'eval_fraction',
                     'max_documents', 'tokenizer', 'vocab_size', 'sp_model_type')
_STREAM_FIELDS = _TOKENIZER_FIELDS + ('eval_split',)
# Fields a cache key holds only when set (non-empty and not the default of _UNSET), so
# that the keys of runs that leave them so (every run before they existed) stay what they were.
_OPTIONAL_FIELDS = ('dataset_config', 'text_b_key', 'tokenizer_path', 'source_key', 'target_key', 'task_prefix',
                    'target_files')
_UNSET = {'source_key': 'source', 'target_key': 'target'}  # config.base_config()'s defaults
_EPOCH_CACHE = 4
_CHUNK_DOCS = 65536


def tokenize_documents(tokenizer: Tokenizer, texts: Iterable[str], *, prefix: tuple[int, ...] = (),
                       suffix: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(tokens int32 [N], doc_starts int64 [D]): each text's ids between ``prefix`` and
  ``suffix`` (default: eos), concatenated.

  Ids are gathered in chunks of `_CHUNK_DOCS` documents, so a corpus of millions of
  short documents (lm1b) costs its tokens' memory, not a Python object per document.
  """
  head = np.array(prefix, np.int32)
  tail = np.array([tokenizer.eos_id] if suffix is None else suffix, np.int32)
  chunks, lengths, pending, sizes = [], [], [], []

  def flush() -> None:
    if pending:
      chunks.append(np.concatenate(pending).astype(np.int32))
      lengths.append(np.array(sizes, np.int64))
      pending.clear()
      sizes.clear()

  for text in texts:
    ids = tokenizer.encode(text)
    pending += [head, ids, tail]
    sizes.append(len(head) + len(ids) + len(tail))
    if len(sizes) >= _CHUNK_DOCS:
      flush()
  flush()
  if not chunks:
    return np.zeros(0, np.int32), np.zeros(0, np.int64)
  ends = np.cumsum(np.concatenate(lengths))
  return np.concatenate(chunks), np.concatenate([[0], ends[:-1]]).astype(np.int64)


def packed_rows(tokens: np.ndarray, doc_starts: np.ndarray, starts: np.ndarray, length: int,
                pad_id: int = PAD_ID) -> dict[str, np.ndarray]:
  """The rows of `length` stream tokens starting at `starts` [b], each [b, length]:
  'tokens' (pad_id past the stream's end), 'positions' (from 0 at the row start and
  at each document start; 0 on padding), 'segment_ids' (the documents of the row
  numbered 1, 2, ...; 0 = padding), 'doc' (the stream's document index, -1 on
  padding) and 'valid' (not padding)."""
  n = len(tokens)
  idx = starts[:, None] + np.arange(length)
  valid = idx < n
  idx = np.minimum(idx, n - 1)
  doc = np.where(valid, np.searchsorted(doc_starts, idx, side='right') - 1, -1)
  cols = np.arange(length)
  new_doc = np.concatenate([np.ones_like(doc[:, :1], bool), doc[:, 1:] != doc[:, :-1]], 1)
  seg_start = np.maximum.accumulate(np.where(new_doc, cols, 0), axis=1)
  return {
      'tokens': np.where(valid, tokens[idx], pad_id).astype(np.int32),
      'positions': np.where(valid, cols - seg_start, 0).astype(np.int32),
      'segment_ids': np.where(valid, doc - doc[:, :1] + 1, 0).astype(np.int32),
      'doc': doc, 'valid': valid,
  }


def _features(tokens: np.ndarray, doc_starts: np.ndarray, starts: np.ndarray,
              length: int) -> dict[str, np.ndarray]:
  """The batch of rows of `length` tokens starting at `starts` [b]; cells past the
  stream's end are padding. Every array is [b, length - 1]."""
  rows = packed_rows(tokens, doc_starts, starts, length)
  doc, valid = rows['doc'], rows['valid']
  return {
      'inputs': rows['tokens'][:, :-1],
      'targets': rows['tokens'][:, 1:],
      'weights': ((doc[:, :-1] == doc[:, 1:]) & valid[:, 1:]).astype(np.float32),
      'positions': rows['positions'][:, :-1],
      'segment_ids': rows['segment_ids'][:, :-1],
  }


class Dataset:
  """Packed train and eval streams served as batches of shape [local_batch, seq_len].

  Attributes: tokenizer, seq_len, global_batch, local_batch, rows_per_epoch (train
  rows per epoch), eval_rows (0 without an eval split), train_tokens and eval_tokens
  (the packed streams' lengths, eos included), cache_dir.

  A subclass serves other features of the same rows: it sets `row_length` (stream
  tokens per row; here seq_len + 1, the inputs and the last target) and `eval_overlap`
  (tokens an eval row shares with the next; here 1) and defines `_batch`.
  """

  row_length_extra = 1   # row_length = seq_len + this
  eval_overlap = 1
  row_unit = 'config.data.seq_len + 1'

  def __init__(self, tokenizer: Tokenizer, train: tuple[np.ndarray, np.ndarray],
               eval_: tuple[np.ndarray, np.ndarray] | None, *, seq_len: int,
               global_batch: int, seed: int, process_index: int = 0, process_count: int = 1,
               name: str = 'dataset', cache_dir: str = ''):
    """`train` and `eval_` are (tokens, doc_starts) as made by `tokenize_documents`."""
    _check_batch(global_batch, process_index, process_count)
    if seq_len < 1 or seed < 0:
      raise errors.DataError(f'config.data.seq_len={seq_len} must be >= 1 and config.seed={seed} >= 0.')
    self.tokenizer, self.seq_len, self.global_batch, self.seed = tokenizer, seq_len, global_batch, seed
    self.process_index, self.process_count = process_index, process_count
    self.local_batch = global_batch // process_count
    self.cache_dir = cache_dir
    self._train, self._eval = train, eval_
    n, length = len(train[0]), seq_len + self.row_length_extra
    self.row_length = length
    if n < length:
      raise errors.DataError(f'{name}: the training split has {n} tokens, fewer than one row of '
                       f'{self.row_unit} = {length}; lower config.data.seq_len or '
                       'use more data.')
    self.rows_per_epoch = max(1, (n - length + 1) // length)
    self._max_offset = min(length - 1, n - self.rows_per_epoch * length)
    overlap = self.eval_overlap
    self.eval_rows = 0 if eval_ is None else -(-(len(eval_[0]) - overlap) // seq_len)
    self.train_tokens, self.eval_tokens = n, 0 if eval_ is None else len(eval_[0])
    self._epochs: dict[int, tuple[int, np.ndarray]] = {}

  def _epoch(self, epoch: int) -> tuple[int, np.ndarray]:
    """(offset, row permutation) of `epoch`, cached for the last few epochs."""
    if epoch not in self._epochs:
      rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
      offset = int(rng.integers(0, self._max_offset + 1))
      self._epochs[epoch] = (offset, rng.permutation(self.rows_per_epoch))
      while len(self._epochs) > _EPOCH_CACHE:
        del self._epochs[min(self._epochs)]
    return self._epochs[epoch]

  def train_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of the global batch of training step `step` (0-based).

    Keys 'inputs', 'targets', 'positions', 'segment_ids' (int32) and 'weights'
    (float32), each [local_batch, seq_len]; a pure function of (seed, step).
    """
    if step < 0:
      raise ValueError(f'step={step} must be >= 0.')
    first = step * self.global_batch + self.process_index * self.local_batch
    rows = first + np.arange(self.local_batch, dtype=np.int64)
    epochs, within = np.divmod(rows, self.rows_per_epoch)
    starts = np.empty_like(rows)
    for epoch in np.unique(epochs):
      offset, perm = self._epoch(int(epoch))
      mask = epochs == epoch
      starts[mask] = offset + perm[within[mask]] * self.row_length
    return self._batch(self._train, starts, rows=rows, step=step)

  def eval_batches(self, max_batches: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of each eval batch, in order; the first `max_batches`
    batches (0: all). Same keys and shapes as `train_batch`; yields nothing when the
    config has no eval split."""
    if self._eval is None:
      return
    tokens = self._eval[0]
    n_batches = -(-self.eval_rows // self.global_batch)
    if max_batches > 0:
      n_batches = min(n_batches, max_batches)
    for b in range(n_batches):
      rows = (b * self.global_batch + self.process_index * self.local_batch
              + np.arange(self.local_batch, dtype=np.int64))
      starts = np.where(rows < self.eval_rows, rows * self.seq_len, len(tokens))
      yield self._batch(self._eval, starts, rows=rows, step=None)

  def _batch(self, stream: tuple[np.ndarray, np.ndarray], starts: np.ndarray, *, rows: np.ndarray,
             step: int | None) -> dict[str, np.ndarray]:
    """The features of the rows beginning at stream positions `starts`: global rows
    `rows` of training step `step` (None: of the eval stream)."""
    return _features(*stream, starts, self.row_length)


def _check_batch(global_batch: int, process_index: int, process_count: int) -> None:
  if global_batch < 1 or process_count < 1 or global_batch % process_count:
    raise errors.DataError(f'the global batch size {global_batch} (config.train.batch_size) must be a '
                     f'positive multiple of the {process_count} processes; use a multiple of '
                     f'{process_count}.')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in [0, {process_count}).')


def fingerprint(data_cfg, fields: tuple[str, ...], optional: tuple[str, ...] = _OPTIONAL_FIELDS,
                **extra) -> dict:
  """What a cache entry was made from: ``fields`` of ``data_cfg``, those of ``optional``
  that are set, and ``extra``."""
  return {'version': CACHE_VERSION, **{k: data_cfg[k] for k in fields},
          **{k: data_cfg[k] for k in optional if data_cfg[k] and data_cfg[k] != _UNSET.get(k)}, **extra}


def _key(spec: dict) -> str:
  return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class _Texts:
  """Re-iterable texts of one split, read again on each iteration (not held in memory):
  each record's 'text', then its 'text_b' if any; of a pair, task_prefix + 'source',
  then 'target' (so a tokenizer learns both sides and the prefix)."""

  def __init__(self, data_cfg, split: str):
    self.data_cfg, self.split = data_cfg, split

  def __iter__(self) -> Iterator[str]:
    for record in sources.records(self.data_cfg, self.split):
      if sources.is_pair(record):
        yield self.data_cfg.task_prefix + record['source']
        yield record['target']
        continue
      yield record['text']
      if record.get('text_b'):
        yield record['text_b']


def tokenizer_for(data_cfg, cache_dir: str) -> Tokenizer:
  """The run's tokenizer in `cache_dir`, built (from the train split, for the kinds that
  learn from text) if absent."""
  cls = tokenizer_class(data_cfg.tokenizer)
  source = (fingerprint(data_cfg, _TOKENIZER_FIELDS) if cls.reads_texts
            else fingerprint(data_cfg, ('tokenizer',), optional=('tokenizer_path',)))
  path = os.path.join(cache_dir, SOURCE_FILE)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved != source:
      changed = sorted(k for k in {**saved, **source} if saved.get(k) != source.get(k))
      raise errors.DataError(f'{cache_dir!r} holds a tokenizer built for other data settings '
                       f'(config.data.{", ".join(changed)} differ); use a fresh --workdir or '
                       'set --config.data.cache_dir to another directory.')
  os.makedirs(cache_dir, exist_ok=True)
  tokenizer = build_tokenizer(
      data_cfg.tokenizer, _Texts(data_cfg, data_cfg.train_split), vocab_size=data_cfg.vocab_size,
      sp_model_type=data_cfg.sp_model_type, tokenizer_path=data_cfg.tokenizer_path, directory=cache_dir)
  if not os.path.exists(path):
    _save_json(path, source)
  return tokenizer


def _save_json(path: str, obj: dict) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.tmp-')
  with os.fdopen(fd, 'w') as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def cached(cache_dir: str, prefix: str, spec: dict, build: Callable[[str], dict]) -> tuple[str, dict]:
  """(directory, its spec.json) of the cache entry ``cache_dir/<prefix>-<key of spec>``;
  made when absent by ``build(temporary directory)``, whose returned dict is stored
  in spec.json beside ``spec``, then renamed into place (atomic: a reader never sees
  half an entry, and two processes building it at once both end with one)."""
  directory = os.path.join(cache_dir, f'{prefix}-{_key(spec)}')
  spec_path = os.path.join(directory, 'spec.json')
  if not os.path.exists(spec_path):
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=cache_dir, prefix=f'.tmp-{prefix}-')
    try:
      _save_json(os.path.join(tmp, 'spec.json'), {**spec, **build(tmp)})
      os.replace(tmp, directory)
    except OSError:  # fine if another process cached the same entry first
      if not os.path.exists(spec_path):
        raise
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  with open(spec_path) as f:
    return directory, json.load(f)


def streams(data_cfg, cache_dir: str, tokenizer: Tokenizer, *, features: str = 'lm',
            prefix: tuple[int, ...] = (), suffix: tuple[int, ...] | None = None
            ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{'train', 'eval'?: (tokens, doc_starts)}, each document packed between ``prefix``
  and ``suffix`` (default: eos), from the cache if there (keyed by the data settings
  and, for other features than 'lm', their name)."""
  splits = {'train': data_cfg.train_split}
  if data_cfg.eval_split:
    splits['eval'] = data_cfg.eval_split
  spec = fingerprint(data_cfg, _STREAM_FIELDS, **({} if features == 'lm' else {'features': features}))

  def build(tmp: str) -> dict:
    for part, split in splits.items():
      start = time.perf_counter()
      tokens, doc_starts = tokenize_documents(tokenizer, sources.documents(data_cfg, split),
                                              prefix=prefix, suffix=suffix)
      np.save(os.path.join(tmp, f'{part}_tokens.npy'), tokens)
      np.save(os.path.join(tmp, f'{part}_doc_starts.npy'), doc_starts)
      logging.info('Tokenized %s split %r: %d documents, %d tokens in %.1f s',
                   data_cfg.dataset, split, len(doc_starts), len(tokens),
                   time.perf_counter() - start)
    return {}

  directory, _ = cached(cache_dir, 'tokens', spec, build)
  return {part: (np.load(os.path.join(directory, f'{part}_tokens.npy'), mmap_mode='r'),
                 np.load(os.path.join(directory, f'{part}_doc_starts.npy')))
          for part in splits}


def load(data_cfg, *, global_batch: int, seed: int, cache_dir: str, process_index: int = 0,
         process_count: int = 1) -> Dataset:
  """The run's `Dataset`: tokenizer and packed streams, built once into `cache_dir`.

  `cache_dir` is where the tokenizer and token cache live (the caller resolves
  config.data.cache_dir, '' meaning WORKDIR/data). A second load with the same data
  config reads the cache and no source text.
  """
  _check_batch(global_batch, process_index, process_count)
  tokenizer = tokenizer_for(data_cfg, cache_dir)
  packed = streams(data_cfg, cache_dir, tokenizer)
  return Dataset(tokenizer, packed['train'], packed.get('eval'), seq_len=data_cfg.seq_len,
                 global_batch=global_batch, seed=seed, process_index=process_index,
                 process_count=process_count, cache_dir=cache_dir,
                 name=f'config.data.dataset={data_cfg.dataset!r} split {data_cfg.train_split!r}')
