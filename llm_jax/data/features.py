"""Featurizers by name: how a model kind's batches are made from a split's records.

  'lm'        packed rows for next-token prediction (``pipeline.Dataset``)

``load(name, config, ...)`` builds the one a kind names (``ModelKind.features_of``).
"""

from llm_jax import errors
from llm_jax.data import pipeline

_FEATURIZERS = {}


def register(name: str):
  def wrap(fn):
    _FEATURIZERS[name] = fn
    return fn
  return wrap


def names() -> tuple[str, ...]:
  return tuple(sorted(_FEATURIZERS))


def load(name: str, config, **kwargs):
  if name not in _FEATURIZERS:
    raise errors.ConfigError(f'no data featurizer {name!r} for config.model.kind={config.model.kind!r} '
                             f'head {config.model.head!r}; known: {", ".join(names())}.')
  return _FEATURIZERS[name](config, **kwargs)


@register('lm')
def _lm(config, *, global_batch, seed, cache_dir, process_index=0, process_count=1):
  return pipeline.load(config.data, global_batch=global_batch, seed=seed, cache_dir=cache_dir,
                       process_index=process_index, process_count=process_count)
