"""'reverse_words' and 'sort_words': clean phrases of the embedded corpus, held-out eval phrases."""

import re

import pytest

from llm_jax import errors
from llm_jax.data import embedded, sources, string_tasks


def _records(make_cfg, task, split, **kwargs):
  return list(sources.records(make_cfg(dataset=task, **kwargs), split))


@pytest.mark.parametrize('task', ['reverse_words', 'sort_words'])
def test_targets_are_the_transformed_sources_and_eval_phrases_are_held_out(make_cfg, task):
  train, valid = _records(make_cfg, task, 'train'), _records(make_cfg, task, 'validation')
  assert len(train) > 2000 and len(valid) > 100
  for record in train + valid:
    words = record['source'].split(' ')
    assert re.fullmatch(r'[a-z]+( [a-z]+){2,7}', record['source'])
    expected = list(reversed(words)) if task == 'reverse_words' else sorted(words)
    assert record['target'] == ' '.join(expected)
  train_sources = {r['source'] for r in train}
  assert len(train_sources) == len(train)
  assert not train_sources & {r['source'] for r in valid}
  assert _records(make_cfg, task, 'train', max_documents=5) == train[:5]


def test_phrases_are_cut_cleaned_and_filtered():
  text = ('Call the function f(x) now. Results: each value is returned, in order; see the notes below!\n\n'
          'short one. Two words. The end is near? Never mind the gap, said he.')
  assert list(string_tasks.phrases_of(text)) == ['each value is returned', 'see the notes below', 'the end is near',
                                                 'never mind the gap']


def test_phrases_follow_the_corpus_split_in_canonical_order():
  phrases = string_tasks.split_phrases()
  expected = {split: [] for split in embedded.SPLITS}
  seen = set()
  for name, text in embedded.corpus():
    for phrase in string_tasks.phrases_of(text):
      if phrase not in seen:
        seen.add(phrase)
        expected[embedded.split_of(name)].append(phrase)
  assert {split: list(items) for split, items in phrases.items()} == expected


def test_other_splits_are_an_error(make_cfg):
  with pytest.raises(errors.DataError, match=r"dataset 'sort_words' has the splits \('train', 'validation'\)"):
    sources.records(make_cfg(dataset='sort_words'), 'test')
