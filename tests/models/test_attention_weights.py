"""Attention maps: attention_kernels.attention_weights against a NumPy softmax, and the weights a model
sows with mutable=['intermediates'] (causal, rows summing to one, changing the output as the kernels do)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.models import attention_kernels
from llm_jax.models.decoder import DecoderLM
from llm_jax.models.layers import TransformerConfig

RNG = np.random.default_rng(0)


def test_attention_weights_equal_a_numpy_softmax_with_grouped_heads_mask_and_bias():
  b, t, s, n, k, h = 2, 5, 7, 4, 2, 8
  q, kk = RNG.normal(size=(b, t, n, h)).astype(np.float32), RNG.normal(size=(b, s, k, h)).astype(np.float32)
  mask = RNG.random((b, 1, t, s)) > 0.3
  mask[..., 0] = True
  bias = RNG.normal(size=(b, n, t, s)).astype(np.float32)
  got = np.asarray(attention_kernels.attention_weights(jnp.asarray(q), jnp.asarray(kk), mask=jnp.asarray(mask),
                                                       bias=jnp.asarray(bias)))
  want = np.empty((b, n, t, s), np.float32)
  for i in range(n):
    logits = np.einsum('btd,bsd->bts', q[:, :, i], kk[:, :, i // (n // k)]) / np.sqrt(h) + bias[:, i]
    logits = np.where(mask[:, 0], logits, -np.inf)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    want[:, i] = e / e.sum(-1, keepdims=True)
  np.testing.assert_allclose(got, want, atol=1e-6)
  v = RNG.normal(size=(b, s, k, h)).astype(np.float32)
  out = attention_kernels.xla_attention(jnp.asarray(q), jnp.asarray(kk), jnp.asarray(v), mask=jnp.asarray(mask),
                                        bias=jnp.asarray(bias))
  by_weights = np.einsum('bnts,bsnh->btnh', got, np.repeat(v, n // k, axis=2))
  np.testing.assert_allclose(np.asarray(out), by_weights, atol=1e-5)


def test_a_decoder_sows_causal_maps_only_when_asked():
  cfg = TransformerConfig(vocab_size=30, num_layers=2, num_heads=2, num_kv_heads=2, emb_dim=16, head_dim=8,
                          mlp_dim=32, max_len=8, init_std=0.5)
  tokens = jnp.asarray(RNG.integers(0, 30, (1, 6)))
  model = DecoderLM(cfg)
  params = nn.meta.unbox(model.init(jax.random.key(0), tokens)['params'])
  plain = model.apply({'params': params}, tokens)
  logits, state = model.apply({'params': params}, tokens, mutable=['intermediates'])
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(plain))
  for layer in ('layer_0', 'layer_1'):
    (w,) = state['intermediates'][layer]['attention']['attention_weights']
    w = np.asarray(w)
    assert w.shape == (1, 2, 6, 6)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    assert np.all(w[..., np.triu_indices(6, 1)[0], np.triu_indices(6, 1)[1]] == 0)
    assert w[0, 0, 5].std() > 0.01  # not uniform: the weights are large
