"""The encoder-decoder (T5 layout) under data, FSDP, tensor, their combinations and pmap on 8 simulated
devices matches its single-device run step for step, is split as the strategies say, and decodes the
tokens one device decodes (the 8-device work runs in ``worker.py encoder_decoder``)."""

import jax
import numpy as np
import pytest

from tests.parallel import worker as worker_lib
from tests.parallel.test_mesh import ok, shard_of


@pytest.mark.parametrize('name', worker_lib.ENCODER_DECODER_RUNS)
def test_encoder_decoder_losses_match_one_device(encoder_decoder_worker, encoder_decoder_reference, name):
  result = ok(encoder_decoder_worker, name)
  np.testing.assert_allclose(result['losses'], encoder_decoder_reference['losses'], rtol=1e-5, atol=0)
  assert encoder_decoder_reference['losses'][-1] < encoder_decoder_reference['losses'][0] - 0.3  # it learns
  if name in worker_lib.EVALUATED:
    np.testing.assert_allclose(result['eval_loss'], encoder_decoder_reference['eval_loss'], rtol=1e-5)


def test_sharded_init_equals_single_device_init(encoder_decoder_worker, encoder_decoder_reference, parallel_dir):
  ok(encoder_decoder_worker, 'fsdp')
  init = np.load(parallel_dir / 'init_encoder_decoder.npz')
  fresh = encoder_decoder_reference['fresh_init']
  assert sorted(init.files) == sorted(fresh)
  for k, v in fresh.items():
    np.testing.assert_array_equal(init[k], v, err_msg=k)


def test_both_stacks_are_split_as_the_strategies_say(encoder_decoder_worker):
  """tensor=8 splits the heads of every attention (encoder self, decoder self and cross) and of both
  relative-bias tables; fsdp=8 keeps about an eighth of params + optimizer state per device."""
  tensor = ok(encoder_decoder_worker, 'tensor')['shards']
  for suffix in ("['encoder']['layer_0']['attention']['query']", "['decoder']['layer_0']['attention']['key']",
                 "['decoder']['layer_0']['cross_attention']['value']"):
    shape, shard = shard_of(tensor, suffix)  # [D, N, H]
    assert shard[1] * 8 == shape[1], (suffix, shape, shard)
  for stack in ('encoder', 'decoder'):
    shape, shard = shard_of(tensor, f"['{stack}']['relative_bias']['embedding']")  # [buckets, N]
    assert shard == [shape[0], shape[1] // 8], (stack, shape, shard)
  shape, shard = shard_of(tensor, "['decoder']['layer_0']['cross_attention']['out']")  # [N, H, D]
  assert shard[0] * 8 == shape[0], (shape, shard)
  fsdp = ok(encoder_decoder_worker, 'fsdp')
  assert fsdp['bytes_per_device'] <= 1.2 / 8 * fsdp['bytes_replicated'], fsdp['bytes_per_device']


@pytest.fixture(scope='module')
def decoded_on_one_device(encoder_decoder_reference, parallel_dir) -> dict:
  """{'decoded_init', 'decoded'}: greedy and beam-search translations, on this process's device, of the
  shared initial parameters and of the fsdp run's trained ones."""
  trainer = encoder_decoder_reference['trainer']
  structure = jax.tree.structure(trainer.abstract_state)
  init = np.load(parallel_dir / 'init_encoder_decoder.npz')
  initial = jax.tree_util.tree_unflatten(structure, [init[k] for k in encoder_decoder_reference['fresh_init']])
  saved = np.load(parallel_dir / 'fsdp_trained_encoder_decoder.npz')
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(trainer.abstract_state.params)[0]]
  assert sorted(paths) == sorted(saved.files)
  trained = jax.tree_util.tree_unflatten(jax.tree.structure(trainer.abstract_state.params), [saved[p] for p in paths])
  tokenizer = trainer.dataset.tokenizer
  return {'decoded_init': worker_lib.translate(trainer.kind, initial.params, tokenizer),
          'decoded': worker_lib.translate(trainer.kind, trained, tokenizer)}


@pytest.mark.parametrize('params', ['decoded_init', 'decoded'], ids=['initial', 'trained'])
@pytest.mark.parametrize('name', [n for n in worker_lib.ENCODER_DECODER_RUNS if n != 'pmap'])
def test_decoding_under_every_strategy_matches_one_device(encoder_decoder_worker, decoded_on_one_device, name,
                                                         params):
  """Greedy and beam search, decoded where the parameters lie under each strategy's mesh and rules (the
  encoder output and cross-attention cache sharded with them), give the tokens and beam scores one device
  gives: from the shared initial parameters, and from each strategy's trained parameters against the fsdp
  run's decoded on one device."""
  result, here = ok(encoder_decoder_worker, name)[params], decoded_on_one_device[params]
  assert result['greedy'] == here['greedy'] and result['beam'] == here['beam']
  np.testing.assert_allclose(result['beam_scores'], here['beam_scores'], rtol=1e-4)
  scores = np.asarray(here['beam_scores'])
  assert np.abs(scores[0] - scores[1]).min() > 1e-2  # the two sources' scores differ: the decoder reads them
