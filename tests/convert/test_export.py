"""An llm_jax encoder run exported, loaded back by transformers' from_pretrained: the same logits.

Each run starts from a random Hugging Face BertForMaskedLM (init_from) and is saved as a
checkpoint; the classifier run's pooler and classifier are its own fresh weights, which no
Hugging Face file held before the export.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from llm_jax import checkpoint as ckpt_lib
from llm_jax import convert
from llm_jax import errors
from llm_jax import workdir as workdir_lib
from llm_jax.convert import table
from tests.convert import refs
from tests.convert import runs

AUTO = {'mlm': transformers.AutoModelForMaskedLM, 'classify': transformers.AutoModelForSequenceClassification}


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  directory = tmp_path_factory.mktemp('hf_source')
  return refs.random_bert(transformers.BertForMaskedLM, directory), directory


@pytest.fixture(scope='module', params=[('mlm', False), ('classify', False), ('mlm', True)],
                ids=['mlm', 'classify', 'mlm-scanned'])
def exported(request, source, tmp_path_factory):
  head, scan = request.param
  tmp = tmp_path_factory.mktemp(f'export_{head}_{scan}')
  config = runs.encoder_config(tmp, head, str(source[1]), scan=scan)
  kind, params = runs.converted(config)
  runs.save(config, tmp / 'run', params)
  tokenizer = None if scan else runs.wordpiece_files(tmp / 'cache')
  result = convert.export(str(tmp / 'run'), str(tmp / 'hf'))
  model, info = AUTO[head].from_pretrained(str(tmp / 'hf'), output_loading_info=True)
  return dict(head=head, scan=scan, kind=kind, params=runs.host(params), result=result,
              model=model.eval(), info=info, out=tmp / 'hf', tokenizer=tokenizer, run=tmp / 'run')


def test_from_pretrained_loads_every_tensor(exported):
  info = exported['info']
  assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
  want = {'mlm': 'BertForMaskedLM', 'classify': 'BertForSequenceClassification'}[exported['head']]
  assert exported['result']['architecture'] == want and type(exported['model']).__name__ == want
  assert exported['result']['step'] == 1


def test_same_logits_as_llm_jax(exported):
  ids, mask, types = refs.padded_batch(seed=7, batch=5)
  got = refs.ours(exported['kind'], exported['params'], ids, mask, types)
  want = refs.theirs(exported['model'], ids, mask, types).logits.numpy()
  if exported['head'] == 'mlm':
    real = mask.astype(bool)
    got, want = got[real], want[real]
  assert np.abs(want).max() > 1
  assert refs.max_diff(got, want) < refs.TOLERANCE
  np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


def test_round_trip_gives_back_the_source_tensors(exported, source):
  """Import then export is the identity on every tensor the two models share."""
  theirs = source[0].state_dict()
  back = exported['model'].state_dict()
  shared = [k for k in back if k in theirs]
  assert len(shared) >= 3 + 2 + 16 * refs.LAYERS
  for key in shared:
    torch.testing.assert_close(back[key], theirs[key], rtol=0, atol=0, msg=key)


def test_tokenizer_files(exported):
  out, result = exported['out'], exported['result']
  if exported['tokenizer'] is None:  # a run without a Hugging Face tokenizer in its cache dir
    assert result['tokenizer'] == [] and 'tokenizer was not exported' in result['note']
    assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors']
    return
  assert result['tokenizer'] == ['tokenizer.json', 'tokenizer_config.json', 'vocab.txt'] and not result['note']
  from tokenizers import Tokenizer
  text = 'The big red cat sat on the mat, and the dog ran fast!'
  want = Tokenizer.from_file(exported['tokenizer']).encode(text).ids
  assert transformers.AutoTokenizer.from_pretrained(str(out))(text)['input_ids'] == want
  assert 1 not in want  # every word is in the vocabulary: [UNK] would hide a wrong lowercasing
  assert json.loads((out / 'tokenizer.json').read_text())['model']['type'] == 'WordPiece'


def test_command_line(exported, tmp_path):
  if exported['head'] != 'mlm' or exported['scan']:
    pytest.skip('one run is enough')
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  command = [sys.executable, '-m', 'llm_jax.convert', f'--workdir={exported["run"]}']
  done = subprocess.run(command + [f'--out={tmp_path / "cli"}'], capture_output=True, text=True, env=env)
  assert done.returncode == 0, done.stderr
  assert 'as a BertForMaskedLM to' in done.stdout and 'vocab.txt' in done.stdout
  assert sorted(os.listdir(tmp_path / 'cli')) == sorted(os.listdir(exported['out']))
  again = subprocess.run(command + [f'--out={tmp_path / "cli"}'], capture_output=True, text=True, env=env)
  assert again.returncode == errors.USAGE
  assert again.stderr.strip().count('\n') == 0 and 'exists and is not empty' in again.stderr


# ----------------------------------------------------------------------------- mistakes

def test_not_a_run(tmp_path):
  with pytest.raises(errors.ConfigError, match='holds no training run'):
    convert.export(str(tmp_path), str(tmp_path / 'out'))


def test_a_run_without_a_checkpoint(tmp_path, source):
  config = runs.encoder_config(tmp_path, 'mlm', str(source[1]))
  workdir_lib.record(str(tmp_path), config, step=0, event='start', changes={})
  with pytest.raises(ckpt_lib.CheckpointError, match='no finished checkpoint'):
    convert.export(str(tmp_path), str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()


def test_a_kind_without_an_exporter():
  with pytest.raises(errors.ConfigError, match="model.kind='seq2seq' cannot be exported.*decoder, encoder.*BertForMaskedLM"):
    table.exporters('seq2seq')


def test_a_layout_bert_does_not_have():
  cfg = refs.bert_cfg(refs.hf_config(), 'mlm', norm_placement='pre', mlp_activation='swiglu', num_kv_heads=2)
  with pytest.raises(errors.ConfigError) as e:
    table.for_export('encoder', cfg)
  message = str(e.value)
  assert "config.model.norm_placement='pre' (BERT has 'post')" in message and 'swiglu' in message
  assert 'num_kv_heads=2' in message and '\n' not in message
