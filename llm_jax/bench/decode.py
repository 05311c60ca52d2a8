"""Decoding speed: ``generation.decode`` (KV cache) against ``reference.decode_no_cache`` (full recomputation).

For each batch size B: random parameters of the config's model (no checkpoint), a
random prompt of P tokens per row, greedy decoding (temperature 0) of N new tokens. An
encoder-decoder takes the P random tokens as its source and decodes from its start token.
Every figure is the fastest of ``repeats`` calls (more while they take under a second)
after a warm-up call that compiles:

* ``prefill_ms``: a 1-new-token call (the prompt's forward pass and the first token);
* ``per_token_ms``: (time of the N-token call - prefill) / (N - 1);
* ``tokens_per_sec``: B·N / time of the N-token call;
* ``speedup_vs_no_cache``: no-cache N-token time / cached N-token time.

``decode`` is one compiled program (prefill, then a ``lax.while_loop`` over tokens), so the
pieces are separated by timing two calls rather than from inside. The no-cache
reference runs a full forward pass over its [B, P + N] buffer per token, the same
cost at every position, so with ``no_cache_max_tokens`` < N only that many tokens are
timed and the N-token time is extrapolated from the per-token cost
(``no_cache_extrapolated`` says so). The cached and the recomputed tokens must be
equal (float32; ``DecodeMismatch`` otherwise); in bfloat16 rounding differs between
the two paths and a near-tie may flip, so there the agreement is reported, not required.

The model's ``max_len`` (position table, cache length, no-cache buffer) is raised to
P + N when the config's is shorter: the parameters are random, so any table size works;
the result records both lengths.
"""

import dataclasses
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm_jax import config as config_lib
from llm_jax import errors
from llm_jax.generation import api as gen_api
from llm_jax.generation import reference
from llm_jax.models import kinds


class DecodeMismatch(errors.Error, RuntimeError):
  """Cached decoding produced other tokens than full recomputation."""
  exit_code = errors.REFERENCE


def _best_time(fn, repeats: int, budget_s: float = 1.0, most: int = 20) -> tuple[float, jax.Array]:
  """(fastest seconds, last output) of at least ``repeats`` calls, more while they took < budget_s."""
  best, out, spent, calls = float('inf'), None, 0.0, 0
  while calls < max(1, repeats) or (spent < budget_s and calls < most):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    took = time.perf_counter() - start
    best, spent, calls = min(best, took), spent + took, calls + 1
  return best, out


def random_params(model_cfg, kind: str = 'decoder', seed: int = 0):
  """The model's freshly initialized 'params' (unboxed), as ``init`` draws them."""
  built = kinds.build(kind, model_cfg)
  variables = jax.jit(built.init)(jax.random.key(seed), built.example_batch(1, model_cfg.max_len))
  return nn.meta.unbox(variables['params'])


def benchmark_decoding(config, *, batch_sizes=(1, 64), new_tokens: int = 256, prompt_len: int = 16,
                       no_cache_max_tokens: int = 16, repeats: int = 2, vocab_size: int = -1) -> dict:
  """Prefill and per-token latency, tokens/s and the cache's speedup per batch size (a dict)."""
  from llm_jax.bench.common import synthetic_vocab
  if new_tokens < 2 or prompt_len < 1:
    raise errors.ConfigError(f'--decode_new_tokens={new_tokens} must be >= 2 and --decode_prompt_len={prompt_len} >= 1.')
  vocab = synthetic_vocab(config, vocab_size)
  model_cfg = config_lib.model_config(config, vocab)
  config_len = model_cfg.max_len
  if prompt_len + new_tokens > config_len:
    model_cfg = dataclasses.replace(model_cfg, max_len=prompt_len + new_tokens)
  kind = config.model.kind
  params = random_params(model_cfg, kind, config.seed)
  built = kinds.build(kind, model_cfg)
  seq2seq = getattr(built, 'encoder_decoder', False)
  n_timed = new_tokens if no_cache_max_tokens <= 0 else max(2, min(new_tokens, no_cache_max_tokens))
  rows = {}
  for b in batch_sizes:
    prompt = np.random.default_rng(b).integers(2, vocab, (b, prompt_len), dtype=np.int32)
    inputs = None
    if seq2seq:
      inputs, prompt = {'encoder_inputs': prompt}, np.full((b, 1), built.decoder_start_id, np.int32)
    rng = jax.random.key(config.seed)
    cached = lambda n, prompt=prompt, rng=rng, inputs=inputs: gen_api.decode(
        built, params, prompt, max_new_tokens=n, rng=rng, inputs=inputs).tokens[:, 0]
    recomputed = lambda n, prompt=prompt, rng=rng, inputs=inputs: reference.decode_no_cache(
        built, params, prompt, max_new_tokens=n, rng=rng, inputs=inputs)
    start = time.perf_counter()
    jax.block_until_ready((cached(1), cached(new_tokens)))
    compile_s = time.perf_counter() - start
    prefill, _ = _best_time(lambda: cached(1), repeats)
    total, tokens = _best_time(lambda: cached(new_tokens), repeats)
    jax.block_until_ready(recomputed(1))  # compiles the full forward pass
    nc_prefill, _ = _best_time(lambda: recomputed(1), repeats)
    nc_timed, nc_tokens = _best_time(lambda: recomputed(n_timed), 1)
    nc_per_token = (nc_timed - nc_prefill) / (n_timed - 1)
    nc_total = nc_timed if n_timed == new_tokens else nc_prefill + nc_per_token * (new_tokens - 1)
    same = np.asarray(tokens)[:, :n_timed] == np.asarray(nc_tokens)
    if not same.all() and model_cfg.dtype == jnp.float32:
      row, col = np.argwhere(~same)[0]
      raise DecodeMismatch(f'batch {b}: cached decoding differs from full recomputation at row {row}, '
                           f'new token {col} ({int(np.asarray(tokens)[row, col])} vs '
                           f'{int(np.asarray(nc_tokens)[row, col])}).')
    rows[str(b)] = dict(
        batch=b, compile_s=round(compile_s, 2),
        prefill_ms=round(1000 * prefill, 3), per_token_ms=round(1000 * (total - prefill) / (new_tokens - 1), 3),
        total_ms=round(1000 * total, 2), tokens_per_sec=round(b * new_tokens / total, 1),
        no_cache_prefill_ms=round(1000 * nc_prefill, 3), no_cache_per_token_ms=round(1000 * nc_per_token, 3),
        no_cache_total_ms=round(1000 * nc_total, 2), no_cache_tokens_per_sec=round(b * new_tokens / nc_total, 1),
        no_cache_timed_tokens=n_timed, no_cache_extrapolated=n_timed < new_tokens,
        speedup_vs_no_cache=round(nc_total / total, 2),
        tokens_equal=bool(same.all()), tokens_compared=int(same.size),
        tokens_agreement=round(float(same.mean()), 4))
  return dict(device=jax.devices()[0].device_kind, kind=kind, layers=model_cfg.num_layers,
              width=model_cfg.emb_dim, heads=model_cfg.num_heads, vocab=vocab,
              dtype=jnp.dtype(model_cfg.dtype).name, attention_kernel=model_cfg.attention_kernel,
              prompt_len=prompt_len, new_tokens=new_tokens, max_len=model_cfg.max_len,
              config_max_len=config_len, greedy=True, batches=rows)
