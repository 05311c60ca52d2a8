"""Session fixtures: the 8-device worker's results and the single-device reference run."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from llm_jax.train import loop
from tests.parallel import common


@pytest.fixture(scope='session')
def parallel_dir(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp('parallel')


def _worker(parallel_dir: pathlib.Path, kind: str) -> dict:
  """results of ``python -m tests.parallel.worker`` on 8 simulated devices."""
  suffix = '' if kind == 'decoder' else f'_{kind}'
  proc = subprocess.run([sys.executable, '-m', 'tests.parallel.worker', str(parallel_dir), kind],
                        cwd=common.ROOT, env=common.cpu_env(8), capture_output=True, text=True,
                        timeout=common.TIMEOUT_S)
  path = parallel_dir / f'results{suffix}.json'
  assert path.exists(), f'worker failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}'
  return json.loads(path.read_text())


@pytest.fixture(scope='session')
def worker(parallel_dir) -> dict:
  return _worker(parallel_dir, 'decoder')


@pytest.fixture(scope='session')
def encoder_worker(parallel_dir) -> dict:
  return _worker(parallel_dir, 'encoder')


@pytest.fixture(scope='session')
def encoder_decoder_worker(parallel_dir) -> dict:
  return _worker(parallel_dir, 'encoder_decoder')


@pytest.fixture(scope='session')
def reference(worker, parallel_dir) -> dict:
  return _reference(parallel_dir, 'decoder')


@pytest.fixture(scope='session')
def encoder_reference(encoder_worker, parallel_dir) -> dict:
  return _reference(parallel_dir, 'encoder')


@pytest.fixture(scope='session')
def encoder_decoder_reference(encoder_decoder_worker, parallel_dir) -> dict:
  return _reference(parallel_dir, 'encoder_decoder')


def _reference(parallel_dir: pathlib.Path, kind: str) -> dict:
  """The same run on this process's single device, from the worker's initial state."""
  assert jax.device_count() == 1
  tmp = parallel_dir / 'tmp'
  suffix = '' if kind == 'decoder' else f'_{kind}'
  trainer = loop.build_trainer(common.config(tmp, kind), str(tmp / f'single{suffix}'))
  init = np.load(parallel_dir / f'init{suffix}.npz')
  with trainer.context():
    fresh = common.flatten(trainer.init())
    state = jax.tree_util.tree_unflatten(jax.tree.structure(trainer.abstract_state),
                                         [init[k] for k in fresh])
    state = jax.device_put(state, trainer.state_shardings)
    losses = []
    for step in range(common.STEPS):
      state, metrics = trainer.train_step(state, trainer.device_batch(trainer.dataset.train_batch(step)))
      losses.append(float(metrics['train_loss']))
    eval_loss = trainer.evaluate(state.params)['eval_loss']
  return dict(losses=losses, eval_loss=eval_loss, fresh_init=fresh, trainer=trainer)
