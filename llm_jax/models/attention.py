"""Attention kernels behind one signature, chosen by name (``TransformerConfig.attention_kernel``).

Every kernel computes softmax(q·kᵀ/√H + mask)·v for grouped-query attention:

  kernel(q[B,T,N,H], k[B,S,K,H], v[B,S,K,H], *, mask, dropout, causal, block) -> [B,T,N,H]

``mask`` is a boolean [B, 1, T, S] array (True = may attend) or None; it already
combines causality, padding and document (segment) boundaries. ``dropout`` is a
function applied to the attention probabilities, or None. ``causal`` says the mask
hides every key after its query (so blocks above the diagonal are empty) and
``block`` is the tile size a kernel may use to skip them; kernels that do not skip
ignore both. Logits and softmax run in
float32 whatever the compute dtype; the output has q's dtype.

Kernels register themselves with ``@register``; ``get(name)`` checks that the name
exists and runs on the current platform, with an error that lists what does.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp

Kernel = Callable[..., jax.Array]
_KERNELS: dict[str, tuple[Kernel, tuple[str, ...], bool]] = {}


def register(name: str, platforms: tuple[str, ...] = ('cpu', 'gpu', 'tpu'),
             supports_dropout: bool = False):
  """Registers a kernel under ``name`` for the given JAX platforms."""
  def wrap(fn: Kernel) -> Kernel:
    _KERNELS[name] = (fn, platforms, supports_dropout)
    return fn
  return wrap


def names() -> tuple[str, ...]:
  return tuple(sorted(_KERNELS))


def supports_dropout(name: str) -> bool:
  return _KERNELS[name][2]


def get(name: str, platform: Optional[str] = None) -> Kernel:
  """The kernel called ``name``; a ValueError naming the options if it cannot run here."""
  if name not in _KERNELS:
    raise ValueError(f'config.model.attention_kernel={name!r} is unknown; '
                     f'choose one of {", ".join(names())}.')
  fn, platforms, _ = _KERNELS[name]
  platform = platform or jax.default_backend()
  if platform not in platforms:
    ok = sorted(n for n, (_, p, _) in _KERNELS.items() if platform in p)
    raise ValueError(f'config.model.attention_kernel={name!r} runs on {"/".join(platforms)}, '
                     f'not on {platform}; use one of {", ".join(ok)} here.')
  return fn


@register('xla', supports_dropout=True)
def xla_attention(q, k, v, *, mask=None, dropout=None, causal=False, block=0):
  """Plain einsum attention; the reference every other kernel is tested against.

  Works head-major: q, k, v are transposed once to [B, K, ·, H] and the G query heads
  that share a kv head are folded into the query rows, so both products are plain
  batched matmuls over (B, K); on XLA:CPU that is ~20% faster than letting the
  einsums pick their own transposes.
  """
  del causal, block
  b, t, n, h = q.shape
  kv_heads, s = k.shape[2], k.shape[1]
  g = n // kv_heads
  qh = (q * h ** -0.5).transpose(0, 2, 1, 3).reshape(b, kv_heads, g * t, h)
  kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  logits = jnp.einsum('BKQH,BKSH->BKQS', qh, kh, preferred_element_type=jnp.float32)
  logits = logits.reshape(b, kv_heads, g, t, s)
  if mask is not None:
    logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  if dropout is not None:
    probs = dropout(probs)
  out = jnp.einsum('BKQS,BKSH->BKQH', probs.reshape(b, kv_heads, g * t, s).astype(v.dtype), vh)
  return out.reshape(b, n, t, h).transpose(0, 2, 1, 3)


@register('blocked', supports_dropout=True)
def blocked_attention(q, k, v, *, mask=None, dropout=None, causal=False, block=64):
  """Causal attention that skips the key blocks after each query block.

  Query block i (rows i·b .. (i+1)·b) attends to keys 0 .. (i+1)·b only: the same
  result as ``xla_attention`` with about (1 + T/b) / (2 T/b) of its work, as flash
  attention kernels do on accelerators. Falls back to the plain kernel when the mask
  is not causal, for a cache (T != S), or when T is not a multiple of ``block``.
  """
  t, s = q.shape[1], k.shape[1]
  if not causal or t != s or block <= 0 or t <= block or t % block:
    return xla_attention(q, k, v, mask=mask, dropout=dropout)
  outs = []
  for i in range(t // block):
    rows, end = slice(i * block, (i + 1) * block), (i + 1) * block
    outs.append(xla_attention(q[:, rows], k[:, :end], v[:, :end], dropout=dropout,
                              mask=None if mask is None else mask[:, :, rows, :end]))
  return jnp.concatenate(outs, axis=1)


def _jax_nn(implementation):
  def kernel(q, k, v, *, mask=None, dropout=None, causal=False, block=0):
    del dropout, causal, block  # config validation rejects attention dropout for these kernels
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
  return kernel


register('dot_product')(_jax_nn('xla'))
register('cudnn', platforms=('gpu',))(_jax_nn('cudnn'))
