"""What the benchmarks share: synthetic data of a config's model kind, config overrides, the
compiled step and its memory."""

import time
from typing import Optional

import jax
import ml_collections

from llm_jax.data.synthetic import SyntheticDataset


def synthetic_vocab(config, vocab_size: int = -1) -> int:
  if vocab_size > 0:
    return vocab_size
  return {'sentencepiece': config.data.vocab_size, 'byte': 259}.get(config.data.tokenizer, 65)


def synthetic_dataset(config, vocab_size: int = -1, batch_size: int = 0) -> SyntheticDataset:
  """Random batches of ``config``'s model kind over a vocabulary of ``synthetic_vocab`` ids."""
  from llm_jax.train import trainer
  kind = trainer.make_kind(config, synthetic_vocab(config, vocab_size))
  return SyntheticDataset(kind, config.data.seq_len, batch_size or config.train.batch_size, config.seed,
                          jax.process_index(), jax.process_count())


def with_overrides(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """A copy of ``config`` (locked as it was) with dotted keys set."""
  config = config.copy_and_resolve_references()
  config.update_from_flattened_dict(overrides)
  return config


def flatten(config: ml_collections.ConfigDict) -> dict:
  """{'model.dtype': 'float32', ...}: every leaf of a config under its dotted key."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update({f'{key}.{k}': v for k, v in flatten(value).items()})
    else:
      out[key] = value
  return out


def memory_stats(compiled) -> dict:
  """Per-device bytes of a compiled executable: peak_memory_bytes / _gib (None if unreported)."""
  try:
    stats = compiled.memory_analysis()
  except (NotImplementedError, RuntimeError, AttributeError):
    stats = None
  if isinstance(stats, (list, tuple)):  # one entry per device on some paths
    stats = stats[0] if stats else None
  parts = {name: getattr(stats, f'{name}_size_in_bytes', None)
           for name in ('argument', 'output', 'temp', 'alias', 'generated_code')}
  if stats is None or any(parts[k] is None for k in ('argument', 'output', 'temp')):
    return dict(peak_memory_bytes=None, peak_memory_gib=None, memory_breakdown=None)
  total = parts['argument'] + parts['output'] + parts['temp'] - (parts['alias'] or 0)
  parts['xla_peak'] = getattr(stats, 'peak_memory_in_bytes', None)  # XLA's own figure, where exposed
  return dict(peak_memory_bytes=int(total), peak_memory_gib=round(total / 2 ** 30, 4),
              memory_breakdown={k: v for k, v in parts.items() if v is not None})


def compile_step(trainer, state, batch, compiler_options: Optional[dict] = None):
  """(callable step, seconds to trace + lower + compile or None, memory_stats) of the train step.

  ``compiler_options``: XLA options for this compilation alone (``{'xla_...': value}``).
  The pmap path has no ``lower``; its step compiles on the first call (timed by the caller).
  """
  if not hasattr(trainer.train_step, 'lower'):
    if compiler_options:
      raise ValueError('compiler_options need a jit-compiled step; the pmap path compiles on its first call.')
    return trainer.train_step, None, memory_stats(None)
  start = time.perf_counter()
  compiled = trainer.train_step.lower(state, batch).compile(compiler_options=compiler_options or None)
  return compiled, time.perf_counter() - start, memory_stats(compiled)
