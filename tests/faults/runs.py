"""Tiny training runs for the fault tests: in-process configs and real CLI subprocesses.

Every subprocess runs tests/faults/driver.py, i.e. ``python -m llm_jax.main`` with the
fault named by its environment variables patched in.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

from llm_jax import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
DRIVER = REPO / 'tests' / 'faults' / 'driver.py'
TEXT = ''.join(f'Document line {i}: the quick brown fox {i % 7} jumps over the lazy dog.\n' for i in range(60))
TMP_MARK = '.orbax-checkpoint-tmp'
STEPS = 40
SAVE_EVERY = 2  # 20 asynchronous saves in a run
JAX_CACHE = None  # a persistent compilation cache the runs of one session share (set by conftest)
CORPUS_DIR = None  # where the corpus lives for the whole session (set by conftest): one data.files path,
                   # so a workdir copied to another test resumes with the config it was trained with


def overrides(tmp: pathlib.Path, **extra) -> dict:
  """Config overrides of a 2-layer, width-32 model on a 60-line corpus (11 rows per epoch)."""
  corpus = pathlib.Path(CORPUS_DIR or tmp) / 'corpus.txt'
  if not corpus.exists():
    corpus.write_text(TEXT)
  return {'data.dataset': 'files', 'data.files': str(corpus), 'data.eval_fraction': 0.1,
          'data.seq_len': 32, 'data.cache_dir': str(tmp / 'cache'),
          'model.num_layers': 2, 'model.emb_dim': 32, 'model.num_heads': 2, 'model.dropout_rate': 0.1,
          'train.steps': STEPS, 'train.batch_size': 8, 'train.warmup_steps': 4, 'train.learning_rate': 1e-2,
          'eval.every_steps': 0, 'eval.max_batches': 2, 'checkpoint.every_steps': SAVE_EVERY,
          'log_every_steps': 1, 'sample.prompt': '', **extra}


def config(tmp: pathlib.Path, **extra):
  return config_lib.from_file(str(REPO / 'configs' / 'default.py'), **overrides(tmp, **extra))


def command(workdir, tmp: pathlib.Path, **extra) -> list:
  args = [f'--config.{k}={v}' for k, v in overrides(tmp, **extra).items()]
  return [sys.executable, str(DRIVER), f'--config={REPO / "configs" / "default.py"}', f'--workdir={workdir}', *args]


def _env(faults: dict) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith('LLM_JAX_TEST_')}
  env.update({f'LLM_JAX_TEST_{k.upper()}': str(v) for k, v in faults.items()})
  env.setdefault('JAX_PLATFORMS', 'cpu')
  if JAX_CACHE is not None:  # halves a run's start-up; executables are the same, so are the losses
    env.update(JAX_COMPILATION_CACHE_DIR=str(JAX_CACHE), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')
  return env


def run(workdir, tmp, faults=None, prefix=(), timeout=300, **extra) -> subprocess.CompletedProcess:
  """Runs training to its end (pipes, so RLIMIT_FSIZE faults never hit the log)."""
  return subprocess.run([*prefix, *command(workdir, tmp, **extra)], env=_env(faults or {}), cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


class Started:
  """A training subprocess running in the background, its output in a file."""

  def __init__(self, workdir, tmp, log: pathlib.Path, faults=None, **extra):
    self.log = log
    self._out = open(log, 'w')
    self.proc = subprocess.Popen(command(workdir, tmp, **extra), env=_env(faults or {}), cwd=REPO,
                                 stdout=self._out, stderr=subprocess.STDOUT)

  def wait(self, timeout=300) -> int:
    try:
      return self.proc.wait(timeout)
    finally:
      self._out.close()

  def output(self) -> str:
    return self.log.read_text(errors='replace')


def wait_for(predicate, proc: subprocess.Popen, timeout=120.0, poll=0.005):
  """Polls ``predicate`` until true; fails if the process exits first or time runs out."""
  end = time.monotonic() + timeout
  while time.monotonic() < end:
    value = predicate()
    if value:
      return value
    if proc.poll() is not None:
      raise AssertionError(f'the run exited (rc={proc.returncode}) before the awaited moment')
    time.sleep(poll)
  raise AssertionError('timed out waiting')


def logged_steps(workdir) -> int:
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  try:
    return sum(1 for _ in open(path))
  except FileNotFoundError:
    return 0


def losses(workdir) -> dict:
  rows = [json.loads(line) for line in open(pathlib.Path(workdir) / 'metrics.jsonl')]
  return {r['step']: r['train_loss'] for r in rows if 'train_loss' in r}


def finalized_steps(workdir) -> list:
  d = pathlib.Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / 'commit_success.txt').exists())


def tmp_dirs(workdir) -> list:
  d = pathlib.Path(workdir) / 'checkpoints'
  return sorted(p.name for p in d.iterdir() if TMP_MARK in p.name) if d.exists() else []


def resumed_from(output: str):
  """The step a run said it resumed from (None: it started fresh)."""
  for line in output.splitlines():
    if line.startswith('[llm_jax] resumed from step '):
      return int(line.split()[4])
  return None
