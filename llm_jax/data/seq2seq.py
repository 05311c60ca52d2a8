"""The 'seq2seq' featurizer: (source, target) pairs packed into rows for encoder-decoder models.

Examples: a record {'source', 'target'} (``sources``) becomes encoder tokens
``encode(task_prefix + source) + [eos]`` and decoder target tokens
``encode(target) + [eos]``, cut to S = config.data.seq_len and T = target_len
(-1: seq_len) tokens by dropping text tokens from the end, so eos stays last. Both
are tokenized once and cached under ``cache_dir/seq2seq-<key>/`` with the packing,
and the number of truncated sources and targets is logged per split.

Packing: examples are laid into rows greedily in dataset order (fixed, whatever the
seed): an example joins the current row while its encoder tokens fit the row's S
and its decoder tokens its T, else it starts a new row (`pack`). Example k = 1, 2,
... of a row has segment id k on both sides; padding is segment 0.

Batches (`Seq2SeqDataset`), int32 unless said, B = local_batch:
  encoder_inputs [B, S]       source tokens (pad_id on padding)
  encoder_positions [B, S]    0, 1, ... within each example (0 on padding)
  encoder_segment_ids [B, S]  k of the example, 0 on padding
  decoder_inputs [B, T]       each target shifted right by one within its segment, its
                              first token the decoder start id, pad_id (as in T5)
  decoder_positions [B, T], decoder_segment_ids [B, T]   as on the encoder side
  targets [B, T]              the target tokens (pad_id on padding)
  weights [B, T] float32      1 on target tokens, 0 on padding
Training: epoch e visits the packed train rows in the permutation drawn from
``default_rng(SeedSequence([seed, e]))``; global row g of step s is s*global_batch +
its index, process p takes its slice: a batch is a pure function of (seed, step).
Eval: the eval examples packed the same way, rows in order, the last batch filled
with all-padding rows (weights 0).
"""

from __future__ import annotations

import array
import json
import logging
import os
import time
from typing import Iterable, Iterator

import numpy as np

from llm_jax import errors
from llm_jax.data import features, pipeline, sources

SIDES = ('source', 'target')
_FIELDS = pipeline._STREAM_FIELDS + ('seq_len',)
_CHUNK = 65536
_ARRAYS = ('source_tokens', 'source_offsets', 'target_tokens', 'target_offsets', 'rows')
EVAL_TEXTS = 'eval_texts.json'


def target_len(data_cfg) -> int:
  """T: config.data.target_len, or seq_len where it is -1."""
  t = data_cfg.seq_len if data_cfg.target_len == -1 else data_cfg.target_len
  if t < 1 or data_cfg.seq_len < 1:
    raise errors.DataError(f'config.data.seq_len={data_cfg.seq_len} and target_len={data_cfg.target_len} must '
                           'be >= 1 (target_len -1: the same as seq_len).')
  return t


def not_pairs(data_cfg) -> errors.DataError:
  """The error for a dataset whose records are text, naming the datasets of pairs."""
  return errors.DataError(
      f'config.data.dataset={data_cfg.dataset!r} yields text, not the (source, target) pairs that the seq2seq '
      "featurizer (config.model.kind='encoder_decoder') reads; use dataset=pairs (with config.data.files), "
      'reverse_words, sort_words, a TFDS translation dataset (wmt14_translate/fr-en with '
      '--config.data.source_key=en --config.data.target_key=fr), or hf:REPO with source_key/target_key columns.')


class _Ragged:
  """Token arrays appended one by one, kept in chunks (no Python object per example)."""

  def __init__(self):
    self._chunks, self._pending, self._lengths = [], [], array.array('q')

  def add(self, ids: np.ndarray) -> None:
    self._pending.append(ids)
    self._lengths.append(len(ids))
    if len(self._pending) >= _CHUNK:
      self._flush()

  def _flush(self) -> None:
    if self._pending:
      self._chunks.append(np.concatenate(self._pending).astype(np.int32))
      self._pending = []

  def arrays(self) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32 [sum of lengths], offsets int64 [n + 1])."""
    self._flush()
    tokens = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int32)
    offsets = np.concatenate([[0], np.cumsum(np.asarray(self._lengths, np.int64))]).astype(np.int64)
    return tokens, offsets


def encode_pairs(tokenizer, items: Iterable[dict], *, seq_len: int, target_len: int,
                 task_prefix: str = '') -> tuple[dict[str, np.ndarray], dict[str, int]]:
  """({'source_tokens', 'source_offsets', 'target_tokens', 'target_offsets'}, counts) of the
  pairs ``items``: each side's ids + eos, cut to its length (module docstring); counts
  'examples', 'truncated_sources', 'truncated_targets'."""
  eos = np.array([tokenizer.eos_id], np.int32)
  sides = {'source': (_Ragged(), seq_len), 'target': (_Ragged(), target_len)}
  counts = {'examples': 0, 'truncated_sources': 0, 'truncated_targets': 0}
  for record in items:
    counts['examples'] += 1
    for side, (ragged, limit) in sides.items():
      text = task_prefix + record['source'] if side == 'source' else record['target']
      ids = np.asarray(tokenizer.encode(text), np.int32)
      if len(ids) + 1 > limit:
        ids = ids[:limit - 1]
        counts[f'truncated_{side}s'] += 1
      ragged.add(np.concatenate([ids, eos]))
  out = {}
  for side, (ragged, _) in sides.items():
    out[f'{side}_tokens'], out[f'{side}_offsets'] = ragged.arrays()
  return out, counts


def pack(source_lengths: np.ndarray, target_lengths: np.ndarray, seq_len: int, target_len: int) -> np.ndarray:
  """Row starts int64 [R + 1]: row r holds examples [starts[r], starts[r+1]), laid greedily
  in order while the row's sources fit ``seq_len`` tokens and its targets ``target_len``."""
  starts, used_s, used_t = [0], 0, 0
  for i, (s, t) in enumerate(zip(source_lengths.tolist(), target_lengths.tolist())):
    if i > starts[-1] and (used_s + s > seq_len or used_t + t > target_len):
      starts.append(i)
      used_s, used_t = 0, 0
    used_s, used_t = used_s + s, used_t + t
  if len(source_lengths):
    starts.append(len(source_lengths))
  return np.asarray(starts, np.int64)


def _place(tokens, offsets, example, batch_row, k, n_rows: int, width: int, pad_id: int) -> dict:
  """One side of a batch: the examples ``example`` (in row order; k their 0-based index in
  row ``batch_row``) laid out in [n_rows, width] arrays."""
  starts = offsets[example]
  lengths = offsets[example + 1] - starts
  before = np.cumsum(lengths) - lengths
  heads = np.flatnonzero(k == 0)
  row_base = np.repeat(before[heads], np.diff(np.append(heads, len(example))))
  owner = np.repeat(np.arange(len(example)), lengths)
  within = np.arange(int(lengths.sum())) - np.repeat(before, lengths)
  rows, cols = batch_row[owner], (before - row_base)[owner] + within
  src = starts[owner] + within
  out = {name: np.zeros((n_rows, width), np.int32) for name in ('positions', 'segment_ids')}
  out['tokens'] = np.full((n_rows, width), pad_id, np.int32)
  out['shifted'] = np.full((n_rows, width), pad_id, np.int32)
  out['tokens'][rows, cols] = tokens[src]
  out['shifted'][rows, cols] = np.where(within == 0, pad_id, tokens[np.maximum(src - 1, 0)])
  out['positions'][rows, cols] = within
  out['segment_ids'][rows, cols] = k[owner] + 1
  return out


class Seq2SeqDataset:
  """Packed (source, target) rows for an encoder-decoder model (module docstring).

  Attributes: tokenizer, seq_len (S), target_len (T), global_batch, local_batch,
  rows_per_epoch (packed train rows), eval_rows (packed eval rows; 0 without an eval
  split), train_tokens and eval_tokens (target tokens, eos included: the weights of
  an epoch and of the eval split), cache_dir. Methods train_batch(step),
  eval_batches(max_batches) and eval_examples(n).
  """

  def __init__(self, tokenizer, train: dict, eval_: dict | None, *, seq_len: int, target_len: int,
               global_batch: int, seed: int, process_index: int = 0, process_count: int = 1,
               cache_dir: str = '', eval_texts: list | None = None):
    """``train`` and ``eval_``: {'source_tokens', 'source_offsets', 'target_tokens',
    'target_offsets', 'rows'} as `encode_pairs` and `pack` make them; ``eval_texts``:
    [source with prefix, target] of each eval example."""
    pipeline._check_batch(global_batch, process_index, process_count)
    self.tokenizer, self.seq_len, self.target_len = tokenizer, seq_len, target_len
    self.global_batch, self.seed, self.cache_dir = global_batch, seed, cache_dir
    self.process_index, self.process_count = process_index, process_count
    self.local_batch = global_batch // process_count
    self._train, self._eval, self._eval_texts = train, eval_, eval_texts or []
    self.rows_per_epoch = len(train['rows']) - 1
    self.eval_rows = 0 if eval_ is None else len(eval_['rows']) - 1
    self.train_tokens = int(train['target_offsets'][-1])
    self.eval_tokens = 0 if eval_ is None else int(eval_['target_offsets'][-1])
    self._epochs: dict[int, np.ndarray] = {}

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._epochs:
      rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
      self._epochs[epoch] = rng.permutation(self.rows_per_epoch)
      while len(self._epochs) > pipeline._EPOCH_CACHE:
        del self._epochs[min(self._epochs)]
    return self._epochs[epoch]

  def _local_rows(self, batch: int) -> np.ndarray:
    first = batch * self.global_batch + self.process_index * self.local_batch
    return first + np.arange(self.local_batch, dtype=np.int64)

  def _batch(self, arrays: dict, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The batch of packed rows ``rows`` [b] (-1: an all-padding row)."""
    real = rows >= 0
    row = np.where(real, rows, 0)
    first = arrays['rows'][row]
    counts = np.where(real, arrays['rows'][row + 1] - first, 0)
    batch_row = np.repeat(np.arange(len(rows)), counts)
    k = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    example = np.repeat(first, counts) + k
    pad = self.tokenizer.pad_id
    enc = _place(arrays['source_tokens'], arrays['source_offsets'], example, batch_row, k, len(rows),
                 self.seq_len, pad)
    dec = _place(arrays['target_tokens'], arrays['target_offsets'], example, batch_row, k, len(rows),
                 self.target_len, pad)
    return {'encoder_inputs': enc['tokens'], 'encoder_positions': enc['positions'],
            'encoder_segment_ids': enc['segment_ids'], 'decoder_inputs': dec['shifted'],
            'decoder_positions': dec['positions'], 'decoder_segment_ids': dec['segment_ids'],
            'targets': dec['tokens'], 'weights': (dec['segment_ids'] > 0).astype(np.float32)}

  def train_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of training step ``step``: keys and shapes of the module docstring."""
    if step < 0:
      raise ValueError(f'step={step} must be >= 0.')
    epochs, within = np.divmod(self._local_rows(step), self.rows_per_epoch)
    rows = np.empty_like(within)
    for epoch in np.unique(epochs):
      mask = epochs == epoch
      rows[mask] = self._permutation(int(epoch))[within[mask]]
    return self._batch(self._train, rows)

  def eval_batches(self, max_batches: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of each eval batch in order; the first ``max_batches`` (0: all)."""
    if self._eval is None:
      return
    n_batches = -(-self.eval_rows // self.global_batch)
    if max_batches > 0:
      n_batches = min(n_batches, max_batches)
    for b in range(n_batches):
      rows = self._local_rows(b)
      yield self._batch(self._eval, np.where(rows < self.eval_rows, rows, -1))

  def eval_examples(self, n: int) -> list[dict]:
    """The first ``n`` eval pairs in order (fewer if the split has fewer; none without one):
    {'source': task_prefix + source, 'target': the target text, 'source_ids': int32 [<= S],
    the encoder tokens with eos}."""
    if self._eval is None:
      return []
    offsets, tokens = self._eval['source_offsets'], self._eval['source_tokens']
    return [{'source': source, 'target': target,
             'source_ids': np.asarray(tokens[offsets[i]:offsets[i + 1]], np.int32)}
            for i, (source, target) in enumerate(self._eval_texts[:max(n, 0)])]


def _splits(data_cfg) -> dict[str, str]:
  splits = {'train': data_cfg.train_split}
  if data_cfg.eval_split:
    splits['eval'] = data_cfg.eval_split
  return splits


def _examples(data_cfg, cache_dir: str, tokenizer, spec: dict) -> tuple[dict, dict, list]:
  """({part: arrays}, {part: counts}, eval texts), from the cache if there."""
  splits, t = _splits(data_cfg), target_len(data_cfg)

  def pairs(split: str, texts: list | None) -> Iterator[dict]:
    for record in sources.records(data_cfg, split):
      if not sources.is_pair(record):
        raise not_pairs(data_cfg)
      if texts is not None:
        texts.append([data_cfg.task_prefix + record['source'], record['target']])
      yield record

  def build(tmp: str) -> dict:
    counts, texts = {}, []
    for part, split in splits.items():
      start = time.perf_counter()
      arrays, counts[part] = encode_pairs(tokenizer, pairs(split, texts if part == 'eval' else None),
                                          seq_len=data_cfg.seq_len, target_len=t, task_prefix=data_cfg.task_prefix)
      arrays['rows'] = pack(np.diff(arrays['source_offsets']), np.diff(arrays['target_offsets']),
                            data_cfg.seq_len, t)
      for key in _ARRAYS:
        np.save(os.path.join(tmp, f'{part}_{key}.npy'), arrays[key])
      logging.info('Encoded %s split %r: %d pairs into %d rows in %.1f s', data_cfg.dataset, split,
                   counts[part]['examples'], len(arrays['rows']) - 1, time.perf_counter() - start)
    with open(os.path.join(tmp, EVAL_TEXTS), 'w', encoding='utf-8') as f:
      json.dump(texts, f, ensure_ascii=False)
    return {'counts': counts}

  directory, saved = pipeline.cached(cache_dir, 'seq2seq', spec, build)
  arrays = {part: {key: np.load(os.path.join(directory, f'{part}_{key}.npy'),
                                mmap_mode='r' if key.endswith('_tokens') else None) for key in _ARRAYS}
            for part in splits}
  with open(os.path.join(directory, EVAL_TEXTS), encoding='utf-8') as f:
    texts = json.load(f)
  return arrays, saved['counts'], texts


def _check_pairs(data_cfg) -> None:
  """A DataError now, before a tokenizer is trained, when the train split's first record is no pair."""
  items = sources.records(data_cfg, data_cfg.train_split)
  try:
    first = next(items)
  finally:
    items.close()
  if not sources.is_pair(first):
    raise not_pairs(data_cfg)


@features.register('seq2seq')
def load(config, *, global_batch, seed, cache_dir, process_index=0, process_count=1) -> Seq2SeqDataset:
  """The run's `Seq2SeqDataset` over ``config.data``, built once into ``cache_dir``."""
  d = config.data
  t = target_len(d)
  pipeline._check_batch(global_batch, process_index, process_count)
  spec = pipeline.fingerprint(d, _FIELDS, features='seq2seq', target_len=t)
  if not os.path.exists(os.path.join(cache_dir, f'seq2seq-{pipeline._key(spec)}', 'spec.json')):
    _check_pairs(d)
  tokenizer = pipeline.tokenizer_for(d, cache_dir)
  arrays, counts, texts = _examples(d, cache_dir, tokenizer, spec)
  for part, split in _splits(d).items():
    c = counts[part]
    truncated = c['truncated_sources'] or c['truncated_targets']
    logging.log(logging.WARNING if truncated else logging.INFO,
                'split %r: truncated %d of %d sources to seq_len=%d and %d targets to target_len=%d', split,
                c['truncated_sources'], c['examples'], d.seq_len, c['truncated_targets'], t)
  return Seq2SeqDataset(tokenizer, arrays['train'], arrays.get('eval'), seq_len=d.seq_len, target_len=t,
                        global_batch=global_batch, seed=seed, process_index=process_index,
                        process_count=process_count, cache_dir=cache_dir, eval_texts=texts)
