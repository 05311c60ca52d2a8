"""Every strategy and pmap on 8 simulated devices against one device; FSDP memory; tensor splits;
restore across meshes (RELIABILITY row 8). The 8-device work runs in ``worker.py``."""

import numpy as np
import pytest

from llm_jax import checkpoint as ckpt_lib
from tests.parallel import common
from tests.parallel import worker as worker_lib


def ok(worker: dict, name: str) -> dict:
  result = worker[name]
  assert 'error' not in result, f'{name} failed on 8 devices:\n{result["error"]}'
  return result


@pytest.mark.parametrize('name', worker_lib.RUNS)
def test_strategy_losses_match_one_device(worker, reference, name):
  result = ok(worker, name)
  np.testing.assert_allclose(result['losses'], reference['losses'], rtol=1e-5, atol=0)
  assert reference['losses'][-1] < reference['losses'][0] - 0.3  # it learns
  if name in worker_lib.EVALUATED:
    np.testing.assert_allclose(result['eval_loss'], reference['eval_loss'], rtol=1e-5)


def test_strategies_use_the_mesh_they_name(worker):
  shapes = {name: ok(worker, name)['mesh'] for name in worker_lib.RUNS}
  assert shapes['data'] == dict(data=8, fsdp=1, tensor=1)
  assert shapes['fsdp'] == dict(data=1, fsdp=8, tensor=1)
  assert shapes['tensor'] == dict(data=1, fsdp=1, tensor=8)
  assert shapes['data_fsdp'] == dict(data=2, fsdp=4, tensor=1)
  assert shapes['fsdp_tensor'] == dict(data=1, fsdp=4, tensor=2)
  assert shapes['data_fsdp_tensor'] == dict(data=2, fsdp=2, tensor=2)


def test_sharded_init_equals_single_device_init(worker, reference, parallel_dir):
  ok(worker, 'fsdp')
  init = np.load(parallel_dir / 'init.npz')
  assert sorted(init.files) == sorted(reference['fresh_init'])
  for k, v in reference['fresh_init'].items():
    np.testing.assert_array_equal(init[k], v, err_msg=k)


def test_fsdp_per_device_bytes_are_an_eighth(worker):
  fsdp, data = ok(worker, 'fsdp'), ok(worker, 'data')
  assert data['bytes_per_device'] == data['bytes_replicated']  # data parallel replicates
  assert fsdp['bytes_replicated'] == data['bytes_replicated']
  assert fsdp['bytes_per_device'] <= 1.2 / 8 * fsdp['bytes_replicated'], fsdp['bytes_per_device']


def shard_of(shards: dict, suffix: str):
  (found,) = [v for p, v in shards.items() if p.endswith(suffix)]
  return found


def test_tensor2_splits_attention_and_mlp_weights_in_two(worker):
  """Megatron: heads of q/k/v/out and the hidden width of wi/wo halve; fsdp=4 splits 'embed'."""
  shards = ok(worker, 'fsdp_tensor')['shards']
  halved = {"['attention']['query']": 1, "['attention']['key']": 1, "['attention']['value']": 1,
            "['attention']['out']": 0, "['mlp']['wi']": 1, "['mlp']['wo']": 0}
  for suffix, dim in halved.items():
    shape, shard = shard_of(shards, suffix)
    assert shard[dim] * 2 == shape[dim], (suffix, shape, shard)
  shape, shard = shard_of(shards, "['attention']['query']")  # [D, N, H]
  assert shard == [shape[0] // 4, shape[1] // 2, shape[2]]


def test_vocab_that_does_not_divide_is_left_unsharded(worker):
  shape, shard = shard_of(ok(worker, 'tensor')['shards'], "['token_embed']['embedding']")
  assert shape[0] % 8 and shard == shape  # vocab 44 on tensor=8: replicated, training still matches


def test_restore_across_meshes_is_bitwise(worker, reference, parallel_dir):
  """fsdp=8 -> fsdp=4×tensor=2 (in the worker) -> 1 device (here), params and optimizer state."""
  restore = ok(worker, 'fsdp_tensor')['restore']
  assert restore['compared'] > 10 and restore['unequal'] == [] and restore['on_target_shardings']
  trainer = reference['trainer']
  saved = np.load(parallel_dir / 'fsdp_trained.npz')
  for source in ('ckpt_fsdp', 'ckpt_fsdp_tensor'):
    ckpts = ckpt_lib.Checkpoints(str(parallel_dir / source), trainer.config.checkpoint, read_only=True)
    state, _ = ckpts.restore(common.STEPS, trainer.abstract_state)
    ckpts.close()
    here = common.flatten(state)
    assert sorted(here) == sorted(saved.files)
    for k in saved.files:
      np.testing.assert_array_equal(here[k], saved[k], err_msg=f'{source}: {k}')


@pytest.mark.parametrize('name', [n for n in worker_lib.RUNS if n != 'pmap'])
def test_decoding_under_every_strategy_matches_one_device(worker, reference, parallel_dir, name):
  """Greedy and beam search from each strategy's trained parameters, decoded where they lie under its
  mesh and rules, give the tokens (and beam scores) of the fsdp run's parameters decoded on one device."""
  result = ok(worker, name)['decoded']
  trainer = reference['trainer']
  ckpts = ckpt_lib.Checkpoints(str(parallel_dir / 'ckpt_fsdp'), trainer.config.checkpoint, read_only=True)
  state, _ = ckpts.restore(common.STEPS, trainer.abstract_state)
  ckpts.close()
  here = worker_lib.decode(trainer.kind, state.params)
  assert result['greedy'] == here['greedy'] and result['beam'] == here['beam']
  np.testing.assert_allclose(result['beam_scores'], here['beam_scores'], rtol=1e-4)
  assert len({t for row in here['greedy'] for t in row[0]}) > 2
