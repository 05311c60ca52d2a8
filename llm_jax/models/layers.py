"""The building blocks every model kind is assembled from.

Modules take a ``TransformerConfig`` (a frozen dataclass of model fields, never the
experiment config). Parameters are created in float32 with logical axis names
(see ``axes``); computation runs in ``cfg.dtype``; norms, softmax and the loss run
in float32.

Activations a remat policy may keep (``jax.ad_checkpoint.checkpoint_name``; see
``transformer.REMAT_POLICIES['save_named']``), per block:

  qkv           query [B,T,N,H], key and value [B,T,K,H]: the attention kernel's
                inputs (after RoPE); saving them spares the three projections
  attn_context  the kernel's output [B,T,N,H], input of the output projection
  attn_out      the attention branch's output [B,T,D]; with pre-LN it spares
                recomputing the attention to rebuild the MLP branch's input
  mlp_hidden    the MLP's pre-activation hidden layer, [B·T,F] in the fused MLP,
                [B,T,F] with biases, SwiGLU's gate and up [B,T,F] each; the
                activation is recomputed from it, the up-projection is not
  mlp_out       the MLP branch's output [B,T,D]; only post-LN needs it (its norm
                follows the residual add), pre-LN keeps the block's output anyway

A policy saves a named activation only where the backward pass needs it. The fused
MLP has a hand-written backward pass (``jax.custom_vjp``): its name sits in the
forward rule, whose operations ``jax.checkpoint`` sees once it differentiates. The
norms' residuals carry no name (they are cheap to recompute). A name is the
identity: without remat it changes nothing in the compiled program.
"""

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from llm_jax.models import attention_kernels
from llm_jax.models import axes

CHECKPOINT_NAMES = ('qkv', 'attn_context', 'attn_out', 'mlp_hidden', 'mlp_out')


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Model hyperparameters. Variants come from ``.replace(...)`` (e.g. ``decode=True``)."""
  vocab_size: int
  num_layers: int = 2             # encoder_decoder: the encoder's
  num_decoder_layers: int = 0     # encoder_decoder: the decoder's (0: num_layers)
  num_heads: int = 4
  num_kv_heads: int = 4           # < num_heads: grouped-query; 1: multi-query
  emb_dim: int = 128
  head_dim: int = 32
  mlp_dim: int = 512
  max_len: int = 256              # the longest sequence: the learned position table's size
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  pos_encoding: str = 'learned'   # 'learned' | 'sinusoidal' | 'rope' | 'alibi' | 't5_relative' | 'none'
  rope_theta: float = 10000.0
  relative_buckets: int = 32      # t5_relative: buckets of the per-stack table
  relative_max_distance: int = 128  # t5_relative: distances from here on share the last bucket
  attention_scale: bool = True    # logits q·k/sqrt(H); False: q·k (T5 folds the scale into its init)
  rescale_output: bool = True     # encoder_decoder: logits of hidden·D^-0.5 (the original T5; v1.1 has none)
  mlp_activation: str = 'gelu_tanh'  # 'relu' | 'gelu_tanh' (GPT-2) | 'gelu_exact' (BERT) | 'swiglu' | 'geglu'
  norm: str = 'layernorm'         # 'layernorm' | 'rmsnorm'
  norm_placement: str = 'pre'     # 'pre' | 'post'
  norm_eps: float = 1e-5
  embed_norm: bool = False        # a norm right after the embeddings (BERT, BLOOM)
  embed_scale: bool = False       # token embeddings times sqrt(emb_dim) (Vaswani et al. 3.4); the tied
                                  # output projection stays unscaled
  type_vocab_size: int = 0        # token-type (segment A/B) embeddings added to the input (BERT: 2); 0: none
  head: str = 'lm'                # what sits on top of the stack: 'lm' (decoder) | 'mlm' | 'classify' | 'none'
  num_classes: int = 0            # head='classify': labels
  use_bias: bool = False
  tie_embeddings: bool = True
  attention_kernel: str = 'xla'
  attention_block: int = 64       # tile size of the 'blocked' kernel
  dtype: Any = jnp.float32        # compute dtype; parameters stay float32
  remat: str = 'none'             # a transformer.REMAT_POLICIES name: 'none' | 'full' | 'dots' | ...
  remat_names: tuple[str, ...] = ()  # remat='save_named': which CHECKPOINT_NAMES to keep
  scan_layers: bool = False
  init_std: float = 0.02
  init_scheme: str = 'normal'     # 'normal': N(0, init_std), residual outputs / sqrt(2L) | 't5' (``initial_std``)
  causal: bool = True
  decode: bool = False            # autoregressive decoding with a KV cache
  cache_len: int = 0              # decode: KV cache slots per row (0: max_len); a generation needs prompt + new tokens

  def replace(self, **changes) -> 'TransformerConfig':
    return dataclasses.replace(self, **changes)


def param_with_axes(module: nn.Module, name: str, init: Callable, shape, names):
  return module.param(name, nn.with_logical_partitioning(init, names), shape, jnp.float32)


def dense(x, w, in_dims: int = 1):
  """x[..., *in] · w[*in, *out] as one 2-D matrix product.

  Flattening the leading axes (B, T) into one makes the weight gradient a dot that
  contracts a single B·T axis; XLA:CPU runs that near its peak matmul rate, where the
  equivalent einsum contracting B and T separately runs at about two thirds of it.
  """
  lead, k = x.shape[:x.ndim - in_dims], w.shape[:in_dims]
  out = w.shape[in_dims:]
  y = x.reshape(-1, int(np.prod(k))) @ w.reshape(int(np.prod(k)), -1)
  return y.reshape(*lead, *out)


def _normal(std):
  return nn.initializers.normal(stddev=std)


def _out_std(cfg: TransformerConfig) -> float:
  """GPT-2's scaled init of residual-branch outputs: std / sqrt(2 L)."""
  return cfg.init_std / np.sqrt(2 * cfg.num_layers)


INIT_SCHEMES = ('normal', 't5')


def initial_std(cfg: TransformerConfig, role: str) -> float:
  """The std of the normal initializer of a parameter playing ``role``.

  'normal': init_std, and for the residual branches' outputs ('out', 'wo') GPT-2's
  init_std / sqrt(2 L). 't5': Mesh TensorFlow's T5 initialization (what Hugging Face's
  T5 draws), scaled by fan-in: embedding and untied output 1, query (D·H)^-0.5 (T5 folds the
  1/sqrt(H) of attention into it), key, value, feed-forward input and the relative position
  table D^-0.5, attention output (N·H)^-0.5, feed-forward output F^-0.5. With T5's rescaled
  output this starts the logits at unit scale, where the 'normal' scheme starts them near 0.
  """
  if cfg.init_scheme == 't5':
    d, h, n, f = cfg.emb_dim, cfg.head_dim, cfg.num_heads, cfg.mlp_dim
    return {'embed': 1.0, 'lm_head': 1.0, 'query': (d * h) ** -0.5, 'key': d ** -0.5, 'value': d ** -0.5,
            'out': (n * h) ** -0.5, 'wi': d ** -0.5, 'wo': f ** -0.5, 'relative': d ** -0.5}.get(role, cfg.init_std)
  return _out_std(cfg) if role in ('out', 'wo') else cfg.init_std


class Dense(nn.Module):
  """x[..., D_in] · kernel[D_in, features] (+ bias): a head's projection, float32 parameters
  with the logical axes ``kernel_axes``, computed in cfg.dtype."""
  cfg: 'TransformerConfig'
  features: int
  kernel_axes: tuple
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    w = param_with_axes(self, 'kernel', _normal(cfg.init_std), (x.shape[-1], self.features), self.kernel_axes)
    y = dense(x.astype(cfg.dtype), w.astype(cfg.dtype))
    if self.use_bias:
      y = y + param_with_axes(self, 'bias', nn.initializers.zeros, (self.features,),
                              (self.kernel_axes[1],)).astype(cfg.dtype)
    return y


# ----------------------------------------------------------------------------- embeddings

class Embed(nn.Module):
  """Token embedding [V, D]; ``attend`` reuses it as the tied output projection."""
  cfg: TransformerConfig

  def setup(self):
    self.embedding = param_with_axes(self, 'embedding', _normal(initial_std(self.cfg, 'embed')),
                                     (self.cfg.vocab_size, self.cfg.emb_dim),
                                     (axes.VOCAB, axes.EMBED))

  def __call__(self, ids):
    x = jnp.take(self.embedding, ids, axis=0)
    if self.cfg.embed_scale:
      x = x * jnp.float32(self.cfg.emb_dim) ** 0.5
    return x.astype(self.cfg.dtype)

  def attend(self, x):
    """x[B,T,D] -> logits[B,T,V]."""
    return dense(x, self.embedding.astype(x.dtype).T)

  def projection(self):
    """The tied output projection [D, V], float32 (what ``attend`` multiplies by)."""
    return self.embedding.T


def default_positions(inputs, positions=None, segment_ids=None):
  """(positions, segment_ids) of ``inputs[B, T]``: those given, else 0..T-1 per row and one segment."""
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(inputs.shape[1], dtype=jnp.int32), inputs.shape)
  if segment_ids is None:
    segment_ids = jnp.ones_like(inputs, dtype=jnp.int32)
  return positions, segment_ids


def embed_inputs(cfg: 'TransformerConfig', inputs, positions, token_types, deterministic: bool):
  """(x [B, T, D], the token Embed): token embedding + additive positions + token types,
  then ``embed_norm`` and dropout. Call it inside a compact module: its submodules
  ('token_embed', 'position_embed', 'type_embed', 'embed_norm') belong to the caller."""
  embed = Embed(cfg, name='token_embed')
  x = embed(inputs)
  add_positions, _ = positional(cfg.pos_encoding)
  if add_positions is not None:
    x = add_positions(cfg, name='position_embed')(x, positions)
  if cfg.type_vocab_size:
    table = TokenTypes(cfg, name='type_embed')
    x = x + table(jnp.zeros_like(inputs) if token_types is None else token_types)
  if cfg.embed_norm:
    x = NORMS[cfg.norm](cfg, name='embed_norm')(x)
  return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic), embed


class TokenTypes(nn.Module):
  """A table [type_vocab_size, D] of token-type embeddings (BERT's segment A / B)."""
  cfg: 'TransformerConfig'

  @nn.compact
  def __call__(self, token_types):
    table = param_with_axes(self, 'embedding', _normal(self.cfg.init_std),
                            (self.cfg.type_vocab_size, self.cfg.emb_dim), (axes.TOKEN_TYPE, axes.EMBED))
    return jnp.take(table, token_types, axis=0).astype(self.cfg.dtype)


# ----------------------------------------------------------------------------- positions
# A positional encoding is any of: a module added to the token embeddings, a rotation
# applied to queries and keys inside self-attention, and an additive attention bias of
# self-attention. Registered by name.

_POSITIONS: dict[str, tuple[Optional[type], Optional[Callable]]] = {}
_POSITION_BIASES: dict[str, Callable] = {}


def register_positions(name: str, rotate_qk: Optional[Callable] = None, bias: Optional[Callable] = None):
  """Registers ``name``: the decorated module (None: nothing added to the embeddings),
  ``rotate_qk(x[B,T,N,H], positions[B,T], theta)`` and ``bias(q_positions[B,T],
  kv_positions[B,S], num_heads) -> float32 [B,N,T,S]`` (``position_bias``)."""
  def wrap(cls):
    _POSITIONS[name] = (cls, rotate_qk)
    if bias is not None:
      _POSITION_BIASES[name] = bias
    return cls
  return wrap


def positional_names() -> tuple[str, ...]:
  return tuple(sorted(_POSITIONS))


def positional(name: str) -> tuple[Optional[type], Optional[Callable]]:
  if name not in _POSITIONS:
    raise ValueError(f'config.model.pos_encoding={name!r} is unknown; choose one of '
                     f'{", ".join(positional_names())}.')
  return _POSITIONS[name]


def position_bias(name: str) -> Optional[Callable]:
  """The additive self-attention bias of encoding ``name`` (ALiBi), None for the others."""
  positional(name)
  return _POSITION_BIASES.get(name)


@register_positions('learned')
class LearnedPositions(nn.Module):
  """A trained table [max_len, D] added to the embeddings (GPT-2)."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x, positions):
    table = param_with_axes(self, 'embedding', _normal(self.cfg.init_std),
                            (self.cfg.max_len, self.cfg.emb_dim), (axes.POSITION, axes.EMBED))
    return x + jnp.take(table, positions, axis=0).astype(x.dtype)


def sinusoid(positions, dim: int, base: float = 10000.0):
  """PE(p, 2i) = sin(p / base^(2i/dim)), PE(p, 2i+1) = cos(p / base^(2i/dim)) (Vaswani et al.)."""
  i = jnp.arange(dim // 2, dtype=jnp.float32)
  angle = positions[..., None].astype(jnp.float32) / base ** (2 * i / dim)
  return jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1).reshape(*positions.shape, dim)


@register_positions('sinusoidal')
class SinusoidalPositions(nn.Module):
  cfg: TransformerConfig

  def __call__(self, x, positions):
    return x + sinusoid(positions, self.cfg.emb_dim).astype(x.dtype)


def apply_rope(x, positions, theta: float):
  """Rotary embedding (Su et al.): rotates pairs (x_i, x_{i+H/2}) by angle p·θ^(-2i/H).

  x[B,T,N,H], positions[B,T]. Uses the half-split pairing of GPT-NeoX / LLaMA.
  """
  h = x.shape[-1]
  inv_freq = theta ** (-jnp.arange(0, h // 2, dtype=jnp.float32) * 2 / h)
  angle = positions[:, :, None, None].astype(jnp.float32) * inv_freq
  sin, cos = jnp.sin(angle), jnp.cos(angle)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


register_positions('rope', rotate_qk=apply_rope)(None)
register_positions('none')(None)


def alibi_slopes(num_heads: int) -> np.ndarray:
  """ALiBi's per-head slopes (Press et al.), float32 [N], as BLOOM computes them: for a power
  of two n, 2^(-8i/n) for i = 1..n; otherwise those of the nearest power of two below,
  p, followed by the odd-numbered slopes of 2p, 2^(-4i/p) for i = 1, 3, 5, ..."""
  p = 2 ** int(np.floor(np.log2(num_heads)))
  slopes = (2.0 ** (-8.0 / p)) ** np.arange(1, p + 1)
  extra = (2.0 ** (-4.0 / p)) ** np.arange(1, 1 + 2 * min(p, num_heads - p), 2)
  return np.concatenate([slopes, extra]).astype(np.float32)


def alibi_bias(q_positions, kv_positions, num_heads: int):
  """-slope_n·|q - k| as float32 [B, N, T, S] from positions [B, T] and [B, S].

  Where causality lets a query see a key (k <= q) this is -slope·(q - k), which differs
  from BLOOM's slope·k only by a constant per query row: the same softmax. Positions
  count from each document's first token, so left-padded rows and packed documents get
  the bias a row of their own would.
  """
  slopes = jnp.asarray(alibi_slopes(num_heads))
  distance = jnp.abs(q_positions[:, None, :, None] - kv_positions[:, None, None, :]).astype(jnp.float32)
  return -slopes[None, :, None, None] * distance


register_positions('alibi', bias=alibi_bias)(None)


def t5_buckets(relative, bidirectional: bool, num_buckets: int, max_distance: int):
  """T5's bucket of each relative position (key position - query position), int32.

  Bidirectional (the encoder): half the buckets for keys after the query, half for
  those before. Causal (the decoder): only keys at or before the query count, all
  buckets for them. Of a direction's n buckets the first n/2 are the exact distances
  0 .. n/2 - 1; the rest cover distances up to ``max_distance`` on a log scale, and
  farther ones fall in the last bucket. (Raffel et al. 2020, section 2.1.)
  """
  relative = jnp.asarray(relative, jnp.int32)
  bucket = jnp.zeros_like(relative)
  if bidirectional:
    num_buckets //= 2
    bucket += (relative > 0).astype(jnp.int32) * num_buckets
    distance = jnp.abs(relative)
  else:
    distance = jnp.maximum(-relative, 0)
  exact = num_buckets // 2
  # The log-spaced buckets, truncated toward zero; distance < exact never uses them.
  scaled = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / exact) / np.log(max_distance / exact)
  far = exact + (scaled * (num_buckets - exact)).astype(jnp.int32)
  far = jnp.minimum(far, num_buckets - 1)
  return bucket + jnp.where(distance < exact, distance, far)


class RelativePositionBias(nn.Module):
  """T5's learned relative position bias: a table [buckets, N] looked up by ``t5_buckets``.

  One per stack, shared by all its layers (the model computes it once and passes it to
  every block as the self-attention bias). ``__call__(q_positions[B, T], kv_positions[B, S])``
  -> float32 [B, N, T, S].
  """
  cfg: TransformerConfig
  bidirectional: bool

  @nn.compact
  def __call__(self, q_positions, kv_positions):
    cfg = self.cfg
    table = param_with_axes(self, 'embedding', _normal(initial_std(cfg, 'relative')),
                            (cfg.relative_buckets, cfg.num_heads),
                            (axes.RELATIVE, axes.HEADS))
    relative = kv_positions[:, None, :] - q_positions[:, :, None]
    buckets = t5_buckets(relative, self.bidirectional, cfg.relative_buckets, cfg.relative_max_distance)
    return jnp.moveaxis(jnp.take(table, buckets, axis=0), -1, 1)


register_positions('t5_relative')(None)  # a learned bias per stack (RelativePositionBias), built by the model
LEARNED_BIAS = ('t5_relative',)  # encodings that are a stack's RelativePositionBias


# ----------------------------------------------------------------------------- norms

def _normalizer(center: bool, eps: float):
  """x -> x̂·scale with x̂ = (x - mean)/std (LayerNorm) or x/rms (RMSNorm), in float32.

  A custom VJP with the closed-form backward
  dx = r·(g·s - mean(g·s) - x̂·mean(g·s·x̂)) (the first mean only when centering):
  the same gradients as autodiff with fewer passes over [B, T, D] and no materialized
  broadcasts of the normalizer.
  """
  def forward(x, scale):
    xc = x - x.mean(-1, keepdims=True) if center else x
    r = jax.lax.rsqrt(jnp.square(xc).mean(-1, keepdims=True) + eps)
    xhat = xc * r
    return xhat * scale, (xhat, r, scale)

  def backward(res, g):
    xhat, r, scale = res
    gs = g * scale
    inner = gs - xhat * (gs * xhat).mean(-1, keepdims=True)
    if center:
      inner = inner - gs.mean(-1, keepdims=True)
    return r * inner, jnp.sum(g * xhat, axis=tuple(range(g.ndim - 1)))

  fn = jax.custom_vjp(lambda x, scale: forward(x, scale)[0])
  fn.defvjp(forward, backward)
  return fn


class LayerNorm(nn.Module):
  """(x - mean) / sqrt(var + eps) * scale (+ bias), in float32."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x):
    scale = param_with_axes(self, 'scale', nn.initializers.ones, (x.shape[-1],), (axes.EMBED,))
    y = _normalizer(True, self.cfg.norm_eps)(x.astype(jnp.float32), scale)
    if self.cfg.use_bias:
      y = y + param_with_axes(self, 'bias', nn.initializers.zeros, (x.shape[-1],), (axes.EMBED,))
    return y.astype(self.cfg.dtype)


class RMSNorm(nn.Module):
  """x / sqrt(mean(x²) + eps) * scale, in float32."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x):
    scale = param_with_axes(self, 'scale', nn.initializers.ones, (x.shape[-1],), (axes.EMBED,))
    return _normalizer(False, self.cfg.norm_eps)(x.astype(jnp.float32), scale).astype(self.cfg.dtype)


NORMS = {'layernorm': LayerNorm, 'rmsnorm': RMSNorm}


# ----------------------------------------------------------------------------- feed-forward

# 'gelu_tanh' is GPT-2's tanh approximation, 'gelu_exact' the erf form of BERT (and of
# torch.nn.GELU()); they differ by up to about 1e-3, enough to matter against a reference.
# 'swish' is x·sigmoid(x) (SiLU). The gated forms are Shazeer 2020's GLU variants (Table 1):
# act(x·W_gate) * (x·W_up), the value being the gate's activation: GLU (sigmoid), Bilinear (none),
# ReGLU, GEGLU (tanh-GELU, T5 v1.1's gated-gelu), SwiGLU (Llama).
ACTIVATIONS = {'relu': jax.nn.relu, 'gelu_tanh': lambda x: jax.nn.gelu(x, approximate=True),
               'gelu_exact': lambda x: jax.nn.gelu(x, approximate=False), 'swish': jax.nn.silu,
               'swiglu': jax.nn.silu, 'geglu': lambda x: jax.nn.gelu(x, approximate=True),
               'reglu': jax.nn.relu, 'glu': jax.nn.sigmoid, 'bilinear': lambda x: x}
GATED = ('swiglu', 'geglu', 'reglu', 'glu', 'bilinear')


def _up_act_down(act):
  """(x, w1, w2) -> act(x·w1)·w2 with a hand-written backward pass.

  Same values and gradients as autodiff; every product is a plain 2-D dot (weight
  gradients contract the flattened B·T rows), and h, act(h) and act'(h)·g are each
  materialized once. Left to itself XLA:CPU fuses the activation (and its derivative)
  into the dots and writes transposed copies of it for the weight gradients, which
  costs about a third of the MLP's time at GPT-2-small widths.
  """
  def forward(x, w1, w2):
    x2 = x.reshape(-1, x.shape[-1])
    h = checkpoint_name(x2 @ w1, 'mlp_hidden')
    h, a = jax.lax.optimization_barrier((h, act(h)))
    return (a @ w2).reshape(x.shape), (x2, w1, w2, h, a)

  def backward(res, g):
    x2, w1, w2, h, a = res
    g2 = g.reshape(-1, g.shape[-1])
    ga = jax.lax.optimization_barrier(g2 @ w2.T)
    dh = jax.lax.optimization_barrier(jax.vjp(act, h)[1](ga)[0])
    contract_rows = lambda u, v: jax.lax.dot_general(u, v, (((0,), (0,)), ((), ())))
    return (dh @ w1.T).reshape(g.shape), contract_rows(x2, dh), contract_rows(a, g2)

  fn = jax.custom_vjp(lambda x, w1, w2: forward(x, w1, w2)[0])
  fn.defvjp(forward, backward)
  return fn


_FUSED_MLP = {name: _up_act_down(act) for name, act in ACTIVATIONS.items() if name not in GATED}


class Mlp(nn.Module):
  """ReLU/GELU/Swish: act(x W1 + b1) W2 + b2.  Gated (GATED: SwiGLU, GEGLU, ReGLU, GLU, Bilinear):
  (act(x Wg) * x W1) W2 (Shazeer 2020), act silu, tanh-GELU (T5 v1.1's gated-gelu), relu,
  sigmoid or the identity.

  GELU comes as 'gelu_tanh' (GPT-2's approximation) and 'gelu_exact' (BERT's erf).
  Dropout is applied by the block to the output, not to the hidden layer (as GPT-2,
  nanoGPT and BERT).
  """
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x, deterministic: bool):
    del deterministic
    cfg = self.cfg
    d, f = cfg.emb_dim, cfg.mlp_dim
    wi = param_with_axes(self, 'wi', _normal(initial_std(cfg, 'wi')), (d, f), (axes.EMBED, axes.MLP)).astype(cfg.dtype)
    wo = param_with_axes(self, 'wo', _normal(initial_std(cfg, 'wo')), (f, d), (axes.MLP, axes.EMBED)).astype(cfg.dtype)
    bias = lambda name, n, axis: param_with_axes(self, name, nn.initializers.zeros, (n,), (axis,)).astype(cfg.dtype)
    if cfg.mlp_activation in GATED:
      wg = param_with_axes(self, 'wi_gate', _normal(initial_std(cfg, 'wi')), (d, f), (axes.EMBED, axes.MLP)).astype(cfg.dtype)
      up, gate = dense(x, wi), dense(x, wg)
      if cfg.use_bias:
        up, gate = up + bias('wi_bias', f, axes.MLP), gate + bias('wi_gate_bias', f, axes.MLP)
      up, gate = checkpoint_name(up, 'mlp_hidden'), checkpoint_name(gate, 'mlp_hidden')
      h = ACTIVATIONS[cfg.mlp_activation](gate) * up
      h = nn.with_logical_constraint(h, (axes.ACT_BATCH, axes.ACT_LEN, axes.ACT_MLP))
      y = dense(h, wo)
    elif cfg.use_bias:
      act = ACTIVATIONS[cfg.mlp_activation]
      h = act(checkpoint_name(dense(x, wi) + bias('wi_bias', f, axes.MLP), 'mlp_hidden'))
      h = nn.with_logical_constraint(h, (axes.ACT_BATCH, axes.ACT_LEN, axes.ACT_MLP))
      y = dense(h, wo)
    else:
      y = _FUSED_MLP[cfg.mlp_activation](x, wi, wo)
    if cfg.use_bias:
      y = y + bias('wo_bias', d, axes.EMBED)
    return checkpoint_name(y, 'mlp_out')


# ----------------------------------------------------------------------------- attention

def attention_mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions, causal: bool):
  """Boolean [B, 1, T, S]: same non-padding document and (if causal) not in the future.

  Segment id 0 marks padding; packed documents carry ids 1, 2, ... so a token never
  attends across a document boundary. Causality compares positions within the
  document, which equals index order inside one packed row.
  """
  mask = (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]) & (kv_segment_ids[:, None, :] != 0)
  if causal:
    mask &= q_positions[:, :, None] >= kv_positions[:, None, :]
  return mask[:, None]


class Attention(nn.Module):
  """Multi-head attention from ``inputs_q`` [B, T, D] to ``inputs_kv`` [B, S, D], grouped-query heads.

  The caller decides what attends to what. Self-attention (``cross`` False, no
  ``inputs_kv``): a rotary encoding (``pos_encoding='rope'``) rotates queries and keys
  by ``positions``, a bias encoding (``'alibi'``) adds its bias of query and key
  positions to ``bias``, and in decode mode (``cfg.decode``) the keys and values are
  appended to the KV cache and attended to with the cache's segment ids and positions.
  Cross-attention (``cross``) attends to ``inputs_kv`` [B, S, D] without rotation; in
  decode mode the first call (the prefill) projects ``inputs_kv`` once and caches its
  keys, values and the last query row of ``mask``, and later calls pass
  ``inputs_kv=None`` and ``mask=None`` to attend to what is cached.

  ``mask`` is bool [B, 1, T, S] (True = may attend), built once per stack with
  ``attention_mask`` (None in decode mode: the cache builds it); ``bias`` an optional
  additive float array broadcastable to [B, N, T, S], computed once per stack (ALiBi,
  T5's buckets). ``causal`` says the mask hides every later key, so a kernel may skip
  those blocks (self-attention of a decoder).

  Applied with ``mutable=['intermediates']`` it also sows its attention probabilities
  [B, N, T, S] as ``attention_weights`` (computed only then, whatever the kernel).
  """
  cfg: TransformerConfig
  causal: bool = False
  cross: bool = False

  @nn.compact
  def __call__(self, inputs_q, inputs_kv=None, *, positions=None, segment_ids=None, mask=None, bias=None,
               deterministic: bool = True):
    cfg = self.cfg
    d, n, k, h = cfg.emb_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self_attention = not self.cross and inputs_kv is None
    kv_inputs = inputs_q if self_attention else inputs_kv

    def proj(name, x, heads, head_axis):
      w = param_with_axes(self, name, _normal(initial_std(cfg, name)), (d, heads, h),
                          (axes.EMBED, head_axis, axes.KV)).astype(cfg.dtype)
      y = dense(x, w)
      if cfg.use_bias:
        y = y + param_with_axes(self, name + '_bias', nn.initializers.zeros, (heads, h),
                                (head_axis, axes.KV)).astype(cfg.dtype)
      return y

    q = proj('query', inputs_q, n, axes.HEADS)
    if not cfg.attention_scale:  # the kernels divide by sqrt(H): T5's logits are the plain q·k
      q = q * jnp.asarray(np.sqrt(h), q.dtype)
    if self.cross and cfg.decode:
      key, value, mask = self._cross_cache(kv_inputs, mask, lambda x: (proj('key', x, k, axes.KV_HEADS),
                                                                       proj('value', x, k, axes.KV_HEADS)))
    else:
      key = proj('key', kv_inputs, k, axes.KV_HEADS)
      value = proj('value', kv_inputs, k, axes.KV_HEADS)
    _, rotate = positional(cfg.pos_encoding)
    if rotate is not None and self_attention:
      q = rotate(q, positions, cfg.rope_theta)
      key = rotate(key, positions, cfg.rope_theta)
    q, key, value = (checkpoint_name(y, 'qkv') for y in (q, key, value))
    q = nn.with_logical_constraint(q, (axes.ACT_BATCH, axes.ACT_LEN, axes.ACT_HEADS, axes.ACT_KV))

    decoding = cfg.decode and self_attention
    if decoding:
      key, value, kv_segment_ids, kv_positions = self._update_cache(key, value, segment_ids, positions)
      mask = attention_mask(segment_ids, kv_segment_ids, positions, kv_positions, self.causal)
    position_bias_fn = position_bias(cfg.pos_encoding)
    if position_bias_fn is not None and self_attention:  # ALiBi: against the cache's key positions when decoding
      own = position_bias_fn(positions, kv_positions if decoding else positions, n)
      bias = own if bias is None else bias + own

    dropout = None
    if cfg.attention_dropout_rate > 0 and not deterministic:
      dropout = lambda p: nn.Dropout(cfg.attention_dropout_rate)(p, deterministic=False)
    kernel = attention_kernels.get(cfg.attention_kernel)
    out = kernel(q, key, value, mask=mask, bias=bias, dropout=dropout, causal=self.causal and not decoding,
                 block=cfg.attention_block)
    out = checkpoint_name(out, 'attn_context')
    if self.is_mutable_collection('intermediates'):  # apply(..., mutable=['intermediates']): attention maps
      self.sow('intermediates', 'attention_weights', attention_kernels.attention_weights(q, key, mask=mask, bias=bias))

    wo = param_with_axes(self, 'out', _normal(initial_std(cfg, 'out')), (n, h, d),
                         (axes.HEADS, axes.KV, axes.EMBED)).astype(cfg.dtype)
    y = dense(out, wo, in_dims=2)
    if cfg.use_bias:
      y = y + param_with_axes(self, 'out_bias', nn.initializers.zeros, (d,),
                              (axes.EMBED,)).astype(cfg.dtype)
    return checkpoint_name(y, 'attn_out')

  def _cross_cache(self, kv_inputs, mask, project):
    """(key, value, mask) of a decoding cross-attention: projected from ``kv_inputs`` and kept on
    the prefill (``kv_inputs`` given), read back on the calls after it."""
    if kv_inputs is not None:
      key, value = project(kv_inputs)
      row = mask[:, :, -1:, :]
      ck = self.variable('cache', 'cross_key', jnp.zeros, key.shape, key.dtype)
      cv = self.variable('cache', 'cross_value', jnp.zeros, value.shape, value.dtype)
      cm = self.variable('cache', 'cross_mask', jnp.zeros, row.shape, bool)
      if not self.is_initializing():
        ck.value, cv.value, cm.value = key, value, row
      return key, value, mask
    return (self.get_variable('cache', 'cross_key'), self.get_variable('cache', 'cross_value'),
            self.get_variable('cache', 'cross_mask'))

  def _update_cache(self, key, value, segment_ids, positions):
    cfg = self.cfg
    b, t, k, h = key.shape
    slots = cfg.cache_len or cfg.max_len
    shape = (b, slots, k, h)
    ck = self.variable('cache', 'key', jnp.zeros, shape, key.dtype)
    cv = self.variable('cache', 'value', jnp.zeros, shape, value.dtype)
    cseg = self.variable('cache', 'segment_ids', jnp.zeros, (b, slots), jnp.int32)
    cpos = self.variable('cache', 'positions', jnp.zeros, (b, slots), jnp.int32)
    index = self.variable('cache', 'index', lambda: jnp.array(0, jnp.int32))
    if self.is_initializing():
      return key, value, segment_ids, positions
    i = index.value
    ck.value = jax.lax.dynamic_update_slice(ck.value, key, (0, i, 0, 0))
    cv.value = jax.lax.dynamic_update_slice(cv.value, value, (0, i, 0, 0))
    cseg.value = jax.lax.dynamic_update_slice(cseg.value, segment_ids.astype(jnp.int32), (0, i))
    cpos.value = jax.lax.dynamic_update_slice(cpos.value, positions.astype(jnp.int32), (0, i))
    index.value = i + t
    return ck.value, cv.value, cseg.value, cpos.value
