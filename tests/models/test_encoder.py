"""The encoder kind: bidirectional attention under the padding mask, the heads, the MLM gather,
the parameter count of bert-base through jax.eval_shape (no compute), and the kind's batch.

Equivalence with Hugging Face's BERT (same weights, same logits) is in tests/convert/.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.models import encoder, kinds
from llm_jax.models.layers import TransformerConfig

BERT = dict(num_layers=2, num_heads=4, num_kv_heads=4, emb_dim=32, head_dim=8, mlp_dim=64, max_len=16,
            norm_placement='post', embed_norm=True, type_vocab_size=2, use_bias=True, mlp_activation='gelu_exact',
            norm_eps=1e-12, causal=False)


def build(head, **changes):
  cfg = TransformerConfig(vocab_size=50, head=head, num_classes=3 if head == 'classify' else 0, **{**BERT, **changes})
  kind = kinds.build('encoder', cfg)
  return kind, nn.meta.unbox(kind.init(jax.random.key(0), kind.example_batch(2, 16))['params'])


def test_bert_base_has_hugging_faces_parameter_count():
  """BertModel (bert-base-uncased, pooler included): 109,482,240 parameters, counted from shapes alone."""
  cfg = TransformerConfig(vocab_size=30522, num_layers=12, num_heads=12, num_kv_heads=12, emb_dim=768, head_dim=64,
                          mlp_dim=3072, max_len=512, norm_placement='post', embed_norm=True, type_vocab_size=2,
                          use_bias=True, mlp_activation='gelu_exact', norm_eps=1e-12, causal=False, head='none')
  shapes = kinds.build('encoder', cfg).abstract_params()
  assert sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)) == 109_482_240


def test_every_token_sees_its_document_both_ways_and_nothing_across():
  """Changing a later token changes an earlier one's output (bidirectional); changing another
  packed document's or a padding token changes nothing."""
  kind, params = build('none')
  tokens = np.array([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 0, 0, 0]], np.int32)
  seg = np.array([[1] * 6 + [2] * 7 + [0] * 3], np.int32)
  pos = np.array([list(range(6)) + list(range(7)) + [0] * 3], np.int32)
  run = lambda t: np.asarray(kind.module.apply({'params': params}, jnp.asarray(t), jnp.asarray(pos), jnp.asarray(seg),
                                               jnp.zeros_like(jnp.asarray(t)))[0])
  base = run(tokens)
  later = tokens.copy()
  later[0, 5] = 40  # last token of document 1
  assert np.abs(run(later)[0, 0] - base[0, 0]).max() > 1e-4
  np.testing.assert_array_equal(run(later)[0, 6:13], base[0, 6:13])  # document 2 unaffected
  padded = tokens.copy()
  padded[0, 14] = 33
  np.testing.assert_array_equal(run(padded)[0, :13], base[0, :13])


def test_mlm_logits_at_chosen_positions_equal_the_full_logits_there():
  kind, params = build('mlm')
  batch = kind.synthetic_batch(np.random.default_rng(0), 2, 16)
  apply = lambda **kw: kind.module.apply({'params': params}, batch['inputs'], batch['positions'],
                                         batch['segment_ids'], batch['token_types'], **kw)
  full, picked = apply(), apply(mlm_positions=jnp.asarray(batch['mlm_positions']))
  assert picked.shape == (2, encoder.mlm_predictions(16, 0.15), 50)
  want = np.take_along_axis(np.asarray(full), batch['mlm_positions'][..., None], axis=1)
  np.testing.assert_allclose(np.asarray(picked), want, rtol=1e-5, atol=1e-5)
  # the MLM decoder is the token embedding transposed, plus a bias
  assert 'mlm_bias' in params and 'lm_head' not in params


def test_classifier_reads_the_first_token_through_the_pooler():
  kind, params = build('classify')
  batch = kind.synthetic_batch(np.random.default_rng(1), 2, 16)
  logits = kind.module.apply({'params': params}, batch['inputs'], batch['positions'], batch['segment_ids'],
                             batch['token_types'])
  hidden, pooled = kinds.build('encoder', kind.cfg.replace(head='none')).module.apply(
      {'params': {k: v for k, v in params.items() if k != 'classifier'}}, batch['inputs'], batch['positions'],
      batch['segment_ids'], batch['token_types'])
  np.testing.assert_allclose(np.asarray(pooled), np.tanh(np.asarray(hidden[:, 0]) @ np.asarray(
      params['pooler']['kernel']) + np.asarray(params['pooler']['bias'])), rtol=1e-5, atol=1e-6)
  want = np.asarray(pooled) @ np.asarray(params['classifier']['kernel']) + np.asarray(params['classifier']['bias'])
  np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-5, atol=1e-5)


def test_losses_and_metrics_from_sums():
  kind, params = build('classify')
  batch = kind.synthetic_batch(np.random.default_rng(2), 4, 16)
  batch['example_weights'][3] = 0.0  # a padding row of an eval batch
  sums = kind.loss(params, batch)
  logits = np.asarray(kind.module.apply({'params': params}, batch['inputs'], batch['positions'],
                                        batch['segment_ids'], batch['token_types']))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -logp[np.arange(4), batch['labels']]
  np.testing.assert_allclose(float(sums['nll_sum']), nll[:3].sum(), rtol=1e-5)
  metrics = kind.metrics(sums, 'eval_')
  right = (logits.argmax(-1) == batch['labels'])[:3]
  assert float(metrics['eval_accuracy']) == pytest.approx(right.mean())
  assert set(metrics) == {'eval_loss', 'eval_accuracy', 'eval_mcc'}  # 3 classes: no binary F1


@pytest.mark.parametrize('labels,predicted,f1,mcc', [
    ([1, 1, 0, 0], [1, 1, 0, 0], 1.0, 1.0), ([1, 1, 0, 0], [0, 0, 1, 1], 0.0, -1.0),
    ([1, 0, 1, 0, 1], [1, 1, 1, 0, 0], 2 / 3, 1 / 6)])
def test_binary_f1_and_matthews_correlation(labels, predicted, f1, mcc):
  from llm_jax.train import objectives
  confusion = np.zeros((2, 2), np.float32)
  for a, b in zip(labels, predicted):
    confusion[a, b] += 1
  out = objectives.classification_metrics({'confusion': jnp.asarray(confusion), 'weight_sum': len(labels),
                                           'nll_sum': 0.0}, 'eval_', full=True)
  assert float(out['eval_f1']) == pytest.approx(f1, abs=1e-6)
  assert float(out['eval_mcc']) == pytest.approx(mcc, abs=1e-6)


def test_a_head_that_does_not_fit_the_kind_is_refused():
  with pytest.raises(ValueError, match="model.head='lm' does not fit model.kind=encoder"):
    kinds.build('encoder', TransformerConfig(vocab_size=10, head='lm'))
