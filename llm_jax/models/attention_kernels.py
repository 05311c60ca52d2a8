"""Attention kernels behind one signature, chosen by name (``TransformerConfig.attention_kernel``).

Every kernel computes softmax(q·kᵀ/√H + bias + mask)·v for grouped-query attention:

  kernel(q[B,T,N,H], k[B,S,K,H], v[B,S,K,H], *, mask, bias, dropout, causal, block) -> [B,T,N,H]

``mask`` is a boolean [B, 1, T, S] array (True = may attend) or None; it already
combines causality, padding and document (segment) boundaries. ``bias`` is an
additive float array broadcastable to [B, N, T, S] (ALiBi, T5's relative position
buckets) or None; kernels that cannot take one refuse it, and ``auto`` passes them
over (``supports_bias``). ``dropout`` is a
function applied to the attention probabilities, or None. ``causal`` says the mask
hides every key after its query (so blocks above the diagonal are empty) and
``block`` is the tile size a kernel may use to skip them; kernels that do not skip
ignore both. Logits and softmax run in float32 whatever the compute dtype; the
output has q's dtype.

  xla          plain einsums: the reference every other kernel is tested against
  blocked      skips the key blocks after each causal query block
  cpu_fused    one fused C++ pass per (batch, kv head) through the XLA FFI (CPU; the fastest there)
  dot_product  jax.nn.dot_product_attention, implementation='xla'
  cudnn        cuDNN flash attention (GPU; bfloat16/float16, H a multiple of 8)
  splash       Pallas splash attention (TPU; causal self-attention, T a multiple of 128)
  auto         picks one of the above at trace time from the platform and the operands (the default)

Kernels register themselves with ``@register``: the platforms they run on, whether
they take attention dropout, and for kernels that need more than a platform (a
dtype, a head dim) a ``check`` saying what they need and what is unmet. ``get``
refuses a name that does not exist or run here; ``unsupported`` is the one-line
error config validation raises before anything compiles.
"""

from typing import Any, Callable, NamedTuple, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp

from llm_jax.models import cpu_attention

Kernel = Callable[..., jax.Array]
# check(platform, dtype, head_dim, seq_lens) -> (what the kernel needs, in words; the needs unmet here)
Check = Callable[[str, Any, int, Sequence[int]], tuple[str, list[str]]]


class _Entry(NamedTuple):
  fn: Kernel
  platforms: tuple[str, ...]
  supports_dropout: bool
  supports_bias: bool
  check: Optional[Check]


_KERNELS: dict[str, _Entry] = {}
_FALLBACK = "Use attention_kernel='auto' to fall back, or 'blocked'/'xla'."


def register(name: str, platforms: tuple[str, ...] = ('cpu', 'gpu', 'tpu'),
             supports_dropout: bool = False, supports_bias: bool = True, check: Optional[Check] = None):
  """Registers a kernel under ``name`` for the given JAX platforms."""
  def wrap(fn: Kernel) -> Kernel:
    _KERNELS[name] = _Entry(fn, platforms, supports_dropout, supports_bias, check)
    return fn
  return wrap


def names() -> tuple[str, ...]:
  return tuple(sorted(_KERNELS))


def supports_dropout(name: str) -> bool:
  return _KERNELS[name].supports_dropout


def supports_bias(name: str) -> bool:
  return _KERNELS[name].supports_bias


def get(name: str, platform: Optional[str] = None) -> Kernel:
  """The kernel called ``name``; a ValueError naming the options if it cannot run here."""
  if name not in _KERNELS:
    raise ValueError(f'config.model.attention_kernel={name!r} is unknown; '
                     f'choose one of {", ".join(names())}.')
  platform = platform or jax.default_backend()
  if platform not in _KERNELS[name].platforms:
    raise ValueError(_wrong_platform(name, platform))
  return _KERNELS[name].fn


def unsupported(name: str, *, dtype, head_dim: int, seq_len: int,
                platform: Optional[str] = None) -> Optional[str]:
  """None if kernel ``name`` runs here at this compute dtype and shape, else why, in one line."""
  platform = platform or jax.default_backend()
  if _KERNELS[name].check is None:
    return None if platform in _KERNELS[name].platforms else _wrong_platform(name, platform)
  return _needs_message(name, platform, dtype, head_dim, seq_len)


def _needs_message(name, platform, dtype, head_dim, seq_len=None) -> Optional[str]:
  needs, unmet = _KERNELS[name].check(platform, dtype, head_dim, () if seq_len is None else (seq_len,))
  if not unmet:
    return None
  here = f'{platform}, {jnp.dtype(dtype).name}, head_dim {head_dim}'
  here += '' if seq_len is None else f', seq_len {seq_len}'
  return f'config.model.attention_kernel={name!r} needs {needs}; here: {here}. {_FALLBACK}'


def _wrong_platform(name: str, platform: str) -> str:
  entry = _KERNELS[name]
  needs = f'; it needs {entry.check(platform, jnp.float32, 0, ())[0]}' if entry.check else ''
  ok = sorted(n for n, e in _KERNELS.items() if platform in e.platforms)
  return (f'config.model.attention_kernel={name!r} runs on {"/".join(entry.platforms)}, not on '
          f'{platform}{needs}. Use one of {", ".join(ok)} here.')


def _no_bias(name: str, bias) -> None:
  if bias is not None:
    raise ValueError(f'config.model.attention_kernel={name!r} takes no additive attention bias (needed by this '
                     f'model\'s position encoding); use attention_kernel=auto, blocked or xla.')


def _grouped_bias(bias, b: int, kv_heads: int, g: int, t: int, s: int):
  """bias broadcastable to [B, N, T, S] -> [B or 1, K or 1, G or 1, T, S] for head-major logits."""
  bias = jnp.asarray(bias, jnp.float32)
  bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
  if bias.shape[1] == 1:
    return bias[:, :, None]
  return bias.reshape(bias.shape[0], kv_heads, g, *bias.shape[2:])


def _no_dropout(name: str, dropout) -> None:
  if dropout is not None:
    raise ValueError(f'config.model.attention_kernel={name!r} has no attention dropout; set '
                     'attention_dropout_rate=0 or use attention_kernel=auto, blocked or xla.')


# ----------------------------------------------------------------------------- einsum kernels

@register('xla', supports_dropout=True)
def xla_attention(q, k, v, *, mask=None, bias=None, dropout=None, causal=False, block=0):
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
  if bias is not None:
    logits = logits + _grouped_bias(bias, b, kv_heads, g, t, s)
  if mask is not None:
    logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  if dropout is not None:
    probs = dropout(probs)
  out = jnp.einsum('BKQS,BKSH->BKQH', probs.reshape(b, kv_heads, g * t, s).astype(v.dtype), vh)
  return out.reshape(b, n, t, h).transpose(0, 2, 1, 3)


def attention_weights(q, k, *, mask=None, bias=None):
  """The attention probabilities float32 [B, N, T, S] of q [B, T, N, H] over k [B, S, K, H]
  (what the 'xla' kernel multiplies the values by; for looking at, e.g. attention maps)."""
  b, t, n, h = q.shape
  kv_heads, s = k.shape[2], k.shape[1]
  g = n // kv_heads
  qh = (q * h ** -0.5).transpose(0, 2, 1, 3).reshape(b, kv_heads, g, t, h)
  logits = jnp.einsum('BKGQH,BSKH->BKGQS', qh, k, preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + _grouped_bias(bias, b, kv_heads, g, t, s)
  if mask is not None:
    logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits, axis=-1).reshape(b, n, t, s)


def _blocks(causal: bool, t: int, s: int, block: int) -> bool:
  """Whether 'blocked' really tiles: causal self-attention, T a multiple of a block < T."""
  return causal and t == s and 0 < block < t and t % block == 0


@register('blocked', supports_dropout=True)
def blocked_attention(q, k, v, *, mask=None, bias=None, dropout=None, causal=False, block=64):
  """Causal attention that skips the key blocks after each query block.

  Query block i (rows i·b .. (i+1)·b) attends to keys 0 .. (i+1)·b only: the same
  result as ``xla_attention`` with about (1 + T/b) / (2 T/b) of its work, as flash
  attention kernels do on accelerators. Falls back to the plain kernel when the mask
  is not causal, for a cache (T != S), or when T is not a multiple of ``block``.
  """
  t, s = q.shape[1], k.shape[1]
  if not _blocks(causal, t, s, block):
    return xla_attention(q, k, v, mask=mask, bias=bias, dropout=dropout)
  if bias is not None:
    bias = jnp.asarray(bias)
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
  outs = []
  for i in range(t // block):
    rows, end = slice(i * block, (i + 1) * block), (i + 1) * block
    outs.append(xla_attention(q[:, rows], k[:, :end], v[:, :end], dropout=dropout,
                              mask=None if mask is None else mask[:, :, rows, :end],
                              bias=None if bias is None else bias[:, :, rows, :end]))
  return jnp.concatenate(outs, axis=1)


# ----------------------------------------------------------------------------- fused CPU kernel

def _device_count() -> int:
  return jax.device_count()


def _cpu_fused_check(platform, dtype, head_dim, seq_lens):
  """The fused C++ kernel: the CPU, and a C++ compiler that can build it (built on first use)."""
  del dtype, head_dim, seq_lens
  needs = 'the CPU and a C++ compiler to build it (llm_jax/models/cpu_attention.py)'
  if platform != 'cpu':
    return needs, [f'the CPU (here {platform})']
  error = cpu_attention.available()
  return needs, [error] if error else []


@register('cpu_fused', platforms=('cpu',), supports_bias=False, check=_cpu_fused_check)
def cpu_fused_attention(q, k, v, *, mask=None, bias=None, dropout=None, causal=False, block=0):
  """One fused C++ pass per (batch, kv head) through the XLA FFI (``cpu_attention.py``).

  Skips the keys after each causal 4-row query tile, keeps the probabilities for the
  backward pass and runs on XLA's intra-op threads; values equal ``xla_attention``'s.
  """
  del block
  _no_dropout('cpu_fused', dropout)
  _no_bias('cpu_fused', bias)
  if _device_count() > 1 and 'cpu_fused' not in _LOGGED:
    _LOGGED.add('cpu_fused')
    logging.warning('attention_kernel=cpu_fused with %d devices: XLA cannot shard the custom call, so '
                    'every device gathers the whole batch for attention. Use blocked (or auto) '
                    'on a mesh.', _device_count())
  return cpu_attention.attention(q, k, v, mask=mask, causal=causal)


# ----------------------------------------------------------------------------- jax.nn kernels

@register('dot_product')
def dot_product_attention(q, k, v, *, mask=None, bias=None, dropout=None, causal=False, block=0):
  """``jax.nn.dot_product_attention`` with XLA's own implementation (any platform)."""
  del causal, block
  _no_dropout('dot_product', dropout)
  return jax.nn.dot_product_attention(q, k, v, bias=_full_bias(bias, q), mask=mask, implementation='xla')


def _full_bias(bias, q):
  """bias as jax.nn.dot_product_attention takes it: 4-D, in q's dtype (None stays None)."""
  if bias is None:
    return None
  bias = jnp.asarray(bias)
  return bias.reshape((1,) * (4 - bias.ndim) + bias.shape).astype(q.dtype)


def _cudnn_max_head_dim(platform: str) -> int:
  """The installed jax's cuDNN limit: 256 from Hopper (compute capability 9.0) on, else 128."""
  if platform == 'gpu':
    try:
      major_minor = tuple(int(x) for x in jax.devices('gpu')[0].compute_capability.split('.'))
      return 256 if major_minor >= (9, 0) else 128
    except (RuntimeError, AttributeError, ValueError):
      pass
  return 128


def _cudnn_check(platform, dtype, head_dim, seq_lens):
  """cuDNN flash attention: a GPU, 16-bit floats, H % 8 == 0 and H ≤ 128 (256 on Hopper+).

  The mask reaches cuDNN as a bias, and with a bias its backward pass needs even
  lengths; ``seq_lens`` are the lengths to check (none where there is no mask).
  """
  h_max = _cudnn_max_head_dim(platform)
  limit = f'≤ {h_max}' if platform == 'gpu' else '≤ 128 (≤ 256 on Hopper or newer)'
  needs = f'a GPU, bfloat16 compute, head_dim a multiple of 8 {limit} and an even seq_len'
  unmet = []
  if platform != 'gpu':
    unmet.append(f'a GPU (here {platform})')
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    unmet.append(f'bfloat16 or float16 compute (here {jnp.dtype(dtype).name})')
  if head_dim % 8 or head_dim > h_max:
    unmet.append(f'head_dim a multiple of 8 ≤ {h_max} (here {head_dim})')
  odd = [str(n) for n in seq_lens if n % 2]
  if odd:
    unmet.append(f'even sequence lengths with a mask (here {", ".join(odd)})')
  return needs, unmet


@register('cudnn', platforms=('gpu',), check=_cudnn_check)
def cudnn_attention(q, k, v, *, mask=None, bias=None, dropout=None, causal=False, block=0):
  """cuDNN flash attention through ``jax.nn.dot_product_attention``; the mask goes in as a bias.

  Checks dtype and head dim while tracing, so an unsupported combination fails with
  the kernel's requirements rather than deep inside jax.
  """
  del causal, block
  _no_dropout('cudnn', dropout)
  message = _needs_message('cudnn', jax.default_backend(), q.dtype, q.shape[-1])
  if message:
    raise ValueError(message)
  return jax.nn.dot_product_attention(q, k, v, bias=_full_bias(bias, q), mask=mask, implementation='cudnn')


# ----------------------------------------------------------------------------- splash (TPU)

def _splash_check(platform, dtype, head_dim, seq_lens):
  """Splash attention: a TPU, and T (= S) a multiple of 128, the kernel's smallest key tile."""
  del dtype, head_dim
  unmet = [] if platform == 'tpu' else [f'a TPU (here {platform})']
  off = [str(n) for n in seq_lens if n % 128]
  if off:
    unmet.append(f'a sequence length that is a multiple of 128 (here {", ".join(off)})')
  return 'a TPU and seq_len a multiple of 128', unmet


def segment_ids_from_mask(mask: jax.Array) -> jax.Array:
  """Self-attention mask [B, 1, T, T] -> segment ids [B, T] int32 for splash's ``SegmentIds``.

  A query's id is 1 + the index of the first key it may see (its document's first
  token), or 0 for a padding query that sees nothing. Splash's rule "same id, and
  causal by index" then gives back the mask exactly wherever positions increase with
  the index inside each document, which is how ``layers.attention_mask`` describes a
  packed row; padding queries attend to padding keys, so no row of splash's softmax
  is empty. XLA can fuse the reduction into the mask's construction, so the [T, T]
  mask need not be stored.
  """
  m = mask[:, 0]
  return jnp.where(m.any(axis=-1), jnp.argmax(m, axis=-1) + 1, 0).astype(jnp.int32)


@register('splash', platforms=('tpu',), supports_bias=False, check=_splash_check)
def splash_attention(q, k, v, *, mask=None, bias=None, dropout=None, causal=False, block=0, interpret=False):
  """Pallas splash attention (``jax.experimental.pallas.ops.tpu.splash_attention``) on TPU.

  For causal self-attention: q is scaled by H^-0.5 (splash does not scale) and laid
  out head-major, one ``make_splash_mha`` kernel over [N, T, H] with a ``CausalMask``
  is vmapped over the batch, kv heads stay [K, S, H] (splash maps query head n to kv
  head n // G itself) and packed documents and padding arrive as ``SegmentIds``
  recovered from the mask (``segment_ids_from_mask``). Tiles are the largest of 512,
  256, 128 that divide T; ``block`` (the 'blocked' kernel's CPU tile) is not used.
  Decoding with a KV cache (T != S) and non-causal masks run ``xla_attention``.
  ``interpret=True`` runs the Pallas kernel in interpret mode on any platform (tests).
  The kernel is a custom call XLA cannot partition: inputs sharded over batch or heads
  are gathered to every device (correct, not fast) until it runs inside a shard_map.
  """
  del block
  _no_dropout('splash', dropout)
  _no_bias('splash', bias)
  _, t, n, h = q.shape
  if not causal or t != k.shape[1]:
    return xla_attention(q, k, v, mask=mask)
  platform = 'tpu' if interpret else jax.default_backend()
  if platform != 'tpu':
    raise ValueError(_wrong_platform('splash', platform))
  message = _needs_message('splash', platform, q.dtype, h, t)
  if message:
    raise ValueError(message)
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # TPU-only module, imported here
  tile = next(size for size in (512, 256, 128) if t % size == 0)
  sizes = splash.BlockSizes(block_q=tile, block_kv=tile, block_kv_compute=tile,
                            block_q_dkv=tile, block_kv_dkv=tile, block_kv_dkv_compute=tile,
                            block_q_dq=tile, block_kv_dq=tile)
  kernel = splash.make_splash_mha(splash.MultiHeadMask([splash.CausalMask((t, t))] * n),
                                  block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
  qh = (q * h ** -0.5).transpose(0, 2, 1, 3)
  kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  if mask is None:
    out = jax.vmap(kernel)(qh, kh, vh)
  else:
    ids = segment_ids_from_mask(mask)
    out = jax.vmap(lambda q, k, v, i: kernel(q, k, v, segment_ids=splash.SegmentIds(q=i, kv=i)))(
        qh, kh, vh, ids)
  return out.transpose(0, 2, 1, 3).astype(q.dtype)


# ----------------------------------------------------------------------------- auto

class Choice(NamedTuple):
  name: str        # the kernel 'auto' runs
  reason: str      # why, for the log
  fallback: bool   # the platform's fast kernel (cudnn, splash) could not take these operands


def choose(q, k, *, mask=None, bias=None, dropout=None, causal=False, block=64,
           platform: Optional[str] = None, devices: Optional[int] = None) -> Choice:
  """The kernel for these operands: cudnn on GPU, splash on TPU, cpu_fused on one CPU
  device, else blocked or xla.

  Only kernels with attention dropout are picked when ``dropout`` is given, and only
  kernels that take an additive bias when ``bias`` is (cpu_fused and splash take none:
  the reason says so). ``devices``
  (default: this process's device count) matters on the CPU: the fused kernel is an
  opaque custom call that XLA cannot shard, so with more than one device 'auto' keeps
  to the einsum kernels, which shard like the rest of the step.
  """
  platform = platform or jax.default_backend()
  t, s, h = q.shape[1], k.shape[1], q.shape[-1]
  fast = {'gpu': 'cudnn', 'tpu': 'splash'}.get(platform)
  missed, note = None, ''
  if platform == 'cpu' and dropout is None and t == s:
    devices = _device_count() if devices is None else devices
    if devices == 1 and bias is not None:
      note = 'cpu_fused takes no attention bias; '
    elif devices == 1:
      error = cpu_attention.available()
      if error is None:
        return Choice('cpu_fused', f'one CPU device, self-attention (T=S={t})', False)
      missed = f'cpu_fused is unavailable: {error}'
  if fast and dropout is not None:
    missed = f'{fast} has no attention dropout'
  elif fast == 'splash' and bias is not None:
    missed = 'splash takes no attention bias'
  elif fast == 'cudnn':
    _, unmet = _cudnn_check(platform, q.dtype, h, (t, s) if mask is not None else ())
    if not unmet:
      return Choice('cudnn', f'{jnp.dtype(q.dtype).name}, head_dim {h}', False)
    missed = 'cudnn needs ' + ', '.join(unmet)
  elif fast == 'splash':
    _, unmet = _splash_check(platform, q.dtype, h, (t,))
    if not causal or t != s:
      unmet.insert(0, f'causal self-attention (here causal={causal}, T={t}, S={s})')
    if not unmet:
      return Choice('splash', f'causal, T={t} a multiple of 128', False)
    missed = 'splash needs ' + ', '.join(unmet)
  if _blocks(causal, t, s, block):
    name, why = 'blocked', f'causal, T={t} a multiple of attention_block={block}'
  elif not causal:
    name, why = 'xla', 'attention is not causal'
  elif t != s:
    name, why = 'xla', f'T={t} != S={s} (a KV cache)'
  elif block <= 0 or t <= block:
    name, why = 'xla', f'T={t} fits in one attention_block={block}'
  else:
    name, why = 'xla', f'T={t} is not a multiple of attention_block={block}'
  return Choice(name, missed or note + why, missed is not None)


_LOGGED: set[str] = set()


@register('auto', supports_dropout=True)
def auto_attention(q, k, v, *, mask=None, bias=None, dropout=None, causal=False, block=64):
  """Runs ``choose``'s kernel, logging each distinct choice once (a warning when it falls back)."""
  platform = jax.default_backend()
  choice = choose(q, k, mask=mask, bias=bias, dropout=dropout, causal=causal, block=block, platform=platform)
  message = f'attention_kernel=auto on {platform}: {choice.reason}, using {choice.name}'
  if message not in _LOGGED:
    _LOGGED.add(message)
    (logging.warning if choice.fallback else logging.info)(message)
  return _KERNELS[choice.name].fn(q, k, v, mask=mask, bias=bias, dropout=dropout, causal=causal, block=block)
