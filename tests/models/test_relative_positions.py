"""T5's relative buckets (pos_encoding='t5_relative') in the decoder and encoder kinds, against
transformers' T5 stacks with the same weights.

A T5 decoder stack run without encoder states skips its cross-attention (transformers' T5Block),
so it is a decoder-only language model with causal buckets; the encoder stack is a bidirectional
encoder. The weights come from a random T5ForConditionalGeneration (tests/convert/t5_refs.py: large
enough that a wrong bucket changes the result), converted by llm_jax's T5 importer; the decoder's
cross-attention weights are dropped.
"""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch

import llm_jax
from llm_jax import config as config_lib
from llm_jax.models import encoder
from llm_jax.models import kinds
from llm_jax.models import layers
from tests.convert import t5_refs


@pytest.fixture(scope='module')
def t5(tmp_path_factory):
  directory = tmp_path_factory.mktemp('t5')
  return t5_refs.random_t5('t5', directory, seed=3), llm_jax.from_pretrained(str(directory))


def _ids(seed=0, batch=2, length=13):
  return np.random.default_rng(seed).integers(2, t5_refs.VOCAB, (batch, length)).astype(np.int32)


def _stack_params(pretrained, side):
  params = dict(pretrained.params[side])
  for name in [k for k in params if k.startswith('layer_')]:
    params[name] = {k: v for k, v in params[name].items() if not k.startswith('cross_attention')}
  params['token_embed'] = pretrained.params['token_embed']
  return params


def test_decoder_kind_with_t5_buckets_equals_a_t5_decoder_stack(t5):
  reference, pretrained = t5
  cfg = dataclasses.replace(pretrained.kind.cfg, causal=True, decode=False)
  assert cfg.pos_encoding == 't5_relative'
  module = kinds.build('decoder', cfg).module
  ids = _ids()
  pos = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape)
  hidden, _ = module.apply({'params': _stack_params(pretrained, 'decoder')}, ids, pos, np.ones_like(ids),
                           return_hidden=True)
  with torch.no_grad():
    want = reference.decoder(input_ids=torch.tensor(ids, dtype=torch.long)).last_hidden_state.numpy()
  assert np.abs(want).max() > 1.0
  np.testing.assert_allclose(np.asarray(hidden), want, atol=t5_refs.TOLERANCE * max(1, np.abs(want).max()))
  # the buckets matter: the same weights without them give another output
  plain = kinds.build('decoder', dataclasses.replace(cfg, pos_encoding='none')).module
  params = {k: v for k, v in _stack_params(pretrained, 'decoder').items() if k != 'relative_bias'}
  other, _ = plain.apply({'params': params}, ids, pos, np.ones_like(ids), return_hidden=True)
  assert np.abs(np.asarray(other) - want).max() > 0.1


def test_encoder_kind_with_t5_buckets_equals_a_t5_encoder_stack(t5):
  reference, pretrained = t5
  cfg = dataclasses.replace(pretrained.kind.cfg, causal=False, head='none', decode=False)
  module = encoder.EncoderModel(cfg)
  ids = _ids(1)
  mask = np.ones_like(ids)
  mask[1, 8:] = 0  # right padding, as T5's tokenizers pad
  pos = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape)
  params = nn.meta.unbox(module.init(jax.random.key(0), ids, pos, mask)['params'])  # + a pooler T5 has not
  params.update(_stack_params(pretrained, 'encoder'))
  hidden, _ = module.apply({'params': params}, ids * mask, pos, mask)
  with torch.no_grad():
    want = reference.encoder(input_ids=torch.tensor(ids * mask, dtype=torch.long),
                             attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
  keep = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(hidden)[keep], want[keep], atol=t5_refs.TOLERANCE * max(1, np.abs(want).max()))


@pytest.mark.parametrize('kind', ['decoder', 'encoder'])
def test_config_takes_t5_buckets_in_every_kind(kind):
  config = config_lib.from_file('configs/default.py' if kind == 'decoder' else 'configs/bert_tiny.py',
                                **{'model.pos_encoding': 't5_relative'})
  config_lib.validate(config)
  cfg = config_lib.model_config(config, 100)
  assert cfg.pos_encoding in layers.LEARNED_BIAS and cfg.relative_buckets == 32
