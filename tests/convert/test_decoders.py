"""Hugging Face GPT-2, BLOOM, Llama and Mistral checkpoints into llm_jax's decoder: the same logits as
transformers on left-padded prompts of different lengths, unrolled and scanned; the tokenizer
beside them; and the one-line errors of checkpoints llm_jax cannot take."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from llm_jax import convert
from llm_jax import errors
from tests.convert import decoder_refs as refs
from tests.convert.refs import tolerance

FAMILIES = ('gpt2', 'bloom', 'llama', 'mistral')
TOKENIZERS = {'gpt2': 'gpt2', 'bloom': 'bloom', 'llama': 'llama', 'mistral': 'llama3'}
TOLERANCE = 1e-4


@pytest.fixture(scope='module', params=FAMILIES)
def source(request, tmp_path_factory):
  family = request.param
  directory = tmp_path_factory.mktemp(family)
  model = refs.random_model(family, directory, tokenizer_style=TOKENIZERS[family])
  return family, model, directory


def _compare(kind, params, model):
  ids, mask = refs.left_padded()
  got, want = refs.ours(kind, params, ids, mask), refs.theirs(model, ids, mask)
  real = mask.astype(bool)
  got, want = got[real], want[real]
  assert np.abs(want).max() > 5  # far from zero: a bug cannot hide under the tolerance
  assert float(np.max(np.abs(got - want))) < tolerance(want)
  np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
  assert len(np.unique(want.argmax(-1))) > 1  # not one token everywhere


@pytest.mark.parametrize('scan', [False, True], ids=['unrolled', 'scanned'])
def test_load_params_matches_transformers(source, scan):
  family, model, directory = source
  kind, fresh = refs.build(family, model.config, scan_layers=scan)
  params, report = convert.load_params(str(directory), kind, fresh)
  assert report['fresh'] == [] and report['unused'] == []
  assert ('layers/attention/query' in report['restored']) == scan
  _compare(kind, params, model)


def test_from_pretrained_reads_config_and_tokenizer(source):
  family, model, directory = source
  pretrained = convert.from_pretrained(str(directory), attention_kernel='xla')
  assert pretrained.kind.cfg == refs.llm_jax_cfg(family, model.config)
  _compare(pretrained.kind, pretrained.params, model)
  style = TOKENIZERS[family]
  tok = pretrained.tokenizer
  assert pretrained.eos_id == tok.eos_id == refs.EOS[style] == model.config.eos_token_id
  text = 'The big red cat sat on the mat, and the dog ran fast!'
  ids = tok.encode(text)
  assert list(ids) == refs.tokenizer(style).encode(text, add_special_tokens=False).ids
  assert tok.decode(ids) == text and tok.decode(list(ids) + [tok.eos_id]) == text


@pytest.mark.parametrize('style', ['gpt2', 'llama3'])
def test_eos_by_name_without_config_eos(tmp_path, style):
  """Without eos_token_id in config.json the end-of-text token is found by its usual names."""
  refs.random_model('gpt2', tmp_path, tokenizer_style=style)
  config = json.loads((tmp_path / 'config.json').read_text())
  config.pop('eos_token_id')
  config.pop('bos_token_id')
  (tmp_path / 'config.json').write_text(json.dumps(config))
  pretrained = convert.from_pretrained(str(tmp_path))
  assert pretrained.tokenizer.eos_id == pretrained.eos_id == refs.EOS[style]


def test_no_tokenizer(tmp_path):
  refs.random_model('llama', tmp_path)
  pretrained = convert.from_pretrained(str(tmp_path))
  assert pretrained.tokenizer is None and pretrained.eos_id == refs.EOS['llama']
  with pytest.raises(errors.ConfigError) as e:
    pretrained.need_tokenizer('generation')
  assert 'no tokenizer' in str(e.value) and '\n' not in str(e.value)


# ----------------------------------------------------------------------------- mistakes

def _one_line(e) -> str:
  message = str(e.value)
  assert '\n' not in message, message
  return message


def _edit_config(directory, **changes):
  config = json.loads((directory / 'config.json').read_text())
  config.update(changes)
  (directory / 'config.json').write_text(json.dumps(config))


@pytest.fixture(scope='module')
def small_llama(tmp_path_factory):
  directory = tmp_path_factory.mktemp('llama_errors')
  return refs.random_model('llama', directory), directory


def _copy(src, dst):
  import shutil
  shutil.copytree(src, dst)
  return dst


def test_unknown_architecture(small_llama, tmp_path):
  directory = _copy(small_llama[1], tmp_path / 'falcon')
  _edit_config(directory, architectures=['FalconForCausalLM'], model_type='falcon')
  with pytest.raises(errors.ConfigError) as e:
    convert.from_pretrained(str(directory))
  message = _one_line(e)
  assert 'FalconForCausalLM, which llm_jax cannot convert' in message
  for name in ('GPT2LMHeadModel', 'BloomForCausalLM', 'LlamaForCausalLM', 'MistralForCausalLM', 'BertModel'):
    assert name in message


def test_config_mismatch_names_the_fixing_flags(small_llama):
  model, directory = small_llama
  kind, fresh = refs.build('llama', model.config, num_layers=3, num_kv_heads=4, rope_theta=10000.0,
                           tie_embeddings=True)
  with pytest.raises(errors.ConfigError) as e:
    convert.load_params(str(directory), kind, fresh)
  message = _one_line(e)
  for flag in ('--config.model.num_layers=2', '--config.model.num_kv_heads=2', '--config.model.rope_theta=500.0',
               '--config.model.tie_embeddings=False'):
    assert flag in message, message


@pytest.mark.parametrize('family, changes, named', [
    ('llama', {'rope_scaling': {'rope_type': 'linear', 'factor': 2.0}}, 'rope_scaling'),
    ('llama', {'rope_parameters': {'rope_type': 'yarn', 'factor': 4.0, 'rope_theta': 500.0}}, 'rope_scaling'),
    ('llama', {'attention_bias': True}, 'attention_bias'),
    ('mistral', {'sliding_window': 16}, 'sliding_window'),
    ('gpt2', {'scale_attn_by_inverse_layer_idx': True}, 'scale_attn_by_inverse_layer_idx'),
    ('bloom', {'apply_residual_connection_post_layernorm': True}, 'apply_residual_connection_post_layernorm'),
], ids=['rope_scaling', 'rope_parameters', 'attention_bias', 'sliding_window', 'layer_idx_scale', 'post_ln_residual'])
def test_unconvertible_settings(tmp_path, family, changes, named):
  model = refs.random_model(family, tmp_path)
  _edit_config(tmp_path, **changes)
  with pytest.raises(errors.ConfigError) as e:
    convert.from_pretrained(str(tmp_path))
  message = _one_line(e)
  assert named in message and 'cannot be converted' in message, message
  kind, fresh = refs.build(family, model.config)
  with pytest.raises(errors.ConfigError) as e:
    convert.load_params(str(tmp_path), kind, fresh)
  message = _one_line(e)
  assert f'llm_jax has no setting for {named}' in message, message


@pytest.mark.parametrize('family, key', [('gpt2', 'transformer.h.1.attn.c_attn.weight'),
                                         ('bloom', 'transformer.h.0.self_attention.query_key_value.bias')])
def test_fused_tensor_of_the_wrong_shape(tmp_path, family, key):
  model = refs.random_model(family, tmp_path)
  tensors = load_file(str(tmp_path / 'model.safetensors'))
  tensors[key] = tensors[key][..., :-8].copy()
  save_file(tensors, str(tmp_path / 'model.safetensors'), metadata={'format': 'pt'})
  kind, fresh = refs.build(family, model.config)
  with pytest.raises(errors.ConfigError) as e:
    convert.load_params(str(tmp_path), kind, fresh)
  message = _one_line(e)
  assert key in message and 'attention/query' in message and 'attention/value' in message, message


def test_old_gpt2_buffers_are_skipped(tmp_path):
  model = refs.random_model('gpt2', tmp_path)
  tensors = load_file(str(tmp_path / 'model.safetensors'))
  for i in range(refs.LAYERS):
    tensors[f'transformer.h.{i}.attn.bias'] = np.tril(np.ones((1, 1, 8, 8), np.float32))
    tensors[f'transformer.h.{i}.attn.masked_bias'] = np.array(-1e4, np.float32)
  tensors['lm_head.weight'] = tensors['transformer.wte.weight']  # an old checkpoint's tied copy
  save_file(tensors, str(tmp_path / 'model.safetensors'), metadata={'format': 'pt'})
  kind, fresh = refs.build('gpt2', model.config)
  params, report = convert.load_params(str(tmp_path), kind, fresh)
  assert report['unused'] == [] and report['fresh'] == []
  _compare(kind, jax.device_get(params), model)
