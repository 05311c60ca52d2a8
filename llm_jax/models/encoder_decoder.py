"""The encoder-decoder kind: a T5-style sequence-to-sequence model.

``EncoderDecoderModel.apply(variables, encoder_inputs[B,S], encoder_positions[B,S],
encoder_segment_ids[B,S], decoder_inputs[B,T], decoder_positions[B,T],
decoder_segment_ids[B,T], deterministic=...) -> logits[B,T,V] float32``; with
``return_hidden=True`` it returns ``(hidden[B,T,D], w[D,V] float32)`` for a chunked loss
(``objectives``). ``method='encode'`` runs the encoder alone (-> [B,S,D]).

Layout (Raffel et al. 2020; ``cfg`` sets each part): one token embedding shared by both
stacks and, when tied, the output projection. Each stack adds its own positions (a
learned or sinusoidal table, or, for ``pos_encoding='t5_relative'``, one
``RelativePositionBias`` per stack computed once and added to every layer's
self-attention: bidirectional in the encoder, causal in the decoder); the decoder's
blocks add cross-attention to the encoder output. Masks: segment id 0 is padding on
either side; packed examples carry ids 1, 2, ... and example k of a decoder row sees
only example k of its encoder row. Pre-LN stacks end in a norm; ``rescale_output``
multiplies the decoder output by D^-0.5 before the output projection, as the original
T5 does (its v1.1 does not). In
decode mode (``cfg.decode``) each call appends to the decoder's KV cache, and
cross-attention keys and values are computed once, on the prefill.

``EncoderDecoderKind`` is its seam (``kinds``): packed (source, target) rows
(``data/seq2seq.py``: encoder_* and decoder_* features, targets, weights) and the
teacher-forced cross-entropy on target tokens (``objectives.seq2seq``, label smoothing
optional); ``start_decoding`` encodes once and decodes from the start token.
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

# T5's architecture (Raffel et al. 2020) as config.model values, for a config file's
# ``config.model.update(T5_LAYOUT)``; the shapes are the config's. T5 v1.1 / flan-t5 change
# mlp_activation to 'geglu', tie_embeddings and rescale_output to False.
T5_LAYOUT = dict(kind='encoder_decoder', pos_encoding='t5_relative', norm='rmsnorm', norm_placement='pre',
                 norm_eps=1e-6, use_bias=False, attention_scale=False, mlp_activation='relu', tie_embeddings=True,
                 rescale_output=True, embed_norm=False, embed_scale=False, init_scheme='t5')
# The original Transformer (Vaswani et al. 2017): sinusoidal positions, post-LN, ReLU, biases, one
# embedding shared by both stacks and the output, scaled by sqrt(d_model) on the way in (their 3.4).
TRANSFORMER_LAYOUT = dict(kind='encoder_decoder', pos_encoding='sinusoidal', norm='layernorm', norm_placement='post',
                          norm_eps=1e-6, use_bias=True, attention_scale=True, mlp_activation='relu',
                          tie_embeddings=True, rescale_output=False, embed_norm=False,
                          embed_scale=True)

ENCODER_FEATURES = ('encoder_inputs', 'encoder_positions', 'encoder_segment_ids')
DECODER_FEATURES = ('decoder_inputs', 'decoder_positions', 'decoder_segment_ids')


def encoder_config(cfg: TransformerConfig) -> TransformerConfig:
  return cfg.replace(causal=False, decode=False)  # decoding runs the encoder once, without a cache


def decoder_config(cfg: TransformerConfig) -> TransformerConfig:
  return cfg.replace(causal=True, num_layers=cfg.num_decoder_layers or cfg.num_layers)


class Stack(nn.Module):
  """One side of the model: shared token embedding, positions, blocks, final norm.

  ``embed`` is the parent's token ``Embed``. The decoder side (``cfg.causal``) has causal
  self-attention and cross-attention to ``encoded`` under ``cross_mask``.
  """
  cfg: TransformerConfig
  embed: nn.Module

  @nn.compact
  def __call__(self, ids, positions, segment_ids, encoded=None, cross_mask=None, deterministic: bool = True):
    cfg = self.cfg
    decoder = cfg.causal
    x = self.embed(ids)
    add_positions, _ = layers.positional(cfg.pos_encoding)
    if add_positions is not None:
      x = add_positions(cfg, name='position_embed')(x, positions)
    if cfg.embed_norm:
      x = layers.NORMS[cfg.norm](cfg, name='embed_norm')(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    decoding = cfg.decode and decoder
    # Self-attention keys: the row itself, or (decoding) the cache's slots, slot j holding position j
    # (the cache is being made while initializing: keys are the row then).
    cached = decoding and not self.is_initializing()
    kv_positions = jnp.arange(cfg.cache_len or cfg.max_len, dtype=jnp.int32)[None] if cached else positions
    mask = None if decoding else layers.attention_mask(segment_ids, segment_ids, positions, positions, decoder)
    bias = None
    if cfg.pos_encoding in layers.LEARNED_BIAS:
      bias = layers.RelativePositionBias(cfg, bidirectional=not decoder, name='relative_bias')(
          positions, jnp.broadcast_to(kv_positions, (positions.shape[0], kv_positions.shape[-1])))
    x = blocks.stack_blocks(cfg, x, positions=positions, segment_ids=segment_ids, mask=mask, bias=bias,
                            encoded=encoded, cross_mask=cross_mask, deterministic=deterministic, cross=decoder)
    if cfg.norm_placement == 'pre':
      x = layers.NORMS[cfg.norm](cfg, name='final_norm')(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    return nn.with_logical_constraint(x, (axes.ACT_BATCH, axes.ACT_LEN, axes.ACT_EMBED))


class EncoderDecoderModel(nn.Module):
  """T5-style encoder-decoder (contract in the module docstring)."""
  cfg: TransformerConfig

  def setup(self):
    cfg = self.cfg
    self.token_embed = layers.Embed(cfg)
    self.encoder = Stack(encoder_config(cfg), self.token_embed)
    self.decoder = Stack(decoder_config(cfg), self.token_embed)
    if not cfg.tie_embeddings:
      self.lm_head = layers.param_with_axes(self, 'lm_head', nn.initializers.normal(layers.initial_std(cfg, 'lm_head')),
                                            (cfg.emb_dim, cfg.vocab_size), (axes.EMBED, axes.VOCAB))

  def encode(self, encoder_inputs, encoder_positions, encoder_segment_ids, deterministic: bool = True):
    """The encoder's output [B, S, D] (padding rows included; the cross mask hides them)."""
    return self.encoder(encoder_inputs, encoder_positions, encoder_segment_ids, deterministic=deterministic)

  def decode(self, encoded, encoder_segment_ids, decoder_inputs, decoder_positions, decoder_segment_ids,
             deterministic: bool = True, return_hidden: bool = False):
    """Logits [B, T, V] float32 of the decoder over ``encoded`` (or ``(hidden, w)``). Decoding after
    the prefill passes ``encoded=None`` (cross-attention reads its cache)."""
    cross_mask = None
    if encoded is not None:
      cross_mask = layers.attention_mask(decoder_segment_ids, encoder_segment_ids, None, None, False)
    x = self.decoder(decoder_inputs, decoder_positions, decoder_segment_ids, encoded, cross_mask,
                     deterministic=deterministic)
    cfg = self.cfg
    if cfg.rescale_output:
      x = x * jnp.asarray(cfg.emb_dim ** -0.5, x.dtype)
    w = self.token_embed.projection() if cfg.tie_embeddings else self.lm_head
    if return_hidden:
      return x, w
    logits = layers.dense(x, w.astype(cfg.dtype))
    logits = nn.with_logical_constraint(logits, (axes.ACT_BATCH, axes.ACT_LEN, axes.ACT_VOCAB))
    return logits.astype(jnp.float32)

  def __call__(self, encoder_inputs, encoder_positions, encoder_segment_ids, decoder_inputs, decoder_positions,
               decoder_segment_ids, deterministic: bool = True, return_hidden: bool = False):
    encoded = self.encode(encoder_inputs, encoder_positions, encoder_segment_ids, deterministic)
    return self.decode(encoded, encoder_segment_ids, decoder_inputs, decoder_positions, decoder_segment_ids,
                       deterministic, return_hidden)


def seq2seq_schema(batch: int, source_len: int, target_len: int) -> dict:
  """encoder_* int32 [B, S], decoder_* and targets int32 [B, T], weights float32 [B, T]."""
  ints = lambda n: jax.ShapeDtypeStruct((batch, n), jnp.int32)
  out = {k: ints(source_len) for k in ENCODER_FEATURES}
  out.update({k: ints(target_len) for k in DECODER_FEATURES + ('targets',)})
  out['weights'] = jax.ShapeDtypeStruct((batch, target_len), jnp.float32)
  return out


@kinds.register('encoder_decoder')
class EncoderDecoderKind(kinds.ModelKind):
  """Sequence-to-sequence on packed (source, target) rows; ``schema(batch, length)``'s length is
  the source's, the target's is ``target_len`` (0: the same)."""
  heads = ('lm',)
  encoder_decoder = True   # generation: input ids are the source; the decoder starts from decoder_start_id

  def __init__(self, cfg: TransformerConfig, target_len: int = 0, label_smoothing: float = 0.0,
               decoder_start_id: int = 0):
    if cfg.head != 'lm':
      raise ValueError(f"model.head={cfg.head!r} does not fit model.kind=encoder_decoder; it has 'lm'.")
    self.target_len = target_len
    self.label_smoothing = label_smoothing
    self.decoder_start_id = decoder_start_id
    super().__init__(cfg)

  @classmethod
  def features_of(cls, head: str) -> str:
    return 'seq2seq'

  def make_module(self, cfg: TransformerConfig) -> nn.Module:
    return EncoderDecoderModel(cfg)

  def schema(self, batch: int, length: int):
    return seq2seq_schema(batch, length, self.target_len or length)

  def _synthetic_feature(self, key, spec, rng, length):
    if key in ('encoder_positions', 'decoder_positions'):
      return np.broadcast_to(np.arange(spec.shape[-1], dtype=np.int32), spec.shape).copy()
    if key in ('encoder_segment_ids', 'decoder_segment_ids'):
      return np.ones(spec.shape, np.int32)
    return super()._synthetic_feature(key, spec, rng, length)

  def _inputs(self, batch):
    return tuple(batch[k] for k in ENCODER_FEATURES + DECODER_FEATURES)

  def init(self, rng, batch: dict):
    return self.module.init(rng, *self._inputs(batch))

  def loss(self, params, batch: dict, *, dropout_key=None, z_loss: float = 0.0, chunk_size: int = 0) -> dict:
    outputs = self.module.apply({'params': params}, *self._inputs(batch), deterministic=dropout_key is None,
                                return_hidden=chunk_size > 0,
                                rngs=None if dropout_key is None else {'dropout': dropout_key})
    objective = objectives.get('seq2seq', chunk_size=chunk_size)
    return objective(outputs, batch, z_loss, label_smoothing=self.label_smoothing)

  def metrics(self, sums: dict, prefix: str) -> dict:
    return objectives.seq2seq_metrics(sums, prefix)

  def embedding_is_projection(self) -> bool:
    return self.cfg.tie_embeddings

  def flops_per_token(self, abstract_params, seq_len: int) -> float:
    """Training FLOPs per source token of a row (what the training loop counts): 6 × the
    matrix-product parameters of each stack times its tokens, plus 12·L·(query length)·(key
    length)·N·H for every attention (encoder self, decoder self, cross), over S."""
    cfg = self.cfg
    s, t = seq_len, self.target_len or seq_len
    count = lambda tree: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
    other = {k: v for k, v in abstract_params.items() if k not in ('encoder', 'decoder')}
    skip = lambda tree: {k: v for k, v in tree.items() if k not in ('position_embed',)}
    encoder, decoder = count(skip(abstract_params['encoder'])), count(skip(abstract_params['decoder']))
    head = count(other) if self.embedding_is_projection() else count(other) - count(other.get('token_embed', {}))
    width = cfg.num_heads * cfg.head_dim
    dec_layers = decoder_config(cfg).num_layers
    total = 6 * (encoder * s + (decoder + head) * t)
    total += 12 * width * (cfg.num_layers * s * s + dec_layers * (t * t + t * s))
    return total / s

  def start_decoding(self, params, prompt, lengths, cache_len: int, *, encoder_inputs,
                     encoder_segment_ids) -> kinds.Decoding:
    """Encodes ``encoder_inputs`` int32 [B, S] (``encoder_segment_ids`` [B, S]: 1 on tokens, 0 on
    padding, either side; positions count from each row's first token, as in training) once, then
    prefills the decoder with ``prompt`` int32 [B, P] (the start token: P = 1, as Hugging Face's
    encoder-decoder ``generate``; rows are not padded, so ``lengths`` must all be P) into a KV cache
    of ``cache_len`` slots. Call it under ``jax.jit``."""
    del lengths  # every decoder prompt row is whole (checked by api.decode)
    cfg = self.cfg.replace(decode=True, cache_len=cache_len)
    model = EncoderDecoderModel(cfg)
    b, p = prompt.shape
    encoder_segment_ids = jnp.asarray(encoder_segment_ids, jnp.int32)
    # Left padding must not shift the tokens' positions (learned and sinusoidal tables are absolute).
    encoder_positions = jnp.maximum(jnp.cumsum(encoder_segment_ids != 0, axis=1, dtype=jnp.int32) - 1, 0)
    encoded = model.apply({'params': params}, encoder_inputs, encoder_positions, encoder_segment_ids,
                          method='encode')
    shapes = jax.eval_shape(model.init, jax.random.key(0), encoder_inputs, encoder_positions,
                            encoder_segment_ids, prompt, jnp.zeros((b, p), jnp.int32),
                            jnp.ones((b, p), jnp.int32))['cache']
    empty = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

    def forward(cache, tokens, positions, encoded):
      (x, w), mutated = model.apply({'params': params, 'cache': cache}, encoded, encoder_segment_ids, tokens,
                                    positions, jnp.ones_like(tokens), return_hidden=True, method='decode',
                                    mutable=['cache'])
      return layers.dense(x[:, -1], w.astype(cfg.dtype)).astype(jnp.float32), mutated['cache']

    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    logits, cache = forward(empty, prompt, positions, encoded)

    def tokens_to_logits(ids, state):
      step_positions = jnp.full(ids.shape, p, jnp.int32) + state['step']
      logits, cache = forward(state['model'], ids, step_positions, None)
      return logits, {'model': cache, 'step': state['step'] + 1}

    return kinds.Decoding(logits, {'model': cache, 'step': jnp.zeros((), jnp.int32)}, tokens_to_logits,
                          cache_batch_axis=1 if cfg.scan_layers else 0)

