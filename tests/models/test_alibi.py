"""ALiBi (pos_encoding='alibi'): BLOOM's slopes, the bias against a NumPy formula, and a decoder that
decodes with a KV cache as it runs whole, under the reference and the 'auto' kernel."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.models import layers
from llm_jax.models.decoder import DecoderLM
from llm_jax.models.layers import TransformerConfig

CFG = TransformerConfig(vocab_size=40, num_layers=2, num_heads=6, num_kv_heads=3, emb_dim=48, head_dim=8,
                        mlp_dim=64, max_len=16, init_std=0.3, pos_encoding='alibi', attention_kernel='xla')


def _slopes(n):
  """Press et al.'s geometric sequence starting at 2^(-8/n); for n not a power of two, that of the
  power of two p below it, then every other slope of 2p."""
  geometric = lambda m: [2 ** (-8 * (i + 1) / m) for i in range(m)]
  p = 2 ** int(np.log2(n))
  return geometric(p) + geometric(2 * p)[0::2][:n - p]


@pytest.mark.parametrize('heads', [1, 2, 4, 6, 8, 12, 16, 20])
def test_slopes_are_blooms(heads):
  np.testing.assert_allclose(layers.alibi_slopes(heads), _slopes(heads), rtol=1e-6)


def test_slopes_of_eight_heads():
  np.testing.assert_allclose(layers.alibi_slopes(8), [2.0 ** -i for i in range(1, 9)], rtol=1e-7)


def test_bias_is_minus_slope_times_distance():
  q_pos = np.array([[0, 1, 2, 3], [0, 0, 1, 2]])
  k_pos = np.array([[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]])
  got = np.asarray(layers.alibi_bias(jnp.asarray(q_pos), jnp.asarray(k_pos), 6))
  slopes = np.asarray(_slopes(6))
  want = -slopes[None, :, None, None] * (q_pos[:, None, :, None] - k_pos[:, None, None, :])
  causal = (q_pos[:, None, :, None] >= k_pos[:, None, None, :]) & np.ones_like(want, bool)
  assert got.shape == (2, 6, 4, 5) and got.dtype == np.float32
  np.testing.assert_allclose(got[causal], want[causal], rtol=1e-6)


def test_position_bias_registry():
  assert layers.position_bias('alibi') is layers.alibi_bias and 'alibi' in layers.positional_names()
  assert layers.position_bias('rope') is None and layers.position_bias('learned') is None


@pytest.mark.parametrize('kernel', ['xla', 'auto'])
def test_decoding_with_a_cache_matches_the_whole_sequence(kernel):
  cfg = CFG.replace(attention_kernel=kernel)
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, 40, (2, 7)))
  model = DecoderLM(cfg)
  params = nn.meta.unbox(model.init(jax.random.key(0), tokens)['params'])
  whole = model.apply({'params': params}, tokens)
  decoder = DecoderLM(cfg.replace(decode=True))
  cache = decoder.init(jax.random.key(0), tokens[:, :1])['cache']
  steps = []
  for t in range(tokens.shape[1]):
    pos = jnp.full((2, 1), t, jnp.int32)
    logits, variables = decoder.apply({'params': params, 'cache': cache}, tokens[:, t:t + 1], pos,
                                      jnp.ones((2, 1), jnp.int32), mutable=['cache'])
    cache = variables['cache']
    steps.append(logits[:, 0])
  np.testing.assert_allclose(np.stack(steps, 1), np.asarray(whole), atol=1e-5)


def test_alibi_changes_the_output():
  tokens = jnp.asarray(np.random.default_rng(1).integers(1, 40, (1, 9)))
  model = DecoderLM(CFG)
  params = nn.meta.unbox(model.init(jax.random.key(0), tokens)['params'])
  plain = DecoderLM(CFG.replace(pos_encoding='none')).apply({'params': params}, tokens)
  assert float(jnp.abs(model.apply({'params': params}, tokens) - plain).max()) > 1e-3


def test_config_takes_alibi_and_refuses_a_kernel_without_bias():
  from llm_jax import config as config_lib
  from llm_jax import errors
  config_lib.validate(config_lib.from_file('configs/default.py', **{'model.pos_encoding': 'alibi'}))
  config = config_lib.from_file('configs/default.py', **{'model.pos_encoding': 'alibi',
                                                          'model.attention_kernel': 'cpu_fused'})
  with pytest.raises(errors.ConfigError, match="pos_encoding='alibi' is an attention bias.*cpu_fused"):
    config_lib.validate(config)
