"""The encoder-only kind: a BERT-style bidirectional encoder with a masked-LM or a classifier head.

``EncoderModel.apply(variables, inputs[B,T], positions[B,T], segment_ids[B,T],
token_types[B,T], deterministic=..., mlm_positions=None)`` returns, by ``cfg.head``:

  'mlm'       logits [B, T, V] float32, or [B, P, V] at ``mlm_positions`` [B, P] only
              (the loss needs the chosen positions alone, as BERT's pretraining does)
  'classify'  logits [B, C] float32 from the pooled first token ([CLS])
  'none'      (hidden [B, T, D], pooled [B, D]): BertModel's outputs

Layout (BERT, Devlin et al. 2019; ``cfg`` sets each part): token + position +
token-type embeddings, a norm, dropout; ``num_layers`` blocks with bidirectional
self-attention under the padding mask (segment id 0 is padding; packed documents, ids
1, 2, ..., never see each other), post-LN by default. MLM head: dense, activation,
norm, then the token embedding transposed (tied) plus an output bias. Classifier:
pooler (dense + tanh on the first token), dropout, dense to ``num_classes``.

``EncoderKind`` is its seam (``kinds``): packed rows with chosen positions to predict
('mlm', ``data/features.py``) or whole padded examples with a label each ('classify').
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.models import axes
from llm_jax.models import blocks
from llm_jax.models import kinds
from llm_jax.models import layers
from llm_jax.models.layers import TransformerConfig
from llm_jax.train import objectives

HEADS = ('mlm', 'classify', 'none')

# BERT's architecture (Devlin et al. 2019) as config.model values, for a config file's
# ``config.model.update(BERT_LAYOUT)``; the shapes (layers, width, heads) are the config's.
BERT_LAYOUT = dict(kind='encoder', norm_placement='post', embed_norm=True, type_vocab_size=2, use_bias=True,
                   tie_embeddings=True, mlp_activation='gelu_exact', norm_eps=1e-12, pos_encoding='learned',
                   dropout_rate=0.1)


def mlm_predictions(seq_len: int, probability: float) -> int:
  """P: the positions a row of ``seq_len`` tokens predicts at most (BERT: 20 of 128 at 0.15)."""
  return max(1, int(np.ceil(seq_len * probability)))


class EncoderModel(nn.Module):
  """BERT-style encoder with the head ``cfg.head`` (contract in the module docstring)."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, inputs, positions=None, segment_ids=None, token_types=None, deterministic: bool = True,
               mlm_positions=None):
    cfg = self.cfg
    positions, segment_ids = layers.default_positions(inputs, positions, segment_ids)
    x, embed = layers.embed_inputs(cfg, inputs, positions, token_types, deterministic)
    mask = layers.attention_mask(segment_ids, segment_ids, positions, positions, False)
    bias = None
    if cfg.pos_encoding in layers.LEARNED_BIAS:  # T5's buckets, both directions, one table for the stack
      bias = layers.RelativePositionBias(cfg, bidirectional=True, name='relative_bias')(positions, positions)
    x = blocks.stack_blocks(cfg, x, positions=positions, segment_ids=segment_ids, mask=mask, bias=bias,
                            deterministic=deterministic)
    if cfg.norm_placement == 'pre':
      x = layers.NORMS[cfg.norm](cfg, name='final_norm')(x)
    x = nn.with_logical_constraint(x, (axes.ACT_BATCH, axes.ACT_LEN, axes.ACT_EMBED))
    if cfg.head == 'mlm':
      if mlm_positions is not None:
        x = jnp.take_along_axis(x, mlm_positions[..., None], axis=1)
      h = layers.Dense(cfg, cfg.emb_dim, (axes.EMBED, None), name='mlm_transform')(x)
      h = layers.NORMS[cfg.norm](cfg, name='mlm_norm')(layers.ACTIVATIONS[cfg.mlp_activation](h))
      bias = layers.param_with_axes(self, 'mlm_bias', nn.initializers.zeros, (cfg.vocab_size,), (axes.VOCAB,))
      logits = embed.attend(h) + bias.astype(h.dtype)
      return logits.astype(jnp.float32)
    pooled = jnp.tanh(layers.Dense(cfg, cfg.emb_dim, (axes.EMBED, None), name='pooler')(x[:, 0]))
    if cfg.head == 'none':
      return x, pooled
    pooled = nn.Dropout(cfg.dropout_rate)(pooled, deterministic=deterministic)
    logits = layers.Dense(cfg, cfg.num_classes, (axes.EMBED, None), name='classifier')(pooled)
    return logits.astype(jnp.float32)


@kinds.register('encoder')
class EncoderKind(kinds.ModelKind):
  """Masked-LM pretraining ('mlm') or sequence classification ('classify') on a BERT-style encoder."""
  heads = HEADS

  def __init__(self, cfg: TransformerConfig, mlm_probability: float = 0.15):
    if cfg.head not in HEADS:
      raise ValueError(f'model.head={cfg.head!r} does not fit model.kind=encoder; choose one of {", ".join(HEADS)}.')
    self.mlm_probability = mlm_probability
    super().__init__(cfg)

  @classmethod
  def features_of(cls, head: str) -> str:
    return 'mlm' if head == 'mlm' else 'classify'

  def make_module(self, cfg: TransformerConfig) -> nn.Module:
    return EncoderModel(cfg)

  def schema(self, batch: int, length: int):
    if self.cfg.head != 'mlm':
      return kinds.example_schema(batch, length)
    shape, predictions = (batch, length), (batch, mlm_predictions(length, self.mlm_probability))
    ints = lambda s: jax.ShapeDtypeStruct(s, jnp.int32)
    return {'inputs': ints(shape), 'positions': ints(shape), 'segment_ids': ints(shape),
            'token_types': ints(shape), 'mlm_positions': ints(predictions), 'mlm_targets': ints(predictions),
            'mlm_weights': jax.ShapeDtypeStruct(predictions, jnp.float32)}

  def _synthetic_feature(self, key, spec, rng, length):
    if key == 'mlm_positions':  # distinct positions per row, as the masker chooses them
      rows = [np.sort(rng.permutation(length)[:spec.shape[1]]) for _ in range(spec.shape[0])]
      return np.stack(rows).astype(np.int32)
    if key == 'mlm_weights':
      return np.ones(spec.shape, np.float32)
    return super()._synthetic_feature(key, spec, rng, length)

  def _apply(self, params, batch: dict, dropout_key, **kwargs):
    return self.module.apply({'params': params}, batch['inputs'], batch['positions'], batch['segment_ids'],
                             batch['token_types'], deterministic=dropout_key is None,
                             rngs=None if dropout_key is None else {'dropout': dropout_key}, **kwargs)

  def init(self, rng, batch: dict):
    extra = {'mlm_positions': batch['mlm_positions']} if self.cfg.head == 'mlm' else {}
    return self.module.init(rng, batch['inputs'], batch['positions'], batch['segment_ids'], batch['token_types'],
                            **extra)

  def loss(self, params, batch: dict, *, dropout_key=None, z_loss: float = 0.0, chunk_size: int = 0) -> dict:
    del chunk_size  # the MLM head forms logits at the chosen positions only; a classifier has C of them
    if self.cfg.head == 'mlm':
      logits = self._apply(params, batch, dropout_key, mlm_positions=batch['mlm_positions'])
      return objectives.masked_lm(logits, batch, z_loss)
    logits = self._apply(params, batch, dropout_key)
    return objectives.classification(logits, batch, z_loss, num_classes=self.cfg.num_classes)

  def metrics(self, sums: dict, prefix: str) -> dict:
    if self.cfg.head == 'mlm':
      return objectives.masked_lm_metrics(sums, prefix)
    return objectives.classification_metrics(sums, prefix, full=prefix == 'eval_')

  def embedding_is_projection(self) -> bool:
    return self.cfg.head == 'mlm'
