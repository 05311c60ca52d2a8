"""Random-token batches with the pipeline's contract, for benchmarks and step tests.

Every row is one document (segment id 1, positions 0..T-1, all weights 1); batch
``s`` is a pure function of (seed, s), like the real pipeline's.
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

  def __init__(self, vocab_size: int, seq_len: int, global_batch: int, seed: int = 0,
               process_index: int = 0, process_count: int = 1):
    self.tokenizer = _VocabOnly(vocab_size)
    self.seq_len, self.global_batch, self.seed = seq_len, global_batch, seed
    self.local_batch = global_batch // process_count
    self.offset = process_index * self.local_batch
    self.rows_per_epoch = 1 << 30

  def train_batch(self, step: int) -> dict:
    rng = np.random.default_rng(np.random.SeedSequence([self.seed, step]))
    rows = rng.integers(2, self.tokenizer.vocab_size, (self.global_batch, self.seq_len + 1), dtype=np.int32)
    rows = rows[self.offset:self.offset + self.local_batch]
    shape = (self.local_batch, self.seq_len)
    return dict(inputs=rows[:, :-1], targets=rows[:, 1:], weights=np.ones(shape, np.float32),
                positions=np.broadcast_to(np.arange(self.seq_len, dtype=np.int32), shape).copy(),
                segment_ids=np.ones(shape, np.int32))

  def eval_batches(self, max_batches: int = 0) -> Iterator[dict]:
    for i in range(max_batches or 2):
      yield self.train_batch(-1 - i + (1 << 31))
