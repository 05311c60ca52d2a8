"""Attention kernels for timing experiments, registered under ``model.attention_kernel``.

Importing this module registers them next to llm_jax's own kernels:

  standin      ``q * k + v``: no attention at all (wrong values, same shapes)
  products     the ``blocked`` kernel's two products per query block, without mask or
               softmax (wrong values): what the products and their copies cost
  nomask       ``blocked`` with the mask dropped (wrong values inside the diagonal
               blocks): what applying the mask costs
  chunks2/4/8  ``blocked`` run separately on 2, 4 or 8 slices of the batch and
               concatenated (right values): independent pieces the XLA:CPU runtime may
               run on different cores at once

Base minus one of these is what that part costs; only ``chunks*`` may be used to train.
"""

import jax.numpy as jnp

from llm_jax.models import attention_kernels

WRONG_VALUES = ('standin', 'products', 'nomask')  # timing stand-ins: no numerics to compare


@attention_kernels.register('standin', supports_dropout=True)
def standin_attention(q, k, v, *, mask=None, bias=None, dropout=None, causal=False, block=0):
  """Not attention: ``q * k + v``, for timing the step without attention's cost."""
  del mask, bias, dropout, causal, block
  return q * k + v


@attention_kernels.register('products', supports_dropout=True)
def products_attention(q, k, v, *, mask=None, bias=None, dropout=None, causal=False, block=64):
  """The blocked kernel's products alone: (q_i · k[:end]ᵀ) · v[:end] per query block i."""
  del mask, bias, dropout
  b, t, n, h = q.shape
  kv = k.shape[2]
  blocks = t // block if attention_kernels._blocks(causal, t, k.shape[1], block) else 1  # as 'blocked' tiles
  size = t // blocks
  kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  outs = []
  for i in range(blocks):
    end = (i + 1) * size if blocks > 1 else k.shape[1]
    qi = q[:, i * size:(i + 1) * size].transpose(0, 2, 1, 3).reshape(b, kv, -1, h)
    s = jnp.einsum('bkqh,bksh->bkqs', qi, kh[:, :, :end])
    oi = jnp.einsum('bkqs,bksh->bkqh', s, vh[:, :, :end])
    outs.append(oi.reshape(b, n, size, h).transpose(0, 2, 1, 3))
  return jnp.concatenate(outs, axis=1)


@attention_kernels.register('nomask', supports_dropout=True)
def nomask_attention(q, k, v, *, mask=None, bias=None, dropout=None, causal=False, block=64):
  """``blocked`` without the mask: the causal block skipping stays, the masking goes."""
  del mask
  return attention_kernels.blocked_attention(q, k, v, bias=bias, dropout=dropout, causal=causal, block=block)


def _chunked(pieces: int):
  def kernel(q, k, v, *, mask=None, bias=None, dropout=None, causal=False, block=64):
    b = q.shape[0]
    if b % pieces:
      raise ValueError(f'chunks{pieces} needs a batch divisible by {pieces}; here {b}.')
    size = b // pieces
    part = lambda x, i: None if x is None else x[i * size:(i + 1) * size]
    return jnp.concatenate([attention_kernels.blocked_attention(part(q, i), part(k, i), part(v, i),
                                                        mask=part(mask, i), dropout=dropout,
                                                        bias=bias if bias is None or bias.shape[0] == 1 else
                                                        part(bias, i), causal=causal, block=block)
                            for i in range(pieces)], axis=0)
  kernel.__doc__ = f'``blocked`` on {pieces} independent slices of the batch, concatenated.'
  return kernel


for _pieces in (2, 4, 8):
  attention_kernels.register(f'chunks{_pieces}', supports_dropout=True)(_chunked(_pieces))
