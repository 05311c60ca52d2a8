"""The encoder trains end to end on the data side's batches: masked LM on the embedded corpus
with a trained WordPiece, and classification of 'shuffled' (a tiny model, a few steps)."""

import math

import jax
import pytest

from llm_jax import config as config_lib
from llm_jax.train import trainer as trainer_lib

BERT_LAYOUT = {'model.kind': 'encoder', 'model.num_classes': 2, 'model.type_vocab_size': 2,
               'model.embed_norm': True, 'model.norm_placement': 'post', 'model.mlp_activation': 'gelu_exact',
               'model.num_layers': 2, 'model.emb_dim': 32, 'model.num_heads': 2,
               'data.tokenizer': 'wordpiece', 'data.vocab_size': 1000, 'data.seq_len': 32,
               'train.batch_size': 8, 'train.steps': 3, 'train.warmup_steps': 1, 'sample.prompt': ''}


@pytest.mark.slow  # compiling init, the train step and the eval step: 30-60 s on 2 shared cores
@pytest.mark.parametrize('head, data', [
    ('mlm', {'data.dataset': 'embedded', 'eval.max_batches': 2}),
    ('classify', {'data.dataset': 'shuffled', 'data.max_documents': 60, 'eval.max_batches': 0}),
])
def test_encoder_trains_a_few_steps_with_finite_losses(tmp_path, head, data):
  config = config_lib.from_file('configs/default.py', **{**BERT_LAYOUT, 'model.head': head, **data,
                                                         'data.cache_dir': str(tmp_path / 'cache')})
  trainer = trainer_lib.build_trainer(config, str(tmp_path / 'workdir'))
  dataset = trainer.dataset
  assert dataset.tokenizer.kind == 'wordpiece' and trainer.model_cfg.vocab_size == dataset.tokenizer.vocab_size
  losses = []
  with trainer.context():
    state = trainer.init()
    for step in range(3):
      state, metrics = trainer.train_step(state, trainer.device_batch(dataset.train_batch(step)))
      losses.append(float(jax.device_get(metrics['train_loss'])))
    evaluated = trainer.evaluate(state.params)
  assert all(math.isfinite(x) for x in losses) and math.isfinite(evaluated['eval_loss'])
  if head == 'mlm':
    assert abs(losses[0] - math.log(dataset.tokenizer.vocab_size)) < 1.5  # a fresh model guesses uniformly
    assert 'eval_mlm_accuracy' in evaluated
  else:
    assert dataset.rows_per_epoch == 60 and dataset.eval_rows == 60  # the last eval batch is padded
    assert 0 <= evaluated['eval_accuracy'] <= 1 and 'eval_mcc' in evaluated
