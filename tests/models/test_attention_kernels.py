"""Attention fast paths: each against a NumPy formula and the 'xla' kernel; their choice and their errors.

Rows are packed as the data pipeline packs them (two documents and padding in one
row, one document filling the other) with grouped-query heads; the masks come from
``layers.attention_mask``. Padding queries see no key: their outputs are whatever a
kernel makes of an empty softmax, so they are left out of every comparison, as the
loss weights leave them out of training.
"""

import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax import config as config_lib
from llm_jax.models import attention_kernels, layers
from llm_jax.models.layers import TransformerConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(0)
on_cpu = pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the choices and errors of a CPU host')


@pytest.fixture
def pre_hopper_gpu(monkeypatch):
  """cuDNN's head-dim limit as on a GPU before Hopper (128), whatever this machine has."""
  monkeypatch.setattr(attention_kernels, '_cudnn_max_head_dim', lambda platform: 128)


def packed_rows(t):
  """Segment ids and positions [2, T]: documents of 5 and T-9 tokens then 4 padding; one document."""
  seg = np.array([[1] * 5 + [2] * (t - 9) + [0] * 4, [1] * t], np.int32)
  pos = np.array([list(range(5)) + list(range(t - 9)) + [0] * 4, list(range(t))], np.int32)
  return seg, pos


def operands(t, n, k, h=8):
  seg, pos = packed_rows(t)
  mask = np.asarray(layers.attention_mask(seg, seg, pos, pos, causal=True))
  q, kk, v = (RNG.normal(size=(2, t, heads, h)).astype(np.float32) for heads in (n, k, k))
  return q, kk, v, mask, seg != 0


def np_reference(q, k, v, mask):
  """softmax(q kᵀ/√H + mask) v in float64, query head i reading kv head i // G; empty rows give 0."""
  g = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, g, axis=2).astype(np.float64), np.repeat(v, g, axis=2).astype(np.float64)
  logits = np.einsum('btnh,bsnh->bnts', q.astype(np.float64), k) / np.sqrt(q.shape[-1])
  logits = np.where(mask, logits, -np.inf)
  top = logits.max(-1, keepdims=True)
  p = np.exp(logits - np.where(np.isfinite(top), top, 0))
  p /= np.maximum(p.sum(-1, keepdims=True), 1e-30)
  return np.einsum('bnts,bsnh->btnh', p, v)


def check_against_numpy_and_xla(kernel, q, k, v, mask, valid, **kwargs):
  """The kernel's output equals NumPy on real tokens, and its gradients equal the 'xla' kernel's."""
  args = tuple(jnp.asarray(x) for x in (q, k, v))
  run = lambda fn, **kw: lambda q, k, v: fn(q, k, v, mask=jnp.asarray(mask), causal=True, **kw)
  got = jax.jit(run(kernel, **kwargs))(*args)
  np.testing.assert_allclose(np.asarray(got)[valid], np_reference(q, k, v, mask)[valid], atol=2e-5, rtol=1e-5)
  cotangent = jnp.asarray(RNG.normal(size=q.shape).astype(np.float32)) * jnp.asarray(valid)[:, :, None, None]
  grads = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * cotangent), argnums=(0, 1, 2)))(*args)
  for g, w in zip(grads(run(kernel, **kwargs)), grads(run(attention_kernels.get('xla')))):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize('name,n,k,t', [  # 'auto' runs 'cpu_fused' on the CPU (blocked, xla elsewhere)
    ('xla', 4, 2, 16), ('blocked', 4, 2, 16), ('blocked', 4, 1, 16), ('dot_product', 4, 2, 16),
    ('dot_product', 4, 1, 16), ('cpu_fused', 4, 2, 16), ('cpu_fused', 4, 1, 14), ('auto', 4, 2, 16),
    ('auto', 4, 1, 14)])
def test_cpu_kernels_match_numpy_and_xla_gradients(name, n, k, t):
  q, kk, v, mask, valid = operands(t, n, k)
  check_against_numpy_and_xla(attention_kernels.get(name), q, kk, v, mask, valid, block=4)


@on_cpu
@pytest.mark.parametrize('n,k', [(4, 2), (2, 1)])
def test_splash_kernel_in_interpret_mode_matches_numpy_and_xla_gradients(n, k):
  """The installed Pallas splash kernel, run by Pallas's interpreter: layout, scale, GQA, segment ids."""
  q, kk, v, mask, valid = operands(128, n, k, h=16)
  check_against_numpy_and_xla(attention_kernels.splash_attention, q, kk, v, mask, valid, interpret=True)


def test_segment_ids_from_mask_give_back_the_mask():
  seg = np.array([[1, 1, 1, 2, 2, 1, 1, 3, 0, 0],     # document 1 split around document 2
                  [4, 4, 4, 4, 4, 4, 4, 4, 4, 4]], np.int32)
  pos = np.array([[0, 1, 2, 0, 1, 3, 4, 0, 0, 0], list(range(10))], np.int32)
  mask = np.asarray(layers.attention_mask(seg, seg, pos, pos, causal=True))[:, 0]
  ids = np.asarray(attention_kernels.segment_ids_from_mask(jnp.asarray(mask[:, None])))
  splash_rule = (ids[:, :, None] == ids[:, None, :]) & np.tril(np.ones((10, 10), bool))
  real = seg != 0
  np.testing.assert_array_equal(splash_rule[real], mask[real])
  assert (ids[~real] == 0).all() and (ids[real] > 0).all()   # padding sees padding only, never a document


@on_cpu
@pytest.mark.parametrize('devices,expected', [
    (1, ['attention_kernel=auto on cpu: one CPU device, self-attention (T=S=16), using cpu_fused',
         'attention_kernel=auto on cpu: one CPU device, self-attention (T=S=14), using cpu_fused']),
    (8, ['attention_kernel=auto on cpu: causal, T=16 a multiple of attention_block=4, using blocked',
         'attention_kernel=auto on cpu: T=14 is not a multiple of attention_block=4, using xla'])])
def test_auto_on_cpu_picks_fused_blocked_or_xla_and_logs_each_choice_once(monkeypatch, caplog, devices, expected):
  monkeypatch.setattr(attention_kernels, '_LOGGED', set())
  monkeypatch.setattr(attention_kernels, '_device_count', lambda: devices)
  auto = attention_kernels.get('auto')
  q, kk, v, mask, _ = operands(16, 4, 2)
  with caplog.at_level(logging.INFO, logger='absl'):
    for _ in range(2):
      auto(jnp.asarray(q), jnp.asarray(kk), jnp.asarray(v), mask=jnp.asarray(mask), causal=True, block=4)
    q, kk, v, mask, _ = operands(14, 4, 2)
    auto(jnp.asarray(q), jnp.asarray(kk), jnp.asarray(v), mask=jnp.asarray(mask), causal=True, block=4)
  messages = [r.getMessage() for r in caplog.records if 'attention_kernel=auto' in r.getMessage()]
  assert messages == expected


def _choose(platform, t=128, s=None, h=64, dtype=jnp.bfloat16, causal=True, dropout=None, block=64, devices=8):
  q = jax.ShapeDtypeStruct((2, t, 4, h), dtype)
  k = jax.ShapeDtypeStruct((2, s or t, 2, h), dtype)
  return attention_kernels.choose(q, k, mask=object(), dropout=dropout, causal=causal, block=block, platform=platform,
                          devices=devices)


@pytest.mark.parametrize('platform,kwargs,name,reason', [
    ('gpu', {}, 'cudnn', 'bfloat16, head_dim 64'),
    ('gpu', {'dtype': jnp.float32}, 'blocked', 'cudnn needs bfloat16 or float16 compute (here float32)'),
    ('gpu', {'h': 60}, 'blocked', 'cudnn needs head_dim a multiple of 8 ≤ 128 (here 60)'),
    ('gpu', {'t': 127, 'block': 0}, 'xla', 'cudnn needs even sequence lengths with a mask (here 127, 127)'),
    ('gpu', {'dropout': lambda p: p}, 'blocked', 'cudnn has no attention dropout'),
    ('tpu', {}, 'splash', 'causal, T=128 a multiple of 128'),
    ('tpu', {'t': 96, 'block': 32}, 'blocked', 'splash needs a sequence length that is a multiple of 128 (here 96)'),
    ('tpu', {'t': 1, 's': 128}, 'xla', 'splash needs causal self-attention (here causal=True, T=1, S=128), '
     'a sequence length that is a multiple of 128 (here 1)'),
    ('tpu', {'dropout': lambda p: p}, 'blocked', 'splash has no attention dropout'),
    ('cpu', {'causal': False}, 'xla', 'attention is not causal'),
    ('cpu', {'t': 32}, 'xla', 'T=32 fits in one attention_block=64'),
    ('cpu', {'devices': 1}, 'cpu_fused', 'one CPU device, self-attention (T=S=128)'),
    ('cpu', {'devices': 1, 'causal': False}, 'cpu_fused', 'one CPU device, self-attention (T=S=128)'),
    ('cpu', {'devices': 1, 't': 1, 's': 128, 'causal': False}, 'xla', 'attention is not causal'),
    ('cpu', {'devices': 1, 'dropout': lambda p: p}, 'blocked', 'causal, T=128 a multiple of attention_block=64'),
])
def test_auto_choice_and_reason_per_platform(platform, kwargs, name, reason, pre_hopper_gpu):
  choice = _choose(platform, **kwargs)
  assert (choice.name, choice.reason) == (name, reason)
  assert choice.fallback == (platform != 'cpu' and name not in ('cudnn', 'splash'))


def tiny_config(**overrides):
  return config_lib.from_file(str(ROOT / 'configs' / 'default.py'), **{'sample.prompt': '', **overrides})


@pytest.mark.parametrize('overrides,message', [
    ({'model.attention_kernel': 'cudnn'},
     "config.model.attention_kernel='cudnn' needs a GPU, bfloat16 compute, head_dim a multiple of 8 ≤ 128 "
     "(≤ 256 on Hopper or newer) and an even seq_len; here: cpu, float32, head_dim 32, seq_len 128. "
     "Use attention_kernel='auto' to fall back, or 'blocked'/'xla'."),
    ({'model.attention_kernel': 'cudnn', 'model.dtype': 'bfloat16', 'model.head_dim': 60},
     'here: cpu, bfloat16, head_dim 60, seq_len 128'),
    ({'model.attention_kernel': 'splash'},
     "config.model.attention_kernel='splash' needs a TPU and seq_len a multiple of 128; here: cpu, float32, "
     "head_dim 32, seq_len 128. Use attention_kernel='auto' to fall back, or 'blocked'/'xla'."),
    ({'model.attention_kernel': 'splash', 'model.attention_dropout_rate': 0.1},
     "config.model.attention_kernel='splash' has no attention dropout"),
])
@on_cpu
def test_config_refuses_kernels_this_platform_cannot_run(overrides, message):
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(tiny_config(**overrides))
  assert message in str(e.value) and '\n' not in str(e.value)


@pytest.mark.parametrize('dropout', [0.0, 0.1])
def test_config_accepts_auto(dropout):
  config_lib.validate(tiny_config(**{'model.attention_kernel': 'auto', 'model.attention_dropout_rate': dropout}))


@pytest.mark.parametrize('head_dim,dtype,limit,refused', [
    (60, jnp.bfloat16, 128, True), (136, jnp.bfloat16, 128, True), (136, jnp.bfloat16, 256, False),
    (264, jnp.bfloat16, 256, True), (64, jnp.float32, 128, True), (64, jnp.bfloat16, 128, False),
    (128, jnp.float16, 128, False)])
def test_cudnn_requirements_on_a_gpu(monkeypatch, head_dim, dtype, limit, refused):
  """The GPU-side rules, decided without a GPU: the head-dim limit is 128 before Hopper, 256 from it on."""
  monkeypatch.setattr(attention_kernels, '_cudnn_max_head_dim', lambda platform: limit)
  message = attention_kernels.unsupported('cudnn', dtype=dtype, head_dim=head_dim, seq_len=128, platform='gpu')
  if not refused:
    assert message is None
  else:
    assert (f"attention_kernel='cudnn' needs a GPU, bfloat16 compute, head_dim a multiple of 8 ≤ {limit} and an "
            f"even seq_len; here: gpu, {jnp.dtype(dtype).name}, head_dim {head_dim}, seq_len 128.") in message


@on_cpu
def test_get_and_the_kernels_refuse_to_run_off_their_platform():
  q = jnp.zeros((1, 128, 2, 16), jnp.bfloat16)
  for name, platform in (('cudnn', 'gpu'), ('splash', 'tpu')):
    with pytest.raises(ValueError, match=f"'{name}' runs on {platform}, not on cpu; it needs a "):
      attention_kernels.get(name)
  with pytest.raises(ValueError, match="'splash' runs on tpu, not on cpu"):
    attention_kernels.splash_attention(q, q, q, causal=True)
  with pytest.raises(ValueError, match="'cudnn' needs a GPU.*here: cpu, bfloat16, head_dim 16"):
    attention_kernels.cudnn_attention(q, q, q)


def test_auto_in_the_attention_layer_keeps_attention_dropout():
  """With dropout 'auto' runs a kernel that has it, and draws the same mask as 'xla' (T=12: one block)."""
  cfg = TransformerConfig(vocab_size=8, num_heads=4, num_kv_heads=2, emb_dim=32, head_dim=8, max_len=12,
                          attention_dropout_rate=0.3)
  x = jnp.asarray(RNG.normal(size=(2, 12, 32)).astype(np.float32))
  seg, pos = (jnp.asarray(a) for a in packed_rows(12))
  params = layers.Attention(cfg).init(jax.random.key(0), x, positions=pos, segment_ids=seg, deterministic=True)
  run = lambda kernel: jax.jit(lambda p, x: layers.Attention(cfg.replace(attention_kernel=kernel)).apply(
      p, x, positions=pos, segment_ids=seg, deterministic=False, rngs={'dropout': jax.random.key(1)}))(params, x)
  np.testing.assert_allclose(np.asarray(run('auto')), np.asarray(run('xla')), atol=1e-6)  # 'auto' dropped nothing


# ----------------------------------------------------------------------------- additive bias

def np_reference_with_bias(q, k, v, mask, bias):
  """np_reference with an additive bias [B or 1, N, T, S] on the scaled logits."""
  g = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, g, axis=2).astype(np.float64), np.repeat(v, g, axis=2).astype(np.float64)
  logits = np.einsum('btnh,bsnh->bnts', q.astype(np.float64), k) / np.sqrt(q.shape[-1]) + bias
  logits = np.where(mask, logits, -np.inf)
  top = logits.max(-1, keepdims=True)
  p = np.exp(logits - np.where(np.isfinite(top), top, 0))
  p /= np.maximum(p.sum(-1, keepdims=True), 1e-30)
  return np.einsum('bnts,bsnh->btnh', p, v)


@pytest.mark.parametrize('name', ['xla', 'blocked', 'dot_product', 'auto'])
@pytest.mark.parametrize('shared', [True, False], ids=['bias_per_head', 'bias_per_row_and_head'])
def test_kernels_add_an_attention_bias(name, shared):
  """ALiBi-like distances scaled per head (shared by the rows), or a different bias per row."""
  t, n, k = 16, 4, 2
  q, kk, v, mask, valid = operands(t, n, k)
  distance = -np.abs(np.arange(t)[:, None] - np.arange(t)[None, :]).astype(np.float32)
  bias = distance[None, None] * np.array([0.5, 0.25, 0.125, 1.0], np.float32)[None, :, None, None]
  if not shared:
    bias = np.concatenate([bias, 2 * bias + RNG.normal(size=bias.shape).astype(np.float32)], axis=0)
  got = jax.jit(lambda q, k, v: attention_kernels.get(name)(q, k, v, mask=jnp.asarray(mask), bias=jnp.asarray(bias),
                                                             causal=True, block=4))(q, kk, v)
  np.testing.assert_allclose(np.asarray(got)[valid], np_reference_with_bias(q, kk, v, mask, bias)[valid],
                             atol=2e-5, rtol=1e-5)


@on_cpu
def test_kernels_without_bias_refuse_it_and_auto_passes_them_over(monkeypatch):
  q = jnp.zeros((1, 16, 2, 8))
  bias = jnp.zeros((1, 2, 16, 16))
  with pytest.raises(ValueError, match="'cpu_fused' takes no additive attention bias"):
    attention_kernels.cpu_fused_attention(q, q, q, bias=bias, causal=True)
  assert not attention_kernels.supports_bias('cpu_fused') and not attention_kernels.supports_bias('splash')
  monkeypatch.setattr(attention_kernels, '_device_count', lambda: 1)
  plain = attention_kernels.choose(q, q, mask=object(), causal=True, block=4, platform='cpu', devices=1)
  biased = attention_kernels.choose(q, q, mask=object(), bias=bias, causal=True, block=4, platform='cpu', devices=1)
  if plain.name == 'cpu_fused':  # where the kernel could be built
    assert biased.name == 'blocked' and biased.reason.startswith('cpu_fused takes no attention bias; ')
  on_tpu = attention_kernels.choose(jnp.zeros((1, 128, 2, 8), jnp.bfloat16), jnp.zeros((1, 128, 2, 8)), bias=bias,
                                    causal=True, block=64, platform='tpu')
  assert on_tpu.name == 'blocked' and on_tpu.fallback and on_tpu.reason == 'splash takes no attention bias'
