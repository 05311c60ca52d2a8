"""T5 weights both ways against transformers' T5ForConditionalGeneration (PyTorch, CPU, float32)."""

import numpy as np
import pytest
import torch
import transformers

from llm_jax import convert
from llm_jax import errors
from llm_jax.convert import exporter
from llm_jax.convert import hf
from llm_jax.convert import table
from llm_jax.models import layers
from tests.convert import t5_refs


@pytest.fixture(scope='module', params=t5_refs.LAYOUTS)
def t5(request, tmp_path_factory):
  directory = tmp_path_factory.mktemp(request.param)
  # 2 encoder and 3 decoder layers: the stacks are expanded separately.
  model = t5_refs.random_t5(request.param, directory, num_decoder_layers=3)
  return request.param, directory, model


@pytest.mark.parametrize('scan', [False, True])
def test_logits_match_transformers_with_padding_on_both_sides(t5, scan):
  layout, directory, model = t5
  pre = convert.from_pretrained(str(directory), scan_layers=scan)
  assert pre.report['fresh'] == [] and pre.report['unused'] == []
  cfg = pre.kind.cfg
  assert (cfg.tie_embeddings, cfg.rescale_output, cfg.mlp_activation) == {
      't5': (True, True, 'relu'), 'v1_1': (False, False, 'geglu'), 'tied_v1_1': (True, False, 'geglu')}[layout]
  assert (cfg.num_layers, cfg.num_decoder_layers) == (2, 3)
  batch = t5_refs.padded_batch()
  ref, ours = t5_refs.hf_logits(model, *batch), t5_refs.ours_logits(pre, *batch)
  tmask = batch[3].astype(bool)
  assert np.abs(ours - ref)[tmask].max() < t5_refs.TOLERANCE
  assert len(np.unique(ref.argmax(-1)[tmask])) >= 8  # the weights are large enough for the argmax to move


def test_buckets_match_transformers_and_a_direct_count():
  """t5_buckets against HF's own bucketing and against the definition evaluated one distance at a time."""
  relative = np.arange(-300, 301)[None, :]
  for bidirectional in (True, False):
    ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        torch.tensor(relative), bidirectional=bidirectional, num_buckets=32, max_distance=128).numpy()
    ours = np.asarray(layers.t5_buckets(relative, bidirectional, 32, 128))
    np.testing.assert_array_equal(ours, ref)
    n = 16 if bidirectional else 32
    for r, bucket in zip(relative[0], ours[0]):
      offset = n if bidirectional and r > 0 else 0
      d = abs(r) if bidirectional else max(-r, 0)
      exact = n // 2
      want = d if d < exact else min(n - 1, exact + int(np.log(d / exact) / np.log(128 / exact) * (n - exact)))
      assert bucket == offset + want, (r, bidirectional)


def test_export_loads_in_transformers_with_the_same_logits(t5, tmp_path):
  layout, directory, model = t5
  pre = convert.from_pretrained(str(directory))
  family = table.for_export('encoder_decoder', pre.kind.cfg)
  architecture = family.export_architecture('lm')
  tensors = exporter.to_hf(family, architecture, pre.kind.cfg, pre.params)
  hf.write(str(tmp_path), family.hf_config(pre.kind.cfg, architecture), tensors)
  back = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
  batch = t5_refs.padded_batch(seed=1)
  tmask = batch[3].astype(bool)
  assert np.abs(t5_refs.hf_logits(back, *batch) - t5_refs.hf_logits(model, *batch))[tmask].max() < t5_refs.TOLERANCE
  again = convert.from_pretrained(str(tmp_path))
  for (path, a), b in zip(*[__import__('jax').tree_util.tree_flatten_with_path(p)[0] if i == 0 else
                           __import__('jax').tree.leaves(p) for i, p in enumerate((pre.params, again.params))]):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


def test_a_t5_directory_into_another_kind_names_both(t5):
  _, directory, _ = t5
  from llm_jax.models import kinds
  from llm_jax.models.layers import TransformerConfig
  kind = kinds.build('decoder', TransformerConfig(vocab_size=t5_refs.VOCAB))
  with pytest.raises(errors.ConfigError, match=r"T5ForConditionalGeneration \(model.kind 'encoder_decoder'\).*"
                                               r"model.kind='decoder'"):
    convert.load_params(str(directory), kind, {}, what='config.init_from')


def test_unknown_feed_forward_is_one_line(tmp_path):
  t5_refs.random_t5('t5', tmp_path)
  import json
  config = json.loads((tmp_path / 'config.json').read_text())
  config['feed_forward_proj'] = 'gated-relu'
  (tmp_path / 'config.json').write_text(json.dumps(config))
  with pytest.raises(errors.ConfigError, match="feed_forward_proj 'gated-relu' has no llm_jax counterpart"):
    convert.from_pretrained(str(tmp_path))
