"""The 'seq2seq' featurizer against independent references: packed rows rebuilt by a
per-token Python loop, segments decoded back to their pairs, epochs, processes, truncation."""

import logging

import ml_collections
import numpy as np
import pytest

from llm_jax import errors
from llm_jax.data import features, pipeline, seq2seq, tokenizers

PAD, EOS = 0, 1
KEYS = {'encoder_inputs', 'encoder_positions', 'encoder_segment_ids', 'decoder_inputs', 'decoder_positions',
        'decoder_segment_ids', 'targets', 'weights'}


class Ids:
  """A tokenizer stand-in with pad 0 and eos 1 (ids given, no text needed)."""
  pad_id, eos_id = PAD, EOS


def random_examples(n, seq_len, target_len, seed=0):
  """[(source ids, target ids)], each ending in eos and fitting its side."""
  rng = np.random.default_rng(seed)
  make = lambda limit: rng.integers(3, 50, rng.integers(0, limit)).tolist() + [EOS]
  return [(make(seq_len), make(target_len)) for _ in range(n)]


def arrays_of(examples, seq_len, target_len):
  out = {}
  for side, index in (('source', 0), ('target', 1)):
    seqs = [np.asarray(e[index], np.int32) for e in examples]
    out[f'{side}_tokens'] = np.concatenate(seqs).astype(np.int32)
    out[f'{side}_offsets'] = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
  out['rows'] = seq2seq.pack(np.diff(out['source_offsets']), np.diff(out['target_offsets']), seq_len, target_len)
  return out


def make_dataset(train, eval_=None, *, seq_len=24, target_len=16, batch=4, seed=0, p=0, count=1):
  return seq2seq.Seq2SeqDataset(
      Ids(), arrays_of(train, seq_len, target_len), None if eval_ is None else arrays_of(eval_, seq_len, target_len),
      seq_len=seq_len, target_len=target_len, global_batch=batch, seed=seed, process_index=p, process_count=count)


def reference_rows(examples, seq_len, target_len):
  """The packed rows by a direct loop: a list of rows, each a dict of per-token lists."""
  groups, current = [], []
  for source, target in examples:
    if current and (sum(len(s) for s, _ in current) + len(source) > seq_len
                    or sum(len(t) for _, t in current) + len(target) > target_len):
      groups.append(current)
      current = []
    current.append((source, target))
  groups.append(current)
  rows = []
  for group in groups:
    row = {key: [] for key in KEYS}
    for k, (source, target) in enumerate(group, 1):
      for j, token in enumerate(source):
        row['encoder_inputs'].append(token)
        row['encoder_positions'].append(j)
        row['encoder_segment_ids'].append(k)
      for j, token in enumerate(target):
        row['targets'].append(token)
        row['decoder_inputs'].append(PAD if j == 0 else target[j - 1])
        row['decoder_positions'].append(j)
        row['decoder_segment_ids'].append(k)
        row['weights'].append(1.0)
    for key in KEYS:
      width = seq_len if key.startswith('encoder') else target_len
      row[key] += [0] * (width - len(row[key]))
    rows.append(row)
  return rows


def as_row(batch, i):
  return {key: batch[key][i].tolist() for key in KEYS}


def test_packed_rows_match_a_per_token_reference():
  train, eval_ = random_examples(300, 24, 16, seed=1), random_examples(41, 24, 16, seed=2)
  ds = make_dataset(train, eval_, batch=4)
  expected = reference_rows(eval_, 24, 16)
  assert ds.eval_rows == len(expected) and 41 > ds.eval_rows  # some rows hold several examples
  got = [b for b in ds.eval_batches()]
  assert len(got) == -(-len(expected) // 4)
  rows = [as_row(b, i) for b in got for i in range(4)]
  for i, row in enumerate(rows):
    if i < len(expected):
      assert row == {k: [float(x) for x in v] if k == 'weights' else v for k, v in expected[i].items()}
    else:  # the last batch's filling rows are all padding
      assert row == {k: [0] * (24 if k.startswith('encoder') else 16) for k in KEYS}
  for batch in got:
    assert set(batch) == KEYS
    for key, value in batch.items():
      assert value.dtype == (np.float32 if key == 'weights' else np.int32)
      assert value.shape == (4, 24 if key.startswith('encoder') else 16)
  assert ds.eval_tokens == sum(len(t) for _, t in eval_)
  assert ds.train_tokens == sum(len(t) for _, t in train)


def test_an_epoch_visits_each_packed_row_once_and_batches_are_pure_functions_of_seed_and_step():
  train = random_examples(200, 24, 16, seed=3)
  expected = reference_rows(train, 24, 16)
  a, b = make_dataset(train, seed=5, batch=8), make_dataset(train, seed=5, batch=8)
  assert a.rows_per_epoch == len(expected)
  steps = -(-len(expected) // 8) + 2
  seen = [as_row(a.train_batch(s), i) for s in range(steps) for i in range(8)]
  key = lambda row: repr(sorted(row.items()))
  reference = sorted(key({k: [float(x) for x in v] if k == 'weights' else v for k, v in r.items()})
                     for r in expected)
  assert sorted(key(r) for r in seen[:len(expected)]) == reference
  assert key(seen[len(expected)]) in reference  # the next epoch goes on from the same rows
  for s in reversed(range(steps)):
    for k, value in a.train_batch(s).items():
      np.testing.assert_array_equal(value, b.train_batch(s)[k])
  other = make_dataset(train, seed=6, batch=8).train_batch(0)
  assert not np.array_equal(other['encoder_inputs'], a.train_batch(0)['encoder_inputs'])


def test_processes_take_slices_of_the_global_batch():
  train, eval_ = random_examples(150, 24, 16, seed=4), random_examples(30, 24, 16, seed=5)
  whole = make_dataset(train, eval_, batch=8, seed=2)
  halves = [make_dataset(train, eval_, batch=8, seed=2, p=p, count=2) for p in range(2)]
  assert halves[0].local_batch == 4
  for step in (0, 3, 17):
    batch = whole.train_batch(step)
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([h.train_batch(step)[key] for h in halves]), batch[key])
  for batch, first, second in zip(whole.eval_batches(), *(h.eval_batches() for h in halves), strict=True):
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), batch[key])


def test_pack_starts_a_row_when_either_side_is_full():
  lengths = lambda *xs: np.asarray(xs, np.int64)
  assert seq2seq.pack(lengths(3, 3, 3), lengths(1, 1, 1), 6, 9).tolist() == [0, 2, 3]
  assert seq2seq.pack(lengths(1, 1, 1), lengths(5, 4, 1), 9, 9).tolist() == [0, 2, 3]
  assert seq2seq.pack(lengths(6, 1), lengths(1, 9), 6, 9).tolist() == [0, 1, 2]
  assert seq2seq.pack(lengths(), lengths(), 6, 9).tolist() == [0]


# ---- end to end: records -> tokenizer -> batches ------------------------------------------------


@pytest.fixture
def run_config(make_cfg):
  return lambda **data: ml_collections.ConfigDict({'data': make_cfg(**data),
                                                   'model': {'kind': 'encoder_decoder', 'head': 'lm'}})


def load(config, cache_dir, **kwargs):
  kwargs = {'global_batch': 4, 'seed': 0, **kwargs}
  return features.load('seq2seq', config, cache_dir=str(cache_dir), **kwargs)


def write_tsv(path, pairs):
  path.write_text(''.join(f'{s}\t{t}\n' for s, t in pairs))


PAIRS = [(f'the {w} sat {i}', f'le {w} assis {i} ß') for i, w in enumerate(['cat', 'dog', 'owl', 'emu'] * 8)]


def segments(ids, segment_ids):
  return {int(k): ids[segment_ids == k] for k in np.unique(segment_ids) if k}


def test_segment_k_of_the_decoder_is_the_target_of_segment_k_of_the_encoder(tmp_path, run_config):
  write_tsv(tmp_path / 'pairs.tsv', PAIRS)
  config = run_config(dataset='pairs', files=str(tmp_path / 'pairs.tsv'), eval_fraction=0.25, seq_len=64,
                      target_len=48, task_prefix='fr: ')
  ds = load(config, tmp_path / 'cache')
  tok = ds.tokenizer
  assert ds.seq_len == 64 and ds.target_len == 48
  targets = dict((f'fr: {s}', t) for s, t in PAIRS)
  found = set()
  for batch in [ds.train_batch(s) for s in range(ds.rows_per_epoch // 4 + 1)] + list(ds.eval_batches()):
    for i in range(4):
      enc = segments(batch['encoder_inputs'][i], batch['encoder_segment_ids'][i])
      dec = segments(batch['targets'][i], batch['decoder_segment_ids'][i])
      assert enc.keys() == dec.keys()
      for k in enc:
        assert enc[k][-1] == EOS and dec[k][-1] == EOS
        source, target = tok.decode(enc[k][:-1]), tok.decode(dec[k][:-1])
        assert targets[source] == target
        found.add(source)
        shifted = batch['decoder_inputs'][i][batch['decoder_segment_ids'][i] == k]
        assert shifted[0] == tok.pad_id and shifted[1:].tolist() == dec[k][:-1].tolist()
  assert found == set(targets)
  assert ds.train_tokens + ds.eval_tokens == sum(len(tok.encode(t)) + 1 for t in targets.values())


def test_eval_examples_are_the_first_eval_pairs_in_order(tmp_path, run_config):
  write_tsv(tmp_path / 'pairs.tsv', PAIRS)
  config = run_config(dataset='pairs', files=str(tmp_path / 'pairs.tsv'), eval_fraction=0.25, seq_len=64,
                      task_prefix='fr: ')
  ds = load(config, tmp_path / 'cache')
  held_out = PAIRS[-8:]
  examples = ds.eval_examples(3)
  assert [(e['source'], e['target']) for e in examples] == [(f'fr: {s}', t) for s, t in held_out[:3]]
  for e in examples:
    assert e['source_ids'].dtype == np.int32
    assert e['source_ids'].tolist() == ds.tokenizer.encode(e['source']).tolist() + [EOS]
  assert len(ds.eval_examples(100)) == 8
  no_eval = load(run_config(dataset='pairs', files=str(tmp_path / 'pairs.tsv'), eval_split=''), tmp_path / 'c2')
  assert no_eval.eval_examples(3) == [] and no_eval.eval_rows == 0 and not list(no_eval.eval_batches())


def test_truncation_keeps_eos_last_and_is_counted_per_split(tmp_path, run_config, caplog):
  pairs = [('a' * 30, 'b' * 5), ('c' * 3, 'd' * 40), ('e' * 30, 'f' * 40), ('g', 'h')] * 2
  write_tsv(tmp_path / 'pairs.tsv', pairs)
  config = run_config(dataset='pairs', files=str(tmp_path / 'pairs.tsv'), eval_fraction=0.5, seq_len=10,
                      target_len=8)
  with caplog.at_level(logging.INFO):
    ds = load(config, tmp_path / 'cache')
  messages = [r.getMessage() for r in caplog.records if 'truncated' in r.getMessage()]
  assert messages == [f"split '{split}': truncated 2 of 4 sources to seq_len=10 and 2 targets to target_len=8"
                      for split in ('train', 'validation')]
  assert all(r.levelno == logging.WARNING for r in caplog.records if 'truncated' in r.getMessage())
  [first] = ds.eval_examples(1)
  assert first['source_ids'].tolist() == ds.tokenizer.encode('a' * 9).tolist() + [EOS]
  batch = next(ds.eval_batches())
  dec = segments(batch['targets'][1], batch['decoder_segment_ids'][1])  # ('c' * 3, 'd' * 40) alone in its row
  assert ds.tokenizer.decode(dec[1][:-1]) == 'd' * 7 and dec[1][-1] == EOS


def test_a_text_dataset_is_refused_before_a_tokenizer_is_trained(tmp_path, run_config):
  with pytest.raises(errors.DataError) as info:
    load(run_config(dataset='embedded'), tmp_path / 'cache')
  message = str(info.value)
  for option in ("'embedded'", 'pairs', 'reverse_words', 'sort_words', 'wmt14_translate/fr-en', 'hf:'):
    assert option in message
  assert not (tmp_path / 'cache').exists()


def test_the_cache_is_read_back_and_keyed_by_the_lengths(tmp_path, run_config, monkeypatch):
  write_tsv(tmp_path / 'pairs.tsv', PAIRS)
  config = run_config(dataset='pairs', files=str(tmp_path / 'pairs.tsv'), seq_len=64)
  first = load(config, tmp_path / 'cache')
  from llm_jax.data import sources
  monkeypatch.setattr(sources, 'records', lambda *a: pytest.fail('the cache was not used'))
  again = load(config, tmp_path / 'cache')
  for key, value in first.train_batch(2).items():
    np.testing.assert_array_equal(value, again.train_batch(2)[key])
  monkeypatch.undo()
  shorter = load(run_config(dataset='pairs', files=str(tmp_path / 'pairs.tsv'), seq_len=64, target_len=12),
                 tmp_path / 'cache')
  assert shorter.target_len == 12 and len(list((tmp_path / 'cache').glob('seq2seq-*'))) == 2


@pytest.mark.parametrize('kind', ['char', 'sentencepiece'])
def test_the_tokenizer_learns_both_sides_and_the_prefix(tmp_path, run_config, kind):
  pairs = [(f'the {w} is here', f'zqx{w}vy {w}') for w in ['cat', 'dog', 'owl', 'emu', 'yak', 'ram'] * 20]
  write_tsv(tmp_path / 'pairs.tsv', pairs)
  config = run_config(dataset='pairs', files=str(tmp_path / 'pairs.tsv'), seq_len=64, tokenizer=kind,
                      vocab_size=60, task_prefix='Übersetze: ')
  tok = load(config, tmp_path / 'cache').tokenizer
  for text in ('zqxcatvy', 'Übersetze: ', 'the emu is here'):
    assert tokenizers.unknown_characters(tok, text) == {}
    assert tok.unk_id not in tok.encode(text).tolist()
  if kind == 'sentencepiece':
    assert len(tok.encode('Übersetze: ')) < len('Übersetze: ')  # the prefix has pieces of its own


def test_new_fingerprint_keys_only_when_set(make_cfg):
  from llm_jax import config as config_lib
  data_config = make_cfg
  defaults = config_lib.base_config().data
  assert {k: defaults[k] for k in pipeline._UNSET} == pipeline._UNSET
  plain = pipeline.fingerprint(data_config(), pipeline._TOKENIZER_FIELDS)
  assert not {'source_key', 'target_key', 'task_prefix', 'target_files'} & set(plain)
  for key, value in (('source_key', 'en'), ('target_key', 'fr'), ('task_prefix', 'x: '), ('target_files', 'b')):
    assert pipeline.fingerprint(data_config(**{key: value}), pipeline._TOKENIZER_FIELDS) == {**plain, key: value}
