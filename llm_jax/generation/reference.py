"""Decoding without a cache: every new token reruns the model over the whole sequence.

The check (same tokens as the cached path, up to float rounding) and the baseline (the
cache's speedup, ``python -m llm_jax.bench``) of ``api.decode``. A Python loop over one
jitted forward pass on a [B, P + N] buffer, so it compiles once; prompts are full rows
(no padding) and the choice of each token is ``search.sample_logits`` with the key
``jax.random.fold_in(rng, i)``, as in ``search.sample``. An encoder-decoder reruns both
stacks over its source (``inputs``, as ``api.decode`` takes them) and the decoder buffer.
"""

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.generation import api
from llm_jax.generation import search
from llm_jax.models import kinds


@functools.partial(jax.jit, static_argnames=('kind_name', 'cfg', 'temperature', 'top_k', 'top_p'))
def _next_token(kind_name, cfg, params, buffer, length, key, inputs, *, temperature, top_k, top_p):
  """The token after the first ``length`` tokens of buffer[B, L] (the rest is masked out)."""
  model = kinds.build(kind_name, cfg).module
  positions = jnp.broadcast_to(jnp.arange(buffer.shape[1], dtype=jnp.int32), buffer.shape)
  segments = (positions < length).astype(jnp.int32)
  if inputs:
    source, source_segments = inputs['encoder_inputs'], inputs['encoder_segment_ids']
    source_positions = jnp.broadcast_to(jnp.arange(source.shape[1], dtype=jnp.int32), source.shape)
    logits = model.apply({'params': params}, source, source_positions, source_segments, buffer, positions, segments)
  else:
    logits = model.apply({'params': params}, buffer, positions, segments)
  last = jax.lax.dynamic_index_in_dim(logits, length - 1, axis=1, keepdims=False)
  return search.sample_logits(last, key, temperature=temperature, top_k=top_k, top_p=top_p)


def decode_no_cache(kind, params, prompt, *, max_new_tokens: int, rng, temperature: float = 0.0, top_k: int = 0,
                    top_p: float = 1.0, eos_ids: Sequence[int] = (), inputs=None) -> np.ndarray:
  """int32 [B, N] new tokens after ``prompt`` int32 [B, P]; after a row's eos token, the eos again
  (the first eos id), as ``api.decode`` with ``pad_id`` = that id."""
  inputs = api._kind_inputs(kind, np.shape(prompt)[0], inputs)  # pylint: disable=protected-access
  settings = api.Settings(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
  api.check(kind.cfg.max_len, np.shape(prompt), settings)
  params = api._params(params)  # pylint: disable=protected-access
  cfg = dataclasses.replace(kind.cfg, decode=False)
  b, p = np.shape(prompt)
  buffer = jnp.zeros((b, p + max_new_tokens), jnp.int32).at[:, :p].set(jnp.asarray(prompt, jnp.int32))
  done = np.zeros((b,), bool)
  out = []
  for i in range(max_new_tokens):
    tokens = np.asarray(_next_token(kind.name, cfg, params, buffer, p + i, jax.random.fold_in(rng, i), inputs,
                                    temperature=float(temperature), top_k=int(top_k), top_p=float(top_p)))
    if eos_ids:
      tokens = np.where(done, eos_ids[0], tokens)
      done |= np.isin(tokens, eos_ids)
    buffer = buffer.at[:, p + i].set(tokens)
    out.append(tokens)
  return np.stack(out, axis=1).astype(np.int32)
