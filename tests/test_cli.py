"""The entry points as a user meets them: every mistake one line and its exit code, no
traceback; a quiet start; training without TensorFlow installed (llm_jax/cli.py, errors.py)."""

import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

from llm_jax import config as config_lib
from llm_jax import errors
from tests.faults import runs

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = str(REPO / 'configs' / 'default.py')


def _env(**extra):
  env = dict(os.environ, JAX_PLATFORMS='cpu', **extra)
  if runs.JAX_CACHE is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=str(runs.JAX_CACHE), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  return env


def _run(module, *args, timeout=240, **env):
  return subprocess.run([sys.executable, '-m', f'llm_jax.{module}', *map(str, args)], capture_output=True,
                        text=True, cwd=REPO, env=_env(**env), timeout=timeout)


def one_line(proc, code: int) -> str:
  """The single 'llm_jax: ...' line of a process that must have ended with ``code``."""
  assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith('llm_jax: ')]
  assert len(lines) == 1, proc.stderr[-3000:]
  return lines[0]


@pytest.fixture(scope='module')
def tiny_args(tmp_path_factory):
  """--config and overrides of a 2-layer model on a small corpus (as the fault tests use)."""
  tmp = tmp_path_factory.mktemp('cli')
  args = [f'--config={DEFAULT}'] + [f'--config.{k}={v}' for k, v in runs.overrides(tmp).items()]
  return tmp, args


def _config_file(tmp_path, text):
  path = tmp_path / 'c.py'
  path.write_text(text)
  return path


@pytest.mark.parametrize('case, args, fragment', [
    ('no such config', ['--config=configs/nonesuch.py', '--workdir=W'], 'configs/nonesuch.py does not exist'),
    ('config is a directory', ['--config=configs', '--workdir=W'], '--config=configs is a directory'),
    ('misspelt key', [f'--config={DEFAULT}', '--workdir=W', '--config.train.stepz=3'],
     'config.train.stepz does not exist; did you mean config.train.steps?'),
    ('ill-typed value', [f'--config={DEFAULT}', '--workdir=W', '--config.train.steps=abc'],
     "--config.train.steps=abc: invalid literal for int()"),
    ('unknown flag', [f'--config={DEFAULT}', '--workdir=W', '--lerning_rate=1'], "Unknown command line flag"),
    ('no workdir', [f'--config={DEFAULT}'], '--workdir is required'),
    ('a positional word', [f'--config={DEFAULT}', '--workdir=W', 'extra'], "unexpected arguments 'extra'"),
    ('bad heads', [f'--config={DEFAULT}', '--workdir=W', '--config.model.num_heads=3'],
     'config.model.num_heads=3 does not divide config.model.emb_dim=128'),
    ('huge seq_len', [f'--config={DEFAULT}', '--workdir=W', '--config.data.seq_len=100000'],
     'config.data.seq_len=100000 with train.batch_size=32 needs at least'),
    ('unknown allowed key', [f'--config={DEFAULT}', '--workdir=W', '--allow_change=train.batchsize'],
     '--allow_change names train.batchsize'),
    ('a bucket URL', [f'--config={DEFAULT}', '--workdir=gs://bucket/run'], 'is a URL; workdirs are local paths'),
])
def test_main_usage_mistakes_are_one_line_exit_2(tmp_path, case, args, fragment):
  args = [a.replace('--workdir=W', f'--workdir={tmp_path / "w"}') for a in args]
  line = one_line(_run('main', *args), errors.USAGE)
  assert fragment in line, case
  assert not (tmp_path / 'w').exists() and not (REPO / 'gs:').exists(), 'a refused start made the workdir'


def test_config_files_that_cannot_load(tmp_path):
  bad = _config_file(tmp_path, 'def get_config(:\n')
  assert 'has a syntax error at line 1' in one_line(_run('main', f'--config={bad}', f'--workdir={tmp_path}/w'),
                                                    errors.USAGE)
  none = _config_file(tmp_path, 'x = 1\n')
  assert 'defines no get_config()' in one_line(_run('main', f'--config={none}', f'--workdir={tmp_path}/w'),
                                               errors.USAGE)


def test_data_mistakes_are_one_line(tmp_path, tiny_args):
  _, args = tiny_args
  workdir = tmp_path / 'w'
  no_files = one_line(_run('main', *args, f'--workdir={workdir}', '--config.data.files=/nonesuch/*.txt'),
                      errors.USAGE)
  assert "config.data.files='/nonesuch/*.txt' matched no files" in no_files
  (tmp_path / 'short.txt').write_text('too short')
  short = one_line(_run('main', *args, f'--workdir={workdir}', f'--config.data.files={tmp_path}/short.txt',
                        f'--config.data.cache_dir={tmp_path}/c2'), errors.USAGE)
  assert 'fewer than one row of config.data.seq_len + 1 = 33' in short
  workfile = tmp_path / 'file'
  workfile.write_text('')
  assert 'is a file; give a directory' in one_line(_run('main', *args, f'--workdir={workfile}'), errors.USAGE)


def test_sample_mistakes_are_one_line(tmp_path, tiny_args):
  tmp, args = tiny_args
  missing = one_line(_run('sample', f'--workdir={tmp_path / "nope"}'), errors.USAGE)
  assert 'does not exist; give the workdir of a training run' in missing
  empty = one_line(_run('sample', f'--workdir={tmp_path}'), errors.USAGE)
  assert 'holds no training run (no config.json)' in empty
  assert '--workdir is required' in one_line(_run('sample'), errors.USAGE)
  assert 'does not exist; give a training run' in one_line(_run('sample', f'--model={tmp_path / "nope"}'),
                                                           errors.USAGE)
  assert 'has no config.json: a Hugging Face model directory' in one_line(_run('sample', f'--model={tmp_path}'),
                                                                          errors.USAGE)
  # a run that has not saved yet: its record is there, its checkpoint not
  (tmp_path / 'run').mkdir()
  (tmp_path / 'run' / 'config.json').write_text(config_lib.from_file(DEFAULT).to_json())
  (tmp_path / 'run' / 'data').mkdir()
  no_tokenizer = one_line(_run('sample', f'--workdir={tmp_path / "run"}'), errors.USAGE)
  assert 'no tokenizer in' in no_tokenizer


@pytest.fixture(scope='module')
def trained(tmp_path_factory, tiny_args):
  """(workdir, the finished process) of a 2-step run of the tiny model from the command line."""
  _, args = tiny_args
  workdir = tmp_path_factory.mktemp('trained') / 'run'
  done = _run('main', *args, f'--workdir={workdir}', '--config.train.steps=2', '--config.checkpoint.every_steps=2')
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir, done


def test_sample_of_a_trained_run_and_its_mistakes(trained, tiny_args):
  workdir, _ = trained
  ok = _run('sample', f'--workdir={workdir}', '--prompt=the fox ☃', '--max_new_tokens=5', '--temperature=0')
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert ok.stdout.startswith('--- sample 1/1\nthe fox ☃')
  assert "the prompt has 1 character(s) the char tokenizer never saw in training ('☃' ×1)" in ok.stderr
  beams = _run('sample', f'--model={workdir}', '--prompt=the', '--max_length=12', '--num_beams=3',
               '--early_stopping=never', '--length_penalty=0.5', '--num_return_sequences=2')
  assert beams.returncode == 0, beams.stderr[-3000:]
  assert beams.stdout.startswith('--- sample 1/2 (score -') and '--- sample 2/2 (score -' in beams.stdout
  for flags, fragment in ((['--temperature=-1'], 'temperature=-1.0 must be >= 0'),
                          (['--num_samples=0'], '--num_samples=0 must be at least 1'),
                          (['--max_new_tokens=500'], "max_new_tokens 500 = 501 exceed the model's 32 positions"),
                          (['--num_beams=0'], 'num_beams=0 must be at least 1'),
                          (['--num_beams=2', '--num_return_sequences=3'], 'num_return_sequences=3 is more than'),
                          (['--prompt=abc', '--max_length=3'], '--max_length=3 leaves no room after the prompt'),
                          (['--early_stopping=maybe'], '--early_stopping')):
    assert fragment in one_line(_run('sample', f'--workdir={workdir}', *flags), errors.USAGE), flags
  _, args = tiny_args
  resumed_wrong = one_line(_run('main', *args, f'--workdir={workdir}', '--config.model.num_layers=3'),
                           errors.CHECKPOINT)
  assert 'model.num_layers 2 -> 3' in resumed_wrong and '--allow_change=model.num_layers' in resumed_wrong
  assert _run('sample', f'--workdir={workdir}', '--max_new_tokens=2').returncode == 0  # still samples


def test_bench_without_config_is_one_line():
  assert 'give --config=configs/NAME.py' in one_line(_run('bench'), errors.USAGE)


def test_a_run_starts_quietly(trained, tiny_args):
  """stderr holds llm_jax's lines and the progress bar only: no library INFO lines, no
  TensorFlow or XLA start-up lines; --verbosity brings them back."""
  workdir, done = trained
  noise = [l for l in done.stderr.splitlines()
           if l.strip() and not l.startswith(('[llm_jax]', 'llm_jax:')) and 'train:' not in l]
  assert noise == [], noise
  for line in ('[llm_jax] model ', '[llm_jax] devices ', '[llm_jax] attention ', '[llm_jax] data ',
               '[llm_jax] outputs '):
    assert line in re.sub(' +', ' ', done.stdout), done.stdout
  _, args = tiny_args
  loud = _run('main', *args, f'--workdir={workdir.parent / "loud"}', '--config.train.steps=1', '--verbosity=0')
  assert loud.returncode == 0 and re.search(r'^I\d{4} ', loud.stderr, re.M)  # absl INFO lines


_NO_TENSORFLOW = """
import sys
sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None
from llm_jax import main
main.run()
"""


def test_trains_without_tensorflow_and_names_the_extra_for_tfds(tmp_path, tiny_args):
  """The default model on the embedded corpus trains without TensorFlow too: tests/test_readme.py
  trains the workdir its sample commands read this way."""
  _, args = tiny_args
  command = [sys.executable, '-c', _NO_TENSORFLOW, *args, f'--workdir={tmp_path / "run"}', '--config.train.steps=2']
  done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=_env(), timeout=240)
  assert done.returncode == 0, done.stderr[-3000:]
  tfds = subprocess.run([sys.executable, '-c', _NO_TENSORFLOW, *args, f'--workdir={tmp_path / "t"}',
                         '--config.data.dataset=tiny_shakespeare', f'--config.data.cache_dir={tmp_path}/tc'],
                        capture_output=True, text=True, cwd=REPO,
                        env=_env(), timeout=240)
  assert "pip install -e '.[tfds]'" in one_line(tfds, errors.USAGE)


def test_ctrl_c_before_training_is_exit_130_without_a_traceback(tmp_path, tiny_args):
  """Ctrl-C while the run prepares (nothing trained yet): one line, exit 130, nothing recorded."""
  _, args = tiny_args
  proc = subprocess.Popen([sys.executable, '-m', 'llm_jax.main', *args, f'--workdir={tmp_path / "r"}',
                           '--config.data.max_documents=0'], cwd=REPO, env=_env(LLM_JAX_HUGEPAGES='0'),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:  # the workdir appears once the flags are parsed and the config validated; training starts later
    runs.wait_for(lambda: (tmp_path / 'r' / 'run.lock').exists(), proc, poll=0.001)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
  finally:
    proc.kill()
  done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
  if '[llm_jax] Ctrl-C: saving' in err:
    pytest.skip('the signal arrived after training had started (a fast machine)')
  assert one_line(done, errors.INTERRUPTED) == 'llm_jax: interrupted (Ctrl-C).'
  assert not (tmp_path / 'r' / 'config.json').exists() and not (tmp_path / 'r' / 'run.lock').exists()
