"""Random batches of a model kind's schema, for benchmarks and step tests.

Every row is one document (segment id 1, positions 0..T-1, every position counted) and
the tokens are uniform over the vocabulary (``ModelKind.synthetic_batch``); batch ``s``
is a pure function of (seed, s), like the real pipeline's, and process p of P takes its
rows of each global batch.
"""

import dataclasses
from typing import Iterator

import numpy as np


@dataclasses.dataclass
class _VocabOnly:
  vocab_size: int
  pad_id: int = 0
  eos_id: int = 1


class SyntheticDataset:

  def __init__(self, kind, seq_len: int, global_batch: int, seed: int = 0, process_index: int = 0,
               process_count: int = 1):
    self.kind = kind
    self.tokenizer = _VocabOnly(kind.cfg.vocab_size)
    self.seq_len, self.global_batch, self.seed = seq_len, global_batch, seed
    self.local_batch = global_batch // process_count
    self.offset = process_index * self.local_batch
    self.rows_per_epoch = 1 << 30

  def train_batch(self, step: int) -> dict:
    rng = np.random.default_rng(np.random.SeedSequence([self.seed, step]))
    batch = self.kind.synthetic_batch(rng, self.global_batch, self.seq_len)
    return {k: v[self.offset:self.offset + self.local_batch] for k, v in batch.items()}

  def eval_batches(self, max_batches: int = 0) -> Iterator[dict]:
    for i in range(max_batches or 2):
      yield self.train_batch(-1 - i + (1 << 31))
