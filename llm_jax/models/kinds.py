"""Model kinds: one object per kind owns its module, its batch, its loss and its metrics.

Everything that trains, evaluates, benchmarks, checkpoints or decodes a model asks its
kind and never spells out a batch layout or a ``model.init`` call itself (t5x's
``BaseModel`` is the example followed):

  kind = kinds.build(config.model.kind, model_cfg)
  kind.module                      the Flax module
  kind.features                    the data pipeline's featurizer ('lm', 'mlm', 'classify')
  kind.schema(batch, length)       {feature: jax.ShapeDtypeStruct}: exactly what a batch holds
  kind.example_batch(batch, length), kind.synthetic_batch(rng, batch, length)
  kind.init(rng, batch)            the module's variables
  kind.loss(params, batch, dropout_key=, z_loss=, chunk_size=) -> sums
  kind.metrics(sums, prefix)       {'train_loss': ..., 'train_accuracy': ...} from sums
  kind.flops_per_token(abstract_params, seq_len)
  kind.start_decoding(params, prompt, lengths, cache_len) -> Decoding   (kinds that generate)

A loss returns sums, not means (``loss_sum``, which is differentiated; ``weight_sum``,
which the step divides the summed gradient by; and the counts ``metrics`` reads), so
micro-batches and sharded batches add up exactly before one division.

Kinds register themselves by name (``@register('decoder')``) from their modules
(``decoder.py``, ``encoder.py``, ``encoder_decoder.py``); ``build`` imports them on first use.
"""

import abc
import math
from typing import Any, Callable, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.models.layers import TransformerConfig

_KINDS: dict[str, type] = {}
_MODULES = ('llm_jax.models.decoder', 'llm_jax.models.encoder', 'llm_jax.models.encoder_decoder')


def register(name: str):
  def wrap(cls):
    cls.name = name
    _KINDS[name] = cls
    return cls
  return wrap


def _load() -> None:
  import importlib
  for module in _MODULES:
    importlib.import_module(module)


def names() -> tuple[str, ...]:
  _load()
  return tuple(sorted(_KINDS))


def get(name: str) -> type:
  _load()
  if name not in _KINDS:
    raise ValueError(f'config.model.kind={name!r} is unknown; choose one of {", ".join(sorted(_KINDS))}.')
  return _KINDS[name]


def build(name: str, cfg: TransformerConfig, **options) -> 'ModelKind':
  """Kind ``name`` for model ``cfg``; ``options`` are the kind's own (the encoder's mlm_probability)."""
  return get(name)(cfg, **options)


def _int(shape):
  return jax.ShapeDtypeStruct(shape, jnp.int32)


def _float(shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


class Decoding(NamedTuple):
  """A model ready to decode, as ``llm_jax.generation``'s search functions take it.

  logits            float32 [B, V]: the next token's logits after each row's prompt
  cache             a pytree of arrays; the search never looks inside it, but reorders
                    or repeats its rows (beam search) along ``cache_batch_axis``; leaves
                    with no such axis (ndim <= cache_batch_axis, e.g. a step counter)
                    are left alone
  tokens_to_logits  (ids int32 [R, 1], cache) -> (logits float32 [R, V], cache): feeds
                    one more token per row; R is B, or B·k when each row was repeated k
                    times (beams), rows of one prompt kept together
  cache_batch_axis  the axis of the cache's leaves that holds the rows
  """
  logits: Any
  cache: Any
  tokens_to_logits: Callable
  cache_batch_axis: int = 0


class ModelKind(abc.ABC):
  """The seam between one kind of model and the code that trains, serves and measures it."""
  name: ClassVar[str]
  heads: ClassVar[tuple[str, ...]] = ()   # the cfg.head values this kind takes

  def __init__(self, cfg: TransformerConfig):
    self.cfg = cfg
    self.module = self.make_module(cfg)

  @classmethod
  @abc.abstractmethod
  def features_of(cls, head: str) -> str:
    """The data featurizer (``data/features.py``) for batches of this kind with ``head``."""

  @property
  def features(self) -> str:
    return self.features_of(self.cfg.head)

  @abc.abstractmethod
  def make_module(self, cfg: TransformerConfig) -> nn.Module:
    """The kind's Flax module for ``cfg``."""

  # ---- the batch -------------------------------------------------------------------------

  @abc.abstractmethod
  def schema(self, batch: int, length: int) -> dict[str, jax.ShapeDtypeStruct]:
    """{feature: ShapeDtypeStruct}: exactly what a batch of ``batch`` rows of ``length`` holds."""

  def example_batch(self, batch: int, length: int) -> dict[str, jax.Array]:
    return {k: jnp.zeros(s.shape, s.dtype) for k, s in self.schema(batch, length).items()}

  def synthetic_batch(self, rng: np.random.Generator, batch: int, length: int) -> dict[str, np.ndarray]:
    """A random batch of the schema (benchmarks, step tests): tokens from [4, vocab), one
    document per row, every position counted."""
    return {key: self._synthetic_feature(key, spec, rng, length) for key, spec in self.schema(batch, length).items()}

  def _synthetic_feature(self, key: str, spec, rng: np.random.Generator, length: int) -> np.ndarray:
    shape = spec.shape
    if key == 'positions':
      return np.broadcast_to(np.arange(shape[-1], dtype=np.int32), shape).copy()
    if key == 'segment_ids':
      return np.ones(shape, np.int32)
    if key in ('weights', 'example_weights'):
      return np.ones(shape, np.float32)
    if key == 'token_types':
      return np.zeros(shape, np.int32)
    if key == 'labels':
      return rng.integers(0, max(1, self.cfg.num_classes), shape, dtype=np.int32)
    return rng.integers(min(4, self.cfg.vocab_size - 1), self.cfg.vocab_size, shape, dtype=np.int32)

  # ---- the model -------------------------------------------------------------------------

  @abc.abstractmethod
  def init(self, rng, batch: dict):
    """The module's variables, initialized from ``rng`` on an example ``batch``."""

  def abstract_params(self, length: int = 0):
    """The parameters' ShapeDtypeStructs (unboxed), from a one-row example batch (no compute)."""
    batch = self.example_batch(1, length or self.cfg.max_len)
    return nn.meta.unbox(jax.eval_shape(self.init, jax.random.key(0), batch)['params'])

  @abc.abstractmethod
  def loss(self, params, batch: dict, *, dropout_key=None, z_loss: float = 0.0, chunk_size: int = 0) -> dict:
    """Sums over ``batch`` (module docstring): loss_sum, weight_sum and the counts ``metrics`` reads."""

  @abc.abstractmethod
  def metrics(self, sums: dict, prefix: str) -> dict:
    """{prefix + name: value} from summed ``loss`` outputs."""

  # ---- cost ------------------------------------------------------------------------------

  def matmul_params(self, abstract_params) -> int:
    """Parameters that take part in a matrix product per token (for FLOP counts): all but
    lookup tables (position and token-type tables; the token embedding when it is not
    also the output projection)."""
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
      keys = [getattr(p, 'key', str(p)) for p in path]
      if 'position_embed' in keys or 'type_embed' in keys:
        continue
      if 'token_embed' in keys and not self.embedding_is_projection():
        continue
      total += math.prod(leaf.shape) if hasattr(leaf, 'shape') else 0
    return total

  def embedding_is_projection(self) -> bool:
    """Whether the token embedding also projects to the vocabulary (tied output)."""
    return self.cfg.tie_embeddings and self.cfg.head in ('lm', 'mlm')

  def flops_per_token(self, abstract_params, seq_len: int) -> float:
    """Training FLOPs per token: 6N + 12·L·T·D (PaLM, appendix B); D is the attention width
    N·H, and the T×T scores are counted whole, not halved for causal masking (as PaLM and
    nanoGPT count)."""
    cfg = self.cfg
    return 6 * self.matmul_params(abstract_params) + 12 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim


def token_schema(batch: int, length: int, *extra: str) -> dict[str, Any]:
  """inputs, targets, positions, segment_ids (int32) and weights (float32), each [B, T], plus
  ``extra`` int32 [B, T] features."""
  shape = (batch, length)
  out = {k: _int(shape) for k in ('inputs', 'targets', 'positions', 'segment_ids') + extra}
  out['weights'] = _float(shape)
  return out


def example_schema(batch: int, length: int) -> dict[str, Any]:
  """A batch of whole examples: inputs, positions, segment_ids, token_types [B, T]; labels and
  example_weights [B] (0 for the rows that pad the last eval batch)."""
  shape = (batch, length)
  return {'inputs': _int(shape), 'positions': _int(shape), 'segment_ids': _int(shape),
          'token_types': _int(shape), 'labels': _int((batch,)), 'example_weights': _float((batch,))}
