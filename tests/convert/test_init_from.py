"""config.init_from=<a Hugging Face directory> through the training path: a classifier run starts
from a BertForMaskedLM's encoder, and its new head starts fresh and is reported."""

import numpy as np
import pytest
import transformers

from tests.convert import refs
from tests.convert import runs


@pytest.fixture(scope='module')
def started(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('init_from')
  model = refs.random_bert(transformers.BertForMaskedLM, tmp / 'hf')
  config = runs.encoder_config(tmp, 'classify', str(tmp / 'hf'))
  return model, runs.start(config, tmp / 'run')


def test_encoder_parameters_are_the_hf_tensors(started):
  model, (_, _, params) = started
  params = runs.host(params)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  d, n, h = refs.WIDTH, refs.HEADS, refs.WIDTH // refs.HEADS
  np.testing.assert_array_equal(params['token_embed']['embedding'], state['bert.embeddings.word_embeddings.weight'])
  np.testing.assert_array_equal(params['type_embed']['embedding'],
                                state['bert.embeddings.token_type_embeddings.weight'])
  np.testing.assert_array_equal(params['embed_norm']['scale'], state['bert.embeddings.LayerNorm.weight'])
  for i in range(refs.LAYERS):
    hf = f'bert.encoder.layer.{i}.'
    layer = params[f'layer_{i}']
    np.testing.assert_array_equal(layer['attention']['key'],
                                  state[hf + 'attention.self.key.weight'].T.reshape(d, n, h))
    np.testing.assert_array_equal(layer['attention']['key_bias'], state[hf + 'attention.self.key.bias'].reshape(n, h))
    np.testing.assert_array_equal(layer['attention']['out'],
                                  state[hf + 'attention.output.dense.weight'].T.reshape(n, h, d))
    np.testing.assert_array_equal(layer['attention_norm']['bias'], state[hf + 'attention.output.LayerNorm.bias'])
    np.testing.assert_array_equal(layer['mlp']['wo'], state[hf + 'output.dense.weight'].T)
    np.testing.assert_array_equal(layer['mlp_norm']['scale'], state[hf + 'output.LayerNorm.weight'])


def test_new_head_starts_fresh_and_is_reported(started, capsys):
  _, (trainer, state, params) = started
  fresh, params = runs.host(state.params), runs.host(params)
  for name in ('classifier', 'pooler'):
    np.testing.assert_array_equal(params[name]['kernel'], fresh[name]['kernel'])
  assert np.std(params['classifier']['kernel']) > 0.1  # the run's own initializer, not zeros
  # the report was printed when the run started; ask again to see it
  from llm_jax.train import init_from
  with trainer.context():
    init_from.load(trainer.config.init_from, trainer, state.params)
  line = capsys.readouterr().out
  assert f'{3 + 2 + 16 * refs.LAYERS} parameters restored' in line  # tables, their norm, 16 per layer
  assert '4 initialized fresh (not in the source): classifier/bias, classifier/kernel, pooler/bias, pooler/kernel' in line
  assert '5 left out (not in this model): cls.predictions.bias' in line


def test_started_params_train(started):
  """The converted parameters go through a compiled train step on their shardings."""
  _, (trainer, state, params) = started
  with trainer.context():
    state = state.replace(params=params)
    batch = trainer.device_batch(trainer.dataset.train_batch(0))
    _, metrics = trainer.train_step(state, batch)
  assert np.isfinite(float(metrics['train_loss']))
