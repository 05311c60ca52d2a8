"""Remat policies and nn.scan over layers: each equals the plain (unrolled, no remat) model.

Equivalence is value and gradients in float32; 'save_named' is also checked to save
what it names (jax's saved-residuals report), and the scanned program to stay the
same size as the model deepens.
"""

import contextlib
import functools
import io
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax import config as config_lib
from llm_jax.models import blocks, layers
from llm_jax.models.decoder import DecoderLM
from llm_jax.models.layers import TransformerConfig

SMALL = TransformerConfig(vocab_size=40, num_layers=2, num_heads=4, num_kv_heads=2, emb_dim=32,
                          head_dim=8, mlp_dim=64, max_len=16, init_std=0.2)
TOKENS = jnp.asarray(np.random.default_rng(2).integers(0, 40, (2, 12)))
ALL_NAMES = layers.CHECKPOINT_NAMES


def _loss(model, params):
  return jnp.sum(jnp.sin(model.apply({'params': params}, TOKENS)))


def _init(model, abstract: bool = False):
  # Eager, not jitted: compiling init costs seconds, its eager ops are compiled once a session.
  init = lambda: nn.meta.unbox(model.init(jax.random.key(0), TOKENS)['params'])
  return jax.eval_shape(init) if abstract else init()


@functools.lru_cache(maxsize=None)
def _plain(variant: tuple):
  """(unrolled params, loss, grads) of the plain model, remat='none'."""
  model = DecoderLM(SMALL.replace(**dict(variant)))
  params = _init(model)
  loss, grads = jax.jit(jax.value_and_grad(functools.partial(_loss, model)))(params)
  return params, loss, grads


_SWIGLU_BIAS = (('mlp_activation', 'swiglu'), ('use_bias', True))
_POST_LN_BLOCKED = (('norm_placement', 'post'), ('attention_kernel', 'blocked'), ('attention_block', 4))
# (remat, remat_names, model overrides as (field, value) pairs, scan_layers); test_transformer.py has
# 'dots' under scan.
POLICY_CASES = {
    'full': ('full', (), (), False),
    'dots': ('dots', (), (), False),
    'dots_no_batch': ('dots_no_batch', (), (), False),
    'save_named': ('save_named', ALL_NAMES, (), False),
    'save_named_swiglu_bias': ('save_named', ('mlp_hidden', 'attn_out'), _SWIGLU_BIAS, False),
    'save_named_post_ln_blocked': ('save_named', ('qkv', 'mlp_out'), _POST_LN_BLOCKED, False),
    'scanned_full': ('full', (), (), True),
    'scanned_dots_no_batch': ('dots_no_batch', (), (), True),
    'scanned_save_named': ('save_named', ALL_NAMES, (), True),
    'scanned_save_named_post_ln_blocked': ('save_named', ('qkv', 'mlp_out'), _POST_LN_BLOCKED, True),
}


@pytest.mark.parametrize('remat,names,variant,scan', POLICY_CASES.values(), ids=POLICY_CASES.keys())
def test_every_remat_policy_gives_the_plain_loss_and_gradients(remat, names, variant, scan):
  params, want, want_grads = _plain(variant)
  cfg = SMALL.replace(remat=remat, remat_names=names, scan_layers=scan, **dict(variant))
  model = DecoderLM(cfg)
  convert = blocks.to_scanned if scan else (lambda p: p)
  got, got_grads = jax.jit(jax.value_and_grad(functools.partial(_loss, model)))(convert(params))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=5e-5)  # a sum of 960 terms of size ~1
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-5),  # gradients up to ~70
               got_grads, convert(want_grads))


def _saved(cfg) -> list[str]:
  """jax's report of what the backward pass of the loss keeps, one line per residual."""
  model = DecoderLM(cfg)
  params = _init(model, abstract=True)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    jax.ad_checkpoint.print_saved_residuals(functools.partial(_loss, model), params)
  return out.getvalue().splitlines()


def _named(lines) -> list[str]:
  return sorted(m.group(1) for line in lines for m in [re.search(r"named '(\w+)'", line)] if m)


@pytest.mark.parametrize('name,variant', [
    ('qkv', {}),
    ('attn_context', {}),
    ('attn_out', {}),
    ('mlp_hidden', {}),                          # inside the fused MLP's custom_vjp forward rule
    ('mlp_hidden', {'mlp_activation': 'swiglu'}),
    ('mlp_out', {'norm_placement': 'post'}),     # pre-LN never needs it: the block output is kept anyway
])
def test_save_named_keeps_exactly_the_named_activations(name, variant):
  cfg = SMALL.replace(remat='save_named', remat_names=(name,), **variant)
  per_layer = {'qkv': 3, 'mlp_hidden': 2 if variant.get('mlp_activation') == 'swiglu' else 1}.get(name, 1)
  assert _named(_saved(cfg)) == [name] * (per_layer * cfg.num_layers)
  assert _named(_saved(cfg.replace(remat='full'))) == []


def test_save_named_everything_a_pre_ln_block_needs_and_shapes():
  b, t = TOKENS.shape
  lines = _saved(SMALL.replace(remat='save_named', remat_names=ALL_NAMES))
  assert sorted(set(_named(lines))) == ['attn_context', 'attn_out', 'mlp_hidden', 'qkv']
  hidden = [line for line in lines if "named 'mlp_hidden'" in line]
  assert all(line.startswith(f'f32[{b * t},{SMALL.mlp_dim}]') for line in hidden), hidden


def test_save_named_under_scan_saves_the_stacked_activation():
  """Under nn.scan the residuals are the scan's stacked outputs: [L, B·T, F] for mlp_hidden."""
  b, t = TOKENS.shape
  stacked = f'f32[{SMALL.num_layers},{b * t},{SMALL.mlp_dim}]'
  cfg = SMALL.replace(scan_layers=True, remat='save_named', remat_names=('mlp_hidden',))
  assert any(line.startswith(stacked) for line in _saved(cfg))
  assert not any(line.startswith(stacked) for line in _saved(cfg.replace(remat='full')))


def test_unknown_remat_policy_or_names_are_errors():
  with pytest.raises(ValueError, match='choose one of'):
    DecoderLM(SMALL.replace(remat='some')).init(jax.random.key(0), TOKENS)
  with pytest.raises(ValueError, match='mlp_hidden'):
    DecoderLM(SMALL.replace(remat='save_named', remat_names=('mlp_hiden',))).init(
        jax.random.key(0), TOKENS)
  config = config_lib.base_config()
  config.model.remat = 'dotz'
  with pytest.raises(config_lib.ConfigError, match=r"config\.model\.remat='dotz' is unknown; choose one of"):
    config_lib.validate(config)
  config.model.remat, config.model.remat_names = 'save_named', 'qkv, mlp_hiden'
  with pytest.raises(config_lib.ConfigError, match=r'config\.model\.remat_names=.*qkv, attn_context'):
    config_lib.validate(config)
  config.model.remat_names = ''
  with pytest.raises(config_lib.ConfigError, match=r'config\.model\.remat_names'):
    config_lib.validate(config)
  config.model.remat_names = ' qkv, mlp_hidden '
  config_lib.validate(config)
  assert config_lib.model_config(config, 40).remat_names == ('qkv', 'mlp_hidden')


def test_scanned_layout_is_the_unrolled_one_stacked():
  """to_scanned gives exactly the parameter tree a scanned model initializes; to_unrolled inverts it."""
  params = _plain(())[0]
  scanned = DecoderLM(SMALL.replace(scan_layers=True))
  want = _init(scanned, abstract=True)
  got = blocks.to_scanned(params)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(lambda g, w: (g.shape, g.dtype) == (w.shape, w.dtype) or pytest.fail(f'{g.shape} != {w.shape}'),
               got, want)
  assert got['layers']['mlp']['wi'].shape == (SMALL.num_layers, SMALL.emb_dim, SMALL.mlp_dim)
  np.testing.assert_array_equal(got['layers']['mlp']['wi'][1], params['layer_1']['mlp']['wi'])
  jax.tree.map(np.testing.assert_array_equal, blocks.to_unrolled(got), params)
  assert blocks.to_scanned(got) is got and blocks.to_unrolled(params) is params


@pytest.mark.parametrize('remat', ['none', 'full'])
def test_scanned_program_stays_the_same_size_as_depth_grows(remat):
  """Lines of the lowered gradient program at 2 and 8 layers: flat when scanned, ~L when unrolled."""
  def lines(num_layers, scan):
    model = DecoderLM(SMALL.replace(num_layers=num_layers, scan_layers=scan, remat=remat))
    params = _init(model, abstract=True)
    grad = jax.jit(jax.grad(functools.partial(_loss, model)))
    return len(grad.lower(params).as_text().splitlines())

  scanned = lines(8, True) / lines(2, True)
  unrolled = lines(8, False) / lines(2, False)
  assert scanned < 1.1, scanned
  assert unrolled > 2.5, unrolled
