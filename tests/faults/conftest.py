"""Fixtures of the fault tests: one uninterrupted reference run shared by all of them."""

import pytest

from tests.faults import runs


@pytest.fixture(scope='session', autouse=True)
def _jax_cache(tmp_path_factory):
  runs.JAX_CACHE = tmp_path_factory.mktemp('jax_cache')
  runs.CORPUS_DIR = tmp_path_factory.mktemp('corpus')


@pytest.fixture(scope='session')
def reference(tmp_path_factory):
  """(workdir, per-step losses) of one uninterrupted CLI run: 40 steps, 20 async saves."""
  tmp = tmp_path_factory.mktemp('reference')
  workdir = tmp / 'run'
  done = runs.run(workdir, tmp)
  assert done.returncode == 0, done.stderr[-3000:]
  losses = runs.losses(workdir)
  assert sorted(losses) == list(range(1, runs.STEPS + 1))
  return workdir, losses
