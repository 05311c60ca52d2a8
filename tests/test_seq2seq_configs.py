"""The encoder-decoder configs validate, and their models have the published parameter counts
(jax.eval_shape: no compute)."""

import math

import jax
import pytest

from llm_jax import config as config_lib
from llm_jax.train import trainer as trainer_lib

COUNTS = {'t5_small': (32128, 60_506_624),         # transformers' t5-small
          't5_base_wmt14_enfr': (32128, 222_903_552),  # t5-base
          't5_tiny': (None, None)}


@pytest.mark.parametrize('name', ['t5_tiny', 't5_small', 't5_base_wmt14_enfr', 'transformer_base_wmt14_ende'])
def test_config_validates_and_counts(name):
  config = config_lib.from_file(f'configs/{name}.py')
  config_lib.validate(config)
  vocab, want = COUNTS.get(name, (37000, None))
  kind = trainer_lib.make_kind(config, vocab or 100)
  params = kind.abstract_params(16)
  count = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  if want:
    assert count == want
  if name == 'transformer_base_wmt14_ende':
    # 6+6 layers of width 512 with biases and a shared 37000 x 512 embedding: the paper's "65 M".
    assert count == 63_082_496
