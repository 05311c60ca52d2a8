"""The decoder-only kind: a GPT-style causal language model.

``DecoderLM.apply(variables, inputs[B,T] int32, positions[B,T], segment_ids[B,T],
deterministic=...) -> logits[B,T,V] float32``; with ``return_hidden=True`` it returns
``(hidden[B,T,D] cfg.dtype, w[D,V] float32)`` instead, the final hidden states and the
output projection, so a loss can form the logits a slice at a time
(``objectives``, ``train.loss_chunk_size``). Packed documents (segment ids 1, 2, ...)
never attend to each other; segment id 0 is padding. In decode mode (``cfg.decode``)
each call appends to the KV cache (``cache_start`` [B]: each row's first prompt slot, for
T5's relative buckets, which need the cached keys' positions).

``DecoderKind.start_decoding`` is the adapter ``llm_jax.generation`` decodes through:
one prefill of the (left-padded) prompts, then one token per call.

``DecoderKind`` is its seam (``kinds``): a batch of packed rows (``kinds.token_schema``)
and the next-token cross-entropy (``objectives.causal_lm``).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm_jax.models import axes
from llm_jax.models import blocks
from llm_jax.models import kinds
from llm_jax.models import layers
from llm_jax.models.layers import TransformerConfig
from llm_jax.train import objectives


class DecoderLM(nn.Module):
  """GPT-style causal language model (contract in the module docstring)."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, inputs, positions=None, segment_ids=None, deterministic: bool = True,
               return_hidden: bool = False, cache_start=None):
    cfg = self.cfg
    positions, segment_ids = layers.default_positions(inputs, positions, segment_ids)
    x, embed = layers.embed_inputs(cfg, inputs, positions, None, deterministic)
    # Built once for every layer; in decode mode each layer's cache builds its own.
    mask = None if cfg.decode else layers.attention_mask(segment_ids, segment_ids, positions, positions, True)
    bias = None
    if cfg.pos_encoding in layers.LEARNED_BIAS:  # T5's causal buckets, one table for the stack
      kv_positions = positions
      if cfg.decode and not self.is_initializing():
        # Cache slot j holds the (left-padded) prompt's token j, so its position is j - cache_start
        # (each row's first real slot); slots not written yet are masked by their segment ids.
        slots = jnp.arange(cfg.cache_len or cfg.max_len, dtype=jnp.int32)[None]
        kv_positions = slots - jnp.asarray(0 if cache_start is None else cache_start, jnp.int32).reshape(-1, 1)
        kv_positions = jnp.broadcast_to(kv_positions, (positions.shape[0], slots.shape[1]))
      bias = layers.RelativePositionBias(cfg, bidirectional=False, name='relative_bias')(positions, kv_positions)
    x = blocks.stack_blocks(cfg, x, positions=positions, segment_ids=segment_ids, mask=mask, bias=bias,
                            deterministic=deterministic)
    if cfg.norm_placement == 'pre':
      x = layers.NORMS[cfg.norm](cfg, name='final_norm')(x)
    if not cfg.tie_embeddings:
      w = layers.param_with_axes(self, 'lm_head', nn.initializers.normal(cfg.init_std),
                                 (cfg.emb_dim, cfg.vocab_size), (axes.EMBED, axes.VOCAB))
    if return_hidden:
      x = nn.with_logical_constraint(x, (axes.ACT_BATCH, axes.ACT_LEN, axes.ACT_EMBED))
      return x, embed.projection() if cfg.tie_embeddings else w
    if cfg.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = layers.dense(x, w.astype(cfg.dtype))
    logits = nn.with_logical_constraint(logits, (axes.ACT_BATCH, axes.ACT_LEN, axes.ACT_VOCAB))
    return logits.astype(jnp.float32)


@kinds.register('decoder')
class DecoderKind(kinds.ModelKind):
  """Next-token prediction on packed rows."""
  heads = ('lm',)

  def __init__(self, cfg: TransformerConfig, label_smoothing: float = 0.0):
    self.label_smoothing = label_smoothing  # train.label_smoothing: of the loss, not of the reported nll
    super().__init__(cfg)

  @classmethod
  def features_of(cls, head: str) -> str:
    return 'lm'

  def make_module(self, cfg: TransformerConfig) -> nn.Module:
    return DecoderLM(cfg)

  def schema(self, batch: int, length: int):
    return kinds.token_schema(batch, length)

  def init(self, rng, batch: dict):
    return self.module.init(rng, batch['inputs'], batch['positions'], batch['segment_ids'])

  def loss(self, params, batch: dict, *, dropout_key=None, z_loss: float = 0.0, chunk_size: int = 0) -> dict:
    outputs = self.module.apply({'params': params}, batch['inputs'], batch['positions'], batch['segment_ids'],
                                deterministic=dropout_key is None, return_hidden=chunk_size > 0,
                                rngs=None if dropout_key is None else {'dropout': dropout_key})
    if not chunk_size:
      return objectives.get('causal_lm')(outputs, batch, z_loss, label_smoothing=self.label_smoothing)
    return objectives.get('causal_lm', chunk_size=chunk_size)(outputs, batch, z_loss)  # smoothing: refused by config

  def metrics(self, sums: dict, prefix: str) -> dict:
    loss = sums['nll_sum'] / jnp.maximum(sums['weight_sum'], 1.0)
    return {f'{prefix}loss': loss, f'{prefix}perplexity': jnp.exp(jnp.minimum(loss, 50.0))}

  def start_decoding(self, params, prompt, lengths, cache_len: int) -> kinds.Decoding:
    """Prefills a KV cache of ``cache_len`` slots per row with ``prompt`` int32[B, P], left-padded:
    row b's tokens are its last ``lengths[b]`` (>= 1) entries; padding gets segment id 0 and is
    never attended to, and each row's positions start at 0 on its first token (as Hugging
    Face derives them from the attention mask). Call it under ``jax.jit``."""
    cfg = self.cfg.replace(decode=True, cache_len=cache_len)
    model = DecoderLM(cfg)
    b, p = prompt.shape
    lengths = jnp.asarray(lengths, jnp.int32)
    start = (p - lengths)[:, None]
    index = jnp.arange(p, dtype=jnp.int32)[None, :]
    segment_ids = (index >= start).astype(jnp.int32)
    positions = jnp.maximum(index - start, 0)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((b, cache_len), jnp.int32))['cache']
    empty = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def forward(cache, tokens, positions, segment_ids, cache_start):
      (x, w), mutated = model.apply({'params': params, 'cache': cache}, tokens, positions, segment_ids,
                                    return_hidden=True, cache_start=cache_start, mutable=['cache'])
      logits = layers.dense(x[:, -1], w.astype(cfg.dtype)).astype(jnp.float32)  # the last position only
      return logits, mutated['cache']

    logits, cache = forward(empty, prompt, positions, segment_ids, start[:, 0])

    def tokens_to_logits(ids, state):
      rows = jnp.repeat(lengths, ids.shape[0] // b)  # beams repeat each prompt's rows side by side
      positions = (rows + state['step'])[:, None]
      logits, cache = forward(state['model'], ids, positions, jnp.ones_like(ids), p - rows)
      return logits, {'model': cache, 'step': state['step'] + 1}

    return kinds.Decoding(logits, {'model': cache, 'step': jnp.zeros((), jnp.int32)}, tokens_to_logits,
                          cache_batch_axis=1 if cfg.scan_layers else 0)
