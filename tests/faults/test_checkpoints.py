"""Checkpoint integrity in-process: corruption, mismatch, keep policy, async saves, bad input.

The subprocess tests in test_fault_injection.py show the same through the CLI; these
are the fast, exhaustive ones (RELIABILITY.md rows 1, 5, 6, 9, 10).
"""

import dataclasses
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax import checkpoint as ckpt_lib
from llm_jax import config as config_lib
from llm_jax.train import loop
from tests.faults import runs

pytestmark = pytest.mark.filterwarnings('ignore')


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """A trainer and a workdir holding finalized steps 4 and 8 of its initial state."""
  tmp = tmp_path_factory.mktemp('saved')
  config = runs.config(tmp)
  workdir = tmp / 'template'
  trainer = loop.build_trainer(config, str(workdir))
  with trainer.context():
    state = trainer.init()
  ckpts = ckpt_lib.Checkpoints(str(workdir), config.checkpoint)
  for step in (4, 8):
    ckpts.save(step, state.replace(step=jnp.array(step, jnp.int32)),
               {'data_position': step, 'model_kind': 'decoder'})
  ckpts.close()
  return trainer, config, workdir


@pytest.fixture
def workdir(saved, tmp_path):
  target = tmp_path / 'run'
  shutil.copytree(saved[2], target)
  return target


def _restore_latest(saved, workdir, fallback=False, kind='decoder'):
  trainer, config, _ = saved
  ckpts = ckpt_lib.Checkpoints(str(workdir), config.checkpoint)
  try:
    with trainer.context():
      return ckpts.restore_latest(trainer.abstract_state, model_kind=kind, fallback=fallback)
  finally:
    ckpts.close()


def test_every_step_lists_its_files_and_restores(saved, workdir):
  sizes = json.loads((workdir / 'checkpoints' / '8' / ckpt_lib.FILES).read_text())
  assert {'params/_METADATA', 'train/_METADATA', 'meta/metadata', '_CHECKPOINT_METADATA'} <= set(sizes)
  assert any(rel.startswith('params/') and '/d/' in rel and size > 0 for rel, size in sizes.items())
  state, meta, step = _restore_latest(saved, workdir)
  assert step == 8 and int(state.step) == 8 and meta['data_position'] == 8


def _biggest_array_file(step_dir):
  sizes = json.loads((step_dir / ckpt_lib.FILES).read_text())
  return max((rel for rel in sizes if rel.startswith('params/')), key=sizes.get)


CORRUPTIONS = {
    'truncated array file': lambda d: (os.truncate(d / _biggest_array_file(d), 100), _biggest_array_file(d))[1],
    'missing array metadata': lambda d: ((d / 'params/_METADATA').unlink(), 'params/_METADATA')[1],
    'missing step metadata': lambda d: ((d / '_CHECKPOINT_METADATA').unlink(), '_CHECKPOINT_METADATA')[1],
    'missing commit marker': lambda d: ((d / 'commit_success.txt').unlink(), 'commit_success.txt')[1],
    'missing array file': lambda d: ((d / _biggest_array_file(d)).unlink(), None)[1],
}


@pytest.mark.parametrize('kind', sorted(CORRUPTIONS))
def test_corruption_is_an_error_naming_step_and_file(saved, workdir, kind):
  step_dir = workdir / 'checkpoints' / '8'
  name = CORRUPTIONS[kind](step_dir) or _biggest_array_file(step_dir)
  with pytest.raises(ckpt_lib.CorruptCheckpointError) as e:
    _restore_latest(saved, workdir)
  assert e.value.step == 8 and e.value.path == str(step_dir / name)
  assert str(e.value).startswith(f'checkpoint step 8 is corrupt: {step_dir / name} ')
  assert 'fallback=True to set it aside and resume from step 4' in str(e.value)
  assert (step_dir / '..' / '8').exists()  # nothing moved without fallback


@pytest.mark.parametrize('kind', sorted(CORRUPTIONS))
def test_fallback_sets_corrupt_step_aside_and_says_so(saved, workdir, kind, capsys):
  CORRUPTIONS[kind](workdir / 'checkpoints' / '8')
  state, meta, step = _restore_latest(saved, workdir, fallback=True)
  assert step == 4 and int(state.step) == 4 and meta['data_position'] == 4
  out = capsys.readouterr().out
  assert '[llm_jax] checkpoint step 8 is corrupt: ' in out and 'falling back to step 4.' in out
  assert not (workdir / 'checkpoints' / '8').exists()
  assert [p.name.split('-')[0] for p in (workdir / 'corrupt_checkpoints').iterdir()] == ['8']


def test_fallback_with_nothing_intact_left_is_an_error(saved, workdir):
  for step in ('4', '8'):
    (workdir / 'checkpoints' / step / 'commit_success.txt').unlink()
  with pytest.raises(ckpt_lib.CorruptCheckpointError, match='every older step are corrupt'):
    _restore_latest(saved, workdir, fallback=True)


def test_orbax_failure_without_files_listing_still_names_step_and_file(saved, workdir):
  """A step saved without the listing (an older llm_jax): TensorStore's error, wrapped."""
  step_dir = workdir / 'checkpoints' / '8'
  biggest = _biggest_array_file(step_dir)
  (step_dir / ckpt_lib.FILES).unlink()
  os.truncate(step_dir / biggest, 100)
  with pytest.raises(ckpt_lib.CorruptCheckpointError) as e:
    _restore_latest(saved, workdir)
  assert e.value.step == 8 and str(e.value.path).startswith(str(step_dir / 'params'))
  assert 'could not be read' in str(e.value)


def test_unfinished_save_is_ignored_and_cleaned_at_start(saved, workdir):
  tmp = workdir / 'checkpoints' / f'12{runs.TMP_MARK}'
  shutil.copytree(workdir / 'checkpoints' / '8', tmp)
  (tmp / 'commit_success.txt').unlink()
  _, _, step = _restore_latest(saved, workdir)
  assert step == 8 and not tmp.exists()


def test_mismatched_shapes_list_the_paths(saved, workdir):
  trainer, config, _ = saved
  wider = loop.build_trainer(runs.config(workdir.parent, **{'model.emb_dim': 48, 'model.num_layers': 3}),
                             str(workdir))
  ckpts = ckpt_lib.Checkpoints(str(workdir), config.checkpoint)
  with wider.context(), pytest.raises(ckpt_lib.CheckpointMismatchError) as e:
    ckpts.restore_latest(wider.abstract_state, model_kind='decoder', fallback=True)
  ckpts.close()
  message = str(e.value)
  assert message.startswith(f'checkpoint step 8 in {workdir / "checkpoints"} does not match the config')
  assert 'params/layer_2/mlp/wi: model float32(48, 192), not in the checkpoint' in message
  assert 'params/layer_0/mlp/wi: checkpoint float32(32, 128), model float32(48, 192)' in message
  assert (workdir / 'checkpoints' / '8').exists()  # a mismatch is not corruption: nothing set aside


def test_other_model_kind_is_refused(saved, workdir):
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match="model.kind='decoder', the config says 'encoder'"):
    _restore_latest(saved, workdir, kind='encoder')


@dataclasses.dataclass
class _State:
  step: jax.Array
  params: dict
  opt_state: dict
  rng: jax.Array


def _tiny_state(step):
  return _State(jnp.array(step), {'w': jnp.full((4,), float(step))}, {'m': jnp.zeros((4,))},
                jnp.zeros((2,), jnp.uint32))


def _ckpt_cfg(**overrides):
  c = config_lib.base_config().checkpoint
  c.update(overrides)
  return c


def test_keep_best_keeps_the_best_and_always_the_newest(tmp_path):
  cfg = _ckpt_cfg(max_to_keep=2, keep_best=1, keep_best_metric='eval_loss', keep_best_mode='min')
  ckpts = ckpt_lib.Checkpoints(str(tmp_path), cfg)
  eval_loss = {1: 3.0, 2: 1.0, 3: 2.5, 4: 2.0, 5: 2.2, 6: 9.0}  # best: 2; newest: 6 (the worst)
  for step, loss in eval_loss.items():
    ckpts.save(step, _tiny_state(step), {'data_position': step}, metrics={'eval_loss': loss})
  ckpts.close()
  assert runs.finalized_steps(tmp_path) == [2, 5, 6]


def test_max_to_keep_alone_keeps_the_newest(tmp_path):
  ckpts = ckpt_lib.Checkpoints(str(tmp_path), _ckpt_cfg(max_to_keep=2))
  for step in range(1, 6):
    ckpts.save(step, _tiny_state(step), {'data_position': step})
  ckpts.close()
  assert runs.finalized_steps(tmp_path) == [4, 5]


def test_save_returns_before_the_files_are_written(tmp_path, monkeypatch):
  """The loop only blocks on the disk when the previous save is still running, or at the end."""
  record = ckpt_lib.Checkpoints._record_files
  monkeypatch.setattr(ckpt_lib.Checkpoints, '_record_files', lambda self: (time.sleep(1.0), record(self)))
  ckpts = ckpt_lib.Checkpoints(str(tmp_path), _ckpt_cfg())
  start = time.monotonic()
  ckpts.save(1, _tiny_state(1), {'data_position': 1})
  assert time.monotonic() - start < 0.8 and runs.finalized_steps(tmp_path) == []
  ckpts.save(2, _tiny_state(2), {'data_position': 2})  # waits for save 1 first
  assert runs.finalized_steps(tmp_path) == [1]
  ckpts.wait()
  assert runs.finalized_steps(tmp_path) == [1, 2]
  ckpts.close()
  np.testing.assert_array_equal(
      ckpt_lib.Checkpoints(str(tmp_path), _ckpt_cfg(), read_only=True).restore_params(
          2, {'w': jax.ShapeDtypeStruct((4,), jnp.float32)})['w'], np.full((4,), 2.0))


def test_failed_background_save_surfaces_at_the_next_save(tmp_path, monkeypatch):
  record = ckpt_lib.Checkpoints._record_files

  def full_from_step_2(self):
    if self._pending >= 2:
      raise OSError(28, 'No space left on device')
    record(self)
  monkeypatch.setattr(ckpt_lib.Checkpoints, '_record_files', full_from_step_2)
  ckpts = ckpt_lib.Checkpoints(str(tmp_path), _ckpt_cfg())
  ckpts.save(1, _tiny_state(1), {'data_position': 1})
  ckpts.wait()
  ckpts.save(2, _tiny_state(2), {'data_position': 2})  # returns: the failure is in the background
  with pytest.raises(ckpt_lib.CheckpointSaveError,
                     match=r'saving checkpoint step 2 to .* failed \(OSError: .*No space left on device\); '
                           r'the newest intact checkpoint is step 1\.'):
    ckpts.save(3, _tiny_state(3), {'data_position': 3})
  ckpts.manager.close()
  assert runs.finalized_steps(tmp_path) == [1]


@pytest.mark.parametrize('key,value,message', [
    ('checkpoint.max_to_keep', 0, 'config.checkpoint.max_to_keep=0 must be positive'),
    ('checkpoint.max_to_keep', -1, 'config.checkpoint.max_to_keep=-1 must be positive'),
    ('checkpoint.every_steps', 0, 'config.checkpoint.every_steps=0 must be positive'),
    ('checkpoint.keep_best', -2, 'config.checkpoint.keep_best=-2 must be >= 0'),
    ('checkpoint.keep_best_mode', 'lowest', "config.checkpoint.keep_best_mode='lowest' is unknown"),
    ('train.nonfinite', 'ignore', "config.train.nonfinite='ignore' is unknown"),
])
def test_bad_checkpoint_config_is_refused_before_step_0(tmp_path, key, value, message):
  with pytest.raises(config_lib.ConfigError, match=message.replace('(', r'\(')):
    loop.train_and_evaluate(runs.config(tmp_path, **{key: value}), str(tmp_path / 'run'))
  assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_keep_best_needs_an_eval_at_every_save(tmp_path):
  config = runs.config(tmp_path, **{'checkpoint.keep_best': 2, 'checkpoint.every_steps': 10,
                                    'eval.every_steps': 4})
  with pytest.raises(config_lib.ConfigError, match='checkpoint.every_steps=10 is not a multiple of eval.every_steps=4'):
    config_lib.validate(config)


def test_workdir_that_is_a_file_is_refused(tmp_path):
  path = tmp_path / 'a_file'
  path.write_text('x')
  with pytest.raises(config_lib.ConfigError, match=f'--workdir={path} is a file; give a directory'):
    loop.train_and_evaluate(runs.config(tmp_path), str(path))


def test_read_only_manager_does_not_warn_and_leaves_other_warnings(tmp_path):
  """Sampling opens checkpoints read-only; Orbax's 'Given directory is read only' is noise there."""
  import logging
  from absl import logging as absl_logging
  ckpts = ckpt_lib.Checkpoints(str(tmp_path), _ckpt_cfg())
  ckpts.save(1, _tiny_state(1), {'data_position': 1})
  ckpts.close()
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logger = logging.getLogger('absl')
  logger.addHandler(handler)
  try:
    reader = ckpt_lib.Checkpoints(str(tmp_path), _ckpt_cfg(), read_only=True)
    assert reader.latest_step() == 1
    absl_logging.warning('Given directory is read only=elsewhere')  # outside the constructor: kept
  finally:
    logger.removeHandler(handler)
  messages = [r.getMessage() for r in records]
  assert messages == ['Given directory is read only=elsewhere'], messages
