"""The encoder (masked LM) under data, FSDP, tensor, all three, and pmap on 8 simulated devices
matches its single-device run step for step (the 8-device work runs in ``worker.py encoder``)."""

import numpy as np
import pytest

from tests.parallel import common
from tests.parallel import worker as worker_lib
from tests.parallel.test_mesh import ok, shard_of


@pytest.mark.parametrize('name', worker_lib.ENCODER_RUNS)
def test_encoder_losses_match_one_device(encoder_worker, encoder_reference, name):
  result = ok(encoder_worker, name)
  np.testing.assert_allclose(result['losses'], encoder_reference['losses'], rtol=1e-5, atol=0)
  assert encoder_reference['losses'][-1] < encoder_reference['losses'][0] - 0.3  # it learns
  if name in worker_lib.EVALUATED:
    np.testing.assert_allclose(result['eval_loss'], encoder_reference['eval_loss'], rtol=1e-5)


def test_encoder_is_split_as_the_strategies_say(encoder_worker):
  """tensor=8 splits the heads and the vocabulary (144 pieces, which 8 divides) of the tied
  embedding; fsdp=8 keeps an eighth of params + optimizer state per device."""
  tensor = ok(encoder_worker, 'tensor')['shards']
  shape, shard = shard_of(tensor, "['token_embed']['embedding']")
  assert shape[0] == common.ENCODER_VOCAB and shard[0] * 8 == shape[0], (shape, shard)
  shape, shard = shard_of(tensor, "['attention']['query']")
  assert shard[1] * 8 == shape[1], (shape, shard)
  fsdp = ok(encoder_worker, 'fsdp')
  assert fsdp['bytes_per_device'] <= 1.2 / 8 * fsdp['bytes_replicated'], fsdp['bytes_per_device']
