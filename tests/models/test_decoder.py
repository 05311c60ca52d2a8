"""The assembled decoder: packing, scan/remat equivalence, and full-size shapes without compute."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax import config as config_lib
from llm_jax.models.decoder import DecoderLM
from llm_jax.models.layers import TransformerConfig

SMALL = TransformerConfig(vocab_size=40, num_layers=2, num_heads=4, num_kv_heads=2, emb_dim=32,
                          head_dim=8, mlp_dim=64, max_len=16, init_std=0.2)


def _init(cfg, tokens):
  model = DecoderLM(cfg)
  return model, nn.meta.unbox(model.init(jax.random.key(0), tokens)['params'])


@pytest.mark.parametrize('pos', ['learned', 'sinusoidal', 'rope', 'alibi'])
def test_packed_row_equals_per_document_runs(pos):
  """Two documents packed in one row give the logits each gives alone."""
  cfg = SMALL.replace(pos_encoding=pos)
  rng = np.random.default_rng(1)
  a, b = rng.integers(1, 40, 6), rng.integers(1, 40, 9)
  packed = np.concatenate([a, b])[None]
  seg = np.array([[1] * 6 + [2] * 9])
  posn = np.array([list(range(6)) + list(range(9))])
  model, params = _init(cfg, jnp.asarray(packed))
  got = model.apply({'params': params}, jnp.asarray(packed), jnp.asarray(posn), jnp.asarray(seg))
  alone_a = model.apply({'params': params}, jnp.asarray(a[None]))
  alone_b = model.apply({'params': params}, jnp.asarray(b[None]))
  np.testing.assert_allclose(np.asarray(got[0, :6]), np.asarray(alone_a[0]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(got[0, 6:]), np.asarray(alone_b[0]), atol=1e-5)


def _stack_layers(params, num_layers):
  """Unrolled params (layer_0, layer_1, ...) -> the scanned layout (layers, stacked on axis 0)."""
  out = {k: v for k, v in params.items() if not k.startswith('layer_')}
  out['layers'] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f'layer_{i}'] for i in range(num_layers)])
  return out


@pytest.mark.parametrize('remat', ['none', 'full', 'dots'])
def test_scan_and_remat_match_unrolled(remat):
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 40, (2, 12)))
  model, params = _init(SMALL, tokens)
  loss = lambda m, p: jnp.mean(m.apply({'params': p}, tokens) ** 2)
  want, want_grad = jax.value_and_grad(lambda p: loss(model, p))(params)
  scanned = DecoderLM(SMALL.replace(scan_layers=True, remat=remat))
  got, got_grad = jax.value_and_grad(lambda p: loss(scanned, p))(_stack_layers(params, 2))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6),
               got_grad, _stack_layers(want_grad, 2))


def test_post_ln_untied_swiglu_rmsnorm_bf16_runs_close_to_float32():
  cfg = SMALL.replace(norm_placement='post', tie_embeddings=False, mlp_activation='swiglu', norm='rmsnorm',
                      init_std=0.02)
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, 40, (2, 12)))
  model, params = _init(cfg, tokens)
  f32 = model.apply({'params': params}, tokens)
  bf16 = DecoderLM(cfg.replace(dtype=jnp.bfloat16)).apply({'params': params}, tokens)
  assert 'lm_head' in params and bf16.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(bf16), np.asarray(f32), atol=5e-2)


def test_dropout_changes_output_only_when_not_deterministic():
  cfg = SMALL.replace(dropout_rate=0.5, attention_dropout_rate=0.5)
  tokens = jnp.zeros((1, 8), jnp.int32)
  model, params = _init(cfg, tokens)
  a = model.apply({'params': params}, tokens)
  b = model.apply({'params': params}, tokens, deterministic=True)
  c = model.apply({'params': params}, tokens, deterministic=False, rngs={'dropout': jax.random.key(1)})
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_gpt2_small_shapes_without_compute():
  """configs/gpt2_small.py at GPT-2's 50257 vocabulary is exactly GPT-2 124M (124,439,808)."""
  config = config_lib.from_file('configs/gpt2_small.py')
  cfg = config_lib.model_config(config, vocab_size=50257)
  model = DecoderLM(cfg)
  tokens = jax.ShapeDtypeStruct((2, 1024), jnp.int32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), tokens)
  params = nn.meta.unbox(shapes['params'])
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(params)) == 124_439_808
  logits = jax.eval_shape(lambda v, t: model.apply(v, t), shapes, tokens)
  assert logits.shape == (2, 1024, 50257) and logits.dtype == jnp.float32
  names = {n for leaf in jax.tree.leaves(shapes['params'], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
           for n in leaf.names}
  assert {'vocab', 'embed', 'mlp', 'heads', 'kv', 'layers'} <= names
