"""Hugging Face BERT checkpoints into llm_jax: the same logits as transformers with the same weights."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from llm_jax import convert
from tests.convert import refs


@pytest.fixture(scope='module')
def mlm(tmp_path_factory):
  directory = tmp_path_factory.mktemp('mlm')
  return refs.random_bert(transformers.BertForMaskedLM, directory), directory


@pytest.fixture(scope='module')
def classifier(tmp_path_factory):
  directory = tmp_path_factory.mktemp('cls')
  return refs.random_bert(transformers.BertForSequenceClassification, directory, seed=1, num_labels=3), directory


@pytest.mark.parametrize('scan', [False, True])
def test_masked_lm_matches_transformers(mlm, scan):
  model, directory = mlm
  kind, fresh = refs.build(model.config, 'mlm', scan_layers=scan)
  params, report = convert.load_params(str(directory), kind, fresh)
  assert report['fresh'] == [] and report['unused'] == []
  assert ('layers/attention/query' in report['restored']) == scan
  ids, mask, types = refs.padded_batch()
  got = refs.ours(kind, params, ids, mask, types)
  want = refs.theirs(model, ids, mask, types).logits.numpy()
  real = mask.astype(bool)
  assert np.abs(want[real]).max() > 5  # logits far from zero: a bug cannot hide under the tolerance
  assert refs.max_diff(got[real], want[real]) < refs.tolerance(want[real])
  np.testing.assert_array_equal(got[real].argmax(-1), want[real].argmax(-1))
  for got_leaf, fresh_leaf in zip(jax.tree.leaves(params), jax.tree.leaves(fresh)):
    assert got_leaf.sharding == fresh_leaf.sharding and got_leaf.dtype == fresh_leaf.dtype


def test_sequence_classification_matches_transformers(classifier):
  model, directory = classifier
  kind, fresh = refs.build(model.config, 'classify')
  params, report = convert.load_params(str(directory), kind, fresh)
  assert report['fresh'] == [] and report['unused'] == []
  ids, mask, types = refs.padded_batch(seed=3, batch=6)
  got = refs.ours(kind, params, ids, mask, types)
  want = refs.theirs(model, ids, mask, types).logits.numpy()
  assert got.shape == (6, 3) and np.abs(want).max() > 1
  assert refs.max_diff(got, want) < refs.TOLERANCE
  np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.parametrize('which', ['mlm', 'classifier'])
def test_from_pretrained_reads_the_config_and_gives_transformers_logits(mlm, classifier, which):
  """convert.from_pretrained builds the model from config.json alone (config written out here
  field by field is not involved) and gives the checkpoint's own head."""
  model, directory = {'mlm': mlm, 'classifier': classifier}[which]
  pretrained = convert.from_pretrained(str(directory), attention_kernel='xla')  # as refs.bert_cfg
  assert pretrained.kind.cfg == refs.bert_cfg(model.config, pretrained.kind.cfg.head)
  assert pretrained.kind.cfg.head == {'mlm': 'mlm', 'classifier': 'classify'}[which]
  assert pretrained.tokenizer is None and pretrained.report['fresh'] == []
  ids, mask, types = refs.padded_batch()
  got = refs.ours(pretrained.kind, pretrained.params, ids, mask, types)
  want = refs.theirs(model, ids, mask, types).logits.numpy()
  real = mask.astype(bool) if which == 'mlm' else slice(None)
  assert refs.max_diff(got[real], want[real]) < refs.TOLERANCE


def test_classifier_over_an_mlm_checkpoint_starts_fresh(mlm):
  model, directory = mlm
  kind, fresh = refs.build(model.config, 'classify', num_classes=3)
  params, report = convert.load_params(str(directory), kind, fresh)
  assert report['fresh'] == ['classifier/bias', 'classifier/kernel', 'pooler/bias', 'pooler/kernel']
  assert report['unused'] == ['cls.predictions.bias', 'cls.predictions.transform.LayerNorm.bias',
                              'cls.predictions.transform.LayerNorm.weight', 'cls.predictions.transform.dense.bias',
                              'cls.predictions.transform.dense.weight']
  for name in ('classifier', 'pooler'):
    jax.tree.map(np.testing.assert_array_equal, params[name], fresh[name])
  state = model.state_dict()
  np.testing.assert_array_equal(params['layer_1']['mlp']['wi'],
                                state['bert.encoder.layer.1.intermediate.dense.weight'].numpy().T)
  np.testing.assert_array_equal(params['token_embed']['embedding'],
                                state['bert.embeddings.word_embeddings.weight'].numpy())


def test_hidden_states_of_a_base_model(mlm):
  """An MLM checkpoint read as BertModel (head 'none'): the encoder's hidden states; its pooler starts fresh."""
  model, directory = mlm
  kind, fresh = refs.build(model.config, 'none')
  params, report = convert.load_params(str(directory), kind, fresh)
  assert report['fresh'] == ['pooler/bias', 'pooler/kernel']
  ids, mask, types = refs.padded_batch(seed=4)
  hidden, _ = refs.ours(kind, params, ids, mask, types)
  with torch.no_grad():
    want = model.bert(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                      token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
  real = mask.astype(bool)
  assert refs.max_diff(hidden[real], want[real]) < refs.TOLERANCE


def _old_style(state: dict) -> dict:
  """A state dict spelt as checkpoints of the original BERT release: LayerNorm gamma/beta, the tied
  decoder weight and its bias stored as well, the position_ids buffer."""
  out = {}
  for key, value in state.items():
    key = key.replace('LayerNorm.weight', 'LayerNorm.gamma').replace('LayerNorm.bias', 'LayerNorm.beta')
    out[key] = value.clone()
  out['cls.predictions.decoder.weight'] = state['bert.embeddings.word_embeddings.weight'].clone()
  out['cls.predictions.decoder.bias'] = state['cls.predictions.bias'].clone()
  out['bert.embeddings.position_ids'] = torch.arange(refs.POSITIONS)[None]
  return out


def test_sharded_safetensors_and_an_old_pytorch_bin_give_the_same_params(mlm, tmp_path):
  model, directory = mlm
  kind, fresh = refs.build(model.config, 'mlm')
  want, _ = convert.load_params(str(directory), kind, fresh)
  sharded = tmp_path / 'sharded'
  model.save_pretrained(str(sharded), max_shard_size='100KB')
  assert (sharded / 'model.safetensors.index.json').exists() and not (sharded / 'model.safetensors').exists()
  old = tmp_path / 'old'
  old.mkdir()
  shutil.copy(directory / 'config.json', old / 'config.json')
  state = {k: v for k, v in model.state_dict().items() if k != 'cls.predictions.decoder.weight'}
  torch.save(_old_style(state), old / 'pytorch_model.bin')
  for source in (sharded, old):
    got, report = convert.load_params(str(source), kind, fresh)
    assert report['fresh'] == [] and report['unused'] == []
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_checkpoint_without_architectures_is_read_by_model_type(mlm, tmp_path):
  model, directory = mlm
  copy = tmp_path / 'noarch'
  shutil.copytree(directory, copy)
  config = json.loads((copy / 'config.json').read_text())
  del config['architectures']
  (copy / 'config.json').write_text(json.dumps(config))
  kind, fresh = refs.build(model.config, 'mlm')
  _, report = convert.load_params(str(copy), kind, fresh)
  assert report['fresh'] == [] and report['unused'] == []


def test_every_file_tensor_is_consumed(mlm):
  """The count check from the other side: each key in the file maps to a restored parameter."""
  model, directory = mlm
  kind, fresh = refs.build(model.config, 'mlm')
  _, report = convert.load_params(str(directory), kind, fresh)
  keys = load_file(os.path.join(directory, 'model.safetensors'))
  assert len(report['restored']) == len(keys) == len(jax.tree.leaves(fresh))


def test_bfloat16_safetensors(mlm, tmp_path):
  """Tensors NumPy has no dtype for are read through safetensors' JAX reader, as float32."""
  model, _ = mlm
  half = transformers.BertForMaskedLM(model.config)
  half.load_state_dict(model.state_dict())
  half.to(torch.bfloat16).save_pretrained(str(tmp_path), safe_serialization=True)
  kind, fresh = refs.build(model.config, 'mlm')
  params, _ = convert.load_params(str(tmp_path), kind, fresh)
  want = model.state_dict()['bert.encoder.layer.0.intermediate.dense.weight'].to(torch.bfloat16).float().numpy().T
  np.testing.assert_array_equal(params['layer_0']['mlp']['wi'], want)
  assert np.abs(want - model.state_dict()['bert.encoder.layer.0.intermediate.dense.weight'].numpy().T).max() > 0
