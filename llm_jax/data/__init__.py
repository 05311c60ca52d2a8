"""Text data: sources -> tokenizer -> batches that are pure functions of (seed, step).

``dataset_for(config, ...)`` is what training reads: the featurizer the model kind asks for
(``features_of``: 'lm' packed rows, pipeline.py; 'mlm' packed rows with chosen positions to
predict and 'classify' whole labelled examples, features.py; 'seq2seq' packed (source, target)
pairs, seq2seq.py) over ``config.data``.
"""

import os

from llm_jax.data.pipeline import Dataset, load, prefetch
from llm_jax.data.tokenizers import Tokenizer, build_tokenizer, load_tokenizer


def cache_dir(config, workdir: str) -> str:
  """Where the run's tokenizer and token cache live: config.data.cache_dir, or WORKDIR/data."""
  return config.data.cache_dir or os.path.join(workdir, 'data')


def dataset_for(config, *, global_batch: int, seed: int, cache_dir: str, process_index: int = 0,
                process_count: int = 1):
  """The dataset ``config`` trains on, built once into ``cache_dir``: its featurizer is the one
  the model kind names for its head."""
  from llm_jax.data import features
  from llm_jax.models import kinds
  name = kinds.get(config.model.kind).features_of(config.model.head)
  return features.load(name, config, global_batch=global_batch, seed=seed, cache_dir=cache_dir,
                       process_index=process_index, process_count=process_count)


__all__ = ['Dataset', 'Tokenizer', 'build_tokenizer', 'cache_dir', 'dataset_for', 'load', 'load_tokenizer',
           'prefetch']
