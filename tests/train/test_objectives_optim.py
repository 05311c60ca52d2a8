"""Loss, schedule, decay mask and gradient accumulation against direct formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax import config as config_lib
from llm_jax.data.synthetic import SyntheticDataset
from llm_jax.models import kinds
from llm_jax.train import objectives, optim, step as step_lib


def test_cross_entropy_and_z_loss_match_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32) * 3
  targets = rng.integers(0, 7, (2, 5))
  weights = (rng.random((2, 5)) > 0.3).astype(np.float32)
  loss_sum, nll_sum, w = objectives.token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                                        jnp.asarray(weights), z_loss=1e-2)
  m = logits.max(-1, keepdims=True)
  log_z = (np.log(np.exp(logits - m).sum(-1, keepdims=True)) + m)[..., 0]
  nll = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(nll_sum, (nll * weights).sum(), rtol=1e-5)
  np.testing.assert_allclose(loss_sum, (nll * weights).sum() + 1e-2 * (log_z ** 2 * weights).sum(), rtol=1e-5)
  assert float(w) == weights.sum()


def test_schedule_is_warmup_then_cosine_to_end():
  t = config_lib.base_config().train
  t.steps, t.warmup_steps, t.learning_rate, t.end_learning_rate = 1000, 100, 1e-3, 1e-4
  lr = optim.schedule(t)
  for s in (0, 50, 100, 400, 999, 1000):
    if s < 100:
      want = 1e-3 * s / 100
    else:
      frac = (s - 100) / 900
      want = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + np.cos(np.pi * frac))
    np.testing.assert_allclose(float(lr(s)), want, rtol=1e-5, atol=1e-9)
  t.schedule = 'linear'
  np.testing.assert_allclose(float(optim.schedule(t)(550)), 1e-3 - 0.5 * 9e-4, rtol=1e-5)


def test_decay_mask_skips_norms_biases_and_optionally_embeddings():
  params = {'token_embed': {'embedding': 1}, 'layer_0': {'attention': {'query': 1, 'query_bias': 1},
            'attention_norm': {'scale': 1}}, 'final_norm': {'scale': 1}}
  t = config_lib.base_config().train
  mask = optim.decay_mask(params, t)
  assert mask['layer_0']['attention'] == {'query': True, 'query_bias': False}
  assert mask['layer_0']['attention_norm']['scale'] is False and mask['final_norm']['scale'] is False
  assert mask['token_embed']['embedding'] is True
  t.decay_embeddings = False
  assert optim.decay_mask(params, t)['token_embed']['embedding'] is False


def _state_and_step(micro_batches, dropout=0.0, mode='scan'):
  config = config_lib.from_file('configs/default.py')
  config.model.num_layers, config.model.emb_dim, config.data.seq_len = 1, 32, 16
  config.model.dropout_rate = dropout
  cfg = config_lib.model_config(config, vocab_size=30)
  model = kinds.build('decoder', cfg)
  opt, lr = optim.make(config.train)
  batch = SyntheticDataset(model, 16, 8).train_batch(0)
  batch['weights'][:3, :5] = 0  # uneven weights: accumulation must divide by the whole batch's count
  batch = jax.tree.map(jnp.asarray, batch)
  state = step_lib.init_state(model, opt, 0, batch)
  fn = step_lib.make_train_step(model, opt, lr, z_loss=0.0,
                                micro_batches=micro_batches, dropout=dropout > 0, micro_batch_mode=mode)
  return state, jax.jit(fn), batch


def test_gradient_accumulation_equals_one_big_batch():
  state, one, batch = _state_and_step(1)
  _, four, _ = _state_and_step(4)
  s1, m1 = one(state, batch)
  s4, m4 = four(state, batch)
  np.testing.assert_allclose(m1['train_loss'], m4['train_loss'], rtol=1e-5)
  np.testing.assert_allclose(m1['grad_norm'], m4['grad_norm'], rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), s1.params, s4.params)


@pytest.mark.parametrize('dropout', [0.0, 0.3])
def test_parallel_micro_batches_equal_scanned_ones(dropout):
  # The unrolled accumulation draws the same dropout masks and adds the same gradients
  # in the same order as the scan, so both give one update.
  state, scanned, batch = _state_and_step(4, dropout)
  _, parallel, _ = _state_and_step(4, dropout, mode='parallel')
  s_s, m_s = scanned(state, batch)
  s_p, m_p = parallel(state, batch)
  np.testing.assert_allclose(m_s['train_loss'], m_p['train_loss'], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), s_s.params, s_p.params)
  if dropout:  # and the masks really differ between micro-batches: not one mask reused
    _, m_1 = _state_and_step(1, dropout)[1](state, batch)
    assert float(m_1['train_loss']) != float(m_p['train_loss'])


def test_dropout_mask_is_a_function_of_seed_and_step():
  state, step, batch = _state_and_step(1, dropout=0.3)
  _, m_a = step(state, batch)
  _, m_b = step(state, batch)
  _, m_c = step(state.replace(step=state.step + 1), batch)
  assert float(m_a['train_loss']) == float(m_b['train_loss'])
  assert float(m_a['train_loss']) != float(m_c['train_loss'])


def test_label_smoothing_is_cross_entropy_against_the_smoothed_distribution():
  """(1 - ε)·onehot + ε/V, written out with NumPy; the reported nll stays the plain one."""
  import numpy as np
  from llm_jax.train import objectives
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (2, 5, 11)).astype(np.float32)
  targets = rng.integers(0, 11, (2, 5))
  weights = (rng.random((2, 5)) > 0.3).astype(np.float32)
  eps = 0.1
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  soft = np.full(logits.shape, eps / 11) + (1 - eps) * np.eye(11)[targets]
  want_loss = (-(soft * logp).sum(-1) * weights).sum()
  want_nll = (-np.take_along_axis(logp, targets[..., None], -1)[..., 0] * weights).sum()
  loss, nll, total = objectives.token_cross_entropy(logits, targets, weights, 0.0, eps)
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
  np.testing.assert_allclose(float(nll), want_nll, rtol=1e-5)
  assert float(total) == weights.sum()


def test_rsqrt_schedule_is_vaswanis():
  """lrate = d^-0.5 · min(step^-0.5, step · warmup^-1.5) (Vaswani et al. 2017, eq. 3)."""
  from llm_jax import config as config_lib
  from llm_jax.train import optim
  t = config_lib.base_config().train
  t.schedule, t.warmup_steps, d = 'rsqrt', 4000, 512
  t.learning_rate = d ** -0.5 * 4000 ** -0.5
  lr = optim.schedule(t, 100_000)
  for step in (1, 100, 3999, 4000, 4001, 10_000, 90_000):
    want = d ** -0.5 * min(step ** -0.5, step * 4000 ** -1.5)
    assert abs(float(lr(step)) - want) <= 1e-4 * want, step


def test_the_decoder_kind_trains_on_the_smoothed_loss_and_reports_the_plain_nll():
  """train.label_smoothing reaches the decoder kind (it was accepted and ignored before): its loss is the
  cross-entropy against (1 - ε)·onehot + ε/V of the model's own logits, written out with NumPy."""
  import flax.linen as nn
  import jax
  import numpy as np
  from llm_jax import config as config_lib
  from llm_jax.models import kinds
  from llm_jax.models.layers import TransformerConfig
  from llm_jax.train import trainer
  config = config_lib.from_file('configs/default.py', **{'train.label_smoothing': 0.2, 'sample.prompt': ''})
  assert trainer.make_kind(config, 50).label_smoothing == 0.2
  cfg = TransformerConfig(vocab_size=50, num_layers=1, num_heads=2, num_kv_heads=2, emb_dim=16, head_dim=8,
                          mlp_dim=32, max_len=8, init_std=0.5)
  kind = kinds.build('decoder', cfg, label_smoothing=0.2)
  batch = kind.synthetic_batch(np.random.default_rng(0), 2, 8)
  params = nn.meta.unbox(kind.init(jax.random.key(0), batch)['params'])
  sums = kind.loss(params, batch)
  logits = np.asarray(kind.module.apply({'params': params}, batch['inputs'], batch['positions'], batch['segment_ids']),
                      np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  soft = np.full(logits.shape, 0.2 / 50) + 0.8 * np.eye(50)[batch['targets']]
  w = batch['weights']
  np.testing.assert_allclose(float(sums['loss_sum']), (-(soft * logp).sum(-1) * w).sum(), rtol=1e-5)
  nll = (-np.take_along_axis(logp, batch['targets'][..., None], -1)[..., 0] * w).sum()
  np.testing.assert_allclose(float(sums['nll_sum']), nll, rtol=1e-5)
  np.testing.assert_allclose(float(kinds.build('decoder', cfg).loss(params, batch)['loss_sum']), nll, rtol=1e-5)
