"""The memory-lean chunked cross-entropy and bfloat16 compute, against the plain float32 path.

Chunked (``train.loss_chunk_size``): the same sums and gradients as the plain loss on
full logits, with weights that are uneven and a z-loss, at chunk sizes that do and
do not divide the sequence; and a compiled program with no [B·T, V] float32 buffer.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llm_jax import config as config_lib
from llm_jax.data.synthetic import SyntheticDataset
from llm_jax.models import kinds
from llm_jax.train import objectives, optim, step as step_lib

Z_LOSS = 1e-2


def _problem(b=2, t=12, d=8, v=11, seed=0):
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(rng.normal(size=(b, t, d)).astype(np.float32))
  w = jnp.asarray(rng.normal(size=(d, v)).astype(np.float32))
  targets = jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32)
  weights = jnp.asarray((rng.random((b, t)) * 2 * (rng.random((b, t)) > 0.3)).astype(np.float32))
  return hidden, w, targets, weights


@pytest.mark.parametrize('chunk_size', [5, 4, 50])  # T=12: 5, 5 and a remainder of 2; 4 divides T; > T
def test_chunked_cross_entropy_equals_the_plain_one(chunk_size):
  hidden, w, targets, weights = _problem()
  plain = lambda h, w, wt: objectives.token_cross_entropy(h @ w, targets, wt, Z_LOSS)
  lean = lambda h, w, wt: objectives.chunked_token_cross_entropy(h, w, targets, wt, Z_LOSS, chunk_size=chunk_size)
  want = plain(hidden, w, weights)
  got = jax.jit(lean)(hidden, w, weights)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  grad = lambda f: jax.jit(jax.grad(lambda *a: f(*a)[0], argnums=(0, 1, 2)))(hidden, w, weights)
  for g, want_g in zip(grad(lean), grad(plain)):  # hidden, w and the weights
    np.testing.assert_allclose(g, want_g, rtol=1e-5, atol=1e-6)
  # nll_sum and weight_sum are reported, not differentiated.
  assert not np.any(jax.grad(lambda h: lean(h, w, weights)[1])(hidden))


def _setup(chunk_size=0, tie=True, dtype='float32', micro_batches=1, sgd=False):
  """(initial state, jitted train step, jitted eval step, batch) of a 1-layer model, vocab 30.

  With ``sgd`` the update is params - gradient / target count, so parameters compare
  gradients exactly (Adam's normalization would magnify the noise of near-zero ones).
  """
  config = config_lib.from_file('configs/default.py')
  config.model.num_layers, config.model.emb_dim, config.data.seq_len = 1, 32, 16
  config.model.tie_embeddings, config.model.dtype = tie, dtype
  config.train.loss_chunk_size, config.train.z_loss = chunk_size, Z_LOSS
  config.train.learning_rate, config.train.warmup_steps = 3e-3, 0
  model = kinds.build('decoder', config_lib.model_config(config, vocab_size=30))
  opt, lr = (optax.sgd(1.0), optax.constant_schedule(1.0)) if sgd else optim.make(config.train)
  batch = SyntheticDataset(model, 16, 8).train_batch(0)
  batch['weights'][:3, :5] = 0
  batch['weights'][5] *= 0.5
  batch = jax.tree.map(jnp.asarray, batch)
  state = step_lib.init_state(model, opt, 0, batch)  # eager: its ops are compiled once per session
  train = step_lib.make_train_step(model, opt, lr, z_loss=Z_LOSS,
                                   micro_batches=micro_batches, dropout=False, loss_chunk_size=chunk_size)
  evaluate = step_lib.make_eval_step(model, loss_chunk_size=chunk_size)
  return state, jax.jit(train), jax.jit(evaluate), batch


@pytest.mark.parametrize('tie,micro_batches', [(True, 1), (False, 2)], ids=['tied', 'untied_accumulated'])
def test_lean_train_and_eval_steps_equal_the_plain_ones(tie, micro_batches):
  state, plain, plain_eval, batch = _setup(0, tie, micro_batches=micro_batches, sgd=True)
  _, lean, lean_eval, _ = _setup(5, tie, micro_batches=micro_batches, sgd=True)  # 16 positions: 5, 5, 5, 1
  s_p, m_p = plain(state, batch)
  s_l, m_l = lean(state, batch)
  for key in ('train_loss', 'grad_norm', 'train_perplexity'):
    np.testing.assert_allclose(m_l[key], m_p[key], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), s_l.params, s_p.params)
  if tie:
    e_p, e_l = plain_eval(state.params, batch), lean_eval(state.params, batch)
    np.testing.assert_allclose(e_l['nll_sum'], e_p['nll_sum'], rtol=1e-6)
    assert float(e_l['weight_sum']) == float(e_p['weight_sum'])


def test_lean_loss_never_holds_the_full_logits():
  """V=4096, B·T=2048: the plain gradient program holds [B,T,V] float32 buffers; the lean one
  holds slices of 32 positions and needs a fraction of the temporary memory."""
  b, t, d, v = 8, 256, 16, 4096
  args = (jax.ShapeDtypeStruct((b, t, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32),
          jax.ShapeDtypeStruct((b, t), jnp.int32), jax.ShapeDtypeStruct((b, t), jnp.float32))
  plain = lambda h, w, tg, wt: objectives.token_cross_entropy(h @ w, tg, wt, Z_LOSS)[0]
  lean = lambda h, w, tg, wt: objectives.chunked_token_cross_entropy(h, w, tg, wt, Z_LOSS, chunk_size=32)[0]
  compiled = {name: jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(*args).compile()
              for name, f in (('plain', plain), ('lean', lean))}
  full = re.compile(rf'f32\[({b},{t}|{b * t}),{v}\]')
  assert full.search(compiled['plain'].as_text())
  assert not full.search(compiled['lean'].as_text())
  memory = {name: c.memory_analysis() for name, c in compiled.items()}
  if memory['plain'] is not None and memory['lean'] is not None:
    logits_bytes = b * t * v * 4
    assert memory['plain'].temp_size_in_bytes >= logits_bytes
    assert memory['lean'].temp_size_in_bytes < logits_bytes / 2


def test_loss_chunk_size_is_validated():
  config = config_lib.base_config()
  config.train.loss_chunk_size = -8
  with pytest.raises(config_lib.ConfigError, match=r'config\.train\.loss_chunk_size=-8 must be >= 0'):
    config_lib.validate(config)
  with pytest.raises(ValueError, match='must be positive'):
    objectives.chunked_token_cross_entropy(*_problem(), chunk_size=0)


def test_bfloat16_compute_trains_like_float32_with_float32_master_weights():
  """A few updates in bfloat16 compute track the float32 ones, with the plain loss and the
  chunked one; parameters and optimizer state stay float32."""
  state, f32_step, _, batch = _setup()
  steps = {'bf16': _setup(dtype='bfloat16')[1], 'bf16_lean': _setup(5, dtype='bfloat16')[1]}
  losses = {}
  for name, step in [('f32', f32_step), *steps.items()]:
    s, losses[name] = state, []
    for _ in range(4):
      s, m = step(s, batch)
      losses[name].append(float(m['train_loss']))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((s.params, s.opt_state))
               if jnp.issubdtype(x.dtype, jnp.floating)), name
  np.testing.assert_allclose(losses['bf16'], losses['f32'], rtol=2e-2)
  np.testing.assert_allclose(losses['bf16_lean'], losses['bf16'], rtol=1e-3)
  assert losses['bf16'][-1] < losses['bf16'][0] - 0.05, losses
