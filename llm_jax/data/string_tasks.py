"""'reverse_words' and 'sort_words': string transformations of English phrases, needing no download.

What they are for: checking on a CPU, in minutes, that an encoder-decoder model and
its training, decoding and BLEU work end to end. The target is a pure function of
the source, so a model that learns the task scores near 100 BLEU on held-out phrases:

* 'reverse_words': the source's words in reverse order ('the cat sat' -> 'sat cat the');
* 'sort_words': its words sorted in Python's default str order ('the cat sat' -> 'cat sat the').

The phrases: each document of the embedded corpus (``embedded``) is cut into
paragraphs (blank lines) and those into sentences (after '.', '!' or '?' followed by
a capital); a sentence counts when it starts with a capital and ends with '.', '!' or
'?' (this keeps code and lists out). Its final mark dropped, it is cut into phrases at
',', ';' and ':' followed by whitespace; a phrase is lowercased and each word
stripped of the punctuation at its ends (``string.punctuation``). A phrase is kept
when it then has `MIN_WORDS` to `MAX_WORDS` words, each of lowercase ASCII letters
only (no digits, no identifiers such as os.path or __init__), so the vocabulary is
small and a character tokenizer covers it with 26 letters and the space. A phrase
keeps the split (train / validation) of the document it came from; a phrase seen
before in the corpus's canonical order is dropped, so no validation source is a
training source. Order: the corpus's canonical order, the same on every machine;
``config.data.max_documents`` > 0 keeps the first that many (`sources.records`).

Records: {'source': phrase, 'target': the transformed phrase}.
"""

from __future__ import annotations

import functools
import re
import string
from typing import Callable, Iterator

from llm_jax import errors
from llm_jax.data import embedded, sources

MIN_WORDS, MAX_WORDS = 3, 8
_PARAGRAPH = re.compile(r'\n\s*\n')
_SENTENCE_BREAK = re.compile(r'(?<=[.!?])\s+(?=[A-Z])')
_PHRASE_BREAK = re.compile(r'[,;:]\s+')

TASKS: dict[str, Callable[[list[str]], list[str]]] = {
    'reverse_words': lambda words: words[::-1],
    'sort_words': sorted,
}


def _clean(phrase: str) -> str | None:
  words = [w.strip(string.punctuation) for w in phrase.lower().split()]
  if MIN_WORDS <= len(words) <= MAX_WORDS and all(w.isascii() and w.isalpha() for w in words):
    return ' '.join(words)
  return None


def phrases_of(text: str) -> Iterator[str]:
  """The phrases of one document that count, cleaned (rules in the module docstring)."""
  for paragraph in _PARAGRAPH.split(text):
    for sentence in _SENTENCE_BREAK.split(' '.join(paragraph.split())):
      if not sentence or not sentence[0].isupper() or sentence[-1] not in '.!?':
        continue
      for phrase in _PHRASE_BREAK.split(sentence[:-1]):
        cleaned = _clean(phrase)
        if cleaned:
          yield cleaned


@functools.lru_cache(maxsize=1)
def split_phrases() -> dict[str, tuple[str, ...]]:
  """{split: its phrases in corpus order}, each phrase once over both splits."""
  seen, out = set(), {split: [] for split in embedded.SPLITS}
  for name, text in embedded.corpus():
    split = embedded.split_of(name)
    for phrase in phrases_of(text):
      if phrase not in seen:
        seen.add(phrase)
        out[split].append(phrase)
  return {split: tuple(items) for split, items in out.items()}


def _register(task: str) -> None:
  transform = TASKS[task]

  @sources.register(task)
  def records(data_cfg, split: str) -> Iterator[dict]:
    if split not in embedded.SPLITS:
      raise errors.DataError(f'dataset {task!r} has the splits {embedded.SPLITS}, not {split!r}; set '
                             'config.data.train_split / eval_split accordingly.')
    return ({'source': p, 'target': ' '.join(transform(p.split()))} for p in split_phrases()[split])


for _task in TASKS:
  _register(_task)
