"""End to end through train_and_evaluate: a tiny run, exact resume, stop_at, init_from."""

import hashlib
import json
import pathlib

import jax
import numpy as np
import pytest

from llm_jax import checkpoint as ckpt_lib
from llm_jax import config as config_lib
from llm_jax.data import features
from llm_jax.data import pipeline
from llm_jax.train import loop

TEXT = ''.join(f'Document line {i}: the quick brown fox {i % 7} jumps over the lazy dog.\n' for i in range(60))


def tiny_config(tmp_path: pathlib.Path, **overrides):
  corpus = tmp_path / 'corpus.txt'
  if not corpus.exists():
    corpus.write_text(TEXT)
  config = config_lib.from_file('configs/default.py', **{
      'data.dataset': 'files', 'data.files': str(corpus), 'data.eval_fraction': 0.1,
      'data.seq_len': 32, 'data.cache_dir': str(tmp_path / 'cache'),
      'model.num_layers': 2, 'model.emb_dim': 32, 'model.num_heads': 2, 'model.dropout_rate': 0.1,
      'train.steps': 16, 'train.batch_size': 8, 'train.warmup_steps': 4, 'train.learning_rate': 1e-2,
      'eval.every_steps': 8, 'eval.max_batches': 2, 'checkpoint.every_steps': 4,
      'log_every_steps': 1, 'sample.prompt': '', **overrides})
  return config


def losses(workdir) -> dict:
  rows = [json.loads(line) for line in open(pathlib.Path(workdir) / 'metrics.jsonl')]
  return {r['step']: r['train_loss'] for r in rows if 'train_loss' in r}


def final_params(workdir):
  return ckpt_lib.load_for_inference(str(workdir))[2]


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """One uninterrupted 16-step run, recording which batch each step trained on."""
  tmp = tmp_path_factory.mktemp('straight')
  seen = _record_batches(lambda: loop.train_and_evaluate(tiny_config(tmp), str(tmp / 'run')))
  return tmp / 'run', seen


def _record_batches(fn):
  """{step: hash of its batch} of the batches ``fn`` trains on (packed rows and whole examples)."""
  seen = {}
  classes = (pipeline.Dataset, features.ExampleDataset)
  originals = [cls.__dict__['train_batch'] for cls in classes]

  def recorder(original):
    def recording(self, step):
      batch = original(self, step)
      seen[step] = hashlib.sha256(b''.join(np.ascontiguousarray(v).tobytes() for v in batch.values())).hexdigest()
      return batch
    return recording

  for cls, original in zip(classes, originals):
    cls.train_batch = recorder(original)
  try:
    fn()
  finally:
    for cls, original in zip(classes, originals):
      cls.train_batch = original
  return seen


def test_tiny_run_learns_and_writes_everything(straight):
  workdir, seen = straight
  assert sorted(seen) == list(range(16))
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert {'step', 'train_loss', 'learning_rate', 'tokens_per_sec', 'mfu'} <= set(rows[-1])
  assert any('eval_loss' in r for r in rows)
  l = losses(workdir)
  assert l[16] < l[1] - 0.5
  assert (workdir / 'config.json').exists() and list((workdir / 'tensorboard').iterdir())
  assert ckpt_lib.Checkpoints(str(workdir), config_lib.base_config().checkpoint).latest_step() == 16


@pytest.mark.parametrize('stop', [5, 11])
def test_resume_is_bitwise_exact(tmp_path, straight, stop):
  """stop_at=K then resume to 16 equals the straight run: losses, batches, final params.

  The corpus has 11 rows per epoch at batch 8, so step 5 stops mid-epoch and both
  continuations cross an epoch boundary.
  """
  straight_dir, straight_seen = straight
  workdir = str(tmp_path / 'run')
  first = _record_batches(lambda: loop.train_and_evaluate(tiny_config(tmp_path, **{'train.stop_at': stop}), workdir))
  second = _record_batches(lambda: loop.train_and_evaluate(tiny_config(tmp_path), workdir))
  assert sorted(first) == list(range(stop)) and sorted(second) == list(range(stop, 16))
  assert {**first, **second} == straight_seen
  assert losses(workdir) == losses(straight_dir)
  jax.tree.map(np.testing.assert_array_equal, final_params(workdir), final_params(straight_dir))


def test_init_from_starts_from_other_runs_params(tmp_path, straight):
  straight_dir, _ = straight
  config = tiny_config(tmp_path, **{'init_from': str(straight_dir), 'train.steps': 2, 'train.warmup_steps': 1})
  loop.train_and_evaluate(config, str(tmp_path / 'child'))
  assert losses(tmp_path / 'child')[1] < losses(straight_dir)[1] - 0.5


def test_bad_config_fails_before_compiling(tmp_path):
  with pytest.raises(config_lib.ConfigError, match='num_heads=3 does not divide'):
    loop.train_and_evaluate(tiny_config(tmp_path, **{'model.num_heads': 3}), str(tmp_path / 'x'))
  with pytest.raises(config_lib.ConfigError, match='num_kv_heads=3 must divide'):
    loop.train_and_evaluate(tiny_config(tmp_path, **{'model.num_kv_heads': 3}), str(tmp_path / 'x'))
  with pytest.raises(config_lib.ConfigError, match='seq_len=64 is longer than config.model.max_len=32'):
    loop.train_and_evaluate(tiny_config(tmp_path, **{'data.seq_len': 64, 'model.max_len': 32}), str(tmp_path / 'x'))
  with pytest.raises(config_lib.ConfigError, match='did you mean config.train.learning_rate'):
    tiny_config(tmp_path, **{'train.lerning_rate': 1.0})
  with pytest.raises(ValueError, match='config.data.dataset'):
    loop.train_and_evaluate(tiny_config(tmp_path, **{'data.dataset': 'no_such_dataset_xyz'}), str(tmp_path / 'x'))
  with pytest.raises(ValueError, match='config.data.tokenizer'):
    loop.train_and_evaluate(tiny_config(tmp_path, **{'data.tokenizer': 'no_such_tokenizer'}), str(tmp_path / 'x'))


ENCODER = {'model.kind': 'encoder', 'model.type_vocab_size': 2, 'model.embed_norm': True,
           'model.norm_placement': 'post', 'model.mlp_activation': 'gelu_exact',
           'data.tokenizer': 'wordpiece', 'data.vocab_size': 200, 'train.steps': 12}


@pytest.mark.parametrize('head, extra', [
    ('mlm', {}),  # masks drawn from (seed, step, row), dropout on
    ('classify', {'data.dataset': 'shuffled', 'data.files': '', 'data.max_documents': 40, 'model.num_classes': 2}),
])
def test_encoder_resume_is_bitwise_exact(tmp_path, head, extra):
  """The encoder's masks and the classifier's epoch order survive a stop at step 5: the
  resumed run's batches, losses and final parameters equal one straight run's."""
  config = lambda d, **more: tiny_config(d, **{**ENCODER, 'model.head': head, **extra, **more})
  straight_dir = tmp_path / 'straight'
  straight_seen = _record_batches(lambda: loop.train_and_evaluate(config(tmp_path), str(straight_dir)))
  workdir = str(tmp_path / 'run')
  first = _record_batches(lambda: loop.train_and_evaluate(config(tmp_path, **{'train.stop_at': 5}), workdir))
  second = _record_batches(lambda: loop.train_and_evaluate(config(tmp_path), workdir))
  assert sorted(first) == list(range(5)) and sorted(second) == list(range(5, 12))
  assert {**first, **second} == straight_seen
  assert losses(workdir) == losses(straight_dir) and len(losses(workdir)) == 12
  jax.tree.map(np.testing.assert_array_equal, final_params(workdir), final_params(straight_dir))


def test_eval_prompts_are_decoded_at_each_eval_and_resume_drops_later_ones(tmp_path, capsys):
  """config.sample.eval_prompts: a samples.jsonl line per evaluation (steps 8, 16) holding each prompt's
  completion, TensorBoard text events, and the end-of-run sample; on resume from step 12 the line of step 16
  is dropped and written again, the same (greedy beam search is deterministic)."""
  from llm_jax.generation import text as text_lib
  overrides = {'sample.eval_prompts': 'the quick|Document', 'sample.prompt': 'the', 'sample.max_new_tokens': 6,
               'sample.num_beams': 2, 'sample.early_stopping': 'true', 'model.dropout_rate': 0.0}
  workdir = tmp_path / 'run'
  loop.train_and_evaluate(tiny_config(tmp_path, **overrides), str(workdir))
  assert '[llm_jax] sample:\nthe' in capsys.readouterr().out
  lines = [json.loads(line) for line in open(workdir / 'samples.jsonl')]
  assert [line['step'] for line in lines] == [8, 16]
  assert list(lines[-1]['samples']) == ['the quick', 'Document']
  config, kind, params, tokenizer = ckpt_lib.load_for_inference(str(workdir))
  want = text_lib.complete(kind, params, tokenizer, ['the quick', 'Document'], max_new_tokens=6, num_beams=2,
                           early_stopping=True)
  assert list(lines[-1]['samples'].values()) == [row[0].text for row in want]
  events = list((workdir / 'tensorboard').glob('events.*'))
  assert events and any(b'samples/1' in e.read_bytes() for e in events)
  ckpt_lib.Checkpoints(str(workdir), config.checkpoint).set_aside(16)
  loop.train_and_evaluate(tiny_config(tmp_path, **overrides), str(workdir))
  again = [json.loads(line) for line in open(workdir / 'samples.jsonl')]
  assert again == lines
