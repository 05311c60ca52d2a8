"""'shuffled': is this sentence in its written word order? A classification task that needs no download.

What it is for: checking on a CPU, in minutes, that masked-LM pretraining helps
fine-tuning. Pretrain an encoder on the embedded corpus, then fine-tune a classifier
here on a small labelled set (``config.data.max_documents``) from the pretrained
weights and from scratch: the pretrained model should learn faster and score higher.

Why it is learnable: the two classes hold the same words and differ only in their
order. A sentence as written (label 1) follows English syntax; its words shuffled
(label 0) almost never do. No bag of words separates them, so the classifier must
read order, which is what masked-LM pretraining on text of the same kind teaches.

The examples: each document of the embedded corpus (``embedded``) is cut into
paragraphs (blank lines) and those into sentences (after '.', '!' or '?' followed
by a capital); a sentence counts when it starts with a capital, ends with '.', '!'
or '?' and has at least `MIN_WORDS` words (this keeps code and lists out). It is
then lowercased, its whitespace collapsed to single spaces and its final mark
dropped, so that neither a leading capital nor a closing full stop tells a written
sentence from a shuffled one: only the order of its words does. A sentence keeps the split (train /
validation) of the document it came from; a sentence seen before in the corpus's
canonical order is dropped, so the splits share none. Whether an example is the
sentence as written or shuffled is bit 0 of its SHA-256 (the classes are balanced
in expectation); the shuffled order sorts the words by a hash of (sentence, index).
Both are pure functions of the sentence, the same on every machine. A shuffle that
gives back the written order becomes a rotation by one word; a sentence whose every
order is the same (one word repeated) is dropped.

Records: {'text': str, 'label': 1 written | 0 shuffled}, in corpus order.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Iterator

from llm_jax import errors
from llm_jax.data import embedded, sources

MIN_WORDS = 6
WRITTEN, SHUFFLED = 1, 0
_PARAGRAPH = re.compile(r'\n\s*\n')
_SENTENCE_BREAK = re.compile(r'(?<=[.!?])\s+(?=[A-Z])')


def sentences_of(text: str) -> Iterator[str]:
  """The sentences of one document that count, lowercased, whitespace collapsed, final mark dropped."""
  for paragraph in _PARAGRAPH.split(text):
    for sentence in _SENTENCE_BREAK.split(' '.join(paragraph.split())):
      if (len(sentence.split()) >= MIN_WORDS and sentence[0].isupper()
          and sentence[-1] in '.!?'):
        yield sentence[:-1].rstrip().lower()


def example(sentence: str) -> dict | None:
  """The record made of ``sentence``: as written or shuffled, by its hash; None if no
  order differs from the written one."""
  digest = hashlib.sha256(sentence.encode('utf-8')).digest()
  if digest[0] & 1:
    return {'text': sentence, 'label': WRITTEN}
  words = sentence.split()
  rank = lambda i: hashlib.sha256(digest + i.to_bytes(4, 'big')).digest()
  shuffled = [words[i] for i in sorted(range(len(words)), key=rank)]
  if shuffled == words:
    shuffled = words[1:] + words[:1]
  if shuffled == words:
    return None
  return {'text': ' '.join(shuffled), 'label': SHUFFLED}


@functools.lru_cache(maxsize=1)
def split_sentences() -> dict[str, tuple[str, ...]]:
  """{split: its sentences in corpus order}, each sentence once over both splits."""
  seen, out = set(), {split: [] for split in embedded.SPLITS}
  for name, text in embedded.corpus():
    split = embedded.split_of(name)
    for sentence in sentences_of(text):
      if sentence not in seen:
        seen.add(sentence)
        out[split].append(sentence)
  return {split: tuple(items) for split, items in out.items()}


@sources.register('shuffled')
def records(data_cfg, split: str) -> Iterator[dict]:
  if split not in embedded.SPLITS:
    raise errors.DataError(f"dataset 'shuffled' has the splits {embedded.SPLITS}, not {split!r}; set "
                           'config.data.train_split / eval_split accordingly.')
  made = (example(s) for s in split_sentences()[split])
  return (r for r in made if r is not None)
