"""Each block against a direct NumPy formula."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.models import attention_kernels, layers
from llm_jax.models.layers import TransformerConfig

RNG = np.random.default_rng(0)


def np_attention(q, k, v, mask):
  """softmax(q k^T / sqrt(H) + mask) v per head, kv heads shared by groups of query heads."""
  b, t, n, h = q.shape
  g = n // k.shape[2]
  out = np.zeros_like(q, dtype=np.float64)
  for bi in range(b):
    for ni in range(n):
      s = q[bi, :, ni] @ k[bi, :, ni // g].T / np.sqrt(h)
      s = np.where(mask[bi, 0], s, -np.inf)
      p = np.exp(s - s.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      out[bi, :, ni] = p @ v[bi, :, ni // g]
  return out


@pytest.mark.parametrize('kernel', ['xla', 'dot_product'])
@pytest.mark.parametrize('n,k', [(4, 4), (4, 2), (4, 1)])
def test_attention_kernels_match_numpy(kernel, n, k):
  b, t, h = 2, 7, 8
  q = RNG.normal(size=(b, t, n, h)).astype(np.float32)
  kk = RNG.normal(size=(b, t, k, h)).astype(np.float32)
  v = RNG.normal(size=(b, t, k, h)).astype(np.float32)
  seg = np.array([[1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 1]], np.int32)
  pos = np.array([[0, 1, 2, 0, 1, 2, 0], list(range(7))], np.int32)
  mask = np.asarray(layers.attention_mask(seg, seg, pos, pos, causal=True))
  mask[0, 0, 6, 6] = True  # a fully-masked padding row gives NaN in NumPy; let it see itself
  got = attention_kernels.get(kernel)(jnp.asarray(q), jnp.asarray(kk), jnp.asarray(v), mask=jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(got), np_attention(q, kk, v, mask), atol=2e-5, rtol=1e-5)


def test_mask_blocks_other_documents_future_and_padding():
  seg = np.array([[1, 1, 2, 2, 0]])
  pos = np.array([[0, 1, 0, 1, 0]])
  m = np.asarray(layers.attention_mask(seg, seg, pos, pos, causal=True))[0, 0]
  want = np.array([[1, 0, 0, 0, 0],
                   [1, 1, 0, 0, 0],
                   [0, 0, 1, 0, 0],
                   [0, 0, 1, 1, 0],
                   [0, 0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(m, want)


def test_unknown_or_unavailable_kernel_errors():
  with pytest.raises(ValueError, match='choose one of'):
    attention_kernels.get('flash9000')
  with pytest.raises(ValueError, match='runs on gpu, not on cpu'):
    attention_kernels.get('cudnn', platform='cpu')


def _apply(module, x, *args):
  variables = module.init(jax.random.key(0), x, *args)
  return variables, module.apply(variables, x, *args)


def test_layernorm_and_rmsnorm_match_numpy():
  x = RNG.normal(size=(2, 3, 16)).astype(np.float32) * 3 + 1
  cfg = TransformerConfig(vocab_size=8, emb_dim=16, use_bias=True, norm_eps=1e-5)
  variables = {'params': {'scale': RNG.normal(size=16).astype(np.float32),
                          'bias': RNG.normal(size=16).astype(np.float32)}}
  p = variables['params']
  got = layers.LayerNorm(cfg).apply(variables, jnp.asarray(x))
  want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * p['scale'] + p['bias']
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)
  got = layers.RMSNorm(cfg).apply({'params': {'scale': p['scale']}}, jnp.asarray(x))
  want = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-5) * p['scale']
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


def test_sinusoid_matches_paper_formula():
  d, positions = 16, np.arange(50)
  got = np.asarray(layers.sinusoid(jnp.asarray(positions), d))
  want = np.zeros((50, d))
  for p in positions:
    for i in range(d // 2):
      want[p, 2 * i] = np.sin(p / 10000 ** (2 * i / d))
      want[p, 2 * i + 1] = np.cos(p / 10000 ** (2 * i / d))
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_rope_is_the_rotation_of_pairs():
  h, theta = 8, 10000.0
  x = RNG.normal(size=(1, 5, 2, h)).astype(np.float32)
  positions = np.array([[0, 1, 2, 7, 11]])
  got = np.asarray(layers.apply_rope(jnp.asarray(x), jnp.asarray(positions), theta))
  want = np.empty_like(x)
  for t, p in enumerate(positions[0]):
    for i in range(h // 2):
      a = p * theta ** (-2 * i / h)
      rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
      pair = np.stack([x[0, t, :, i], x[0, t, :, i + h // 2]])   # [2, N]
      r = rot @ pair
      want[0, t, :, i], want[0, t, :, i + h // 2] = r[0], r[1]
  np.testing.assert_allclose(got, want, atol=1e-5)
  # Relative: <rope(q, m), rope(k, n)> depends only on m - n.
  q, k = x[:, :1], x[:, 1:2]
  dot = lambda m, n: float(np.sum(np.asarray(layers.apply_rope(jnp.asarray(q), jnp.array([[m]]), theta)) *
                                  np.asarray(layers.apply_rope(jnp.asarray(k), jnp.array([[n]]), theta))))
  assert dot(5, 3) == pytest.approx(dot(12, 10), rel=1e-4)


_SIGMOID = lambda v: 1 / (1 + np.exp(-v))
_GELU_TANH = lambda v: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)))  # GPT-2's
# Shazeer 2020's formulas, written out: FFN_act(x) = act(x W1) W2; gated: (act(x W) * x V) W2.
NUMPY_ACTIVATIONS = {
    'relu': lambda v: np.maximum(v, 0), 'gelu_tanh': _GELU_TANH,
    'gelu_exact': lambda v: 0.5 * v * (1 + np.vectorize(math.erf)(v / np.sqrt(2))),  # x·Φ(x), BERT's
    'swish': lambda v: v * _SIGMOID(v)}
NUMPY_GATES = {'swiglu': lambda v: v * _SIGMOID(v), 'geglu': _GELU_TANH, 'reglu': lambda v: np.maximum(v, 0),
               'glu': _SIGMOID, 'bilinear': lambda v: v}


def test_every_activation_has_a_numpy_reference():
  assert set(layers.ACTIVATIONS) == set(NUMPY_ACTIVATIONS) | set(NUMPY_GATES)
  assert set(layers.GATED) == set(NUMPY_GATES)


@pytest.mark.parametrize('use_bias', [True, False], ids=['bias', 'no_bias'])
@pytest.mark.parametrize('activation', sorted(NUMPY_ACTIVATIONS) + sorted(NUMPY_GATES))
def test_mlp_matches_numpy(activation, use_bias):
  cfg = TransformerConfig(vocab_size=8, emb_dim=8, mlp_dim=16, mlp_activation=activation, use_bias=use_bias)
  x = RNG.normal(size=(2, 3, 8)).astype(np.float32)
  variables = layers.Mlp(cfg).init(jax.random.key(0), jnp.asarray(x), True)
  p = jax.tree.map(np.asarray, variables['params'])
  p = {k: np.asarray(v.value if hasattr(v, 'value') else v) for k, v in p.items()}
  got = layers.Mlp(cfg).apply(variables, jnp.asarray(x), True)
  b = lambda name: p[name] if use_bias else 0.0
  h = x @ p['wi'] + b('wi_bias')
  if activation in NUMPY_GATES:
    h = NUMPY_GATES[activation](x @ p['wi_gate'] + b('wi_gate_bias')) * h
  else:
    assert 'wi_gate' not in p
    h = NUMPY_ACTIVATIONS[activation](h)
  want = h @ p['wo'] + b('wo_bias')
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('activation', ['relu', 'gelu_tanh', 'gelu_exact', 'swish'])
def test_mlp_hand_written_backward_equals_autodiff(activation):
  """The bias-free MLP uses a custom VJP; its value and gradients equal autodiff's."""
  cfg = TransformerConfig(vocab_size=8, emb_dim=8, mlp_dim=16, mlp_activation=activation, use_bias=False)
  x = jnp.asarray(RNG.normal(size=(2, 3, 8)).astype(np.float32))
  params = layers.Mlp(cfg).init(jax.random.key(0), x, True)['params']
  params = jax.tree.map(lambda v: v.value if hasattr(v, 'value') else v, params,
                        is_leaf=lambda v: hasattr(v, 'value'))
  act = layers.ACTIVATIONS[activation]
  reference = lambda p, x: act(x @ p['wi']) @ p['wo']
  loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x)))
  module = lambda p, x: layers.Mlp(cfg).apply({'params': p}, x, True)
  np.testing.assert_allclose(module(params, x), reference(params, x), rtol=1e-6, atol=1e-6)
  got = jax.grad(loss(module), argnums=(0, 1))(params, x)
  want = jax.grad(loss(reference), argnums=(0, 1))(params, x)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6), got, want)


@pytest.mark.parametrize('block', [2, 4])
def test_blocked_kernel_matches_numpy_on_packed_causal_rows(block):
  b, t, n, k, h = 2, 8, 4, 2, 8
  q = RNG.normal(size=(b, t, n, h)).astype(np.float32)
  kk = RNG.normal(size=(b, t, k, h)).astype(np.float32)
  v = RNG.normal(size=(b, t, k, h)).astype(np.float32)
  seg = np.array([[1, 1, 1, 2, 2, 2, 2, 2], [1] * 8], np.int32)
  pos = np.array([[0, 1, 2, 0, 1, 2, 3, 4], list(range(8))], np.int32)
  mask = np.asarray(layers.attention_mask(seg, seg, pos, pos, causal=True))
  got = attention_kernels.get('blocked')(jnp.asarray(q), jnp.asarray(kk), jnp.asarray(v), mask=jnp.asarray(mask),
                                 causal=True, block=block)
  np.testing.assert_allclose(np.asarray(got), np_attention(q, kk, v, mask), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize('norm', ['layernorm', 'rmsnorm'])
def test_norm_gradients_equal_autodiff_of_the_formula(norm):
  cfg = TransformerConfig(vocab_size=8, emb_dim=16)
  x = jnp.asarray(RNG.normal(size=(2, 3, 16)).astype(np.float32) * 2 + 0.5)
  scale = jnp.asarray(RNG.normal(size=16).astype(np.float32))

  def reference(x, scale):
    xc = x - x.mean(-1, keepdims=True) if norm == 'layernorm' else x
    return xc / jnp.sqrt(jnp.square(xc).mean(-1, keepdims=True) + 1e-5) * scale

  module = lambda x, scale: layers.NORMS[norm](cfg).apply({'params': {'scale': scale}}, x)
  loss = lambda f: lambda x, scale: jnp.sum(jnp.sin(3 * f(x, scale)))
  got = jax.grad(loss(module), argnums=(0, 1))(x, scale)
  want = jax.grad(loss(reference), argnums=(0, 1))(x, scale)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_embed_scale_multiplies_the_lookup_by_sqrt_width_and_leaves_the_tied_output_alone():
  """Vaswani et al. 3.4: the embedding weights are multiplied by sqrt(d_model) in the embedding
  layers; the pre-softmax projection shares the unscaled matrix."""
  cfg = TransformerConfig(vocab_size=11, num_layers=1, num_heads=2, emb_dim=16, max_len=8, embed_scale=True)
  embed = layers.Embed(cfg)
  ids = np.array([[3, 0, 10]])
  variables = embed.init(jax.random.key(0), ids)
  import flax.linen as nn
  table = np.asarray(nn.meta.unbox(variables)['params']['embedding'])
  np.testing.assert_allclose(np.asarray(embed.apply(variables, ids)), table[ids] * 4.0, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(embed.apply(variables, method=embed.projection)), table.T)
  plain = layers.Embed(cfg.replace(embed_scale=False))
  np.testing.assert_array_equal(np.asarray(plain.apply(variables, ids)), table[ids])


def test_the_original_transformer_layout_scales_embeddings_and_exports_nowhere():
  from llm_jax.convert import t5
  from llm_jax.models.encoder_decoder import T5_LAYOUT, TRANSFORMER_LAYOUT
  assert TRANSFORMER_LAYOUT['embed_scale'] is True and T5_LAYOUT['embed_scale'] is False
  cfg = TransformerConfig(vocab_size=11, num_layers=1, num_heads=2, emb_dim=16, max_len=8, norm='rmsnorm',
                          pos_encoding='t5_relative', attention_scale=False, embed_scale=True)
  assert 'config.model.embed_scale=True (T5 has False)' in t5.T5().unfit(cfg)
