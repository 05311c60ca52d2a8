"""Model kinds assembled from the blocks in ``layers``: a registry by name.

``DecoderLM`` (GPT-style causal LM) is the first kind; the encoder-only and
encoder-decoder kinds reuse ``Block`` with ``causal=False`` and cross-attention.

Contract of every LM: ``apply(variables, inputs[B,T] int32, positions[B,T],
segment_ids[B,T], deterministic=...) -> logits[B,T,V] float32``; with
``return_hidden=True`` it returns ``(hidden[B,T,D] cfg.dtype, w[D,V] float32)``
instead, the final hidden states and the output projection, so a loss can form the
logits a slice at a time (``objectives``, ``train.loss_chunk_size``).

Remat (``cfg.remat``, per block) keeps what its policy names saveable and recomputes
the rest in the backward pass: 'full' nothing, 'dots' every matrix product,
'dots_no_batch' those without batch dimensions, 'save_named' the activations named
in ``cfg.remat_names`` (``layers.CHECKPOINT_NAMES``: qkv, attn_context, attn_out,
mlp_hidden, mlp_out; see ``layers``). Every policy gives the plain path's values
and gradients.
"""

import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm_jax.models import axes
from llm_jax.models import layers
from llm_jax.models.layers import TransformerConfig


def _save_named(names: tuple[str, ...]):
  if not names or set(names) - set(layers.CHECKPOINT_NAMES):
    raise ValueError(f"remat='save_named' keeps activations named from {', '.join(layers.CHECKPOINT_NAMES)}; "
                     f'got {names!r}.')
  return jax.checkpoint_policies.save_only_these_names(*names)


# name -> (remat_names -> checkpoint policy); 'none' turns remat off.
REMAT_POLICIES: dict[str, Optional[Callable[[tuple[str, ...]], Any]]] = {
    'none': None,
    'full': lambda names: jax.checkpoint_policies.nothing_saveable,
    'dots': lambda names: jax.checkpoint_policies.checkpoint_dots,
    'dots_no_batch': lambda names: jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    'save_named': _save_named,
}


class Block(nn.Module):
  """One transformer layer: attention then MLP, each a residual branch.

  pre-LN:  x + Drop(Attn(Norm(x))), then x + Drop(Mlp(Norm(x)))   (GPT-2)
  post-LN: Norm(x + Drop(Attn(x))), then Norm(x + Drop(Mlp(x)))   (original Transformer)
  """
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x, positions, segment_ids, deterministic: bool):
    cfg = self.cfg
    norm = layers.NORMS[cfg.norm]
    drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    x = nn.with_logical_constraint(x, (axes.ACT_BATCH, axes.ACT_LEN, axes.ACT_EMBED))
    attn = layers.Attention(cfg, name='attention')
    mlp = layers.Mlp(cfg, name='mlp')
    if cfg.norm_placement == 'pre':
      x = x + drop(attn(norm(cfg, name='attention_norm')(x), positions, segment_ids, deterministic))
      x = x + drop(mlp(norm(cfg, name='mlp_norm')(x), deterministic))
    else:
      x = norm(cfg, name='attention_norm')(x + drop(attn(x, positions, segment_ids, deterministic)))
      x = norm(cfg, name='mlp_norm')(x + drop(mlp(x, deterministic)))
    return x


class _ScanBlock(Block):
  """``Block`` with the (carry, out) signature that ``nn.scan`` wants."""

  def __call__(self, x, positions, segment_ids, deterministic):
    return super().__call__(x, positions, segment_ids, deterministic), None


def stack_blocks(cfg: TransformerConfig, x, positions, segment_ids, deterministic: bool):
  """Runs cfg.num_layers blocks, unrolled or under ``nn.scan``, with per-block remat.

  Must be called inside a compact module. Scanned parameters gain a leading
  'layers' axis of size L.
  """
  block_cls = _ScanBlock if cfg.scan_layers else Block
  if cfg.remat not in REMAT_POLICIES:
    raise ValueError(f'remat={cfg.remat!r} is unknown; choose one of {", ".join(REMAT_POLICIES)}.')
  if REMAT_POLICIES[cfg.remat] is not None:
    block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[cfg.remat](cfg.remat_names),
                         prevent_cse=not cfg.scan_layers, static_argnums=(4,))
  if cfg.scan_layers:
    scanned = nn.scan(block_cls, variable_axes={'params': 0, 'cache': 0},
                      split_rngs={'params': True, 'dropout': True},
                      in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                      length=cfg.num_layers,
                      metadata_params={nn.PARTITION_NAME: axes.LAYERS})
    x, _ = scanned(cfg, name='layers')(x, positions, segment_ids, deterministic)
    return x
  for i in range(cfg.num_layers):
    x = block_cls(cfg, name=f'layer_{i}')(x, positions, segment_ids, deterministic)
  return x


def to_scanned(params: dict) -> dict:
  """Unrolled parameters ('layer_0' .. 'layer_{L-1}') in the scanned layout: one
  'layers' subtree whose leaves stack the L layers' leaves on a new leading axis.
  Other entries, and parameters already scanned, pass through."""
  count = sum(1 for k in params if k.startswith('layer_'))
  if not count:
    return params
  out = {k: v for k, v in params.items() if not k.startswith('layer_')}
  out['layers'] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f'layer_{i}'] for i in range(count)])
  return out


def to_unrolled(params: dict) -> dict:
  """The inverse of ``to_scanned``: 'layers' (leading axis L) as 'layer_0' .. 'layer_{L-1}'."""
  if 'layers' not in params:
    return params
  out = {k: v for k, v in params.items() if k != 'layers'}
  count = jax.tree.leaves(params['layers'])[0].shape[0]
  for i in range(count):
    out[f'layer_{i}'] = jax.tree.map(lambda x, i=i: x[i], params['layers'])
  return out


class DecoderLM(nn.Module):
  """GPT-style causal language model (contract in the module docstring)."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, inputs, positions=None, segment_ids=None, deterministic: bool = True,
               return_hidden: bool = False):
    cfg = self.cfg
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(inputs.shape[1], dtype=jnp.int32), inputs.shape)
    if segment_ids is None:
      segment_ids = jnp.ones_like(inputs, dtype=jnp.int32)
    embed = layers.Embed(cfg, name='token_embed')
    x = embed(inputs)
    add_positions, _ = layers.positional(cfg.pos_encoding)
    if add_positions is not None:
      x = add_positions(cfg, name='position_embed')(x, positions)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = stack_blocks(cfg, x, positions, segment_ids, deterministic)
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


MODELS = {'decoder': DecoderLM}


def build(kind: str, cfg: TransformerConfig) -> nn.Module:
  if kind not in MODELS:
    raise ValueError(f'config.model.kind={kind!r} is unknown; choose one of {", ".join(sorted(MODELS))}.')
  return MODELS[kind](cfg)


def matmul_params(params_shapes, cfg: TransformerConfig) -> int:
  """Parameters that take part in a matrix product per token (for FLOP counts).

  Counts everything except lookup tables: the learned position table always, and the
  token embedding when it is not tied to the output projection.
  """
  total = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params_shapes)[0]:
    keys = [getattr(p, 'key', str(p)) for p in path]
    if 'position_embed' in keys:
      continue
    if 'token_embed' in keys and not cfg.tie_embeddings:
      continue
    total += math.prod(leaf.shape) if hasattr(leaf, 'shape') else 0
  return total


def flops_per_token(n_matmul_params: int, cfg: TransformerConfig, seq_len: int) -> float:
  """Training FLOPs per token: 6N + 12·L·T·D (PaLM, appendix B).

  The attention term counts the full T×T score matrix; it is *not* halved for causal
  masking, matching PaLM's and nanoGPT's MFU, even where the 'blocked' kernel skips the
  masked blocks (as the flash kernels behind those figures do).
  D here is the attention width N·H.
  """
  return 6 * n_matmul_params + 12 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim
