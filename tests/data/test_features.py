"""The 'mlm' and 'classify' featurizers against independent references: BERT's masking
statistics, per-token row layouts, and examples built by the Hugging Face tokenizers library."""

import bisect
import json
import logging
import os

import numpy as np
import pytest

from llm_jax import config as config_lib
from llm_jax import errors
from llm_jax.data import features
from llm_jax.models import encoder, kinds

PAD, UNK, CLS, SEP, MASK = range(5)
VOCAB = 60


class Markers:
  """A tokenizer with BERT's markers over a vocabulary of VOCAB ids (no text needed)."""
  kind, vocab_size = 'markers', VOCAB
  pad_id, unk_id, cls_id, sep_id, mask_id, eos_id = PAD, UNK, CLS, SEP, MASK, SEP
  special_ids = (PAD, UNK, CLS, SEP, MASK)


def mlm_stream(n_docs, seed=0):
  """(tokens, doc_starts): documents [CLS] words [SEP], words from [5, VOCAB) with a few [UNK]."""
  rng = np.random.default_rng(seed)
  docs = []
  for _ in range(n_docs):
    words = rng.integers(5, VOCAB, rng.integers(1, 45))
    words[rng.random(len(words)) < 0.05] = UNK
    docs.append(np.concatenate([[CLS], words, [SEP]]))
  starts = np.concatenate([[0], np.cumsum([len(d) for d in docs])[:-1]])
  return np.concatenate(docs).astype(np.int32), starts.astype(np.int64)


def mlm_dataset(train, eval_=None, *, seq_len=32, batch=16, seed=0, p=0, count=1, probability=0.15):
  return features.MaskedLMDataset(Markers(), train, eval_, mlm_probability=probability, seq_len=seq_len,
                                  global_batch=batch, seed=seed, process_index=p, process_count=count)


def unmasked(batch):
  """The rows before masking: the targets put back at the chosen positions."""
  rows = batch['inputs'].copy()
  for i in range(len(rows)):
    n = int(batch['mlm_weights'][i].sum())
    rows[i, batch['mlm_positions'][i, :n]] = batch['mlm_targets'][i, :n]
  return rows


def find_row(row, tokens) -> int:
  """Where the row (its padding dropped) begins in the stream (tokens < 256)."""
  real = row[:np.flatnonzero(row != PAD).max() + 1] if (row != PAD).any() else row[:0]
  at = tokens.astype(np.uint8).tobytes().find(real.astype(np.uint8).tobytes())
  assert at >= 0, 'the unmasked row is not a slice of the stream'
  return at


def test_mlm_batch_has_the_encoder_schema():
  ds = mlm_dataset(mlm_stream(100))
  kind = encoder.EncoderKind(config_lib.model_config(_config(), VOCAB), mlm_probability=0.15)
  expected = {k: (s.shape, np.dtype(s.dtype)) for k, s in kind.schema(16, 32).items()}
  assert {k: (v.shape, v.dtype) for k, v in ds.train_batch(0).items()} == expected
  assert ds.predictions == encoder.mlm_predictions(32, 0.15) == 5


def test_mlm_masking_statistics_over_many_rows():
  train, eval_ = mlm_stream(2000, seed=1), mlm_stream(200, seed=2)
  ds = mlm_dataset(train, eval_, seq_len=32, batch=16)
  batches = [(ds.train_batch(s), train) for s in range(150)] + [(b, eval_) for b in ds.eval_batches()]
  outcomes = {'mask': 0, 'random': 0, 'kept': 0}
  for batch, (tokens, _) in batches:
    rows = unmasked(batch)
    for i, row in enumerate(rows):
      find_row(row, tokens)
      maskable = (batch['segment_ids'][i] != 0) & ~np.isin(row, Markers.special_ids)
      count = int(maskable.sum())
      n = min(ds.predictions, max(1, round(0.15 * count))) if count else 0
      weights = batch['mlm_weights'][i]
      assert weights.tolist() == [1.0] * n + [0.0] * (ds.predictions - n)
      chosen = batch['mlm_positions'][i, :n]
      assert (np.diff(chosen) > 0).all() and not batch['mlm_positions'][i, n:].any()
      assert not batch['mlm_targets'][i, n:].any()
      assert maskable[chosen].all(), 'a special or padding position was chosen'
      np.testing.assert_array_equal(batch['mlm_targets'][i, :n], row[chosen])
      others = np.setdiff1d(np.arange(len(row)), chosen)
      np.testing.assert_array_equal(batch['inputs'][i, others], row[others])
      new = batch['inputs'][i, chosen]
      outcomes['mask'] += int((new == MASK).sum())
      outcomes['kept'] += int((new == row[chosen]).sum())
      replaced = new[(new != MASK) & (new != row[chosen])]
      assert ((replaced >= 5) & (replaced < VOCAB)).all(), 'a random token was a special id'
      outcomes['random'] += len(replaced)
  total = sum(outcomes.values())
  ordinary = VOCAB - 5
  expected = {'mask': 0.8, 'random': 0.1 * (ordinary - 1) / ordinary, 'kept': 0.1 + 0.1 / ordinary}
  assert total > 10_000
  for name, p in expected.items():
    assert abs(outcomes[name] / total - p) < 5 * (p * (1 - p) / total) ** 0.5, (name, outcomes)


def test_mlm_rows_are_packed_documents_with_positions_and_segments():
  train = mlm_stream(300, seed=3)
  tokens, starts = train
  ds = mlm_dataset(train, seq_len=24, batch=8)
  for step in (0, 5, ds.rows_per_epoch // 8 + 1):
    batch = ds.train_batch(step)
    assert not batch['token_types'].any()
    for i, row in enumerate(unmasked(batch)):
      at = find_row(row, tokens)
      doc = lambda t: bisect.bisect_right(list(starts), t) - 1
      first, expected_positions, expected_segments, seg_start = doc(at), [], [], 0
      for j in range(24):
        if j and doc(at + j) != doc(at + j - 1):
          seg_start = j
        expected_positions.append(j - seg_start)
        expected_segments.append(doc(at + j) - first + 1)
      assert batch['positions'][i].tolist() == expected_positions
      assert batch['segment_ids'][i].tolist() == expected_segments


def test_mlm_batches_are_pure_functions_of_seed_and_step_and_split_over_processes():
  train, eval_ = mlm_stream(400, seed=4), mlm_stream(60, seed=5)
  a, b = mlm_dataset(train, eval_, seed=7), mlm_dataset(train, eval_, seed=7)
  steps = [0, 3, 30, 3, 0]
  for x, y in zip([a.train_batch(s) for s in steps], [b.train_batch(s) for s in reversed(steps)][::-1]):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  other = mlm_dataset(train, eval_, seed=8).train_batch(0)
  assert not np.array_equal(other['mlm_positions'], a.train_batch(0)['mlm_positions'])
  parts = [mlm_dataset(train, eval_, seed=7, p=p, count=4) for p in range(4)]
  for step in (0, 11):
    whole = a.train_batch(step)
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([p.train_batch(step)[key] for p in parts]), whole[key])
  for whole, *quarters in zip(a.eval_batches(), *(p.eval_batches() for p in parts), strict=True):
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([q[key] for q in quarters]), whole[key])


def test_mlm_eval_masks_are_fixed_and_cut_the_eval_stream_from_its_start():
  train, eval_ = mlm_stream(200, seed=6), mlm_stream(50, seed=7)
  ds = mlm_dataset(train, eval_, seq_len=32, batch=8)
  first, again = list(ds.eval_batches()), list(ds.eval_batches())
  other_seed = list(mlm_dataset(train, eval_, seq_len=32, batch=8, seed=99).eval_batches())
  for x, y, z in zip(first, again, other_seed, strict=True):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
      np.testing.assert_array_equal(x[key], z[key])
  rows = np.concatenate([unmasked(b) for b in first])
  n = len(eval_[0])
  assert ds.eval_rows == -(-n // 32) and len(first) == -(-ds.eval_rows // 8)
  np.testing.assert_array_equal(rows.ravel()[:n], eval_[0])
  assert not rows.ravel()[n:].any()
  assert len(list(ds.eval_batches(max_batches=2))) == 2
  assert not np.array_equal(first[0]['mlm_positions'], ds.train_batch(0)['mlm_positions'])


def test_mlm_never_predicts_in_a_row_without_text():
  only_markers = (np.array([CLS, SEP] * 40, np.int32), np.arange(0, 80, 2, dtype=np.int64))
  batch = mlm_dataset(only_markers, seq_len=16, batch=4).train_batch(0)
  assert not batch['mlm_weights'].any() and not batch['mlm_positions'].any()
  assert set(batch['inputs'].ravel().tolist()) == {CLS, SEP}  # nothing masked


def _config(**overrides):
  c = config_lib.base_config()
  c.model.kind, c.model.head = 'encoder', 'mlm'
  c.data.update(dict(tokenizer='char', seq_len=32, eval_split=''))
  for key, value in overrides.items():
    section, name = key.split('.')
    c[section][name] = value
  return c


@pytest.mark.parametrize('head, kind', [('mlm', 'char'), ('mlm', 'byte'), ('mlm', 'sentencepiece'),
                                        ('classify', 'char')])
def test_a_tokenizer_without_markers_is_refused_before_anything_is_built(tmp_path, head, kind):
  config = _config(**{'model.head': head, 'model.num_classes': 2, 'data.tokenizer': kind})
  with pytest.raises(errors.DataError) as info:
    features.load(kinds.get('encoder').features_of(head), config, global_batch=4, seed=0,
                  cache_dir=str(tmp_path / 'cache'))
  message = str(info.value)
  assert f"config.data.tokenizer='{kind}'" in message and 'wordpiece' in message and 'pretrained' in message
  assert not (tmp_path / 'cache').exists()


def test_mlm_from_the_embedded_corpus_wraps_each_document(tmp_path):
  config = _config(**{'data.tokenizer': 'wordpiece', 'data.vocab_size': 400, 'data.eval_split': 'validation',
                      'data.max_documents': 30})
  ds = features.load('mlm', config, global_batch=4, seed=0, cache_dir=str(tmp_path))
  tok = ds.tokenizer
  from llm_jax.data import sources
  texts = list(sources.documents(config.data, 'validation'))
  stream = np.concatenate([[tok.cls_id, *tok.encode(t), tok.sep_id] for t in texts])
  rows = np.concatenate([unmasked(b) for b in ds.eval_batches()]).ravel()
  np.testing.assert_array_equal(rows[:len(stream)], stream)
  assert ds.eval_tokens == len(stream)
  again = features.load('mlm', config, global_batch=4, seed=0, cache_dir=str(tmp_path))  # from the cache
  np.testing.assert_array_equal(again.train_batch(3)['inputs'], ds.train_batch(3)['inputs'])
  lm_dirs = [d for d in os.listdir(tmp_path) if d.startswith('tokens-')]
  assert len(lm_dirs) == 1  # one stream, keyed apart from the 'lm' featurizer's


# ---- 'classify' -----------------------------------------------------------------------------------

WORDS = 'the a film was good bad great awful plot actors music long short boring fun story'.split()


def _examples(n, seed, pair=False, max_words=14, classes=3):
  rng = np.random.default_rng(seed)
  text = lambda: ' '.join(rng.choice(WORDS, rng.integers(1, max_words)))
  return [{'text': text(), **({'text_b': text()} if pair else {}), 'label': int(rng.integers(classes))}
          for _ in range(n)]


def _classify(tmp_path, examples, *, n_eval, seq_len=12, batch=4, num_classes=3, seed=0, p=0, count=1):
  path = tmp_path / 'data.jsonl'
  path.write_text(''.join(json.dumps({'t': e['text'], 'u': e.get('text_b', ''), 'y': e['label']}) + '\n'
                          for e in examples))
  config = _config(**{'model.head': 'classify', 'model.num_classes': num_classes, 'data.dataset': 'files',
                      'data.files': str(path), 'data.eval_fraction': n_eval / len(examples),
                      'data.eval_split': 'validation', 'data.text_key': 't', 'data.label_key': 'y',
                      'data.text_b_key': 'u' if 'text_b' in examples[0] else '',
                      'data.tokenizer': 'wordpiece', 'data.vocab_size': 120, 'data.seq_len': seq_len})
  return features.load('classify', config, global_batch=batch, seed=seed, cache_dir=str(tmp_path / 'cache'),
                       process_index=p, process_count=count)


def _reference(tmp_path, example, seq_len):
  """The example's row by the tokenizers library itself: the saved tokenizer's [CLS]/[SEP]
  template and its own longest-first truncation."""
  from tokenizers import Tokenizer
  hf = Tokenizer.from_file(str(tmp_path / 'cache' / 'hf_tokenizer.json'))
  whole = hf.encode(example['text'], example.get('text_b'))
  hf.enable_truncation(seq_len)
  cut = hf.encode(example['text'], example.get('text_b'))
  pad = seq_len - len(cut.ids)
  return {'inputs': cut.ids + [PAD] * pad, 'token_types': cut.type_ids + [0] * pad,
          'positions': list(range(len(cut.ids))) + [0] * pad, 'segment_ids': [1] * len(cut.ids) + [0] * pad,
          'truncated': len(whole.ids) > seq_len}


def _rows(batches):
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


@pytest.mark.parametrize('pair', [False, True])
def test_classify_rows_equal_a_direct_per_example_construction(tmp_path, pair, caplog):
  examples = _examples(30, seed=1, pair=pair)
  with caplog.at_level(logging.INFO):
    ds = _classify(tmp_path, examples, n_eval=10)
  assert {k: (v.shape, v.dtype) for k, v in ds.train_batch(0).items()} == {
      k: (s.shape, np.dtype(s.dtype)) for k, s in kinds.example_schema(4, 12).items()}
  train, held_out = examples[:20], examples[20:]
  references = [_reference(tmp_path, e, 12) for e in examples]
  rows = _rows(list(ds.eval_batches()))
  assert len(rows['labels']) == 12 and ds.eval_rows == 10 and ds.rows_per_epoch == 20
  for i, (example, ref) in enumerate(zip(held_out, references[20:])):
    for key in ('inputs', 'token_types', 'positions', 'segment_ids'):
      assert rows[key][i].tolist() == ref[key], (key, i)
    assert rows['labels'][i] == example['label'] and rows['example_weights'][i] == 1
  if pair:
    for row, types in zip(rows['inputs'][:10], rows['token_types'][:10]):
      first_sep = row.tolist().index(SEP)
      assert not types[:first_sep + 1].any() and types[first_sep + 1:].tolist().count(1) == (
          len(row[first_sep + 1:][row[first_sep + 1:] != PAD]))
  by_row = {tuple(r['inputs']): (r, e['label']) for r, e in zip(references[:20], train)}
  epoch = _rows([ds.train_batch(s) for s in range(5)])
  assert sorted(map(tuple, epoch['inputs'].tolist())) == sorted(by_row)  # each example once per epoch
  for i, row in enumerate(epoch['inputs'].tolist()):
    ref, label = by_row[tuple(row)]
    assert epoch['token_types'][i].tolist() == ref['token_types'] and epoch['labels'][i] == label
  for split, refs in (('train', references[:20]), ('validation', references[20:])):
    message = f"split '{split}': truncated {sum(r['truncated'] for r in refs)} of {len(refs)} examples"
    assert sum(message in r.getMessage() for r in caplog.records) == 1
  assert any(r['truncated'] for r in references)


def test_classify_epochs_are_permutations_drawn_from_seed_and_step(tmp_path):
  examples = _examples(26, seed=2)
  ds = _classify(tmp_path, examples, n_eval=2, batch=4)
  n = ds.rows_per_epoch
  assert n == 24
  rows = _rows([ds.train_batch(s) for s in range(3 * n // 4)])
  epochs = [rows['inputs'][e * n:(e + 1) * n] for e in range(3)]
  for epoch in epochs[1:]:
    assert sorted(map(tuple, epoch.tolist())) == sorted(map(tuple, epochs[0].tolist()))
  assert not np.array_equal(epochs[0], epochs[1])
  halves = [_classify(tmp_path, examples, n_eval=2, batch=4, p=p, count=2) for p in range(2)]
  again = _classify(tmp_path, examples, n_eval=2, batch=4)
  for step in (0, 7):
    whole = ds.train_batch(step)
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([h.train_batch(step)[key] for h in halves]), whole[key])
      np.testing.assert_array_equal(again.train_batch(step)[key], whole[key])
  other = _classify(tmp_path, examples, n_eval=2, batch=4, seed=1)
  assert not np.array_equal(other.train_batch(0)['inputs'], ds.train_batch(0)['inputs'])


def test_classify_last_eval_batch_is_padded_with_weightless_rows(tmp_path):
  ds = _classify(tmp_path, _examples(27, seed=3), n_eval=7, batch=4)
  batches = list(ds.eval_batches())
  assert len(batches) == 2
  last = batches[-1]
  assert last['example_weights'].tolist() == [1, 1, 1, 0]
  for key in ('inputs', 'positions', 'segment_ids', 'token_types', 'labels'):
    assert not last[key][3].any(), key
  assert len(list(ds.eval_batches(max_batches=1))) == 1


def test_a_label_outside_the_classes_names_the_split_example_and_label(tmp_path):
  examples = _examples(20, seed=4, classes=2)
  examples[5]['label'] = 2
  with pytest.raises(errors.DataError) as info:
    _classify(tmp_path, examples, n_eval=4, num_classes=2)
  message = str(info.value)
  assert "split 'train' example 5 has label 2" in message and 'model.num_classes=2' in message
  assert '\n' not in message
