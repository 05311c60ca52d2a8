"""Featurizers by name: how a model kind's batches are made from a split's records.

  'lm'        packed rows for next-token prediction (``pipeline.Dataset``)
  'mlm'       packed rows of [CLS] document [SEP] with positions chosen to predict
              (``MaskedLMDataset``; BERT's masked-LM pretraining)
  'classify'  whole labelled examples, [CLS] a [SEP] (b [SEP]) (``ExampleDataset``)
  'seq2seq'   packed (source, target) pairs for encoder-decoder models
              (``seq2seq.Seq2SeqDataset``; batches of encoder_* and decoder_* keys)

``load(name, config, ...)`` builds the one a kind names (``ModelKind.features_of``); ``names()``
and ``load`` import the featurizers that live in modules of their own (`_PLUGINS`).
Each dataset offers what the trainer and the start-up summary read: tokenizer,
seq_len, global_batch, local_batch, rows_per_epoch, train_tokens, eval_tokens,
train_batch(step) and eval_batches(max_batches); its batches hold exactly the keys
of the kind's schema (``EncoderKind.schema``, ``kinds.example_schema``), and a
training batch is a pure function of (seed, step): resume and any split over
processes give the same rows.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from typing import Iterable, Iterator

import numpy as np

from llm_jax import errors
from llm_jax.data import pipeline, sources, tokenizers

_FEATURIZERS = {}
_PLUGINS = ('llm_jax.data.seq2seq',)  # featurizers in modules of their own, registered on import
EVAL_SPAWN_KEY = 1  # eval masks come from SeedSequences with this spawn key; training ones have none
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the chosen positions: [MASK], a random token; the rest stay


def register(name: str):
  def wrap(fn):
    _FEATURIZERS[name] = fn
    return fn
  return wrap


def _load_plugins() -> None:
  for module in _PLUGINS:
    importlib.import_module(module)


def names() -> tuple[str, ...]:
  _load_plugins()
  return tuple(sorted(_FEATURIZERS))


def load(name: str, config, **kwargs):
  _load_plugins()
  if name not in _FEATURIZERS:
    raise errors.ConfigError(f'no data featurizer {name!r} for config.model.kind={config.model.kind!r} '
                             f'head {config.model.head!r}; known: {", ".join(names())}.')
  return _FEATURIZERS[name](config, **kwargs)


@register('lm')
def _lm(config, *, global_batch, seed, cache_dir, process_index=0, process_count=1):
  return pipeline.load(config.data, global_batch=global_batch, seed=seed, cache_dir=cache_dir,
                       process_index=process_index, process_count=process_count)


def _needs(data_cfg, roles: tuple[str, ...], what: str, tokenizer=None) -> None:
  """DataError unless the tokenizer (its class, before one is built) has the ids ``roles``."""
  holder = tokenizer if tokenizer is not None else tokenizers.tokenizer_class(data_cfg.tokenizer)
  missing = [role for role in roles if getattr(holder, f'{role}_id', 0) is None]
  if missing:
    names_ = ', '.join(f'[{r.upper()}]' for r in missing)
    raise errors.DataError(f'config.data.tokenizer={data_cfg.tokenizer!r} has no {names_} token, which {what} '
                           'needs; use --config.data.tokenizer=wordpiece (trained on the data) or pretrained '
                           '(with config.data.tokenizer_path).')


# ---- 'mlm' ----------------------------------------------------------------------------------


def choose_predictions(rng: np.random.Generator, candidates: np.ndarray, tokens: np.ndarray, *,
                       predictions: int, probability: float, mask_id: int, ordinary: np.ndarray):
  """BERT's masking of one row: (positions [n] sorted, their new tokens [n]).

  ``candidates`` are the row's maskable positions (not special, not padding). n =
  min(predictions, max(1, round(probability * count))), 0 without candidates, chosen
  uniformly without replacement; of them MASK_SHARE become ``mask_id``, RANDOM_SHARE a
  token drawn uniformly from ``ordinary`` (the non-special ids), the rest stay.
  """
  count = len(candidates)
  n = min(predictions, max(1, round(probability * count))) if count else 0
  chosen = np.sort(rng.choice(candidates, n, replace=False))
  draw = rng.random(n)
  random_tokens = ordinary[rng.integers(0, len(ordinary), n)]
  new = np.where(draw < MASK_SHARE, mask_id,
                 np.where(draw < MASK_SHARE + RANDOM_SHARE, random_tokens, tokens[chosen]))
  return chosen, new.astype(np.int32)


class MaskedLMDataset(pipeline.Dataset):
  """Packed rows of seq_len tokens for masked-LM pretraining, each document [CLS] ids [SEP].

  Rows are cut and ordered as ``pipeline.Dataset``'s (epoch offset and permutation from
  (seed, epoch), global row g of step s = s * global_batch + its index, process p its
  slice; eval rows cut from the eval stream's start with stride seq_len). Per row:
  'inputs' the tokens after masking, 'positions' restarting at each document,
  'segment_ids' numbering the documents (0 = padding), 'token_types' 0;
  'mlm_positions' [B, P] sorted (P = ``encoder.mlm_predictions``), padded with 0 and
  'mlm_weights' 0, 'mlm_targets' the original tokens there. Which positions and what
  they become (``choose_predictions``) is drawn from
  ``default_rng(SeedSequence([seed, step, g]))``; eval row r uses
  ``SeedSequence([r], spawn_key=(EVAL_SPAWN_KEY,))``: the same masks on every call and
  for every seed, never a training step's.
  """

  row_length_extra = 0
  eval_overlap = 0
  row_unit = 'config.data.seq_len'

  def __init__(self, tokenizer, train, eval_, *, mlm_probability: float, **kwargs):
    from llm_jax.models import encoder
    super().__init__(tokenizer, train, eval_, **kwargs)
    self.mlm_probability = mlm_probability
    self.predictions = encoder.mlm_predictions(self.seq_len, mlm_probability)
    self._special = np.asarray(tokenizer.special_ids, np.int32)
    self._ordinary = np.setdiff1d(np.arange(tokenizer.vocab_size, dtype=np.int32), self._special)

  def _rng(self, row: int, step: int | None) -> np.random.Generator:
    if step is None:
      return np.random.default_rng(np.random.SeedSequence([int(row)], spawn_key=(EVAL_SPAWN_KEY,)))
    return np.random.default_rng(np.random.SeedSequence([self.seed, step, int(row)]))

  def _batch(self, stream, starts, *, rows, step):
    packed = pipeline.packed_rows(*stream, starts, self.row_length, self.tokenizer.pad_id)
    tokens = packed['tokens']
    maskable = packed['valid'] & ~np.isin(tokens, self._special)
    inputs = tokens.copy()
    shape = (len(rows), self.predictions)
    positions, targets = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    weights = np.zeros(shape, np.float32)
    for i, row in enumerate(rows):
      chosen, new = choose_predictions(
          self._rng(row, step), np.flatnonzero(maskable[i]), tokens[i], predictions=self.predictions,
          probability=self.mlm_probability, mask_id=self.tokenizer.mask_id, ordinary=self._ordinary)
      n = len(chosen)
      positions[i, :n], targets[i, :n], weights[i, :n] = chosen, tokens[i, chosen], 1.0
      inputs[i, chosen] = new
    return {'inputs': inputs, 'positions': packed['positions'], 'segment_ids': packed['segment_ids'],
            'token_types': np.zeros_like(inputs), 'mlm_positions': positions, 'mlm_targets': targets,
            'mlm_weights': weights}


@register('mlm')
def _mlm(config, *, global_batch, seed, cache_dir, process_index=0, process_count=1):
  d = config.data
  what = "masked-LM pretraining (config.model.head='mlm')"
  _needs(d, ('mask', 'cls', 'sep'), what)
  pipeline._check_batch(global_batch, process_index, process_count)
  tokenizer = pipeline.tokenizer_for(d, cache_dir)
  _needs(d, ('mask', 'cls', 'sep'), what, tokenizer)
  packed = pipeline.streams(d, cache_dir, tokenizer, features='mlm', prefix=(tokenizer.cls_id,),
                            suffix=(tokenizer.sep_id,))
  return MaskedLMDataset(tokenizer, packed['train'], packed.get('eval'), mlm_probability=d.mlm_probability,
                         seq_len=d.seq_len, global_batch=global_batch, seed=seed, process_index=process_index,
                         process_count=process_count, cache_dir=cache_dir,
                         name=f'config.data.dataset={d.dataset!r} split {d.train_split!r}')


# ---- 'classify' -----------------------------------------------------------------------------


def truncated_lengths(a: int, b: int | None, budget: int) -> tuple[int, int | None]:
  """Longest-first truncation of token counts a and b (None: no second text) to ``budget``
  in all, as the Hugging Face tokenizers library does it: the shorter text (a on a
  tie) keeps min(its length, budget // 2), the longer one the rest."""
  if b is None:
    return min(a, budget), None
  if a + b <= budget:
    return a, b
  if a > b:
    kept = min(b, budget // 2)
    return budget - kept, kept
  kept = min(a, budget // 2)
  return kept, budget - kept


def encode_examples(tokenizer, items: Iterable[dict], seq_len: int, origin: str) -> tuple[dict, int]:
  """({'inputs' [N, T], 'token_types' [N, T], 'lengths' [N], 'labels' [N]}, truncated count)
  of the records ``items``: [CLS] a [SEP] (b [SEP]), token types 0 then 1, padded with pad_id."""
  cls, sep = [tokenizer.cls_id], [tokenizer.sep_id]
  rows, types, lengths, labels, truncated = [], [], [], [], 0
  for index, record in enumerate(items):
    if 'label' not in record:
      raise errors.DataError(f'{origin} example {index} has no label; set config.data.label_key to the field '
                             'holding the integer label.')
    a = tokenizer.encode(record['text']).tolist()
    b = tokenizer.encode(record['text_b']).tolist() if 'text_b' in record else None
    budget = seq_len - 2 - (b is not None)
    if budget < 1:
      raise errors.DataError(f'config.data.seq_len={seq_len} leaves no room for text beside [CLS] and [SEP]; '
                             'raise it.')
    la, lb = truncated_lengths(len(a), None if b is None else len(b), budget)
    truncated += la < len(a) or (b is not None and lb < len(b))
    first = cls + a[:la] + sep
    second = [] if b is None else b[:lb] + sep
    rows.append(first + second)
    types.append([0] * len(first) + [1] * len(second))
    lengths.append(len(first) + len(second))
    labels.append(int(record['label']))
  inputs = np.full((len(rows), seq_len), tokenizer.pad_id, np.int32)
  token_types = np.zeros((len(rows), seq_len), np.int8)
  for i, (row, kinds_) in enumerate(zip(rows, types)):
    inputs[i, :len(row)], token_types[i, :len(row)] = row, kinds_
  return {'inputs': inputs, 'token_types': token_types, 'lengths': np.asarray(lengths, np.int32),
          'labels': np.asarray(labels, np.int64)}, truncated


class ExampleDataset:
  """Whole labelled examples, one per row of seq_len tokens, never packed together.

  Training: epoch e visits the train examples in the permutation drawn from
  ``default_rng(SeedSequence([seed, e]))``; step s takes examples [s*B, (s+1)*B) of
  the concatenated epochs and process p its slice. Eval: the examples in order, the
  last batch padded with rows of example_weights 0. Keys exactly
  ``kinds.example_schema``'s: 'inputs', 'positions' (0.. along the example),
  'segment_ids' (1 on the example, 0 on padding), 'token_types' [B, T] int32,
  'labels' [B] int32, 'example_weights' [B] float32. rows_per_epoch is the number
  of train examples; train_tokens and eval_tokens count their non-padding tokens.
  """

  def __init__(self, tokenizer, train: dict, eval_: dict | None, *, seq_len: int, global_batch: int,
               seed: int, process_index: int = 0, process_count: int = 1, cache_dir: str = ''):
    pipeline._check_batch(global_batch, process_index, process_count)
    self.tokenizer, self.seq_len, self.global_batch, self.seed = tokenizer, seq_len, global_batch, seed
    self.process_index, self.local_batch = process_index, global_batch // process_count
    self.cache_dir = cache_dir
    self._train, self._eval = train, eval_
    self.rows_per_epoch = len(train['labels'])
    self.eval_rows = 0 if eval_ is None else len(eval_['labels'])
    self.train_tokens = int(train['lengths'].sum())
    self.eval_tokens = 0 if eval_ is None else int(eval_['lengths'].sum())
    self._epochs: dict[int, np.ndarray] = {}

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._epochs:
      rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
      self._epochs[epoch] = rng.permutation(self.rows_per_epoch)
      while len(self._epochs) > pipeline._EPOCH_CACHE:
        del self._epochs[min(self._epochs)]
    return self._epochs[epoch]

  def _rows(self, arrays: dict, index: np.ndarray, real: np.ndarray) -> dict[str, np.ndarray]:
    lengths = np.where(real, arrays['lengths'][index], 0)
    cols = np.arange(self.seq_len)
    on = cols < lengths[:, None]
    return {'inputs': np.where(on, arrays['inputs'][index], self.tokenizer.pad_id).astype(np.int32),
            'positions': np.where(on, cols, 0).astype(np.int32), 'segment_ids': on.astype(np.int32),
            'token_types': np.where(on, arrays['token_types'][index], 0).astype(np.int32),
            'labels': np.where(real, arrays['labels'][index], 0).astype(np.int32),
            'example_weights': real.astype(np.float32)}

  def _local_rows(self, batch: int) -> np.ndarray:
    first = batch * self.global_batch + self.process_index * self.local_batch
    return first + np.arange(self.local_batch, dtype=np.int64)

  def train_batch(self, step: int) -> dict[str, np.ndarray]:
    if step < 0:
      raise ValueError(f'step={step} must be >= 0.')
    epochs, within = np.divmod(self._local_rows(step), self.rows_per_epoch)
    index = np.empty_like(within)
    for epoch in np.unique(epochs):
      mask = epochs == epoch
      index[mask] = self._permutation(int(epoch))[within[mask]]
    return self._rows(self._train, index, np.ones(len(index), bool))

  def eval_batches(self, max_batches: int = 0) -> Iterator[dict[str, np.ndarray]]:
    if self._eval is None:
      return
    n_batches = -(-self.eval_rows // self.global_batch)
    if max_batches > 0:
      n_batches = min(n_batches, max_batches)
    for b in range(n_batches):
      rows = self._local_rows(b)
      real = rows < self.eval_rows
      yield self._rows(self._eval, np.where(real, rows, 0), real)


_CLASSIFY_FIELDS = pipeline._STREAM_FIELDS + ('label_key', 'seq_len')
_PARTS = ('inputs', 'token_types', 'lengths', 'labels')


def _examples(data_cfg, cache_dir: str, tokenizer) -> tuple[dict[str, dict], dict]:
  """({'train', 'eval'?: arrays}, {part: [truncated, total]}), from the cache if there."""
  splits = {'train': data_cfg.train_split}
  if data_cfg.eval_split:
    splits['eval'] = data_cfg.eval_split
  spec = pipeline.fingerprint(data_cfg, _CLASSIFY_FIELDS, features='classify')

  def build(tmp: str) -> dict:
    counts = {}
    for part, split in splits.items():
      start = time.perf_counter()
      origin = f'config.data.dataset={data_cfg.dataset!r} split {split!r}'
      arrays, truncated = encode_examples(tokenizer, sources.records(data_cfg, split), data_cfg.seq_len, origin)
      for key, array in arrays.items():
        np.save(os.path.join(tmp, f'{part}_{key}.npy'), array)
      counts[part] = [truncated, len(arrays['labels'])]
      logging.info('Encoded %s split %r: %d examples in %.1f s', data_cfg.dataset, split, len(arrays['labels']),
                   time.perf_counter() - start)
    return {'counts': counts}

  directory, saved = pipeline.cached(cache_dir, 'examples', spec, build)
  arrays = {part: {key: np.load(os.path.join(directory, f'{part}_{key}.npy')) for key in _PARTS}
            for part in splits}
  return arrays, saved['counts']


def _check_labels(labels: np.ndarray, num_classes: int, data_cfg, split: str) -> None:
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if len(bad):
    i = int(bad[0])
    raise errors.DataError(f'config.data.dataset={data_cfg.dataset!r} split {split!r} example {i} has label '
                           f'{int(labels[i])}, outside [0, config.model.num_classes={num_classes}); set '
                           'model.num_classes to the number of labels, or use a split that has labels.')


@register('classify')
def _classify(config, *, global_batch, seed, cache_dir, process_index=0, process_count=1):
  d = config.data
  _needs(d, ('cls', 'sep'), "classification (config.model.head='classify')")
  pipeline._check_batch(global_batch, process_index, process_count)
  tokenizer = pipeline.tokenizer_for(d, cache_dir)
  _needs(d, ('cls', 'sep'), "classification (config.model.head='classify')", tokenizer)
  arrays, counts = _examples(d, cache_dir, tokenizer)
  for part, split in (('train', d.train_split), ('eval', d.eval_split)):
    if part in arrays:
      _check_labels(arrays[part]['labels'], config.model.num_classes, d, split)
      truncated, total = counts[part]
      logging.log(logging.WARNING if truncated else logging.INFO, 'split %r: truncated %d of %d examples to '
                  'seq_len=%d', split, truncated, total, d.seq_len)
  return ExampleDataset(tokenizer, arrays['train'], arrays.get('eval'), seq_len=d.seq_len,
                        global_batch=global_batch, seed=seed, process_index=process_index,
                        process_count=process_count, cache_dir=cache_dir)
