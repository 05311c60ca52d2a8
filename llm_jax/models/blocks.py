"""The stack every model kind is built from: a block (self-attention, optional cross-attention,
MLP), stacked unrolled or under ``nn.scan``, with per-block remat.

Remat (``cfg.remat``, per block) keeps what its policy names saveable and recomputes
the rest in the backward pass: 'full' nothing, 'dots' every matrix product,
'dots_no_batch' those without batch dimensions, 'save_named' the activations named
in ``cfg.remat_names`` (``layers.CHECKPOINT_NAMES``: qkv, attn_context, attn_out,
mlp_hidden, mlp_out; see ``layers``). Every policy gives the plain path's values
and gradients.
"""

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
  """One transformer layer: self-attention, then (``cross``) attention to ``encoded``, then
  the MLP; each a residual branch.

  pre-LN:  x + Drop(Attn(Norm(x))), then x + Drop(Mlp(Norm(x)))   (GPT-2, T5)
  post-LN: Norm(x + Drop(Attn(x))), then Norm(x + Drop(Mlp(x)))   (original Transformer, BERT)

  ``mask`` / ``bias`` belong to the self-attention and ``cross_mask`` / ``cross_bias``
  to the cross-attention; all are built once per stack by the model (``layers.Attention``).
  The arguments are positional so that ``nn.remat`` can hold ``deterministic`` static.
  """
  cfg: TransformerConfig
  cross: bool = False

  @nn.compact
  def __call__(self, x, positions, segment_ids, mask, bias, encoded, cross_mask, cross_bias,
               deterministic: bool):
    cfg = self.cfg
    norm = lambda name: layers.NORMS[cfg.norm](cfg, name=name)
    drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    x = nn.with_logical_constraint(x, (axes.ACT_BATCH, axes.ACT_LEN, axes.ACT_EMBED))
    branches = [('attention', lambda y: layers.Attention(cfg, causal=cfg.causal, name='attention')(
        y, positions=positions, segment_ids=segment_ids, mask=mask, bias=bias, deterministic=deterministic))]
    if self.cross:
      branches.append(('cross_attention', lambda y: layers.Attention(cfg, cross=True, name='cross_attention')(
          y, encoded, mask=cross_mask, bias=cross_bias, deterministic=deterministic)))
    branches.append(('mlp', lambda y: layers.Mlp(cfg, name='mlp')(y, deterministic)))
    for name, branch in branches:
      if cfg.norm_placement == 'pre':
        x = x + drop(branch(norm(f'{name}_norm')(x)))
      else:
        x = norm(f'{name}_norm')(x + drop(branch(x)))
    return x


class _ScanBlock(Block):
  """``Block`` with the (carry, out) signature that ``nn.scan`` wants."""

  def __call__(self, x, *args):
    return super().__call__(x, *args), None


_DETERMINISTIC = 9  # the index of ``deterministic`` in Block.__call__'s arguments, self included


def stack_blocks(cfg: TransformerConfig, x, *, positions, segment_ids, mask, bias=None, encoded=None,
                 cross_mask=None, cross_bias=None, deterministic: bool, cross: bool = False):
  """Runs cfg.num_layers blocks, unrolled or under ``nn.scan``, with per-block remat.

  Must be called inside a compact module. Scanned parameters gain a leading
  'layers' axis of size L. ``cross`` gives every block a cross-attention to ``encoded``.
  """
  block_cls = _ScanBlock if cfg.scan_layers else Block
  if cfg.remat not in REMAT_POLICIES:
    raise ValueError(f'remat={cfg.remat!r} is unknown; choose one of {", ".join(REMAT_POLICIES)}.')
  if REMAT_POLICIES[cfg.remat] is not None:
    block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[cfg.remat](cfg.remat_names),
                         prevent_cse=not cfg.scan_layers, static_argnums=(_DETERMINISTIC,))
  args = (positions, segment_ids, mask, bias, encoded, cross_mask, cross_bias, deterministic)
  if cfg.scan_layers:
    scanned = nn.scan(block_cls, variable_axes={'params': 0, 'cache': 0},
                      split_rngs={'params': True, 'dropout': True},
                      in_axes=(nn.broadcast,) * len(args),
                      length=cfg.num_layers,
                      metadata_params={nn.PARTITION_NAME: axes.LAYERS})
    x, _ = scanned(cfg, cross, name='layers')(x, *args)
    return x
  for i in range(cfg.num_layers):
    x = block_cls(cfg, cross, name=f'layer_{i}')(x, *args)
  return x


def to_scanned(params: dict) -> dict:
  """Unrolled parameters ('layer_0' .. 'layer_{L-1}') in the scanned layout: one
  'layers' subtree whose leaves stack the L layers' leaves on a new leading axis, in
  every stack of the tree (an encoder-decoder's 'encoder' and 'decoder' too). Other
  entries, and parameters already scanned, pass through."""
  if not isinstance(params, dict):
    return params
  count = sum(1 for k in params if k.startswith('layer_'))
  out = {k: to_scanned(v) for k, v in params.items() if not k.startswith('layer_')}
  if count:
    out['layers'] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f'layer_{i}'] for i in range(count)])
  elif all(out[k] is params[k] for k in out):
    return params  # nothing to stack
  return out


def to_unrolled(params: dict) -> dict:
  """The inverse of ``to_scanned``: each 'layers' (leading axis L) as 'layer_0' .. 'layer_{L-1}'."""
  if not isinstance(params, dict):
    return params
  out = {k: to_unrolled(v) for k, v in params.items() if k != 'layers'}
  if 'layers' in params:
    count = jax.tree.leaves(params['layers'])[0].shape[0]
    for i in range(count):
      out[f'layer_{i}'] = jax.tree.map(lambda x, i=i: x[i], params['layers'])
  elif all(out[k] is params[k] for k in out):
    return params  # nothing to unstack
  return out
