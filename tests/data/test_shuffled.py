"""The 'shuffled' task: sentences of the embedded corpus as written (1) or with their words shuffled (0)."""

import collections
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

from llm_jax import errors
from llm_jax.data import embedded, shuffled, sources


@pytest.fixture(scope='module')
def splits():
  return {split: list(sources.records(_cfg(), split)) for split in embedded.SPLITS}


def _cfg(**overrides):
  from tests.data.conftest import data_config
  return data_config(dataset='shuffled', **overrides)


def test_classes_are_balanced_and_splits_share_no_sentence(splits):
  for split, records in splits.items():
    assert all(set(r) == {'text', 'label'} for r in records)
    counts = collections.Counter(r['label'] for r in records)
    assert set(counts) == {0, 1}
    n = len(records)
    assert abs(counts[1] - n / 2) < 3 * (n / 4) ** 0.5, (split, counts)  # within 3 sigma of a fair coin
  assert len(splits['train']) > 5000 and len(splits['validation']) > 300
  sorted_words = lambda r: tuple(sorted(r['text'].split()))
  train = {sorted_words(r) for r in splits['train']}
  assert not train & {sorted_words(r) for r in splits['validation']}


def test_written_sentences_come_from_their_split_and_shuffled_ones_are_permutations(splits):
  for split, records in splits.items():
    corpus = ' '.join(' '.join(t.split()) for t in embedded.documents(split)).lower()
    for record in records[:300]:
      words = record['text'].split()
      assert len(words) >= shuffled.MIN_WORDS and record['text'] == record['text'].lower()
      if record['label'] == shuffled.WRITTEN:
        assert record['text'] in corpus
      else:
        [sentence] = [s for s in shuffled.split_sentences()[split] if sorted(s.split()) == sorted(words)][:1]
        assert words != sentence.split() and sorted(words) == sorted(sentence.split())


def test_each_example_is_a_pure_function_of_its_sentence():
  sentence = 'the quick brown fox jumps over the lazy dog'
  assert shuffled.example(sentence) == shuffled.example(sentence)
  made = [shuffled.example(f'{sentence} number {i}') for i in range(200)]
  assert {m['label'] for m in made} == {0, 1}
  for i, m in enumerate(made):
    label = hashlib.sha256(f'{sentence} number {i}'.encode()).digest()[0] & 1
    assert m['label'] == label
  assert shuffled.example('same same same same same same') is None  # no other order exists
  assert list(shuffled.sentences_of('Not a sentence\n\nToo short here. This one has enough words to count! '
                                    'X = f(y)')) == ['this one has enough words to count']


def test_the_task_is_the_same_in_another_process(splits):
  code = ('import hashlib, json; from llm_jax.data import sources; from tests.data.conftest import data_config; '
          'print(hashlib.sha256(json.dumps(list(sources.records(data_config(dataset="shuffled"), "validation")))'
          '.encode()).hexdigest())')
  other = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                         env={**os.environ, 'PYTHONHASHSEED': '4321'}, cwd=pathlib.Path(__file__).parents[2])
  assert other.stdout.strip() == hashlib.sha256(json.dumps(splits['validation']).encode()).hexdigest()


def test_max_documents_caps_the_examples(splits):
  assert list(sources.records(_cfg(max_documents=40), 'train')) == splits['train'][:40]


def test_unknown_split_names_the_key():
  with pytest.raises(errors.DataError, match='config.data.train_split'):
    sources.records(_cfg(), 'test')
