"""Packing and batching against a direct per-token reference; load(), its cache, prefetch."""

import bisect
import gc
import hashlib
import json
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from llm_jax.data import embedded, pipeline, sources
from llm_jax.data.pipeline import Dataset, load, prefetch
from llm_jax.data.tokenizers import ByteTokenizer

KEYS = ('inputs', 'targets', 'weights', 'positions', 'segment_ids')


def stream(n_docs, seed=0, min_len=2, max_len=40):
  """(tokens, doc_starts) where token = stream position + 1 (0 stays the pad id)."""
  lengths = np.random.default_rng(seed).integers(min_len, max_len, n_docs)
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
  return np.arange(1, lengths.sum() + 1, dtype=np.int32), starts


def dataset(train, eval_=None, *, seq_len=16, batch=8, seed=0, p=0, count=1):
  return Dataset(ByteTokenizer(), train, eval_, seq_len=seq_len, global_batch=batch, seed=seed,
                 process_index=p, process_count=count)


def reference_row(start, seq_len, doc_starts, n):
  """The features of the row beginning at stream position `start`, token by token."""
  doc = lambda t: bisect.bisect_right(doc_starts, t) - 1 if t < n else -1
  row = {k: [] for k in KEYS}
  seg_start = 0
  for j in range(seq_len):
    t = start + j
    if j and doc(t) != doc(t - 1):
      seg_start = j
    real = t < n
    row['inputs'].append(t + 1 if real else 0)
    row['targets'].append(t + 2 if t + 1 < n else 0)
    row['weights'].append(float(t + 1 < n and doc(t) == doc(t + 1)))
    row['positions'].append(j - seg_start if real else 0)
    row['segment_ids'].append(doc(t) - doc(start) + 1 if real else 0)
  return row


def assert_rows_match_reference(batch, seq_len, doc_starts, n):
  for i in range(batch['inputs'].shape[0]):
    start = int(batch['inputs'][i, 0]) - 1
    expected = reference_row(start, seq_len, list(doc_starts), n)
    for key in KEYS:
      np.testing.assert_array_equal(batch[key][i], expected[key], err_msg=f'{key} row {i}')


def test_tokenize_documents_packs_ids_and_eos_in_chunks(monkeypatch):
  monkeypatch.setattr(pipeline, '_CHUNK_DOCS', 2)
  texts = ['ab', 'c', 'déf', 'g', 'hi']
  tokens, starts = pipeline.tokenize_documents(ByteTokenizer(), texts)
  expected, expected_starts = [], []
  for text in texts:
    expected_starts.append(len(expected))
    expected += [b + 3 for b in text.encode()] + [1]
  assert tokens.dtype == np.int32 and starts.dtype == np.int64
  assert tokens.tolist() == expected and starts.tolist() == expected_starts


def test_batch_shapes_and_dtypes():
  batch = dataset(stream(50)).train_batch(0)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      k: ((8, 16), np.float32 if k == 'weights' else np.int32) for k in KEYS}


def test_train_rows_match_the_reference():
  train = stream(60, seed=1)
  ds = dataset(train, seq_len=24, batch=8)
  assert ds.rows_per_epoch == (len(train[0]) - 24) // 25
  for step in (0, 1, ds.rows_per_epoch // 8, 3 * ds.rows_per_epoch // 8 + 1):
    assert_rows_match_reference(ds.train_batch(step), 24, train[1], len(train[0]))


def test_train_batch_is_a_pure_function_of_seed_and_step():
  train = stream(80)
  a, b = dataset(train, seed=3), dataset(train, seed=3)
  steps = [0, 1, 7, 40, 41, 3, 0]
  from_a = [a.train_batch(s) for s in steps]
  from_b = [b.train_batch(s) for s in reversed(steps)][::-1]
  for x, y in zip(from_a, from_b):
    for key in KEYS:
      np.testing.assert_array_equal(x[key], y[key])
  other = dataset(train, seed=4).train_batch(0)
  assert not np.array_equal(other['inputs'], from_a[0]['inputs'])


def _global_rows(ds, first, count):
  """Rows [first, first + count) of the concatenated epochs, as full L-token rows."""
  b = ds.global_batch
  batches = [ds.train_batch(s) for s in range(first // b, -(-(first + count) // b))]
  rows = np.concatenate([np.concatenate([x['inputs'], x['targets'][:, -1:]], 1) for x in batches])
  return rows[first % b:first % b + count]


def test_each_epoch_covers_its_shifted_stream_exactly_once():
  train = stream(70, seed=2)
  ds = dataset(train, seq_len=16, batch=8)
  r = ds.rows_per_epoch
  offsets = []
  for epoch in range(3):
    rows = _global_rows(ds, epoch * r, r)
    tokens = np.sort(rows.ravel())
    offset = int(tokens[0]) - 1
    assert 0 <= offset <= 16
    np.testing.assert_array_equal(tokens, np.arange(offset + 1, offset + 1 + r * 17))
    offsets.append(offset)
    assert not np.array_equal(rows[:, 0], np.sort(rows[:, 0]))
  assert len(set(offsets)) > 1


def test_batches_cross_epoch_boundaries_and_tiny_corpora_repeat():
  tiny = (np.arange(1, 18, dtype=np.int32), np.array([0, 9]))
  ds = dataset(tiny, seq_len=16, batch=4)
  assert ds.rows_per_epoch == 1
  batch = ds.train_batch(5)
  np.testing.assert_array_equal(batch['inputs'], np.tile(np.arange(1, 17), (4, 1)))
  assert_rows_match_reference(batch, 16, tiny[1], 17)


def test_process_slices_concatenate_to_the_global_batch():
  train, eval_ = stream(90, seed=5), stream(30, seed=6)
  whole = dataset(train, eval_, batch=8)
  parts = [dataset(train, eval_, batch=8, p=p, count=2) for p in range(2)]
  for step in (0, 3, 50):
    halves = [p.train_batch(step) for p in parts]
    for key in KEYS:
      np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]),
                                    whole.train_batch(step)[key])
  for full, *halves in zip(whole.eval_batches(), *(p.eval_batches() for p in parts)):
    for key in KEYS:
      np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), full[key])


def test_batch_not_divisible_by_processes_is_an_error():
  with pytest.raises(ValueError, match='multiple of the 3 processes'):
    dataset(stream(20), batch=8, p=0, count=3)


def test_eval_covers_every_target_once_and_pads_with_weight_zero():
  eval_ = stream(25, seed=7)
  tokens, starts = eval_
  n = len(tokens)
  ds = dataset(stream(40), eval_, seq_len=16, batch=4)
  batches = list(ds.eval_batches())
  assert ds.eval_rows == -(-(n - 1) // 16)
  assert len(batches) == -(-ds.eval_rows // 4) and ds.eval_rows % 4
  rows = {k: np.concatenate([b[k] for b in batches]) for k in KEYS}
  assert rows['inputs'].shape == (4 * len(batches), 16)
  real = rows['targets'] > 0
  np.testing.assert_array_equal(np.sort(rows['targets'][real]), tokens[1:])
  np.testing.assert_array_equal(rows['targets'][real] - 1, rows['inputs'][real])
  doc = np.searchsorted(starts, np.arange(n), side='right')
  assert rows['weights'].sum() == np.sum(doc[1:] == doc[:-1])
  assert not rows['weights'][~real].any() and not rows['segment_ids'][rows['inputs'] == 0].any()
  assert not rows['inputs'][ds.eval_rows:].any()
  for i in range(ds.eval_rows):
    expected = reference_row(16 * i, 16, list(starts), n)
    for key in KEYS:
      np.testing.assert_array_equal(rows[key][i], expected[key])
  assert len(list(ds.eval_batches(max_batches=1))) == 1
  assert list(dataset(stream(40)).eval_batches()) == []


def test_batch_building_is_fast():
  train = stream(200_000, max_len=60)
  ds = dataset(train, seq_len=256, batch=16)
  ds.train_batch(0)
  start = time.perf_counter()
  for step in range(1, 101):
    ds.train_batch(step)
  assert (time.perf_counter() - start) / 100 < 0.01


def _files_cfg(make_cfg, tmp_path, texts, **kw):
  for i, text in enumerate(texts):
    (tmp_path / f'doc{i:02d}.txt').write_text(text)
  return make_cfg(dataset='files', files=str(tmp_path / '*.txt'), **kw)


TEXTS = [f'Document {i}: ' + 'the quick brown fox jumps over the lazy dog. ' * (i + 3)
         for i in range(10)]


def _ids(ids) -> str:
  return ',' + ','.join(map(str, ids)) + ','


def test_load_packs_the_tokenized_documents(make_cfg, tmp_path):
  src = tmp_path / 'src'
  src.mkdir()
  cfg = _files_cfg(make_cfg, src, TEXTS, seq_len=16, eval_fraction=0.2)
  ds = load(cfg, global_batch=4, seed=0, cache_dir=str(tmp_path / 'cache'))
  tok = ds.tokenizer
  assert tok.vocab_size == 3 + len(set(''.join(TEXTS[:8])))
  packed = lambda texts: np.concatenate([np.append(tok.encode(t), tok.eos_id) for t in texts])
  eval_stream = np.append(packed(TEXTS[8:]), np.zeros(16, np.int32))
  rows = {k: np.concatenate([b[k] for b in ds.eval_batches()]) for k in KEYS}
  assert ds.eval_rows == -(-(len(eval_stream) - 17) // 16)
  for k in range(ds.eval_rows):
    np.testing.assert_array_equal(rows['inputs'][k], eval_stream[16 * k:16 * k + 16])
    np.testing.assert_array_equal(rows['targets'][k], eval_stream[16 * k + 1:16 * k + 17])
  train_stream = _ids(packed(TEXTS[:8]))
  for step in range(5):
    batch = ds.train_batch(step)
    for inputs, targets in zip(batch['inputs'], batch['targets']):
      assert _ids(np.append(inputs, targets[-1])) in train_stream


def test_second_load_reads_the_cache_only(make_cfg, tmp_path, monkeypatch):
  src = tmp_path / 'src'
  src.mkdir()
  cfg = _files_cfg(make_cfg, src, TEXTS, seq_len=16)
  first = load(cfg, global_batch=4, seed=1, cache_dir=str(tmp_path / 'cache'))

  def forbidden(*args, **kwargs):
    raise AssertionError('the cache was not reused')

  monkeypatch.setattr(pipeline, 'tokenize_documents', forbidden)
  monkeypatch.setattr(sources, 'documents', forbidden)
  again = load(cfg, global_batch=4, seed=1, cache_dir=str(tmp_path / 'cache'))
  for step in (0, 9):
    for key in KEYS:
      np.testing.assert_array_equal(again.train_batch(step)[key], first.train_batch(step)[key])
  for x, y in zip(again.eval_batches(), first.eval_batches(), strict=True):
    np.testing.assert_array_equal(x['targets'], y['targets'])


def test_cache_of_other_data_settings_is_refused(make_cfg, tmp_path):
  src = tmp_path / 'src'
  src.mkdir()
  cfg = _files_cfg(make_cfg, src, TEXTS, seq_len=16)
  load(cfg, global_batch=4, seed=0, cache_dir=str(tmp_path / 'cache'))
  other = make_cfg(dataset='files', files=str(src / 'doc0*.txt'), seq_len=16)
  with pytest.raises(ValueError, match='config.data.files differ'):
    load(other, global_batch=4, seed=0, cache_dir=str(tmp_path / 'cache'))


def test_corpus_shorter_than_one_row_is_an_error(make_cfg, tmp_path):
  cfg = _files_cfg(make_cfg, tmp_path, ['short text', 'tiny'], seq_len=64, eval_split='')
  with pytest.raises(ValueError, match=r"split 'train'.* has 11 tokens.*config.data.seq_len"):
    load(cfg, global_batch=2, seed=0, cache_dir=str(tmp_path / 'cache'))


def test_empty_text_is_an_error(make_cfg, tmp_path):
  cfg = _files_cfg(make_cfg, tmp_path, ['', ''], eval_split='')
  with pytest.raises(ValueError, match="split 'train' has no text"):
    load(cfg, global_batch=2, seed=0, cache_dir=str(tmp_path / 'cache'))


_NO_TENSORFLOW_LOAD = """
import hashlib, json, sys
sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None
import ml_collections
from llm_jax.data import embedded, load
cfg = ml_collections.ConfigDict(json.loads(sys.argv[2]))
ds = load(cfg, global_batch=16, seed=0, cache_dir=sys.argv[1])
print(hashlib.sha256(ds.train_batch(123)['inputs'].tobytes()).hexdigest())
assert 'tensorflow' not in sys.modules or sys.modules['tensorflow'] is None
"""


def test_load_embedded_corpus_same_with_and_without_tensorflow(make_cfg, tmp_path, tfds_dir):
  pytest.importorskip('tensorflow_datasets')
  cfg = make_cfg(dataset='embedded', data_dir=tfds_dir, seq_len=256)
  ds = load(cfg, global_batch=16, seed=0, cache_dir=str(tmp_path / 'tfds'))
  assert ds.tokenizer.vocab_size < 300 and ds.rows_per_epoch > 5000 and ds.eval_rows > 100
  batch = ds.train_batch(123)
  assert batch['inputs'].shape == (16, 256) and batch['weights'].mean() > 0.9
  first_eval_doc = next(embedded.documents('validation', use_tfds=False))
  first_eval_row = next(ds.eval_batches())['inputs'][0]
  assert ds.tokenizer.decode(first_eval_row)[:100] == first_eval_doc[:100]
  plain = subprocess.run([sys.executable, '-c', _NO_TENSORFLOW_LOAD, str(tmp_path / 'plain'),
                          json.dumps(cfg.to_dict())],
                         capture_output=True, text=True, cwd=pathlib.Path(__file__).parents[2])
  assert plain.returncode == 0, plain.stderr[-2000:]
  assert plain.stdout.strip() == hashlib.sha256(batch['inputs'].tobytes()).hexdigest()


def test_prefetch_yields_in_order_and_reraises():
  assert list(prefetch(iter(range(10)), size=3)) == list(range(10))

  def failing():
    yield from range(3)
    raise KeyError('boom')

  seen = []
  with pytest.raises(KeyError, match='boom'):
    for item in prefetch(failing()):
      seen.append(item)
  assert seen == [0, 1, 2]


def test_prefetch_thread_stops_when_the_consumer_stops():
  def endless():
    i = 0
    while True:
      yield i
      i += 1

  closed = prefetch(endless())
  assert [next(closed) for _ in range(5)] == list(range(5))
  closed.close()
  assert not closed._thread.is_alive()

  dropped = prefetch(endless())
  next(dropped)
  thread = dropped._thread
  del dropped
  gc.collect()
  thread.join(timeout=2)
  assert not thread.is_alive()
