"""Bad Hugging Face sources: each is one ConfigError line naming what is wrong and the fix, before
any parameter is replaced."""

import json
import shutil
import sys

import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file, save_file

from llm_jax import convert
from llm_jax import errors
from llm_jax.data import sources
from llm_jax.models import kinds
from tests.convert import refs


@pytest.fixture(scope='module')
def good(tmp_path_factory):
  directory = tmp_path_factory.mktemp('good')
  model = refs.random_bert(transformers.BertForMaskedLM, directory)
  kind, fresh = refs.build(model.config, 'mlm')
  return directory, kind, fresh


@pytest.fixture
def copy(good, tmp_path):
  """A copy of the good directory to break."""
  directory = tmp_path / 'model'
  shutil.copytree(good[0], directory)
  return directory


def _load(directory, good, kind=None):
  _, good_kind, fresh = good
  return convert.load_params(str(directory), kind or good_kind, fresh)


def _one_line(e) -> str:
  message = str(e.value)
  assert '\n' not in message and isinstance(e.value, errors.ConfigError)
  return message


def _edit_config(directory, **changes):
  config = json.loads((directory / 'config.json').read_text())
  config.update(changes)
  (directory / 'config.json').write_text(json.dumps(config))


def _edit_weights(directory, edit):
  path = str(directory / 'model.safetensors')
  tensors = load_file(path)
  edit(tensors)
  save_file(tensors, path, metadata={'format': 'pt'})


def test_unsupported_architecture_names_the_supported_ones(copy, good):
  _edit_config(copy, architectures=['FalconForCausalLM'], model_type='falcon')
  with pytest.raises(errors.ConfigError) as e:
    _load(copy, good)
  message = _one_line(e)
  assert 'FalconForCausalLM' in message
  for name in ('BertForMaskedLM', 'BertForSequenceClassification', 'BertModel'):
    assert name in message


def test_shape_mismatch_names_the_key_and_both_shapes(copy, good):
  key = 'bert.encoder.layer.1.intermediate.dense.weight'
  _edit_weights(copy, lambda t: t.update({key: t[key][:, :32].copy()}))
  with pytest.raises(errors.ConfigError) as e:
    _load(copy, good)
  message = _one_line(e)
  assert f'{key} has shape (128, 32)' in message and 'needs (128, 64)' in message and 'layer_1/mlp/wi' in message


def test_missing_weights_file(copy, good):
  (copy / 'model.safetensors').unlink()
  with pytest.raises(errors.ConfigError) as e:
    _load(copy, good)
  assert 'holds no weights: expected model.safetensors' in _one_line(e)


def test_missing_config(copy, good):
  (copy / 'config.json').unlink()
  with pytest.raises(errors.ConfigError, match='has no config.json'):
    _load(copy, good)


def test_config_mismatch_lists_every_field_with_its_flag(good):
  directory, kind, fresh = good
  other = kinds.build('encoder', kind.cfg.replace(num_layers=3, mlp_dim=256, max_len=128, norm_eps=1e-5,
                                                  mlp_activation='gelu_tanh', norm_placement='pre', vocab_size=290))
  with pytest.raises(errors.ConfigError) as e:
    convert.load_params(str(directory), other, fresh)
  message = _one_line(e)
  for piece in ('config.model.num_layers=3 (the checkpoint has 2)', 'config.model.mlp_dim=256 (the checkpoint has 128)',
                'config.model.max_len=128 (the checkpoint has 64)', 'config.model.norm_eps=1e-05 (the checkpoint has 1e-12)',
                "config.model.mlp_activation='gelu_tanh' (the checkpoint has 'gelu_exact')",
                "config.model.norm_placement='pre' (the checkpoint has 'post')",
                "the model's vocab_size (config.model.vocab_size, -1: the tokenizer's ids)=290 (the checkpoint has 300)",
                '--config.model.vocab_size=300',
                '--config.model.num_layers=2', '--config.model.mlp_dim=128', '--config.model.max_len=64',
                '--config.model.norm_eps=1e-12', '--config.model.mlp_activation=gelu_exact',
                '--config.model.norm_placement=post', f'--config.data.tokenizer_path={directory}'):
    assert piece in message, piece
  assert 'emb_dim' not in message and 'num_heads' not in message  # only what differs


def test_classifier_labels_are_compared(tmp_path):
  model = refs.random_bert(transformers.BertForSequenceClassification, tmp_path, num_labels=3)
  kind, fresh = refs.build(model.config, 'classify', num_classes=5)
  with pytest.raises(errors.ConfigError, match=r'config.model.num_classes=5 \(the checkpoint has 3\).*'
                                                r'--config.model.num_classes=3'):
    convert.load_params(str(tmp_path), kind, fresh)


def test_directory_of_another_model_kind(good):
  directory, kind, fresh = good
  decoder = kinds.build('decoder', kind.cfg.replace(head='lm', causal=True))
  with pytest.raises(errors.ConfigError) as e:
    convert.load_params(str(directory), decoder, fresh)
  message = _one_line(e)
  assert "BertForMaskedLM (model.kind 'encoder')" in message and "model.kind='decoder'" in message


def test_unknown_tensor_fails_the_count_check(copy, good):
  _edit_weights(copy, lambda t: t.update({'bert.encoder.layer.0.attention.self.rotary.weight': np.ones(4, np.float32)}))
  with pytest.raises(errors.ConfigError) as e:
    _load(copy, good)
  message = _one_line(e)
  assert 'holds 1 tensors the bert table does not know: bert.encoder.layer.0.attention.self.rotary.weight' in message


def test_missing_body_tensor(copy, good):
  _edit_weights(copy, lambda t: t.pop('bert.encoder.layer.0.output.LayerNorm.bias'))
  with pytest.raises(errors.ConfigError, match='lacks encoder.layer.0.output.LayerNorm.bias'):
    _load(copy, good)


def test_tied_copies_must_be_equal(copy, good):
  def untie(tensors):
    tensors['cls.predictions.decoder.bias'] = tensors['cls.predictions.bias'] + 1
  _edit_weights(copy, untie)
  with pytest.raises(errors.ConfigError) as e:
    _load(copy, good)
  assert 'cls.predictions.decoder.bias differs from cls.predictions.bias' in _one_line(e)


def test_pytorch_bin_without_torch(copy, good, monkeypatch):
  (copy / 'model.safetensors').unlink()
  (copy / 'pytorch_model.bin').write_bytes(b'not read')
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch raises ImportError
  with pytest.raises(errors.ConfigError) as e:
    _load(copy, good)
  message = _one_line(e)
  assert 'pytorch_model.bin' in message and 'safetensors' in message and 'pip install torch' in message


def test_offline_hub_id_says_to_pass_a_directory(good, monkeypatch):
  monkeypatch.setattr(sources, 'looks_offline', lambda *a, **k: True)
  with pytest.raises(errors.ConfigError) as e:
    _load('bert-base-uncased', good)
  message = _one_line(e)
  assert "'bert-base-uncased' is not a local directory" in message and 'pass its directory' in message
