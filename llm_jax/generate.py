"""Autoregressive sampling from a causal LM with a KV cache.

``generate`` prefills the whole prompt in one forward pass of the decode model
(``decode=True``), then feeds one token per step inside ``lax.scan``; the whole call
is one ``jax.jit`` program, compiled once per (model config, batch, prompt length,
max_new_tokens, temperature, top_k, top_p) and reused after that (rng and eos_id are
traced, so new seeds or eos ids do not recompile).
``generate_no_cache`` recomputes the full forward pass every step: it is the
reference the cache is tested and benchmarked against.

Shapes: B batch, P prompt length, N new tokens, V vocab, L = cfg.max_len.
Sampling at step i uses the key ``jax.random.fold_in(rng, i)`` in both functions, so
for the same ``rng`` they draw the same tokens (up to float rounding of the logits).
"""

import dataclasses
import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.models import kinds
from llm_jax.models.layers import TransformerConfig

_SAMPLING_ARGS = ('temperature', 'top_k', 'top_p')


def sample_logits(logits, key, *, temperature: float, top_k: int, top_p: float):
  """Draws one token per row from logits[B, V] (float) -> int32[B].

  temperature 0 is greedy argmax. Otherwise logits / temperature, then top-k (keep
  the k largest; 0 = off), then nucleus top-p (keep the smallest set of most likely
  tokens whose probability reaches top_p, the top token always; 1.0 = off), then a
  categorical draw. Tokens tied with the last kept logit are kept as well.
  """
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k > 0 and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    threshold = jnp.min(jnp.where(mass_before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _next_token(logits, key, done, eos_id, *, temperature, top_k, top_p):
  """Samples int32[B]; rows already finished emit eos_id. Returns (tokens, done[B]).

  eos_id is a traced int32 scalar (-1 when there is none), so it costs no recompile.
  """
  tokens = sample_logits(logits, key, temperature=temperature, top_k=top_k, top_p=top_p)
  tokens = jnp.where(done, eos_id, tokens)
  return tokens, done | (tokens == eos_id)


def _check(model_cfg: TransformerConfig, prompt, max_new_tokens: int, temperature: float,
           top_k: int, top_p: float) -> jax.Array:
  """Validates the arguments (one-line ValueError) and returns the prompt as int32[B, P]."""
  if np.ndim(prompt) != 2:
    raise ValueError(f'prompt must be int32 [batch, length], got shape {np.shape(prompt)}.')
  b, p = np.shape(prompt)
  if b == 0 or p == 0:
    raise ValueError(f'prompt is empty (shape {(b, p)}); give at least one token per row '
                     f'(e.g. the tokenizer\'s eos_id as a start token).')
  if max_new_tokens < 0:
    raise ValueError(f'max_new_tokens={max_new_tokens} must be >= 0.')
  if p + max_new_tokens > model_cfg.max_len:
    raise ValueError(f'prompt length {p} + max_new_tokens {max_new_tokens} = {p + max_new_tokens} '
                     f'exceeds the model\'s max_len {model_cfg.max_len}; shorten the prompt or '
                     f'max_new_tokens, or train with a larger config.model.max_len.')
  if temperature < 0:
    raise ValueError(f'temperature={temperature} must be >= 0 (0 = greedy).')
  if not 0 < top_p <= 1:
    raise ValueError(f'top_p={top_p} must be in (0, 1] (1 = off).')
  if top_k < 0:
    raise ValueError(f'top_k={top_k} must be >= 0 (0 = off).')
  return jnp.asarray(prompt, jnp.int32)


def _eos(eos_id: Optional[int]) -> jax.Array:
  return jnp.asarray(-1 if eos_id is None else eos_id, jnp.int32)


def _decoding_module(kind: str, model_cfg: TransformerConfig):
  """The kind's model in decode mode (a KV cache); ValueError for a kind that does not generate."""
  built = kinds.build(kind, dataclasses.replace(model_cfg, decode=False))
  if not hasattr(built, 'decode_module'):
    raise ValueError(f'model.kind={kind!r} does not generate text; sample from a decoder.')
  return built.decode_module()


def _params(params):
  """The plain 'params' tree: unboxes nn.LogicallyPartitioned leaves; takes {'params': ...} too."""
  params = nn.meta.unbox(params)
  if isinstance(params, dict) and set(params) == {'params'}:
    params = params['params']
  return params


@functools.partial(jax.jit,
                   static_argnames=('model_cfg', 'kind', 'max_new_tokens') + _SAMPLING_ARGS)
def _generate_cached(model_cfg, kind, params, prompt, rng, eos_id, *, max_new_tokens, temperature,
                     top_k, top_p):
  """prompt int32[B, P] -> int32[B, N]: one prefill, then N - 1 single-token steps."""
  sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
  model = _decoding_module(kind, model_cfg)
  b, p = prompt.shape
  cache = model.init(jax.random.PRNGKey(0), jnp.zeros((b, model_cfg.max_len), jnp.int32))['cache']

  def forward(cache, tokens, positions):
    logits, mutated = model.apply({'params': params, 'cache': cache}, tokens, positions,
                                  jnp.ones_like(tokens), deterministic=True, mutable=['cache'])
    return logits[:, -1], mutated['cache']

  positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
  logits, cache = forward(cache, prompt, positions)
  first, done = _next_token(logits, jax.random.fold_in(rng, 0), jnp.zeros((b,), bool), eos_id,
                            **sampling)

  def step(carry, i):
    cache, token, done = carry
    logits, cache = forward(cache, token[:, None], jnp.full((b, 1), p + i - 1, jnp.int32))
    token, done = _next_token(logits, jax.random.fold_in(rng, i), done, eos_id, **sampling)
    return (cache, token, done), token

  _, rest = jax.lax.scan(step, (cache, first, done), jnp.arange(1, max_new_tokens))
  return jnp.concatenate([first[:, None], rest.T], axis=1)


def generate(model_cfg: TransformerConfig, params, prompt, *, max_new_tokens: int, rng: jax.Array,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             eos_id: Optional[int] = None, kind: str = 'decoder') -> jax.Array:
  """Samples max_new_tokens after prompt int32[B, P] with a KV cache -> int32[B, N].

  ``params`` is the model's 'params' collection (plain arrays or nn.LogicallyPartitioned
  boxes). Every row has the same prompt length P >= 1 and P + N <= model_cfg.max_len.
  Once a row emits ``eos_id`` it emits eos_id for the rest of its N tokens.
  Sampling settings are described in ``sample_logits``. Raises ValueError on bad arguments.
  """
  prompt = _check(model_cfg, prompt, max_new_tokens, temperature, top_k, top_p)
  if max_new_tokens == 0:
    return jnp.zeros((prompt.shape[0], 0), jnp.int32)
  return _generate_cached(model_cfg, kind, _params(params), prompt, rng, _eos(eos_id),
                          max_new_tokens=max_new_tokens, temperature=float(temperature),
                          top_k=int(top_k), top_p=float(top_p))


@functools.partial(jax.jit, static_argnames=('model_cfg', 'kind') + _SAMPLING_ARGS)
def _next_token_full(model_cfg, kind, params, buffer, length, key, done, eos_id, **sampling):
  """Full forward pass over buffer[B, L] of which the first ``length`` tokens are real."""
  model = kinds.build(kind, dataclasses.replace(model_cfg, decode=False)).module
  positions = jnp.broadcast_to(jnp.arange(buffer.shape[1], dtype=jnp.int32), buffer.shape)
  segment_ids = (positions < length).astype(jnp.int32)
  logits = model.apply({'params': params}, buffer, positions, segment_ids, deterministic=True)
  last = jax.lax.dynamic_index_in_dim(logits, length - 1, axis=1, keepdims=False)
  return _next_token(last, key, done, eos_id, **sampling)


def generate_no_cache(model_cfg: TransformerConfig, params, prompt, *, max_new_tokens: int,
                      rng: jax.Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                      eos_id: Optional[int] = None, kind: str = 'decoder') -> jax.Array:
  """``generate`` without a cache: every step reruns the model over the whole sequence.

  A Python loop over one jitted forward pass on a [B, max_len] buffer (segment id 1 on
  written tokens, 0 on the rest), so it compiles once; each step costs a forward pass
  over L tokens where the cache costs one token. Same arguments, result and errors as
  ``generate``.
  """
  prompt = _check(model_cfg, prompt, max_new_tokens, temperature, top_k, top_p)
  params = _params(params)
  b, p = prompt.shape
  sampling = dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
  buffer = jnp.zeros((b, model_cfg.max_len), jnp.int32).at[:, :p].set(prompt)
  done = jnp.zeros((b,), bool)
  out = []
  for i in range(max_new_tokens):
    tokens, done = _next_token_full(model_cfg, kind, params, buffer, p + i,
                                    jax.random.fold_in(rng, i), done, _eos(eos_id), **sampling)
    buffer = buffer.at[:, p + i].set(tokens)
    out.append(tokens)
  return jnp.stack(out, axis=1) if out else jnp.zeros((b, 0), jnp.int32)
