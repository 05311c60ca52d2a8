"""The workdir's record and lock: refused resumes change nothing, allowed ones are recorded,
one process per workdir, stale locks taken over (llm_jax/workdir.py)."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from llm_jax import config as config_lib
from llm_jax import errors
from llm_jax import workdir as workdir_lib
from llm_jax.train import loop
from tests.faults import runs


# ---- which keys a resume may change ------------------------------------------------------


@pytest.mark.parametrize('key, sensitive', [
    ('model.num_layers', True), ('model.dropout_rate', True), ('model.kind', True),
    ('data.seq_len', True), ('data.tokenizer', True), ('data.dataset', True), ('data.files', True),
    ('train.batch_size', True), ('seed', True),
    ('model.attention_kernel', False), ('model.remat', False), ('model.dtype', False),
    ('data.cache_dir', False), ('data.manual_dir', False),
    ('train.steps', False), ('train.learning_rate', False), ('train.micro_batches', False),
    ('eval.every_steps', False), ('checkpoint.every_steps', False), ('mesh.fsdp', False),
    ('log_every_steps', False), ('sample.prompt', False),
])
def test_resume_sensitive_keys(key, sensitive):
  assert workdir_lib.resume_sensitive(key) is sensitive


def _record(tmp_path, **overrides):
  config = config_lib.from_file('configs/default.py', **overrides)
  (tmp_path / 'config.json').write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  return config


def test_check_resume_refuses_model_data_and_batch_changes_naming_old_and_new(tmp_path):
  _record(tmp_path)
  new = config_lib.from_file('configs/default.py', **{'model.num_layers': 6, 'train.batch_size': 16,
                                                      'train.steps': 2000})
  with pytest.raises(workdir_lib.ConfigChangeError) as e:
    workdir_lib.check_resume(str(tmp_path), new, resuming=True)
  text = str(e.value)
  assert e.value.exit_code == errors.CHECKPOINT and '\n' not in text
  assert 'model.num_layers 4 -> 6' in text and 'train.batch_size 32 -> 16' in text
  assert 'train.steps' not in text  # a safe change is not refused
  assert '--allow_change=model.num_layers,train.batch_size' in text
  changes = workdir_lib.check_resume(str(tmp_path), new, ['model.num_layers', 'train.batch_size'], resuming=True)
  assert changes == {'model.num_layers': (4, 6), 'train.batch_size': (32, 16), 'train.steps': (800, 2000)}
  # without a checkpoint nothing is resumed, so nothing is refused
  assert workdir_lib.check_resume(str(tmp_path), new, resuming=False) == changes


def test_check_resume_without_a_record_and_with_an_unknown_allowed_key(tmp_path):
  config = config_lib.from_file('configs/default.py')
  assert workdir_lib.check_resume(str(tmp_path), config, resuming=True) == {}
  with pytest.raises(errors.ConfigError, match='--allow_change names train.batchsize'):
    workdir_lib.check_resume(str(tmp_path), config, ['train.batchsize'], resuming=True)
  (tmp_path / 'config.json').write_text('{"model": ')
  with pytest.raises(errors.ConfigError, match='config.json is not valid JSON'):
    workdir_lib.check_resume(str(tmp_path), config, resuming=True)


def test_load_config_of_a_directory_without_a_run(tmp_path):
  with pytest.raises(errors.ConfigError, match='does not exist'):
    workdir_lib.load_config(str(tmp_path / 'nope'))
  with pytest.raises(errors.ConfigError, match='holds no training run'):
    workdir_lib.load_config(str(tmp_path))


# ---- the record through real runs ----------------------------------------------------------


def _bytes(workdir):
  return {name: (workdir / name).read_bytes() for name in ('config.json', workdir_lib.HISTORY_FILE)}


def test_refused_resume_changes_nothing_and_an_allowed_one_is_recorded(tmp_path):
  workdir = tmp_path / 'run'
  tiny = lambda **extra: runs.config(tmp_path, **{'train.steps': 6, 'checkpoint.every_steps': 3,
                                                  'model.dropout_rate': 0.0, **extra})
  loop.train_and_evaluate(tiny(**{'train.stop_at': 3}), str(workdir))
  before = _bytes(workdir)
  for change in ({'model.num_layers': 3}, {'train.batch_size': 4}, {'seed': 1}, {'data.seq_len': 16}):
    with pytest.raises(workdir_lib.ConfigChangeError, match=next(iter(change))):
      loop.train_and_evaluate(tiny(**change), str(workdir))
    assert _bytes(workdir) == before, change
  assert not (workdir / workdir_lib.LOCK_FILE).exists()
  # the refused runs left a workdir that still samples
  from llm_jax import checkpoint
  assert checkpoint.load_for_inference(str(workdir))[0].model.num_layers == 2

  summary = loop.train_and_evaluate(tiny(**{'train.batch_size': 4}), str(workdir), allow_changes=['train.batch_size'])
  assert summary['step'] == 6
  history = [json.loads(line) for line in (workdir / workdir_lib.HISTORY_FILE).read_text().splitlines()]
  assert [h['event'] for h in history] == ['start', 'resume']
  assert history[1]['step'] == 3 and history[1]['allowed'] == ['train.batch_size']
  assert history[1]['changes'] == {'train.batch_size': [8, 4], 'train.stop_at': [3, -1]}
  assert json.loads((workdir / 'config.json').read_text())['train']['batch_size'] == 4


def test_a_mismatched_checkpoint_leaves_the_record_alone(tmp_path):
  """A change that was allowed but cannot restore (another depth) fails at the restore,
  before the record is written."""
  workdir = tmp_path / 'run'
  tiny = lambda **extra: runs.config(tmp_path, **{'train.steps': 2, 'checkpoint.every_steps': 2, **extra})
  loop.train_and_evaluate(tiny(), str(workdir))
  before = _bytes(workdir)
  from llm_jax import checkpoint
  with pytest.raises(checkpoint.CheckpointMismatchError, match='layer_2'):
    loop.train_and_evaluate(tiny(**{'model.num_layers': 3, 'train.steps': 4}), str(workdir),
                            allow_changes=['model.num_layers'])
  assert _bytes(workdir) == before


# ---- the lock --------------------------------------------------------------------------------


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  proc.wait()
  return proc.pid


def _write_lock(workdir, **holder):
  workdir.mkdir(exist_ok=True)
  base = dict(host=socket.gethostname(), pid=os.getpid(), start_ticks=None, started='earlier',
              heartbeat=time.time(), token='t0')
  (workdir / workdir_lib.LOCK_FILE).write_text(json.dumps(dict(base, **holder)))


def test_lock_is_exclusive_and_released(tmp_path):
  first = workdir_lib.Lock(str(tmp_path))
  first.acquire()
  holder = json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text())
  assert holder['pid'] == os.getpid() and holder['host'] == socket.gethostname()
  with pytest.raises(workdir_lib.BusyError, match=f'PID {os.getpid()} on host') as e:
    workdir_lib.Lock(str(tmp_path)).acquire()
  assert e.value.exit_code == errors.BUSY
  first.release()
  first.release()  # twice is fine
  assert not (tmp_path / workdir_lib.LOCK_FILE).exists()
  with workdir_lib.Lock(str(tmp_path)):
    assert (tmp_path / workdir_lib.LOCK_FILE).exists()
  assert not (tmp_path / workdir_lib.LOCK_FILE).exists()


def test_lock_of_a_live_process_on_this_host_is_respected(tmp_path):
  sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    _write_lock(tmp_path, pid=sleeper.pid, start_ticks=workdir_lib._start_ticks(sleeper.pid))
    with pytest.raises(workdir_lib.BusyError, match=f'PID {sleeper.pid}'):
      workdir_lib.Lock(str(tmp_path)).acquire()
  finally:
    sleeper.kill()
    sleeper.wait()


@pytest.mark.parametrize('case', ['dead pid', 'reused pid', 'other host, old heartbeat', 'unreadable and old'])
def test_stale_lock_is_taken_over_with_a_notice(tmp_path, capsys, case):
  if case == 'dead pid':
    _write_lock(tmp_path, pid=_dead_pid())
  elif case == 'reused pid':  # our parent is alive, but started at another time than recorded
    _write_lock(tmp_path, pid=os.getppid(), start_ticks=(workdir_lib._start_ticks(os.getppid()) or 0) + 1)
  elif case == 'other host, old heartbeat':
    _write_lock(tmp_path, host='elsewhere', heartbeat=time.time() - workdir_lib.STALE_AFTER_S - 60)
  else:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / workdir_lib.LOCK_FILE).write_text('{"host": "x", "pi')
    old = time.time() - 60
    os.utime(tmp_path / workdir_lib.LOCK_FILE, (old, old))
  with workdir_lib.Lock(str(tmp_path)):
    assert json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text())['pid'] == os.getpid()
  assert 'taking over the lock of a stopped run' in capsys.readouterr().err
  assert sorted(os.listdir(tmp_path)) == []


def test_lock_of_another_host_with_a_fresh_heartbeat_is_respected(tmp_path):
  _write_lock(tmp_path, host='elsewhere', heartbeat=time.time() - 10)
  with pytest.raises(workdir_lib.BusyError, match='on host elsewhere'):
    workdir_lib.Lock(str(tmp_path)).acquire()


def test_heartbeat_is_renewed(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lib, 'HEARTBEAT_S', 0.05)
  with workdir_lib.Lock(str(tmp_path)):
    first = json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text())['heartbeat']
    time.sleep(0.3)
    assert json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text())['heartbeat'] > first


def test_unwritable_workdir_is_a_one_line_error(tmp_path, monkeypatch):
  def refuse(*args, **kwargs):  # what a read-only directory answers (root writes anywhere, so simulated)
    raise PermissionError(13, 'Permission denied')
  monkeypatch.setattr(os, 'open', refuse)
  with pytest.raises(errors.ConfigError, match='cannot write .*run.lock \\(Permission denied\\)'):
    workdir_lib.Lock(str(tmp_path)).acquire()


def test_workdir_that_cannot_be_created_is_a_one_line_error(tmp_path):
  (tmp_path / 'file').write_text('')
  with pytest.raises(errors.ConfigError, match='cannot create --workdir=.*file/run'):
    loop._make_workdir(str(tmp_path / 'file' / 'run'))


# Config keys added after 35b2f84 (the encoder-decoder issue). A workdir recorded before them
# has none of them in its config.json; its model is what their defaults build.
_KEYS_ADDED_AFTER_35B2F84 = (
    'data.source_key', 'data.target_files', 'data.target_key', 'data.target_len', 'data.task_prefix',
    'eval.bleu_examples', 'eval.max_decode_len', 'eval.num_beams', 'mesh.rules.relative',
    'model.attention_scale', 'model.init_scheme', 'model.num_decoder_layers', 'model.relative_buckets',
    'model.relative_max_distance', 'model.rescale_output', 'train.label_smoothing')


def _strip(record: dict, dotted: str) -> None:
  *parents, last = dotted.split('.')
  for p in parents:
    record = record[p]
  del record[last]


def test_a_workdir_recorded_before_newer_config_keys_samples_exports_and_resumes(tmp_path):
  """Every key a record lacks takes base_config()'s default: sampling, export, init_from and
  resuming read an old workdir as the run it was (regression: the model build raised
  AttributeError on model.init_scheme)."""
  import jax
  import numpy as np
  from llm_jax import checkpoint
  workdir = tmp_path / 'run'
  tiny = lambda **extra: runs.config(tmp_path, **{'train.steps': 4, 'checkpoint.every_steps': 2,
                                                  'model.dropout_rate': 0.0, 'model.use_bias': True,
                                                  **extra})  # with biases: GPT-2's layout, exportable
  loop.train_and_evaluate(tiny(**{'train.stop_at': 2}), str(workdir))
  config_now, kind_now, params_now, _ = checkpoint.load_for_inference(str(workdir))
  record = json.loads((workdir / 'config.json').read_text())
  for key in _KEYS_ADDED_AFTER_35B2F84:
    _strip(record, key)
  (workdir / 'config.json').write_text(json.dumps(record, indent=2, sort_keys=True))

  config, kind, params, tokenizer = checkpoint.load_for_inference(str(workdir))
  assert workdir_lib.flat(config) == workdir_lib.flat(config_now)
  assert kind.features == kind_now.features
  jax.tree.map(np.testing.assert_array_equal, params, params_now)

  # the sample command and the exporter read it (one process each, as a user runs them)
  out = subprocess.run([sys.executable, '-m', 'llm_jax.sample', f'--workdir={workdir}', '--prompt=the quick',
                        '--max_new_tokens=4', '--temperature=0'], capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert out.returncode == 0, out.stderr[-2000:]
  from llm_jax.convert import exporter
  exporter.export(str(workdir), str(tmp_path / 'hf'))
  assert (tmp_path / 'hf' / 'config.json').exists()

  # resuming with today's config finishes the run and records the full config
  summary = loop.train_and_evaluate(tiny(), str(workdir))
  assert summary['step'] == 4
  resumed = json.loads((workdir / 'config.json').read_text())
  assert resumed['model']['init_scheme'] == 'normal' and 'label_smoothing' in resumed['train']
